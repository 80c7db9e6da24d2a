"""A fake registry whose answers wait until the test lets them go: a pull that stays
running (its job, its transfer) for as long as a test looks at it."""

from __future__ import annotations

import anyio

from support.fakes import FakeLayer, FakeRegistry, Request, make_layer
from support.served import add_image

REPO = "team/app"


def held(registry: FakeRegistry, method: str, path: str) -> anyio.Event:
    """`method path` waits until the event returned is set (`portal.call(event.set)`,
    from the thread that serves the registry)."""
    release = anyio.Event()

    async def hold(request: Request) -> None:
        await release.wait()

    registry.on(method, path, hold)
    return release


def held_layer(seed: int) -> tuple[FakeRegistry, FakeLayer, anyio.Event]:
    """A registry with `REPO:v1`, one layer of 100 kB, whose download waits for the
    event returned."""
    registry = FakeRegistry()
    layer = make_layer(100_000, seed=seed)
    add_image(registry, "v1", [layer])
    return registry, layer, held(registry, "GET", f"/v2/{REPO}/blobs/{layer.digest}")
