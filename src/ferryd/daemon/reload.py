"""SIGHUP: read the settings again and apply the registry ones without a restart.

Mirrors, insecure registries, certificates, the credentials file, the log level and
access control (`[access]`, with the users' groups looked up again) change live;
running transfers keep the connections they have. Any other changed key needs a
restart, and the reload says which. A file that no longer loads changes
nothing: the error is logged and the daemon goes on with what it had.

SIGHUP never ends the daemon: `ferryd serve` catches it (`Hangups`) from before it reads
its config file until it exits. One that comes while the daemon starts is held and
applied once the API listens; one that comes while it stops is ignored.
"""

from __future__ import annotations

import asyncio
import contextlib
import signal
from collections.abc import Callable
from dataclasses import dataclass
from types import FrameType

import anyio
import msgspec
import structlog

from ferryd.daemon import logs
from ferryd.daemon.api.access import AccessControl, AccessPolicy
from ferryd.daemon.settings import Settings, credential_store, registry_service
from ferryd.daemon.state import DaemonState
from ferryd.daemon.systemd import Notifier
from ferryd.distribution.service import ImageService
from ferryd.errors import ConfigError
from ferryd.registry.connector import Connector

log = structlog.get_logger("ferryd.daemon")

LIVE_KEYS = (
    "insecure_registries",
    "registry_mirrors",
    "certs_dir",
    "credentials_file",
    "log_level",
    "access",
)

_REGISTRY_KEYS = ("insecure_registries", "registry_mirrors", "certs_dir")


class Hangups:
    """SIGHUP, caught by a handler of ours for the daemon's whole life.

    Its default action ends the process: a HUP before the reloader listens (a start-up
    can be long: a big store's sweep) or after it has stopped (shutdown) would kill the
    daemon. A HUP asks the daemon to read its config file again, and its sender
    (`ferryd reload` as ExecReload=, `kill -HUP`) gets no answer: it takes the file as
    read from then on. So one that comes after start-up has read the file is held and
    answered by a reload once the daemon is ready; ignored, it would leave an edit made
    during start-up silently unapplied, while a reload that turns out needless changes
    nothing. Several HUPs held make one reload: it reads the file as it is by then.
    While the daemon stops there is nothing left to reload: they are ignored.

    A handler of ours rather than the event loop's: the loop's gives SIGHUP back its
    default action when its receiver closes, and a HUP in that moment would be fatal.
    """

    def __init__(self) -> None:
        self._caught = 0  # HUPs since `catch` (written only by the handler)
        self._answered = 0  # of them, those a reload has answered
        self._wake: Callable[[], object] | None = None

    def catch(self) -> None:
        """From now on a SIGHUP is held here (main thread only)."""
        signal.signal(signal.SIGHUP, self._on_signal)

    def _on_signal(self, signum: int, frame: FrameType | None) -> None:
        # Runs in the main thread between two bytecodes of whatever it was doing: it
        # only counts and asks the loop to wake the reloader.
        self._caught += 1
        wake = self._wake
        if wake is not None:
            with contextlib.suppress(RuntimeError):  # the loop is closed: nobody to wake
                wake()

    def take(self) -> bool:
        """Whether a HUP has come since the last `take` (it is answered now)."""
        caught = self._caught  # read once: a HUP coming meanwhile stays for the next take
        if caught == self._answered:
            return False
        self._answered = caught
        return True

    def attach(self, wake: Callable[[], object] | None) -> None:
        """`wake` is called (from the signal handler) at each HUP; None: nobody listens."""
        self._wake = wake


hangups = Hangups()


@dataclass
class Reloader:
    load: Callable[[], Settings]  # the config file and flags the daemon started with
    state: DaemonState
    connector: Connector
    service: ImageService
    notifier: Notifier
    access: AccessControl | None = None

    async def run(self) -> None:
        """A reload at each SIGHUP, and at once for one held since start-up."""
        loop = asyncio.get_running_loop()
        woken = asyncio.Event()
        hangups.catch()  # as `ferryd serve` did (or does now, if it was started otherwise)
        hangups.attach(lambda: loop.call_soon_threadsafe(woken.set))
        try:
            while True:
                if not hangups.take():
                    await woken.wait()
                    woken.clear()
                    continue
                self.notifier.reloading()
                await self.reload()
                self.notifier.ready()
        finally:
            # From now on a HUP is counted and ignored (the daemon is stopping).
            hangups.attach(None)

    async def reload(self) -> None:
        old = self.state.settings
        try:
            new = await anyio.to_thread.run_sync(self.load)
            registries = registry_service(new)
            registries_changed = any(getattr(old, k) != getattr(new, k) for k in _REGISTRY_KEYS)
            if registries_changed:
                await anyio.to_thread.run_sync(registries.prepare_tls)
            credentials = await anyio.to_thread.run_sync(credential_store, new)
            access = await anyio.to_thread.run_sync(AccessPolicy, new.access)
        except ConfigError as exc:
            log.error("daemon.reload_failed", error=str(exc))
            return
        except Exception as exc:  # a bug must not take the running daemon down
            log.exception("daemon.reload_failed", error=repr(exc))
            return
        changed = [k for k in LIVE_KEYS if getattr(old, k) != getattr(new, k)]
        needs_restart = [
            k
            for k in Settings.__struct_fields__
            if k not in LIVE_KEYS and getattr(old, k) != getattr(new, k)
        ]
        if registries_changed:
            # Only then: reconfiguring drops every cached login, token and connection.
            self.connector.reconfigure(registries)
        self.service.saved_credentials = credentials
        if self.access is not None:
            self.access.apply(access)
        self.state.settings = msgspec.structs.replace(
            old, **{key: getattr(new, key) for key in LIVE_KEYS}
        )
        if new.log_level != old.log_level:
            # Whichever level is more verbose writes this reload's own line.
            logs.configure(_more_verbose(old.log_level, new.log_level), old.log_format)
        log.info("daemon.reloaded", changed=changed, needs_restart=needs_restart)
        if new.log_level != old.log_level:
            logs.configure(new.log_level, old.log_format)


def _more_verbose(a: str, b: str) -> str:
    order = ["debug", "info", "warning", "error"]
    return min(a, b, key=order.index)
