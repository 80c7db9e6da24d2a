"""The store as one object: blobs, the database, and one class per table on them."""

from __future__ import annotations

import fcntl
import os
import re
import stat
import threading
from dataclasses import dataclass
from pathlib import Path
from typing import IO

import structlog

from ferryd.errors import (
    ImageNotFoundError,
    InvalidReferenceError,
    StoreInUseError,
    disk_errors,
)
from ferryd.oci.digest import Digest
from ferryd.oci.reference import Reference, parse_reference
from ferryd.store.blobs import BlobStore
from ferryd.store.db import DB_MODE, Database
from ferryd.store.images import ImageConfigStore
from ferryd.store.indexes import IndexStore
from ferryd.store.layers import LayerStore
from ferryd.store.manifests import ManifestStore
from ferryd.store.metadata import V2MetadataStore
from ferryd.store.references import ReferenceStore, Target
from ferryd.store.reserve import RESERVE_NAME, SpaceReserve

log = structlog.get_logger("ferryd.store")

ROOT_MODE = 0o700
GROUP_ROOT_MODE = 0o750  # the daemon's socket_group may read the store
DB_NAME = "ferryd.db"
LOCK_NAME = "ferryd.lock"
# Files that must be the daemon's alone, with the mode each must have.
_PRIVATE_FILES = (
    (DB_NAME, DB_MODE),
    (f"{DB_NAME}-wal", DB_MODE),
    (f"{DB_NAME}-shm", DB_MODE),
    (LOCK_NAME, 0o600),
    (RESERVE_NAME, 0o600),
)


def _lock_root(root: Path) -> IO[bytes]:
    """One daemon per store: two writing the same blobs and database would corrupt
    each other's partial downloads and garbage collection."""
    fd = os.open(root / LOCK_NAME, os.O_WRONLY | os.O_CREAT | os.O_APPEND, 0o600)
    lock = os.fdopen(fd, "ab")
    try:
        fcntl.flock(lock, fcntl.LOCK_EX | fcntl.LOCK_NB)
    except BlockingIOError:
        lock.close()
        raise StoreInUseError(f"another ferryd is already using the store in {root}") from None
    return lock


@dataclass(frozen=True, slots=True)
class ModeFix:
    path: Path
    old: int
    new: int


def fix_modes(root: Path, root_mode: int) -> list[ModeFix]:
    """Give the root `root_mode` and the database, its WAL files, the lock and the
    reserve 0600; each change is logged as `store.mode_fixed`."""
    fixes = []
    for path, mode in [(root, root_mode), *((root / name, m) for name, m in _PRIVATE_FILES)]:
        try:
            old = stat.S_IMODE(path.lstat().st_mode)
        except FileNotFoundError:
            continue
        if old == mode or path.is_symlink():
            continue
        os.chmod(path, mode)
        fixes.append(ModeFix(path, old, mode))
        log.info("store.mode_fixed", path=str(path), old_mode=f"{old:04o}", new_mode=f"{mode:04o}")
    return fixes


# An image ID or a prefix of one, `sha256:` optional either way: dockerd's containerd
# store (`checkTruncatedID`) and its graphdriver store (`digestset.Lookup`) take both.
_ID_PREFIX = re.compile(r"(?:sha256:)?([a-f0-9]{1,64})")


class Store:
    def __init__(self, root: Path, *, root_mode: int | None = None) -> None:
        """Open the store in `root`, creating it (mode 0700) if need be.

        The daemon passes `root_mode` (0700, or 0750 when its socket has a group): a new
        root gets it, an existing store has its modes set right (`fix_modes`), and room
        is kept for the database on a full disk (`SpaceReserve`). `ferryd fsck` passes
        nothing and changes no mode.
        """
        mode = root_mode if root_mode is not None else ROOT_MODE
        with disk_errors(root, root):
            if not root.is_dir():
                root.mkdir(mode=mode, parents=True, exist_ok=True)
                os.chmod(root, mode)  # whatever the umask took away
            self.root = root
            self._lock = _lock_root(root)
        try:
            self.mode_fixes = fix_modes(root, root_mode) if root_mode is not None else []
            self.reserve = SpaceReserve(root / RESERVE_NAME)
            if root_mode is not None:
                self.reserve.keep()
            self.blobs = BlobStore(root)
            self.db = Database(root / DB_NAME)
        except BaseException:
            self._lock.close()
            raise
        # Sweeps, removals and fsck take turns: each sees the others' work whole.
        self.maintenance = threading.RLock()
        self.layers = LayerStore(self.db)
        self.images = ImageConfigStore(self.db, self.blobs)
        self.manifests = ManifestStore(self.db, self.blobs)
        self.references = ReferenceStore(self.db)
        self.indexes = IndexStore(self.db, self.blobs)
        self.metadata = V2MetadataStore(self.db)

    def resolve(self, name: str) -> Digest:
        """An image by reference (`alpine`, `host/x:tag`, `x@sha256:…`), ID or ID prefix.

        As docker: a full or unique short ID wins over a name that looks like one. A
        name of an index gives the image its references give (`ReferenceStore`).
        """
        return self.resolve_target(name).image_id

    def resolve_target(self, name: str) -> Target:
        """What `name` names: an image, and the index when it names one (a reference to
        an index, or an index's digest, `sha256:` optional, or a unique prefix of it)."""
        image_id = self.resolve_id(name)
        if image_id is not None:
            return Target(image_id)
        index = self.index_by_id(name)
        if index is not None:
            return index
        try:
            reference = self.as_reference(name)
        except InvalidReferenceError:
            raise ImageNotFoundError(f"No such image: {name}") from None
        target = self.references.target(reference)
        if target is None:
            raise ImageNotFoundError(f"No such image: {name}")
        return target

    def as_reference(self, name: str) -> Reference:
        """`name`, which named no image or index by ID, as a reference (a bare name gets
        `latest`). A full ID then names an image that is not stored: dockerd reads 64
        hex digits as a digest and answers "No such image", so this does too rather
        than call it an invalid name."""
        match = _ID_PREFIX.fullmatch(name)
        if match is not None and len(match.group(1)) == 64:
            raise ImageNotFoundError(f"No such image: {name}")
        return parse_reference(name)

    def index_by_id(self, name: str) -> Target | None:
        """A named index by its digest or a unique prefix of it (`sha256:` optional),
        with the image its references give."""
        match = _ID_PREFIX.fullmatch(name)
        if match is None:
            return None
        found = self.indexes.with_prefix(f"sha256:{match.group(1)}")
        if len(found) != 1:
            return None
        [index] = found
        named = self.references.naming_index(index)
        target = self.references.target(named[0]) if named else None
        return target if target is not None and target.index == index else None

    def resolve_id(self, name: str) -> Digest | None:
        """The image whose ID is `name` or starts with it (`sha256:` optional)."""
        match = _ID_PREFIX.fullmatch(name)
        if match is None:
            return None
        return self._by_id_prefix(match.group(1))

    def _by_id_prefix(self, prefix: str) -> Digest | None:
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
