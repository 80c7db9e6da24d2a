"""The store's schema migration: a store ferryd 1 wrote (schema version 1, before indexes
were kept) opens with this ferryd, is migrated once to the current version, and everything in it
still resolves, lists, pushes and checks clean; a store of a newer ferryd is refused.

A version-1 store is made two ways: rows written by hand into the version-1 schema as
ferryd 1 created it (frozen here, as it was), and a store a real pull made, copied row
for row into that schema, as ferryd 1 would have left it.
"""

from __future__ import annotations

import json
import sqlite3
from collections.abc import Callable
from pathlib import Path

import pytest
import structlog

from ferryd.errors import StoreError
from ferryd.oci.digest import Digest, sha256_digest
from ferryd.oci.reference import parse_reference
from ferryd.store import Store
from ferryd.store.db import SCHEMA_VERSION
from ferryd.store.fsck import check
from support.daemon import Daemon, errors
from support.images import LayerSpec, PlatformSpec, build_index, seed, skopeo_inspect_raw
from support.registry import Registry

# ferryd 1's schema (store/db.py at schema version 1), as it created every store.
SCHEMA_V1 = """
CREATE TABLE layers (
    chain_id        TEXT PRIMARY KEY,
    parent          TEXT REFERENCES layers(chain_id),
    diff_id         TEXT NOT NULL,
    blob_digest     TEXT NOT NULL,
    media_type      TEXT NOT NULL,
    compressed_size INTEGER NOT NULL,
    size            INTEGER NOT NULL,
    urls            TEXT,
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
V1_COLUMNS = {
    "layers": 9,
    "images": 8,
    "manifests": 4,
    "refs": 6,
    "v2metadata": 4,
}
OCI_CONFIG = "application/vnd.oci.image.config.v1+json"
OCI_MANIFEST = "application/vnd.oci.image.manifest.v1+json"
GZIP_LAYER = "application/vnd.oci.image.layer.v1.tar+gzip"


def version_1_database(path: Path) -> sqlite3.Connection:
    db = sqlite3.connect(path)
    db.executescript(f"BEGIN; {SCHEMA_V1} PRAGMA user_version = 1; COMMIT;")
    return db


def user_version(path: Path) -> int:
    with sqlite3.connect(path) as db:
        (version,) = db.execute("PRAGMA user_version").fetchone()
    return int(version)


def write_blob(root: Path, data: bytes) -> Digest:
    digest = sha256_digest(data)
    path = root / "blobs" / "sha256" / digest.removeprefix("sha256:")
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_bytes(data)
    return digest


def ferryd_1_store(root: Path) -> tuple[Digest, Digest]:
    """A store as ferryd 1 left it after pulling one image from an index: one layer, the
    image, its platform's manifest, a tag and the repository's digest reference to the
    index (whose bytes ferryd 1 did not keep). Returns (image ID, index digest)."""
    root.mkdir(parents=True)
    layer = b"layer bytes: the store does not look inside"
    diff_id = sha256_digest(b"the uncompressed tar")
    blob = write_blob(root, layer)
    config = json.dumps(
        {
            "architecture": "amd64",
            "os": "linux",
            "rootfs": {"type": "layers", "diff_ids": [diff_id]},
        }
    ).encode()
    image_id = write_blob(root, config)
    manifest = json.dumps(
        {
            "schemaVersion": 2,
            "mediaType": OCI_MANIFEST,
            "config": {"mediaType": OCI_CONFIG, "digest": image_id, "size": len(config)},
            "layers": [{"mediaType": GZIP_LAYER, "digest": blob, "size": len(layer)}],
        }
    ).encode()
    manifest_digest = write_blob(root, manifest)
    index_digest = sha256_digest(b"an index ferryd 1 read and did not keep")
    db = version_1_database(root / "ferryd.db")
    with db:
        db.execute(
            "INSERT INTO layers VALUES (?, NULL, ?, ?, ?, ?, ?, NULL, 0)",
            (diff_id, diff_id, blob, GZIP_LAYER, len(layer), 20),
        )
        db.execute(
            "INSERT INTO images VALUES (?, ?, ?, 'linux', 'amd64', NULL, 20, 0)",
            (image_id, diff_id, OCI_CONFIG),
        )
        db.execute(
            "INSERT INTO manifests VALUES (?, ?, ?, ?)",
            (manifest_digest, image_id, OCI_MANIFEST, len(manifest)),
        )
        db.execute(
            "INSERT INTO refs VALUES ('reg.example/team/app:1', 'reg.example/team/app', '1', "
            "NULL, ?, 0)",
            (image_id,),
        )
        db.execute(
            "INSERT INTO refs VALUES (?, 'reg.example/team/app', NULL, ?, ?, 0)",
            (f"reg.example/team/app@{index_digest}", index_digest, image_id),
        )
        db.execute(
            "INSERT INTO v2metadata VALUES (?, ?, 'reg.example', 'team/app')", (diff_id, blob)
        )
    db.close()
    return image_id, index_digest


def test_a_store_ferryd_1_wrote_is_migrated_and_everything_in_it_still_resolves(
    tmp_path: Path,
) -> None:
    root = tmp_path / "root"
    image_id, index_digest = ferryd_1_store(root)

    with structlog.testing.capture_logs() as logs:
        store = Store(root)
    try:
        tag = parse_reference("reg.example/team/app:1")
        by_digest = parse_reference(f"reg.example/team/app@{index_digest}")
        assert user_version(root / "ferryd.db") == SCHEMA_VERSION == 3
        assert store.resolve("reg.example/team/app:1") == image_id
        assert store.resolve(f"reg.example/team/app@{index_digest}") == image_id
        assert store.resolve(image_id[7:19]) == image_id
        # Its references name their image, no index: ferryd 1 kept none.
        assert store.references.target(tag) is not None
        assert store.references.target(tag).index is None  # type: ignore[union-attr]
        assert store.references.target(by_digest).index is None  # type: ignore[union-attr]
        assert [str(r) for r in store.references.for_image(image_id)] == [
            "reg.example/team/app:1",
            f"reg.example/team/app@{index_digest}",
        ]
        assert store.indexes.digests() == set()
        assert len(store.manifests.for_image(image_id)) == 1
        assert check(store).problems == []
    finally:
        store.close()
    migrated = [log for log in logs if log["event"] == "store.migrated"]
    assert migrated == [
        {
            "event": "store.migrated",
            "log_level": "info",
            "path": str(root / "ferryd.db"),
            "from_version": 1,
            "to_version": 3,
        }
    ]


def test_a_migrated_store_opens_again_without_migrating(tmp_path: Path) -> None:
    root = tmp_path / "root"
    ferryd_1_store(root)
    Store(root).close()

    with structlog.testing.capture_logs() as logs:
        store = Store(root)
    store.close()

    assert [log for log in logs if log["event"] == "store.migrated"] == []
    assert user_version(root / "ferryd.db") == 3


def test_a_new_store_takes_the_same_migration_path_and_says_nothing(tmp_path: Path) -> None:
    with structlog.testing.capture_logs() as logs:
        store = Store(tmp_path / "root")
    store.close()

    with sqlite3.connect(tmp_path / "root" / "ferryd.db") as db:
        tables = {row[0] for row in db.execute("SELECT name FROM sqlite_master")}
        columns = [row[1] for row in db.execute("PRAGMA table_info(refs)")]
    assert {"indexes", "index_entries", "refs", "images", "layers"} <= tables
    assert columns[-1] == "index_digest"
    assert logs == []


def schema_of(path: Path) -> dict[str, list[tuple[object, ...]]]:
    """Every table's and index's columns, foreign keys and indexes (not their SQL text,
    whose comments and spacing may differ)."""
    with sqlite3.connect(path) as db:
        objects = db.execute("SELECT type, name FROM sqlite_master ORDER BY name").fetchall()
        shape: dict[str, list[tuple[object, ...]]] = {}
        for kind, name in objects:
            if kind == "table":
                shape[name] = [
                    *db.execute(f"PRAGMA table_info({name})"),
                    *db.execute(f"PRAGMA foreign_key_list({name})"),
                    *db.execute(f"PRAGMA index_list({name})"),
                ]
            elif kind == "index":
                shape[name] = db.execute(f"PRAGMA index_info({name})").fetchall()
    return shape


def test_a_new_store_and_a_migrated_store_of_ferryd_1_have_the_same_schema(
    tmp_path: Path,
) -> None:
    # A new store starts from the version-1 schema in store/db.py: were that edited
    # instead of a migration added, new stores would differ from migrated ones.
    Store(tmp_path / "new").close()
    (tmp_path / "old").mkdir()
    version_1_database(tmp_path / "old" / "ferryd.db").close()
    Store(tmp_path / "old").close()

    assert schema_of(tmp_path / "new" / "ferryd.db") == schema_of(tmp_path / "old" / "ferryd.db")


def test_a_store_of_a_newer_ferryd_is_refused_and_left_as_it_is(tmp_path: Path) -> None:
    root = tmp_path / "root"
    root.mkdir()
    with sqlite3.connect(root / "ferryd.db") as db:
        db.execute("PRAGMA user_version = 4")

    with pytest.raises(StoreError, match="schema version 4 is newer than this ferryd's"):
        Store(root)

    assert user_version(root / "ferryd.db") == 4


def as_ferryd_1(root: Path) -> None:
    """Rewrite the store's database as ferryd 1 would have it: the version-1 schema,
    each row of its tables (the columns ferryd 1 had), no index."""
    path = root / "ferryd.db"
    with sqlite3.connect(path) as current:
        rows = {
            table: current.execute(
                f"SELECT * FROM {table}"  # the table names are ours
            ).fetchall()
            for table in V1_COLUMNS
        }
    for suffix in ("", "-wal", "-shm"):
        Path(f"{path}{suffix}").unlink(missing_ok=True)
    db = version_1_database(path)
    with db:
        for table, count in V1_COLUMNS.items():
            marks = ", ".join("?" * count)
            db.executemany(
                f"INSERT INTO {table} VALUES ({marks})",
                [row[:count] for row in rows[table]],
            )
    db.close()
    (root / "ferryd.db").chmod(0o600)


def test_a_daemon_on_a_store_ferryd_1_made_serves_it_and_the_next_pull_keeps_the_index(
    registry: Registry,
    other_registry: Registry,
    start_daemon: Callable[..., Daemon],
    layout: Path,
) -> None:
    index = build_index(
        layout,
        [
            PlatformSpec([LayerSpec(size=20_000, seed=9601)], architecture="amd64"),
            PlatformSpec([LayerSpec(size=20_000, seed=9602)], architecture="arm64"),
        ],
    )
    seed(registry, layout, "latest", "migrate/app:v1")
    ref = f"{registry.host}/migrate/app:v1"
    first = start_daemon(default_platform="linux/amd64")
    assert errors(first.pull(ref)) == []
    first.stop()
    as_ferryd_1(first.root)
    amd64 = index.image("amd64")

    second = start_daemon(root=str(first.root), default_platform="linux/amd64")
    listed = second.images()
    inspected = second.inspect(ref)
    second.client().request(
        "POST", f"/images/{ref}/tag", {"repo": f"{other_registry.host}/ops/app", "tag": "v1"}
    ).read()
    pushed = list(
        second.client().stream("POST", f"/images/{other_registry.host}/ops/app/push", {"tag": "v1"})
    )
    fsck = json.loads(second.client().request("POST", "/fsck").read())
    pulled_again = second.pull(ref)

    [migrated] = second.log_events("store.migrated")
    assert (migrated["from_version"], migrated["to_version"]) == (1, 3)
    assert [row["Id"] for row in listed] == [amd64.config_digest]
    assert listed[0]["RepoTags"] == [ref]
    assert "Descriptor" not in inspected  # ferryd 1 kept no index
    assert errors(pushed) == []
    assert skopeo_inspect_raw(other_registry, "ops/app:v1") == amd64.manifest
    assert fsck["Problems"] == []
    assert errors(pulled_again) == []
    # The pull of the same tag records the index it goes through; the tag names it.
    inspected = second.inspect(ref)
    assert inspected["Id"] == amd64.config_digest
    assert inspected["Descriptor"]["digest"] == index.digest
    assert [m["Available"] for m in inspected["Manifests"]] == [True, False]
