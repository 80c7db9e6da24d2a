"""`ferryd reload [PID]`: SIGHUP without /bin/kill, as the unit's ExecReload= sends it."""

from __future__ import annotations

import json
import os
import signal
import socket
import subprocess
import sys
from collections.abc import Iterator
from pathlib import Path

import pytest

from ferryd.cli.reload import ReloadError, _is_daemon, reload_daemon
from support.daemon import ferryd
from support.waiting import wait_until

UNITS = Path(__file__).parent.parent / "systemd"


@pytest.fixture
def notify(tmp_path: Path) -> Iterator[socket.socket]:
    sock = socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM)
    sock.bind(str(tmp_path / "notify"))
    sock.settimeout(30)
    yield sock
    sock.close()


def _events(log: Path, event: str) -> list[dict[str, object]]:
    lines = [line for line in log.read_text().splitlines() if line.startswith("{")]
    return [e for line in lines if (e := json.loads(line))["event"] == event]


def test_ferryd_reload_pid_makes_the_daemon_read_its_config_again(
    tmp_path: Path, notify: socket.socket
) -> None:
    config = tmp_path / "ferryd.toml"
    settings = f'root = "{tmp_path / "root"}"\nsocket = "{tmp_path / "ferryd.sock"}"\n'
    config.write_text(settings)
    log = tmp_path / "ferryd.log"
    env = {k: v for k, v in os.environ.items() if not k.startswith(("LISTEN_", "WATCHDOG_"))}
    with log.open("wb") as out:
        daemon = subprocess.Popen(
            [sys.executable, "-m", "ferryd", "serve", "--config", str(config)],
            stdout=out,
            stderr=subprocess.STDOUT,
            env={**env, "NOTIFY_SOCKET": notify.getsockname(), "PYTHONUNBUFFERED": "1"},
        )
    try:
        assert notify.recv(4096) == b"READY=1\nSTATUS=idle"
        config.write_text(settings + 'log_level = "warning"\n')

        done = ferryd("reload", str(daemon.pid))

        assert (done.returncode, done.stdout, done.stderr) == (0, "", "")
        assert notify.recv(4096).startswith(b"RELOADING=1\nMONOTONIC_USEC=")
        assert notify.recv(4096) == b"READY=1"
        [reloaded] = wait_until(lambda: _events(log, "daemon.reloaded"), 30)
        assert reloaded["changed"] == ["log_level"]
        assert daemon.poll() is None
    finally:
        daemon.send_signal(signal.SIGTERM)
        assert daemon.wait(30) == 0


def test_ferryd_reload_never_signals_a_process_that_is_not_ferryd() -> None:
    # SIGHUP would end `sleep`: it must still be there.
    other = subprocess.Popen(["sleep", "60"])
    try:
        done = ferryd("reload", str(other.pid))

        assert done.returncode == 1
        assert done.stderr == (
            f"ferryd reload: PID {other.pid} is not a ferryd daemon (sleep 60); "
            "give the PID of `ferryd serve`\n"
        )
        assert other.poll() is None
    finally:
        other.kill()
        other.wait()


@pytest.mark.parametrize(
    ("pid", "message"),
    [
        ("", "'' is not a process ID: give the PID of `ferryd serve`"),  # an empty $MAINPID
        ("12a", "'12a' is not a process ID"),
        ("0", "'0' is not a process ID"),
        ("4194304999", "there is no process with PID 4194304999"),
    ],
)
def test_ferryd_reload_says_what_is_wrong_with_the_pid(pid: str, message: str) -> None:
    done = ferryd("reload", pid)

    assert done.returncode == 1
    assert done.stderr.startswith(f"ferryd reload: {message}")
    assert "Traceback" not in done.stderr


@pytest.mark.parametrize(
    ("command", "daemon"),
    [
        (["/opt/ferryd/bin/python3", "/usr/local/bin/ferryd", "serve", "--config", "c"], True),
        (["/usr/bin/python3", "-m", "ferryd", "serve"], True),
        (["ferryd", "-H", "unix:///x", "serve"], True),
        (["ferryd", "--log-level", "debug", "serve"], False),  # not an option of ferryd
        (["/usr/local/bin/ferryd", "reload", "serve"], False),
        (["/usr/local/bin/ferryd", "pull", "serve"], False),
        (["/usr/local/bin/ferryd"], False),
        (["/usr/sbin/ferryd-helper", "serve"], False),
        (["/sbin/init"], False),
        ([], False),
    ],
)
def test_what_counts_as_a_ferryd_daemon(command: list[str], daemon: bool) -> None:
    assert _is_daemon(command) is daemon


def _fake_proc(tmp_path: Path, processes: dict[int, list[str]]) -> Path:
    proc = tmp_path / "proc"
    for pid, command in processes.items():
        (proc / str(pid)).mkdir(parents=True)
        (proc / str(pid) / "cmdline").write_bytes(b"".join(a.encode() + b"\0" for a in command))
    (proc / "self").mkdir()  # not a process ID: passed over
    return proc


def test_without_a_pid_the_one_running_daemon_is_meant(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    proc = _fake_proc(
        tmp_path,
        {
            1: ["/sbin/init"],
            2: [],  # a kernel thread
            4242: ["/opt/ferryd/bin/python3", "/usr/local/bin/ferryd", "serve"],
            4243: ["/usr/local/bin/ferryd", "pull", "alpine"],
        },
    )
    sent: list[tuple[int, int]] = []
    monkeypatch.setattr(os, "kill", lambda pid, sig: sent.append((pid, sig)))

    assert reload_daemon(None, proc) == 4242
    assert sent == [(4242, signal.SIGHUP)]


@pytest.mark.parametrize(
    ("daemons", "message"),
    [
        ([], "no ferryd daemon (`ferryd serve`) is running on this machine"),
        ([7, 31], "several ferryd daemons are running (PIDs 7, 31): name the one"),
    ],
)
def test_without_a_pid_none_or_several_daemons_are_an_error(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, daemons: list[int], message: str
) -> None:
    proc = _fake_proc(tmp_path, {1: ["/sbin/init"]} | {p: ["ferryd", "serve"] for p in daemons})
    monkeypatch.setattr(os, "kill", lambda pid, sig: pytest.fail("signalled"))

    with pytest.raises(ReloadError) as raised:
        reload_daemon(None, proc)
    assert str(raised.value) == message


def test_the_unit_reloads_with_ferryd_itself_not_with_kill() -> None:
    unit = (UNITS / "ferryd.service").read_text().splitlines()

    assert "ExecReload=/usr/local/bin/ferryd reload $MAINPID" in unit
    assert not [line for line in unit if line.startswith("Exec") and "kill" in line]
