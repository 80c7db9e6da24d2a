"""systemd: sd_notify, socket activation, the socket's group, and the unit files."""

from __future__ import annotations

import grp
import json
import os
import re
import shutil
import signal
import socket
import stat
import subprocess
import sys
import textwrap
import time
from collections.abc import Iterator
from pathlib import Path

import pytest

from ferryd.systemd import Notifier
from support.daemon import Daemon

UNITS = Path(__file__).parent.parent / "systemd"
ACTIVATE = shutil.which("systemd-socket-activate")
needs_activate = pytest.mark.skipif(ACTIVATE is None, reason="systemd-socket-activate missing")


@pytest.fixture
def notify_socket(tmp_path: Path) -> Iterator[tuple[socket.socket, Path]]:
    path = tmp_path / "notify"
    sock = socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM)
    sock.bind(str(path))
    sock.settimeout(20)
    yield sock, path
    sock.close()


# -- sd_notify ------------------------------------------------------------------------


def test_notifier_sends_ready_with_a_status(
    notify_socket: tuple[socket.socket, Path], monkeypatch: pytest.MonkeyPatch
) -> None:
    sock, path = notify_socket
    monkeypatch.setenv("NOTIFY_SOCKET", str(path))
    notifier = Notifier()

    notifier.ready("idle")
    notifier.status("2 downloads, 0 uploads active")
    notifier.stopping()
    notifier.stopping(grace=2.5)

    assert sock.recv(4096) == b"READY=1\nSTATUS=idle"
    assert sock.recv(4096) == b"STATUS=2 downloads, 0 uploads active"
    assert sock.recv(4096) == b"STOPPING=1"
    assert sock.recv(4096) == b"STOPPING=1\nEXTEND_TIMEOUT_USEC=17500000"
    assert "NOTIFY_SOCKET" not in os.environ  # not passed on to credential helpers


def test_notifier_reloading_carries_the_monotonic_time(
    notify_socket: tuple[socket.socket, Path], monkeypatch: pytest.MonkeyPatch
) -> None:
    sock, path = notify_socket
    monkeypatch.setenv("NOTIFY_SOCKET", str(path))

    Notifier().reloading()

    assert re.fullmatch(rb"RELOADING=1\nMONOTONIC_USEC=\d+", sock.recv(4096))


def test_notifier_reaches_an_abstract_socket(monkeypatch: pytest.MonkeyPatch) -> None:
    name = f"ferryd-test-{os.getpid()}"
    sock = socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM)
    sock.bind("\0" + name)
    sock.settimeout(5)
    monkeypatch.setenv("NOTIFY_SOCKET", "@" + name)
    try:
        Notifier().watchdog()
        assert sock.recv(4096) == b"WATCHDOG=1"
    finally:
        sock.close()


def test_without_systemd_the_notifier_does_nothing(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.delenv("NOTIFY_SOCKET", raising=False)
    notifier = Notifier()

    notifier.ready()
    notifier.watchdog()

    assert not notifier.enabled
    assert notifier.watchdog_interval is None


def test_a_vanished_notify_socket_is_not_an_error(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv("NOTIFY_SOCKET", str(tmp_path / "gone"))
    notifier = Notifier()

    notifier.ready()
    notifier.status("still fine")


@pytest.mark.parametrize(
    ("usec", "pid", "interval"),
    [
        ("2000000", None, 1.0),
        ("2000000", "self", 1.0),
        ("2000000", "1", None),  # meant for another process
        ("0", None, None),
        ("soon", None, None),
    ],
)
def test_watchdog_interval_is_half_of_watchdog_usec(
    monkeypatch: pytest.MonkeyPatch, usec: str, pid: str | None, interval: float | None
) -> None:
    monkeypatch.setenv("NOTIFY_SOCKET", "/run/nowhere")
    monkeypatch.setenv("WATCHDOG_USEC", usec)
    if pid is not None:
        monkeypatch.setenv("WATCHDOG_PID", str(os.getpid()) if pid == "self" else pid)
    else:
        monkeypatch.delenv("WATCHDOG_PID", raising=False)

    assert Notifier().watchdog_interval == interval


# -- socket activation ------------------------------------------------------------------

_ACTIVATED_CHILD = textwrap.dedent(
    """
    import os, socket, sys
    from ferryd.errors import ConfigError
    from ferryd.systemd import listen_socket
    kind = sys.argv[1]
    if kind == "stream":
        sock = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
        sock.bind(sys.argv[2]); sock.listen()
    elif kind == "unlistened":
        sock = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
    else:
        sock = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
    os.dup2(sock.fileno(), 3)
    os.environ["LISTEN_FDS"] = sys.argv[3]
    os.environ["LISTEN_PID"] = str(os.getpid()) if sys.argv[4] == "self" else sys.argv[4]
    try:
        got = listen_socket()
    except ConfigError as exc:
        print("error:", exc)
    else:
        print("none" if got is None else f"fd {got.fileno()} blocking={got.getblocking()}")
    print("env left:", sorted(k for k in os.environ if k.startswith("LISTEN_")))
    """
)


def _activated(tmp_path: Path, kind: str, fds: str = "1", pid: str = "self") -> list[str]:
    done = subprocess.run(
        [sys.executable, "-c", _ACTIVATED_CHILD, kind, str(tmp_path / "s.sock"), fds, pid],
        capture_output=True,
        text=True,
        timeout=30,
        check=True,
    )
    return done.stdout.splitlines()


def test_the_socket_systemd_passes_is_used(tmp_path: Path) -> None:
    assert _activated(tmp_path, "stream") == ["fd 3 blocking=False", "env left: []"]


def test_a_socket_meant_for_another_process_is_ignored(tmp_path: Path) -> None:
    assert _activated(tmp_path, "stream", pid="1")[0] == "none"


def test_more_than_one_socket_is_refused(tmp_path: Path) -> None:
    [line, _] = _activated(tmp_path, "stream", fds="2")
    assert line.startswith("error: systemd passed LISTEN_FDS='2'; ferryd listens on exactly one")


def test_a_datagram_socket_is_refused(tmp_path: Path) -> None:
    [line, _] = _activated(tmp_path, "datagram")
    assert line.startswith("error: the socket systemd passed is not a Unix stream socket")


def test_a_socket_that_does_not_listen_is_refused(tmp_path: Path) -> None:
    [line, _] = _activated(tmp_path, "unlistened")
    assert line == "error: the socket systemd passed is not listening"


@needs_activate
def test_under_socket_activation_the_daemon_notifies_ready_pings_and_stops(
    tmp_path: Path, notify_socket: tuple[socket.socket, Path]
) -> None:
    notify, notify_path = notify_socket
    sock_path = tmp_path / "ferryd.sock"
    config = tmp_path / "ferryd.toml"
    config.write_text(f'root = "{tmp_path / "root"}"\nsocket = "{sock_path}"\n')
    assert ACTIVATE is not None
    log = tmp_path / "ferryd.log"
    with log.open("wb") as out:
        process = subprocess.Popen(
            [
                ACTIVATE,
                "-l",
                str(sock_path),
                "-E",
                f"NOTIFY_SOCKET={notify_path}",
                "-E",
                "WATCHDOG_USEC=400000",
                sys.executable,
                "-m",
                "ferryd",
                "serve",
                "--config",
                str(config),
            ],
            stdout=out,
            stderr=subprocess.STDOUT,
        )
    try:
        _wait_for_path(sock_path)
        # systemd-socket-activate starts the daemon on the first connection, which the
        # daemon then answers on the socket it was given.
        answer = _http_get(sock_path, "/_ping")
        assert answer.startswith(b"HTTP/1.1 200 OK")
        assert answer.endswith(b"OK")

        assert notify.recv(4096) == b"READY=1\nSTATUS=idle"
        assert notify.recv(4096) == b"WATCHDOG=1"
        assert notify.recv(4096) == b"WATCHDOG=1"  # again, within the interval

        process.send_signal(signal.SIGTERM)
        while (message := notify.recv(4096)) == b"WATCHDOG=1":
            pass
        assert message == b"STOPPING=1\nEXTEND_TIMEOUT_USEC=45000000"  # grace 30 s + 15
        assert process.wait(20) == 0
    finally:
        if process.poll() is None:
            process.kill()
            process.wait()
    assert stat.S_ISSOCK(sock_path.lstat().st_mode), "systemd's socket was removed"
    ready = [
        json.loads(line)
        for line in log.read_text().splitlines()
        if line.startswith("{") and "daemon.ready" in line
    ]
    assert ready[0]["socket_activated"] is True


def _wait_for_path(path: Path) -> None:
    deadline = time.monotonic() + 20
    while not path.exists():
        assert time.monotonic() < deadline, f"{path} never appeared"
        time.sleep(0.01)


def _http_get(path: Path, target: str) -> bytes:
    client = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
    client.settimeout(20)
    try:
        client.connect(str(path))
        client.sendall(
            f"GET {target} HTTP/1.1\r\nHost: ferryd\r\nConnection: close\r\n\r\n".encode()
        )
        chunks = []
        while chunk := client.recv(65536):
            chunks.append(chunk)
        return b"".join(chunks)
    finally:
        client.close()


# -- the daemon's own socket ----------------------------------------------------------


def test_without_systemd_the_daemon_makes_its_socket_with_mode_0660(daemon: Daemon) -> None:
    mode = daemon.socket.stat().st_mode

    assert stat.S_ISSOCK(mode)
    assert stat.S_IMODE(mode) == 0o660


def test_socket_group_is_given_to_the_socket(start_daemon: type[Daemon]) -> None:
    group = grp.getgrgid(os.getgid()).gr_name

    daemon = start_daemon(socket_group=group)

    assert daemon.socket.stat().st_gid == os.getgid()


def test_an_unknown_socket_group_stops_the_daemon_with_a_clear_message(tmp_path: Path) -> None:
    config = tmp_path / "ferryd.toml"
    config.write_text(
        f'root = "{tmp_path / "root"}"\nsocket = "{tmp_path / "s.sock"}"\n'
        'socket_group = "no-such-group-ferryd"\n'
    )

    done = subprocess.run(
        [sys.executable, "-m", "ferryd", "serve", "--config", str(config)],
        capture_output=True,
        text=True,
        timeout=60,
    )

    assert done.returncode != 0
    assert "socket_group: there is no group named 'no-such-group-ferryd'" in done.stderr
    assert "Traceback" not in done.stderr + done.stdout


# -- the unit files ---------------------------------------------------------------------


def test_the_units_pass_systemd_analyze_verify(tmp_path: Path) -> None:
    analyze = shutil.which("systemd-analyze")
    if analyze is None:
        pytest.skip("systemd-analyze is not installed")
    ferryd = Path(sys.executable).parent / "ferryd"
    service = (UNITS / "ferryd.service").read_text()
    (tmp_path / "ferryd.service").write_text(service.replace("/usr/local/bin/ferryd", str(ferryd)))
    shutil.copy(UNITS / "ferryd.socket", tmp_path / "ferryd.socket")

    done = subprocess.run(
        [analyze, "verify", str(tmp_path / "ferryd.service"), str(tmp_path / "ferryd.socket")],
        capture_output=True,
        text=True,
        timeout=60,
    )

    if "Failed to" in done.stderr and "ferryd" not in done.stderr:
        pytest.skip(f"systemd-analyze cannot run here: {done.stderr.strip()}")
    # Unknown or misspelt directives are only warned about: they count as failures here.
    problems = [
        line
        for line in done.stderr.splitlines()
        if "ferryd." in line and ("Unknown" in line or "nvalid" in line or "Failed" in line)
    ]
    assert problems == []
    assert done.returncode == 0, done.stderr


def test_the_service_is_a_notify_unit_with_watchdog_and_state_directories() -> None:
    service = (UNITS / "ferryd.service").read_text()

    for line in (
        "Type=notify",
        "Restart=on-failure",
        "StateDirectory=ferryd",
        "RuntimeDirectory=ferryd",
        "ProtectSystem=strict",
        "NoNewPrivileges=yes",
        "PrivateTmp=yes",
        "Requires=ferryd.socket",
    ):
        assert re.search(rf"^{re.escape(line)}\b", service, re.MULTILINE), line
    assert re.search(r"^WatchdogSec=\d+", service, re.MULTILINE)
    socket_unit = (UNITS / "ferryd.socket").read_text()
    assert "SocketMode=0660" in socket_unit
    assert "SocketGroup=ferryd" in socket_unit
    assert "ListenStream=/run/ferryd/ferryd.sock" in socket_unit
