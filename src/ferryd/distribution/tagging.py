"""Local image operations with docker's rules: tag and remove.

A name that names an index (a multi-platform image) is tagged as the index: the new tag
names the index too, and a push of it pushes every platform. Removing the last name of
an index removes the index and every platform image of it that nothing else uses.
"""

from __future__ import annotations

from typing import Any

from ferryd.distribution.events import ImageEventLogger
from ferryd.errors import ImageConflictError, ImageNotFoundError
from ferryd.oci.digest import Digest, short_id
from ferryd.oci.platform import Platform, host_platform, normalize
from ferryd.oci.reference import Reference
from ferryd.store import Store
from ferryd.store.gc import (
    Released,
    delete_blobs,
    forget_unnamed_indexes,
    index_users,
    release,
    remove_image,
)
from ferryd.store.indexes import IndexEntry, default_child
from ferryd.store.refcount import Watch
from ferryd.store.sweep import note_removal, sweep


def tag_image(store: Store, source: str, target: Reference, log: ImageEventLogger) -> None:
    """Point `target` (a tag) at the image `source` names."""
    named = store.resolve_target(source)
    with store.db.transaction():
        store.references.point(target, named)
        forget_unnamed_indexes(store)  # `target` may have been an index's last name
    log(named.image_id, str(target), "tag")


def remove(store: Store, name: str, *, force: bool, log: ImageEventLogger) -> list[dict[str, Any]]:
    """`docker rmi`: untag a reference, and delete the image once nothing names it.

    By ID, an image tagged in several repositories needs `force` (then every
    reference goes). The answer lists what happened as docker's `Untagged`/`Deleted`.
    """
    with store.maintenance:  # a sweep or fsck sees the removal whole, or not at all
        # On a full disk the database needs room to delete: give it the reserve.
        store.reserve.keep()
        records = remove_locked(store, name, force=force, log=log)
        sweep(store, reason="rmi")  # and whatever a crash or a failed pull left
        store.reserve.keep()
    return records


def remove_locked(
    store: Store, name: str, *, force: bool, log: ImageEventLogger
) -> list[dict[str, Any]]:
    """`remove` without its lock and sweep: for callers that hold `store.maintenance`
    and sweep once after several removals (prune)."""
    # Blobs pinned from before the rows are read until they are deleted stay: a pull or
    # load that found one there uses it (`delete_blobs`).
    with store.blobs.pins.watching() as watch:
        return _remove(store, name, force=force, log=log, watch=watch)


def _remove(
    store: Store, name: str, *, force: bool, log: ImageEventLogger, watch: Watch[Digest]
) -> list[dict[str, Any]]:
    records: list[dict[str, Any]] = []
    image_id = store.resolve_id(name)
    with store.db.transaction():
        if image_id is not None:
            released = _remove_by_id(store, image_id, force=force, log=log, records=records)
        else:
            target = store.index_by_id(name)
            if target is not None:
                assert target.index is not None
                references = store.references.naming_index(target.index)
                _check_repositories(references, target.index, force)
                for named in references:
                    records += _untag(store, named, target.image_id, log)
            else:
                reference = store.as_reference(name)
                target = store.references.target(reference)
                if target is None:
                    raise ImageNotFoundError(f"No such image: {name}")
                records += _untag(store, reference, target.image_id, log)
            released = release(store, [target.image_id])
        if not released.images and not released.indexes:
            return records
        note_removal(store, released.blobs)  # a crash before they are gone: the sweep finishes
    delete_blobs(store, released.blobs, watch)  # only once the rows are gone for good
    for deleted in released.images:
        log(deleted, name, "delete")
    records += [{"Deleted": index} for index in released.indexes]
    records += [{"Deleted": deleted} for deleted in released.images]
    records += [{"Deleted": chain} for chain in released.layers]
    return records


def _remove_by_id(
    store: Store,
    image_id: Digest,
    *,
    force: bool,
    log: ImageEventLogger,
    records: list[dict[str, Any]],
) -> Released:
    """`rmi ID`: every reference to the image goes (several repositories need `force`),
    then the image.

    An ID names one platform's image, so a platform image of a named index needs
    `force` and then goes alone: the index lacks that platform. So too the one whose ID
    `images` shows for the index (its names give that image): taking the index and
    every platform with it would delete far more than the ID names. The index's names
    then give another stored platform, or go with the index when none is left. The
    index's digest removes the whole image."""
    users = index_users(store, image_id)
    if not users:
        references = store.references.for_image(image_id)
        _check_repositories(references, image_id, force)
        for reference in references:
            records += _untag(store, reference, image_id, log)
        return release(store, [image_id])
    if not force:
        named = store.references.naming_index(users[0])
        raise ImageConflictError(
            f"conflict: unable to delete {short_id(image_id)} (must be forced) - image is "
            f"a platform of the index {users[0]}"
            + (f" ({', '.join(r.familiar for r in named)})" if named else "")
            + ": rmi the index's digest to remove every platform, or force to remove "
            "this platform alone"
        )
    for reference, target in store.references.targets_for_image(image_id):
        if target.index is None:
            records += _untag(store, reference, image_id, log)
    for index in users:
        records += _hand_over(store, index, image_id, log)
    layers, blobs = remove_image(store, image_id)
    released = release(store, [])
    released.images.insert(0, image_id)
    released.layers[:0] = layers
    released.blobs |= blobs
    return released


def _hand_over(
    store: Store, index: Digest, image_id: Digest, log: ImageEventLogger
) -> list[dict[str, Any]]:
    """Before the platform image `image_id` of `index` goes: when the index's names give
    it, make them give the stored platform that fits the removed one best, or untag them
    when no other platform is stored (the index then goes as unnamed)."""
    names = [r for r in store.references.naming_index(index) if store.references.get(r) == image_id]
    if not names:
        return []
    entries = store.indexes.entries(index)
    children = store.indexes.stored_children(index)
    others = {manifest: image for manifest, image in children.items() if image != image_id}
    # The names gave the removed image as the daemon's default platform's (or as the
    # first stored): rmi is not told that default, and the removed platform is the
    # closest stand-in for it.
    successor = default_child(entries, others, _platform_of(store, entries, children, image_id))
    if successor is not None:
        store.references.repoint_index(index, successor)
        return []
    records: list[dict[str, Any]] = []
    for reference in names:
        records += _untag(store, reference, image_id, log)
    return records


def _platform_of(
    store: Store, entries: list[IndexEntry], children: dict[Digest, Digest], image_id: Digest
) -> Platform:
    """The platform of `image_id` in an index: its entry's, else its config's."""
    for entry in entries:
        if children.get(entry.digest) == image_id and entry.platform is not None:
            return entry.platform
    record = store.images.record(image_id)
    if record is None:
        return host_platform()
    return normalize(record.os, record.architecture, record.variant)


def _check_repositories(references: list[Reference], subject: Digest, force: bool) -> None:
    if len({r.name for r in references}) > 1 and not force:
        raise ImageConflictError(
            f"conflict: unable to delete {short_id(subject)} (must be forced) - "
            "image is referenced in multiple repositories"
        )


def _untag(
    store: Store, reference: Reference, image_id: Digest, log: ImageEventLogger
) -> list[dict[str, Any]]:
    """Remove one reference; a removed tag takes its repository's digest references
    with it when no other tag of that repository names the image (as docker does)."""
    if not store.references.delete(reference):
        return []
    records = [{"Untagged": reference.familiar}]
    log(image_id, str(reference), "untag")
    if reference.digest is not None:
        return records
    remaining = [r for r in store.references.for_image(image_id) if r.name == reference.name]
    if any(r.digest is None for r in remaining):
        return records
    for other in remaining:
        store.references.delete(other)
        records.append({"Untagged": other.familiar})
    return records
