"""The daemon's API in this process, for what the API answers.

`in_process_api` builds the app the daemon serves (`build_app`) over a Store in a temp
dir, with the image service and transfer managers the daemon builds
(`ferryd.daemon.main.image_service`), and asks it through httpx's ASGI transport: no
socket, no uvicorn, no process to start. The socket, the CLI and the process itself are
tested end to end against the real daemon (`support.daemon`).

httpx's ASGI transport hands over an answer once it is complete: a streamed answer
(a pull's progress) arrives whole, and one that never ends (`/events` without `until`)
never arrives; those are the real daemon's to test.
"""

from __future__ import annotations

from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import anyio
import httpx

from ferryd.daemon.api.app import build_app
from ferryd.daemon.main import image_service
from ferryd.daemon.settings import credential_store, load_settings, registry_service
from ferryd.daemon.state import DaemonState
from ferryd.distribution.service import ImageService
from ferryd.registry.connector import Connector
from ferryd.store import Store

from .daemon import write_config


@dataclass
class Running:
    """What the daemon runs for its API, built as it builds it: the store, the image
    service (its transfers in a task group of their own) and the daemon's state."""

    store: Store
    service: ImageService
    state: DaemonState


@asynccontextmanager
async def running(workdir: Path, **settings: Any) -> AsyncIterator[Running]:
    """The store, service and state of a daemon over a new store in `workdir`, with
    `settings` (as in the config file), torn down as the daemon tears them down."""
    config = load_settings(write_config(workdir, settings))  # as the daemon reads it
    store = Store(config.root_path)
    connector = Connector(
        registry_service(config),
        connect_timeout=config.connect_timeout,
        read_timeout=config.read_timeout,
    )
    state = DaemonState(config)
    try:
        async with anyio.create_task_group() as tg:
            service = image_service(config, store, connector, state, credential_store(config), tg)
            yield Running(store, service, state)
            tg.cancel_scope.cancel()
    finally:
        await connector.aclose()
        store.close()


@asynccontextmanager
async def in_process_api(workdir: Path, **settings: Any) -> AsyncIterator[httpx.AsyncClient]:
    """A client of the API over a new store in `workdir`, with `settings` (as in the
    config file)."""
    async with running(workdir, **settings) as daemon:
        transport = httpx.ASGITransport(app=build_app(daemon.service, daemon.state))
        async with httpx.AsyncClient(transport=transport, base_url="http://ferryd") as client:
            yield client
