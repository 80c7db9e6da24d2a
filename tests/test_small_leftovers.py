"""Small leftovers, each with what it had wrong: a saved Windows image's descriptor lost
its config's `os.version` and `os.features`; `push -q` of an aux without a `Digest` was
a traceback; `--help` to a stdout that cannot be written exited 0 saying nothing; and a
SIGHUP while `ferryd serve` was still importing its CLI killed it."""

from __future__ import annotations

import json
import os
import select
import signal
import subprocess
import sys
import time
from collections.abc import Callable
from pathlib import Path

import pytest

from ferryd.cli.client import Client, DaemonError
from support.archives import IMAGE_NAME, TarWriter, load, members, save
from support.daemon import Daemon, write_config
from support.digests import sha256
from support.fake_daemon import assert_failed, chunked, fake_daemon, host, lines
from support.images import OCI_INDEX, REF_NAME
from test_cli_bad_answers import _malformed, ferryd
from test_foreign_platforms import AMD64, WINDOWS, WINDOWS_PLATFORM, with_windows

# -- save: a Windows image's platform, whole ---------------------------------------------


def _oci_archive(layout: Path, name: str) -> bytes:
    """The layout as an OCI archive whose index.json names its index `name`."""
    [top] = json.loads((layout / "index.json").read_text())["manifests"]
    top["annotations"] = {IMAGE_NAME: name, REF_NAME: name.rpartition(":")[2]}
    archive = TarWriter().file("oci-layout", (layout / "oci-layout").read_bytes())
    archive.json("index.json", {"schemaVersion": 2, "mediaType": OCI_INDEX, "manifests": [top]})
    for blob in sorted((layout / "blobs" / "sha256").iterdir()):
        archive.file(f"blobs/sha256/{blob.name}", blob.read_bytes())
    return archive.bytes()


@pytest.fixture
def windows_index(start_daemon: Callable[..., Daemon], layout: Path) -> tuple[Daemon, str, bytes]:
    """A daemon holding every platform of an index with a Windows one (loaded from an
    archive, which keeps them all as a pull of all platforms does): (it, the index's
    name, the index's bytes)."""
    index = with_windows(layout, 12400)
    name = "r.example/leftovers/windows:v1"
    daemon = start_daemon(default_platform=AMD64)
    loaded = load(daemon, _oci_archive(layout, name))
    assert loaded.status == 200, loaded.messages
    assert loaded.error is None, loaded.messages
    return daemon, name, index.index


def test_save_of_a_windows_platform_keeps_its_os_version_and_features_in_index_json(
    windows_index: tuple[Daemon, str, bytes],
) -> None:
    daemon, name, raw_index = windows_index
    [entry] = [m for m in json.loads(raw_index)["manifests"] if m["platform"]["os"] == "windows"]

    archive = members(save(daemon, name, platform=WINDOWS))

    [descriptor] = json.loads(archive["index.json"])["manifests"]
    assert descriptor["digest"] == entry["digest"]
    # As docker's export writes it (the OCI Platform's field order), from the config.
    assert descriptor["platform"] == WINDOWS_PLATFORM
    assert list(descriptor["platform"]) == ["architecture", "os", "os.version", "os.features"]


def test_save_of_the_whole_index_keeps_every_entrys_platform_as_stored(
    windows_index: tuple[Daemon, str, bytes],
) -> None:
    daemon, name, raw_index = windows_index

    archive = members(save(daemon, name))

    [descriptor] = json.loads(archive["index.json"])["manifests"]
    assert descriptor["digest"] == sha256(raw_index)
    saved = archive[f"blobs/sha256/{sha256(raw_index).removeprefix('sha256:')}"]
    assert saved == raw_index  # the index itself, byte for byte
    platforms = [m["platform"] for m in json.loads(saved)["manifests"]]
    assert WINDOWS_PLATFORM in platforms
    for entry in json.loads(saved)["manifests"]:  # each platform's manifest is in it
        assert f"blobs/sha256/{entry['digest'].removeprefix('sha256:')}" in archive


# -- push -q: an aux without a string Digest -----------------------------------------------


PUSHING = {"status": "Pushing", "id": "abc"}


@pytest.mark.parametrize(
    ("aux", "problem"),
    [
        ({"Tag": "v1", "Size": 1}, "KeyError: 'Digest'"),
        ({"Tag": "v1", "Digest": 5, "Size": 1}, "TypeError: 'Digest' is not a string: 5"),
        ({"Tag": "v1", "Digest": None}, "TypeError: 'Digest' is not a string: None"),
    ],
    ids=["no-digest", "a-number", "null"],
)
def test_push_quiet_of_an_aux_without_a_string_digest_is_a_malformed_answer(
    tmp_path: Path, aux: dict[str, object], problem: str
) -> None:
    env = {"DOCKER_CONFIG": str(tmp_path / "docker")}
    digest = {"Tag": "v0", "Digest": "sha256:" + "b" * 64, "Size": 1}
    answer = chunked(lines(PUSHING, {"aux": digest}, {"aux": aux}))
    with fake_daemon(tmp_path, answer):
        result = ferryd("-H", host(tmp_path), "push", "-q", "r.example/app", env=env)

    assert_failed(result, _malformed("POST /images/r.example/app/push", problem))
    assert result.stdout == ""  # nor the tag before it: said before anything is printed


def test_push_quiet_prints_each_tags_digest(tmp_path: Path) -> None:
    env = {"DOCKER_CONFIG": str(tmp_path / "docker")}
    digests = ["sha256:" + "b" * 64, "sha256:" + "c" * 64]
    auxes = [{"aux": {"Tag": f"v{i}", "Digest": d, "Size": 1}} for i, d in enumerate(digests)]
    with fake_daemon(tmp_path, chunked(lines(PUSHING, *auxes))):
        result = ferryd("-H", host(tmp_path), "push", "-q", "r.example/app", env=env)

    assert result.returncode == 0, result.stderr
    assert result.stdout.split() == digests


# -- what argparse prints itself, to a stdout that cannot be written -------------------------


@pytest.mark.parametrize(
    "command", [["--help"], ["images", "--help"], ["serve", "--help"], ["--version"], []]
)
def test_help_and_version_to_a_full_disk_fail_saying_so(command: list[str]) -> None:
    with open("/dev/full", "w") as full:
        result = ferryd(*command, stdout=full.fileno())
    written = ferryd(*command)

    assert_failed(result, "Error: cannot write stdout: No space left on device")
    assert result.stderr.count("\n") == 1, result.stderr  # said once, then nothing
    assert written.returncode == (2 if not command else 0), written.stderr
    assert written.stdout.startswith("usage: ferryd" if command != ["--version"] else "ferryd ")


def test_help_without_a_stdout_fails_saying_so() -> None:
    result = ferryd("--help", shell_redirect=">&-")

    assert_failed(result, "Error: cannot write stdout: it is closed")


# -- SIGHUP while `ferryd serve` starts: from its first line, not its daemon's ---------------

# Imported by the child's `site` (PYTHONPATH): holds the import of the CLI's commands
# (the tenth of a second of imports before `_serve`) until the test has sent a SIGHUP.
_GATE = """
import os, signal, sys

# As a terminal's session starts it: a runner started under nohup (or a CI that ignores
# hangups) would hand its ignored SIGHUP down, and no client command would end at one.
signal.signal(signal.SIGHUP, signal.SIG_DFL)

class _Gate:
    def find_spec(self, name, path=None, target=None):
        if name == "ferryd.cli.commands":
            sys.meta_path.remove(self)
            os.write(int(os.environ["FERRYD_TEST_GATE_OUT"]), b"1")
            os.read(int(os.environ["FERRYD_TEST_GATE_IN"]), 1)
        return None

sys.meta_path.insert(0, _Gate())
"""

# What the `ferryd` console script runs (pyproject's `ferryd.cli:main`).
_CONSOLE_SCRIPT = "import sys; from ferryd.cli import main; sys.exit(main())"


def _gated(tmp_path: Path, python_args: list[str], log: Path) -> subprocess.Popen[bytes]:
    """`python ARGS`, stopped as it starts importing `ferryd.cli.commands`, with a SIGHUP
    sent to it then; it goes on once the signal is sent."""
    gate = tmp_path / "gate"
    gate.mkdir(exist_ok=True)
    (gate / "sitecustomize.py").write_text(_GATE)
    arrived_r, arrived_w = os.pipe()
    go_r, go_w = os.pipe()
    path = os.pathsep.join(p for p in (str(gate), os.environ.get("PYTHONPATH")) if p)
    env = {
        **os.environ,
        "PYTHONPATH": path,
        "PYTHONUNBUFFERED": "1",
        "FERRYD_TEST_GATE_OUT": str(arrived_w),
        "FERRYD_TEST_GATE_IN": str(go_r),
    }
    with log.open("ab") as out:
        process = subprocess.Popen(
            [sys.executable, *python_args],
            stdin=subprocess.DEVNULL,
            stdout=out,
            stderr=subprocess.STDOUT,
            env=env,
            pass_fds=(arrived_w, go_r),
        )
    os.close(arrived_w)
    os.close(go_r)
    try:
        ready, _, _ = select.select([arrived_r], [], [], 60)
        assert ready, f"the child never imported ferryd.cli.commands:\n{log.read_text()}"
        assert os.read(arrived_r, 1) == b"1", f"exited {process.wait(10)}:\n{log.read_text()}"
        process.send_signal(signal.SIGHUP)
        os.write(go_w, b"1")
    finally:
        os.close(arrived_r)
        os.close(go_w)
    return process


@pytest.mark.daemon  # runs `ferryd serve`
@pytest.mark.parametrize(
    "entry",
    [["-m", "ferryd"], ["-c", _CONSOLE_SCRIPT], ["-m", "ferryd", "-H", "unix:///nowhere"]],
    ids=["python-m", "console-script", "host-before-serve"],
)
def test_sighups_from_the_start_of_serve_until_it_is_ready_never_kill_it(
    tmp_path: Path, entry: list[str]
) -> None:
    config = write_config(tmp_path, {})
    log = tmp_path / "ferryd.log"
    socket = f"unix://{tmp_path / 'ferryd.sock'}"
    process = _gated(tmp_path, [*entry, "serve", "--config", str(config)], log)
    try:

        def answering() -> bool:
            try:
                Client(socket, timeout=5).request("GET", "/_ping").read()
            except DaemonError:
                return False
            return True

        sent = 1
        deadline = time.monotonic() + 30
        while not answering():
            assert process.poll() is None, (
                f"ferryd exited {process.returncode} after {sent} SIGHUPs:\n"
                + log.read_text()[-3000:]
            )
            assert time.monotonic() < deadline, f"ferryd never answered:\n{log.read_text()}"
            process.send_signal(signal.SIGHUP)
            sent += 1
            time.sleep(0.002)
        process.send_signal(signal.SIGTERM)
        code = process.wait(30)
    finally:
        if process.poll() is None:
            process.kill()
            process.wait()
    assert code == 0, log.read_text()[-3000:]
    assert "Traceback" not in log.read_text()


@pytest.mark.parametrize(
    "command",
    [["-H", "unix:///nowhere", "events"], ["-H", "serve", "images"], ["images", "serve"]],
    ids=["events", "host-named-serve", "serve-as-an-argument"],
)
def test_a_client_command_still_ends_at_a_sighup(tmp_path: Path, command: list[str]) -> None:
    """The terminal of `ferryd events` hanging up must end it: SIGHUP is ignored early
    for `serve` alone."""
    log = tmp_path / "ferryd.log"
    process = _gated(tmp_path, ["-m", "ferryd", *command], log)
    try:
        code = process.wait(30)
    finally:
        if process.poll() is None:
            process.kill()
            process.wait()
    assert code == -signal.SIGHUP, log.read_text()
