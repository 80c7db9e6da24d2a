"""A small client of the daemon's socket for the CLI: stdlib only, so it starts fast."""

from __future__ import annotations

import http.client
import json
import os
import socket
from collections.abc import Iterator
from typing import Any
from urllib.parse import urlencode

DEFAULT_HOST = "unix:///run/ferryd/ferryd.sock"


class DaemonError(Exception):
    """The daemon said no, or could not be reached; `str()` is for the user."""


# What connecting to a socket path raises when no daemon can be reached there.
CONNECT_ERRORS = (FileNotFoundError, ConnectionRefusedError, PermissionError)


def cannot_connect(path: str, exc: OSError) -> DaemonError:
    reason = "permission denied" if isinstance(exc, PermissionError) else "not running?"
    return DaemonError(f"cannot connect to the ferryd daemon at unix://{path} ({reason})")


def refusal(response: http.client.HTTPResponse) -> DaemonError:
    """The daemon's error answer, in its own words as docker prints them."""
    body = response.read()
    try:
        message = json.loads(body)["message"]
    except (ValueError, KeyError, TypeError):
        message = body.decode(errors="replace") or response.reason
    return DaemonError(f"Error response from daemon: {message}")


class _UnixConnection(http.client.HTTPConnection):
    def __init__(self, path: str, timeout: float | None) -> None:
        super().__init__("localhost", timeout=timeout)
        self._path = path

    def connect(self) -> None:
        sock = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
        try:
            sock.settimeout(self.timeout)
            sock.connect(self._path)
        except OSError:
            sock.close()
            raise
        self.sock = sock


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
        query = f"?{urlencode(params)}" if params else ""
        connection = _UnixConnection(self.path, self._timeout)
        # One request per connection: "close" hands the socket to the response, which
        # closes it when read.
        try:
            connection.request(
                method, path + query, body, headers={**(headers or {}), "Connection": "close"}
            )
            response = connection.getresponse()
        except CONNECT_ERRORS as exc:
            connection.close()
            raise cannot_connect(self.path, exc) from None
        except (OSError, http.client.HTTPException) as exc:
            connection.close()
            raise DaemonError(f"the connection to the daemon failed: {exc}") from None
        if response.status >= 400:
            with response:
                raise refusal(response)
        return response

    def get_json(self, path: str, params: dict[str, str] | None = None) -> Any:
        return json.loads(self.request("GET", path, params).read())

    def stream(
        self,
        method: str,
        path: str,
        params: dict[str, str] | None = None,
        headers: dict[str, str] | None = None,
    ) -> Iterator[dict[str, Any]]:
        """The JSON messages of a progress stream, one at a time."""
        response = self.request(method, path, params, headers)
        try:
            for line in response:
                if line.strip():
                    yield json.loads(line)
        except (OSError, ValueError, http.client.HTTPException):
            raise DaemonError("the connection to the daemon was lost") from None
