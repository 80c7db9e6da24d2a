"""Tags and digests that name images: `docker.io/library/alpine:latest` → image ID."""

from __future__ import annotations

import time
from dataclasses import dataclass

from ferryd.oci.digest import Digest
from ferryd.oci.reference import Reference, parse_reference
from ferryd.store.db import Database


@dataclass(frozen=True, slots=True)
class NamedReference:
    reference: Reference
    image_id: Digest


class ReferenceStore:
    def __init__(self, db: Database) -> None:
        self._db = db

    def add(self, reference: Reference, image_id: Digest) -> Digest | None:
        """Point `reference` at `image_id`; returns the image it pointed at before."""
        name = str(reference)
        row = self._db.one("SELECT image_id FROM refs WHERE name = ?", (name,))
        self._db.execute(
            "INSERT OR REPLACE INTO refs VALUES (?, ?, ?, ?, ?, ?)",
            (name, reference.name, reference.tag, reference.digest, image_id, time.time()),
        )
        return Digest(row["image_id"]) if row is not None else None

    def get(self, reference: Reference) -> Digest | None:
        row = self._db.one("SELECT image_id FROM refs WHERE name = ?", (str(reference),))
        return Digest(row["image_id"]) if row is not None else None

    def for_image(self, image_id: Digest) -> list[Reference]:
        rows = self._db.all("SELECT name FROM refs WHERE image_id = ? ORDER BY name", (image_id,))
        return [parse_reference(row["name"], default_tag=False) for row in rows]

    def tags_of(self, repository: Reference) -> list[tuple[Reference, Digest]]:
        """Every tag of one repository, with the image it names."""
        rows = self._db.all(
            "SELECT name, image_id FROM refs WHERE repository = ? AND tag IS NOT NULL "
            "ORDER BY name",
            (repository.name,),
        )
        return [(parse_reference(r["name"]), Digest(r["image_id"])) for r in rows]

    def delete_image(self, image_id: Digest) -> None:
        """Remove every reference to `image_id`."""
        self._db.execute("DELETE FROM refs WHERE image_id = ?", (image_id,))

    def delete(self, reference: Reference) -> bool:
        row = self._db.one("SELECT 1 FROM refs WHERE name = ?", (str(reference),))
        self._db.execute("DELETE FROM refs WHERE name = ?", (str(reference),))
        return row is not None
