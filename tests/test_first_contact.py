"""A registry that no endpoint of answers the first request made to it is unreachable
at once, as dockerd's failed ping is: a push there ends without retrying each layer (it
took 50 s with the default retry delay), and a retry that has no progress line of its
own says so once, not once a second.
"""

from __future__ import annotations

from collections.abc import Callable
from pathlib import Path

import anyio
import pytest

from ferryd.distribution.progress import Message
from ferryd.distribution.transfers import RetryPolicy, with_retries
from ferryd.errors import RegistryUnreachableError
from support.daemon import Daemon, errors
from support.images import LayerSpec, build_image, seed
from support.registry import Registry, free_port


@pytest.mark.registry
def test_a_push_to_a_registry_nothing_answers_on_fails_at_once_without_retries(
    registry: Registry, start_daemon: Callable[..., Daemon], layout: Path
) -> None:
    build_image(layout, layers=[LayerSpec(size=3000, seed=s) for s in (7101, 7102)])
    seed(registry, layout, "latest", "first/contact:v1")
    daemon = start_daemon()
    assert errors(daemon.pull(f"{registry.host}/first/contact:v1")) == []
    target = f"127.0.0.1:{free_port()}/first/contact"
    client = daemon.client()
    source = f"{registry.host}/first/contact:v1"
    client.request("POST", f"/images/{source}/tag", {"repo": target, "tag": "v1"}).read()

    pushed = list(client.stream("POST", f"/images/{target}/push", {"tag": "v1"}))

    [error] = errors(pushed)
    assert f"cannot reach http://{target.split('/')[0]}" in error
    assert [m for m in pushed if m.get("status", "").startswith("Retrying")] == []
    assert daemon.log_events("transfer.retry") == []


class Recorder:
    def __init__(self) -> None:
        self.messages: list[Message] = []

    def write(self, message: Message) -> None:
        self.messages.append(message)


async def retried_once(progress_id: str | None) -> list[tuple[str, str | None]]:
    """The messages of an attempt that fails once, then succeeds, 1.5 s apart."""
    progress = Recorder()
    tries = 0

    async def attempt() -> None:
        nonlocal tries
        tries += 1
        if tries == 1:
            raise RegistryUnreachableError("cannot reach the registry")

    with anyio.fail_after(10):
        await with_retries(
            attempt,
            policy=RetryPolicy(attempts=2, delay=1.5),
            progress=progress,
            progress_id=progress_id,
            name="blob",
        )
    return [(m.status, m.id) for m in progress.messages]


async def test_a_retry_without_a_progress_line_says_so_once() -> None:
    assert await retried_once(None) == [("Retrying in 2 seconds", None)]


async def test_a_retry_with_a_progress_line_counts_down_on_it() -> None:
    assert await retried_once("abc") == [
        ("Retrying in 2 seconds", "abc"),
        ("Retrying in 1 second", "abc"),
    ]
