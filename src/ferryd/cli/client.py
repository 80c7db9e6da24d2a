"""A small client of the daemon's socket for the CLI: stdlib only, so it starts fast.

Every answer is read to its end as its framing says (the last chunk of a chunked body,
Content-Length bytes): http.client takes an answer cut there for a whole one in places
(its readline swallows a missing last chunk; read(n) returns b"" at an early end of a
Content-Length body), and a daemon killed mid-answer must not look like one that said
all it had to. What is read is checked before it is used: an answer that is cut, not
JSON, or not the shape asked for is a DaemonError naming the request.

For callers:
- `Client.read`: an answer's whole body (bytes);
- `Client.json`, `Client.get_json`: its JSON value, any shape;
- `Client.json_object`, `Client.json_objects`: a JSON object, a list of JSON objects;
- `Client.stream`: the JSON objects of a JSON-lines answer, as they arrive;
- `answer_fields(request)`: a `with` block in which a missing or mistyped field of an
  answer (KeyError, TypeError, ValueError…) is a DaemonError naming `request`;
  `text_field`, `list_field`, `strings_field` read a field of the type it must have.
"""

from __future__ import annotations

import contextlib
import http.client
import json
import os
import socket
from collections.abc import Iterator
from typing import Any
from urllib.parse import urlencode

DEFAULT_HOST = "unix:///run/ferryd/ferryd.sock"

# At most this much a read: read1 returns what has come, so a stream's line shows at once.
PIECE = 1 << 20
# Longer than any progress message or event: a line past it is not one of them, and it
# is refused before it fills the memory.
_MAX_LINE = 4 << 20
# Of a malformed answer, as much as helps to see what it was.
_EXCERPT = 80


class DaemonError(Exception):
    """The daemon said no, or could not be reached; `str()` is for the user."""


class CutAnswer(DaemonError):
    """The daemon's answer ended before its end: the daemon stopped or was killed, or
    the connection broke."""


def cannot_connect(path: str, exc: OSError) -> DaemonError:
    if isinstance(exc, FileNotFoundError | ConnectionRefusedError):
        reason = "not running?"
    elif isinstance(exc, PermissionError):
        reason = "permission denied"
    else:  # a path too long for AF_UNIX, under a file…
        reason = exc.strerror or str(exc)
    return DaemonError(f"cannot connect to the ferryd daemon at unix://{path} ({reason})")


def connection_failed(exc: Exception) -> DaemonError:
    """Of a connection made: it broke, or what came is no HTTP answer."""
    reason = exc.strerror if isinstance(exc, OSError) and exc.strerror else exc
    return DaemonError(f"the connection to the daemon failed: {reason}")


def open_socket(path: str, timeout: float | None = None) -> socket.socket:
    """A socket connected to the daemon at `path`; DaemonError when it cannot be."""
    sock = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
    try:
        sock.settimeout(timeout)
        sock.connect(path)
    except OSError as exc:
        sock.close()
        raise cannot_connect(path, exc) from None
    return sock


def refusal(response: http.client.HTTPResponse) -> DaemonError:
    """The daemon's error answer, in its own words as docker prints them."""
    try:
        body = response.read()
    except http.client.IncompleteRead as exc:
        body = exc.partial
    except (OSError, http.client.HTTPException):
        body = b""
    try:
        message = str(_loads(body)["message"])
    except (ValueError, KeyError, TypeError):
        message = body.decode(errors="replace") or response.reason
    return DaemonError(f"Error response from daemon: {message}")


def pieces(response: http.client.HTTPResponse, request: str) -> Iterator[bytes]:
    """The body of the answer to `request` (`GET /path`) as it arrives; CutAnswer when it
    ends before its framing says it would."""
    try:
        while piece := response.read1(PIECE):
            yield piece
    except (OSError, http.client.HTTPException) as exc:
        raise _cut(request, exc) from None
    if response.length:  # Content-Length not reached: read1 returns b"" at an early end
        raise _cut(request, None)


def _cut(request: str, exc: Exception | None) -> CutAnswer:
    if exc is None or isinstance(exc, http.client.IncompleteRead):
        why = "the connection closed before its end: did the daemon stop?"
    else:
        why = str(connection_failed(exc))
    return CutAnswer(f"the daemon's answer to {request} was cut short ({why})")


def malformed(request: str, problem: str) -> DaemonError:
    return DaemonError(f"the daemon's answer to {request} is malformed: {problem}")


@contextlib.contextmanager
def answer_fields(request: str) -> Iterator[None]:
    """Within it, reading a field the answer to `request` lacks, or has of another type
    (`row["Id"]`, `row["Size"] + 1`), is a DaemonError rather than a traceback."""
    try:
        yield
    except (KeyError, TypeError, ValueError, AttributeError, IndexError, OverflowError) as exc:
        raise malformed(request, f"{type(exc).__name__}: {exc}") from None


# Fields of an answer, read within `answer_fields`: one of another type is a malformed
# answer, said before anything is printed rather than a table cut short at its row.


def text_field(row: dict[str, Any], key: str) -> str:
    """A field of the daemon's answer that is shown as it is."""
    value = row[key]
    if not isinstance(value, str):
        raise TypeError(f"{key!r} is not a string: {value!r:.60}")
    return value


def list_field(row: dict[str, Any], key: str) -> list[Any]:
    """A list field: a string or an object would be gone through as characters or keys,
    and counted wrong."""
    value = row[key]
    if not isinstance(value, list):
        raise TypeError(f"{key!r} is not a list: {value!r:.60}")
    return value


def strings_field(row: dict[str, Any], key: str) -> list[str]:
    """A list of strings, or null (`RepoTags`, `RepoDigests`)."""
    names = row.get(key) or []
    if not isinstance(names, list) or not all(isinstance(name, str) for name in names):
        raise TypeError(f"{key!r} is not a list of strings: {names!r:.60}")
    return names


def _loads(text: bytes) -> Any:
    """`json.loads` whose every refusal is a ValueError (deep nesting raises
    RecursionError)."""
    try:
        return json.loads(text)
    except RecursionError:
        raise ValueError("JSON nested too deeply") from None


def _excerpt(text: bytes) -> str:
    shown = text[:_EXCERPT].decode(errors="replace")
    return repr(shown + ("…" if len(text) > _EXCERPT else ""))


def _json(text: bytes, request: str) -> Any:
    try:
        return _loads(text)
    except ValueError:
        raise malformed(request, f"not JSON: {_excerpt(text)}") from None


def _object(value: Any, request: str) -> dict[str, Any]:
    if not isinstance(value, dict):
        raise malformed(request, f"expected a JSON object, got {_kind(value)}")
    return value


def _kind(value: Any) -> str:
    """What a JSON value is, as JSON names it."""
    if value is None or isinstance(value, bool):
        return json.dumps(value)
    if isinstance(value, int | float):
        return "a number"
    if isinstance(value, str):
        return "a string"
    return "a list" if isinstance(value, list) else "an object"


def messages(response: http.client.HTTPResponse, request: str) -> Iterator[dict[str, Any]]:
    """The JSON objects of a JSON-lines answer (a progress stream, events), one a line,
    each as soon as its line has come."""
    partial = bytearray()
    for piece in pieces(response, request):
        *ended, unfinished = piece.split(b"\n")
        if ended:
            ended[0] = bytes(partial + ended[0])
            partial.clear()
        partial += unfinished
        if len(partial) > _MAX_LINE:
            raise malformed(request, f"a line longer than {_MAX_LINE} bytes")
        for line in ended:
            if line.strip():
                yield _object(_json(line, request), request)
    if partial.strip():
        yield _object(_json(bytes(partial), request), request)


class _UnixConnection(http.client.HTTPConnection):
    def __init__(self, path: str, timeout: float | None) -> None:
        super().__init__("localhost", timeout=timeout)
        self._path = path

    def connect(self) -> None:
        self.sock = open_socket(self._path, self.timeout)


def socket_path(host: str | None) -> str:
    """`--host`, else FERRYD_HOST, else the default; `unix://` is optional. Any other
    scheme (`tcp://`, `ssh://`…) is refused: ferryd serves only its Unix socket."""
    value = host or os.environ.get("FERRYD_HOST") or DEFAULT_HOST
    scheme, separator, _ = value.partition("://")
    if separator and scheme != "unix":
        raise DaemonError(
            f"cannot use {value}: ferryd serves only unix:// sockets "
            "(give -H unix:///path/to/ferryd.sock, or set FERRYD_HOST to one)"
        )
    return value.removeprefix("unix://")


class Client:
    def __init__(self, host: str | None = None, timeout: float | None = None) -> None:
        self.path = socket_path(host)
        self._timeout = timeout

    def request(
        self,
        method: str,
        path: str,
        params: dict[str, str] | None = None,
        headers: dict[str, str] | None = None,
        body: bytes | None = None,
    ) -> http.client.HTTPResponse:
        """The answer, its body unread: read it with `pieces` or `messages`, which tell
        a cut one (its own `read()` does not always)."""
        query = f"?{urlencode(params)}" if params else ""
        connection = _UnixConnection(self.path, self._timeout)
        connection.connect()
        # One request per connection: "close" hands the socket to the response, which
        # closes it when read.
        try:
            connection.request(
                method, path + query, body, headers={**(headers or {}), "Connection": "close"}
            )
            response = connection.getresponse()
        except (OSError, http.client.HTTPException) as exc:
            connection.close()
            raise connection_failed(exc) from None
        if response.status >= 400:
            with response:
                raise refusal(response)
        return response

    def read(
        self,
        method: str,
        path: str,
        params: dict[str, str] | None = None,
        headers: dict[str, str] | None = None,
        body: bytes | None = None,
    ) -> bytes:
        """The whole body of the answer; CutAnswer if it ends before its end."""
        with self.request(method, path, params, headers, body) as response:
            return b"".join(pieces(response, f"{method} {path}"))

    def json(
        self,
        method: str,
        path: str,
        params: dict[str, str] | None = None,
        headers: dict[str, str] | None = None,
        body: bytes | None = None,
    ) -> Any:
        """The answer's JSON value, of any shape: check it before use (`answer_fields`)."""
        return _json(self.read(method, path, params, headers, body), f"{method} {path}")

    def json_object(
        self,
        method: str,
        path: str,
        params: dict[str, str] | None = None,
        headers: dict[str, str] | None = None,
        body: bytes | None = None,
    ) -> dict[str, Any]:
        """The answer, which must be a JSON object (its fields are still to be checked)."""
        return _object(self.json(method, path, params, headers, body), f"{method} {path}")

    def json_objects(
        self,
        method: str,
        path: str,
        params: dict[str, str] | None = None,
        headers: dict[str, str] | None = None,
        body: bytes | None = None,
    ) -> list[dict[str, Any]]:
        """The answer, which must be a list of JSON objects."""
        request = f"{method} {path}"
        value = self.json(method, path, params, headers, body)
        if not isinstance(value, list):
            raise malformed(request, f"expected a list of JSON objects, got {_kind(value)}")
        return [_object(item, request) for item in value]

    def get_json(self, path: str, params: dict[str, str] | None = None) -> Any:
        return self.json("GET", path, params)

    def stream(
        self,
        method: str,
        path: str,
        params: dict[str, str] | None = None,
        headers: dict[str, str] | None = None,
    ) -> Iterator[dict[str, Any]]:
        """The JSON messages of a progress stream, one at a time; CutAnswer if the stream
        ends before its end."""
        with self.request(method, path, params, headers) as response:
            yield from messages(response, f"{method} {path}")
