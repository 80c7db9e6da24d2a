"""Start `ferryd serve` by forking a process that has already imported it.

A fresh `python -m ferryd serve` spends most of its start-up importing (starlette,
uvicorn, httpx, structlog, uvloop...): a third of a second of CPU for every daemon a
test starts. The fork server imports all that once per test worker and forks a child
for each daemon: a real process of its own, on the real socket, that signals, reloads,
crashes and exits as one started from scratch does, with its output in its log file.

The tests turn it on (conftest calls `enable`); elsewhere (the benchmarks, which
measure a daemon's CPU from its start) and with `FERRYD_TESTS_NO_FORK=1`, every daemon
is a plain `subprocess.Popen` of `python -m ferryd`.
"""

from __future__ import annotations

import atexit
import contextlib
import json
import os
import queue
import resource
import signal
import subprocess
import sys
import tempfile
import threading
from pathlib import Path

# The fork server: reads one JSON line per daemon to start on stdin; writes
# {"started": pid} for each, then {"exited": pid, "code": returncode} when it ends.
# It never starts a thread (a fork copies only the thread that calls it).
_SERVER = r"""
import io, json, os, resource, select, signal, sys, traceback

import anyio._backends._asyncio, uvloop  # what `ferryd serve` imports to run
import ferryd.cli.commands, ferryd.daemon.main, ferryd.daemon.settings
from ferryd.cli.commands import main

wake_r, wake_w = os.pipe()
os.set_blocking(wake_w, False)
signal.set_wakeup_fd(wake_w)
signal.signal(signal.SIGCHLD, lambda *_: None)


def reply(message):
    os.write(1, json.dumps(message).encode() + b"\n")


def serve(spec):
    # In the child: become `python -m ferryd <argv>` with PYTHONUNBUFFERED output.
    code = 1
    try:
        signal.set_wakeup_fd(-1)
        signal.signal(signal.SIGCHLD, signal.SIG_DFL)
        os.close(wake_r)
        os.close(wake_w)
        log = os.open(spec["log"], os.O_WRONLY | os.O_APPEND | os.O_CREAT, 0o644)
        nothing = os.open(os.devnull, os.O_RDONLY)
        os.dup2(nothing, 0)
        os.dup2(log, 1)
        os.dup2(log, 2)
        os.close(log)
        os.close(nothing)
        sys.stdin = open(0, closefd=False)
        sys.stdout = io.TextIOWrapper(io.FileIO(1, "w", closefd=False), write_through=True)
        sys.stderr = io.TextIOWrapper(
            io.FileIO(2, "w", closefd=False), write_through=True, errors="backslashreplace"
        )
        os.environ.clear()
        os.environ.update(spec["env"])
        os.chdir(spec["cwd"])
        os.umask(spec["umask"])
        resource.setrlimit(resource.RLIMIT_NOFILE, tuple(spec["nofile"]))
        code = main(spec["argv"])
    except SystemExit as exc:
        if exc.code is None or isinstance(exc.code, int):
            code = exc.code or 0
        else:
            print(exc.code, file=sys.stderr)
    except BaseException:
        traceback.print_exc()
    finally:
        os._exit(code)


def reap():
    while True:
        try:
            pid, status = os.waitpid(-1, os.WNOHANG)
        except ChildProcessError:
            return
        if pid == 0:
            return
        reply({"exited": pid, "code": os.waitstatus_to_exitcode(status)})


pending = b""
while True:
    try:
        ready, _, _ = select.select([0, wake_r], [], [])
    except InterruptedError:
        continue
    if wake_r in ready:
        os.read(wake_r, 4096)
        reap()
    if 0 in ready:
        data = os.read(0, 65536)
        if not data:
            break  # the test worker has gone
        pending += data
        while b"\n" in pending:
            line, pending = pending.split(b"\n", 1)
            spec = json.loads(line)
            pid = os.fork()
            if pid == 0:
                serve(spec)
            reply({"started": pid})
"""


class ForkedProcess:
    """What tests use of `subprocess.Popen`, for a child of the fork server."""

    def __init__(self, server: ForkServer, pid: int, args: list[str]) -> None:
        self._server = server
        self.pid = pid
        self.args = args
        self.returncode: int | None = None

    def poll(self) -> int | None:
        if self.returncode is None:
            self.returncode = self._server.exit_code(self.pid, timeout=0)
        return self.returncode

    def wait(self, timeout: float | None = None) -> int:
        if self.returncode is None:
            self.returncode = self._server.exit_code(self.pid, timeout)
            if self.returncode is None:
                raise subprocess.TimeoutExpired(self.args, timeout or 0)
        return self.returncode

    def send_signal(self, sig: int) -> None:
        if self.poll() is None:  # never signal a pid that may have been reused
            # As Popen: the child may have exited (and been reaped) since poll().
            with contextlib.suppress(ProcessLookupError):
                os.kill(self.pid, sig)

    def terminate(self) -> None:
        self.send_signal(signal.SIGTERM)

    def kill(self) -> None:
        self.send_signal(signal.SIGKILL)


class ForkServer:
    def __init__(self) -> None:
        # What the server says if it dies; open as long as it lives.
        self._errors = tempfile.TemporaryFile()  # noqa: SIM115
        self._process = subprocess.Popen(
            [sys.executable, "-c", _SERVER],
            stdin=subprocess.PIPE,
            stdout=subprocess.PIPE,
            stderr=self._errors,
        )
        self._starting = threading.Lock()
        self._started: queue.Queue[int | None] = queue.Queue()
        self._exits: dict[int, int] = {}
        self._exited = threading.Condition()
        self._children: list[int] = []
        self.dead = False
        self._reader = threading.Thread(target=self._read, name="fork server", daemon=True)
        self._reader.start()

    def spawn(self, argv: list[str], *, env: dict[str, str], log: Path) -> ForkedProcess:
        """`python -m ferryd <argv>` with `env`, its output appended to `log`; as a
        child of this process would, it gets our directory, umask and file limit."""
        spec = {
            "argv": argv,
            "env": env,
            "log": str(log),
            "cwd": os.getcwd(),
            "umask": _umask(),
            "nofile": resource.getrlimit(resource.RLIMIT_NOFILE),
        }
        assert self._process.stdin is not None
        with self._starting:
            try:
                self._process.stdin.write(json.dumps(spec).encode() + b"\n")
                self._process.stdin.flush()
                pid = self._started.get(timeout=30)
            except (OSError, queue.Empty):
                pid = None
            if pid is None:
                raise RuntimeError(f"the fork server did not start ferryd:\n{self._said()}")
        self._children.append(pid)
        return ForkedProcess(self, pid, ["ferryd", *argv])

    def exit_code(self, pid: int, timeout: float | None) -> int | None:
        """The child's return code once it has exited; None if it still runs after
        `timeout` seconds (None: wait as long as it takes)."""
        with self._exited:
            self._exited.wait_for(lambda: pid in self._exits or self.dead, timeout)
            if pid not in self._exits and self.dead:
                raise RuntimeError(f"the fork server died: ferryd's ({pid}) end is lost")
            return self._exits.get(pid)

    def _said(self) -> str:
        self._errors.seek(0)
        return self._errors.read().decode(errors="replace")[-4000:]

    def _read(self) -> None:
        assert self._process.stdout is not None
        for line in self._process.stdout:
            message = json.loads(line)
            if "started" in message:
                self._started.put(message["started"])
            else:
                with self._exited:
                    self._exits[message["exited"]] = message["code"]
                    self._exited.notify_all()
        with self._exited:  # the server has gone: nobody will say who exits now
            self.dead = True
            self._exited.notify_all()
        self._started.put(None)

    def close(self) -> None:
        """Once every child has exited (those told to stop get 20 s, then SIGKILL)."""
        with self._exited:
            self._exited.wait_for(lambda: set(self._children) <= set(self._exits) or self.dead, 20)
            stuck = [pid for pid in self._children if pid not in self._exits]
        for pid in stuck:
            print(f"ferryd (pid {pid}) did not stop: killed", file=sys.stderr)
            with contextlib.suppress(ProcessLookupError):
                os.kill(pid, signal.SIGKILL)
        assert self._process.stdin is not None
        with contextlib.suppress(OSError):
            self._process.stdin.close()  # the server's cue to end
        self._process.wait(10)
        self._reader.join(10)
        assert self._process.stdout is not None
        self._process.stdout.close()
        self._errors.close()


def _umask() -> int:
    """This process's umask, read without changing it (os.umask would, for a moment)."""
    for line in Path("/proc/self/status").read_text().splitlines():
        if line.startswith("Umask:"):
            return int(line.split()[1], 8)
    raise RuntimeError("no Umask in /proc/self/status")


_server: ForkServer | None = None
_server_lock = threading.Lock()
_enabled = False


def enable() -> None:
    """Fork daemons from a fork server from now on (this process's tests)."""
    global _enabled
    _enabled = True


def spawn(
    argv: list[str], *, env: dict[str, str], log: Path
) -> ForkedProcess | subprocess.Popen[bytes]:
    """Start `python -m ferryd <argv>`: forked from this process's fork server (started
    on first use) once `enable` has been called, else as a plain subprocess."""
    global _server
    if not _enabled or os.environ.get("FERRYD_TESTS_NO_FORK"):
        with log.open("ab") as out:
            return subprocess.Popen(
                [sys.executable, "-m", "ferryd", *argv],
                stdout=out,
                stderr=subprocess.STDOUT,
                env={**env, "PYTHONUNBUFFERED": "1"},
            )
    with _server_lock:
        if _server is None or _server.dead:
            _server = ForkServer()
            atexit.register(_server.close)
    return _server.spawn(argv, env=env, log=log)
