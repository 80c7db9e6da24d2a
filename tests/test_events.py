"""Image events: the hub's docker shapes, /events filters and times, and the stream itself
(live, replayed, bounded, and ended by the daemon's stop), through the API and the CLI."""

from __future__ import annotations

import datetime
import http.client
import json
import signal
import subprocess
import sys
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

import anyio
import pytest
from structlog.testing import capture_logs

from ferryd.cli.client import Client, DaemonError
from ferryd.daemon.api.event_filters import EventFilter, parse_time
from ferryd.distribution.events import Event, EventHub
from ferryd.errors import InvalidFilterError
from support.daemon import Daemon, errors, now
from support.images import seeded
from support.registry import Registry
from support.waiting import wait_until

IMAGE = "sha256:" + "ab" * 32
OTHER_IMAGE = "sha256:" + "cd" * 32


def _kept(hub: EventHub) -> list[Event]:
    with hub.watch() as (kept, _):
        return kept


# -- the hub: what an event says --------------------------------------------------------


def test_pull_events_name_the_reference_and_its_repository_as_dockerd_does() -> None:
    hub = EventHub()

    hub(IMAGE, "docker.io/library/busybox:latest", "pull")

    [event] = _kept(hub)
    shape = event.to_docker()
    assert shape["Type"] == "image"
    assert shape["Action"] == shape["status"] == "pull"
    assert shape["Actor"] == {"ID": "busybox:latest", "Attributes": {"name": "busybox"}}
    assert shape["id"] == "busybox:latest"
    assert shape["scope"] == "local"
    assert shape["time"] == shape["timeNano"] // 1_000_000_000


def test_push_events_name_the_reference_and_its_repository_too() -> None:
    hub = EventHub()

    hub(IMAGE, "127.0.0.1:5000/team/app:v1", "push")

    [event] = _kept(hub)
    assert event.to_docker()["Actor"] == {
        "ID": "127.0.0.1:5000/team/app:v1",
        "Attributes": {"name": "127.0.0.1:5000/team/app"},
    }


def test_a_pull_by_digest_is_named_by_its_digest_reference() -> None:
    hub = EventHub()
    digest = "sha256:" + "ef" * 32

    hub(IMAGE, f"docker.io/library/busybox@{digest}", "pull")

    [event] = _kept(hub)
    assert event.to_docker()["Actor"] == {
        "ID": f"busybox@{digest}",
        "Attributes": {"name": "busybox"},
    }


def test_tag_and_untag_events_name_the_image_id_and_the_familiar_reference() -> None:
    hub = EventHub()

    hub(IMAGE, "docker.io/library/busybox:mine", "tag")
    hub(IMAGE, "127.0.0.1:5000/team/app:v1", "untag")

    shapes = [event.to_docker() for event in _kept(hub)]
    assert [(s["Action"], s["id"], s["Actor"]) for s in shapes] == [
        ("tag", IMAGE, {"ID": IMAGE, "Attributes": {"name": "busybox:mine"}}),
        ("untag", IMAGE, {"ID": IMAGE, "Attributes": {"name": "127.0.0.1:5000/team/app:v1"}}),
    ]


@pytest.mark.parametrize("asked_by", [IMAGE, IMAGE[7:19], "docker.io/library/busybox:latest"])
def test_a_delete_event_names_the_image_id_whatever_the_removal_was_asked_by(
    asked_by: str,
) -> None:
    hub = EventHub()

    hub(IMAGE, asked_by, "delete")

    [event] = _kept(hub)
    assert event.to_docker()["Actor"] == {"ID": IMAGE, "Attributes": {"name": IMAGE}}


def test_every_event_is_also_a_log_line_with_its_details() -> None:
    hub = EventHub()

    with capture_logs() as logged:
        hub(IMAGE, "docker.io/library/busybox:latest", "pull", layers_fetched=2, bytes=1234)

    assert logged == [
        {
            "event": "image.pull",
            "log_level": "info",
            "action": "pull",
            "image_id": IMAGE,
            "reference": "docker.io/library/busybox:latest",
            "layers_fetched": 2,
            "bytes": 1234,
        }
    ]


def test_only_the_last_events_are_kept() -> None:
    hub = EventHub(keep=3)

    for number in range(5):
        hub(IMAGE, f"busybox:{number}", "pull")

    assert [e.actor_id for e in _kept(hub)] == ["busybox:2", "busybox:3", "busybox:4"]


def test_the_daemon_keeps_the_last_1024_events() -> None:
    hub = EventHub()

    for number in range(1030):
        hub(IMAGE, f"busybox:{number}", "pull")

    kept = _kept(hub)
    assert len(kept) == 1024
    assert kept[0].actor_id == "busybox:6"


# -- the hub: watchers ------------------------------------------------------------------


async def test_a_watcher_gets_kept_events_then_live_ones_without_a_gap_or_overlap() -> None:
    hub = EventHub()
    hub.bind()
    hub(IMAGE, "busybox:1", "pull")

    with hub.watch() as (kept, live):
        hub(IMAGE, "busybox:2", "pull")
        hub(IMAGE, "busybox:3", "pull")
        with anyio.fail_after(5):
            following = [await live.receive(), await live.receive()]

    assert [e.actor_id for e in kept] == ["busybox:1"]
    assert [e.actor_id for e in following] == ["busybox:2", "busybox:3"]
    assert hub.watchers == 0


async def test_every_watcher_gets_every_event() -> None:
    hub = EventHub()
    hub.bind()

    with hub.watch() as (_, first), hub.watch() as (_, second):
        assert hub.watchers == 2
        hub(IMAGE, "busybox:1", "pull")
        with anyio.fail_after(5):
            got = [await first.receive(), await second.receive()]

    assert [e.actor_id for e in got] == ["busybox:1", "busybox:1"]
    assert hub.watchers == 0


async def test_events_from_worker_threads_reach_watchers_and_are_kept() -> None:
    hub = EventHub()
    hub.bind()

    with hub.watch() as (_, live):
        await anyio.to_thread.run_sync(lambda: hub(IMAGE, "team/app:v1", "tag"))
        with anyio.fail_after(5):
            event = await live.receive()

    assert (event.action, event.name) == ("tag", "team/app:v1")
    assert [e.action for e in _kept(hub)] == ["tag"]


async def test_an_event_from_a_thread_is_there_when_the_thread_is_done() -> None:
    """tag and rmi answer once their thread returns: a replay asked right after the
    answer must already hold the event."""
    hub = EventHub()
    hub.bind()

    def many() -> None:
        for number in range(50):
            hub(IMAGE, f"team/app:{number}", "untag")

    await anyio.to_thread.run_sync(many)

    assert [e.name for e in _kept(hub)] == [f"team/app:{number}" for number in range(50)]


async def test_a_watcher_that_falls_behind_is_dropped_and_the_others_keep_everything() -> None:
    hub = EventHub()
    hub.bind()
    received: list[Event] = []

    with hub.watch() as (_, slow), hub.watch() as (_, keeping_up):
        for number in range(300):
            hub(IMAGE, f"busybox:{number}", "pull")
            received.append(keeping_up.receive_nowait())
        assert hub.watchers == 1
        with anyio.fail_after(5):
            backlog = [event async for event in slow]  # what it had, then the end

    assert len(received) == 300
    assert [e.actor_id for e in backlog] == [f"busybox:{n}" for n in range(len(backlog))]
    assert 0 < len(backlog) < 300


async def test_closing_the_hub_ends_every_stream() -> None:
    hub = EventHub()
    hub.bind()

    with hub.watch() as (_, first), hub.watch() as (_, second):
        hub.close()
        with anyio.fail_after(5):
            assert [event async for event in first] == []
            assert [event async for event in second] == []
    assert hub.watchers == 0


async def test_a_watcher_that_comes_after_the_hub_closed_gets_an_ended_stream() -> None:
    hub = EventHub()
    hub.bind()
    hub(IMAGE, "busybox:1", "pull")
    hub.close()

    with hub.watch() as (kept, live):
        assert hub.watchers == 0
        with anyio.fail_after(5):
            assert [event async for event in live] == []
    assert [e.actor_id for e in kept] == ["busybox:1"]


# -- filters and times ------------------------------------------------------------------

PULL = Event("pull", "team/app:v1", "team/app", 0)
TAG = Event("tag", IMAGE, "team/app:v2", 0)
UNTAG_BY_DIGEST = Event("untag", OTHER_IMAGE, "team/app@sha256:" + "ef" * 32, 0)


@pytest.mark.parametrize(
    ("filters", "pull", "tag"),
    [
        ("", True, True),
        ("{}", True, True),
        ('{"type": ["image"]}', True, True),
        ('{"type": {"image": true}}', True, True),  # the older map form the docker CLI sends
        ('{"type": []}', True, True),  # an empty list asks for nothing
        ('{"type": ["container"]}', False, False),
        ('{"type": ["container", "image"]}', True, True),
        ('{"event": ["pull"]}', True, False),
        ('{"event": {"pull": true, "tag": false}}', True, False),
        ('{"event": ["pull", "tag"]}', True, True),
        ('{"image": ["team/app"]}', True, True),  # the repository
        ('{"image": ["team/app:v1"]}', True, False),  # the reference
        (f'{{"image": ["{IMAGE}"]}}', False, True),  # the image ID
        ('{"image": ["team/other"]}', False, False),
        ('{"container": ["web"]}', False, False),
        ('{"network": ["bridge"]}', False, False),
        ('{"label": ["a=b"]}', False, False),
        ('{"scope": ["local"], "event": ["tag"]}', False, True),
        ('{"scope": ["swarm"]}', False, False),
        ('{"type": ["image"], "event": ["tag"], "image": ["team/app:v2"]}', False, True),
    ],
)
def test_filters_match_as_dockerds(filters: str, pull: bool, tag: bool) -> None:
    wanted = EventFilter.parse(filters)

    assert (wanted.matches(PULL), wanted.matches(TAG)) == (pull, tag)


@pytest.mark.parametrize(
    "image",
    ["team/app", f"team/app@sha256:{'ef' * 32}", OTHER_IMAGE],
    ids=["repository", "reference", "image-id"],
)
def test_an_image_filter_finds_an_untag_by_digest_by_repository_reference_or_id(
    image: str,
) -> None:
    wanted = EventFilter.parse(json.dumps({"image": [image]}))

    assert wanted.matches(UNTAG_BY_DIGEST)


@pytest.mark.parametrize(
    ("filters", "message"),
    [
        ("{not json", "invalid filter: '{not json' is not JSON"),
        ("[]", "expected a JSON object"),
        ('"event=pull"', "expected a JSON object"),
        ('{"colour": ["red"]}', "invalid filter 'colour'"),
        ('{"event": "pull"}', "invalid filter 'event': expected a list of strings"),
        ('{"event": [1]}', "invalid filter 'event': expected a list of strings"),
    ],
)
def test_bad_filters_are_refused_naming_the_problem(filters: str, message: str) -> None:
    with pytest.raises(InvalidFilterError, match=message):
        EventFilter.parse(filters)


@pytest.mark.parametrize(
    ("text", "nanos"),
    [
        ("0", 0),
        ("1700000000", 1_700_000_000_000_000_000),
        ("1700000000.5", 1_700_000_000_500_000_000),
        ("1700000000.000000001", 1_700_000_000_000_000_001),
        (" 1700000000.250 ", 1_700_000_000_250_000_000),
    ],
)
def test_times_are_unix_seconds_with_optional_fractions(text: str, nanos: int) -> None:
    assert parse_time(text, "since") == nanos


@pytest.mark.parametrize("text", ["tomorrow", "10m", "1700000000.", "1.0000000001", ""])
def test_a_time_that_is_not_unix_seconds_is_refused_naming_the_parameter(text: str) -> None:
    with pytest.raises(InvalidFilterError, match=f"invalid until value {text!r}"):
        parse_time(text, "until")


# -- through the daemon ------------------------------------------------------------------


def _replay(daemon: Daemon, **params: str) -> list[dict[str, Any]]:
    params = {"since": "0", "until": now(), **params}
    return list(daemon.client().stream("GET", "/events", params))


def _watch(daemon: Daemon, **params: str) -> http.client.HTTPResponse:
    """An open event stream; a read waits at most 30 s, so a missing event fails."""
    return Client(daemon.host, timeout=30).request("GET", "/events", params)


def _read(response: http.client.HTTPResponse, count: int) -> list[dict[str, Any]]:
    return [json.loads(response.readline()) for _ in range(count)]


def _tag(daemon: Daemon, source: str, repository: str, tag: str) -> None:
    params = {"repo": repository, "tag": tag}
    daemon.client().request("POST", f"/images/{source}/tag", params).read()


def _rmi(daemon: Daemon, name: str) -> list[dict[str, Any]]:
    records: list[dict[str, Any]] = json.loads(
        daemon.client().request("DELETE", f"/images/{name}").read()
    )
    return records


def _wait_for_watchers(daemon: Daemon, count: int) -> None:
    wait_until(
        lambda: daemon.client().get_json("/info")["NEventsListener"] == count,
        20,
        what=f"{count} event watchers",
    )


def test_pull_tag_and_rmi_reach_a_live_stream_in_order(
    registry: Registry, daemon: Daemon, layout: Path
) -> None:
    reference = seeded(registry, layout, "events/live", 702)
    other = f"{registry.host}/events/other"
    stream = _watch(daemon)

    assert errors(daemon.pull(reference)) == []
    image_id = daemon.inspect(reference)["Id"]
    _tag(daemon, reference, other, "x")
    _rmi(daemon, f"{other}:x")
    _rmi(daemon, reference)
    events = _read(stream, 5)
    stream.close()

    assert [(e["Action"], e["Actor"]["ID"], e["Actor"]["Attributes"]["name"]) for e in events] == [
        ("pull", reference, f"{registry.host}/events/live"),
        ("tag", image_id, f"{other}:x"),
        ("untag", image_id, f"{other}:x"),
        ("untag", image_id, reference),
        ("delete", image_id, image_id),
    ]
    assert all(e["Type"] == "image" and e["scope"] == "local" for e in events)
    times = [e["timeNano"] for e in events]
    assert times == sorted(times)


def test_a_stream_is_watching_once_its_answer_has_started(
    registry: Registry, daemon: Daemon, layout: Path
) -> None:
    reference = seeded(registry, layout, "events/started", 705)
    assert errors(daemon.pull(reference)) == []

    stream = _watch(daemon)
    _tag(daemon, reference, f"{registry.host}/events/started", "right-away")
    [event] = _read(stream, 1)
    stream.close()

    assert event["Action"] == "tag"


def test_since_and_until_in_the_past_replay_in_order_then_end(
    registry: Registry, daemon: Daemon, layout: Path
) -> None:
    reference = seeded(registry, layout, "events/replay", 701)
    assert errors(daemon.pull(reference)) == []
    _tag(daemon, reference, f"{registry.host}/events/other", "x")
    _rmi(daemon, f"{registry.host}/events/other:x")

    events = _replay(daemon)

    assert [(e["Action"], e["Actor"]["Attributes"]["name"]) for e in events] == [
        ("pull", f"{registry.host}/events/replay"),
        ("tag", f"{registry.host}/events/other:x"),
        ("untag", f"{registry.host}/events/other:x"),
    ]


def test_a_replay_keeps_to_its_time_window(
    registry: Registry, daemon: Daemon, layout: Path
) -> None:
    reference = seeded(registry, layout, "events/window", 706)
    assert errors(daemon.pull(reference)) == []
    between = now()
    _tag(daemon, reference, f"{registry.host}/events/window", "later")

    assert [e["Action"] for e in _replay(daemon, until=between)] == ["pull"]
    assert [e["Action"] for e in _replay(daemon, since=between)] == ["tag"]


def test_until_alone_replays_everything_kept_before_it(
    registry: Registry, daemon: Daemon, layout: Path
) -> None:
    reference = seeded(registry, layout, "events/until", 707)
    assert errors(daemon.pull(reference)) == []

    events = list(daemon.client().stream("GET", "/events", {"until": now()}))

    assert [e["Action"] for e in events] == ["pull"]


def test_a_replay_with_filters_keeps_only_what_they_match(
    registry: Registry, daemon: Daemon, layout: Path
) -> None:
    reference = seeded(registry, layout, "events/filtered", 708)
    assert errors(daemon.pull(reference)) == []
    _tag(daemon, reference, f"{registry.host}/events/filtered", "v2")

    pulls = _replay(daemon, filters='{"event": ["pull"]}')
    tags = _replay(daemon, filters='{"event": {"tag": true}}')  # the docker CLI's form
    by_image = _replay(daemon, filters=json.dumps({"image": [f"{registry.host}/events/filtered"]}))
    containers = _replay(daemon, filters='{"type": ["container"]}')

    assert [e["Action"] for e in pulls] == ["pull"]
    assert [e["Action"] for e in tags] == ["tag"]
    assert [e["Action"] for e in by_image] == ["pull", "tag"]
    assert containers == []


def test_a_live_stream_with_a_filter_sees_only_what_it_matches(
    registry: Registry, daemon: Daemon, layout: Path
) -> None:
    reference = seeded(registry, layout, "events/livefilter", 709)
    stream = _watch(daemon, filters='{"event": ["tag"]}')

    assert errors(daemon.pull(reference)) == []
    _tag(daemon, reference, f"{registry.host}/events/livefilter", "v2")
    [event] = _read(stream, 1)
    stream.close()

    assert event["Action"] == "tag"


def test_until_ahead_follows_live_events_then_ends_then(
    registry: Registry, daemon: Daemon, layout: Path
) -> None:
    reference = seeded(registry, layout, "events/ahead", 710)
    assert errors(daemon.pull(reference)) == []
    ends = time.time() + 2
    stream = _watch(daemon, since=now(), until=f"{ends:.9f}")

    _tag(daemon, reference, f"{registry.host}/events/ahead", "v2")
    [event] = _read(stream, 1)
    rest = stream.read()  # the end of the answer, at `until`
    ended = time.time()

    assert event["Action"] == "tag"
    assert rest == b""
    assert ends <= ended < ends + 10


@pytest.mark.parametrize(
    ("params", "message"),
    [
        ({"filters": '{"colour": ["red"]}'}, "invalid filter 'colour'"),
        ({"filters": "event=pull"}, "invalid filter: 'event=pull' is not JSON"),
        ({"since": "yesterday"}, "invalid since value 'yesterday'"),
        ({"until": "soon"}, "invalid until value 'soon'"),
        (
            {"since": "20", "until": "10"},
            r"`since` time \(20\) cannot be after `until` time \(10\)",
        ),
    ],
)
def test_bad_parameters_are_a_400_naming_them(
    daemon: Daemon, params: dict[str, str], message: str
) -> None:
    with pytest.raises(DaemonError, match=message):
        daemon.client().request("GET", "/events", params)

    [logged] = daemon.logged_requests("/events")
    assert logged["status"] == 400


def test_a_stream_answers_before_there_is_any_event(daemon: Daemon) -> None:
    started = time.monotonic()

    stream = _watch(daemon)  # returns once the status line and headers are in

    assert time.monotonic() - started < 5
    assert stream.status == 200
    assert stream.getheader("Content-Type") == "application/json"
    stream.close()


def test_a_watcher_that_goes_away_is_forgotten(daemon: Daemon) -> None:
    stream = _watch(daemon)
    _wait_for_watchers(daemon, 1)

    stream.close()

    _wait_for_watchers(daemon, 0)


def test_an_open_event_stream_ends_cleanly_when_the_daemon_stops(
    start_daemon: Callable[..., Daemon],
) -> None:
    daemon = start_daemon(shutdown_timeout=60)
    stream = _watch(daemon)
    _wait_for_watchers(daemon, 1)
    started = time.monotonic()

    assert daemon.stop() == 0

    assert time.monotonic() - started < 10  # not the 60 s grace period
    assert stream.read() == b""  # the chunked answer's proper end, not a cut


# -- ferryd events -----------------------------------------------------------------------


def test_ferryd_events_replays_as_json_lines(
    registry: Registry, daemon: Daemon, layout: Path
) -> None:
    reference = seeded(registry, layout, "events/cli", 703)
    assert errors(daemon.pull(reference)) == []
    _tag(daemon, reference, f"{registry.host}/events/cli", "v2")

    done = daemon.ferryd("events", "--json", "--since", "0", "--until", now())

    assert done.returncode == 0, done.stderr
    events = [json.loads(line) for line in done.stdout.splitlines()]
    assert [(e["Action"], e["Actor"]["Attributes"]["name"]) for e in events] == [
        ("pull", f"{registry.host}/events/cli"),
        ("tag", f"{registry.host}/events/cli:v2"),
    ]


def test_ferryd_events_prints_one_line_per_event(
    registry: Registry, daemon: Daemon, layout: Path
) -> None:
    reference = seeded(registry, layout, "events/human", 704)
    assert errors(daemon.pull(reference)) == []
    _tag(daemon, reference, f"{registry.host}/events/human", "v2")

    done = daemon.ferryd("events", "--since", "10m", "--until", "0s", "-f", "event=pull")

    assert done.returncode == 0, done.stderr
    [line] = done.stdout.splitlines()
    assert line.endswith(
        f" image pull {registry.host}/events/human:v1 (name={registry.host}/events/human)"
    )


def test_ferryd_events_follows_until_the_daemon_stops_then_exits_0(
    registry: Registry, daemon: Daemon, layout: Path
) -> None:
    reference = seeded(registry, layout, "events/follow", 711)
    follower = subprocess.Popen(
        [sys.executable, "-m", "ferryd", "-H", daemon.host, "events", "--json"],
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
    )
    try:
        _wait_for_watchers(daemon, 1)
        assert errors(daemon.pull(reference)) == []
        assert daemon.stop() == 0
        out, err = follower.communicate(timeout=30)
    finally:
        if follower.poll() is None:
            follower.send_signal(signal.SIGKILL)
            follower.communicate()

    assert follower.returncode == 0, err
    [event] = [json.loads(line) for line in out.splitlines()]
    assert event["Action"] == "pull"


@pytest.mark.parametrize(
    ("args", "message"),
    [
        (["--since", "yesterday-ish"], "Error: --since 'yesterday-ish': expected Unix seconds"),
        (["--until", "2026-13-45"], "Error: --until '2026-13-45': expected Unix seconds"),
        (["-f", "pull"], "Error: bad filter 'pull': expected KEY=VALUE"),
        (["-f", "colour=red"], "Error response from daemon: invalid filter 'colour'"),
    ],
)
def test_ferryd_events_with_bad_arguments_says_why_and_exits_1(
    daemon: Daemon, args: list[str], message: str
) -> None:
    done = daemon.ferryd("events", *args)

    assert done.returncode == 1
    assert message in done.stderr
    assert "Traceback" not in done.stderr
    assert done.stdout == ""


def test_ferryd_events_takes_rfc_3339_times(
    registry: Registry, daemon: Daemon, layout: Path
) -> None:
    reference = seeded(registry, layout, "events/rfc", 712)
    assert errors(daemon.pull(reference)) == []
    until = datetime.datetime.now(datetime.UTC).isoformat()

    done = daemon.ferryd("events", "--json", "--since", "2000-01-01T00:00:00Z", "--until", until)

    assert done.returncode == 0, done.stderr
    assert [json.loads(line)["Action"] for line in done.stdout.splitlines()] == ["pull"]


def test_ferryd_events_into_a_pipe_that_closes_ends_quietly(
    registry: Registry, daemon: Daemon, layout: Path
) -> None:
    reference = seeded(registry, layout, "events/pipe", 713)
    assert errors(daemon.pull(reference)) == []
    for number in range(400):  # ~130 kB of JSON: more than a pipe holds
        _tag(daemon, reference, f"{registry.host}/events/pipe", f"t{number}")
    until = now()

    done = subprocess.run(
        f"{sys.executable} -m ferryd -H {daemon.host} events --json --since 0 --until {until}"
        " | head -n 1",
        shell=True,
        capture_output=True,
        text=True,
        timeout=60,
    )

    assert json.loads(done.stdout)["Action"] == "pull"
    assert done.stderr == ""  # no traceback for a reader that had enough
