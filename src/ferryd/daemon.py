"""The daemon: settings → logs → store → registries and managers → API, in one task group."""

from __future__ import annotations

import signal
from pathlib import Path

import anyio
import structlog

from ferryd import __version__, logs
from ferryd.api.app import build_app
from ferryd.api.serve import ApiServer, bind_unix_socket
from ferryd.api.system import EngineState
from ferryd.config import Settings
from ferryd.distribution.downloads import DownloadManager
from ferryd.distribution.service import ImageService
from ferryd.distribution.uploads import UploadManager
from ferryd.platforms import parse_platform
from ferryd.registry.auth import load_docker_config
from ferryd.registry.connector import Connector
from ferryd.registry.endpoints import RegistryService
from ferryd.store import Store

log = structlog.get_logger("ferryd.daemon")


async def run(settings: Settings) -> None:
    """Serve until SIGTERM or SIGINT; running transfers are cancelled, partial data kept."""
    logs.configure(settings.log_level, settings.log_format)
    store = await anyio.to_thread.run_sync(Store, settings.root_path)
    connector = Connector(
        RegistryService(settings.insecure_registries, Path(settings.certs_dir)),
        connect_timeout=settings.connect_timeout,
        read_timeout=settings.read_timeout,
        proxy=settings.proxy or None,
    )
    credentials = (
        load_docker_config(Path(settings.credentials_file)) if settings.credentials_file else {}
    )
    engine = EngineState(settings)
    engine.events.bind()
    sock = bind_unix_socket(settings.socket_path, int(settings.socket_mode, 8))
    try:
        async with anyio.create_task_group() as tg:
            downloads = DownloadManager(
                store.blobs,
                store.layers,
                store.metadata,
                tg,
                max_concurrent=settings.max_concurrent_downloads,
                max_attempts=settings.max_download_attempts,
                retry_delay=settings.retry_delay,
            )
            uploads = UploadManager(
                store.metadata,
                tg,
                max_concurrent=settings.max_concurrent_uploads,
                max_attempts=settings.max_upload_attempts,
                retry_delay=settings.retry_delay,
            )
            service = ImageService(
                store=store,
                connector=connector,
                downloads=downloads,
                uploads=uploads,
                event_logger=engine.events,
                default_platform=(
                    parse_platform(settings.default_platform) if settings.default_platform else None
                ),
                saved_credentials=credentials,
            )
            server = ApiServer(
                build_app(service, engine), sock, grace=settings.shutdown_timeout + 5
            )
            tg.start_soon(_stop_on_signal, server, engine)
            log.info(
                "daemon.ready", version=__version__, root=settings.root, socket=settings.socket
            )
            await server.serve()
            tg.cancel_scope.cancel()
    finally:
        sock.close()
        settings.socket_path.unlink(missing_ok=True)
        await connector.aclose()
        store.close()
        log.info("daemon.stopped")


async def _stop_on_signal(server: ApiServer, engine: EngineState) -> None:
    """The first signal stops new requests and gives running ones the grace period;
    a second one (or the end of the grace period) stops them at once."""
    grace = engine.settings.shutdown_timeout
    with anyio.open_signal_receiver(signal.SIGTERM, signal.SIGINT) as signals:
        async with anyio.create_task_group() as tg:
            async for signum in signals:
                name = signal.Signals(signum).name
                if server.stopping:
                    log.warning("daemon.stopping_now", signal=name)
                    engine.stop_jobs.set()
                    break
                log.info("daemon.stopping", signal=name, grace_seconds=grace)
                server.stop()
                engine.events.close()  # event streams never end by themselves
                tg.start_soon(_end_grace, engine, grace)


async def _end_grace(engine: EngineState, grace: float) -> None:
    await anyio.sleep(grace)
    log.warning("daemon.grace_period_over")
    engine.stop_jobs.set()
