"""Serve the API with uvicorn on a Unix socket, inside the daemon's task group."""

from __future__ import annotations

import contextlib
import math
import os
import socket
import stat
from pathlib import Path

import anyio
import uvicorn
from starlette.types import ASGIApp

from ferryd.daemon.api.connections import (
    KEEP_ALIVE_TIMEOUT,
    GuardedProtocol,
    ReserveOnly,
    connection_limit,
)
from ferryd.daemon.settings import socket_group_id
from ferryd.errors import ConfigError


def bind_unix_socket(path: Path, mode: int, group: str = "") -> socket.socket:
    """Listen on `path` with `mode` and `group` ("" = ours); a stale socket file from a
    dead daemon is replaced, a live one is not (two daemons on one socket would be a
    silent mess)."""
    gid = socket_group_id(group)
    path.parent.mkdir(parents=True, exist_ok=True)
    if path.exists() or path.is_symlink():
        if not stat.S_ISSOCK(path.lstat().st_mode):
            raise ConfigError(f"socket path {path} exists and is not a socket")
        probe = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
        try:
            probe.connect(str(path))
        except OSError:
            path.unlink()
        else:
            raise ConfigError(f"another daemon is already listening on {path}")
        finally:
            probe.close()
    sock = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
    old_umask = os.umask(0o777 & ~mode)
    try:
        sock.bind(str(path))
    except OSError as exc:
        sock.close()
        # An error of Python's own ("AF_UNIX path too long") has no strerror.
        raise ConfigError(f"cannot listen on {path}: {exc.strerror or exc}") from None
    finally:
        os.umask(old_umask)
    os.chmod(path, mode)
    if gid != -1:
        try:
            os.chown(path, -1, gid)
        except OSError as exc:
            sock.close()
            path.unlink(missing_ok=True)  # ours, bound a moment ago: leave nothing dead behind
            raise ConfigError(
                f"socket_group: cannot give {path} to group {group!r}: {exc.strerror}"
            ) from None
    # A deep backlog: a burst of clients waits to be accepted instead of being refused.
    sock.listen(4096)
    sock.setblocking(False)
    return sock


class _Server(uvicorn.Server):
    """uvicorn's server, saying when it has started listening."""

    def __init__(self, config: uvicorn.Config) -> None:
        super().__init__(config)
        self.listening = anyio.Event()

    async def startup(self, sockets: list[socket.socket] | None = None) -> None:
        await super().startup(sockets)
        if self.started:
            self.listening.set()


class ApiServer:
    """uvicorn without its signal handling or logging set-up: the daemon owns both."""

    def __init__(self, app: ASGIApp, sock: socket.socket, *, grace: float = 35.0) -> None:

        class Protocol(GuardedProtocol):
            limit = connection_limit()

        config = uvicorn.Config(
            ReserveOnly(app),
            loop="none",
            http=Protocol,
            # No protocol switch: with a websocket library installed, uvicorn would hand an
            # Upgrade request's connection to a protocol without ferryd's limits.
            ws="none",
            timeout_keep_alive=KEEP_ALIVE_TIMEOUT,
            lifespan="off",
            log_config=None,
            access_log=False,
            server_header=False,
            date_header=True,
            # A backstop only: the daemon ends running pulls and pushes itself when
            # its grace period is over, telling their clients why.
            timeout_graceful_shutdown=math.ceil(grace),
        )
        self._server = _Server(config)
        self._sock = sock

    async def wait_started(self) -> None:
        """Until the socket accepts requests."""
        await self._server.listening.wait()

    async def serve(self) -> None:
        # capture_signals would take SIGTERM/SIGINT from the daemon; turn it off.
        self._server.capture_signals = contextlib.nullcontext  # type: ignore[method-assign,assignment]
        await self._server.serve(sockets=[self._sock])

    @property
    def stopping(self) -> bool:
        return self._server.should_exit

    def stop(self) -> None:
        """Stop accepting; uvicorn waits for open requests, up to `grace` seconds."""
        self._server.should_exit = True
