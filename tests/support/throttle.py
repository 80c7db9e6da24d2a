"""A TCP proxy on loopback that slows what the server sends (or, `both_ways`, what the
client sends too: an upload), so a transfer lasts long enough for a test to act while it
runs (stop the daemon, look at `ferryd ps`)."""

from __future__ import annotations

import asyncio
import contextlib
import threading
from collections.abc import Iterator

_PIECE = 64 * 1024


class ThrottledProxy:
    """Forwards 127.0.0.1:port to `target`; replies (and, `both_ways`, requests) at
    `rate` bytes per second."""

    def __init__(self, target: str, rate: float, *, both_ways: bool = False) -> None:
        host, _, port = target.rpartition(":")
        self.target = (host, int(port))
        self.rate = rate
        self.both_ways = both_ways
        self.port = 0
        self._loop = asyncio.new_event_loop()
        self._started = threading.Event()
        self._thread = threading.Thread(target=self._run, daemon=True)
        self._server: asyncio.Server | None = None
        self._tasks: set[asyncio.Task[None]] = set()
        self._writers: set[asyncio.StreamWriter] = set()

    @property
    def host(self) -> str:
        return f"127.0.0.1:{self.port}"

    def start(self) -> None:
        self._thread.start()
        self._started.wait(10)

    def stop(self) -> None:
        asyncio.run_coroutine_threadsafe(self._close(), self._loop).result(10)
        self._loop.call_soon_threadsafe(self._loop.stop)
        self._thread.join(10)

    async def _close(self) -> None:
        """Stop listening and close every connection: each one's task then ends as a
        closed connection ends it (a cancelled one gets logged by asyncio)."""
        assert self._server is not None
        self._server.close()
        for writer in self._writers:
            writer.close()
        await asyncio.gather(*self._tasks, return_exceptions=True)

    def _run(self) -> None:
        asyncio.set_event_loop(self._loop)
        self._server = self._loop.run_until_complete(
            asyncio.start_server(self._connection, "127.0.0.1", 0)
        )
        self.port = self._server.sockets[0].getsockname()[1]
        self._started.set()
        self._loop.run_forever()
        self._loop.close()

    async def _connection(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        task = asyncio.current_task()
        assert task is not None
        self._tasks.add(task)
        self._writers.add(writer)
        try:
            try:
                up_reader, up_writer = await asyncio.open_connection(*self.target)
            except OSError:
                writer.close()
                return
            self._writers.add(up_writer)
            await asyncio.gather(
                self._pipe(reader, up_writer, throttled=self.both_ways),
                self._pipe(up_reader, writer, throttled=True),
                return_exceptions=True,
            )
        finally:
            self._tasks.discard(task)

    async def _pipe(
        self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter, *, throttled: bool
    ) -> None:
        try:
            while data := await reader.read(_PIECE):
                writer.write(data)
                await writer.drain()
                if throttled:
                    await asyncio.sleep(len(data) / self.rate)
        except (OSError, asyncio.CancelledError):
            pass
        finally:
            with contextlib.suppress(OSError):
                writer.close()


@contextlib.contextmanager
def throttled(target: str, rate: float, *, both_ways: bool = False) -> Iterator[ThrottledProxy]:
    proxy = ThrottledProxy(target, rate, both_ways=both_ways)
    proxy.start()
    try:
        yield proxy
    finally:
        proxy.stop()
