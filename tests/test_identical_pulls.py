"""Identical pulls asked for at once: one runs, the others follow it (its progress, its
result), and a follower whose pull fails or is cancelled runs a pull of its own."""

from __future__ import annotations

import base64
import json
import shutil
import subprocess
import threading
from collections.abc import Callable
from pathlib import Path
from typing import Any

import anyio
import anyio.lowlevel
import pytest

from ferryd.distribution.inflight import InFlightPulls
from ferryd.distribution.jobs import Job
from ferryd.distribution.progress import Message, ProgressOutput
from support.daemon import Daemon, errors
from support.docker_cli import docker
from support.served import served
from support.slow_pulls import REPO, held_layer
from support.waiting import wait_until

CLIENTS = 8


class Lines:
    def __init__(self) -> None:
        self.messages: list[Message] = []

    def write(self, message: Message) -> None:
        self.messages.append(message)


def new_job() -> tuple[Job, Lines]:
    lines = Lines()
    return Job("pull", "example.com/app:v1", lines), lines


def test_a_late_follower_sees_the_latest_line_of_each_layer_then_every_new_one() -> None:
    async def main() -> tuple[list[Message], str]:
        pulls = InFlightPulls()
        go_on = anyio.Event()
        follower, seen = new_job()

        async def leader(output: ProgressOutput) -> str:
            output.write(Message("Pulling from app", "v1", update=False))
            output.write(Message("Pulling fs layer", "aaa"))
            output.write(Message("Downloading", "aaa", current=1, total=4))
            output.write(Message("Downloading", "aaa", current=2, total=4))
            await go_on.wait()
            output.write(Message("Pull complete", "aaa"))
            output.write(Message("Status: Downloaded newer image for app:v1"))
            return "the image"

        result = ""

        async def follow() -> None:
            nonlocal result
            result = await pulls.run("key", follower, unexpected)

        async with anyio.create_task_group() as tg:
            tg.start_soon(pulls.run, "key", new_job()[0], leader)
            await anyio.wait_all_tasks_blocked()
            tg.start_soon(follow)
            await anyio.wait_all_tasks_blocked()
            assert follower.phase == "following"
            go_on.set()
        return seen.messages, result

    messages, result = anyio.run(main)
    assert result == "the image"
    assert [(m.status, m.id, m.current) for m in messages] == [
        ("Pulling from app", "v1", None),
        ("Downloading", "aaa", 2),  # the latest line of the layer, not its history
        ("Pull complete", "aaa", None),
        ("Status: Downloaded newer image for app:v1", None, None),
    ]


async def unexpected(output: ProgressOutput) -> str:
    raise AssertionError("a follower ran a pull of its own")


def test_followers_of_a_pull_that_fails_run_one_pull_of_their_own_and_follow_it() -> None:
    async def main() -> list[str]:
        pulls = InFlightPulls()
        go_on = anyio.Event()
        ran: list[str] = []
        results: list[str] = []

        async def failing(output: ProgressOutput) -> str:
            ran.append("failing")
            await go_on.wait()
            raise RuntimeError("the registry refused")

        async def working(output: ProgressOutput) -> str:
            ran.append("working")
            await anyio.lowlevel.checkpoint()
            return "the image"

        async def follower() -> None:
            results.append(await pulls.run("key", new_job()[0], working))

        async def leader() -> None:
            with pytest.raises(RuntimeError, match="refused"):
                await pulls.run("key", new_job()[0], failing)

        async with anyio.create_task_group() as tg:
            tg.start_soon(leader)
            await anyio.wait_all_tasks_blocked()
            for _ in range(3):
                tg.start_soon(follower)
            await anyio.wait_all_tasks_blocked()
            go_on.set()
        assert results == ["the image"] * 3
        return ran

    assert anyio.run(main) == ["failing", "working"]


def test_a_follower_cancelled_leaves_the_pull_it_follows_running() -> None:
    follower, seen = new_job()

    async def main() -> str:
        pulls = InFlightPulls()
        go_on = anyio.Event()
        result = ""

        async def leader(output: ProgressOutput) -> str:
            await go_on.wait()
            output.write(Message("Pull complete", "aaa"))
            return "the image"

        async def lead() -> None:
            nonlocal result
            result = await pulls.run("key", new_job()[0], leader)

        async with anyio.create_task_group() as tg:
            tg.start_soon(lead)
            await anyio.wait_all_tasks_blocked()
            with anyio.move_on_after(0.01):
                await pulls.run("key", follower, unexpected)
            go_on.set()  # the leader writes to its followers: none is left
        return result

    assert anyio.run(main) == "the image"
    assert seen.messages == []  # the line written after it left did not reach it


# -- through the daemon -----------------------------------------------------------------


def pull_with_id(daemon: Daemon, reference: str, request_id: str) -> list[dict[str, Any]]:
    with (
        daemon.http(timeout=60) as client,
        client.stream(
            "POST",
            "/images/create",
            params={"fromImage": reference},
            headers={"X-Request-ID": request_id},
        ) as response,
    ):
        return [json.loads(line) for line in response.iter_lines() if line.strip()]


def jobs(daemon: Daemon) -> list[dict[str, Any]]:
    return daemon.client().get_json("/jobs")  # type: ignore[no-any-return]


def test_clients_pulling_one_image_at_once_share_one_pull_and_its_progress(
    start_daemon: Callable[..., Daemon],
) -> None:
    registry, layer, release = held_layer(seed=811)
    daemon = start_daemon()
    results: dict[str, list[dict[str, Any]]] = {}
    with served(registry) as (portal, server):
        reference = f"{server.host}/{REPO}:v1"

        def pull(rid: str) -> None:
            results[rid] = pull_with_id(daemon, reference, rid)

        threads = [threading.Thread(target=pull, args=(f"client-{n}",)) for n in range(CLIENTS)]
        threads[0].start()
        wait_until(lambda: daemon.client().get_json("/transfers"), what="the layer held")
        for thread in threads[1:]:
            thread.start()
        wait_until(
            lambda: (
                sorted(job["Phase"] for job in jobs(daemon))
                == ["following"] * (CLIENTS - 1) + ["layers"]
            ),
            what="seven pulls following the first",
        )
        portal.call(release.set)
        for thread in threads:
            thread.join(60)

    assert len(registry.seen("GET", f"/v2/{REPO}/manifests/v1")) == 1
    assert len(registry.seen("GET", f"/v2/{REPO}/blobs/{layer.digest}")) == 1
    short = layer.digest.removeprefix("sha256:")[:12]
    for messages in results.values():
        assert errors(messages) == []
        assert messages[-1]["status"] == f"Status: Downloaded newer image for {reference}"
        assert {"status": "Pull complete", "progressDetail": {}, "id": short} in messages
    following = daemon.log_events("pull.following")
    assert sorted(line["request_id"] for line in following) == [
        f"client-{n}" for n in range(1, CLIENTS)
    ]
    assert {line["following_request"] for line in following} == {"client-0"}
    assert len(daemon.log_events("image.pull")) == 1


def test_pulls_with_different_logins_do_not_follow_each_other(
    start_daemon: Callable[..., Daemon],
) -> None:
    registry, _, release = held_layer(seed=812)
    daemon = start_daemon()

    def login(user: str) -> str:
        auth = {"username": user, "password": "secret", "serveraddress": server.host}
        return base64.urlsafe_b64encode(json.dumps(auth).encode()).decode()

    results: list[list[str]] = []
    with served(registry) as (portal, server):
        reference = f"{server.host}/{REPO}:v1"
        threads = [
            threading.Thread(
                target=lambda u=user: results.append(errors(daemon.pull(reference, auth=login(u))))
            )
            for user in ("alice", "bob")
        ]
        for thread in threads:
            thread.start()
        # Both wait on the layer's one transfer: neither follows the other's pull.
        wait_until(lambda: [t["Watchers"] for t in daemon.client().get_json("/transfers")] == [2])
        assert daemon.log_events("pull.following") == []
        portal.call(release.set)
        for thread in threads:
            thread.join(60)

    assert results == [[], []]
    assert len(registry.seen("GET", f"/v2/{REPO}/manifests/v1")) == 2


def test_a_follower_pulls_on_its_own_when_the_client_it_followed_hangs_up(
    start_daemon: Callable[..., Daemon],
) -> None:
    registry, _, release = held_layer(seed=813)
    daemon = start_daemon()
    results: list[list[dict[str, Any]]] = []
    with served(registry) as (portal, server):
        reference = f"{server.host}/{REPO}:v1"
        with (
            daemon.http() as first,
            first.stream("POST", "/images/create", params={"fromImage": reference}),
        ):
            wait_until(lambda: daemon.client().get_json("/transfers"), what="the layer held")
            follower = threading.Thread(target=lambda: results.append(daemon.pull(reference)))
            follower.start()
            wait_until(lambda: daemon.log_events("pull.following"), what="the follower")
        # The first client hung up: its pull is cancelled, the follower's goes on.
        wait_until(lambda: daemon.log_events("image.pull_failed"), what="the first pull's end")
        portal.call(release.set)
        follower.join(60)

    [messages] = results
    assert errors(messages) == []
    assert messages[-1]["status"] == f"Status: Downloaded newer image for {reference}"
    assert len(registry.seen("GET", f"/v2/{REPO}/manifests/v1")) == 2


@pytest.mark.docker_cli
@pytest.mark.skipif(shutil.which("docker") is None, reason="docker CLI not installed")
def test_docker_pulls_of_one_image_at_once_both_end_with_the_image(
    start_daemon: Callable[..., Daemon], docker_config: Path
) -> None:
    registry, layer, release = held_layer(seed=814)
    daemon = start_daemon()
    done: list[subprocess.CompletedProcess[str]] = []
    with served(registry) as (portal, server):
        reference = f"{server.host}/{REPO}:v1"

        def pull() -> None:
            done.append(docker(daemon, "pull", reference, config=docker_config, check=False))

        first, second = threading.Thread(target=pull), threading.Thread(target=pull)
        first.start()
        wait_until(lambda: daemon.client().get_json("/transfers"), what="the layer held")
        second.start()
        wait_until(lambda: "following" in [job["Phase"] for job in jobs(daemon)])
        portal.call(release.set)
        first.join(60)
        second.join(60)

    short = layer.digest.removeprefix("sha256:")[:12]
    for result in done:
        assert result.returncode == 0, result.stderr
        assert f"{short}: Pull complete" in result.stdout
        assert f"Status: Downloaded newer image for {reference}" in result.stdout
    assert len(done) == 2
