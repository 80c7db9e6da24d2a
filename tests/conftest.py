"""Fixtures: real registries (plain and TLS + htpasswd), image layouts, the real daemon."""

from __future__ import annotations

import os
import socket
from collections.abc import AsyncIterator, Callable, Iterator
from pathlib import Path
from typing import Any

import httpx
import pytest
import trustme

from ferryd.store import Store
from support import forkserver
from support.app import in_process_api
from support.daemon import Daemon
from support.registry import PASSWORD, USER, Registry, fixture_registry

# What a test asks for says what it needs: these fixtures mark it, so that `-m` can leave
# out the slow tests (make test-fast). A test that starts a peer itself is marked by hand.
_MARKS = {
    "registry": "registry",
    "tls_registry": "registry",
    "other_registry": "registry",
    "daemon": "daemon",
    "start_daemon": "daemon",
}


def pytest_xdist_auto_num_workers(config: pytest.Config) -> int:
    """`-n auto`: two workers per CPU (at most four more than CPUs). Much of a test's
    time is spent waiting on a registry, a daemon or a throttled transfer; the other
    worker on the CPU runs meanwhile."""
    cpus = len(os.sched_getaffinity(0))
    return min(2 * cpus, cpus + 4)


def pytest_configure(config: pytest.Config) -> None:
    forkserver.enable()  # daemons start in milliseconds (support/forkserver.py)


def pytest_collection_modifyitems(items: list[pytest.Item]) -> None:
    for item in items:
        for fixture in sorted(_MARKS.keys() & set(getattr(item, "fixturenames", ()))):
            item.add_marker(_MARKS[fixture])


@pytest.fixture
def anyio_backend() -> tuple[str, dict[str, bool]]:
    """The daemon's event loop, uvloop, for every async test: its transports (TLS above
    all) differ from asyncio's where a connection pauses and ends."""
    return ("asyncio", {"use_uvloop": True})


@pytest.fixture(scope="session")
def ca() -> trustme.CA:
    return trustme.CA()


@pytest.fixture(scope="session")
def registry(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Registry]:
    """A plain-HTTP registry on loopback, shared by the session (tests use own repos)."""
    with fixture_registry(tmp_path_factory, "registry") as registry:
        yield registry


@pytest.fixture(scope="session")
def tls_registry(tmp_path_factory: pytest.TempPathFactory, ca: trustme.CA) -> Iterator[Registry]:
    """A TLS registry with htpasswd (Basic) auth."""
    with fixture_registry(
        tmp_path_factory, "tls-registry", tls=ca, htpasswd=(USER, PASSWORD)
    ) as registry:
        yield registry


@pytest.fixture(scope="module")
def other_registry(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Registry]:
    """A second plain-HTTP registry, a push target: one per test module (tests use
    their own repositories)."""
    with fixture_registry(tmp_path_factory, "other-registry") as registry:
        yield registry


@pytest.fixture
def refused_port() -> Iterator[int]:
    """A loopback port that refuses connections: bound for the whole test, so that no
    other test's server can take it meanwhile, and never listening."""
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as held:
        held.bind(("127.0.0.1", 0))
        yield held.getsockname()[1]


@pytest.fixture
def layout(tmp_path: Path) -> Path:
    return tmp_path / "layout"


@pytest.fixture
def start_daemon(tmp_path: Path) -> Iterator[Callable[..., Daemon]]:
    started: list[Daemon] = []

    def start(**settings: Any) -> Daemon:
        daemon = Daemon(tmp_path / f"daemon{len(started)}", settings)
        daemon.workdir.mkdir()
        daemon.start()
        started.append(daemon)
        return daemon

    yield start
    for daemon in started:
        daemon.stop_later()


@pytest.fixture
def store(tmp_path: Path) -> Iterator[Store]:
    """A store opened in this process on tmp_path/root."""
    opened = Store(tmp_path / "root")
    yield opened
    opened.close()


@pytest.fixture
def docker_config(tmp_path: Path) -> Path:
    """An empty docker CLI config directory (no logins unless a test writes them)."""
    config = tmp_path / "docker-config"
    config.mkdir()
    (config / "config.json").write_text("{}")
    return config


@pytest.fixture
def daemon(start_daemon: Callable[..., Daemon]) -> Daemon:
    return start_daemon()


@pytest.fixture
async def api(tmp_path: Path) -> AsyncIterator[httpx.AsyncClient]:
    """The daemon's API in this process, over a store in tmp_path (support.app)."""
    async with in_process_api(tmp_path / "api") as client:
        yield client
