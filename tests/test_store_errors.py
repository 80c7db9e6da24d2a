"""Broken storage says what it is and what to do: SQLite's failures and the disk's
refusals become StoreError subclasses with messages an operator can act on."""

from __future__ import annotations

import sqlite3
from collections.abc import Iterator
from pathlib import Path

import pytest

from ferryd.codec import LayerSink
from ferryd.errors import (
    DatabaseCorruptError,
    DatabaseLockedError,
    StorageFullError,
    StoreError,
    StoreReadOnlyError,
)
from ferryd.oci.digest import Digest, sha256_digest
from ferryd.oci.reference import parse_reference
from ferryd.store import Store
from ferryd.store.db import database_error
from support.tmpfs import fill, mounted_tmpfs, remount


@pytest.fixture
def disk(tmp_path: Path) -> Iterator[Path]:
    with mounted_tmpfs(tmp_path / "disk", "4m") as mount:
        yield mount


def sqlite_failure(code: int, message: str) -> sqlite3.OperationalError:
    exc = sqlite3.OperationalError(message)
    exc.sqlite_errorcode = code
    return exc


def test_a_corrupt_database_is_refused_saying_to_move_it_aside(tmp_path: Path) -> None:
    root = tmp_path / "root"
    root.mkdir()
    (root / "ferryd.db").write_bytes(b"this is not a database at all, not a page of it" * 100)

    with pytest.raises(DatabaseCorruptError) as refused:
        Store(root)

    message = str(refused.value)
    assert "is corrupt" in message
    assert "move ferryd.db" in message
    assert str(root) in message


@pytest.mark.parametrize(
    ("code", "kind", "says"),
    [
        (sqlite3.SQLITE_FULL, StorageFullError, "disk full"),
        (sqlite3.SQLITE_CORRUPT, DatabaseCorruptError, "move ferryd.db"),
        (sqlite3.SQLITE_NOTADB, DatabaseCorruptError, "move ferryd.db"),
        (sqlite3.SQLITE_BUSY, DatabaseLockedError, "only one ferryd may use"),
        (sqlite3.SQLITE_LOCKED, DatabaseLockedError, "only one ferryd may use"),
        (sqlite3.SQLITE_READONLY, StoreReadOnlyError, "mounted read-write"),
        (sqlite3.SQLITE_IOERR, StoreError, "may be failing"),
    ],
)
def test_each_sqlite_failure_is_a_store_error_that_says_what_to_do(
    tmp_path: Path, code: int, kind: type[StoreError], says: str
) -> None:
    error = database_error(sqlite_failure(code, "what sqlite said"), tmp_path / "ferryd.db")

    assert type(error) is kind
    assert says in str(error)
    assert "what sqlite said" in str(error)
    assert not error.retryable


def test_a_store_on_a_read_only_filesystem_is_refused_naming_the_fix(disk: Path) -> None:
    root = disk / "root"
    Store(root).close()
    remount(disk, "ro")

    with pytest.raises(StoreReadOnlyError) as refused:
        Store(root)

    assert "mounted read-write" in str(refused.value)


def test_a_database_write_on_a_full_disk_is_storage_full_and_changes_nothing(
    disk: Path,
) -> None:
    store = Store(disk / "root")
    try:
        filler = fill(disk)
        image = Digest("sha256:" + "a" * 64)
        store.db.execute("PRAGMA foreign_keys=OFF")

        def tag_many() -> None:
            with store.db.transaction():
                for n in range(5000):
                    store.references.add(parse_reference(f"example.com/app:{n}"), image)

        with pytest.raises(StorageFullError) as refused:
            tag_many()

        assert f"free space under {disk / 'root'}" in str(refused.value)
        filler.unlink()
        assert store.references.tags_of(parse_reference("example.com/app:0")) == []
    finally:
        store.close()


def test_a_blob_put_on_a_full_disk_is_storage_full_and_leaves_no_temp_file(disk: Path) -> None:
    store = Store(disk / "root")
    try:
        fill(disk)
        data = b"{" + b"x" * 100_000 + b"}"

        with pytest.raises(StorageFullError) as refused:
            store.blobs.put(data)

        assert "no space left on device" in str(refused.value)
        assert str(store.blobs.path(sha256_digest(data))) in str(refused.value)
        assert not store.blobs.has(sha256_digest(data))
        assert list((disk / "root" / "blobs" / "sha256").iterdir()) == []
    finally:
        store.close()


def test_a_layer_write_on_a_full_disk_keeps_what_reached_the_file_for_a_resume(
    disk: Path,
) -> None:
    data = bytes(range(256)) * 24 * 1024  # 6 MiB: more than the disk holds
    partial = disk / "partial" / "layer"
    sink = LayerSink(partial, sha256_digest(data), diff_id=False)
    sink.open()

    def write_all() -> None:
        for start in range(0, len(data), 1 << 20):
            sink.store(data[start : start + (1 << 20)])

    with pytest.raises(StorageFullError) as refused:
        write_all()

    assert "no space left on device" in str(refused.value)
    assert str(partial) in str(refused.value)
    written = sink.offset
    sink.close()
    assert partial.stat().st_size == written > 0
    # Read back, the file resumes where the hash left off.
    sink = LayerSink(partial, sha256_digest(data), diff_id=False)
    assert sink.open() == written
    remount(disk, "size=16m")
    sink.store(data[written:])
    assert sink.finish() is None
    sink.close()
