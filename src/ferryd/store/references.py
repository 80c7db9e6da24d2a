"""Tags and digests that name images: `docker.io/library/alpine:latest` → image ID.

A reference may name an image index too (a tag or digest that a registry served as an
OCI index or Docker manifest list). It then keeps, beside the index, the image ID of
one of the index's stored children, the one for the daemon's default platform when it
is stored (`Target.image_id`): what `rmi`, `inspect`, `history`, the image list and
every other caller that wants an image for a name use, as they did before indexes were
kept. Pushes and saves follow the index.
"""

from __future__ import annotations

import time
from dataclasses import dataclass

from ferryd.oci.digest import Digest
from ferryd.oci.reference import Reference, parse_reference
from ferryd.store.db import Database


@dataclass(frozen=True, slots=True)
class Target:
    """What a reference names: an image, and the index it came through (if any)."""

    image_id: Digest
    index: Digest | None = None


@dataclass(frozen=True, slots=True)
class NamedReference:
    reference: Reference
    image_id: Digest


class ReferenceStore:
    def __init__(self, db: Database) -> None:
        self._db = db

    def add(
        self, reference: Reference, image_id: Digest, *, index: Digest | None = None
    ) -> Digest | None:
        """Point `reference` at `image_id` (through `index`); returns the image it
        pointed at before."""
        before = self.point(reference, Target(image_id, index))
        return before.image_id if before is not None else None

    def point(self, reference: Reference, target: Target) -> Target | None:
        """Point `reference` at `target`; returns what it named before."""
        reference = favor_digest(reference)
        name = str(reference)
        before = self._target_of(name)
        self._db.execute(
            "INSERT OR REPLACE INTO refs (name, repository, tag, digest, image_id, created, "
            "index_digest) VALUES (?, ?, ?, ?, ?, ?, ?)",
            (
                name,
                reference.name,
                reference.tag,
                reference.digest,
                target.image_id,
                time.time(),
                target.index,
            ),
        )
        return before

    def get(self, reference: Reference) -> Digest | None:
        target = self.target(reference)
        return target.image_id if target is not None else None

    def target(self, reference: Reference) -> Target | None:
        return self._target_of(str(favor_digest(reference)))

    def _target_of(self, name: str) -> Target | None:
        row = self._db.one("SELECT image_id, index_digest FROM refs WHERE name = ?", (name,))
        if row is None:
            return None
        index = row["index_digest"]
        return Target(Digest(row["image_id"]), Digest(index) if index else None)

    def for_image(self, image_id: Digest) -> list[Reference]:
        rows = self._db.all("SELECT name FROM refs WHERE image_id = ? ORDER BY name", (image_id,))
        return [parse_reference(row["name"], default_tag=False) for row in rows]

    def targets_for_image(self, image_id: Digest) -> list[tuple[Reference, Target]]:
        """The references that give `image_id` for their name, with what they name."""
        rows = self._db.all(
            "SELECT name, image_id, index_digest FROM refs WHERE image_id = ? ORDER BY name",
            (image_id,),
        )
        return [(parse_reference(r["name"], default_tag=False), _target(r)) for r in rows]

    def naming_index(self, index: Digest) -> list[Reference]:
        """The references that name the index `index`."""
        rows = self._db.all("SELECT name FROM refs WHERE index_digest = ? ORDER BY name", (index,))
        return [parse_reference(row["name"], default_tag=False) for row in rows]

    def indexes_named(self) -> set[Digest]:
        """Every index some reference names."""
        rows = self._db.all("SELECT DISTINCT index_digest FROM refs WHERE index_digest IS NOT NULL")
        return {Digest(row["index_digest"]) for row in rows}

    def repoint_index(self, index: Digest, image_id: Digest) -> list[Reference]:
        """Make every reference to `index` give `image_id` for its image (a child for the
        default platform was stored); the references that changed."""
        rows = self._db.all(
            "SELECT name FROM refs WHERE index_digest = ? AND image_id != ? ORDER BY name",
            (index, image_id),
        )
        self._db.execute("UPDATE refs SET image_id = ? WHERE index_digest = ?", (image_id, index))
        return [parse_reference(row["name"], default_tag=False) for row in rows]

    def unindex(self, reference: Reference) -> None:
        """Keep `reference` naming its image, without its index (fsck's repair of a
        broken index)."""
        name = str(favor_digest(reference))
        self._db.execute("UPDATE refs SET index_digest = NULL WHERE name = ?", (name,))

    def tags_of(self, repository: Reference) -> list[tuple[Reference, Digest]]:
        """Every tag of one repository, with the image it names."""
        return [(ref, target.image_id) for ref, target in self.tag_targets_of(repository)]

    def tag_targets_of(self, repository: Reference) -> list[tuple[Reference, Target]]:
        """Every tag of one repository, with what it names."""
        return [(ref, target) for ref, target in self.targets_of(repository) if ref.tag is not None]

    def targets_of(self, repository: Reference) -> list[tuple[Reference, Target]]:
        """Every reference of one repository, tags and digests, with what it names."""
        rows = self._db.all(
            "SELECT name, image_id, index_digest FROM refs WHERE repository = ? ORDER BY name",
            (repository.name,),
        )
        return [(parse_reference(r["name"], default_tag=False), _target(r)) for r in rows]

    def delete_image(self, image_id: Digest) -> None:
        """Remove every reference to `image_id`."""
        self._db.execute("DELETE FROM refs WHERE image_id = ?", (image_id,))

    def delete(self, reference: Reference) -> bool:
        name = str(favor_digest(reference))
        row = self._db.one("SELECT 1 FROM refs WHERE name = ?", (name,))
        self._db.execute("DELETE FROM refs WHERE name = ?", (name,))
        return row is not None


def favor_digest(reference: Reference) -> Reference:
    """`repo:tag@digest` as `repo@digest`: the digest names the image and the tag is
    ignored, as dockerd's reference store does (`favorDigest`). Renovate and compose pin
    images so; a lookup of the whole string would find nothing."""
    if reference.tag is None or reference.digest is None:
        return reference
    return reference.with_digest(reference.digest)


def _target(row: object) -> Target:
    r = dict(row)  # type: ignore[call-overload]
    index = r["index_digest"]
    return Target(Digest(r["image_id"]), Digest(index) if index else None)
