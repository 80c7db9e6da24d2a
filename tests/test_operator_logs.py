"""What an operator reads: debug lines for every registry request, request IDs from the
API request to the transfers it causes, honest byte counts for resumed layers, and
warnings when a transfer stalls or a registry's rate limit runs low."""

from __future__ import annotations

import signal
import threading
from collections.abc import Callable
from typing import Any

import anyio
import httpx

from support.daemon import Daemon, errors
from support.fakes import FakeRegistry, Reply, Request, make_layer
from support.served import add_image, served
from support.slow_pulls import held_layer
from support.waiting import wait_until

REPO = "team/app"
MiB = 1 << 20


def pull_with_id(daemon: Daemon, reference: str, request_id: str) -> httpx.Response:
    with daemon.http(timeout=60) as client:
        return client.post(
            "/images/create",
            params={"fromImage": reference},
            headers={"X-Request-ID": request_id},
        )


def events(daemon: Daemon, name: str, **matching: Any) -> list[dict[str, Any]]:
    return [
        line
        for line in daemon.log_events(name)
        if all(line.get(key) == value for key, value in matching.items())
    ]


def test_debug_shows_each_registry_request_token_and_transaction_never_a_header(
    start_daemon: Callable[..., Daemon],
) -> None:
    registry = FakeRegistry(auth="bearer")
    layer = make_layer(50_000, seed=301)
    add_image(registry, "v1", [layer])
    daemon = start_daemon(log_level="debug")
    with served(registry) as (_, server):
        assert errors(daemon.pull(f"{server.host}/{REPO}:v1")) == []

    requests = daemon.log_events("registry.request")
    blob = [r for r in requests if r["path"] == f"/v2/{REPO}/blobs/{layer.digest}"]
    assert blob
    assert blob[-1]["method"] == "GET"
    assert blob[-1]["status"] == 200
    assert {"host", "seconds", "bytes"} <= set(blob[-1])
    tokens = daemon.log_events("registry.token")
    assert any(not t["cached"] for t in tokens)
    assert any(t["cached"] for t in tokens)
    assert all(t["realm"] == server.host and "scope" in t for t in tokens)
    assert events(daemon, "store.transaction", outcome="committed")
    assert daemon.log_events("pull.source")
    log = daemon.log_path.read_text()
    assert "authorization" not in log.lower()
    assert "Bearer " not in log


def test_the_request_id_is_answered_and_names_the_pull_and_its_transfers(
    start_daemon: Callable[..., Daemon],
) -> None:
    registry = FakeRegistry()
    add_image(registry, "v1", [make_layer(50_000, seed=302)])
    daemon = start_daemon()
    with served(registry) as (_, server):
        answer = pull_with_id(daemon, f"{server.host}/{REPO}:v1", "ci-job-42")

    assert answer.headers["X-Request-ID"] == "ci-job-42"
    [pulled] = daemon.log_events("image.pull")
    assert pulled["request_id"] == "ci-job-42"
    assert pulled["platform"] == "linux/amd64"
    assert pulled["bytes"] > 0
    [done] = daemon.log_events("transfer.done")
    assert done["requests"] == ["ci-job-42"]
    wait_until(lambda: events(daemon, "api.request", request_id="ci-job-42"))


def test_a_request_without_an_id_gets_one(daemon: Daemon) -> None:
    with daemon.http() as client:
        first = client.get("/images/json").headers["X-Request-ID"]
        second = client.get("/images/json", headers={"X-Request-ID": "bad id!"})
    assert first
    assert second.headers["X-Request-ID"] not in (first, "bad id!")


def test_a_shared_transfer_names_every_request_waiting_on_it(
    start_daemon: Callable[..., Daemon],
) -> None:
    registry, layer, release = held_layer(seed=303)
    add_image(registry, "v2", [layer])  # two images on one layer: each pull waits on it
    daemon = start_daemon()
    with served(registry) as (portal, server):
        pulls = [
            threading.Thread(target=pull_with_id, args=(daemon, f"{server.host}/{REPO}:{tag}", rid))
            for tag, rid in (("v1", "first"), ("v2", "second"))
        ]
        for thread in pulls:
            thread.start()
        wait_until(lambda: [t["Watchers"] for t in daemon.client().get_json("/transfers")] == [2])
        portal.call(release.set)
        for thread in pulls:
            thread.join(30)

    [done] = daemon.log_events("transfer.done")
    assert sorted(done["requests"]) == ["first", "second"]


def test_a_layer_resumed_after_a_restart_logs_what_it_fetched_and_what_it_kept(
    start_daemon: Callable[..., Daemon],
) -> None:
    registry = FakeRegistry()
    layer = make_layer(5 * MiB, seed=304)
    add_image(registry, "v1", [layer])
    blob_path = f"/v2/{REPO}/blobs/{layer.digest}"
    registry.on("GET", blob_path, Reply(200, body=layer.blob, stall_after=MiB), times=1)
    daemon = start_daemon()
    with served(registry) as (_, server):
        reference = f"{server.host}/{REPO}:v1"
        puller = threading.Thread(target=daemon.pull, args=(reference,))
        puller.start()
        partial = daemon.root / "partial" / layer.digest.replace(":", "-")
        wait_until(lambda: partial.exists() and partial.stat().st_size >= MiB)
        assert daemon.process is not None
        daemon.process.send_signal(signal.SIGKILL)
        daemon.process.wait(10)
        puller.join(10)
        kept = partial.stat().st_size
        daemon.start()
        assert errors(daemon.pull(reference)) == []

    [done] = daemon.log_events("transfer.done")
    assert done["resumed"] is True
    assert done["resumed_bytes"] == kept
    assert done["bytes"] == layer.size - kept
    [pulled] = daemon.log_events("image.pull")
    assert pulled["bytes"] == layer.size - kept


def test_pings_are_logged_only_at_debug(daemon: Daemon) -> None:
    daemon.client().request("GET", "/_ping").read()
    daemon.client().get_json("/images/json")
    wait_until(lambda: events(daemon, "api.request", path="/images/json"))
    assert events(daemon, "api.request", path="/_ping") == []


def test_a_transfer_that_stalls_is_warned_about(start_daemon: Callable[..., Daemon]) -> None:
    registry = FakeRegistry()
    layer = make_layer(200_000, seed=305)
    add_image(registry, "v1", [layer])
    release = anyio.Event()
    stalled = Reply(200, body=layer.blob, stall_after=10_000, release=release)
    registry.on("GET", f"/v2/{REPO}/blobs/{layer.digest}", stalled, times=1)
    daemon = start_daemon(slow_transfer_warning=0.4, read_timeout=30)
    with served(registry) as (portal, server):
        puller = threading.Thread(target=daemon.pull, args=(f"{server.host}/{REPO}:v1",))
        puller.start()
        wait_until(lambda: daemon.log_events("transfer.slow"))
        portal.call(release.set)
        puller.join(30)

    slow = daemon.log_events("transfer.slow")[0]
    assert slow["level"] == "warning"
    assert slow["seconds_without_progress"] >= 0.4
    assert slow["name"].endswith(layer.digest)


def test_a_registry_rate_limit_running_low_is_warned_about(
    start_daemon: Callable[..., Daemon],
) -> None:
    registry = FakeRegistry()
    add_image(registry, "v1", [make_layer(10_000, seed=306)])
    limited = {"ratelimit-limit": "100;w=21600", "ratelimit-remaining": "3;w=21600"}

    def with_limits(request: Request) -> Reply:
        reply = registry.answer(request)
        reply.headers.update(limited)
        return reply

    registry.on("GET", f"/v2/{REPO}/manifests/.+", with_limits)
    daemon = start_daemon()
    with served(registry) as (_, server):
        assert errors(daemon.pull(f"{server.host}/{REPO}:v1")) == []

    [low] = daemon.log_events("registry.rate_limit_low")
    assert (low["remaining"], low["limit"], low["window_seconds"]) == (3, 100, 21600)
