"""Image indexes (OCI indexes and Docker manifest lists) kept as themselves: the index's
bytes as a blob, and a row per entry (child digest, media type, size, kind, platform,
annotations) so that what a tag offers can be read without decoding the blob.

An index's children are image manifests; a child is stored when the manifests table
has its digest (`IndexStore.stored_children`), and an index may be stored with some of its
children only (a pull of one platform, then of another, adds to it). An index lives as
long as a reference names it, or an index kept lists it: `ferryd.store.gc.
forget_unnamed_indexes` removes the rows of one that lost its last name, in the
transaction that took the name away.

A pull of all platforms keeps what an index lists beyond images as it is: a nested index
(a row here, with its entries), and an artifact (an `unknown` entry's manifest: a row
here too, of the manifest's media type, with an entry of kind `blob` per blob it names).
They have no image and no name of their own: an index kept lists them.
"""

from __future__ import annotations

import json
import time
from collections.abc import Mapping
from dataclasses import dataclass, field
from typing import Any

import msgspec

from ferryd.oci.digest import Digest
from ferryd.oci.manifest import REFERENCE_DIGEST, Descriptor, EntryKind, ImageIndex, entry_kind
from ferryd.oci.mediatypes import INDEX_TYPES
from ferryd.oci.platform import Platform, normalize
from ferryd.store.blobs import BlobStore
from ferryd.store.db import Database


@dataclass(frozen=True, slots=True)
class IndexEntry:
    """One entry of a stored index."""

    position: int
    digest: Digest  # the child manifest
    media_type: str
    size: int
    kind: EntryKind
    os: str | None = None
    architecture: str | None = None
    variant: str | None = None
    platform_fields: dict[str, Any] | None = field(default=None, compare=False)
    annotations: dict[str, str] | None = field(default=None, compare=False)

    @property
    def platform(self) -> Platform | None:
        """The entry's platform, normalised (None when the entry names none)."""
        if self.os is None and self.architecture is None:
            return None
        return normalize(self.os or "", self.architecture or "", self.variant)

    @property
    def attests(self) -> Digest | None:
        """For an attestation: the image manifest it is about."""
        value = (self.annotations or {}).get(REFERENCE_DIGEST)
        return Digest(value) if value else None

    def descriptor(self) -> dict[str, Any]:
        """The entry as an OCI descriptor (what the index says of the child)."""
        out: dict[str, Any] = {
            "mediaType": self.media_type,
            "digest": self.digest,
            "size": self.size,
        }
        if self.annotations:
            out["annotations"] = dict(self.annotations)
        if self.platform_fields is not None:
            out["platform"] = dict(self.platform_fields)
        return out


@dataclass(frozen=True, slots=True)
class StoredIndex:
    digest: Digest
    media_type: str
    size: int
    created: float
    entries: list[IndexEntry]
    present: bool = True  # False: entries whose index row is gone (fsck reports them)

    def entry(self, digest: Digest) -> IndexEntry | None:
        return next((entry for entry in self.entries if entry.digest == digest), None)


class IndexStore:
    """The indexes and index_entries tables, and the index blobs."""

    def __init__(self, db: Database, blobs: BlobStore) -> None:
        self._db = db
        self._blobs = blobs

    def add(self, digest: Digest, media_type: str, raw: bytes, index: ImageIndex) -> bool:
        """Keep an index (its blob must be stored first: `BlobStore.put`) and a row per
        entry; call inside a transaction. False when it was kept already."""
        if self.has(digest):
            return False
        self._db.execute(
            "INSERT INTO indexes (digest, media_type, size, created) VALUES (?, ?, ?, ?)",
            (digest, media_type, len(raw), time.time()),
        )
        for position, entry in enumerate(index.manifests):
            platform = entry.platform
            self._db.execute(
                "INSERT INTO index_entries (index_digest, position, digest, media_type, size, "
                "kind, os, architecture, variant, platform, annotations) "
                "VALUES (?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?)",
                (
                    digest,
                    position,
                    entry.digest,
                    entry.mediaType,
                    entry.size,
                    entry_kind(entry),
                    platform.os if platform is not None else None,
                    platform.architecture if platform is not None else None,
                    platform.variant if platform is not None else None,
                    msgspec.json.encode(platform).decode() if platform is not None else None,
                    json.dumps(entry.annotations, sort_keys=True) if entry.annotations else None,
                ),
            )
        return True

    def add_artifact(
        self, digest: Digest, media_type: str, raw: bytes, blobs: list[Descriptor]
    ) -> bool:
        """Keep a manifest an index lists that is no image (an artifact: its blob and
        those it names must be stored first), a row per blob it names (kind `blob`);
        call inside a transaction. False when it was kept already."""
        if self.has(digest):
            return False
        self._db.execute(
            "INSERT INTO indexes (digest, media_type, size, created) VALUES (?, ?, ?, ?)",
            (digest, media_type, len(raw), time.time()),
        )
        for position, blob in enumerate(blobs):
            self._db.execute(
                "INSERT INTO index_entries (index_digest, position, digest, media_type, size, "
                "kind) VALUES (?, ?, ?, ?, ?, 'blob')",
                (digest, position, blob.digest, blob.mediaType, blob.size),
            )
        return True

    def has(self, digest: Digest) -> bool:
        """Whether an index or an artifact (`add_artifact`) of that digest is kept."""
        return self._db.one("SELECT 1 FROM indexes WHERE digest = ?", (digest,)) is not None

    def complete(self, digest: Digest) -> bool:
        """Whether the index or artifact `digest` is kept with everything it lists (its
        images' manifests, its nested indexes and artifacts, theirs in turn)."""
        todo, seen = [digest], set()
        while todo:
            current = todo.pop()
            if current in seen:
                continue
            seen.add(current)
            if not self.has(current):
                return False
            for entry in self.entries(current):
                if entry.kind == "blob":
                    continue
                if entry.kind in ("index", "unknown"):
                    todo.append(entry.digest)
                elif self._db.one(
                    "SELECT 1 FROM manifests WHERE digest = ?", (entry.digest,)
                ) is None and not self.has(entry.digest):
                    return False
        return True

    def get(self, digest: Digest) -> StoredIndex | None:
        row = self._db.one("SELECT * FROM indexes WHERE digest = ?", (digest,))
        if row is None:
            return None
        return StoredIndex(
            Digest(row["digest"]),
            row["media_type"],
            row["size"],
            row["created"],
            self.entries(digest),
        )

    def entries(self, digest: Digest) -> list[IndexEntry]:
        rows = self._db.all(
            "SELECT * FROM index_entries WHERE index_digest = ? ORDER BY position", (digest,)
        )
        return [_entry(row) for row in rows]

    def stored_children(self, digest: Digest) -> dict[Digest, Digest]:
        """The children of index `digest` that are stored: child manifest → image ID, in
        the index's order (one query: its entries joined with the manifests table)."""
        rows = self._db.all(
            "SELECT e.digest, m.image_id FROM index_entries e "
            "JOIN manifests m ON m.digest = e.digest "
            "WHERE e.index_digest = ? ORDER BY e.position",
            (digest,),
        )
        return {Digest(row["digest"]): Digest(row["image_id"]) for row in rows}

    def raw(self, digest: Digest) -> bytes:
        """The index's bytes, as it was served (its digest is theirs)."""
        return self._blobs.get(digest)

    def containing(self, child: Digest) -> list[Digest]:
        """The indexes that list the manifest `child`."""
        rows = self._db.all(
            "SELECT DISTINCT index_digest FROM index_entries WHERE digest = ? "
            "ORDER BY index_digest",
            (child,),
        )
        return [Digest(row["index_digest"]) for row in rows]

    def with_prefix(self, prefix: str) -> list[Digest]:
        """The indexes whose digest starts with `prefix` (two at most: one is unique)."""
        rows = self._db.all(
            "SELECT digest FROM indexes WHERE digest >= ? AND digest < ? "
            f"AND media_type IN ({', '.join('?' for _ in INDEX_TYPES)}) LIMIT 2",
            (prefix, prefix + "g", *INDEX_TYPES),
        )
        return [Digest(row["digest"]) for row in rows]

    def digests(self) -> set[Digest]:
        """Every stored index: blobs garbage collection must keep."""
        return {Digest(row["digest"]) for row in self._db.all("SELECT digest FROM indexes")}

    def listed(self, digests: set[Digest]) -> set[Digest]:
        """The indexes and artifacts kept that `digests` list, and those they list in
        turn: what is kept because the indexes `digests` are."""
        found: set[Digest] = set()
        todo = list(digests)
        while todo:
            rows = self._db.all(
                "SELECT DISTINCT e.digest FROM index_entries e JOIN indexes i "
                "ON i.digest = e.digest WHERE e.kind != 'blob' AND e.index_digest IN "
                f"({', '.join('?' for _ in todo)})",
                tuple(todo),
            )
            todo = [Digest(row["digest"]) for row in rows if row["digest"] not in found]
            found.update(todo)
        return found

    def delete(self, digest: Digest) -> None:
        """Forget an index and its entries (its blob is garbage collection's)."""
        self._db.execute("DELETE FROM index_entries WHERE index_digest = ?", (digest,))
        self._db.execute("DELETE FROM indexes WHERE digest = ?", (digest,))


def default_child(
    entries: list[IndexEntry], stored: Mapping[Digest, Digest], platform: Platform
) -> Digest | None:
    """The image a reference to an index gives: of the stored image entries (`stored`:
    child manifest → image ID), the one for `platform` as a pull would choose it (the
    closest, the first listed of equals: `Platform.preference`), else the first; None
    when no image of it is stored."""
    images = [entry for entry in entries if entry.kind == "image" and entry.digest in stored]
    best: tuple[int, IndexEntry] | None = None
    for entry in images:
        if entry.platform is None:
            continue
        rank = platform.preference(entry.os or "", entry.architecture or "", entry.variant)
        if rank is not None and (best is None or rank < best[0]):
            best = (rank, entry)
    if best is not None:
        return stored[best[1].digest]
    return stored[images[0].digest] if images else None


def _entry(row: Any) -> IndexEntry:
    return IndexEntry(
        row["position"],
        Digest(row["digest"]),
        row["media_type"],
        row["size"],
        row["kind"],
        row["os"],
        row["architecture"],
        row["variant"],
        json.loads(row["platform"]) if row["platform"] else None,
        json.loads(row["annotations"]) if row["annotations"] else None,
    )
