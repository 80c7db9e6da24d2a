"""Layers by ChainID, reference-counted while in use, each backed by the compressed blobs
stored for it: the first one it came with, and every other one a manifest kept here
names (another compression of the same DiffID)."""

from __future__ import annotations

import json
import time
from collections.abc import Iterable, Sequence
from contextlib import AbstractContextManager
from dataclasses import dataclass, replace

from ferryd.errors import StoreError
from ferryd.oci.digest import Digest, chain_id
from ferryd.store.db import Database
from ferryd.store.refcount import RefCounter


@dataclass(frozen=True, slots=True)
class Layer:
    chain_id: Digest
    parent: Digest | None
    diff_id: Digest
    blob_digest: Digest  # the compressed blob as the registry served it
    media_type: str
    compressed_size: int
    size: int  # uncompressed
    urls: tuple[str, ...] = ()  # where a foreign layer lives; such a layer is never uploaded

    def with_blob(self, blob: LayerBlob) -> Layer:
        """This layer as `blob` holds it (one of its stored blobs)."""
        return replace(
            self,
            blob_digest=blob.digest,
            media_type=blob.media_type,
            compressed_size=blob.size,
        )


@dataclass(frozen=True, slots=True)
class LayerBlob:
    """One compressed blob stored for a layer."""

    chain_id: Digest
    digest: Digest
    media_type: str
    size: int


class LayerStore:
    """The layer table, and the holds that keep layers in use from garbage collection."""

    def __init__(self, db: Database) -> None:
        self._db = db
        # Layers a pull or push is using: never collected.
        self.holds: RefCounter[Digest] = RefCounter()

    def transaction(self) -> AbstractContextManager[None]:
        """Registrations (and the V2 metadata beside them) that commit together."""
        return self._db.transaction()

    def get(self, chain: Digest) -> Layer | None:
        row = self._db.one("SELECT * FROM layers WHERE chain_id = ?", (chain,))
        return _layer(row) if row is not None else None

    def image_stored(self, image_id: Digest) -> bool:
        """Whether the image `image_id` is stored with its top layer, if it has layers
        (and so with every layer under it: a layer's row needs its parent's), in one
        query."""
        row = self._db.one(
            "SELECT 1 FROM images LEFT JOIN layers ON layers.chain_id = images.top_layer "
            "WHERE images.id = ? AND (images.top_layer IS NULL OR layers.chain_id IS NOT NULL)",
            (image_id,),
        )
        return row is not None

    def size_of(self, chain: Digest) -> int:
        """The uncompressed size of one layer (not of its parents)."""
        row = self._db.one("SELECT size FROM layers WHERE chain_id = ?", (chain,))
        if row is None:
            raise StoreError(f"layer {chain} is not in the store")
        return int(row["size"])

    def by_blob(self, blob_digest: Digest) -> Layer | None:
        """Any layer backed by this blob: tells a stored blob's DiffID without reading it."""
        row = self._db.one(
            "SELECT layers.chain_id, parent, diff_id, layer_blobs.blob_digest, "
            "layer_blobs.media_type, layer_blobs.compressed_size, size, urls "
            "FROM layer_blobs JOIN layers USING (chain_id) WHERE layer_blobs.blob_digest = ? "
            "LIMIT 1",
            (blob_digest,),
        )
        return _layer(row) if row is not None else None

    def has_blob(self, chain: Digest, blob_digest: Digest) -> bool:
        """Whether the layer `chain` is stored with the blob `blob_digest` (one query:
        what a pull asks of each layer before it says "Already exists")."""
        row = self._db.one(
            "SELECT 1 FROM layer_blobs WHERE chain_id = ? AND blob_digest = ?",
            (chain, blob_digest),
        )
        return row is not None

    def blobs_under(self, top: Digest, limit: int) -> list[set[Digest]]:
        """The blob digests stored for `top` and each layer under it (at most `limit`
        layers), bottom layer first (one set a layer), in one query; empty if `top` is
        not stored. What a pull asks of an image it found stored with the manifest: is
        every blob the manifest names there?"""
        rows = self._db.all(
            "WITH RECURSIVE below(chain_id, parent, depth) AS ("
            "SELECT chain_id, parent, 0 FROM layers WHERE chain_id = ? "
            "UNION ALL SELECT layers.chain_id, layers.parent, below.depth + 1 "
            "FROM layers JOIN below ON layers.chain_id = below.parent "
            "WHERE below.depth + 1 < ?) "
            "SELECT below.depth, layer_blobs.blob_digest FROM below "
            "LEFT JOIN layer_blobs ON layer_blobs.chain_id = below.chain_id",
            (top, limit),
        )
        depths = [int(row["depth"]) for row in rows]
        found: list[set[Digest]] = [set() for _ in range(max(depths) + 1 if depths else 0)]
        for row in rows:
            if row["blob_digest"] is not None:
                found[-1 - int(row["depth"])].add(Digest(row["blob_digest"]))
        return found

    def blobs_of(self, chains: Sequence[Digest]) -> dict[Digest, dict[Digest, LayerBlob]]:
        """The blobs stored for each of `chains`, by ChainID and blob digest, in one
        query."""
        found: dict[Digest, dict[Digest, LayerBlob]] = {}
        unique = list(dict.fromkeys(chains))
        # SQLite binds at most 32766 parameters; an image has at most a few hundred.
        for start in range(0, len(unique), 500):
            part = unique[start : start + 500]
            rows = self._db.all(
                "SELECT chain_id, blob_digest, media_type, compressed_size FROM layer_blobs "
                f"WHERE chain_id IN ({', '.join('?' * len(part))})",
                part,
            )
            for row in rows:
                blob = _layer_blob(row)
                found.setdefault(blob.chain_id, {})[blob.digest] = blob
        return found

    def other_blobs(self, digests: Iterable[Digest]) -> list[LayerBlob]:
        """The rows that keep one of `digests` for a layer beside its first blob (which
        goes only with the layer): what a removal may forget once no manifest names it."""
        found: list[LayerBlob] = []
        unique = sorted(set(digests))
        for start in range(0, len(unique), 500):  # as `blobs_of`: SQLite's bound
            part = unique[start : start + 500]
            rows = self._db.all(
                "SELECT layer_blobs.chain_id, layer_blobs.blob_digest, layer_blobs.media_type, "
                "layer_blobs.compressed_size FROM layer_blobs JOIN layers USING (chain_id) "
                "WHERE layer_blobs.blob_digest != layers.blob_digest "
                f"AND layer_blobs.blob_digest IN ({', '.join('?' * len(part))})",
                part,
            )
            found += [_layer_blob(row) for row in rows]
        return found

    def all_blobs(self) -> list[LayerBlob]:
        rows = self._db.all(
            "SELECT chain_id, blob_digest, media_type, compressed_size FROM layer_blobs"
        )
        return [_layer_blob(row) for row in rows]

    def add_blob(self, chain: Digest, blob_digest: Digest, media_type: str, size: int) -> None:
        """Record another compressed blob of the stored layer `chain` (its DiffID
        verified by the caller)."""
        self._db.execute(
            "INSERT OR IGNORE INTO layer_blobs VALUES (?, ?, ?, ?, ?)",
            (chain, blob_digest, media_type, size, time.time()),
        )

    def register(
        self,
        parent: Digest | None,
        diff_id: Digest,
        blob_digest: Digest,
        media_type: str,
        compressed_size: int,
        size: int,
        urls: Sequence[str] = (),
    ) -> Layer:
        """Record a layer on top of `parent` (which must exist) with its blob, and hold
        it; a layer stored already gains the blob, if it is another one."""
        chain = chain_id(parent, diff_id)
        if parent is not None and self.get(parent) is None:
            raise StoreError(f"cannot register layer {chain}: parent {parent} is unknown")
        self._db.execute(
            "INSERT OR IGNORE INTO layers VALUES (?, ?, ?, ?, ?, ?, ?, ?, ?)",
            (
                chain,
                parent,
                diff_id,
                blob_digest,
                media_type,
                compressed_size,
                size,
                json.dumps(list(urls)) if urls else None,
                time.time(),
            ),
        )
        self.add_blob(chain, blob_digest, media_type, compressed_size)
        layer = self.get(chain)
        assert layer is not None
        self.holds.acquire(chain)
        return layer

    def all(self) -> list[Layer]:
        return [_layer(row) for row in self._db.all("SELECT * FROM layers")]

    def forget_blob(self, chain: Digest, blob_digest: Digest) -> None:
        """Forget one of the layer's blobs (not its first: `delete` the layer instead)."""
        self._db.execute(
            "DELETE FROM layer_blobs WHERE chain_id = ? AND blob_digest = ?", (chain, blob_digest)
        )

    def delete(self, chain: Digest) -> set[Digest]:
        """Forget the layer and its blobs' rows; the blobs it was stored with, for
        garbage collection to delete the files of once no row needs them."""
        rows = self._db.all(
            "SELECT blob_digest FROM layer_blobs WHERE chain_id = ? "
            "UNION SELECT blob_digest FROM layers WHERE chain_id = ?",
            (chain, chain),
        )
        # Not left to the foreign key's cascade: that needs `PRAGMA foreign_keys`.
        self._db.execute("DELETE FROM layer_blobs WHERE chain_id = ?", (chain,))
        self._db.execute("DELETE FROM layers WHERE chain_id = ?", (chain,))
        return {Digest(row["blob_digest"]) for row in rows}


def _layer(row: object) -> Layer:
    r = dict(row)  # type: ignore[call-overload]
    return Layer(
        Digest(r["chain_id"]),
        Digest(r["parent"]) if r["parent"] else None,
        Digest(r["diff_id"]),
        Digest(r["blob_digest"]),
        r["media_type"],
        r["compressed_size"],
        r["size"],
        tuple(json.loads(r["urls"])) if r["urls"] else (),
    )


def _layer_blob(row: object) -> LayerBlob:
    r = dict(row)  # type: ignore[call-overload]
    return LayerBlob(
        Digest(r["chain_id"]), Digest(r["blob_digest"]), r["media_type"], r["compressed_size"]
    )
