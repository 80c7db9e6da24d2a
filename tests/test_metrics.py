"""GET /metrics: pulls, pushes, transfers, bytes, reused layers, retries, API requests by
route template, what runs now and the store's size, read back with prometheus_client's
own parser from the real daemon; and a scrape of a store of hundreds of blobs stays
fast."""

from __future__ import annotations

import hashlib
import random
import socket
import statistics
import time
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from typing import Any
from urllib.parse import urlencode

import httpx
import pytest
from prometheus_client import CONTENT_TYPE_LATEST
from prometheus_client.parser import text_string_to_metric_families
from starlette.applications import Starlette
from starlette.routing import BaseRoute, Match, Route
from starlette.types import Message, Receive, Scope, Send

from ferryd.daemon.api.access import AccessControl, AccessPolicy, permission_for
from ferryd.daemon.api.app import build_app
from ferryd.daemon.api.connections import ReserveOnly
from ferryd.daemon.api.metrics import UNMATCHED, UNSUPPORTED, route_template
from ferryd.daemon.settings import Access, Settings
from ferryd.daemon.state import DaemonState
from ferryd.errors import DigestMismatchError, TransferCancelledError
from ferryd.metrics import Live, Metrics, outcome_of
from support.daemon import Daemon, errors
from support.fakes import FakeRegistry, Reply, UploadRegistry, make_layer
from support.served import add_image, served
from support.slow_pulls import held_layer
from support.waiting import wait_until

REPO = "team/app"


class Scrape:
    """One `GET /metrics`, parsed by prometheus_client: `value(sample, **labels)`."""

    def __init__(self, text: str) -> None:
        self.text = text
        self.types: dict[str, str] = {}
        self.samples: dict[str, list[tuple[dict[str, str], float]]] = {}
        for family in text_string_to_metric_families(text):
            self.types[family.name] = family.type
            for sample in family.samples:
                self.samples.setdefault(sample.name, []).append((sample.labels, sample.value))

    def value(self, name: str, **labels: str) -> float:
        """The sample `name` with exactly these labels (0 when it is not shown)."""
        found = [v for have, v in self.samples.get(name, []) if have == labels]
        assert len(found) <= 1, (name, labels)
        return found[0] if found else 0.0

    def labels(self, name: str) -> list[dict[str, str]]:
        return [have for have, _ in self.samples.get(name, [])]


def scrape(daemon: Daemon) -> Scrape:
    with daemon.http(timeout=60) as client:
        answer = client.get("/metrics")
    assert answer.status_code == 200, answer.text
    assert answer.headers["content-type"] == CONTENT_TYPE_LATEST
    return Scrape(answer.text)


def scrape_when(daemon: Daemon, name: str, expected: float, **labels: str) -> Scrape:
    """The first scrape whose sample `name` (with `labels`) is `expected`."""
    latest: list[Scrape] = []

    def shows() -> bool:
        latest[:] = [scrape(daemon)]
        return latest[0].value(name, **labels) == expected

    wait_until(shows, what=f"{name}{labels} == {expected}")
    return latest[0]


def requests_counted(daemon: Daemon, method: str, route: str, status: str, count: int) -> Scrape:
    """A scrape once `count` requests are counted: each is counted just after its answer
    is sent, so a moment after the client has it."""
    labels = {"method": method, "route": route, "status": status}
    return scrape_when(daemon, "ferryd_api_requests_total", count, **labels)


def test_a_pull_and_a_push_are_counted_with_their_bytes_layers_and_routes(
    start_daemon: Callable[..., Daemon],
) -> None:
    source = FakeRegistry()
    shared = make_layer(120_000, seed=701)
    first, second = make_layer(80_000, seed=702), make_layer(60_000, seed=703)
    add_image(source, "v1", [shared, first])
    add_image(source, "v2", [shared, second])
    target = UploadRegistry()
    daemon = start_daemon()
    with served(source) as (_, src), served(target) as (_, dst), daemon.http(timeout=60) as client:
        v1, v2 = f"{src.host}/{REPO}:v1", f"{src.host}/{REPO}:v2"
        assert errors(daemon.pull(v1)) == []  # fetches shared and first
        assert errors(daemon.pull(v2)) == []  # reuses shared, fetches second
        assert errors(daemon.pull(v1)) == []  # the image is stored: both layers reused
        pushed = f"{dst.host}/team/pushed"
        answer = client.post(f"/images/{v1}/tag", params={"repo": pushed, "tag": "v1"})
        assert answer.status_code == 201
        stream = client.post(f"/v1.47/images/{pushed}/push", params={"tag": "v1"})
        assert "error" not in stream.text
        assert "digest: sha256:" in stream.text
        assert client.get(f"/v1.47/images/{v1}/json").status_code == 200
        assert client.get(f"/images/{src.host}/{REPO}:nothing/json").status_code == 404

    got = requests_counted(daemon, "GET", "/images/{name}/json", "404", 1)
    assert got.value("ferryd_pulls_total", outcome="succeeded") == 3
    assert got.value("ferryd_pulls_total", outcome="failed") == 0
    assert got.value("ferryd_pulls_total", outcome="cancelled") == 0
    assert got.value("ferryd_pushes_total", outcome="succeeded") == 1
    assert got.value("ferryd_layers_reused_total") == 3
    # Each blob crossed the network once, every byte of it counted.
    fetched = shared.size + first.size + second.size
    assert got.value("ferryd_transfer_bytes_total", action="download") == fetched
    assert got.value("ferryd_transfer_bytes_total", action="upload") == shared.size + first.size
    assert got.value("ferryd_transfers_total", action="download", outcome="succeeded") == 3
    assert got.value("ferryd_transfers_total", action="upload", outcome="succeeded") == 2
    assert got.value("ferryd_transfers_total", action="download", outcome="failed") == 0
    assert got.value("ferryd_transfer_seconds_count", action="download") == 3
    assert got.value("ferryd_transfer_seconds_count", action="upload") == 2
    assert got.value("ferryd_transfer_seconds_bucket", action="download", le="600.0") == 3
    assert 0 < got.value("ferryd_transfer_seconds_sum", action="download") < 60
    assert got.labels("ferryd_retries_total") == []
    # Nothing runs now.
    for action in ("download", "upload"):
        assert got.value("ferryd_active_transfers", action=action) == 0
    for action in ("pull", "push"):
        assert got.value("ferryd_active_jobs", action=action) == 0
    # The store: every blob file, its bytes.
    blobs = daemon.blob_files()
    assert got.value("ferryd_store_blobs") == len(blobs)
    assert got.value("ferryd_store_bytes") == sum(blob.stat().st_size for blob in blobs)
    # Requests by route template and status, the version prefix gone, no image name.
    requests = got.labels("ferryd_api_requests_total")
    assert {"method": "POST", "route": "/images/create", "status": "200"} in requests
    assert (
        got.value("ferryd_api_requests_total", method="POST", route="/images/create", status="200")
        == 3
    )
    assert (
        got.value(
            "ferryd_api_requests_total", method="POST", route="/images/{name}/tag", status="201"
        )
        == 1
    )
    assert (
        got.value(
            "ferryd_api_requests_total", method="POST", route="/images/{name}/push", status="200"
        )
        == 1
    )
    assert (
        got.value(
            "ferryd_api_requests_total", method="GET", route="/images/{name}/json", status="200"
        )
        == 1
    )
    assert got.value("ferryd_api_requests_total", method="GET", route="/_ping", status="200") >= 1
    assert all(
        "team" not in labels["route"] and not labels["route"].startswith("/v1.")
        for labels in requests
    )
    # The library's process and platform collectors, in the daemon's own registry.
    assert got.value("process_open_fds") > 0
    assert got.types["ferryd_transfer_seconds"] == "histogram"
    assert got.types["ferryd_active_transfers"] == "gauge"
    assert "ferryd_pulls_created" not in got.samples  # no _created series


def test_a_failed_pull_a_failed_transfer_and_a_retry_are_counted(
    start_daemon: Callable[..., Daemon],
) -> None:
    source = FakeRegistry()
    good, bad = make_layer(50_000, seed=711), make_layer(40_000, seed=712)
    add_image(source, "good", [good])
    add_image(source, "bad", [bad])
    # One 503 before the good layer's bytes; the bad layer's bytes are not its own.
    source.on("GET", f"/v2/{REPO}/blobs/{good.digest}", Reply(503), times=1)
    wrong = bytes(reversed(bad.blob))
    source.on("GET", f"/v2/{REPO}/blobs/{bad.digest}", Reply(200, body=wrong))
    daemon = start_daemon(max_download_attempts=2)
    with served(source) as (_, src):
        assert errors(daemon.pull(f"{src.host}/{REPO}:good")) == []
        assert errors(daemon.pull(f"{src.host}/{REPO}:missing")) != []  # no such manifest
        assert errors(daemon.pull(f"{src.host}/{REPO}:bad")) != []  # digest mismatch

    got = scrape(daemon)
    assert got.value("ferryd_pulls_total", outcome="succeeded") == 1
    assert got.value("ferryd_pulls_total", outcome="failed") == 2
    [retry] = daemon.log_events("transfer.retry")
    assert retry["cause"] == "TransientRegistryError"
    assert got.value("ferryd_retries_total", cause=retry["cause"]) == 1
    assert got.labels("ferryd_retries_total") == [{"cause": "TransientRegistryError"}]
    assert got.value("ferryd_transfers_total", action="download", outcome="succeeded") == 1
    assert got.value("ferryd_transfers_total", action="download", outcome="failed") == 1
    # Every byte received counts, the bad layer's too: they crossed the network.
    assert got.value("ferryd_transfer_bytes_total", action="download") == good.size + bad.size
    assert got.value("ferryd_transfer_seconds_count", action="download") == 1
    requests = requests_counted(daemon, "POST", "/images/create", "404", 1)
    assert (
        requests.value(
            "ferryd_api_requests_total", method="POST", route="/images/create", status="200"
        )
        == 2
    )


def test_a_pull_whose_client_leaves_is_cancelled_and_what_runs_shows_meanwhile(
    start_daemon: Callable[..., Daemon],
) -> None:
    source, _, release = held_layer(seed=721)
    daemon = start_daemon()
    with served(source) as (portal, src):
        with leaving_pull(daemon, f"{src.host}/{REPO}:v1") as leave:
            running = scrape_when(daemon, "ferryd_active_transfers", 1, action="download")
            assert running.value("ferryd_active_jobs", action="pull") == 1
            assert running.value("ferryd_active_jobs", action="push") == 0
            leave()
            scrape_when(daemon, "ferryd_pulls_total", 1, outcome="cancelled")
        portal.call(release.set)

    labels = {"action": "download", "outcome": "cancelled"}
    got = scrape_when(daemon, "ferryd_transfers_total", 1, **labels)
    assert got.value("ferryd_pulls_total", outcome="failed") == 0
    assert got.value("ferryd_active_transfers", action="download") == 0
    assert got.value("ferryd_active_jobs", action="pull") == 0


@contextmanager
def leaving_pull(daemon: Daemon, reference: str) -> Iterator[Callable[[], None]]:
    """A pull asked for on a socket of its own; calling what this yields closes it, as
    a client that goes away (Ctrl-C) does."""
    sock = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
    sock.connect(str(daemon.socket))
    target = "/images/create?" + urlencode({"fromImage": reference})
    sock.sendall(f"POST {target} HTTP/1.1\r\nHost: ferryd\r\nContent-Length: 0\r\n\r\n".encode())
    try:
        yield sock.close
    finally:
        sock.close()


def test_a_scrape_of_a_store_of_hundreds_of_blobs_is_fast(daemon: Daemon) -> None:
    # Built cheaply: files named by their digests, written where the store keeps them
    # (the sweep that would remove them, as nothing references them, runs at start).
    rng = random.Random(731)
    sizes = 0
    for _ in range(500):
        data = rng.randbytes(rng.randrange(1, 4096))
        (daemon.root / "blobs" / "sha256" / hashlib.sha256(data).hexdigest()).write_bytes(data)
        sizes += len(data)
    with daemon.http(timeout=60) as client:
        client.get("/metrics")
        took = []
        for _ in range(15):
            started = time.perf_counter()
            answer = client.get("/metrics")
            took.append(time.perf_counter() - started)
    got = Scrape(answer.text)
    assert got.value("ferryd_store_blobs") == 500
    assert got.value("ferryd_store_bytes") == sizes
    # Measured here: ~3 ms a scrape, over the socket.
    assert statistics.median(took) < 0.05, took


# -- in the test's process ---------------------------------------------------------------


def _routes() -> Any:
    access = AccessControl(AccessPolicy(Access()))
    app: Any = build_app(None, DaemonState(Settings()), access)  # type: ignore[arg-type]
    while not isinstance(app, Starlette):
        app = app._app
    return app.routes


@pytest.mark.parametrize(
    ("method", "path", "template"),
    [
        ("GET", "/metrics", "/metrics"),
        ("GET", "/_ping", "/_ping"),
        ("HEAD", "/_ping", "/_ping"),
        ("GET", "/images/json", "/images/json"),
        ("GET", "/images/host:5000/team/app:1/json", "/images/{name}/json"),
        ("POST", "/images/team/app/push", "/images/{name}/push"),
        ("DELETE", "/images/sha256:0123", "/images/{name}"),
        ("POST", "/images/json", "/images/json"),  # a 405: the route asked for
        ("GET", "/nothing/here", UNMATCHED),
    ],
)
def test_requests_are_counted_by_the_template_of_their_route(
    method: str, path: str, template: str
) -> None:
    assert route_template(_routes(), method, path) == template


class _Everything(BaseRoute):
    """A route without a path template (as the one that answers 501 for containers)."""

    def matches(self, scope: Scope) -> tuple[Match, Scope]:
        return Match.FULL, {}


def test_a_route_without_a_template_is_counted_as_unsupported() -> None:
    routes = [Route("/_ping", lambda request: None), _Everything()]
    assert route_template(routes, "GET", "/_ping") == "/_ping"
    assert route_template(routes, "GET", "/containers/json") == UNSUPPORTED


async def test_requests_are_counted_by_route_template_and_status_in_process() -> None:
    state = DaemonState(Settings())
    access = AccessControl(AccessPolicy(Access()))
    app = build_app(None, state, access)  # type: ignore[arg-type]
    transport = httpx.ASGITransport(app=app)
    async with httpx.AsyncClient(transport=transport, base_url="http://ferryd") as client:
        assert (await client.get("/_ping")).status_code == 200
        assert (await client.head("/v1.47/_ping")).status_code == 200
        assert (await client.post("/_ping")).status_code == 405
        assert (await client.get("/v9.99/_ping")).status_code == 400  # too new
        assert (await client.get("/nothing/here")).status_code == 404

    got = Scrape(state.metrics.render(Live({}, {}, 0, 0)).decode())
    count = "ferryd_api_requests_total"
    assert got.value(count, method="GET", route="/_ping", status="200") == 1
    assert got.value(count, method="HEAD", route="/_ping", status="200") == 1
    assert got.value(count, method="POST", route="/_ping", status="405") == 1
    assert got.value(count, method="GET", route="/_ping", status="400") == 1
    assert got.value(count, method="GET", route=UNMATCHED, status="404") == 1
    assert len(got.labels(count)) == 5


async def test_a_scrape_is_answered_from_the_connection_reserve() -> None:
    """When every connection is busy, the reserve still serves a scrape (and not a pull)."""
    passed: list[str] = []

    async def inner(scope: Scope, receive: Receive, send: Send) -> None:
        passed.append(scope["path"])

    async def receive() -> Message:
        return {"type": "http.disconnect"}

    async def send(message: Message) -> None:
        pass

    reserve_only = ReserveOnly(inner)
    for path in ("/metrics", "/v1.47/metrics", "/images/create"):
        scope: Scope = {"type": "http", "method": "GET", "path": path, "headers": []}
        await reserve_only({**scope, "state": {"reserve": True}}, receive, send)
    assert passed == ["/metrics", "/v1.47/metrics"]


def test_metrics_needs_read() -> None:
    assert permission_for("GET", "/metrics") == "read"


def test_two_metrics_in_one_process_keep_their_own_counts() -> None:
    first, second = Metrics(), Metrics(process=False)
    with pytest.raises(DigestMismatchError), first.job("pull"):
        raise DigestMismatchError("no")
    with second.job("pull"):
        pass
    second.transfer_finished("download", None, 0.3)
    second.transfer_finished("upload", TransferCancelledError("gone"), None)
    second.moved("download", 1234)

    one = Scrape(first.render(Live({}, {}, 0, 0)).decode())
    two = Scrape(second.render(Live({"download": 2}, {"pull": 1, "load": 1}, 99, 3)).decode())

    assert one.value("ferryd_pulls_total", outcome="failed") == 1
    assert one.value("ferryd_pulls_total", outcome="succeeded") == 0
    assert two.value("ferryd_pulls_total", outcome="succeeded") == 1
    assert two.value("ferryd_transfer_seconds_bucket", action="download", le="0.5") == 1
    assert two.value("ferryd_transfer_seconds_bucket", action="download", le="0.25") == 0
    assert two.value("ferryd_transfers_total", action="upload", outcome="cancelled") == 1
    assert two.value("ferryd_transfer_bytes_total", action="download") == 1234
    assert two.value("ferryd_active_transfers", action="download") == 2
    assert two.value("ferryd_active_transfers", action="upload") == 0
    assert two.value("ferryd_active_jobs", action="load") == 1
    assert (two.value("ferryd_store_bytes"), two.value("ferryd_store_blobs")) == (99, 3)
    assert "process_open_fds" in one.samples
    assert "process_open_fds" not in two.samples


def test_outcomes() -> None:
    assert outcome_of(None) == "succeeded"
    assert outcome_of(TransferCancelledError("x")) == "cancelled"
    assert outcome_of(DigestMismatchError("x")) == "failed"
    assert outcome_of(RuntimeError("a bug")) == "failed"


def test_the_event_loop_lag_is_a_gauge_of_the_latest_and_the_largest(daemon: Daemon) -> None:
    scraped = scrape(daemon)
    assert "ferryd_event_loop_lag_max_seconds" in scraped.samples
    latest = scraped.value("ferryd_event_loop_lag_seconds")
    assert 0 <= latest <= scraped.value("ferryd_event_loop_lag_max_seconds") < 5
