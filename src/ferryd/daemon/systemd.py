"""systemd integration: socket activation (sd_listen_fds) and readiness (sd_notify).

Both protocols are a few environment variables and one datagram; systemd documents
them as stable interfaces that services may implement themselves, which spares the
daemon a C library. Outside systemd everything here is a no-op.
"""

from __future__ import annotations

import os
import socket
import time

import structlog

from ferryd.errors import ConfigError

log = structlog.get_logger("ferryd.systemd")

_LISTEN_FDS_START = 3


def listen_socket() -> socket.socket | None:
    """The listening socket systemd passed (`ferryd.socket`), or None.

    ferryd serves one socket: anything else systemd hands over is a unit mistake.
    """
    fds = os.environ.pop("LISTEN_FDS", None)
    pid = os.environ.pop("LISTEN_PID", None)
    os.environ.pop("LISTEN_FDNAMES", None)  # credential helpers must not inherit these
    if fds is None or pid is None:
        return None
    if not pid.isdigit():
        # sd_listen_fds(3) fails on this too: the environment is broken, not empty.
        raise ConfigError(f"LISTEN_PID={pid!r} is not a process ID; unset it or fix the unit")
    if int(pid) != os.getpid():
        return None  # meant for another process
    if fds != "1":
        raise ConfigError(
            f"systemd passed LISTEN_FDS={fds!r}; ferryd listens on exactly one socket "
            "(one ListenStream= in ferryd.socket)"
        )
    try:
        sock = socket.socket(fileno=_LISTEN_FDS_START)
    except OSError as exc:
        raise ConfigError(
            f"the socket systemd passed (fd 3) is unusable: {exc.strerror or exc}"
        ) from None
    if sock.family != socket.AF_UNIX or sock.type != socket.SOCK_STREAM:
        sock.detach()
        raise ConfigError(
            "the socket systemd passed is not a Unix stream socket "
            "(ferryd.socket needs ListenStream=/path/to/ferryd.sock)"
        )
    if not sock.getsockopt(socket.SOL_SOCKET, socket.SO_ACCEPTCONN):
        sock.detach()
        raise ConfigError("the socket systemd passed is not listening")
    sock.set_inheritable(False)
    sock.setblocking(False)
    return sock


class Notifier:
    """sd_notify(3): READY=1, STATUS=, RELOADING=1, STOPPING=1, WATCHDOG=1.

    Never raises: a lost notification must not take the daemon down (systemd restarts
    a service whose watchdog goes quiet, which is the right outcome for a real hang).
    """

    def __init__(self) -> None:
        address = os.environ.pop("NOTIFY_SOCKET", "")
        self._address = "\0" + address[1:] if address.startswith("@") else address
        self._watchdog = _watchdog_interval(
            os.environ.pop("WATCHDOG_USEC", None), os.environ.pop("WATCHDOG_PID", None)
        )
        self._warned = False

    @property
    def enabled(self) -> bool:
        return bool(self._address)

    @property
    def watchdog_interval(self) -> float | None:
        """Seconds between two watchdog pings (half the unit's WatchdogSec=), or None."""
        return self._watchdog if self.enabled else None

    def ready(self, status: str = "") -> None:
        self._send("READY=1", f"STATUS={status}" if status else "")

    def status(self, text: str) -> None:
        self._send(f"STATUS={text}")

    def reloading(self) -> None:
        monotonic_usec = time.clock_gettime_ns(time.CLOCK_MONOTONIC) // 1000
        self._send("RELOADING=1", f"MONOTONIC_USEC={monotonic_usec}")

    def stopping(self, grace: float | None = None) -> None:
        """STOPPING=1; with `grace`, also ask for that long plus a margin before
        systemd's stop timeout kills us (the unit's TimeoutStopSec may be shorter)."""
        extend = f"EXTEND_TIMEOUT_USEC={int((grace + 15) * 1e6)}" if grace is not None else ""
        self._send("STOPPING=1", extend)

    def watchdog(self) -> None:
        self._send("WATCHDOG=1")

    def _send(self, *fields: str) -> None:
        if not self._address:
            return
        # "replace": a status text must never be the reason a notification fails.
        message = "\n".join(field for field in fields if field).encode(errors="replace")
        try:
            # A socket per message: they are rare (a few per minute at most).
            with socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM | socket.SOCK_CLOEXEC) as sock:
                sock.setblocking(False)
                sock.sendto(message, self._address)
        except OSError as exc:
            if not self._warned:
                self._warned = True
                log.warning("systemd.notify_failed", socket=self._address, error=str(exc))


def _watchdog_interval(usec: str | None, pid: str | None) -> float | None:
    if usec is None or not usec.isdigit() or int(usec) == 0:
        return None
    if pid is not None and (not pid.isdigit() or int(pid) != os.getpid()):
        return None
    return int(usec) / 1e6 / 2
