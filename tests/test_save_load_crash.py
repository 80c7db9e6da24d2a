"""SIGKILL at many points of a load: each time the daemon starts again, nothing of the
load is half there (the image with all its layers and tags, or none of it), its staging
directory is gone, `ferryd fsck --root` finds the store clean, and loading again works."""

from __future__ import annotations

import contextlib
import socket
import sqlite3
import time
from collections.abc import Callable, Iterator
from pathlib import Path

import pytest

from ferryd.cli.commands import main
from support.archives import docker25_archive, load
from support.crash import kill, killed_during
from support.daemon import Daemon
from support.images import LayerSpec, build_image

pytestmark = pytest.mark.crash

# When to kill, as a share of how long a whole load takes here (measured first): from
# before the body is read, through its upload, closely around the check and the commit
# at the end, and past them.
KILL_AT = [0.0, 0.1, 0.3, 0.6, 0.85, 0.92, 0.95, 0.97, 0.99, 1.0, 1.01, 1.03, 1.1]
PIECE = 256 * 1024
PAUSE = 0.02  # between pieces: about 12 MB/s


def paced(data: bytes) -> Iterator[bytes]:
    for start in range(0, len(data), PIECE):
        yield data[start : start + PIECE]
        time.sleep(PAUSE)


def send_paced(daemon: Daemon, archive: bytes) -> None:
    """POST the archive at a walking pace, until it is sent or the daemon is gone."""
    sock = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
    try:
        with contextlib.suppress(OSError):
            sock.connect(str(daemon.socket))
            sock.sendall(
                b"POST /images/load?quiet=1 HTTP/1.1\r\nHost: ferryd\r\n"
                b"Content-Length: %d\r\n\r\n" % len(archive)
            )
            for piece in paced(archive):
                sock.sendall(piece)
            answer = b""
            while b"Loaded image" not in answer and (data := sock.recv(65536)):
                answer += data
    finally:
        sock.close()


def rows(root: Path) -> dict[str, int]:
    with sqlite3.connect(root / "ferryd.db") as db:
        return {
            table: db.execute(f"SELECT COUNT(*) FROM {table}").fetchone()[0]
            for table in ("layers", "images", "refs", "manifests")
        }


def test_a_load_killed_anywhere_leaves_all_of_it_or_nothing_and_no_staging(
    start_daemon: Callable[..., Daemon], tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    layout = tmp_path / "layout"
    built = build_image(
        layout,
        layers=[
            LayerSpec(size=3_000_000, seed=7601, compression="none"),
            LayerSpec(size=2_000_000, seed=7602),
            LayerSpec(size=1_500_000, seed=7603, compression="zstd"),
        ],
    )
    archive = docker25_archive(layout, built, "team/crash:v1")[0].bytes()
    daemon = start_daemon()
    whole = {"layers": 3, "images": 1, "refs": 1, "manifests": 1}
    started = time.monotonic()
    send_paced(daemon, archive)
    duration = time.monotonic() - started
    assert rows(daemon.root) == whole
    daemon.client().request("DELETE", "/images/team/crash:v1").read()

    for share in KILL_AT:
        after = share * duration
        killed_during(daemon, lambda: send_paced(daemon, archive), after)

        found = rows(daemon.root)
        assert found in ({"layers": 0, "images": 0, "refs": 0, "manifests": 0}, whole), (
            f"killed {after} s in: {found}"
        )
        daemon.start()  # sweeps before it serves
        kill(daemon)
        assert list((daemon.root / "loading").glob("*")) == [], f"killed {after} s in"
        capsys.readouterr()
        status = main(["fsck", "--root", str(daemon.root)])
        out = capsys.readouterr().out
        assert status == 0, f"fsck after a kill {after} s in:\n{out}\n{daemon.log_tail()}"
        daemon.start()
        if found == whole:
            assert daemon.inspect("team/crash:v1")["Id"] == built.config_digest
            daemon.client().request("DELETE", "/images/team/crash:v1").read()

    answer = load(daemon, archive)
    assert answer.lines == ["Loaded image: team/crash:v1"]
    assert daemon.inspect("team/crash:v1")["RootFS"]["Layers"] == built.diff_ids
