"""Who is on the other end of the socket: SO_PEERCRED, taken once per connection.

uvicorn does not expose the connection's socket to the application, so its HTTP
protocol is extended to put the peer's uid/gid/pid into each request's ASGI state.
"""

from __future__ import annotations

import asyncio
import socket
import struct
from dataclasses import dataclass

from uvicorn.protocols.http.httptools_impl import HttpToolsProtocol

_UCRED = struct.Struct("3i")  # struct ucred: pid, uid, gid


@dataclass(frozen=True, slots=True)
class Peer:
    pid: int
    uid: int
    gid: int


def peer_of(sock: socket.socket | None) -> Peer | None:
    if sock is None or sock.family != socket.AF_UNIX:
        return None
    try:
        raw = sock.getsockopt(socket.SOL_SOCKET, socket.SO_PEERCRED, _UCRED.size)
    except OSError:
        return None
    pid, uid, gid = _UCRED.unpack(raw)
    return Peer(pid, uid, gid)


class PeerCredentialsProtocol(HttpToolsProtocol):
    """uvicorn's httptools protocol; each request's `scope["state"]["peer"]` is a Peer."""

    _peer: Peer | None = None

    def connection_made(self, transport: asyncio.Transport) -> None:  # type: ignore[override]
        super().connection_made(transport)
        self._peer = peer_of(transport.get_extra_info("socket"))

    def on_message_begin(self) -> None:
        super().on_message_begin()
        self.scope["state"]["peer"] = self._peer
