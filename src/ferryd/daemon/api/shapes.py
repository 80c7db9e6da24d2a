"""The Docker Engine API's JSON shapes for images, filled from the store."""

from __future__ import annotations

from datetime import UTC, datetime
from typing import Any

from ferryd.oci.digest import Digest
from ferryd.oci.image_config import decode_config
from ferryd.store import Store

_ZERO_TIME = "0001-01-01T00:00:00Z"


def image_summary(store: Store, image_id: Digest) -> dict[str, Any]:
    """One entry of `GET /images/json`."""
    record = store.images.record(image_id)
    assert record is not None
    model = decode_config(store.images.get(image_id))
    tags, digests = _names(store, image_id)
    return {
        "Id": image_id,
        "ParentId": "",
        "RepoTags": tags,
        "RepoDigests": digests,
        "Created": int(_created(model.created) or record.created),
        "Size": record.size,
        "SharedSize": -1,
        "VirtualSize": record.size,
        "Labels": (model.config or {}).get("Labels") or {},
        "Containers": -1,
    }


def image_inspect(store: Store, image_id: Digest) -> dict[str, Any]:
    """`GET /images/{name}/json`."""
    record = store.images.record(image_id)
    assert record is not None
    raw = store.images.get(image_id)
    model = decode_config(raw)
    rootfs, _ = store.images.rootfs_and_os(raw)
    tags, digests = _names(store, image_id)
    shape: dict[str, Any] = {
        "Id": image_id,
        "RepoTags": tags,
        "RepoDigests": digests,
        "Parent": "",
        "Comment": "",
        "Created": model.created or _ZERO_TIME,
        "DockerVersion": "",
        "Author": model.author or "",
        "Config": model.config,
        "Architecture": model.architecture,
        "Os": model.os,
        "Size": record.size,
        "GraphDriver": {"Name": "ferryd", "Data": None},
        "RootFS": {"Type": "layers", "Layers": list(rootfs.diff_ids)},
        "Metadata": {"LastTagTime": _ZERO_TIME},
    }
    if model.variant:
        shape["Variant"] = model.variant
    return shape


def _names(store: Store, image_id: Digest) -> tuple[list[str], list[str]]:
    tags: list[str] = []
    digests: list[str] = []
    for reference in store.references.for_image(image_id):
        (digests if reference.digest else tags).append(reference.familiar)
    return tags, digests


def _created(value: str | None) -> float | None:
    if not value:
        return None
    try:
        # Python 3.11 reads at most microseconds; configs often carry nanoseconds.
        head, dot, rest = value.partition(".")
        if dot:
            digits = "".join(c for c in rest if c.isdigit())
            zone = rest[len(digits) :]
            value = f"{head}.{digits[:6]}{zone}"
        return datetime.fromisoformat(value.replace("Z", "+00:00")).astimezone(UTC).timestamp()
    except ValueError:
        return None
