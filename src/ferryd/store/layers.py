"""Layers by ChainID, each backed by one stored blob, reference-counted while in use."""

from __future__ import annotations

import json
import time
from collections.abc import Sequence
from contextlib import AbstractContextManager
from dataclasses import dataclass

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
        row = self._db.one("SELECT * FROM layers WHERE blob_digest = ? LIMIT 1", (blob_digest,))
        return _layer(row) if row is not None else None

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
        """Record a layer on top of `parent` (which must exist) and hold it."""
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
        layer = self.get(chain)
        assert layer is not None
        self.holds.acquire(chain)
        return layer

    def all(self) -> list[Layer]:
        return [_layer(row) for row in self._db.all("SELECT * FROM layers")]

    def delete(self, chain: Digest) -> None:
        self._db.execute("DELETE FROM layers WHERE chain_id = ?", (chain,))


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
