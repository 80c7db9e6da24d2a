"""Removing an image and whatever only it used: layers, then blobs; and the indexes no
reference names any more, with the images only they used. A layer that stays keeps its
first blob, and each other blob of it (another platform's or compression's) while a
stored manifest names it.

Rows go first, in one transaction; blob files after it commits, so a crash between the
two leaves only unreferenced files, never a row that points at a missing blob.

An image is in use while a reference gives it for its name or a stored index lists one
of its manifests. An index is kept while a reference names it (a nested index or an
artifact it lists, while it is kept): the transaction that takes its last name away
forgets it (`forget_unnamed_indexes`), and its children become
images like any other, named or not (`release` deletes those nothing uses, as `rmi`
does; a tag that moves leaves them dangling, as it leaves a single image).
"""

from __future__ import annotations

import contextlib
from collections.abc import Iterable
from dataclasses import dataclass, field

from ferryd.errors import FerrydError
from ferryd.oci.digest import Digest
from ferryd.oci.manifest import decode_manifest
from ferryd.store.layers import Layer
from ferryd.store.refcount import Watch
from ferryd.store.store import Store


@dataclass
class Released:
    """What `release` deleted, and the blobs to delete once its transaction commits."""

    images: list[Digest] = field(default_factory=list)
    layers: list[Digest] = field(default_factory=list)
    indexes: list[Digest] = field(default_factory=list)
    blobs: set[Digest] = field(default_factory=set)


def remove_image(store: Store, image_id: Digest) -> tuple[list[Digest], set[Digest]]:
    """Delete the image's rows (references, manifests, the image) and every layer no
    other image uses and no transfer holds; call inside a transaction.

    Returns the deleted layers' ChainIDs and the blobs nothing references any more:
    pass those to `delete_blobs` once the transaction has committed.
    """
    layers, candidates = _remove_rows(store, image_id)
    return layers, candidates - kept_blobs(store)


def _remove_rows(store: Store, image_id: Digest) -> tuple[list[Digest], set[Digest]]:
    """`remove_image` but for the last step: the blobs its rows used, kept or not."""
    manifests = store.manifests.digests_of(image_id)
    candidates = {image_id, *manifests}
    # Read before the rows go: what else the removal frees of the layers that stay.
    named = _layer_blobs_named(store, manifests)
    store.references.delete_image(image_id)
    store.manifests.delete_image(image_id)
    store.images.delete(image_id)
    unused = _unused_layers(store)
    for layer in unused:
        candidates |= store.layers.delete(layer.chain_id)
    candidates |= _forget_unnamed_blobs(store, named)
    return [layer.chain_id for layer in unused], candidates


def _layer_blobs_named(store: Store, manifests: Iterable[Digest]) -> set[Digest]:
    """The layer blobs the stored `manifests` name; one that cannot be read names none
    (its blob is lost or broken: fsck's to report), and its blobs go with their layers."""
    named: set[Digest] = set()
    for manifest in manifests:
        named |= _layers_of(store, manifest) or set()
    return named


def _layers_of(store: Store, manifest: Digest) -> set[Digest] | None:
    """The layer blobs the stored manifest names; None when it cannot be read."""
    try:
        described = decode_manifest(store.blobs.get(manifest))
    except (FerrydError, OSError):
        return None
    return {Digest(layer.digest) for layer in described.layers}


def _forget_unnamed_blobs(store: Store, named: set[Digest]) -> set[Digest]:
    """Forget the rows that keep one of `named` (blobs the manifests just removed named)
    for a layer that stays, beside its first blob, when no manifest still stored names
    it: another platform's or compression's blob is needed only by the manifests that
    name it (a push or save sends each manifest's own). The blobs forgotten.

    A transfer holding the layer (or one above it) may have found it stored with the
    blob, for a manifest it has yet to commit: such rows stay, as when a stored manifest
    cannot be read to tell what it names; the layer's removal takes them."""
    rows = store.layers.other_blobs(named) if named else []
    if not rows:
        return set()
    layers = {layer.chain_id: layer for layer in store.layers.all()}
    held = _stacks(layers, store.layers.holds.keys())  # a push holds its top layer only
    rows = [row for row in rows if row.chain_id not in held]
    still_named: set[Digest] = set()
    # Only the manifests of images whose stack has one of the layers can name their blobs.
    for manifest in _manifests_over(store, layers, {row.chain_id for row in rows}):
        named_here = _layers_of(store, manifest)
        if named_here is None:
            return set()
        still_named |= named_here
    forgotten: set[Digest] = set()
    for row in rows:
        if row.digest not in still_named:
            store.layers.forget_blob(row.chain_id, row.digest)
            forgotten.add(row.digest)
    return forgotten


def _manifests_over(store: Store, layers: dict[Digest, Layer], chains: set[Digest]) -> list[Digest]:
    """The stored manifests of the images whose stack has one of the layers `chains`."""
    rows = store.db.all("SELECT id, top_layer FROM images WHERE top_layer IS NOT NULL")
    users = [row["id"] for row in rows if _stacks(layers, [row["top_layer"]]) & chains]
    return [manifest for image in users for manifest in store.manifests.digests_of(image)]


def kept_blobs(store: Store) -> set[Digest]:
    """Every blob a row needs: layers' (each of their blobs), configs, manifests,
    indexes, and those the artifacts kept name. One query: inside the caller's
    transaction, or a snapshot (`sweep.referenced_blobs`)."""
    rows = store.db.all(
        "SELECT blob_digest AS digest FROM layers UNION SELECT blob_digest FROM layer_blobs "
        "UNION SELECT id FROM images "
        "UNION SELECT digest FROM manifests UNION SELECT digest FROM indexes "
        "UNION SELECT digest FROM index_entries WHERE kind = 'blob'"
    )
    return {Digest(row["digest"]) for row in rows}


def forget_unnamed_indexes(store: Store) -> dict[Digest, set[Digest]]:
    """Forget every index no reference names (call inside the transaction that changed
    the references): each, with the images its stored children were (an artifact: the
    blobs it names, which no image is). A nested index
    or an artifact an index kept lists stays with it."""
    forgotten: dict[Digest, set[Digest]] = {}
    named = store.references.indexes_named()
    kept = named | store.indexes.listed(named)
    for index in sorted(store.indexes.digests() - kept):
        children = set(store.indexes.stored_children(index).values())
        children |= {e.digest for e in store.indexes.entries(index) if e.kind == "blob"}
        store.indexes.delete(index)
        forgotten[index] = children
    return forgotten


def in_use(store: Store, image_id: Digest) -> bool:
    """A reference gives the image for its name, or a stored index lists its manifest."""
    if store.references.for_image(image_id):
        return True
    return any(store.indexes.containing(digest) for digest in store.manifests.digests_of(image_id))


def index_users(store: Store, image_id: Digest) -> list[Digest]:
    """The stored indexes that list a manifest of the image."""
    return sorted(
        {
            index
            for m in store.manifests.digests_of(image_id)
            for index in store.indexes.containing(m)
        }
    )


def release(store: Store, images: Iterable[Digest]) -> Released:
    """After references were removed (inside their transaction): forget the indexes no
    reference names, then delete each of `images`, and each child of a forgotten index,
    that nothing uses any more, with its layers. Pass `Released.blobs` to
    `delete_blobs` once the transaction has committed."""
    released = Released()
    candidates = list(dict.fromkeys(images))
    for index, children in forget_unnamed_indexes(store).items():
        released.indexes.append(index)
        released.blobs.add(index)
        released.blobs |= children  # an artifact's blobs; an image's ID if it goes
        candidates += sorted(children - set(candidates))
    for image_id in candidates:
        if store.images.record(image_id) is None or in_use(store, image_id):
            continue
        # What the rows used is checked against what stays once, at the end: a scan of
        # every layer, image, manifest and index per image removed bought nothing.
        layers, blobs = _remove_rows(store, image_id)
        released.images.append(image_id)
        released.layers += layers
        released.blobs |= blobs
    released.blobs -= kept_blobs(store)
    return released


def delete_blobs(store: Store, blobs: set[Digest], watch: Watch[Digest] | None = None) -> None:
    """Remove blob files whose rows are gone (after the commit), but those pinned since
    `watch` began (begun before the transaction read the rows: `RefCounter.watching`;
    None: those pinned now): a pull or load that found one of them there, and will
    register a row on it or has, keeps it."""
    if watch is None:
        with store.blobs.pins.watching() as now:
            delete_blobs(store, blobs, now)
        return
    for blob in blobs:
        store.blobs.delete_unless_used(blob, watch)


def _unused_layers(store: Store) -> list[Layer]:
    """Layers that no image's stack reaches and no transfer holds, children first.

    A held layer no image reaches is noted for the last of its holders, who deletes
    what it kept once it lets go (`RefCounter.in_use`, `delete_left`): a pull that held
    an image it found stored, and failed."""
    layers = {layer.chain_id: layer for layer in store.layers.all()}
    used = _stacks(layers, store.images.top_layers())
    held = store.layers.holds.in_use(lambda chain: chain in layers and chain not in used)
    used = _stacks(layers, held, used)
    unused = [layer for chain, layer in layers.items() if chain not in used]
    # The parent column points at the layer below: delete from the top down.
    return sorted(unused, key=lambda layer: -_depth(layers, layer))


def _depth(layers: dict[Digest, Layer], layer: Layer) -> int:
    depth = 0
    while layer.parent is not None and layer.parent in layers:
        depth += 1
        layer = layers[layer.parent]
    return depth


def unpin(store: Store, digests: Iterable[Digest]) -> None:
    """Let go of the pins on `digests`, and delete those of them a removal left because
    they were pinned (`delete_blobs`) that no row has referenced since: what the removal
    would have deleted. Best effort, as `take_back`: what a failing database or disk
    leaves is the sweep's. Blocking (the database, the disk): from a worker thread."""
    digests = list(digests)
    for digest in digests:
        store.blobs.pins.release(digest)
    delete_left(store, digests)


def delete_left(store: Store, pinned: Iterable[Digest], held: Iterable[Digest] = ()) -> None:
    """Once the pins on `pinned` are let go, and the holds on `held` (the layers whose
    last release said a removal left them for it: `RefCounter.release`): delete what a
    removal left because of them that nothing uses now. The blobs of `pinned` it
    deferred that no row references; the layers of `held`, and those under them, that
    no image's stack reaches and no hold keeps, with their blobs no row references.
    What the removal would have deleted. Best effort, as `take_back`: what a failing
    database or disk leaves is the sweep's (and the next removal's). Blocking (the
    database, the disk): from a worker thread.

    Nothing to do (the common case: nothing was removed meanwhile) costs a look at the
    deferred blobs in memory."""
    blobs = store.blobs
    left = blobs.deferred(pinned)
    held = list(held)
    if not left and not held:
        return
    # Let go first, then watched: one who pinned and committed a row between is seen
    # in the rows, one who pinned before and holds on is seen by the watch.
    with (
        contextlib.suppress(FerrydError, OSError),
        store.maintenance,
        blobs.pins.watching() as watch,
    ):
        if held:
            delete_blobs(store, _delete_layers_left(store, held), watch)
        referenced = {digest for digest in left if is_referenced(store, digest)}
        blobs.undefer(referenced)
        for digest in sorted(left - referenced):
            blobs.delete_unless_used(digest, watch)


def _delete_layers_left(store: Store, held: list[Digest]) -> set[Digest]:
    """Delete the layers of `held` and under them that nothing uses (see `delete_left`),
    in one transaction; the blobs of theirs no row references, to delete once it has
    committed."""
    with store.db.transaction():
        unused = _unused_layers(store)
        by_chain = {layer.chain_id: layer for layer in unused}
        going = _stacks(by_chain, held)
        # An unused layer that is not ours (a failed pull's, registered since the
        # removal) keeps what it stands on: the next removal takes them together.
        standing = [layer.parent for layer in unused if layer.chain_id not in going]
        going -= _stacks(by_chain, [chain for chain in standing if chain is not None])
        gone = [layer for layer in unused if layer.chain_id in going]  # children first
        blobs: set[Digest] = set()
        for layer in gone:
            blobs |= store.layers.delete(layer.chain_id)
        return {digest for digest in blobs if not is_referenced(store, digest)}


def _stacks(
    layers: dict[Digest, Layer], tops: Iterable[Digest], found: set[Digest] | None = None
) -> set[Digest]:
    """The layers of `layers` that `tops` are, and those under them there, added to
    `found` (stacks already walked: under a layer found, every layer is, so the walk
    stops there)."""
    found = set() if found is None else found
    for top in tops:
        chain: Digest | None = top
        while chain is not None and chain in layers and chain not in found:
            found.add(chain)
            chain = layers[chain].parent
    return found


def is_referenced(store: Store, digest: Digest) -> bool:
    """Whether a row needs the blob `digest`: one of a layer's, a config, a manifest, an
    index, one a kept artifact names."""
    row = store.db.one(
        "SELECT 1 FROM layers WHERE blob_digest = ? "
        "UNION ALL SELECT 1 FROM layer_blobs WHERE blob_digest = ? "
        "UNION ALL SELECT 1 FROM images WHERE id = ? "
        "UNION ALL SELECT 1 FROM manifests WHERE digest = ? "
        "UNION ALL SELECT 1 FROM indexes WHERE digest = ? "
        "UNION ALL SELECT 1 FROM index_entries WHERE digest = ? AND kind = 'blob' LIMIT 1",
        (digest, digest, digest, digest, digest, digest),
    )
    return row is not None


def take_back(store: Store, added: Iterable[Digest]) -> None:
    """Remove the blobs a failed load or import `added` that no row references, rather
    than leave them to the next sweep: as a removal removes blobs (`delete_unless_used`),
    watching the pins from before the rows are read, so that another load or pull that
    found one of them there and uses it keeps it. Call it once the caller's own pins are
    let go. Best effort: what a failing database cannot tell is left to the sweep."""
    blobs = store.blobs
    with store.maintenance, blobs.pins.watching() as watch:  # sweeps and fsck see it whole
        for digest in added:
            try:
                if is_referenced(store, digest):
                    continue
            except FerrydError:
                return
            with contextlib.suppress(OSError):
                blobs.delete_unless_used(digest, watch)
