"""A fake daemon on a real Unix socket that answers every request with the same bytes,
for the CLI given answers no daemon of ours sends: cut short, not JSON, of another shape."""

from __future__ import annotations

import contextlib
import json
import socket
import socketserver
import subprocess
import threading
from collections.abc import Iterator
from pathlib import Path


class _Handler(socketserver.StreamRequestHandler):
    server: FakeDaemon

    def handle(self) -> None:
        head = []
        while (line := self.rfile.readline()) not in (b"\r\n", b""):
            head.append(line)
        if head:
            self.server.requests.append(head[0].decode().split()[1])
        with contextlib.suppress(OSError):
            self.wfile.write(self.server.answer)
            self.wfile.flush()
            self.connection.shutdown(socket.SHUT_WR)
            # A socket closed with a request body unread resets the client's end before
            # it has read the answer.
            while self.connection.recv(1 << 16):
                pass


class FakeDaemon(socketserver.ThreadingUnixStreamServer):
    daemon_threads = True

    def __init__(self, path: Path, answer: bytes) -> None:
        super().__init__(str(path), _Handler)
        self.answer = answer
        self.host = f"unix://{path}"  # for `-H`
        self.requests: list[str] = []  # the paths asked for


@contextlib.contextmanager
def fake_daemon(tmp_path: Path, answer: bytes) -> Iterator[FakeDaemon]:
    """A socket (`host(tmp_path)`) answering every request with the bytes of `answer`,
    then ending its side of the connection."""
    server = FakeDaemon(tmp_path / "fake.sock", answer)
    thread = threading.Thread(target=server.serve_forever, kwargs={"poll_interval": 0.05})
    thread.start()
    try:
        yield server
    finally:
        server.shutdown()
        server.server_close()
        thread.join(10)
        (tmp_path / "fake.sock").unlink()


def host(tmp_path: Path) -> str:
    return f"unix://{tmp_path / 'fake.sock'}"


def sized(body: bytes, length: int | None = None, status: str = "200 OK") -> bytes:
    """An answer framed by Content-Length (`length`, to lie about it)."""
    length = len(body) if length is None else length
    return (
        f"HTTP/1.1 {status}\r\nContent-Type: application/json\r\nContent-Length: {length}\r\n"
        "Connection: close\r\n\r\n"
    ).encode() + body


def chunked(*pieces: bytes, last: bool = True) -> bytes:
    """A chunked answer, a chunk a piece; without its last (empty) chunk when `last` is
    False: cut."""
    head = (
        b"HTTP/1.1 200 OK\r\nContent-Type: application/json\r\nTransfer-Encoding: chunked\r\n\r\n"
    )
    body = b"".join(b"%x\r\n%s\r\n" % (len(piece), piece) for piece in pieces if piece)
    return head + body + (b"0\r\n\r\n" if last else b"")


def lines(*messages: object) -> bytes:
    """JSON lines, as progress streams and events come."""
    return b"".join(json.dumps(message).encode() + b"\r\n" for message in messages)


def assert_failed(result: subprocess.CompletedProcess[str], message: str, status: int = 1) -> None:
    """Exit `status` with `message` on stderr, and no traceback."""
    assert "Traceback" not in result.stderr, result.stderr
    assert result.returncode == status, (result.returncode, result.stdout, result.stderr)
    assert message in result.stderr, result.stderr
