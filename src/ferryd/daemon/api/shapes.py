"""The Docker Engine API's JSON shapes for images, filled from the store.

An image named through an index (a multi-platform image) shows the index as API 1.47
and later do: `Descriptor` (the index's) and `Manifests`, one ImageManifestSummary per
entry of the index (`ID`, `Descriptor`, `Available`, `Size` {`Total`, `Content`},
`Kind` image, attestation or unknown, `ImageData` {`Platform`, `Containers`, `Size`
{`Unpacked`}} or `AttestationData` {`For`}).
"""

from __future__ import annotations

from datetime import datetime
from typing import Any

from ferryd.errors import ImageNotFoundError
from ferryd.oci.digest import Digest, chain_ids
from ferryd.oci.image_config import ConfigModel, decode_config, rootfs_of
from ferryd.store import Store
from ferryd.store.indexes import IndexEntry
from ferryd.store.references import Target

_ZERO_TIME = "0001-01-01T00:00:00Z"


def image_summary(
    store: Store,
    image_id: Digest,
    model: ConfigModel,
    *,
    created: float | None,
    size: int,
    tags: list[str],
    digests: list[str],
    index: Digest | None = None,
    manifests: bool = False,
) -> dict[str, Any]:
    """One entry of `GET /images/json`, from what the listing has already read (the
    config, its names as the filters kept them): of an image named through `index`,
    with the index's `Descriptor`, and with `manifests` its `Manifests` (API 1.47)."""
    summary: dict[str, Any] = {
        "Id": image_id,
        "ParentId": "",
        "RepoTags": tags,
        "RepoDigests": digests,
        "Created": int(created or 0),  # no `created` in the config: 0, as dockerd lists it
        "Size": size,
        "SharedSize": -1,
        "VirtualSize": size,
        "Labels": (model.config or {}).get("Labels") or {},
        "Containers": -1,
    }
    summary.update(_index_fields(store, image_id, model, index, manifests))
    return summary


def image_inspect(
    store: Store, named: Target | Digest, *, manifests: bool = False
) -> dict[str, Any]:
    """`GET /images/{name}/json`: of a name of an index, with the index's `Descriptor`
    and `Manifests` (with `manifests`, a single image's stored manifests too)."""
    target = named if isinstance(named, Target) else Target(named)
    image_id = target.image_id
    record = store.images.record(image_id)
    if record is None:  # removed since its name was resolved (an rmi in between)
        raise ImageNotFoundError(f"No such image: {image_id}")
    raw = store.images.get(image_id)
    model = decode_config(raw)
    rootfs = rootfs_of(model)
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
    if model.os_version:  # dockerd's OsVersion: the config's `os.version`, when it has one
        shape["OsVersion"] = model.os_version
    shape.update(
        _index_fields(store, image_id, model, target.index, manifests or bool(target.index))
    )
    return shape


def _index_fields(
    store: Store, image_id: Digest, model: ConfigModel, index: Digest | None, manifests: bool
) -> dict[str, Any]:
    fields: dict[str, Any] = {}
    stored = store.indexes.get(index) if index is not None else None
    if stored is not None:
        fields["Descriptor"] = {
            "mediaType": stored.media_type,
            "digest": stored.digest,
            "size": stored.size,
        }
    if manifests:
        if stored is not None:
            children = store.indexes.stored_children(stored.digest)
            fields["Manifests"] = [
                manifest_summary(store, entry, children.get(entry.digest))
                for entry in stored.entries
            ]
        else:
            fields["Manifests"] = [
                manifest_summary(
                    store, _single_entry(store, manifest.digest, image_id, model), image_id
                )
                for manifest in store.manifests.for_image(image_id)
            ]
    return fields


def manifest_summary(store: Store, entry: IndexEntry, image_id: Digest | None) -> dict[str, Any]:
    """API 1.47's ImageManifestSummary of one entry of an index (`image_id`: the image its
    manifest is stored for, None when it is not): `Available` when the entry's image is
    stored, `Size.Content` the bytes of its manifest, config and (compressed) layers
    held, `ImageData.Size.Unpacked` its layers uncompressed. A nested index or an
    artifact is no image: available when it is kept with all it lists."""
    record = store.images.record(image_id) if image_id is not None else None
    content = unpacked = 0
    model: ConfigModel | None = None
    available = record is not None
    if record is not None:
        config = store.images.get(record.id)
        model = decode_config(config)
        unpacked = record.size
        content = entry.size + len(config) + _layers_size(store, model)
    elif entry.kind in ("index", "unknown") and store.indexes.complete(entry.digest):
        available = True
        blobs = [e.size for e in store.indexes.entries(entry.digest) if e.kind == "blob"]
        content = entry.size + sum(blobs)
    kind = entry.kind if entry.kind in ("image", "attestation") else "unknown"
    summary: dict[str, Any] = {
        "ID": entry.digest,
        "Descriptor": entry.descriptor(),
        "Available": available,
        "Size": {"Total": content + unpacked, "Content": content},
        "Kind": kind,
    }
    if kind == "image":
        summary["ImageData"] = {
            "Platform": _platform(entry, model),
            "Containers": [],
            "Size": {"Unpacked": unpacked},
        }
    elif kind == "attestation":
        summary["AttestationData"] = {"For": entry.attests or ""}
    return summary


def _single_entry(store: Store, digest: Digest, image_id: Digest, model: ConfigModel) -> IndexEntry:
    """A stored manifest of a single-platform image, as an index would list it."""
    stored = store.manifests.get(digest)
    record = store.images.record(image_id)
    if stored is None or record is None:  # removed since its name was resolved
        raise ImageNotFoundError(f"No such image: {image_id}")
    platform = model.platform()
    return IndexEntry(
        0,
        digest,
        stored.media_type,
        len(stored.raw),
        "image",
        record.os,
        record.architecture,
        record.variant,
        platform,
    )


def _layers_size(store: Store, model: ConfigModel) -> int:
    """The layers' (compressed) bytes of a stored image."""
    layers = 0
    for chain in chain_ids(rootfs_of(model).diff_ids):
        layer = store.layers.get(chain)
        layers += layer.compressed_size if layer is not None else 0
    return layers


def _platform(entry: IndexEntry, model: ConfigModel | None) -> dict[str, Any]:
    """An OCI platform as dockerd writes it: the entry's, else the image config's."""
    fields = dict(entry.platform_fields or {})
    if not fields and model is not None:
        fields = model.platform()
    platform: dict[str, Any] = {
        "architecture": fields.get("architecture", ""),
        "os": fields.get("os", ""),
    }
    for name in ("os.version", "os.features", "variant"):
        if fields.get(name):
            platform[name] = fields[name]
    return platform


def _names(store: Store, image_id: Digest) -> tuple[list[str], list[str]]:
    tags: list[str] = []
    digests: list[str] = []
    for reference in store.references.for_image(image_id):
        (digests if reference.digest else tags).append(reference.familiar)
    return tags, digests


def _created(value: str | None) -> float | None:
    """Unix seconds of an RFC 3339 time (a config's or a history step's `created`), or
    None: absent, or no RFC 3339 time. Python 3.11's fromisoformat reads `Z`, offsets
    and the nine fraction digits Go writes (cut to microseconds). A time without a
    zone is not RFC 3339: Go cannot read it, and the host's zone is no answer."""
    if not value:
        return None
    try:
        parsed = datetime.fromisoformat(value)
    except ValueError:
        return None
    return parsed.timestamp() if parsed.tzinfo is not None else None


# Go's zero container.Config (moby v28 api/types/container): what dockerd's graphdriver
# store writes as ContainerConfig of an image built without the classic builder (ferryd
# does not keep a config's legacy `container_config`).
_EMPTY_CONTAINER_CONFIG: dict[str, Any] = {
    "Hostname": "",
    "Domainname": "",
    "User": "",
    "AttachStdin": False,
    "AttachStdout": False,
    "AttachStderr": False,
    "Tty": False,
    "OpenStdin": False,
    "StdinOnce": False,
    "Env": None,
    "Cmd": None,
    "Image": "",
    "Volumes": None,
    "WorkingDir": "",
    "Entrypoint": None,
    "OnBuild": None,
    "Labels": None,
}


def with_legacy_inspect_fields(shape: dict[str, Any], version: tuple[int, int]) -> dict[str, Any]:
    """An inspect `shape` for a client of API `version` below 1.45: dockerd drops
    `Container` and `ContainerConfig` from 1.45 on and `VirtualSize` (= `Size`) from 1.44,
    and older clients (SDKs, `{{.VirtualSize}}` templates) still read them. `Container`
    is written empty, as the dockerd releases of those versions wrote it."""
    legacy = {**shape, "Container": "", "ContainerConfig": dict(_EMPTY_CONTAINER_CONFIG)}
    if version < (1, 44):
        legacy["VirtualSize"] = shape["Size"]
    return legacy
