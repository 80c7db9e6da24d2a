"""Which images `GET /images/json` lists, as dockerd's image service picks them
(moby v27 daemon/images/image_list.go, API 1.47), and the layer sizes they share.

Filters: `dangling` (true: only images without a tag; false: only tagged ones),
`reference` (Go `path.Match` globs on each name's familiar form, `name:tag` or
`name@digest`, then on its familiar repository; only matching names are listed),
`before` and `since` (images created before or after the ones named), `until` (created
before a time: dockerd's timestamps and durations), `label` (`key` or `key=value`,
every one present). Several values of `before`/`until` take the earliest, of `since`
the latest. ferryd has no intermediate images, so `all` changes nothing.

An image whose config has no `created` is listed with `Created` 0; as in dockerd's
graphdriver store (moby v28 image_list.go), `before`, `until` and `since` leave it out,
and naming it in `before` or `since` sets no bound.

A multi-platform image is listed once, as the image its references give (the one for
the default platform); the other platforms of its index are in its `Manifests`
(`manifests=1`), not rows of their own, and are never dangling.
"""

from __future__ import annotations

from collections import Counter
from collections.abc import Iterable
from dataclasses import dataclass
from datetime import datetime
from typing import Any

from ferryd.daemon.api.filters import Filters
from ferryd.daemon.api.pathmatch import BadPatternError, path_match
from ferryd.daemon.api.shapes import _created, image_summary
from ferryd.daemon.api.timestamps import TimestampError, parse_timestamp
from ferryd.errors import FerrydError, InvalidFilterError
from ferryd.oci.digest import Digest, chain_ids
from ferryd.oci.image_config import ConfigModel, decode_config, rootfs_of
from ferryd.oci.reference import Reference
from ferryd.store import Store
from ferryd.store.gc import index_users

LIST_FILTERS = frozenset({"dangling", "label", "before", "since", "reference", "until"})


@dataclass(frozen=True, slots=True)
class StoredImage:
    """What the filters look at for one image."""

    id: Digest
    created: float | None  # the config's `created` (None: it has none)
    model: ConfigModel
    chains: tuple[Digest, ...]  # its layers' ChainIDs, bottom first
    size: int  # as the store records it (the listing's `Size`)
    references: tuple[Reference, ...]
    index: Digest | None = None  # the index its references name (the first, by name)
    # No reference gives it, but an index lists it: a platform of a multi-platform image,
    # shown in that image's Manifests, not as an image of its own (nor a dangling one).
    in_index: bool = False

    @property
    def labels(self) -> dict[str, str]:
        return dict((self.model.config or {}).get("Labels") or {})


def stored_images(store: Store) -> list[StoredImage]:
    """Every image in the store, whatever its OS: one removed while this reads is left
    out. dockerd's own store never holds a Windows image on Linux; ferryd's holds the
    other operating systems' images of an index (containerd's lists them too), and a
    listing that left them out would hide what an `rmi` or a prune must see."""
    images = []
    for image_id in store.images.ids():
        record = store.images.record(image_id)
        if record is None:
            continue
        try:
            model = decode_config(store.images.get(image_id))
            rootfs = rootfs_of(model)
        except FerrydError:
            continue  # removed meanwhile
        targets = store.references.targets_for_image(image_id)
        index = next((target.index for _, target in targets if target.index is not None), None)
        images.append(
            StoredImage(
                image_id,
                _created(model.created),
                model,
                tuple(chain_ids(rootfs.diff_ids)),
                record.size,
                tuple(reference for reference, _ in targets),
                index,
                in_index=not targets and bool(index_users(store, image_id)),
            )
        )
    return images


def created_of(store: Store, name: str) -> float | None:
    """When the image `name` (a reference or ID) was created (None: its config does not
    say); ImageNotFoundError."""
    image_id = store.resolve(name)
    return _created(decode_config(store.images.get(image_id)).created)


def list_images(
    store: Store,
    filters: Filters,
    *,
    shared_size: bool = False,
    manifests: bool = False,
    now: datetime | None = None,
) -> list[dict[str, Any]]:
    """The `GET /images/json` answer for `filters` (already checked for unknown names),
    newest first; `shared_size`: each image's `SharedSize` is counted (-1 otherwise);
    `manifests`: each image's `Manifests` (API 1.47)."""
    dangling_only = filters.boolean("dangling", False)
    patterns = sorted(filters.get("reference"))
    for pattern in patterns:
        _check_pattern(pattern)
    named_before = [created_of(store, name) for name in filters.get("before")]
    before = min(
        [
            *(created for created in named_before if created is not None),
            *(until(value, now) for value in filters.get("until")),
        ],
        default=None,
    )
    named_since = [created_of(store, name) for name in filters.get("since")]
    since = max((created for created in named_since if created is not None), default=None)
    everything = stored_images(store)
    shared = shared_sizes(store, everything) if shared_size else {}
    listed: list[tuple[float, dict[str, Any]]] = []
    for image in everything:
        if image.in_index:
            continue
        if before is not None and (image.created is None or not image.created < before):
            continue
        if since is not None and (image.created is None or not image.created > since):
            continue
        if "label" in filters and (
            image.model.config is None or not filters.match_labels("label", image.labels)
        ):
            continue
        tags: list[str] = []
        digests: list[str] = []
        for reference in image.references:
            if "reference" in filters and not any(_familiar_match(p, reference) for p in patterns):
                continue
            (digests if reference.digest is not None else tags).append(reference.familiar)
        if not tags and not digests:
            if ("dangling" in filters and not dangling_only) or "reference" in filters:
                continue
        elif dangling_only and tags:
            continue
        # The config and names stored_images read: not read again for the summary.
        summary = image_summary(
            store,
            image.id,
            image.model,
            created=image.created,
            size=image.size,
            tags=tags,
            digests=digests,
            index=image.index,
            manifests=manifests,
        )
        if shared_size:
            summary["SharedSize"] = shared.get(image.id, 0)
        listed.append((image.created or 0.0, summary))  # none: 0, as listed
    listed.sort(key=lambda entry: entry[0], reverse=True)
    return [summary for _, summary in listed]


def until(value: str, now: datetime | None = None) -> float:
    """An `until` filter value as Unix seconds; InvalidFilterError as dockerd words it."""
    try:
        return parse_timestamp(value, now or datetime.now().astimezone()).timestamp()
    except TimestampError as exc:
        raise InvalidFilterError(f"invalid value for 'until' filter: {exc}") from None


def shared_sizes(store: Store, images: Iterable[StoredImage]) -> dict[Digest, int]:
    """Per image, the bytes of its layers that another image uses too (dockerd's
    SharedSize: by ChainID, uncompressed)."""
    images = list(images)
    sizes = layer_sizes(store)
    users = Counter(chain for image in images for chain in set(image.chains))
    return {
        image.id: sum(sizes.get(chain, 0) for chain in image.chains if users[chain] > 1)
        for image in images
    }


def layer_sizes(store: Store) -> dict[Digest, int]:
    """Every stored layer's own uncompressed size, by ChainID."""
    return {layer.chain_id: layer.size for layer in store.layers.all()}


def _familiar_match(pattern: str, reference: Reference) -> bool:
    """distribution/reference's FamiliarMatch: `alpine:3.20` (or `alpine@sha256:…`),
    then `alpine`."""
    return path_match(pattern, reference.familiar) or path_match(pattern, reference.familiar_name)


def _check_pattern(pattern: str) -> None:
    try:
        path_match(pattern, "")
    except BadPatternError as exc:
        raise InvalidFilterError(f"invalid filter 'reference={pattern}': {exc}") from None
