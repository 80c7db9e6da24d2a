"""`ferryd save` and `ferryd load`: files, pipes, OCI layout directories, a terminal, and
answers that end before they should."""

from __future__ import annotations

import contextlib
import json
import os
import pty
import socket
import subprocess
import sys
import threading
from collections.abc import Callable, Iterator
from pathlib import Path

import pytest

from support.archives import docker25_archive, pulled
from support.daemon import Daemon, ferryd
from support.digests import sha256
from support.images import LayerSpec, build_image, skopeo_inspect_raw
from support.registry import Registry, run_skopeo, skopeo_workdir


def piped(*args: str, host: str, stdin: bytes | None = None) -> subprocess.CompletedProcess[bytes]:
    """`ferryd` with an archive through its stdin or stdout: bytes, which
    `support.daemon.ferryd` (text) cannot carry."""
    return subprocess.run(
        [sys.executable, "-m", "ferryd", "--host", host, *args],
        input=stdin,
        capture_output=True,
        timeout=120,
    )


def in_terminal(*args: str, host: str) -> tuple[int, str]:
    """Run `ferryd` with a terminal as stdin, stdout and stderr; its exit status and
    what it printed."""
    leader, follower = pty.openpty()
    process = subprocess.Popen(
        [sys.executable, "-m", "ferryd", "--host", host, *args],
        stdin=follower,
        stdout=follower,
        stderr=follower,
        env={**os.environ, "TERM": "xterm", "COLUMNS": "120"},
    )
    os.close(follower)
    output = bytearray()
    with contextlib.suppress(OSError):  # EIO once the child has closed the terminal
        while chunk := os.read(leader, 65536):
            output += chunk
    os.close(leader)
    return process.wait(60), output.decode(errors="replace")


@pytest.mark.registry
def test_ferryd_save_to_a_file_and_load_it_into_another_daemon(
    registry: Registry, start_daemon: Callable[..., Daemon], tmp_path: Path
) -> None:
    first, second = start_daemon(), start_daemon()
    built = pulled(
        first,
        registry,
        tmp_path / "layout",
        "clisave/app:v1",
        layers=[LayerSpec(size=60_000, seed=7501)],
        media="docker",
    )
    name = f"{registry.host}/clisave/app:v1"
    archive = tmp_path / "app.tar"

    saved = first.ferryd("save", name, "-o", str(archive))
    loaded = second.ferryd("load", "-i", str(archive))

    assert saved.returncode == 0, saved.stderr
    assert loaded.returncode == 0, loaded.stderr
    assert loaded.stdout.splitlines() == [f"Loaded image: {name}"]
    assert second.inspect(name)["Id"] == built.config_digest
    assert [p.name for p in tmp_path.iterdir() if p.name.startswith(".")] == []


def test_ferryd_load_reads_stdin_and_save_writes_stdout(
    start_daemon: Callable[..., Daemon], tmp_path: Path
) -> None:
    first, second = start_daemon(), start_daemon()
    built = build_image(tmp_path / "layout", layers=[LayerSpec(size=30_000, seed=7511)])
    archive = docker25_archive(tmp_path / "layout", built, "team/piped:v1")[0].bytes()

    loaded = piped("load", host=first.host, stdin=archive)
    saved = piped("save", "team/piped:v1", host=first.host)
    again = piped("load", "-q", host=second.host, stdin=saved.stdout)
    nowhere = first.ferryd("save", "team/piped:v1", "-o", str(tmp_path / "no" / "x.tar"))

    assert loaded.returncode == 0, loaded.stderr
    assert loaded.stdout.decode().splitlines() == ["Loaded image: team/piped:v1"]
    assert saved.returncode == 0, saved.stderr
    assert again.returncode == 0, again.stderr
    assert second.inspect("team/piped:v1")["Id"] == built.config_digest
    assert nowhere.returncode == 1
    assert f"Error: cannot write {tmp_path / 'no'}" in nowhere.stderr


@pytest.mark.registry
def test_ferryd_save_as_an_oci_directory_gives_a_layout_skopeo_pushes_unchanged(
    registry: Registry, daemon: Daemon, tmp_path: Path
) -> None:
    built = pulled(
        daemon,
        registry,
        tmp_path / "layout",
        "clisave/oci:v1",
        layers=[LayerSpec(size=60_000, seed=7521)],
        media="docker",
    )
    directory = tmp_path / "oci-dir"

    saved = daemon.ferryd(
        "save", "--format", "oci-dir", "-o", str(directory), f"{registry.host}/clisave/oci:v1"
    )
    run_skopeo(
        [
            "copy",
            "--quiet",
            *registry.skopeo_flags("dest-"),
            f"oci:{directory}",
            f"docker://{registry.host}/clisave/from-dir:v1",
        ],
        workdir=skopeo_workdir(registry),
    )

    assert saved.returncode == 0, saved.stderr
    assert sorted(p.name for p in directory.iterdir()) == ["blobs", "index.json", "oci-layout"]
    assert sha256(skopeo_inspect_raw(registry, "clisave/from-dir:v1")) == built.manifest_digest


def test_ferryd_load_on_a_terminal_shows_each_layer_loading(daemon: Daemon, tmp_path: Path) -> None:
    built = build_image(tmp_path / "layout", layers=[LayerSpec(size=300_000, seed=7531)])
    archive = tmp_path / "image.tar"
    archive.write_bytes(docker25_archive(tmp_path / "layout", built, "team/shown:v1")[0].bytes())

    status, output = in_terminal("load", "-i", str(archive), host=daemon.host)

    assert status == 0, output
    assert f"{built.diff_ids[0][7:19]}: Loading layer" in output
    assert "Loaded image: team/shown:v1" in output


def test_ferryd_save_and_load_refuse_a_terminal_and_say_why(daemon: Daemon) -> None:
    save_status, save_output = in_terminal("save", "some/image", host=daemon.host)
    load_status, load_output = in_terminal("load", host=daemon.host)

    assert save_status == 1
    assert "refusing to write an archive to a terminal" in save_output
    assert load_status == 1
    assert "requested load from stdin, but stdin is empty" in load_output


def test_ferryd_load_of_a_broken_archive_and_save_of_an_unknown_image_fail_with_the_reason(
    daemon: Daemon, tmp_path: Path
) -> None:
    broken = tmp_path / "broken.tar"
    broken.write_bytes(b"nothing like a tar" * 1000)
    output = tmp_path / "out.tar"

    loaded = daemon.ferryd("load", "-i", str(broken))
    saved = daemon.ferryd("save", "no/such:image", "-o", str(output))

    assert loaded.returncode == 1
    assert "Error response from daemon: not a tar archive" in loaded.stderr
    assert saved.returncode == 1
    assert "No such image: no/such:image" in saved.stderr
    assert not output.exists()


# -- answers that end early (a fake daemon) ------------------------------------------


@contextlib.contextmanager
def fake_daemon(tmp_path: Path, answer: bytes) -> Iterator[str]:
    """A socket that answers every request with `answer`, then closes."""
    path = tmp_path / "fake.sock"
    server = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
    server.bind(str(path))
    server.listen(4)
    server.settimeout(0.05)
    stop = threading.Event()

    def serve() -> None:
        while not stop.is_set():
            try:
                connection, _ = server.accept()
            except TimeoutError:
                continue
            except OSError:
                return
            connection.settimeout(30)
            with connection:
                request = b""
                while b"\r\n\r\n" not in request:
                    data = connection.recv(65536)
                    if not data:
                        break
                    request += data
                with contextlib.suppress(OSError):
                    connection.sendall(answer)
                    connection.shutdown(socket.SHUT_WR)
                    while connection.recv(1 << 20):  # what the client still sends
                        pass

    thread = threading.Thread(target=serve, daemon=True)
    thread.start()
    try:
        yield f"unix://{path}"
    finally:
        stop.set()
        server.close()
        thread.join(10)


def chunk(data: bytes) -> bytes:
    return b"%x\r\n%s\r\n" % (len(data), data)


STREAM_HEAD = (
    b"HTTP/1.1 200 OK\r\ncontent-type: application/json\r\ntransfer-encoding: chunked\r\n\r\n"
)
UNFINISHED = "the load did not finish: the daemon's answer ended before it said what it loaded"
PROGRESS = (
    json.dumps({"status": "Loading layer", "id": "0123456789ab", "progressDetail": {}}).encode()
    + b"\r\n"
)


@pytest.mark.parametrize(
    ("answer", "message"),
    [
        (
            STREAM_HEAD + chunk(PROGRESS) + b"0\r\n\r\n",
            UNFINISHED,
        ),
        (
            STREAM_HEAD + chunk(PROGRESS),
            UNFINISHED,
        ),
    ],
    ids=["ended", "cut"],
)
def test_ferryd_load_exits_non_zero_when_the_answer_ends_without_its_final_status(
    tmp_path: Path, answer: bytes, message: str
) -> None:
    archive = tmp_path / "image.tar"
    archive.write_bytes(bytes(10_240))
    with fake_daemon(tmp_path, answer) as host:
        result = ferryd("-H", host, "load", "-i", str(archive))

    assert result.returncode == 1
    assert message in result.stderr
    assert "Traceback" not in result.stderr


def test_ferryd_save_exits_non_zero_and_keeps_no_file_when_the_archive_is_cut(
    tmp_path: Path,
) -> None:
    head = (
        b"HTTP/1.1 200 OK\r\ncontent-type: application/x-tar\r\ntransfer-encoding: chunked\r\n\r\n"
    )
    output = tmp_path / "out.tar"
    with fake_daemon(tmp_path, head + chunk(bytes(4096))) as host:
        result = ferryd("-H", host, "save", "some/image", "-o", str(output))

    assert result.returncode == 1
    assert "the daemon's archive ended early" in result.stderr
    assert sorted(p.name for p in tmp_path.iterdir()) == ["fake.sock"]
