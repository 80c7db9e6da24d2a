"""The SQLite database (WAL) for layers, images, references and V2 metadata.

One connection shared by the event loop and worker threads behind a lock: every
statement is short, and a transaction never spans an await.

The file (and SQLite's -wal and -shm beside it, which take its mode) is created 0600.
Every SQLite failure becomes a `StoreError` that says what an operator can do about it.
"""

from __future__ import annotations

import contextlib
import os
import sqlite3
import threading
import time
from collections.abc import Iterator, Sequence
from contextlib import contextmanager
from pathlib import Path
from typing import Any

import structlog

from ferryd.errors import (
    DatabaseCorruptError,
    DatabaseLockedError,
    StorageFullError,
    StoreError,
    StoreReadOnlyError,
)

DB_MODE = 0o600

log = structlog.get_logger("ferryd.store")

SCHEMA_VERSION = 3
# The first schema, as ferryd 1 wrote it: a new store starts from it and takes every
# migration below, so the path a store of an older ferryd takes is the one every store
# takes (and is tested on every run).
_SCHEMA_V1 = """
CREATE TABLE layers (
    chain_id        TEXT PRIMARY KEY,
    parent          TEXT REFERENCES layers(chain_id),
    diff_id         TEXT NOT NULL,
    blob_digest     TEXT NOT NULL,
    media_type      TEXT NOT NULL,
    compressed_size INTEGER NOT NULL,
    size            INTEGER NOT NULL,
    urls            TEXT,  -- JSON list: a foreign layer, described in manifests, never uploaded
    created         REAL NOT NULL
);
CREATE INDEX layers_by_blob ON layers(blob_digest);
CREATE TABLE images (
    id                TEXT PRIMARY KEY,
    top_layer         TEXT REFERENCES layers(chain_id),
    config_media_type TEXT NOT NULL,
    os                TEXT NOT NULL,
    architecture      TEXT NOT NULL,
    variant           TEXT,
    size              INTEGER NOT NULL,
    created           REAL NOT NULL
);
CREATE TABLE manifests (
    digest     TEXT PRIMARY KEY,
    image_id   TEXT NOT NULL REFERENCES images(id),
    media_type TEXT NOT NULL,
    size       INTEGER NOT NULL
);
CREATE TABLE refs (
    name       TEXT PRIMARY KEY,
    repository TEXT NOT NULL,
    tag        TEXT,
    digest     TEXT,
    image_id   TEXT NOT NULL REFERENCES images(id),
    created    REAL NOT NULL
);
CREATE INDEX refs_by_image ON refs(image_id);
CREATE TABLE v2metadata (
    diff_id    TEXT NOT NULL,
    digest     TEXT NOT NULL,
    registry   TEXT NOT NULL,
    repository TEXT NOT NULL,
    PRIMARY KEY (diff_id, digest, registry, repository)
);
"""
# Version N's step takes a store at version N - 1 to N, in the transaction that sets
# `user_version` to N: a store is at one version or the next, never between.
_MIGRATIONS: dict[int, str] = {
    # Image indexes (OCI indexes, Docker manifest lists) kept as themselves: the index
    # blob, one row per entry, and references that name an index. A store of version 1
    # has none: its references keep naming their image, and the next pull of a tag that
    # is an index records the index.
    2: """
CREATE TABLE indexes (
    digest     TEXT PRIMARY KEY,  -- the index blob, as the registry or archive gave it
    media_type TEXT NOT NULL,
    size       INTEGER NOT NULL,
    created    REAL NOT NULL
);
CREATE TABLE index_entries (
    index_digest TEXT NOT NULL REFERENCES indexes(digest) ON DELETE CASCADE,
    position     INTEGER NOT NULL,  -- the entry's place in the index
    digest       TEXT NOT NULL,  -- the child manifest: stored when a manifests row has it
    media_type   TEXT NOT NULL,
    size         INTEGER NOT NULL,
    kind         TEXT NOT NULL,  -- image, attestation, index, unknown
    os           TEXT,
    architecture TEXT,
    variant      TEXT,
    platform     TEXT,  -- the entry's whole platform as JSON (os.version, os.features)
    annotations  TEXT,  -- the entry's annotations as JSON
    PRIMARY KEY (index_digest, position)
);
CREATE INDEX index_entries_by_digest ON index_entries(digest);
ALTER TABLE refs ADD COLUMN index_digest TEXT REFERENCES indexes(digest);
CREATE INDEX refs_by_index ON refs(index_digest);
""",
    # Every compressed blob kept for a layer, not only the first: two manifests (two
    # platforms of an index, gzip and zstd entries) may name different blobs of one
    # DiffID, and a push or save sends each manifest's own. `layers.blob_digest` stays
    # the first one, which a push that keeps no manifest sends. A store of version 2 has
    # one blob per layer: the migration copies it.
    3: """
CREATE TABLE layer_blobs (
    chain_id        TEXT NOT NULL REFERENCES layers(chain_id) ON DELETE CASCADE,
    blob_digest     TEXT NOT NULL,
    media_type      TEXT NOT NULL,
    compressed_size INTEGER NOT NULL,
    created         REAL NOT NULL,
    PRIMARY KEY (chain_id, blob_digest)
);
CREATE INDEX layer_blobs_by_blob ON layer_blobs(blob_digest);
INSERT INTO layer_blobs
    SELECT chain_id, blob_digest, media_type, compressed_size, created FROM layers;
""",
}


class Database:
    def __init__(self, path: Path) -> None:
        self.path = path
        # SQLite would create it 0644; its -wal and -shm files copy its mode. When this
        # fails, sqlite3.connect says why, in its words.
        with contextlib.suppress(OSError):
            os.close(os.open(path, os.O_WRONLY | os.O_CREAT, DB_MODE))
        try:
            self._conn = sqlite3.connect(
                path, check_same_thread=False, isolation_level=None, timeout=30
            )
            self._conn.execute("PRAGMA journal_mode=WAL")
            self._conn.execute("PRAGMA synchronous=NORMAL")
            self._conn.execute("PRAGMA foreign_keys=ON")
            self._migrate()
        except sqlite3.Error as exc:
            raise self.error(exc, "opening") from None
        self._lock = threading.RLock()
        self._depth = 0

    def error(self, exc: sqlite3.Error, doing: str = "") -> StoreError:
        """What a SQLite failure means for the operator, as a `StoreError`."""
        return database_error(exc, self.path, doing)

    def _migrate(self) -> None:
        """Bring the database to `SCHEMA_VERSION`: a new one is created at version 1 and
        migrated like any store ferryd 1 left; each step commits on its own."""
        (version,) = self._conn.execute("PRAGMA user_version").fetchone()
        if version == SCHEMA_VERSION:
            return
        if version > SCHEMA_VERSION:
            raise StoreError(
                f"database schema version {version} is newer than this ferryd's "
                f"({SCHEMA_VERSION}): this store was written by a newer version of ferryd; "
                "run that version (ferryd never downgrades a store)"
            )
        if version == 0:
            self._conn.executescript(f"BEGIN; {_SCHEMA_V1} PRAGMA user_version = 1; COMMIT;")
            created, version = True, 1
        else:
            created = False
        started = version
        while version < SCHEMA_VERSION:
            version += 1
            self._conn.executescript(
                f"BEGIN; {_MIGRATIONS[version]} PRAGMA user_version = {version}; COMMIT;"
            )
        if not created:
            log.info(
                "store.migrated", path=str(self.path), from_version=started, to_version=version
            )

    @contextmanager
    def transaction(self) -> Iterator[None]:
        """All statements inside commit together or not at all (nesting joins the outer)."""
        with self._lock:
            if self._depth:
                self._depth += 1
                try:
                    yield
                finally:
                    self._depth -= 1
                return
            try:
                self._conn.execute("BEGIN IMMEDIATE")
            except sqlite3.Error as exc:
                raise self.error(exc) from None
            self._depth = 1
            started = time.monotonic()
            try:
                yield
            except BaseException:
                self._rollback()
                log.debug("store.transaction", outcome="rolled back", seconds=_since(started))
                raise
            else:
                try:
                    self._conn.execute("COMMIT")
                except sqlite3.Error as exc:
                    # SQLite may already have rolled back (a full disk does that).
                    self._rollback()
                    raise self.error(exc) from None
                log.debug("store.transaction", outcome="committed", seconds=_since(started))
            finally:
                self._depth = 0

    @contextmanager
    def snapshot(self) -> Iterator[None]:
        """The reads inside see one state of the database: this connection is the
        store's only one, and no other thread's statement runs until the block ends."""
        with self._lock:
            yield

    def _rollback(self) -> None:
        if self._conn.in_transaction:
            # The error that brought us here is the one to report.
            with contextlib.suppress(sqlite3.Error):
                self._conn.execute("ROLLBACK")

    def execute(self, sql: str, params: Sequence[Any] = ()) -> None:
        with self._lock:
            try:
                self._conn.execute(sql, params)
            except sqlite3.Error as exc:
                raise self.error(exc) from None

    def one(self, sql: str, params: Sequence[Any] = ()) -> sqlite3.Row | None:
        with self._lock:
            try:
                cursor = self._conn.execute(sql, params)
                cursor.row_factory = sqlite3.Row
                row: sqlite3.Row | None = cursor.fetchone()
            except sqlite3.Error as exc:
                raise self.error(exc) from None
            return row

    def all(self, sql: str, params: Sequence[Any] = ()) -> list[sqlite3.Row]:
        with self._lock:
            try:
                cursor = self._conn.execute(sql, params)
                cursor.row_factory = sqlite3.Row
                return cursor.fetchall()
            except sqlite3.Error as exc:
                raise self.error(exc) from None

    def close(self) -> None:
        # Closing only checkpoints the WAL; what it could not write is replayed next time.
        with self._lock, contextlib.suppress(sqlite3.Error):
            self._conn.close()


def database_error(exc: sqlite3.Error, path: Path, doing: str = "") -> StoreError:
    """Turn a SQLite failure on the database at `path` into the `StoreError` an operator
    can act on: disk full, corrupt, locked, read-only, or another failure named as such."""
    root = path.parent
    code = getattr(exc, "sqlite_errorcode", 0) & 0xFF
    if code == sqlite3.SQLITE_FULL or (code == sqlite3.SQLITE_IOERR and _no_space(root)):
        return StorageFullError(
            f"disk full: the store's database {path} cannot be written ({exc}); "
            f"free space under {root} (`ferryd rmi` removes images)"
        )
    if code in (sqlite3.SQLITE_CORRUPT, sqlite3.SQLITE_NOTADB):
        return DatabaseCorruptError(
            f"the store's database {path} is corrupt ({exc}): stop ferryd, move ferryd.db "
            f"(with ferryd.db-wal and ferryd.db-shm) out of {root} and start ferryd again; "
            "it starts with an empty database, removes the blobs it no longer knows, and "
            "images must be pulled again"
        )
    if code in (sqlite3.SQLITE_BUSY, sqlite3.SQLITE_LOCKED):
        return DatabaseLockedError(
            f"the store's database {path} is locked by another process ({exc}): only one "
            f"ferryd may use {root}; stop whatever else has ferryd.db open"
        )
    if code in (sqlite3.SQLITE_READONLY, sqlite3.SQLITE_PERM, sqlite3.SQLITE_CANTOPEN):
        return StoreReadOnlyError(
            f"the store's database {path} cannot be written ({exc}): the daemon must be "
            f"able to write {root} (check its owner and mode, and that the filesystem is "
            "mounted read-write)"
        )
    doing = f"{doing} " if doing else ""
    if code == sqlite3.SQLITE_IOERR:
        return StoreError(
            f"{doing}the store's database {path} failed: {exc}; the disk under {root} "
            "may be failing (see the kernel log)"
        )
    return StoreError(f"{doing}the store's database {path} failed: {exc}")


def _no_space(directory: Path) -> bool:
    """SQLite reports a full disk while it maps its -shm file as an I/O error."""
    try:
        stats = os.statvfs(directory)
    except OSError:
        return False
    return stats.f_bavail * stats.f_frsize < 64 * 1024


def _since(started: float) -> float:
    return round(time.monotonic() - started, 4)
