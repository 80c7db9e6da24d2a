"""Fake registries for tests that drive the real daemon (another process): each is
served from a thread of its own, and can hold images built from fake layers."""

from __future__ import annotations

import json
from collections.abc import Iterator
from contextlib import contextmanager

from anyio.from_thread import BlockingPortal, start_blocking_portal

from ferryd.oci.mediatypes import OCI_CONFIG, OCI_LAYER_GZIP, OCI_MANIFEST
from support.fakes import FakeLayer, FakeRegistry, FakeServer, serve_registry


@contextmanager
def served(registry: FakeRegistry) -> Iterator[tuple[BlockingPortal, FakeServer]]:
    """`registry` on loopback until the block ends; the portal runs code on its loop
    (to set an event a responder waits on, say)."""
    with (
        start_blocking_portal() as portal,
        portal.wrap_async_context_manager(serve_registry(registry)) as server,
    ):
        yield portal, server


def add_image(registry: FakeRegistry, tag: str, layers: list[FakeLayer]) -> str:
    """An OCI image of `layers` (linux/amd64) tagged `tag`; returns its config digest."""
    config = json.dumps(
        {
            "architecture": "amd64",
            "os": "linux",
            "rootfs": {"type": "layers", "diff_ids": [layer.diff_id for layer in layers]},
        }
    ).encode()
    config_digest = registry.add_blob(config)
    manifest = {
        "schemaVersion": 2,
        "mediaType": OCI_MANIFEST,
        "config": {"mediaType": OCI_CONFIG, "digest": config_digest, "size": len(config)},
        "layers": [
            {"mediaType": OCI_LAYER_GZIP, "digest": layer.digest, "size": layer.size}
            for layer in layers
        ],
    }
    for layer in layers:
        registry.add_blob(layer.blob)
    registry.add_manifest(json.dumps(manifest).encode(), OCI_MANIFEST, tag)
    return config_digest
