"""A registry that rate-limits the manifest: the pull waits as long as it is told
(Retry-After), says so, and goes on; a mirror that does is skipped, not waited for."""

from __future__ import annotations

import time
from collections.abc import Callable

from support.daemon import Daemon, errors
from support.fakes import FakeRegistry, make_layer, registry_error
from support.served import add_image, served

REPO = "team/app"


def test_a_rate_limited_manifest_is_fetched_again_after_its_retry_after(
    start_daemon: Callable[..., Daemon],
) -> None:
    registry = FakeRegistry()
    add_image(registry, "v1", [make_layer(10_000, seed=501)])
    busy = registry_error(429, "TOOMANYREQUESTS", "slow down")
    busy.headers["Retry-After"] = "1"
    registry.on("GET", f"/v2/{REPO}/manifests/v1", busy, times=1)
    daemon = start_daemon()
    with served(registry) as (_, server):
        started = time.monotonic()
        messages = daemon.pull(f"{server.host}/{REPO}:v1")
        elapsed = time.monotonic() - started

    assert errors(messages) == []
    assert {"status": "Retrying in 1 second"} in messages
    assert elapsed >= 0.9
    assert len(registry.seen("GET", f"/v2/{REPO}/manifests/v1")) == 2
    [retry] = daemon.log_events("transfer.retry")
    assert (retry["cause"], retry["delay"]) == ("TooManyRequestsError", 1.0)
