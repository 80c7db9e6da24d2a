"""`ferryd fsck`: with the daemon stopped (`--root`) or through it (`POST /fsck`), every
blob, layer, image, manifest and reference is checked, leftovers are found, and
`--repair` removes what is broken or unreferenced, and nothing else."""

from __future__ import annotations

import json
import sqlite3
import threading
from collections.abc import Callable
from pathlib import Path
from typing import Any

import pytest

from ferryd.cli.commands import main
from ferryd.oci.digest import chain_ids
from support.daemon import Daemon, errors
from support.images import BuiltImage, LayerSpec, build_image, seed
from support.registry import Registry
from support.throttle import throttled
from support.waiting import wait_until

pytestmark = pytest.mark.registry


def fsck(capsys: pytest.CaptureFixture[str], *args: str) -> tuple[int, list[str], str]:
    """Run `ferryd ARGS…` in this process: exit status, stdout lines, stderr."""
    status = main(list(args))
    out, err = capsys.readouterr()
    return status, out.splitlines(), err


def blob_path(root: Path, digest: str) -> Path:
    return root / "blobs" / "sha256" / digest.removeprefix("sha256:")


def pulled(
    registry: Registry, start_daemon: Callable[..., Daemon], layout: Path, name: str, base: int
) -> tuple[Daemon, BuiltImage]:
    """A stopped daemon whose store holds one pulled two-layer image, tagged `name`."""
    built = build_image(
        layout, layers=[LayerSpec(size=50_000, seed=base), LayerSpec(size=30_000, seed=base + 1)]
    )
    seed(registry, layout, "latest", name)
    daemon = start_daemon()
    assert errors(daemon.pull(f"{registry.host}/{name}")) == []
    daemon.stop()
    return daemon, built


def sql(root: Path, statement: str, params: tuple[object, ...] = ()) -> None:
    with sqlite3.connect(root / "ferryd.db") as db:
        db.execute("PRAGMA foreign_keys=OFF")
        db.execute(statement, params)


def test_a_store_a_pull_made_is_clean(
    registry: Registry,
    start_daemon: Callable[..., Daemon],
    layout: Path,
    capsys: pytest.CaptureFixture[str],
) -> None:
    daemon, _ = pulled(registry, start_daemon, layout, "fsck/clean:v1", 9300)

    status, out, err = fsck(capsys, "fsck", "--root", str(daemon.root))

    assert (status, err) == (0, "")
    assert out == [out[-1]]
    assert out[-1].startswith(
        "fsck: checked 4 blobs, 2 layers, 1 image, 1 manifest, 0 indexes, 2 references in "
    )
    assert out[-1].endswith(": clean")


def test_layers_no_image_uses_are_information_not_a_problem(
    registry: Registry,
    start_daemon: Callable[..., Daemon],
    layout: Path,
    capsys: pytest.CaptureFixture[str],
) -> None:
    daemon, built = pulled(registry, start_daemon, layout, "fsck/cache:v1", 9310)
    # As a pull that failed once its layers were in: layers, and no image on them.
    sql(daemon.root, "DELETE FROM refs")
    sql(daemon.root, "DELETE FROM manifests")
    sql(daemon.root, "DELETE FROM images")
    blob_path(daemon.root, built.config_digest).unlink()
    blob_path(daemon.root, built.manifest_digest).unlink()

    status, out, _ = fsck(capsys, "fsck", "--root", str(daemon.root), "--repair")

    assert status == 0
    assert "info: 2 layers no image uses" in out[0]
    assert out[-1].endswith(": clean")
    assert all(blob_path(daemon.root, layer.digest).exists() for layer in built.layers)


def test_a_corrupt_layer_blob_is_found_and_repair_removes_it_with_all_that_needs_it(
    registry: Registry,
    start_daemon: Callable[..., Daemon],
    layout: Path,
    capsys: pytest.CaptureFixture[str],
) -> None:
    daemon, built = pulled(registry, start_daemon, layout, "fsck/corrupt:v1", 9320)
    base, top = built.layers
    base_chain, top_chain = chain_ids(built.diff_ids)  # type: ignore[arg-type]
    damaged = blob_path(daemon.root, base.digest)
    data = bytearray(damaged.read_bytes())
    data[100] ^= 0xFF
    damaged.write_bytes(bytes(data))

    status, out, _ = fsck(capsys, "fsck", "--root", str(daemon.root))

    assert status == 1
    text = "\n".join(out)
    assert f"corrupt-blob: blob {base.digest} is corrupt: its content hashes to sha256:" in text
    assert f"broken-layer: layer {base_chain}: its blob {base.digest} is corrupt" in out
    assert f"broken-layer: layer {top_chain}: it stands on broken layer {base_chain}" in out
    assert f"broken-image: image {built.config_digest}: its top layer {top_chain} is broken" in out
    assert out[-1].endswith(": 4 problems")

    status, out, _ = fsck(capsys, "fsck", "--root", str(daemon.root), "--repair")

    assert status == 1
    removed = {line for line in out if line.startswith("removed ")}
    assert removed == {
        f"removed reference {registry.host}/fsck/corrupt:v1",
        f"removed reference {registry.host}/fsck/corrupt@{built.manifest_digest}",
        f"removed manifest {built.manifest_digest}",
        f"removed image {built.config_digest}",
        f"removed layer {base_chain}",
        f"removed layer {top_chain}",
        f"removed blob {base.digest}",
        f"removed blob {top.digest}",
        f"removed blob {built.config_digest}",
        f"removed blob {built.manifest_digest}",
    }
    assert fsck(capsys, "fsck", "--root", str(daemon.root))[0] == 0

    daemon.start()
    assert errors(daemon.pull(f"{registry.host}/fsck/corrupt:v1")) == []
    daemon.stop()
    assert fsck(capsys, "fsck", "--root", str(daemon.root))[0] == 0


def test_rows_that_do_not_add_up_are_each_a_problem(
    registry: Registry,
    start_daemon: Callable[..., Daemon],
    layout: Path,
    capsys: pytest.CaptureFixture[str],
) -> None:
    daemon, built = pulled(registry, start_daemon, layout, "fsck/rows:v1", 9330)
    root = daemon.root
    ghost = "sha256:" + "0" * 64
    sql(
        root,
        "INSERT INTO refs (name, repository, tag, digest, image_id, created) "
        "VALUES ('x.io/ghost:1', 'x.io/ghost', '1', NULL, ?, 0)",
        (ghost,),
    )
    base_chain = chain_ids(built.diff_ids[:1])[0]  # type: ignore[arg-type]
    wrong = "sha256:" + "1" * 64
    sql(
        root,
        "INSERT INTO layers SELECT ?, ?, diff_id, blob_digest, media_type, compressed_size, "
        "size, urls, created FROM layers WHERE chain_id = ?",
        (wrong, base_chain, base_chain),
    )
    blob_path(root, built.manifest_digest).unlink()

    status, out, _ = fsck(capsys, "fsck", "--root", str(root))

    assert status == 1
    text = "\n".join(out)
    assert f"dangling-reference: reference x.io/ghost:1: its image {ghost} is not in" in text
    assert f"broken-layer: layer {wrong}: its parent and DiffID give the ChainID" in text
    assert f"missing-blob: blob {built.manifest_digest} is missing" in text
    assert f"broken-manifest: manifest {built.manifest_digest} of {built.config_digest}" in text

    fsck(capsys, "fsck", "--root", str(root), "--repair")

    assert fsck(capsys, "fsck", "--root", str(root))[0] == 0
    daemon.start()
    assert daemon.inspect(f"{registry.host}/fsck/rows:v1")["Id"] == built.config_digest
    daemon.stop()


def test_leftovers_are_problems_and_repair_removes_them_and_nothing_else(
    registry: Registry,
    start_daemon: Callable[..., Daemon],
    layout: Path,
    capsys: pytest.CaptureFixture[str],
) -> None:
    daemon, built = pulled(registry, start_daemon, layout, "fsck/leftovers:v1", 9340)
    root = daemon.root
    kept = sorted(p for p in root.rglob("*") if p.is_file() and p.name != "reserve")
    orphan = blob_path(root, "sha256:" + "2" * 64)
    orphan.write_bytes(b"nobody's")
    temp = root / "blobs" / "sha256" / ".tmp-x1y2"
    temp.write_bytes(b"half")
    duplicate = root / "partial" / ("sha256-" + built.layers[0].digest[7:])
    duplicate.write_bytes(b"\x1f\x8b")
    resumable = root / "partial" / ("sha256-" + "3" * 64)
    resumable.write_bytes(b"\x1f\x8b")
    stray = root / "blobs" / "sha256" / "notes.txt"
    stray.write_text("mine")

    status, out, _ = fsck(capsys, "fsck", "--root", str(root))

    assert status == 1
    kinds = sorted(line.partition(":")[0] for line in out[:-1])
    assert kinds == ["orphan-blob", "stored-partial", "stray-file", "temp-file"]

    status, out, _ = fsck(capsys, "fsck", "--root", str(root), "--repair")

    assert sorted(line for line in out if line.startswith("removed ")) == sorted(
        [
            f"removed blob sha256:{'2' * 64}",
            f"removed file {temp}",
            f"removed file {duplicate}",
            f"removed file {stray}",
        ]
    )
    assert resumable.exists()
    assert all(path.exists() for path in kept)
    assert fsck(capsys, "fsck", "--root", str(root))[0] == 0


def test_fsck_on_a_store_a_running_daemon_holds_says_to_ask_the_daemon(
    start_daemon: Callable[..., Daemon], capsys: pytest.CaptureFixture[str]
) -> None:
    daemon = start_daemon()

    status, out, err = fsck(capsys, "fsck", "--root", str(daemon.root), "--repair")

    assert (status, out) == (2, [])
    assert f"the store in {daemon.root} is in use by a running ferryd daemon" in err
    assert "`ferryd fsck --repair` without --root" in err


def test_fsck_of_a_directory_without_a_store_is_refused(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    status, _, err = fsck(capsys, "fsck", "--root", str(tmp_path))

    assert status == 2
    assert f"there is no store in {tmp_path}" in err
    assert not (tmp_path / "ferryd.db").exists()


def test_fsck_through_the_daemon_checks_and_repairs_the_store_it_has_open(
    registry: Registry,
    start_daemon: Callable[..., Daemon],
    layout: Path,
    capsys: pytest.CaptureFixture[str],
) -> None:
    daemon, built = pulled(registry, start_daemon, layout, "fsck/daemon:v1", 9350)
    daemon.start()
    damaged = blob_path(daemon.root, built.config_digest)
    damaged.write_bytes(damaged.read_bytes() + b" ")

    status, out, _ = fsck(capsys, "-H", daemon.host, "fsck")

    assert status == 1
    assert f"broken-image: image {built.config_digest}: its config blob is corrupt" in out

    status, out, _ = fsck(capsys, "-H", daemon.host, "fsck", "--repair")

    assert status == 1
    assert f"removed image {built.config_digest}" in out
    assert daemon.images() == []
    assert fsck(capsys, "-H", daemon.host, "fsck")[0] == 0
    [logged, *_] = daemon.log_events("store.fsck")
    assert (logged["repair"], logged["problems"]) == (False, 2)


def test_fsck_through_the_api_reads_repair_as_dockerd_reads_its_booleans(
    registry: Registry, start_daemon: Callable[..., Daemon], layout: Path
) -> None:
    daemon, built = pulled(registry, start_daemon, layout, "fsck/flag:v1", 9351)
    daemon.start()
    damaged = blob_path(daemon.root, built.config_digest)
    damaged.write_bytes(damaged.read_bytes() + b" ")

    def fsck_api(repair: str) -> dict[str, Any]:
        answer = daemon.client().request("POST", "/fsck", {"repair": repair}).read()
        return json.loads(answer)  # type: ignore[no-any-return]

    assert fsck_api("no")["Removed"] == []
    assert daemon.images() != []
    assert fsck_api("yes")["Removed"]
    assert daemon.images() == []


def test_fsck_through_the_daemon_leaves_alone_what_a_running_pull_is_making(
    registry: Registry, start_daemon: Callable[..., Daemon], layout: Path
) -> None:
    built = build_image(
        layout,
        layers=[
            LayerSpec(size=6_000_000, seed=9360, compression="none"),
            LayerSpec(size=20_000, seed=9361),
        ],
    )
    seed(registry, layout, "latest", "fsck/running:v1")
    daemon = start_daemon()
    small = built.layers[1].digest
    with throttled(registry.host, 4_000_000) as proxy:
        ref = f"{proxy.host}/fsck/running:v1"
        result: list[list[dict[str, object]]] = []
        puller = threading.Thread(target=lambda: result.append(daemon.pull(ref)))
        puller.start()
        # The small top layer is stored first and waits, pinned, for the big one below.
        wait_until(lambda: blob_path(daemon.root, small).exists(), what="the small layer")
        reports = []
        while puller.is_alive():
            answer = daemon.client().request("POST", "/fsck", {"repair": "1"}).read()
            reports.append(json.loads(answer))
        puller.join()

    [messages] = result
    assert errors(messages) == []
    assert reports
    bad = [r for r in reports if r["Problems"] or r["Removed"]]
    assert bad == []
    assert registry.blob_gets(small) == 1
    assert daemon.inspect(ref)["Id"] == built.config_digest
