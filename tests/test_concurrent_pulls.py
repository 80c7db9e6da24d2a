"""Many clients pulling overlapping images at once: every blob is fetched once.

The hard moment is a layer whose blob is in the store but not registered yet (it waits
for the layer below it): a pull that starts then must take the stored blob, not fetch
it again.
"""

from __future__ import annotations

import threading
from collections.abc import Callable

import anyio

from support.daemon import Daemon, errors
from support.fakes import FakeLayer, FakeRegistry, Request, make_layer
from support.served import add_image, served
from support.waiting import wait_until

REPO = "team/app"
MiB = 1 << 20


def blob_gets(registry: FakeRegistry, layer: FakeLayer) -> int:
    return len(registry.seen("GET", f"/v2/{REPO}/blobs/{layer.digest}"))


def test_fifty_clients_pulling_three_overlapping_images_fetch_each_blob_and_config_once(
    start_daemon: Callable[..., Daemon],
) -> None:
    base = make_layer(2 * MiB, seed=71)
    tops = {tag: make_layer(300_000, seed=72 + n) for n, tag in enumerate(("x", "y", "z"))}
    registry = FakeRegistry()
    configs = [add_image(registry, tag, [base, top]) for tag, top in tops.items()]
    # The later clients ask by other tags for the same images: a pull of a reference
    # already being pulled would follow that pull and never meet the hard moment.
    for tag, top in tops.items():
        add_image(registry, f"{tag}-again", [base, top])
    release = anyio.Event()

    async def hold_the_base(request: Request) -> None:
        await release.wait()  # then the normal answer, whole

    registry.on("GET", f"/v2/{REPO}/blobs/{base.digest}", hold_the_base)
    daemon = start_daemon(max_concurrent_downloads=8)
    results: list[list[str]] = []

    def pull(tag: str) -> None:
        results.append(errors(daemon.pull(f"{host}/{REPO}:{tag}")))

    with served(registry) as (portal, server):
        host = server.host
        first = [threading.Thread(target=pull, args=(tag,)) for tag in ("x", "y", "z") * 8]
        for thread in first:
            thread.start()
        # The top layers are in the store; they wait for the base to register on it.
        wait_until(lambda: all(blob_gets(registry, top) == 1 for top in tops.values()))
        wait_until(
            lambda: (
                [t["Name"] for t in daemon.client().get_json("/transfers")]
                == [f"{host}/{REPO}@{base.digest}"]
            ),
            what="only the base layer still downloading",
        )
        later = [
            threading.Thread(target=pull, args=(f"{tag}-again",)) for tag in ("x", "y", "z") * 9
        ]
        for thread in later[:-2]:
            thread.start()
        portal.call(release.set)
        for thread in later[-2:]:
            thread.start()
        for thread in first + later:
            thread.join(60)

    assert len(results) == 51
    assert all(result == [] for result in results), results
    for layer in (base, *tops.values()):
        assert blob_gets(registry, layer) == 1
    for config in configs:
        assert len(registry.seen("GET", f"/v2/{REPO}/blobs/{config}")) == 1
    tags = {tag.rpartition(":")[2] for image in daemon.images() for tag in image["RepoTags"]}
    assert tags == {*tops, *(f"{tag}-again" for tag in tops)}
