"""The daemon: settings → logs → store → registries and managers → API, in one task group."""

from __future__ import annotations

import signal
import socket
import stat
from collections.abc import Callable
from pathlib import Path

import anyio
import prometheus_client
import structlog
from anyio.abc import TaskGroup

from ferryd import __version__
from ferryd.daemon import collector, logs, malloc
from ferryd.daemon.api.access import AccessControl, AccessPolicy
from ferryd.daemon.api.app import build_app
from ferryd.daemon.api.serve import ApiServer, bind_unix_socket
from ferryd.daemon.reload import Reloader, hangups
from ferryd.daemon.settings import Settings, credential_store, registry_service
from ferryd.daemon.state import DaemonState
from ferryd.daemon.systemd import Notifier, listen_socket
from ferryd.distribution.downloads import DownloadManager
from ferryd.distribution.service import ImageService
from ferryd.distribution.uploads import UploadManager
from ferryd.errors import ConfigError
from ferryd.oci.platform import parse_platform
from ferryd.registry.connector import Connector
from ferryd.registry.credentials import CredentialStore
from ferryd.store import Store
from ferryd.store.store import GROUP_ROOT_MODE, ROOT_MODE
from ferryd.store.sweep import sweep

log = structlog.get_logger("ferryd.daemon")

_STATUS_INTERVAL = 1.0  # seconds between two looks at the transfer counts


async def run(settings: Settings, reload: Callable[[], Settings] | None = None) -> None:
    """Serve until SIGTERM or SIGINT, then stop within the grace period; partial
    downloads are kept. `reload` reads the settings again on SIGHUP."""
    # `ferryd serve` caught SIGHUP before it read the settings; caught here too for any
    # other caller: a HUP during start-up is held, never the end of the process.
    hangups.catch()
    logs.configure(settings.log_level, settings.log_format)
    malloc.tune()
    # No `_created` series beside each counter: in the text format they are series of
    # their own, twice the count for nothing a rate() needs.
    prometheus_client.disable_created_metrics()  # type: ignore[no-untyped-call]
    notifier = Notifier()
    activated = listen_socket()
    # The store is the daemon's alone, or its socket group's to read too.
    root_mode = GROUP_ROOT_MODE if settings.socket_group else ROOT_MODE
    await anyio.to_thread.run_sync(_check_root, settings.root_path)
    store = await anyio.to_thread.run_sync(lambda: Store(settings.root_path, root_mode=root_mode))
    # What a crash or a failed pull left behind goes before anything can use it.
    await anyio.to_thread.run_sync(lambda: sweep(store, reason="start"))
    registries = registry_service(settings)
    # On the loop's thread: nothing is served yet. Built in a worker thread instead, a
    # warm daemon's 5-layer pulls were 5-12 % slower in wall time (8 of 8 pairs, several
    # sets), for reasons left unexplained; built here, they are as before.
    registries.prepare_tls()
    connector = Connector(
        registries,
        connect_timeout=settings.connect_timeout,
        read_timeout=settings.read_timeout,
        proxy=settings.proxy or None,
    )
    state = DaemonState(settings)
    state.events.bind()
    bound: socket.socket | None = None
    try:
        credentials = credential_store(settings)
        access = AccessControl(await anyio.to_thread.run_sync(AccessPolicy, settings.access))
        if activated is None:
            bound = bind_unix_socket(
                settings.socket_path, int(settings.socket_mode, 8), settings.socket_group
            )
        sock = activated or bound
        assert sock is not None
        async with anyio.create_task_group() as tg:
            service = image_service(settings, store, connector, state, credentials, tg)
            app = build_app(service, state, access)
            server = ApiServer(app, sock, grace=settings.shutdown_timeout + 5)
            tg.start_soon(_stop_on_signal, server, state, notifier)
            if reload is not None:
                reloader = Reloader(reload, state, connector, service, notifier, access)
                tg.start_soon(_reload_once_listening, server, reloader)
            tg.start_soon(_tell_systemd, server, service, notifier)
            tg.start_soon(state.loop_lag.watch)
            frozen = collector.freeze_startup_heap()
            log.info(
                "daemon.ready",
                version=__version__,
                root=settings.root,
                socket=sock.getsockname() or settings.socket,
                socket_activated=activated is not None,
                frozen_objects=frozen,
            )
            await server.serve()
            tg.cancel_scope.cancel()
    finally:
        if activated is not None:
            activated.close()  # the socket file is systemd's to keep
        if bound is not None:
            bound.close()
            settings.socket_path.unlink(missing_ok=True)
        await connector.aclose()
        store.close()
        log.info("daemon.stopped")


def _check_root(root: Path) -> None:
    """`root` is a directory or can be made one; else a ConfigError that says so (the
    store's mkdir would say "File exists" of a regular file)."""
    path = root.absolute()
    for candidate in [*reversed(path.parents), path]:
        try:
            mode = candidate.stat().st_mode
        except OSError:
            return  # missing (the store makes it) or unreadable (the store says why)
        if not stat.S_ISDIR(mode):
            where = "" if candidate == path else f" (so {root} cannot be made)"
            raise ConfigError(f"root: {candidate} is not a directory{where}")


async def _reload_once_listening(server: ApiServer, reloader: Reloader) -> None:
    """Reloads on SIGHUP from the moment the API listens: a HUP held since start-up is
    applied then (the daemon is ready, and reads the config file as it is now)."""
    await server.wait_started()
    await reloader.run()


def image_service(
    settings: Settings,
    store: Store,
    connector: Connector,
    state: DaemonState,
    credentials: CredentialStore,
    task_group: TaskGroup,
) -> ImageService:
    """The image service and its transfer managers as `settings` say, counting into the
    daemon's metrics. One place, so the in-process API of the tests (`support.app`)
    serves what the daemon serves."""
    downloads = DownloadManager(
        store.blobs,
        store.layers,
        store.metadata,
        task_group,
        max_concurrent=settings.max_concurrent_downloads,
        max_attempts=settings.max_download_attempts,
        retry_delay=settings.retry_delay,
        max_retry_after=settings.max_retry_after,
        slow_after=settings.slow_transfer_warning or None,
        metrics=state.metrics,
    )
    uploads = UploadManager(
        store.metadata,
        task_group,
        max_concurrent=settings.max_concurrent_uploads,
        max_attempts=settings.max_upload_attempts,
        retry_delay=settings.retry_delay,
        max_retry_after=settings.max_retry_after,
        slow_after=settings.slow_transfer_warning or None,
        metrics=state.metrics,
    )
    return ImageService(
        store=store,
        connector=connector,
        downloads=downloads,
        uploads=uploads,
        event_logger=state.events,
        default_platform=(
            parse_platform(settings.default_platform) if settings.default_platform else None
        ),
        saved_credentials=credentials,
        metrics=state.metrics,
    )


async def _stop_on_signal(server: ApiServer, state: DaemonState, notifier: Notifier) -> None:
    """The first signal stops new requests and gives running ones the grace period;
    a second one (or the end of the grace period) stops them at once."""
    grace = state.settings.shutdown_timeout
    with anyio.open_signal_receiver(signal.SIGTERM, signal.SIGINT) as signals:
        async with anyio.create_task_group() as tg:
            async for signum in signals:
                name = signal.Signals(signum).name
                if server.stopping:
                    log.warning("daemon.stopping_now", signal=name)
                    state.stop_jobs.set()
                    break
                log.info("daemon.stopping", signal=name, grace_seconds=grace)
                notifier.stopping(grace)
                server.stop()
                state.events.close()  # event streams never end by themselves
                tg.start_soon(_end_grace, state, grace)


async def _end_grace(state: DaemonState, grace: float) -> None:
    await anyio.sleep(grace)
    log.warning("daemon.grace_period_over")
    state.stop_jobs.set()


async def _tell_systemd(server: ApiServer, service: ImageService, notifier: Notifier) -> None:
    """READY=1 once the socket listens, then STATUS= as transfers come and go, and
    watchdog pings when the unit asks for them."""
    if not notifier.enabled:
        return
    await server.wait_started()
    status = _status(service)
    notifier.ready(status)
    async with anyio.create_task_group() as tg:
        if notifier.watchdog_interval is not None:
            tg.start_soon(_ping_watchdog, notifier, notifier.watchdog_interval)
        while True:
            await anyio.sleep(_STATUS_INTERVAL)
            current = _status(service)
            if current != status:
                status = current
                notifier.status(status)


async def _ping_watchdog(notifier: Notifier, interval: float) -> None:
    # A loop of its own: a ping can never be skipped because a timer woke a little
    # early, which would leave systemd's watchdog one missed ping from a restart.
    while True:
        notifier.watchdog()
        await anyio.sleep(interval)


def _status(service: ImageService) -> str:
    """What `systemctl status` shows: the pulls and pushes asked for (from the moment
    they are, as jobs), then the transfers moving their layers."""
    pulls, pushes = service.jobs.count("pull"), service.jobs.count("push")
    downloads, uploads = service.downloads.active, service.uploads.active
    if not (pulls or pushes or downloads or uploads):
        return "idle"
    return f"{pulls} pulls, {pushes} pushes; {downloads} downloads, {uploads} uploads active"
