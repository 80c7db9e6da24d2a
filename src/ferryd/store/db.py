"""The SQLite database (WAL) for layers, images, references and V2 metadata.

One connection shared by the event loop and worker threads behind a lock: every
statement is short, and a transaction never spans an await.
"""

from __future__ import annotations

import sqlite3
import threading
from collections.abc import Iterator, Sequence
from contextlib import contextmanager
from pathlib import Path
from typing import Any

from ferryd.errors import StoreError

SCHEMA_VERSION = 1
_SCHEMA = """
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


class Database:
    def __init__(self, path: Path) -> None:
        try:
            self._conn = sqlite3.connect(
                path, check_same_thread=False, isolation_level=None, timeout=30
            )
            self._conn.execute("PRAGMA journal_mode=WAL")
            self._conn.execute("PRAGMA synchronous=NORMAL")
            self._conn.execute("PRAGMA foreign_keys=ON")
            self._migrate()
        except sqlite3.Error as exc:
            raise StoreError(f"cannot open database {path}: {exc}") from None
        self._lock = threading.RLock()
        self._depth = 0

    def _migrate(self) -> None:
        (version,) = self._conn.execute("PRAGMA user_version").fetchone()
        if version == SCHEMA_VERSION:
            return
        if version != 0:
            raise StoreError(
                f"database schema version {version} is not {SCHEMA_VERSION}: "
                "this store was written by another version of ferryd"
            )
        self._conn.executescript(
            f"BEGIN; {_SCHEMA} PRAGMA user_version = {SCHEMA_VERSION}; COMMIT;"
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
            self._conn.execute("BEGIN IMMEDIATE")
            self._depth = 1
            try:
                yield
            except BaseException:
                self._conn.execute("ROLLBACK")
                raise
            else:
                self._conn.execute("COMMIT")
            finally:
                self._depth = 0

    def execute(self, sql: str, params: Sequence[Any] = ()) -> None:
        with self._lock:
            self._conn.execute(sql, params)

    def one(self, sql: str, params: Sequence[Any] = ()) -> sqlite3.Row | None:
        with self._lock:
            cursor = self._conn.execute(sql, params)
            cursor.row_factory = sqlite3.Row
            row: sqlite3.Row | None = cursor.fetchone()
            return row

    def all(self, sql: str, params: Sequence[Any] = ()) -> list[sqlite3.Row]:
        with self._lock:
            cursor = self._conn.execute(sql, params)
            cursor.row_factory = sqlite3.Row
            return cursor.fetchall()

    def close(self) -> None:
        with self._lock:
            self._conn.close()
