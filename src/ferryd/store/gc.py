"""Removing an image and whatever only it used: layers, then blobs.

Rows go first, in one transaction; blob files after it commits, so a crash between the
two leaves only unreferenced files, never a row that points at a missing blob.
"""

from __future__ import annotations

from ferryd.oci.digest import Digest
from ferryd.store.layers import Layer
from ferryd.store.store import Store


def remove_image(store: Store, image_id: Digest) -> tuple[list[Digest], set[Digest]]:
    """Delete the image's rows (references, manifests, the image) and every layer no
    other image uses and no transfer holds; call inside a transaction.

    Returns the deleted layers' ChainIDs and the blobs nothing references any more:
    pass those to `delete_blobs` once the transaction has committed.
    """
    candidates = {image_id, *store.manifests.digests_of(image_id)}
    store.references.delete_image(image_id)
    store.manifests.delete_image(image_id)
    store.images.delete(image_id)
    unused = _unused_layers(store)
    for layer in unused:
        store.layers.delete(layer.chain_id)
        candidates.add(layer.blob_digest)
    kept = {layer.blob_digest for layer in store.layers.all()}
    kept |= set(store.images.ids())
    kept |= store.manifests.digests()
    return [layer.chain_id for layer in unused], candidates - kept


def delete_blobs(store: Store, blobs: set[Digest]) -> None:
    """Remove blob files whose rows are gone (after the commit)."""
    for blob in blobs:
        if blob not in store.blobs.pins:  # a pull is about to register a layer on it
            store.blobs.delete(blob)


def _unused_layers(store: Store) -> list[Layer]:
    """Layers that no image's stack reaches and no transfer holds, children first."""
    layers = {layer.chain_id: layer for layer in store.layers.all()}
    used: set[Digest] = set()
    for start in [*store.images.top_layers(), *store.layers.holds.keys()]:
        chain: Digest | None = start
        while chain is not None and chain not in used and chain in layers:
            used.add(chain)
            chain = layers[chain].parent
    unused = [layer for chain, layer in layers.items() if chain not in used]
    # The parent column points at the layer below: delete from the top down.
    return sorted(unused, key=lambda layer: -_depth(layers, layer))


def _depth(layers: dict[Digest, Layer], layer: Layer) -> int:
    depth = 0
    while layer.parent is not None and layer.parent in layers:
        depth += 1
        layer = layers[layer.parent]
    return depth
