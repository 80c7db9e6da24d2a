"""`docker image prune`: remove unused images, as dockerd's ImagePrune does (moby
daemon/images/image_prune.go).

ferryd runs no containers, so every image is unused: `dangling_only` (the default)
removes the images without a tag, otherwise every image chosen. Each goes as `rmi`
would take it, name by name (`repo@digest`, or its ID when nothing names it), with
rmi's rules, events and garbage collection; a name that is gone meanwhile, or an
image a pull tagged meanwhile, is skipped, not an error. Every prune ends with a
`prune` event saying the bytes it freed, as dockerd's.
"""

from __future__ import annotations

import threading
from collections.abc import Iterable
from dataclasses import dataclass, field
from typing import Any

from ferryd.distribution.events import ImageEventLogger
from ferryd.distribution.tagging import remove_locked
from ferryd.errors import ImageConflictError, ImageNotFoundError
from ferryd.oci.digest import Digest, hex_of
from ferryd.store import Store
from ferryd.store.sweep import sweep

# One prune at a time, as dockerd (a second one is told so rather than queued).
_running = threading.Lock()


@dataclass
class PruneReport:
    """dockerd's PruneReport: what went (rmi's records), and the bytes of the layers
    removed (their uncompressed size, as dockerd counts it)."""

    deleted: list[dict[str, Any]] = field(default_factory=list)
    reclaimed: int = 0

    def to_json(self) -> dict[str, Any]:
        return {"ImagesDeleted": self.deleted or None, "SpaceReclaimed": self.reclaimed}


def prune(
    store: Store, candidates: Iterable[Digest], *, dangling_only: bool, log: ImageEventLogger
) -> PruneReport:
    """Remove each of `candidates` (chosen by the caller's filters) that is unused: all
    of them, or with `dangling_only` those that no tag names (looked at again here, as
    a pull may have tagged one since)."""
    if not _running.acquire(blocking=False):
        raise ImageConflictError("a prune operation is already running")
    try:
        with store.maintenance:
            store.reserve.keep()
            report = _prune(store, candidates, dangling_only=dangling_only, log=log)
            if report.deleted:
                sweep(store, reason="prune")
            store.reserve.keep()
        log("", "", "prune", reclaimed=report.reclaimed)
        return report
    finally:
        _running.release()


def _prune(
    store: Store, candidates: Iterable[Digest], *, dangling_only: bool, log: ImageEventLogger
) -> PruneReport:
    sizes = {layer.chain_id: layer.size for layer in store.layers.all()}
    report = PruneReport()
    for image_id in candidates:
        references = store.references.for_image(image_id)
        if dangling_only and any(reference.tag is not None for reference in references):
            continue
        # By name, as dockerd: a name another client adds meanwhile keeps the image.
        names = [str(reference) for reference in references] or [hex_of(image_id)]
        for name in names:
            try:
                report.deleted += remove_locked(store, name, force=False, log=log)
            except (ImageNotFoundError, ImageConflictError):
                continue
    report.reclaimed = sum(
        sizes.get(Digest(record["Deleted"]), 0) for record in report.deleted if "Deleted" in record
    )
    return report
