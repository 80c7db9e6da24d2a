"""Pulls and pushes are jobs from the moment they are asked for: `/jobs` shows a pull
waiting on its manifest before any layer moves, then its layers as they go."""

from __future__ import annotations

import threading
from collections.abc import Callable
from typing import Any

from support.daemon import Daemon, errors
from support.served import served
from support.slow_pulls import REPO, held, held_layer
from support.waiting import wait_until


def jobs(daemon: Daemon) -> list[dict[str, Any]]:
    listed: list[dict[str, Any]] = daemon.client().get_json("/jobs")
    return listed


def test_a_pull_shows_as_a_job_while_it_waits_for_its_manifest_then_with_its_layers(
    start_daemon: Callable[..., Daemon],
) -> None:
    registry, layer, blob_released = held_layer(seed=401)
    manifest_released = held(registry, "GET", f"/v2/{REPO}/manifests/v1")
    daemon = start_daemon()
    result: list[list[str]] = []
    with served(registry) as (portal, server):
        reference = f"{server.host}/{REPO}:v1"
        puller = threading.Thread(target=lambda: result.append(errors(daemon.pull(reference))))
        puller.start()

        [waiting] = wait_until(lambda: jobs(daemon), what="the pull as a job")
        assert (waiting["Action"], waiting["Reference"]) == ("pull", reference)
        wait_until(lambda: jobs(daemon)[0]["Phase"] == "manifest")
        assert jobs(daemon)[0]["Layers"] == []
        assert daemon.client().get_json("/transfers") == []

        portal.call(manifest_released.set)
        [running] = wait_until(lambda: [j for j in jobs(daemon) if j["Layers"]])
        assert running["Phase"] == "layers"
        assert [layer_row["ID"] for layer_row in running["Layers"]] == [layer.digest[7:19]]
        portal.call(blob_released.set)
        puller.join(30)

    assert result == [[]]
    assert jobs(daemon) == []


def test_jobs_with_nothing_running_is_an_empty_list(daemon: Daemon) -> None:
    assert jobs(daemon) == []
