"""What `GET /metrics` shows, in one place: every metric ferryd keeps, and its own registry.

One `Metrics` per daemon, with a `CollectorRegistry` of its own (never the library's
global one: two daemons, or two tests, in one process must not clash). Counters move
where the work is done, once per pull, push, transfer, retry or API request, never per
chunk; none is derived from a log line, so they count whatever the log level. What the
daemon *is* doing (active transfers and jobs, the store's size) is read at scrape time
and handed to `render` as a `Live` snapshot.

    ferryd_pulls_total{outcome}               pull requests: succeeded, failed, cancelled
    ferryd_pushes_total{outcome}              push requests: the same outcomes
    ferryd_transfers_total{action,outcome}    layer transfers (download, upload) by outcome
    ferryd_transfer_seconds{action}           how long a transfer that succeeded ran
    ferryd_transfer_bytes_total{action}       bytes fetched (download) and sent (upload)
    ferryd_layers_reused_total                layers a pull found in the store
    ferryd_index_manifests_total{action}      platforms' manifests pulled and pushed as
                                              parts of an index (multi-platform images)
    ferryd_retries_total{cause}               retries, by the error class that caused them
    ferryd_api_requests_total{method,route,status}   API requests, by route template
    ferryd_active_transfers{action}           transfers running now
    ferryd_active_jobs{action}                pulls and pushes running now
    ferryd_store_bytes, ferryd_store_blobs    blobs in the store: bytes and count
    ferryd_event_loop_lag_seconds, ferryd_event_loop_lag_max_seconds   how late the loop
                                              woke, last and at most since the start

plus the library's process_* (CPU, memory, open files), python_gc_* and python_info.
"""

from __future__ import annotations

import asyncio
import threading
from collections.abc import Iterable, Iterator, Mapping
from contextlib import contextmanager
from dataclasses import dataclass
from typing import Final

from prometheus_client import (
    CollectorRegistry,
    Counter,
    GCCollector,
    Histogram,
    PlatformCollector,
    ProcessCollector,
    generate_latest,
)
from prometheus_client.metrics_core import GaugeMetricFamily, Metric
from prometheus_client.registry import Collector

from ferryd.errors import FerrydError, TransferCancelledError

# A layer moves in well under a second on a LAN and in minutes over a slow link; past
# 10 minutes the exact figure no longer matters.
TRANSFER_BUCKETS: Final = (0.1, 0.25, 0.5, 1, 2.5, 5, 10, 30, 60, 120, 300, 600)
OUTCOMES: Final = ("succeeded", "failed", "cancelled")
TRANSFER_ACTIONS: Final = ("download", "upload")
JOB_ACTIONS: Final = ("pull", "push")


@dataclass(frozen=True, slots=True)
class Live:
    """What the daemon is doing at scrape time: read by the API route, shown as gauges."""

    transfers: Mapping[str, int]  # action → running transfers
    jobs: Mapping[str, int]  # action → running pulls and pushes
    store_bytes: int
    store_blobs: int
    loop_lag: float = 0.0  # seconds the event loop last ran late
    loop_lag_max: float = 0.0  # the most it ran late since the daemon started


def outcome_of(exc: BaseException | None) -> str:
    """succeeded (no exception), cancelled (the client left, the daemon stopped, or the
    shared transfer it waited on was cancelled), else failed."""
    if exc is None:
        return "succeeded"
    # asyncio's: the daemon runs on asyncio (uvloop), and this must also work off it.
    if isinstance(exc, TransferCancelledError | asyncio.CancelledError):
        return "cancelled"
    return "failed"


class Metrics:
    """Every metric of one daemon, in its own registry."""

    def __init__(self, *, process: bool = True) -> None:
        self.registry = CollectorRegistry()
        registry = self.registry
        self.pulls = Counter(
            "ferryd_pulls", "Pull requests, by outcome.", ["outcome"], registry=registry
        )
        self.pushes = Counter(
            "ferryd_pushes", "Push requests, by outcome.", ["outcome"], registry=registry
        )
        self.transfers = Counter(
            "ferryd_transfers",
            "Layer transfers (download, upload), by outcome; one transfer may serve "
            "several pulls or pushes.",
            ["action", "outcome"],
            registry=registry,
        )
        self.transfer_seconds = Histogram(
            "ferryd_transfer_seconds",
            "Seconds a transfer that succeeded ran, from its slot to its end (retries "
            "included, waiting for a slot not).",
            ["action"],
            buckets=TRANSFER_BUCKETS,
            registry=registry,
        )
        self.transfer_bytes = Counter(
            "ferryd_transfer_bytes",
            "Bytes fetched from registries (download) and sent to them (upload), every "
            "attempt's; a resumed download counts only what it fetched.",
            ["action"],
            registry=registry,
        )
        self.layers_reused = Counter(
            "ferryd_layers_reused",
            "Layers a pull found in the store instead of fetching them.",
            registry=registry,
        )
        self.index_manifests = Counter(
            "ferryd_index_manifests",
            "Image manifests (platforms and their attestations) pulled or pushed as parts "
            "of an index, by action: a pull of three platforms counts 3.",
            ["action"],
            registry=registry,
        )
        self.retries = Counter(
            "ferryd_retries",
            "Retries of a transfer or manifest request, by the error class that caused "
            "them (as `transfer.retry` names it).",
            ["cause"],
            registry=registry,
        )
        self.api_requests = Counter(
            "ferryd_api_requests",
            "API requests, by method, route template and status (0: no answer was sent).",
            ["method", "route", "status"],
            registry=registry,
        )
        # Every outcome and action shows from the first scrape, at 0: a rate() of a
        # series that appears only with its first failure misses that failure.
        for outcome in OUTCOMES:
            self.pulls.labels(outcome)
            self.pushes.labels(outcome)
            for action in TRANSFER_ACTIONS:
                self.transfers.labels(action, outcome)
        for action in JOB_ACTIONS:
            self.index_manifests.labels(action)
        for action in TRANSFER_ACTIONS:
            self.transfer_seconds.labels(action)
            self.transfer_bytes.labels(action)
        self._live = _LiveCollector()
        registry.register(self._live)
        if process:
            # Each costs a few reads of /proc/self (and a listdir of its fds) per scrape.
            ProcessCollector(registry=registry)
            PlatformCollector(registry=registry)
            GCCollector(registry=registry)
        self._rendering = threading.Lock()

    @contextmanager
    def job(self, action: str) -> Iterator[None]:
        """Count a pull or push request by how it ends; the exception goes on."""
        counter = self.pulls if action == "pull" else self.pushes
        try:
            yield
        except BaseException as exc:
            counter.labels(outcome_of(exc)).inc()
            raise
        counter.labels("succeeded").inc()

    def transfer_finished(
        self, action: str, error: BaseException | None, seconds: float | None
    ) -> None:
        """One transfer has ended: `error` None when it succeeded, in `seconds`."""
        self.transfers.labels(action, outcome_of(error)).inc()
        if error is None and seconds is not None:
            self.transfer_seconds.labels(action).observe(seconds)

    def moved(self, action: str, count: int) -> None:
        """`count` bytes fetched (download) or sent (upload): once per transfer or
        attempt, never per chunk."""
        if count:
            self.transfer_bytes.labels(action).inc(count)

    def retried(self, cause: FerrydError) -> None:
        self.retries.labels(type(cause).__name__).inc()

    def render(self, live: Live) -> bytes:
        """The Prometheus text format, with `live` as the gauges of the moment. Blocking
        (the process collector reads /proc): call it from a worker thread."""
        with self._rendering:
            self._live.now = live
            try:
                return generate_latest(self.registry)
            finally:
                self._live.now = None


class _LiveCollector(Collector):
    """The gauges read at scrape time, from the snapshot `render` sets."""

    def __init__(self) -> None:
        self.now: Live | None = None

    def describe(self) -> Iterable[Metric]:
        return self._families(Live({}, {}, 0, 0))

    def collect(self) -> Iterable[Metric]:
        return self._families(self.now) if self.now is not None else []

    @staticmethod
    def _families(live: Live) -> list[Metric]:
        transfers = GaugeMetricFamily(
            "ferryd_active_transfers", "Transfers running now, by action.", labels=["action"]
        )
        for action in sorted({*TRANSFER_ACTIONS, *live.transfers}):
            transfers.add_metric([action], live.transfers.get(action, 0))
        jobs = GaugeMetricFamily(
            "ferryd_active_jobs",
            "Pulls and pushes running now (from the moment they were asked for).",
            labels=["action"],
        )
        for action in sorted({*JOB_ACTIONS, *live.jobs}):
            jobs.add_metric([action], live.jobs.get(action, 0))
        size = GaugeMetricFamily(
            "ferryd_store_bytes", "Bytes of the blobs in the store.", value=live.store_bytes
        )
        count = GaugeMetricFamily(
            "ferryd_store_blobs", "Blobs in the store.", value=live.store_blobs
        )
        lag = GaugeMetricFamily(
            "ferryd_event_loop_lag_seconds",
            "How late the event loop last woke (it should only move bytes).",
            value=live.loop_lag,
        )
        lag_max = GaugeMetricFamily(
            "ferryd_event_loop_lag_max_seconds",
            "The latest the event loop has woken since the daemon started.",
            value=live.loop_lag_max,
        )
        return [transfers, jobs, size, count, lag, lag_max]
