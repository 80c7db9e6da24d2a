"""API connections under a flood: idle and half-sent ones time out, a cap keeps the file
descriptors, and the health check and `ferryd ps` still answer."""

from __future__ import annotations

import resource
import socket
import threading
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from pathlib import Path

import anyio
import pytest
from anyio.from_thread import start_blocking_portal
from starlette.types import Receive, Scope, Send

from ferryd.cli.client import Client, DaemonError
from ferryd.daemon.api import connections, serve
from ferryd.daemon.api.serve import ApiServer, bind_unix_socket
from support.daemon import Daemon
from support.waiting import wait_until

Connect = Callable[[Path], socket.socket]


@pytest.fixture
def connect() -> Iterator[Connect]:
    """Open a client connection to a Unix socket; all are closed after the test."""
    opened: list[socket.socket] = []

    def open_one(path: Path) -> socket.socket:
        sock = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
        opened.append(sock)
        sock.connect(str(path))
        return sock

    yield open_one
    for sock in opened:
        sock.close()


def closed_by_peer(sock: socket.socket, timeout: float = 5.0) -> bool:
    """Whether the server closes `sock` within `timeout` (it sends nothing first)."""
    sock.settimeout(timeout)
    try:
        return sock.recv(1) == b""
    except TimeoutError:
        return False
    except ConnectionResetError:
        return True


def read_answer(sock: socket.socket) -> bytes:
    """One HTTP answer with a Content-Length, head and body."""
    sock.settimeout(5)
    answer = b""
    while b"\r\n\r\n" not in answer:
        answer += sock.recv(4096)
    head, _, body = answer.partition(b"\r\n\r\n")
    length = int(head.lower().split(b"content-length: ")[1].split(b"\r\n")[0])
    while len(body) < length:
        body += sock.recv(4096)
    return head + b"\r\n\r\n" + body


def ping(path: Path) -> bytes:
    return Client(f"unix://{path}", timeout=5).request("GET", "/_ping").read()


class App:
    """Answers `/_ping` at once; `/slow` waits until released (a busy connection)."""

    def __init__(self) -> None:
        self.release = threading.Event()
        self.busy = 0

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["path"].endswith("/slow"):
            self.busy += 1
            await anyio.to_thread.run_sync(self.release.wait)
        await send({"type": "http.response.start", "status": 200, "headers": []})
        await send({"type": "http.response.body", "body": b"OK"})


@contextmanager
def api_server(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, *, limit: int, header_timeout: float
) -> Iterator[tuple[Path, App]]:
    """The daemon's API server (uvicorn with ferryd's protocol) on a socket, in a thread."""
    monkeypatch.setattr(connections, "HEADER_TIMEOUT", header_timeout)
    monkeypatch.setattr(connections, "RESERVE", 2)
    monkeypatch.setattr(serve, "connection_limit", lambda: limit)
    path = tmp_path / "api.sock"
    app = App()
    server = ApiServer(app, bind_unix_socket(path, 0o600), grace=1)
    with start_blocking_portal() as portal:
        future = portal.start_task_soon(server.serve)
        portal.call(server.wait_started)
        try:
            yield path, app
        finally:
            app.release.set()
            portal.call(server.stop)
            future.result(timeout=10)


def test_a_connection_that_never_sends_a_request_is_closed(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, connect: Connect
) -> None:
    with api_server(tmp_path, monkeypatch, limit=10, header_timeout=0.2) as (path, _):
        silent = connect(path)
        assert closed_by_peer(silent)
        assert ping(path) == b"OK"


def test_a_request_whose_headers_never_end_is_closed(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, connect: Connect
) -> None:
    with api_server(tmp_path, monkeypatch, limit=10, header_timeout=0.2) as (path, _):
        half = connect(path)
        half.sendall(b"GET /_ping HTTP/1.1\r\nHost: ferryd\r\nX-Slow: ")
        assert closed_by_peer(half)


def test_a_request_that_is_running_is_not_closed_by_the_header_deadline(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, connect: Connect
) -> None:
    with api_server(tmp_path, monkeypatch, limit=10, header_timeout=0.2) as (path, app):
        busy = connect(path)
        busy.sendall(b"GET /slow HTTP/1.1\r\nHost: ferryd\r\n\r\n")
        wait_until(lambda: app.busy == 1)
        assert not closed_by_peer(busy, timeout=0.6)
        app.release.set()
        busy.settimeout(5)
        assert busy.recv(1024).startswith(b"HTTP/1.1 200")


def test_over_the_cap_the_connection_idle_the_longest_makes_room(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, connect: Connect
) -> None:
    with api_server(tmp_path, monkeypatch, limit=4, header_timeout=30) as (path, _):
        idle = [connect(path) for _ in range(4)]
        assert ping(path) == b"OK"
        assert closed_by_peer(idle[0])  # the oldest made room for the ping
        newer = [connect(path) for _ in range(2)]  # the second is one over the cap
        assert closed_by_peer(idle[1])
        assert not any(closed_by_peer(sock, timeout=0.2) for sock in [*idle[2:], *newer])


def test_when_every_connection_is_busy_the_reserve_answers_only_the_cheap_routes(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, connect: Connect
) -> None:
    with api_server(tmp_path, monkeypatch, limit=3, header_timeout=30) as (path, app):
        busy = [connect(path) for _ in range(3)]
        for sock in busy:
            sock.sendall(b"GET /slow HTTP/1.1\r\nHost: ferryd\r\n\r\n")
        wait_until(lambda: app.busy == 3)

        assert ping(path) == b"OK"
        reserve = connect(path)
        reserve.sendall(b"GET /images/json HTTP/1.1\r\nHost: ferryd\r\n\r\n")
        answer = read_answer(reserve)
        assert answer.startswith(b"HTTP/1.1 503")
        assert b"too many connections" in answer
        # More connections take the places of idle ones, never of a busy one.
        extra = [connect(path) for _ in range(3)]
        assert closed_by_peer(reserve)
        assert len(extra) == 3
        app.release.set()
        for sock in busy:
            sock.settimeout(5)
            assert sock.recv(1024).startswith(b"HTTP/1.1 200")


@pytest.fixture
def many_files() -> Iterator[int]:
    """Raise this process's file limit for a flood of client sockets."""
    soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    wanted = min(hard, 8192)
    if wanted < 3000:
        pytest.skip(f"the file descriptor limit ({hard}) is too low for a flood")
    resource.setrlimit(resource.RLIMIT_NOFILE, (wanted, hard))
    yield wanted
    resource.setrlimit(resource.RLIMIT_NOFILE, (soft, hard))


def test_the_daemon_answers_ping_and_ps_under_a_flood_of_idle_connections(
    start_daemon: Callable[..., Daemon], many_files: int, connect: Connect
) -> None:
    daemon = start_daemon()
    assert daemon.process is not None
    for _ in range(2500):
        connect(daemon.socket)

    def ping() -> bool:
        try:
            return daemon.client().request("GET", "/_ping").read() == b"OK"
        except DaemonError:  # the backlog is full until the daemon has taken the flood
            return False

    wait_until(ping, timeout=20, what="a ping through the flood")
    assert daemon.client().get_json("/transfers") == []
    assert daemon.client().get_json("/info")["Images"] == 0
    open_files = len(list(Path(f"/proc/{daemon.process.pid}/fd").iterdir()))
    assert open_files < connections.MAX_CONNECTIONS + connections.RESERVE + 100
