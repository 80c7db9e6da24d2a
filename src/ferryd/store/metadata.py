"""V2 metadata: which blob digest holds a DiffID in which repository of which registry.

The pull side writes it; the push side reads it to skip or mount layers.
"""

from __future__ import annotations

from dataclasses import dataclass

from ferryd.oci.digest import Digest
from ferryd.store.db import Database


@dataclass(frozen=True, slots=True)
class V2Metadata:
    digest: Digest
    registry: str
    repository: str


class V2MetadataStore:
    def __init__(self, db: Database) -> None:
        self._db = db

    def add(self, diff_id: Digest, metadata: V2Metadata) -> None:
        self._db.execute(
            "INSERT OR IGNORE INTO v2metadata VALUES (?, ?, ?, ?)",
            (diff_id, metadata.digest, metadata.registry, metadata.repository),
        )

    def get(self, diff_id: Digest) -> list[V2Metadata]:
        rows = self._db.all(
            "SELECT digest, registry, repository FROM v2metadata WHERE diff_id = ?", (diff_id,)
        )
        return [V2Metadata(Digest(r["digest"]), r["registry"], r["repository"]) for r in rows]
