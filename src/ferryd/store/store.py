"""The store as one object: blobs, the database, and one class per table on them."""

from __future__ import annotations

import fcntl
import re
from pathlib import Path
from typing import IO

from ferryd.errors import ImageNotFoundError, InvalidReferenceError, StoreError
from ferryd.oci.digest import Digest
from ferryd.oci.reference import parse_reference
from ferryd.store.blobs import BlobStore
from ferryd.store.db import Database
from ferryd.store.images import ImageConfigStore
from ferryd.store.layers import LayerStore
from ferryd.store.manifests import ManifestStore
from ferryd.store.metadata import V2MetadataStore
from ferryd.store.references import ReferenceStore


def _lock_root(root: Path) -> IO[bytes]:
    """One daemon per store: two writing the same blobs and database would corrupt
    each other's partial downloads and garbage collection."""
    lock = (root / "ferryd.lock").open("ab")
    try:
        fcntl.flock(lock, fcntl.LOCK_EX | fcntl.LOCK_NB)
    except BlockingIOError:
        lock.close()
        raise StoreError(f"another ferryd is already using the store in {root}") from None
    return lock


_ID_PREFIX = re.compile(r"^(?:sha256:)?([a-f0-9]{1,64})$")


class Store:
    def __init__(self, root: Path) -> None:
        root.mkdir(parents=True, exist_ok=True)
        self.root = root
        self._lock = _lock_root(root)
        self.blobs = BlobStore(root)
        self.db = Database(root / "ferryd.db")
        self.layers = LayerStore(self.db)
        self.images = ImageConfigStore(self.db, self.blobs)
        self.manifests = ManifestStore(self.db, self.blobs)
        self.references = ReferenceStore(self.db)
        self.metadata = V2MetadataStore(self.db)

    def resolve(self, name: str) -> Digest:
        """An image by reference (`alpine`, `host/x:tag`, `x@sha256:…`), ID or ID prefix.

        As docker: a full or unique short ID wins over a name that looks like one.
        """
        image_id = self.resolve_id(name)
        if image_id is not None:
            return image_id
        try:
            reference = parse_reference(name)
        except InvalidReferenceError:
            raise ImageNotFoundError(f"No such image: {name}") from None
        image_id = self.references.get(reference)
        if image_id is None:
            raise ImageNotFoundError(f"No such image: {name}")
        return image_id

    def resolve_id(self, name: str) -> Digest | None:
        """The image whose ID is `name` or starts with it (`sha256:` optional)."""
        match = _ID_PREFIX.match(name)
        if match is None:
            return None
        return self._by_id_prefix(match.group(1), full=name.startswith("sha256:"))

    def _by_id_prefix(self, prefix: str, *, full: bool) -> Digest | None:
        if full and len(prefix) != 64:
            return None
        rows = self.db.all(
            "SELECT id FROM images WHERE id >= ? AND id < ? LIMIT 2",
            (f"sha256:{prefix}", f"sha256:{prefix}g"),
        )
        if len(rows) > 1:
            raise ImageNotFoundError(f"image ID prefix {prefix!r} is ambiguous")
        return Digest(rows[0]["id"]) if rows else None

    def close(self) -> None:
        self.db.close()
        self._lock.close()
