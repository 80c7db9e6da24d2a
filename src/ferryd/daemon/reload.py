"""SIGHUP: read the settings again and apply the registry ones without a restart.

Mirrors, insecure registries, certificates, the credentials file, the log level and
access control (`[access]`, with the users' groups looked up again) change live;
running transfers keep the connections they have. Any other changed key needs a
restart, and the reload says which. A file that no longer loads changes
nothing: the error is logged and the daemon goes on with what it had.
"""

from __future__ import annotations

import signal
from collections.abc import Callable
from dataclasses import dataclass

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


@dataclass
class Reloader:
    load: Callable[[], Settings]  # the config file and flags the daemon started with
    state: DaemonState
    connector: Connector
    service: ImageService
    notifier: Notifier
    access: AccessControl | None = None

    async def run(self) -> None:
        with anyio.open_signal_receiver(signal.SIGHUP) as signals:
            async for _ in signals:
                self.notifier.reloading()
                await self.reload()
                self.notifier.ready()

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
