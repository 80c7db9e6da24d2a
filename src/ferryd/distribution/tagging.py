"""Local image operations with docker's rules: tag and remove."""

from __future__ import annotations

from typing import Any

from ferryd.distribution.events import ImageEventLogger
from ferryd.errors import ImageConflictError, ImageNotFoundError
from ferryd.oci.digest import Digest, short_id
from ferryd.oci.reference import Reference, parse_reference
from ferryd.store import Store
from ferryd.store.gc import delete_blobs, remove_image
from ferryd.store.sweep import note_removal, sweep


def tag_image(store: Store, source: str, target: Reference, log: ImageEventLogger) -> None:
    """Point `target` (a tag) at the image `source` names."""
    image_id = store.resolve(source)
    with store.db.transaction():
        store.references.add(target, image_id)
    log(image_id, str(target), "tag")


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
    records: list[dict[str, Any]] = []
    image_id = store.resolve_id(name)
    with store.db.transaction():
        if image_id is None:
            reference = parse_reference(name)
            image_id = store.references.get(reference)
            if image_id is None:
                raise ImageNotFoundError(f"No such image: {name}")
            records += _untag(store, reference, image_id, log)
            if store.references.for_image(image_id):
                return records
        else:
            references = store.references.for_image(image_id)
            if len({r.name for r in references}) > 1 and not force:
                raise ImageConflictError(
                    f"conflict: unable to delete {short_id(image_id)} (must be forced) - "
                    "image is referenced in multiple repositories"
                )
            for reference in references:
                records += _untag(store, reference, image_id, log)
        deleted, blobs = remove_image(store, image_id)
        note_removal(store, blobs)  # a crash before they are gone: the sweep finishes
    delete_blobs(store, blobs)  # only once the rows are gone for good
    log(image_id, name, "delete")
    records.append({"Deleted": image_id})
    records += [{"Deleted": chain} for chain in deleted]
    return records


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
