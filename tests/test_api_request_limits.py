"""What a request may be, checked as its bytes arrive: its URL and headers (size and
count), its trailer, how many requests may wait behind a running one, a body nobody
reads, and how long a body may keep the daemon waiting. Past a limit the client gets a
4xx with dockerd's `{"message": …}` naming it, or its connection is closed; never a
500, a traceback, a daemon that keeps the bytes, or a request that waits forever.

Sizes are tried on the real daemon (another process: its memory is measured); the body
deadlines on the daemon's API served by its own server on a socket in this process,
where they can be made short.
"""

from __future__ import annotations

import base64
import contextlib
import inspect
import io
import json
import logging
import re
import socket
import tarfile
import threading
import time
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any

import anyio
import httptools
import pytest
from anyio.abc import TaskStatus
from anyio.from_thread import start_blocking_portal
from uvicorn.protocols.http.httptools_impl import HttpToolsProtocol, RequestResponseCycle

from ferryd.daemon.api import limits
from ferryd.daemon.api.app import build_app
from ferryd.daemon.api.serve import ApiServer, bind_unix_socket
from support.app import running
from support.daemon import Daemon
from support.waiting import wait_until

PING = b"GET /_ping HTTP/1.1\r\nHost: ferryd\r\n\r\n"


# -- talking HTTP over a raw socket ----------------------------------------------------


_opened: list[socket.socket] = []


@pytest.fixture(autouse=True)
def _close_sockets() -> Iterator[None]:
    yield
    while _opened:
        _opened.pop().close()


def connect(path: Path, timeout: float = 10) -> socket.socket:
    """A client connection to `path`, closed after the test."""
    sock = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
    _opened.append(sock)
    sock.settimeout(timeout)
    sock.connect(str(path))
    return sock


def read_answer(sock: socket.socket) -> tuple[int, dict[str, str], bytes]:
    """One answer with a Content-Length: its status, headers and body."""
    data = b""
    while b"\r\n\r\n" not in data:
        more = sock.recv(65536)
        assert more, f"the connection closed before an answer: {data!r}"
        data += more
    head, _, body = data.partition(b"\r\n\r\n")
    status_line, *lines = head.decode("latin-1").split("\r\n")
    headers = {k.lower(): v.strip() for k, _, v in (line.partition(":") for line in lines)}
    while len(body) < int(headers["content-length"]):
        more = sock.recv(65536)
        assert more, "the connection closed inside an answer"
        body += more
    return int(status_line.split()[1]), headers, body


def refusal(sock: socket.socket, status: int) -> str:
    """The message of a `{"message": …}` answer with `status`."""
    got, headers, body = read_answer(sock)
    assert got == status, body
    assert headers["content-type"] == "application/json"
    message: str = json.loads(body)["message"]
    return message


def send_until_closed(sock: socket.socket, data: bytes, most: int) -> int:
    """Send `data` again and again, up to `most` bytes in all, while the daemon takes
    it; how many bytes went before the daemon closed the connection (`most` if it never
    did)."""
    sent = 0
    try:
        while sent < most:
            sock.sendall(data)
            sent += len(data)
    except (BrokenPipeError, ConnectionResetError):
        return sent
    return most


def closed_by_peer(sock: socket.socket, timeout: float = 5) -> bool:
    """Whether the daemon closes `sock` within `timeout` (whatever it sends first)."""
    sock.settimeout(timeout)
    try:
        while sock.recv(65536):
            pass
    except TimeoutError:
        return False
    except ConnectionResetError:
        return True
    return True


def peak_memory(daemon: Daemon) -> int:
    """The daemon's peak resident memory so far, in bytes (VmHWM)."""
    assert daemon.process is not None
    for line in Path(f"/proc/{daemon.process.pid}/status").read_text().splitlines():
        if line.startswith("VmHWM:"):
            return int(line.split()[1]) * 1024
    raise AssertionError("no VmHWM")


def tarball(size: int = 256 * 1024) -> bytes:
    """A tar of one file of `size` bytes: an import body."""
    buffer = io.BytesIO()
    with tarfile.open(fileobj=buffer, mode="w") as tar:
        info = tarfile.TarInfo("data.bin")
        info.size = size
        tar.addfile(info, io.BytesIO(b"x" * size))
    return buffer.getvalue()


def post_head(path: str, length: int, *headers: str) -> bytes:
    lines = [f"POST {path} HTTP/1.1", "Host: ferryd", f"Content-Length: {length}", *headers]
    return ("\r\n".join(lines) + "\r\n\r\n").encode()


# -- the URL and the headers (the real daemon) -----------------------------------------


def test_a_url_past_the_limit_is_refused_with_414_before_it_ends(daemon: Daemon) -> None:
    sock = connect(daemon.socket)
    sock.sendall(b"GET /images/json?filters=" + b"a" * (limits.MAX_HEAD + 1024))

    # Answered while the request line has not even ended: nothing more is read.
    message = refusal(sock, 414)
    assert "URL" in message
    assert str(limits.MAX_HEAD) in message
    assert closed_by_peer(sock)


def test_headers_past_the_limit_are_refused_with_431_before_they_end(daemon: Daemon) -> None:
    sock = connect(daemon.socket)
    sock.sendall(b"GET /_ping HTTP/1.1\r\nHost: ferryd\r\nX-Registry-Auth: ")
    sock.sendall(b"a" * (limits.MAX_HEAD + 1024))

    message = refusal(sock, 431)
    assert "headers" in message
    assert str(limits.MAX_HEAD) in message
    assert closed_by_peer(sock)


def test_more_headers_than_the_limit_are_refused_with_431(daemon: Daemon) -> None:
    headers = "".join(f"X-Meta-{n}: {n}\r\n" for n in range(limits.MAX_HEADERS + 1))
    sock = connect(daemon.socket)
    sock.sendall(f"GET /_ping HTTP/1.1\r\nHost: ferryd\r\n{headers}\r\n".encode())

    message = refusal(sock, 431)
    assert f"more than {limits.MAX_HEADERS} headers" in message


def test_a_request_as_big_as_a_docker_clients_biggest_is_served(daemon: Daemon) -> None:
    """A login with a long identity token (registries' tokens run to a few KB), image
    filters, and the headers a docker CLI with custom `HttpHeaders` sends."""
    login = {"identitytoken": "t" * 12_000, "serveraddress": "registry.example:5000"}
    auth = base64.urlsafe_b64encode(json.dumps(login).encode()).decode()
    filters = json.dumps(
        {"reference": [f"registry.example:5000/team/app{n}:*" for n in range(100)]}
    )
    custom = {f"X-Custom-{n}": "v" * 40 for n in range(30)}
    with daemon.http(timeout=10) as http:
        response = http.get(
            "/v1.47/images/json",
            params={"filters": filters},
            headers={"X-Registry-Auth": auth, **custom},
        )

    assert response.status_code == 200, response.text
    assert response.json() == []


def test_heads_far_past_the_limit_leave_the_daemon_small(daemon: Daemon) -> None:
    """Eight clients each sending 16 MiB of one header: the daemon keeps none of it (it
    held every byte until the header deadline, and copied it over and over)."""
    before = peak_memory(daemon)
    sent: list[int] = []

    def flood() -> None:
        sock = connect(daemon.socket)
        sock.sendall(b"GET /_ping HTTP/1.1\r\nHost: ferryd\r\nX-Big: ")
        sent.append(send_until_closed(sock, b"a" * 65536, 16 << 20))
        sock.close()

    threads = [threading.Thread(target=flood) for _ in range(8)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join(30)

    assert max(sent) < 16 << 20  # each was cut off
    assert peak_memory(daemon) - before < 32 << 20
    with daemon.http(timeout=10) as http:
        assert http.get("/_ping").text == "OK"


def ping_head(size: int) -> bytes:
    """A `GET /_ping` that closes the connection, its head (request line, headers and
    the blank line) `size` bytes."""
    start = b"GET /_ping HTTP/1.1\r\nHost: ferryd\r\nConnection: close\r\nX-Pad: "
    end = b"\r\n\r\n"
    return start + b"p" * (size - len(start) - len(end)) + end


def statuses_until_closed(sock: socket.socket) -> list[int]:
    """The statuses of the answers (each with a Content-Length) the daemon sends before
    it closes the connection."""
    data = b""
    with contextlib.suppress(ConnectionResetError):
        while more := sock.recv(65536):
            data += more
    statuses = []
    while data:
        head, _, rest = data.partition(b"\r\n\r\n")
        status_line, *lines = head.decode("latin-1").split("\r\n")
        fields = {k.lower(): v.strip() for k, _, v in (line.partition(":") for line in lines)}
        statuses.append(int(status_line.split()[1]))
        data = rest[int(fields["content-length"]) :]
    return statuses


@pytest.mark.parametrize("cut", [0, 20, limits.MAX_HEAD // 2, limits.MAX_HEAD - 1])
@pytest.mark.parametrize(
    ("size", "served"), [(limits.MAX_HEAD, True), (limits.MAX_HEAD + 1, False)]
)
def test_the_head_limit_is_exact_however_the_reads_split_it(
    daemon: Daemon, cut: int, size: int, served: bool
) -> None:
    """A head of `MAX_HEAD` bytes is served and one byte more is refused (it was served:
    the parser was fed one byte past the limit), in one read or cut into two `cut`
    bytes into it."""
    head = ping_head(size)
    sock = connect(daemon.socket)
    sock.sendall(head[:cut])
    time.sleep(0.2)  # read by the daemon, without the rest
    sock.sendall(head[cut:])

    if served:
        assert statuses_until_closed(sock) == [200]
        assert not daemon.log_events("api.request_refused")
    else:
        assert statuses_until_closed(sock) in ([], [431])
        (refused,) = wait_until(lambda: daemon.log_events("api.request_refused"))
        assert refused["status"] == 431


def test_a_malformed_request_is_answered_400_in_dockers_shape(daemon: Daemon) -> None:
    sock = connect(daemon.socket)
    sock.sendall(b"GET /_ping HTTP/1.1\r\nHost: ferryd\r\nBad Header: x\r\n\r\n")

    assert "invalid HTTP request" in refusal(sock, 400)


# -- what follows a request's headers (the real daemon) --------------------------------


def test_pipelined_requests_past_the_limit_are_answered_then_the_connection_closes(
    daemon: Daemon,
) -> None:
    """Requests sent behind a running one wait, up to a limit: each took the daemon's
    memory (uvicorn queued them all), 2,000 pings in one write, 10,000 a second."""
    sock = connect(daemon.socket)
    sock.sendall(PING * 2000)

    answers = b""
    while more := sock.recv(65536):
        answers += more

    assert answers.startswith(b"HTTP/1.1 200 OK\r\n")
    assert answers.count(b"HTTP/1.1 200 OK\r\n") <= limits.MAX_PIPELINED + 1


def test_a_trailer_that_never_ends_closes_the_connection(daemon: Daemon) -> None:
    """A chunked body's trailer is read for no one: past the limit the connection goes
    (its fields were added to the request's headers, without end)."""
    sock = connect(daemon.socket)
    sock.sendall(
        b"POST /auth HTTP/1.1\r\nHost: ferryd\r\nTransfer-Encoding: chunked\r\n\r\n2\r\n{}\r\n0\r\n"
    )
    sent = send_until_closed(sock, b"X-Trailer: " + b"t" * 1000 + b"\r\n", 16 << 20)

    assert sent < 16 << 20
    assert closed_by_peer(sock)


def test_a_body_the_answer_did_not_wait_for_is_not_read_forever(daemon: Daemon) -> None:
    """The answer went out; the rest of the body is taken up to a limit, then the
    connection is closed (it was read and dropped for as long as the client sent)."""
    sock = connect(daemon.socket)
    sock.sendall(b"GET /_ping HTTP/1.1\r\nHost: ferryd\r\nContent-Length: 1000000000\r\n\r\n")
    status, _, body = read_answer(sock)
    assert (status, body) == (200, b"OK")

    assert send_until_closed(sock, b"b" * 65536, 16 << 20) < 16 << 20
    assert closed_by_peer(sock)


def test_a_body_that_ends_soon_after_the_answer_is_taken_and_the_connection_kept(
    daemon: Daemon,
) -> None:
    """A small body the answer did not wait for: the client can still send it whole, and
    its connection serves the next request (the answer did not say it would close)."""
    sock = connect(daemon.socket)
    sock.sendall(b"GET /_ping HTTP/1.1\r\nHost: ferryd\r\nContent-Length: 100000\r\n\r\n")
    status, headers, _ = read_answer(sock)
    assert (status, headers.get("connection")) == (200, None)

    sock.sendall(b"b" * 100_000)  # no reset: it was read
    sock.sendall(b"GET /_ping HTTP/1.1\r\nHost: ferryd\r\n\r\n")
    assert read_answer(sock)[0] == 200


def test_a_request_in_the_read_that_ends_a_dropped_body_is_answered(daemon: Daemon) -> None:
    sock = connect(daemon.socket)
    sock.sendall(b"GET /_ping HTTP/1.1\r\nHost: ferryd\r\nContent-Length: 10\r\n\r\n")
    assert read_answer(sock)[0] == 200

    sock.sendall(b"0123456789" + b"GET /_ping HTTP/1.1\r\nHost: ferryd\r\n\r\n")
    assert read_answer(sock)[0] == 200


def test_a_login_declared_past_the_limit_is_refused_with_413_at_once(daemon: Daemon) -> None:
    sock = connect(daemon.socket)
    sock.sendall(post_head("/auth", 10**9, "Content-Type: application/json"))

    message = refusal(sock, 413)
    assert f"the login is over {limits.MAX_LOGIN_BODY} bytes" in message


def test_a_login_past_the_limit_is_refused_with_413_as_it_arrives(daemon: Daemon) -> None:
    sock = connect(daemon.socket)
    sock.sendall(
        b"POST /auth HTTP/1.1\r\nHost: ferryd\r\nTransfer-Encoding: chunked\r\n\r\n"
        + b"%x\r\n" % (limits.MAX_LOGIN_BODY + 1)
        + b" " * (limits.MAX_LOGIN_BODY + 1)
        + b"\r\n"
    )

    assert f"the login is over {limits.MAX_LOGIN_BODY} bytes" in refusal(sock, 413)


def test_a_client_that_leaves_inside_its_login_is_no_500(daemon: Daemon) -> None:
    sock = connect(daemon.socket)
    sock.sendall(post_head("/auth", 100) + b'{"username"')
    time.sleep(0.2)  # the handler is reading the body
    sock.close()

    (logged,) = daemon.logged_requests("/auth")
    assert logged["status"] != 500
    assert not [e for e in daemon.log_events() if e.get("level") == "error"]


# -- how long a body may keep the daemon waiting (the API in this process) -------------


@contextmanager
def api_socket(tmp_path: Path) -> Iterator[Path]:
    """The daemon's API (build_app over a store in tmp_path) served by its server
    (ApiServer, ferryd's HTTP protocol) on a socket, from a thread of its own."""
    path = tmp_path / "api.sock"
    stop = threading.Event()

    async def serve(*, task_status: TaskStatus[None]) -> None:
        async with running(tmp_path / "api") as daemon:
            app = build_app(daemon.service, daemon.state)
            server = ApiServer(app, bind_unix_socket(path, 0o600), grace=1)
            async with anyio.create_task_group() as tg:
                tg.start_soon(server.serve)
                await server.wait_started()
                task_status.started()
                await anyio.to_thread.run_sync(stop.wait)
                server.stop()
                daemon.state.stop_jobs.set()

    with start_blocking_portal() as portal:
        future, _ = portal.start_task(serve)
        try:
            yield path
        finally:
            stop.set()
            future.result(timeout=20)


def image_ids(path: Path) -> list[Any]:
    sock = connect(path)
    sock.sendall(b"GET /images/json HTTP/1.1\r\nHost: ferryd\r\n\r\n")
    status, _, body = read_answer(sock)
    assert status == 200
    ids: list[Any] = [image["Id"] for image in json.loads(body)]
    return ids


def test_a_login_that_stops_arriving_is_answered_408(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setattr(limits, "SMALL_BODY_TIMEOUT", 0.5)
    monkeypatch.setattr(limits, "DRAIN_TIMEOUT", 0.5)
    with api_socket(tmp_path) as path:
        sock = connect(path)
        sock.sendall(post_head("/auth", 100) + b'{"username"')

        message = refusal(sock, 408)
        assert "the login did not arrive within 0.5 seconds" in message
        assert closed_by_peer(sock)


def test_a_login_dripped_past_its_deadline_is_answered_408(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """A byte now and then keeps no idle timer from firing: a login has a deadline."""
    monkeypatch.setattr(limits, "SMALL_BODY_TIMEOUT", 1.0)
    with api_socket(tmp_path) as path:
        sock = connect(path)
        sock.sendall(post_head("/auth", 1000))
        answered = threading.Event()

        def drip() -> None:
            while not answered.is_set():
                try:
                    sock.send(b" ")
                except OSError:
                    return
                time.sleep(0.1)

        dripper = threading.Thread(target=drip)
        dripper.start()
        try:
            assert "did not arrive within 1 seconds" in refusal(sock, 408)
        finally:
            answered.set()
            dripper.join(5)


@pytest.mark.parametrize(
    ("path", "params"), [("/images/create", "?fromSrc=-&repo=team/base"), ("/images/load", "")]
)
def test_an_archive_body_that_goes_silent_is_answered_408_and_nothing_is_stored(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, path: str, params: str
) -> None:
    monkeypatch.setattr(limits, "BODY_IDLE_TIMEOUT", 0.5)
    monkeypatch.setattr(limits, "DRAIN_TIMEOUT", 0.5)
    archive = tarball()
    with api_socket(tmp_path) as socket_path:
        sock = connect(socket_path)
        sock.sendall(post_head(path + params, len(archive)) + archive[:4096])

        assert "no byte of the request body for 0.5 seconds" in refusal(sock, 408)
        assert closed_by_peer(sock)
        assert image_ids(socket_path) == []


def test_a_slow_but_steady_import_is_not_cut(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """The idle timeout is no deadline: a body may take as long as it needs while it
    keeps coming (here four times the timeout)."""
    monkeypatch.setattr(limits, "BODY_IDLE_TIMEOUT", 0.5)
    archive = tarball()
    step = len(archive) // 8 + 1
    pieces = [archive[i : i + step] for i in range(0, len(archive), step)]
    with api_socket(tmp_path) as path:
        sock = connect(path)
        sock.sendall(post_head("/images/create?fromSrc=-&repo=team/base", len(archive)))
        started = time.monotonic()
        for piece in pieces:
            time.sleep(0.25)
            sock.sendall(piece)

        status, _, body = read_answer(sock)
        assert status == 200, body
        assert time.monotonic() - started > 4 * limits.BODY_IDLE_TIMEOUT
        assert json.loads(body)["status"].startswith("sha256:")
        wait_until(lambda: len(image_ids(path)) == 1)


def test_a_streamed_answer_is_not_ended_by_its_request_body_stalling(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """The idle timeout is for routes that wait for their body: `/events`, which reads
    none (Starlette only listens for the client leaving), streams on."""
    monkeypatch.setattr(limits, "BODY_IDLE_TIMEOUT", 0.2)
    monkeypatch.setattr(limits, "DRAIN_TIMEOUT", 0.5)
    with api_socket(tmp_path) as path:
        sock = connect(path)
        until = time.time() + 1.5
        sock.sendall(
            f"GET /events?until={until:.3f} HTTP/1.1\r\nHost: ferryd\r\n"
            "Content-Length: 10\r\n\r\n".encode()
        )
        answer = b""
        while not answer.endswith(b"0\r\n\r\n"):
            more = sock.recv(65536)
            assert more, answer
            answer += more

        assert answer.startswith(b"HTTP/1.1 200 OK\r\n")
        assert time.time() >= until - 0.1


# -- what the limits take from uvicorn and httptools -----------------------------------


@pytest.mark.parametrize(
    ("method", "parameters"),
    [
        ("data_received", ["self", "data"]),
        ("on_url", ["self", "url"]),
        ("on_header", ["self", "name", "value"]),
        ("on_headers_complete", ["self"]),
        ("on_body", ["self", "body"]),
        ("on_message_complete", ["self"]),
        ("on_response_complete", ["self"]),
        ("_unset_keepalive_if_required", ["self"]),
        ("_start_asgi_task", ["self", "cycle", "app"]),
    ],
)
def test_uvicorn_has_the_methods_the_request_limits_override(
    method: str, parameters: list[str]
) -> None:
    found = getattr(HttpToolsProtocol, method, None)
    assert callable(found), f"uvicorn: HttpToolsProtocol.{method} is gone (limits.py)"
    assert list(inspect.signature(found).parameters) == parameters, (
        f"uvicorn: HttpToolsProtocol.{method}{inspect.signature(found)} changed (limits.py)"
    )


@pytest.mark.parametrize(
    ("owner", "code"),
    [
        # The URL is kept in parts and joined into `self.url` before it is read there.
        (HttpToolsProtocol.on_headers_complete, "httptools.parse_url(self.url)"),
        (HttpToolsProtocol.on_headers_complete, "on_response=self.on_response_complete"),
        (HttpToolsProtocol.on_headers_complete, "self.pipeline.appendleft((self.cycle, app))"),
        (HttpToolsProtocol.data_received, "self.parser.feed_data(data)"),
        (HttpToolsProtocol.send_400_response, "self.server_state.default_headers"),
        (RequestResponseCycle.send, "if not self.keep_alive:"),
    ],
)
def test_uvicorn_keeps_what_the_request_limits_read(owner: Any, code: str) -> None:
    assert code in inspect.getsource(owner), (
        f"uvicorn: {owner.__qualname__} no longer has `{code}`; BoundedRequestProtocol "
        "(daemon/api/limits.py) relies on it"
    )


def test_httptools_reports_a_trailer_after_the_headers_and_stops_on_a_callback_error() -> None:
    calls: list[str] = []

    class Callbacks:
        def on_header(self, name: bytes, value: bytes) -> None:
            calls.append(name.decode())
            if name == b"X-Stop":
                raise RuntimeError

        def on_headers_complete(self) -> None:
            calls.append("headers complete")

        def on_message_complete(self) -> None:
            calls.append("message complete")

    parser = httptools.HttpRequestParser(Callbacks())
    parser.feed_data(
        b"POST / HTTP/1.1\r\nTransfer-Encoding: chunked\r\n\r\n0\r\nX-Trailer: 1\r\n\r\n"
    )
    assert calls == ["Transfer-Encoding", "headers complete", "X-Trailer", "message complete"]
    with pytest.raises(httptools.HttpParserCallbackError):
        parser.feed_data(b"GET / HTTP/1.1\r\nX-Stop: 1\r\nX-After: 1\r\n\r\n")
    assert "X-After" not in calls


# -- how long a streamed answer may wait for its client (the API in this process) -------


def test_a_save_whose_client_stops_reading_is_cut_and_lets_go_of_the_image(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """A client that takes nothing of a 16 MB archive: the daemon aborts its connection
    once the answer has waited WRITE_IDLE_TIMEOUT, and the image's layers are no longer
    held (an rmi frees them at once)."""
    monkeypatch.setattr(limits, "WRITE_IDLE_TIMEOUT", 0.5)
    archive = tarball(16 << 20)
    with api_socket(tmp_path) as path:
        sock = connect(path)
        sock.sendall(post_head("/images/create?fromSrc=-&repo=team/big", len(archive)))
        sock.sendall(archive)
        assert read_answer(sock)[0] == 200
        stalled = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
        _opened.append(stalled)
        stalled.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, 4096)
        stalled.connect(str(path))
        stalled.sendall(b"GET /images/team/big/get HTTP/1.1\r\nHost: ferryd\r\n\r\n")
        time.sleep(2.0)  # it reads nothing

        received = 0
        stalled.settimeout(5)
        with contextlib.suppress(ConnectionResetError):
            while more := stalled.recv(1 << 20):
                received += len(more)
        assert received < len(archive)  # cut, not sent whole
        sock = connect(path)
        sock.sendall(b"DELETE /images/team/big HTTP/1.1\r\nHost: ferryd\r\n\r\n")
        assert read_answer(sock)[0] == 200
        wait_until(lambda: not list((tmp_path / "api").rglob("blobs/sha256/*")))


def test_a_stalled_save_with_a_request_pipelined_behind_it_ends_quietly(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, caplog: pytest.LogCaptureFixture
) -> None:
    """uvicorn marks only the last request of a connection that ends as gone: the save
    ahead of the pipelined ping was left unfinished and "returned without completing
    response" was logged as an application error."""
    monkeypatch.setattr(limits, "WRITE_IDLE_TIMEOUT", 0.5)
    archive = tarball(4 << 20)
    with api_socket(tmp_path) as path:
        sock = connect(path)
        sock.sendall(post_head("/images/create?fromSrc=-&repo=team/big", len(archive)))
        sock.sendall(archive)
        assert read_answer(sock)[0] == 200
        stalled = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
        _opened.append(stalled)
        stalled.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, 4096)
        stalled.connect(str(path))
        with caplog.at_level("INFO"):
            stalled.sendall(b"GET /images/team/big/get HTTP/1.1\r\nHost: ferryd\r\n\r\n" + PING)
            time.sleep(2.0)  # it reads nothing
            assert closed_by_peer(stalled)

            sock = connect(path)
            sock.sendall(PING)
            assert read_answer(sock)[0] == 200

    errors = [r for r in caplog.records if r.levelno >= logging.ERROR or r.exc_info]
    assert not errors, [r.getMessage() for r in errors]


def event_actions(path: Path) -> list[str]:
    """The actions of the events the daemon has kept, oldest first."""
    sock = connect(path)
    until = time.time()
    sock.sendall(f"GET /events?since=0&until={until:.3f} HTTP/1.1\r\nHost: ferryd\r\n\r\n".encode())
    answer = b""
    while not answer.endswith(b"0\r\n\r\n"):
        more = sock.recv(65536)
        assert more, answer
        answer += more
    return [action.decode() for action in re.findall(rb'"Action":\s*"(\w+)"', answer)]


def test_a_save_whose_client_leaves_with_a_request_pipelined_behind_it_stops(
    tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    """uvicorn told only the pipelined request that the client was gone: the save ahead
    of it wrote the rest of its archive to no one (asyncio warning of each write) and
    was reported done."""
    archive = tarball(16 << 20)
    with api_socket(tmp_path) as path:
        sock = connect(path)
        sock.sendall(post_head("/images/create?fromSrc=-&repo=team/big", len(archive)))
        sock.sendall(archive)
        assert read_answer(sock)[0] == 200
        leaving = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
        _opened.append(leaving)
        leaving.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, 4096)
        leaving.connect(str(path))
        with caplog.at_level("INFO"):
            leaving.sendall(b"GET /images/team/big/get HTTP/1.1\r\nHost: ferryd\r\n\r\n" + PING)
            time.sleep(0.3)  # the save waits for the client to read
            leaving.close()
            time.sleep(1.0)

        actions = event_actions(path)

    assert "import" in actions
    assert "save" not in actions
    noise = [r for r in caplog.records if r.name == "asyncio" or r.levelno >= logging.ERROR]
    assert not noise, [r.getMessage() for r in noise]
