"""A registry that accepts connections and then says nothing: each phase fails within its
own setting, and the error names the phase, the seconds and the setting."""

from __future__ import annotations

import time
from collections.abc import AsyncIterator, Callable, Iterator
from contextlib import asynccontextmanager, contextmanager

import anyio
import pytest
from anyio.abc import SocketStream
from anyio.from_thread import start_blocking_portal

from ferryd.errors import RegistryUnreachableError, TransientRegistryError
from ferryd.registry.auth import ANONYMOUS
from ferryd.registry.connector import Connector
from ferryd.registry.endpoints import RegistryService
from support.daemon import Daemon
from support.fakes import FakeRegistry, Reply, background, serve_registry


@asynccontextmanager
async def silent_server() -> AsyncIterator[str]:
    """Accepts TCP connections and never sends a byte: `host:port`."""

    async def hold(stream: SocketStream) -> None:
        async with stream:
            await anyio.sleep_forever()

    listener = await anyio.create_tcp_listener(local_host="127.0.0.1", local_port=0)
    async with listener, background() as tg:
        tg.start_soon(listener.serve, hold)
        port = listener.extra(anyio.abc.SocketAttribute.local_port)
        yield f"127.0.0.1:{port}"


async def test_a_registry_silent_in_the_tls_handshake_fails_within_connect_timeout() -> None:
    async with silent_server() as host:
        connector = Connector(RegistryService(insecure_registries=[]), connect_timeout=0.3)
        started = time.monotonic()
        try:
            client = await connector.open(host, "team/app", ANONYMOUS)
            with pytest.raises(RegistryUnreachableError) as caught:
                await client.get_manifest("v1")
        finally:
            await connector.aclose()
    assert time.monotonic() - started < 3
    assert "no connection within 0.3 s (connect_timeout" in str(caught.value)
    assert "TLS handshake" in str(caught.value)


async def test_a_registry_that_never_answers_a_request_fails_within_read_timeout() -> None:
    async with silent_server() as host:
        # Loopback is insecure: https is tried (silence there is a connect timeout), then
        # plain HTTP, where the request goes unanswered.
        connector = Connector(RegistryService(), connect_timeout=0.3, read_timeout=0.4)
        started = time.monotonic()
        try:
            client = await connector.open(host, "team/app", ANONYMOUS)
            with pytest.raises(TransientRegistryError) as caught:
                await client.get_manifest("v1")
        finally:
            await connector.aclose()
    assert time.monotonic() - started < 3
    assert f"no answer from {host} within 0.4 s" in str(caught.value)
    # The first request, which chooses the endpoint, is the one named.
    assert f"manifest for {host}/team/app:v1 (read_timeout)" in str(caught.value)


async def test_a_manifest_whose_body_stalls_fails_within_read_timeout_naming_it() -> None:
    registry = FakeRegistry()
    stalled = Reply(200, {"Content-Type": "application/json"}, b"{" * 100, stall_after=10)
    registry.on("GET", "/v2/team/app/manifests/v1", stalled)
    async with serve_registry(registry) as server:
        connector = Connector(RegistryService(), connect_timeout=1, read_timeout=0.4)
        try:
            client = await connector.open(server.host, "team/app", ANONYMOUS)
            with pytest.raises(TransientRegistryError) as caught:
                await client.get_manifest("v1")
        finally:
            await connector.aclose()
    assert "within 0.4 s while reading manifest for" in str(caught.value)


@contextmanager
def silent() -> Iterator[str]:
    """`silent_server` in a thread of its own, for the daemon (another process)."""
    with (
        start_blocking_portal() as portal,
        portal.wrap_async_context_manager(silent_server()) as host,
    ):
        yield host


def test_a_pull_from_a_silent_registry_ends_within_its_timeouts_not_minutes(
    start_daemon: Callable[..., Daemon],
) -> None:
    daemon = start_daemon(connect_timeout=1, read_timeout=1)
    with silent() as host:
        started = time.monotonic()
        messages = daemon.pull(f"{host}/team/app:v1")
    elapsed = time.monotonic() - started
    [error] = [m["error"] for m in messages if "error" in m]
    assert f"no answer from {host} within 1 s" in error
    assert elapsed < 10, f"the pull took {elapsed:.1f} s"
