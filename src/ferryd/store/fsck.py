"""`ferryd fsck`: check the store, and repair it.

What is checked:

- every blob a row needs hashes to its name (read in 1 MiB pieces, never held whole);
- every layer's blob is there and right, its parent is there, and its ChainID is the
  one its parent's ChainID and its DiffID give, all the way down; so is every other
  blob kept for a layer (another compression a manifest names);
- every image's config blob is there, right and readable, and its top layer is the
  ChainID of the config's DiffIDs, with the layers below it holding exactly those;
- every kept manifest's blob is there and right, and one an index lists names its
  image's config and, for each of its layers, a blob kept for that layer (a push and a
  save send a platform of an index with the blobs its manifest names);
- every kept index's blob is there and right, its entries are the blob's, a stored
  child (a kept manifest an entry names) is an image of the entry's platform, and a
  reference names it or a kept index lists it (an index nothing names is left over:
  its rows are orphans); an artifact an index lists (kept as an index row of its
  manifest's media type) names exactly the blobs kept for it, each there and right;
- every reference names an image that is there, and a reference to an index names one
  that is there and one of its stored children as its image;
- nothing is left over: blob files no row references, `.tmp-*` files, partial
  downloads whose blob is stored already, files that are none of ferryd's.

Layers no image uses are not a problem: they are a cache that the next pull of an
image standing on them reuses. Their number is reported as information.

`repair` removes what is broken and what nothing references, nothing else: a broken
blob together with the layers, images, manifests and references that need it, the rows
in one transaction and the files once it has committed. A broken index is forgotten and
the references that named it keep naming their image (without the index); an orphaned
index's rows go. What a running transfer uses
(a pinned blob, a held layer and the layers below it) is reported and kept.

The daemon runs the same check (`POST /fsck`) with the store it has open; checks,
sweeps and removals take turns on `Store.maintenance`.
"""

from __future__ import annotations

import time
from collections.abc import Iterable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from ferryd.blobfile import read_pieces
from ferryd.errors import FerrydError
from ferryd.oci.digest import Digest, chain_id, chain_ids, new_hasher
from ferryd.oci.image_config import decode_config
from ferryd.oci.manifest import artifact_blobs, decode_index, decode_manifest
from ferryd.oci.mediatypes import INDEX_TYPES
from ferryd.oci.platform import normalize
from ferryd.oci.reference import parse_reference
from ferryd.store.gc import forget_unnamed_indexes
from ferryd.store.images import ImageRecord
from ferryd.store.indexes import StoredIndex
from ferryd.store.layers import Layer, LayerBlob
from ferryd.store.refcount import Watch
from ferryd.store.store import Store
from ferryd.store.sweep import Inventory, Leftovers, leftovers, referenced_blobs, scan

READ_SIZE = 1 << 20

# What a problem is about; `Problem.kind` is one of these.
CORRUPT_BLOB = "corrupt-blob"
MISSING_BLOB = "missing-blob"
BROKEN_LAYER = "broken-layer"
# A layer_blobs row whose layer is not in the store, or that records for one layer a
# blob stored as another layer's (of another DiffID), or a layer's first blob without
# its row.
ORPHAN_LAYER_BLOB = "orphan-layer-blob"
WRONG_LAYER_BLOB = "wrong-layer-blob"
MISSING_LAYER_BLOB = "missing-layer-blob"
BROKEN_IMAGE = "broken-image"
BROKEN_MANIFEST = "broken-manifest"
BROKEN_INDEX = "broken-index"
ORPHAN_INDEX = "orphan-index"
DANGLING_REFERENCE = "dangling-reference"
ORPHAN_BLOB = "orphan-blob"
TEMP_FILE = "temp-file"
STORED_PARTIAL = "stored-partial"
STRAY_FILE = "stray-file"


@dataclass(frozen=True, slots=True)
class Problem:
    kind: str
    subject: str  # a digest, ChainID, image ID, reference or path
    message: str  # one line for the operator, naming the subject

    def to_json(self) -> dict[str, str]:
        return {"Kind": self.kind, "Subject": self.subject, "Message": self.message}


@dataclass(frozen=True, slots=True)
class Removal:
    # blob, layer, layer blob, image, manifest, index, reference, reference's index, file
    kind: str
    subject: str

    def to_json(self) -> dict[str, str]:
        return {"Kind": self.kind, "Subject": self.subject}


@dataclass
class FsckReport:
    problems: list[Problem] = field(default_factory=list)
    removed: list[Removal] = field(default_factory=list)
    kept: list[Problem] = field(default_factory=list)  # broken, but in use: not removed
    unused_layers: int = 0
    checked: dict[str, int] = field(default_factory=dict)
    seconds: float = 0.0

    @property
    def clean(self) -> bool:
        return not self.problems

    def to_json(self) -> dict[str, Any]:
        """The answer of `POST /fsck`, and what `ferryd fsck` prints from."""
        return {
            "Problems": [p.to_json() for p in self.problems],
            "Removed": [r.to_json() for r in self.removed],
            "Kept": [p.to_json() for p in self.kept],
            "UnusedLayers": self.unused_layers,
            "Checked": self.checked,
            "Seconds": round(self.seconds, 3),
        }


@dataclass(frozen=True, slots=True)
class _Rows:
    """The database as it was at one moment."""

    layers: dict[Digest, Layer]
    layer_blobs: dict[Digest, dict[Digest, LayerBlob]]  # ChainID → blob digest → blob
    images: dict[Digest, ImageRecord]
    manifests: dict[Digest, Digest]  # digest → image ID
    references: dict[str, Digest]  # name → image ID
    indexes: dict[Digest, StoredIndex]
    index_references: dict[str, Digest]  # name → the index it names

    @classmethod
    def read(cls, store: Store) -> _Rows:
        with store.db.snapshot():
            layers = {layer.chain_id: layer for layer in store.layers.all()}
            layer_blobs: dict[Digest, dict[Digest, LayerBlob]] = {}
            for blob in store.layers.all_blobs():
                layer_blobs.setdefault(blob.chain_id, {})[blob.digest] = blob
            images = {}
            for image_id in store.images.ids():
                record = store.images.record(image_id)
                if record is not None:
                    images[image_id] = record
            manifests = {
                Digest(row["digest"]): Digest(row["image_id"])
                for row in store.db.all("SELECT digest, image_id FROM manifests")
            }
            rows = store.db.all("SELECT name, image_id, index_digest FROM refs")
            references = {row["name"]: Digest(row["image_id"]) for row in rows}
            index_references = {
                row["name"]: Digest(row["index_digest"]) for row in rows if row["index_digest"]
            }
            indexes = {}
            for digest in store.indexes.digests():
                index = store.indexes.get(digest)
                if index is not None:
                    indexes[digest] = index
            # Entries of an index that is not there (the schema cascades; a damaged
            # database may not have).
            for row in store.db.all(
                "SELECT DISTINCT index_digest FROM index_entries "
                "WHERE index_digest NOT IN (SELECT digest FROM indexes)"
            ):
                orphan = Digest(row["index_digest"])
                indexes[orphan] = StoredIndex(
                    orphan, "", 0, 0.0, store.indexes.entries(orphan), present=False
                )
        return cls(layers, layer_blobs, images, manifests, references, indexes, index_references)

    def blobs(self) -> set[Digest]:
        return (
            {layer.blob_digest for layer in self.layers.values()}
            | {digest for blobs in self.layer_blobs.values() for digest in blobs}
            | set(self.images)
            | set(self.manifests)
            | {digest for digest, index in self.indexes.items() if index.present}
            | {
                entry.digest
                for index in self.indexes.values()
                if index.present
                for entry in index.entries
                if entry.kind == "blob"
            }
        )


class Fsck:
    """One run of the check (and repair) over an open store."""

    def __init__(self, store: Store) -> None:
        self._store = store
        self.report = FsckReport()
        # What is wrong, by subject: why, for the messages of what depends on it.
        self._bad_blobs: dict[Digest, str] = {}
        self._bad_layers: dict[Digest, str] = {}
        # layer_blobs rows to forget (ChainID, blob), and first blobs' rows to restore.
        self._bad_layer_blobs: set[tuple[Digest, Digest]] = set()
        self._missing_layer_blobs: set[Digest] = set()
        self._bad_images: dict[Digest, str] = {}
        self._bad_manifests: dict[Digest, str] = {}
        self._chains: dict[Digest, list[Digest]] = {}  # image ID → its layers, bottom first
        self._bad_indexes: dict[Digest, str] = {}
        self._orphan_indexes: set[Digest] = set()
        self._bad_references: dict[str, str] = {}

    def run(self, *, repair: bool = False) -> FsckReport:
        started = time.monotonic()
        store = self._store
        # What a running transfer pins from before the listing on is never removed (see
        # `RefCounter.watching`).
        with store.maintenance, store.blobs.pins.watching() as watch:
            # Files, then pins and holds, then rows: see `leftovers`.
            inventory = scan(store.blobs)
            held = set(store.layers.holds.keys())
            orphans = leftovers(store, inventory)
            rows = _Rows.read(store)
            self._check_blobs(rows)
            self._check_layers(rows)
            self._check_images(rows)
            self._check_manifests(rows)
            self._check_indexes(rows)
            self._check_references(rows)
            self._check_leftovers(inventory, orphans)
            self.report.unused_layers = len(_unused_layers(rows))
            self.report.checked = {
                "Blobs": len(inventory.blobs),
                "Layers": len(rows.layers),
                "Images": len(rows.images),
                "Manifests": len(rows.manifests),
                "Indexes": len(rows.indexes),
                "References": len(rows.references),
            }
            if repair and self.report.problems:
                self._repair(rows, inventory, orphans, _below(held, rows.layers), watch)
        self.report.seconds = time.monotonic() - started
        return self.report

    # -- checks ----------------------------------------------------------------

    def _problem(self, kind: str, subject: str, message: str) -> None:
        self.report.problems.append(Problem(kind, subject, message))

    def _check_blobs(self, rows: _Rows) -> None:
        for digest in sorted(rows.blobs()):
            path = self._store.blobs.path(digest)
            try:
                actual = hash_file(path, digest)
            except FileNotFoundError:
                self._bad_blobs[digest] = "missing"
                self._problem(MISSING_BLOB, digest, f"blob {digest} is missing ({path})")
                continue
            except ValueError:  # an algorithm hashlib does not know
                actual = "an unknown algorithm"
            if actual != digest:
                self._bad_blobs[digest] = "corrupt"
                why = f"blob {digest} is corrupt: its content hashes to {actual}"
                self._problem(CORRUPT_BLOB, digest, why)

    def _check_layers(self, rows: _Rows) -> None:
        layers = rows.layers
        for chain, layer in layers.items():
            why = None
            if layer.blob_digest in self._bad_blobs:
                why = f"its blob {layer.blob_digest} is {self._bad_blobs[layer.blob_digest]}"
            elif layer.parent is not None and layer.parent not in layers:
                why = f"its parent {layer.parent} is not in the store"
            elif (expected := chain_id(layer.parent, layer.diff_id)) != chain:
                why = f"its parent and DiffID give the ChainID {expected}"
            if why is not None:
                self._bad_layers[chain] = why
        # What stands on a broken layer is broken too.
        for chain in layers:
            if chain in self._bad_layers:
                continue
            below = _first_broken_below(chain, layers, self._bad_layers)
            if below is not None:
                self._bad_layers[chain] = f"it stands on broken layer {below}"
        for chain in sorted(self._bad_layers):
            self._problem(BROKEN_LAYER, chain, f"layer {chain}: {self._bad_layers[chain]}")
        self._check_layer_blobs(rows)

    def _check_layer_blobs(self, rows: _Rows) -> None:
        """The rows of the blobs kept for layers: each for a layer in the store, none of
        another layer's blob, and one for every layer's first blob."""
        layers = rows.layers
        # Which DiffID each layer's first blob holds (a blob may back several ChainIDs
        # of one DiffID).
        first_of = {layer.blob_digest: layer for layer in layers.values()}
        for chain, kept in sorted(rows.layer_blobs.items()):
            layer = layers.get(chain)
            for digest in sorted(kept):
                if layer is None:
                    self._bad_layer_blobs.add((chain, digest))
                    self._problem(
                        ORPHAN_LAYER_BLOB,
                        f"{chain} {digest}",
                        f"blob {digest} is kept for layer {chain}, which is not in the store",
                    )
                    continue
                owner = first_of.get(digest)
                if owner is not None and owner.diff_id != layer.diff_id:
                    self._bad_layer_blobs.add((chain, digest))
                    self._problem(
                        WRONG_LAYER_BLOB,
                        f"{chain} {digest}",
                        f"blob {digest} is kept for layer {chain} (DiffID {layer.diff_id}) "
                        f"but is layer {owner.chain_id}'s (DiffID {owner.diff_id})",
                    )
        for chain, layer in sorted(layers.items()):
            if chain in self._bad_layers or layer.blob_digest in rows.layer_blobs.get(chain, {}):
                continue
            self._missing_layer_blobs.add(chain)
            self._problem(
                MISSING_LAYER_BLOB,
                chain,
                f"layer {chain}: its blob {layer.blob_digest} is not among the blobs kept for it",
            )

    def _check_images(self, rows: _Rows) -> None:
        for image_id in sorted(rows.images):
            why = self._image_problem(rows.images[image_id], rows)
            if why is not None:
                self._bad_images[image_id] = why
                self._problem(BROKEN_IMAGE, image_id, f"image {image_id}: {why}")

    def _image_problem(self, image: ImageRecord, rows: _Rows) -> str | None:
        if image.id in self._bad_blobs:
            return f"its config blob is {self._bad_blobs[image.id]}"
        try:
            config = decode_config(self._store.blobs.get(image.id))
            if config.rootfs is None or config.rootfs.type != "layers":
                return "its config has no layers rootfs"
            diff_ids = [Digest(d) for d in config.rootfs.diff_ids]
        except FerrydError as exc:
            return f"its config cannot be read: {exc}"
        chains = chain_ids(diff_ids)
        self._chains[image.id] = chains
        top = chains[-1] if chains else None
        if image.top_layer != top:
            return f"its top layer {image.top_layer} is not {top}, the ChainID of its config"
        if top is None:
            return None
        if top not in rows.layers:
            return f"its top layer {top} is not in the store"
        if top in self._bad_layers:
            return f"its top layer {top} is broken"
        stack = [layer.diff_id for layer in _stack(top, rows.layers)]
        if stack[::-1] != diff_ids:
            return "its layers' DiffIDs are not its config's"
        return None

    def _check_manifests(self, rows: _Rows) -> None:
        listed = {
            entry.digest
            for index in rows.indexes.values()
            if index.present
            for entry in index.entries
        }
        for digest in sorted(rows.manifests):
            image_id = rows.manifests[digest]
            why: str | None
            if digest in self._bad_blobs:
                why = f"its blob is {self._bad_blobs[digest]}"
            elif image_id not in rows.images:
                why = f"its image {image_id} is not in the store"
            elif image_id not in self._bad_images:
                # Pushed as it is, so only with the blobs it names. A manifest a push
                # made from a plain layer names blobs it gzipped on the fly, never stored
                # (a push would make them again): one no index lists may name a blob not
                # kept for its layer; a blob that is kept for it must be there and right.
                why = self._blobs_problem(digest, image_id, rows, listed=digest in listed)
            else:
                why = None
            if why is None:
                continue
            self._bad_manifests[digest] = why
            self._problem(BROKEN_MANIFEST, digest, f"manifest {digest} of {image_id}: {why}")

    def _blobs_problem(
        self, digest: Digest, image_id: Digest, rows: _Rows, *, listed: bool
    ) -> str | None:
        """What is wrong with the blobs a manifest names, if anything (`listed`: an
        index lists it, so each must be kept for its layer)."""
        try:
            described = decode_manifest(self._store.blobs.get(digest))
        except FerrydError as exc:
            return f"its blob cannot be read: {exc}"
        chains = self._chains.get(image_id, [])
        if described.config.digest != image_id:
            return f"it names config {described.config.digest}, not its image's"
        if len(described.layers) != len(chains):
            return f"it names {len(described.layers)} layers, its image has {len(chains)}"
        for chain, descriptor in zip(chains, described.layers, strict=True):
            blob = self._kept_blob(chain, Digest(descriptor.digest), rows)
            if blob is None and not listed:
                continue  # made by a push: see `_check_manifests`
            if blob is None or blob.size != descriptor.size:
                return f"its layer blob {descriptor.digest} is not stored for layer {chain}"
            if blob.digest in self._bad_blobs:
                return f"its layer blob {blob.digest} is {self._bad_blobs[blob.digest]}"
        return None

    def _kept_blob(self, chain: Digest, digest: Digest, rows: _Rows) -> LayerBlob | None:
        """The blob `digest` as kept for the layer `chain`, if it is (a layer's first blob
        is, with or without its row: repair restores a missing one)."""
        if (chain, digest) in self._bad_layer_blobs:
            return None
        blob = rows.layer_blobs.get(chain, {}).get(digest)
        layer = rows.layers.get(chain)
        if blob is None and layer is not None and layer.blob_digest == digest:
            blob = LayerBlob(chain, digest, layer.media_type, layer.compressed_size)
        return blob

    def _check_indexes(self, rows: _Rows) -> None:
        named = _listed(set(rows.index_references.values()), rows)
        for digest in sorted(rows.indexes):
            why = self._index_problem(rows.indexes[digest], rows)
            if why is not None:
                self._bad_indexes[digest] = why
                self._problem(BROKEN_INDEX, digest, f"index {digest}: {why}")
            elif digest not in named:
                self._orphan_indexes.add(digest)
                self._problem(
                    ORPHAN_INDEX,
                    digest,
                    f"index {digest}: no reference names it (its rows are left over)",
                )

    def _index_problem(self, index: StoredIndex, rows: _Rows) -> str | None:
        if not index.present:
            return "its entries are in the store, the index itself is not"
        if index.digest in self._bad_blobs:
            return f"its blob is {self._bad_blobs[index.digest]}"
        if index.media_type not in INDEX_TYPES:
            return self._artifact_problem(index)
        try:
            decoded = decode_index(self._store.blobs.get(index.digest))
        except FerrydError as exc:
            return f"its blob cannot be read: {exc}"
        if [(d.digest, d.mediaType, d.size) for d in decoded.manifests] != [
            (e.digest, e.media_type, e.size) for e in index.entries
        ]:
            return "its entries are not the ones its blob lists"
        for entry in index.entries:
            image_id = rows.manifests.get(entry.digest)
            image = rows.images.get(image_id) if image_id is not None else None
            wanted = entry.platform
            if image is None or wanted is None or entry.kind != "image":
                continue
            if not wanted.matches(image.os, image.architecture, image.variant):
                actual = normalize(image.os, image.architecture, image.variant)
                return f"its entry for {wanted} ({entry.digest}) is stored as an image of {actual}"
        return None

    def _artifact_problem(self, index: StoredIndex) -> str | None:
        """What is wrong with an artifact an index lists (kept with the blobs it names),
        if anything."""
        try:
            named = artifact_blobs(self._store.blobs.get(index.digest))
        except FerrydError as exc:
            return f"its blob cannot be read: {exc}"
        if [(d.digest, d.size) for d in named] != [(e.digest, e.size) for e in index.entries]:
            return "the blobs kept for it are not the ones its manifest names"
        for entry in index.entries:
            if entry.digest in self._bad_blobs:
                return f"its blob {entry.digest} is {self._bad_blobs[entry.digest]}"
        return None

    def _check_references(self, rows: _Rows) -> None:
        for name in sorted(rows.references):
            image_id = rows.references[name]
            index = rows.index_references.get(name)
            why = None
            if image_id not in rows.images:
                why = f"its image {image_id} is not in the store"
            elif index is not None and index not in rows.indexes:
                why = f"its index {index} is not in the store"
            elif index is not None and image_id not in _children(rows.indexes[index], rows):
                why = f"its image {image_id} is none of the platforms its index {index} has"
            if why is not None:
                self._bad_references[name] = why
                self._problem(DANGLING_REFERENCE, name, f"reference {name}: {why}")

    def _check_leftovers(self, inventory: Inventory, orphans: Leftovers) -> None:
        for digest, _ in orphans.blobs:
            self._problem(
                ORPHAN_BLOB, digest, f"blob {digest} is not used by any layer, image or manifest"
            )
        for path in orphans.temp_files:
            with self._store.blobs.unless_writing(path) as leftover:
                # Gone since the listing: a `put` that finished in between.
                if leftover and path.exists():
                    self._problem(TEMP_FILE, str(path), f"{path} is a leftover temp file")
        for digest, path in orphans.stored_partials:
            self._problem(
                STORED_PARTIAL,
                str(path),
                f"{path} is a partial download of {digest}, which is stored already",
            )
        for path in inventory.stray:
            self._problem(STRAY_FILE, str(path), f"{path} is not a file ferryd keeps there")

    # -- repair ----------------------------------------------------------------

    def _repair(
        self,
        rows: _Rows,
        inventory: Inventory,
        orphans: Leftovers,
        in_use: set[Digest],
        watch: Watch[Digest],
    ) -> None:
        store, removed = self._store, self.report.removed
        layers = {chain for chain in self._bad_layers if chain not in in_use}
        for chain in sorted(set(self._bad_layers) - layers):
            self._keep(BROKEN_LAYER, chain, f"layer {chain} is in use by a running transfer")
        images = set(self._bad_images) | {
            image_id
            for image_id, image in rows.images.items()
            if image.top_layer is not None and image.top_layer in layers
        }
        manifests = set(self._bad_manifests) | {
            digest for digest, image_id in rows.manifests.items() if image_id in images
        }
        references = set(self._bad_references) | {
            name for name, image_id in rows.references.items() if image_id in images
        }
        indexes = set(self._bad_indexes) | self._orphan_indexes
        kept_images = set(rows.images) - images
        # A reference to a kept index whose image goes, or is no longer one of its stored
        # children (its manifest went), names another of them: the index keeps its names
        # and lacks that platform, which a pull restores.
        repointed: dict[str, Digest] = {}
        for name, index in sorted(rows.index_references.items()):
            if index in indexes or index not in rows.indexes:
                continue
            stored = [
                rows.manifests[entry.digest]
                for entry in rows.indexes[index].entries
                if entry.digest in rows.manifests
                and entry.digest not in manifests
                and rows.manifests[entry.digest] in kept_images
            ]
            image_id = rows.references[name]
            # (One whose image was none of them already keeps its image, without the
            # index, below.)
            if image_id in stored or not stored or name in self._bad_references:
                continue
            repointed[name] = stored[0]
            references.discard(name)
        # A reference whose only fault is its index keeps naming its image.
        unindexed = {
            name
            for name, index in rows.index_references.items()
            if name not in repointed
            and rows.references[name] in kept_images
            and (
                name in self._bad_references
                or index in self._bad_indexes
                or index not in rows.indexes
                or rows.references[name] not in _children(rows.indexes[index], rows, manifests)
            )
        }
        references -= unindexed
        # The blobs the artifacts that go name (kept if another row needs them).
        artifact_blobs_going = {
            entry.digest
            for digest in indexes
            if digest in rows.indexes
            for entry in rows.indexes[digest].entries
            if entry.kind == "blob"
        }
        with store.db.transaction():
            for name in sorted(unindexed):
                store.references.unindex(parse_reference(name, default_tag=False))
                removed.append(Removal("reference's index", name))
            for name, image_id in sorted(repointed.items()):
                store.db.execute("UPDATE refs SET image_id = ? WHERE name = ?", (image_id, name))
                removed.append(Removal("reference's image", name))
            for name in sorted(references):
                store.db.execute("DELETE FROM refs WHERE name = ?", (name,))
                removed.append(Removal("reference", name))
            for digest in sorted(indexes):
                store.indexes.delete(digest)
                removed.append(Removal("index", digest))
            for digest in sorted(manifests):
                store.db.execute("DELETE FROM manifests WHERE digest = ?", (digest,))
                removed.append(Removal("manifest", digest))
            for image_id in sorted(images):
                store.images.delete(image_id)
                removed.append(Removal("image", image_id))
            for chain in sorted(layers, key=lambda c: -_depth(c, rows.layers)):
                store.layers.delete(chain)
                removed.append(Removal("layer", chain))
            # A broken blob kept for a layer beside its first (the manifests naming it
            # went above, the layer stays with its other blobs), and a row of a layer
            # not in the store or of another layer's blob.
            forgotten: set[Digest] = set()
            for chain, kept_blobs in sorted(rows.layer_blobs.items()):
                if chain in layers:
                    continue  # its rows went with it
                layer = rows.layers.get(chain)
                for digest in sorted(kept_blobs):
                    bad = (chain, digest) in self._bad_layer_blobs or (
                        digest in self._bad_blobs
                        and layer is not None
                        and digest != layer.blob_digest
                    )
                    if bad:
                        store.layers.forget_blob(chain, digest)
                        forgotten.add(digest)
                        removed.append(Removal("layer blob", f"{chain} {digest}"))
            # A layer's first blob without its row: the row again (the blob was checked
            # against its digest above).
            for chain in sorted(self._missing_layer_blobs - layers):
                layer = rows.layers[chain]
                store.layers.add_blob(
                    chain, layer.blob_digest, layer.media_type, layer.compressed_size
                )
            # Indexes whose last reference went with a broken image.
            for digest, children in forget_unnamed_indexes(store).items():
                indexes.add(digest)
                artifact_blobs_going |= children
                removed.append(Removal("index", digest))
        # The files, now that no row needs them.
        candidates = (
            set(self._bad_blobs)
            | {rows.layers[chain].blob_digest for chain in layers}
            | {digest for chain in layers for digest in rows.layer_blobs.get(chain, {})}
            | forgotten
            | images
            | manifests
            | indexes
            | artifact_blobs_going
        )
        still_needed = referenced_blobs(store) if candidates else set()
        blobs = store.blobs
        for digest in sorted(candidates):
            if digest in still_needed or blobs.pins.used_since(digest, watch):
                if digest in self._bad_blobs:
                    self._keep(CORRUPT_BLOB, digest, f"blob {digest} is still in use")
                continue
            if _unlink(blobs.take_unless_used(digest, blobs.path(digest), watch)):
                removed.append(Removal("blob", digest))
        for digest, path in orphans.blobs:
            if _unlink(blobs.take_unless_used(digest, path, watch)):
                removed.append(Removal("blob", digest))
        for path in orphans.temp_files:
            with store.blobs.unless_writing(path) as leftover:
                if leftover and _unlink(path):
                    removed.append(Removal("file", str(path)))
        for digest, path in orphans.stored_partials:
            if _unlink(blobs.take_unless_used(digest, path, watch)):
                removed.append(Removal("file", str(path)))
        for path in inventory.stray:
            if _unlink(path):
                removed.append(Removal("file", str(path)))

    def _keep(self, kind: str, subject: str, message: str) -> None:
        self.report.kept.append(
            Problem(kind, subject, f"{message}: not removed; run fsck --repair again later")
        )


def check(store: Store, *, repair: bool = False) -> FsckReport:
    """Check `store` (see the module's docstring); with `repair`, fix what is found."""
    return Fsck(store).run(repair=repair)


def hash_file(path: Path, digest: Digest) -> str:
    """The digest of the file at `path` in `digest`'s algorithm, read 1 MiB at a time
    past the page cache (a whole store's blobs would take its pages for nothing)."""
    hasher = new_hasher(digest)
    for piece in read_pieces(path, READ_SIZE):
        hasher.update(piece)
    return f"{digest.partition(':')[0]}:{hasher.hexdigest()}"


def _unlink(path: Path | None) -> bool:
    """Remove `path` (what `take_unless_used` set aside: None when it did not)."""
    if path is None:
        return False
    try:
        path.unlink()
    except FileNotFoundError:
        return False
    return True


def _stack(top: Digest, layers: dict[Digest, Layer]) -> list[Layer]:
    """The layer `top` and those below it, top first (stops at a gap or a loop)."""
    stack: list[Layer] = []
    seen: set[Digest] = set()
    chain: Digest | None = top
    while chain is not None and chain in layers and chain not in seen:
        seen.add(chain)
        stack.append(layers[chain])
        chain = layers[chain].parent
    return stack


def _first_broken_below(
    chain: Digest, layers: dict[Digest, Layer], broken: dict[Digest, str]
) -> Digest | None:
    for layer in _stack(chain, layers)[1:]:
        if layer.chain_id in broken:
            return layer.chain_id
    return None


def _depth(chain: Digest, layers: dict[Digest, Layer]) -> int:
    return len(_stack(chain, layers))


def _below(tops: Iterable[Digest], layers: dict[Digest, Layer]) -> set[Digest]:
    """The layers `tops` and every layer under them: what holds keep in use."""
    tops = list(tops)
    return {layer.chain_id for top in tops for layer in _stack(top, layers)} | set(tops)


def _listed(named: set[Digest], rows: _Rows) -> set[Digest]:
    """The indexes `named`, with the nested indexes and artifacts they list, in turn."""
    found = set(named)
    todo = list(named)
    while todo:
        index = rows.indexes.get(todo.pop())
        for entry in index.entries if index is not None else ():
            if entry.kind != "blob" and entry.digest in rows.indexes and entry.digest not in found:
                found.add(entry.digest)
                todo.append(entry.digest)
    return found


def _children(index: StoredIndex, rows: _Rows, going: Iterable[Digest] = ()) -> set[Digest]:
    """The images of an index's stored children (but those whose manifest is `going`)."""
    going = set(going)
    return {
        rows.manifests[e.digest]
        for e in index.entries
        if e.digest in rows.manifests and e.digest not in going
    }


def _unused_layers(rows: _Rows) -> set[Digest]:
    used = _below(
        (image.top_layer for image in rows.images.values() if image.top_layer is not None),
        rows.layers,
    )
    return set(rows.layers) - used
