"""A TCP proxy that adds latency, not a bandwidth limit: what a registry across a network
looks like to a client on this machine.

    .venv/bin/python bench/latency.py --target 127.0.0.1:5000 [--delay 0.025] [--port 0]
                                      [--stats FILE]

It listens on 127.0.0.1 (prints `port N` on stdout once it does) and forwards every
connection to `--target`. Each chunk read from one side is written to the other side
`--delay` seconds after it arrived, in its order, in each direction: a round trip
costs 2 * delay and bytes keep flowing at the speed of loopback meanwhile (up to
`WINDOW` bytes per direction and connection wait to be sent, far more than one delay's
worth at the rates seen here). A new connection also pays for its TCP handshake: the
client's first bytes reach the server one round trip later still (a real client can
only send after the handshake's round trip; here the loopback handshake is instant).

Run as a separate process (uvloop when present) so that its CPU shows apart from the
benchmark's and takes no GIL from it; `LatencyProxy` starts and stops it. With
`--stats FILE`, it writes there how many connections it has accepted, at each one:
how many TCP connections a client opened shows whether it reuses them.
"""

from __future__ import annotations

import argparse
import asyncio
import collections
import contextlib
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

READ_SIZE = 256 * 1024
WINDOW = 32 * 1024 * 1024  # bytes per direction queued for the delay, at most


class _Direction:
    """One direction of one connection: chunks queue with the time they are due."""

    def __init__(self) -> None:
        self.queue: collections.deque[tuple[float, bytes]] = collections.deque()
        self.queued = 0
        self.more = asyncio.Event()  # a chunk (or the end) was queued
        self.room = asyncio.Event()  # the queue went below WINDOW
        self.room.set()
        self.ended = False


async def _read(
    reader: asyncio.StreamReader, way: _Direction, delay: float, first_due: float
) -> None:
    """Queue what `reader` gives, each chunk due `delay` after it came, the first one no
    earlier than `first_due`."""
    loop = asyncio.get_running_loop()
    try:
        while True:
            await way.room.wait()
            data = await reader.read(READ_SIZE)
            if not data:
                break
            due = max(loop.time() + delay, first_due)
            first_due = 0.0
            way.queue.append((due, data))
            way.queued += len(data)
            if way.queued >= WINDOW:
                way.room.clear()
            way.more.set()
    except OSError:
        pass
    finally:
        way.ended = True
        way.more.set()


async def _write(writer: asyncio.StreamWriter, way: _Direction) -> None:
    """Write each queued chunk when it is due; half-close when the reading side ended."""
    loop = asyncio.get_running_loop()
    try:
        while True:
            if not way.queue:
                if way.ended:
                    break
                way.more.clear()
                await way.more.wait()
                continue
            due, data = way.queue[0]
            wait = due - loop.time()
            if wait > 0:
                await asyncio.sleep(wait)
            way.queue.popleft()
            way.queued -= len(data)
            if way.queued < WINDOW:
                way.room.set()
            writer.write(data)
            await writer.drain()
        if writer.can_write_eof():
            writer.write_eof()
    except OSError:
        pass


async def _connection(
    client_reader: asyncio.StreamReader,
    client_writer: asyncio.StreamWriter,
    target: tuple[str, int],
    delay: float,
) -> None:
    accepted = asyncio.get_running_loop().time()
    try:
        server_reader, server_writer = await asyncio.open_connection(*target)
    except OSError:
        client_writer.close()
        return
    up, down = _Direction(), _Direction()
    # The handshake's round trip, then the request's one-way trip.
    handshake = accepted + 3 * delay
    tasks = [
        asyncio.create_task(_read(client_reader, up, delay, handshake)),
        asyncio.create_task(_write(server_writer, up)),
        asyncio.create_task(_read(server_reader, down, delay, 0.0)),
        asyncio.create_task(_write(client_writer, down)),
    ]
    try:
        await asyncio.gather(*tasks, return_exceptions=True)
    finally:
        for writer in (client_writer, server_writer):
            with contextlib.suppress(OSError):
                writer.close()


def _write_stats(path: Path, connections: int) -> None:
    temporary = path.with_name(path.name + ".new")
    temporary.write_text(f"{connections}\n")
    temporary.replace(path)


async def serve(target: tuple[str, int], delay: float, port: int, stats: Path | None) -> None:
    tasks: set[asyncio.Task[None]] = set()
    accepted = 0

    def connected(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        nonlocal accepted
        accepted += 1
        if stats is not None:
            _write_stats(stats, accepted)
        task = asyncio.ensure_future(_connection(reader, writer, target, delay))
        tasks.add(task)
        task.add_done_callback(tasks.discard)

    stop = asyncio.Event()
    loop = asyncio.get_running_loop()
    for sig in (signal.SIGTERM, signal.SIGINT):
        loop.add_signal_handler(sig, stop.set)
    if stats is not None:
        _write_stats(stats, 0)
    server = await asyncio.start_server(connected, "127.0.0.1", port, backlog=512)
    print(f"port {server.sockets[0].getsockname()[1]}", flush=True)
    await stop.wait()
    server.close()
    for task in list(tasks):
        task.cancel()
    await asyncio.gather(*tasks, return_exceptions=True)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--target", required=True, help="HOST:PORT to forward to")
    parser.add_argument("--delay", type=float, default=0.025, help="seconds, each way")
    parser.add_argument("--port", type=int, default=0, help="to listen on (0: any free)")
    parser.add_argument("--stats", type=Path, help="where to count the connections accepted")
    args = parser.parse_args()
    host, _, port = args.target.rpartition(":")
    serving = serve((host, int(port)), args.delay, args.port, args.stats)
    try:
        import uvloop
    except ImportError:
        asyncio.run(serving)
    else:
        uvloop.run(serving)


class LatencyProxy:
    """`bench/latency.py` in a child process: `host` is where clients connect;
    `connections()` how many it has accepted so far."""

    def __init__(self, target: str, delay: float, stats: Path) -> None:
        self.target = target
        self.delay = delay
        self.stats = stats
        self.port = 0
        self.process: subprocess.Popen[str] | None = None

    def connections(self) -> int:
        return int(self.stats.read_text())

    @property
    def host(self) -> str:
        return f"127.0.0.1:{self.port}"

    @property
    def pid(self) -> int:
        assert self.process is not None
        return self.process.pid

    def __enter__(self) -> LatencyProxy:
        command = [sys.executable, str(Path(__file__).resolve())]
        command += ["--target", self.target, "--delay", str(self.delay), "--stats", str(self.stats)]
        self.process = subprocess.Popen(
            command, stdout=subprocess.PIPE, stdin=subprocess.DEVNULL, text=True
        )
        assert self.process.stdout is not None
        started = time.monotonic()
        line = self.process.stdout.readline()
        if not line.startswith("port "):
            self.__exit__()
            raise RuntimeError(f"the latency proxy did not start: {line!r}")
        self.port = int(line.split()[1])
        self.startup_seconds = time.monotonic() - started
        return self

    def __exit__(self, *exc: object) -> None:
        if self.process is None:
            return
        if self.process.poll() is None:
            self.process.send_signal(signal.SIGTERM)
            try:
                self.process.wait(10)
            except subprocess.TimeoutExpired:
                os.kill(self.process.pid, signal.SIGKILL)
                self.process.wait()
        if self.process.stdout is not None:
            self.process.stdout.close()


if __name__ == "__main__":
    main()
