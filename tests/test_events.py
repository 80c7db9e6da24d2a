"""Image events: the hub's docker shapes, /events filters and times, and the live stream."""

from __future__ import annotations

import json
import subprocess
import sys
import threading
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

import anyio
import pytest

from ferryd.api.event_filters import EventFilter, EventFilterError, parse_time
from ferryd.client import DaemonError
from ferryd.events import Event, EventHub
from support.daemon import Daemon, errors
from support.images import LayerSpec, build_image, seed
from support.registry import Registry

IMAGE = "sha256:" + "ab" * 32


# -- the hub ------------------------------------------------------------------------------


def test_pull_events_name_the_reference_as_dockerd_does() -> None:
    hub = EventHub()

    hub(IMAGE, "docker.io/library/busybox:latest", "pull")
    with hub.watch() as (kept, _):
        [event] = kept

    shape = event.to_docker()
    assert shape["Type"] == "image"
    assert shape["Action"] == shape["status"] == "pull"
    assert shape["Actor"] == {"ID": "busybox:latest", "Attributes": {"name": "busybox"}}
    assert shape["id"] == "busybox:latest"
    assert shape["scope"] == "local"
    assert shape["time"] == shape["timeNano"] // 1_000_000_000


def test_tag_untag_and_delete_events_name_the_image_id() -> None:
    hub = EventHub()

    hub(IMAGE, "127.0.0.1:5000/team/app:v2", "tag")
    hub(IMAGE, "127.0.0.1:5000/team/app:v1", "untag")
    hub(IMAGE, IMAGE, "delete")
    with hub.watch() as (kept, _):
        shapes = [event.to_docker() for event in kept]

    assert [s["Action"] for s in shapes] == ["tag", "untag", "delete"]
    assert {s["Actor"]["ID"] for s in shapes} == {IMAGE}
    assert [s["Actor"]["Attributes"]["name"] for s in shapes] == [
        "127.0.0.1:5000/team/app:v2",
        "127.0.0.1:5000/team/app:v1",
        IMAGE,
    ]


async def test_a_watcher_gets_kept_events_then_live_ones_without_a_gap() -> None:
    hub = EventHub()
    hub.bind()
    hub(IMAGE, "busybox:1", "pull")

    with hub.watch() as (kept, live):
        hub(IMAGE, "busybox:2", "pull")
        with anyio.fail_after(5):
            following = await live.receive()

    assert [e.actor_id for e in kept] == ["busybox:1"]
    assert following.actor_id == "busybox:2"
    assert hub.watchers == 0


async def test_events_from_worker_threads_reach_watchers() -> None:
    hub = EventHub()
    hub.bind()

    with hub.watch() as (_, live):
        await anyio.to_thread.run_sync(lambda: hub(IMAGE, "team/app:v1", "tag"))
        with anyio.fail_after(5):
            event = await live.receive()

    assert event.action == "tag"


async def test_a_watcher_that_falls_behind_is_dropped() -> None:
    hub = EventHub()
    hub.bind()

    with hub.watch() as (_, live):
        for number in range(300):
            hub(IMAGE, f"busybox:{number}", "pull")
        received = [event async for event in live]

    assert 0 < len(received) < 300
    assert hub.watchers == 0


async def test_closing_the_hub_ends_every_stream() -> None:
    hub = EventHub()
    hub.bind()

    with hub.watch() as (_, live):
        hub.close()
        with anyio.fail_after(5):
            assert [event async for event in live] == []


def test_only_the_last_events_are_kept() -> None:
    hub = EventHub(keep=3)
    for number in range(5):
        hub(IMAGE, f"busybox:{number}", "pull")

    with hub.watch() as (kept, _):
        assert [e.actor_id for e in kept] == ["busybox:2", "busybox:3", "busybox:4"]


# -- filters and times ------------------------------------------------------------------

PULL = Event("pull", "team/app:v1", "team/app", 0)
TAG = Event("tag", IMAGE, "team/app:v2", 0)


@pytest.mark.parametrize(
    ("filters", "pull", "tag"),
    [
        ("", True, True),
        ('{"type": ["image"]}', True, True),
        ('{"type": {"image": true}}', True, True),  # the older map form
        ('{"type": ["container"]}', False, False),
        ('{"event": ["pull"]}', True, False),
        ('{"event": ["pull", "tag"]}', True, True),
        ('{"image": ["team/app"]}', True, True),
        ('{"image": ["team/app:v1"]}', True, False),
        (f'{{"image": ["{IMAGE}"]}}', False, True),
        ('{"container": ["web"]}', False, False),
        ('{"label": ["a=b"]}', False, False),
        ('{"scope": ["local"], "event": ["tag"]}', False, True),
    ],
)
def test_filters_match_as_dockerds(filters: str, pull: bool, tag: bool) -> None:
    wanted = EventFilter.parse(filters)

    assert (wanted.matches(PULL), wanted.matches(TAG)) == (pull, tag)


@pytest.mark.parametrize(
    ("filters", "message"),
    [
        ("{not json", "is not JSON"),
        ("[]", "expected a JSON object"),
        ('{"colour": ["red"]}', "invalid filter 'colour'"),
        ('{"event": "pull"}', "invalid filter 'event': expected a list of strings"),
    ],
)
def test_bad_filters_are_refused_naming_the_problem(filters: str, message: str) -> None:
    with pytest.raises(EventFilterError, match=message):
        EventFilter.parse(filters)


@pytest.mark.parametrize(
    ("text", "nanos"),
    [
        ("1700000000", 1_700_000_000_000_000_000),
        ("1700000000.5", 1_700_000_000_500_000_000),
        ("1700000000.000000001", 1_700_000_000_000_000_001),
    ],
)
def test_times_are_unix_seconds_with_optional_fractions(text: str, nanos: int) -> None:
    assert parse_time(text, "since") == nanos


def test_a_time_that_is_not_unix_seconds_is_refused() -> None:
    with pytest.raises(EventFilterError, match="invalid until value 'tomorrow'"):
        parse_time("tomorrow", "until")


# -- through the daemon ------------------------------------------------------------------


def _seeded(registry: Registry, layout: Path, repository: str, seed_number: int) -> str:
    build_image(layout, layers=[LayerSpec(size=2000, seed=seed_number)])
    seed(registry, layout, "latest", f"{repository}:v1")
    return f"{registry.host}/{repository}:v1"


def _replay(daemon: Daemon, **params: str) -> list[dict[str, Any]]:
    params = {"since": "0", "until": f"{time.time():.9f}", **params}
    return list(daemon.client().stream("GET", "/events", params))


def test_pull_tag_and_rmi_are_replayed_in_order(
    registry: Registry, daemon: Daemon, layout: Path
) -> None:
    reference = _seeded(registry, layout, "events/replay", 701)
    assert errors(daemon.pull(reference)) == []
    client = daemon.client()
    client.request(
        "POST", f"/images/{reference}/tag", {"repo": f"{registry.host}/events/other", "tag": "x"}
    ).read()
    client.request("DELETE", f"/images/{registry.host}/events/other:x").read()

    events = _replay(daemon)

    assert [(e["Action"], e["Actor"]["Attributes"]["name"]) for e in events] == [
        ("pull", f"{registry.host}/events/replay"),
        ("tag", f"{registry.host}/events/other:x"),
        ("untag", f"{registry.host}/events/other:x"),
    ]
    assert [e["Action"] for e in _replay(daemon, filters='{"event": ["tag"]}')] == ["tag"]


def test_a_live_stream_sees_a_pull_as_it_happens(
    registry: Registry, daemon: Daemon, layout: Path
) -> None:
    reference = _seeded(registry, layout, "events/live", 702)
    seen: list[dict[str, Any]] = []
    response = daemon.client().request("GET", "/events")

    def read_one() -> None:
        seen.append(json.loads(response.readline()))

    reader = threading.Thread(target=read_one)
    reader.start()
    assert errors(daemon.pull(reference)) == []
    reader.join(30)
    response.close()

    [event] = seen
    assert event["Action"] == "pull"
    assert event["Actor"]["ID"] == f"{registry.host}/events/live:v1"


def test_a_bad_filter_is_a_400_naming_it(daemon: Daemon) -> None:
    with pytest.raises(DaemonError, match="invalid filter 'colour'"):
        daemon.client().request("GET", "/events", {"filters": '{"colour": ["red"]}'})


def test_an_open_event_stream_does_not_hold_up_a_stop(daemon: Daemon) -> None:
    response = daemon.client().request("GET", "/events")
    started = time.monotonic()

    assert daemon.stop() == 0

    assert time.monotonic() - started < 10
    assert response.read() == b""


def test_ferryd_events_replays_as_json_lines(
    registry: Registry, daemon: Daemon, layout: Path
) -> None:
    reference = _seeded(registry, layout, "events/cli", 703)
    assert errors(daemon.pull(reference)) == []

    done = _ferryd(daemon, "events", "--json", "--since", "0", "--until", f"{time.time():.3f}")

    assert done.returncode == 0, done.stderr
    [event] = [json.loads(line) for line in done.stdout.splitlines()]
    assert event["Action"] == "pull"


def test_ferryd_events_prints_one_line_per_event(
    registry: Registry, daemon: Daemon, layout: Path
) -> None:
    reference = _seeded(registry, layout, "events/human", 704)
    assert errors(daemon.pull(reference)) == []

    done = _ferryd(daemon, "events", "--since", "10m", "--until", "0s", "-f", "event=pull")

    assert done.returncode == 0, done.stderr
    [line] = done.stdout.splitlines()
    assert line.endswith(
        f" image pull {registry.host}/events/human:v1 (name={registry.host}/events/human)"
    )


@pytest.mark.parametrize(
    ("args", "message"),
    [
        (["--since", "yesterday-ish"], "--since 'yesterday-ish': expected Unix seconds"),
        (["-f", "pull"], "bad filter 'pull': expected KEY=VALUE"),
    ],
)
def test_ferryd_events_with_bad_arguments_says_why(
    daemon: Daemon, args: list[str], message: str
) -> None:
    done = _ferryd(daemon, "events", *args)

    assert done.returncode == 1
    assert message in done.stderr
    assert "Traceback" not in done.stderr


def _ferryd(daemon: Daemon, *args: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [sys.executable, "-m", "ferryd", "-H", daemon.host, *args],
        capture_output=True,
        text=True,
        timeout=60,
    )


def test_every_log_line_is_one_json_object(start_daemon: Callable[..., Daemon]) -> None:
    daemon = start_daemon()
    daemon.client().get_json("/info")
    daemon.stop()

    for line in daemon.log_path.read_text().splitlines():
        assert isinstance(json.loads(line), dict), line
