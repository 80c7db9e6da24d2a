"""The manifests an image came with, kept so that a push can re-use them (and their
digests) when they describe exactly the blobs it pushes."""

from __future__ import annotations

from dataclasses import dataclass

from ferryd.oci.digest import Digest
from ferryd.store.blobs import BlobStore
from ferryd.store.db import Database


@dataclass(frozen=True, slots=True)
class StoredManifest:
    digest: Digest
    media_type: str
    raw: bytes


class ManifestStore:
    def __init__(self, db: Database, blobs: BlobStore) -> None:
        self._db = db
        self._blobs = blobs

    def add(self, digest: Digest, image_id: Digest, media_type: str, raw: bytes) -> None:
        """Keep a manifest of `image_id` (its blob is written first, if not there yet)."""
        self._blobs.put(raw, digest if digest.startswith("sha256:") else None)
        self._db.execute(
            "INSERT OR IGNORE INTO manifests VALUES (?, ?, ?, ?)",
            (digest, image_id, media_type, len(raw)),
        )

    def for_image(self, image_id: Digest) -> list[StoredManifest]:
        rows = self._db.all(
            "SELECT digest, media_type FROM manifests WHERE image_id = ?", (image_id,)
        )
        return [
            StoredManifest(Digest(row["digest"]), row["media_type"], self._blobs.get(row["digest"]))
            for row in rows
        ]

    def image_of(self, digest: Digest) -> Digest | None:
        """The image a kept manifest describes (None: that manifest is not stored)."""
        row = self._db.one("SELECT image_id FROM manifests WHERE digest = ?", (digest,))
        return Digest(row["image_id"]) if row is not None else None

    def get(self, digest: Digest) -> StoredManifest | None:
        row = self._db.one("SELECT digest, media_type FROM manifests WHERE digest = ?", (digest,))
        if row is None:
            return None
        return StoredManifest(Digest(row["digest"]), row["media_type"], self._blobs.get(digest))

    def digests_of(self, image_id: Digest) -> list[Digest]:
        rows = self._db.all("SELECT digest FROM manifests WHERE image_id = ?", (image_id,))
        return [Digest(row["digest"]) for row in rows]

    def digests(self) -> set[Digest]:
        """Every kept manifest's digest: blobs garbage collection must keep."""
        return {Digest(row["digest"]) for row in self._db.all("SELECT digest FROM manifests")}

    def delete_image(self, image_id: Digest) -> None:
        """Forget the manifests of `image_id` (their blobs are garbage collection's)."""
        self._db.execute("DELETE FROM manifests WHERE image_id = ?", (image_id,))
