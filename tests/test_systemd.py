"""systemd: sd_notify, socket activation, the socket's group, and the unit files."""

from __future__ import annotations

import base64
import contextlib
import errno
import grp
import itertools
import json
import os
import re
import shutil
import signal
import socket
import stat
import struct
import subprocess
import sys
import textwrap
import threading
import time
from collections.abc import Iterator, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pytest
import trustme
from structlog.testing import capture_logs

from ferryd.cli.client import Client, DaemonError
from ferryd.daemon.api.serve import bind_unix_socket
from ferryd.daemon.settings import Settings
from ferryd.daemon.systemd import Notifier
from ferryd.errors import ConfigError
from support.daemon import Daemon, errors, ferryd, start_failure, toml
from support.images import LayerSpec, build_image, seed
from support.registry import PASSWORD, USER, Registry, trust
from support.throttle import throttled
from support.waiting import wait_until

pytestmark = pytest.mark.systemd

UNITS = Path(__file__).parent.parent / "systemd"
ACTIVATE = shutil.which("systemd-socket-activate")
needs_activate = pytest.mark.skipif(ACTIVATE is None, reason="systemd-socket-activate missing")
MB = 1_000_000


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

    message = re.fullmatch(rb"RELOADING=1\nMONOTONIC_USEC=(\d+)", sock.recv(4096))
    assert message is not None
    now_usec = time.clock_gettime_ns(time.CLOCK_MONOTONIC) // 1000
    assert 0 <= now_usec - int(message[1]) < 5_000_000  # CLOCK_MONOTONIC, in microseconds


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
    monkeypatch.setenv("WATCHDOG_USEC", "2000000")
    notifier = Notifier()

    with capture_logs() as logged:
        notifier.ready()
        notifier.watchdog()

    assert not notifier.enabled
    assert notifier.watchdog_interval is None  # nobody to ping
    assert logged == []
    assert "WATCHDOG_USEC" not in os.environ


def test_a_vanished_notify_socket_is_warned_about_once_and_never_raises(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv("NOTIFY_SOCKET", str(tmp_path / "gone"))
    notifier = Notifier()

    with capture_logs() as logged:
        notifier.ready()
        notifier.status("still fine")
        notifier.watchdog()

    assert [(e["event"], e["log_level"]) for e in logged] == [("systemd.notify_failed", "warning")]


def test_a_notify_socket_nobody_reads_never_blocks(
    notify_socket: tuple[socket.socket, Path], monkeypatch: pytest.MonkeyPatch
) -> None:
    _, path = notify_socket  # bound, never read: its queue fills up
    monkeypatch.setenv("NOTIFY_SOCKET", str(path))
    notifier = Notifier()

    with capture_logs() as logged:
        sender = threading.Thread(
            target=lambda: [notifier.status(f"{i} downloads") for i in range(5000)], daemon=True
        )
        sender.start()
        sender.join(20)

    assert not sender.is_alive(), "sending to a full notify socket blocked"
    assert [e["event"] for e in logged] == ["systemd.notify_failed"]


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
    assert not {"WATCHDOG_USEC", "WATCHDOG_PID"} & set(os.environ)


# -- socket activation ------------------------------------------------------------------

# Runs in a child: fd 3 there is ours to clobber (in pytest's own process it is not).
_ACTIVATED_CHILD = textwrap.dedent(
    """
    import os, socket, sys
    from ferryd.errors import ConfigError
    from ferryd.daemon.systemd import listen_socket
    kind, path, fds, pid = sys.argv[1:]
    if kind == "file":
        fd = os.open(path, os.O_RDWR | os.O_CREAT)
    else:
        if kind == "datagram":
            sock = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
        else:
            sock = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
        if kind == "stream":
            sock.bind(path); sock.listen()
        fd = sock.detach()
    if fd != 3:
        os.dup2(fd, 3); os.close(fd)
    os.set_inheritable(3, True)  # as systemd passes it, open across exec
    os.environ["LISTEN_FDS"] = fds
    os.environ["LISTEN_PID"] = str(os.getpid()) if pid == "self" else pid
    os.environ["LISTEN_FDNAMES"] = "ferryd.socket"
    try:
        got = listen_socket()
    except ConfigError as exc:
        print("error:", exc)
    else:
        if got is None:
            print("none")
        else:
            fd = got.fileno()
            print(f"fd {fd} blocking={got.getblocking()} inheritable={os.get_inheritable(fd)}")
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


def test_the_socket_systemd_passes_is_used_non_blocking_and_close_on_exec(
    tmp_path: Path,
) -> None:
    assert _activated(tmp_path, "stream") == [
        "fd 3 blocking=False inheritable=False",
        "env left: []",  # credential helpers must not think they were activated
    ]


def test_a_socket_meant_for_another_process_is_ignored(tmp_path: Path) -> None:
    assert _activated(tmp_path, "stream", pid="1") == ["none", "env left: []"]


def test_more_than_one_socket_is_refused(tmp_path: Path) -> None:
    [line, env] = _activated(tmp_path, "stream", fds="2")
    assert line.startswith("error: systemd passed LISTEN_FDS='2'; ferryd listens on exactly one")
    assert env == "env left: []"


@pytest.mark.parametrize(
    ("fds", "pid", "message"),
    [
        ("0", "self", "error: systemd passed LISTEN_FDS='0'; ferryd listens on exactly one"),
        ("one", "self", "error: systemd passed LISTEN_FDS='one'; ferryd listens on exactly one"),
        ("1", "me", "error: LISTEN_PID='me' is not a process ID"),
    ],
)
def test_malformed_activation_variables_are_refused(
    tmp_path: Path, fds: str, pid: str, message: str
) -> None:
    [line, env] = _activated(tmp_path, "stream", fds=fds, pid=pid)
    assert line.startswith(message)
    assert env == "env left: []"


def test_a_datagram_socket_is_refused(tmp_path: Path) -> None:
    [line, _] = _activated(tmp_path, "datagram")
    assert line.startswith("error: the socket systemd passed is not a Unix stream socket")


def test_a_socket_that_does_not_listen_is_refused(tmp_path: Path) -> None:
    [line, _] = _activated(tmp_path, "unlistened")
    assert line == "error: the socket systemd passed is not listening"


def test_a_file_instead_of_a_socket_is_refused(tmp_path: Path) -> None:
    [line, _] = _activated(tmp_path, "file")
    assert (
        line
        == "error: the socket systemd passed (fd 3) is unusable: Socket operation on non-socket"
    )


# -- the daemon under systemd-socket-activate -----------------------------------------


@dataclass
class _Served:
    """A `ferryd serve` this module started itself (under a wrapper)."""

    process: subprocess.Popen[bytes]
    socket: Path
    log: Path

    def client(self) -> Client:
        return Client(f"unix://{self.socket}", timeout=120)

    def log_events(self, event: str) -> list[dict[str, Any]]:
        lines = self.log.read_text().splitlines()
        return [
            e
            for line in lines
            if line.startswith("{") and (e := json.loads(line))["event"] == event
        ]


@contextlib.contextmanager
def _serve(workdir: Path, wrapper: Sequence[str] = (), **settings: object) -> Iterator[_Served]:
    """Run `wrapper… python -m ferryd serve` until it answers /_ping; kill it at the end
    if the test has not stopped it."""
    workdir.mkdir(exist_ok=True)
    served_socket = workdir / "ferryd.sock"
    config = workdir / "ferryd.toml"
    settings = {
        "root": str(workdir / "root"),
        "socket": str(served_socket),
        "certs_dir": str(workdir / "certs.d"),
        **settings,
    }
    config.write_text(toml(settings))
    # Whatever systemd gave pytest itself is not for the daemon under test.
    env = {
        k: v for k, v in os.environ.items() if not k.startswith(("LISTEN_", "NOTIFY_", "WATCHDOG_"))
    }
    log = workdir / "ferryd.log"
    with log.open("wb") as out:
        process = subprocess.Popen(
            [*wrapper, sys.executable, "-m", "ferryd", "serve", "--config", str(config)],
            stdout=out,
            stderr=subprocess.STDOUT,
            env={**env, "PYTHONUNBUFFERED": "1"},
        )
    served = _Served(process, served_socket, log)
    try:
        _wait_until_answering(served)
        yield served
    finally:
        if process.poll() is None:
            process.kill()
            process.wait()


def _wait_until_answering(served: _Served) -> None:
    def answering() -> bool:
        if served.process.poll() is not None:
            raise RuntimeError(
                f"ferryd exited {served.process.returncode}:\n{served.log.read_text()}"
            )
        try:
            Client(f"unix://{served.socket}", timeout=10).request("GET", "/_ping").read()
        except DaemonError:
            return False
        return True

    wait_until(answering, 30, what=lambda: f"ferryd to answer:\n{served.log.read_text()}")


def _activate(sock: Path, *env: str) -> list[str]:
    """systemd-socket-activate: listen on `sock`, start the daemon on the first connection
    with the socket as fd 3 and `env` (VAR=VALUE) as its only extra environment."""
    assert ACTIVATE is not None
    return [ACTIVATE, "-l", str(sock), *(arg for var in env for arg in ("-E", var))]


# SO_TIMESTAMPNS (asm-generic: x86, arm): the kernel stamps each datagram on arrival.
_SO_TIMESTAMPNS = 35


def _received_at(notify: socket.socket) -> tuple[bytes, float]:
    """The next datagram and when the kernel took it in: how late this process gets to
    read it (a busy machine) does not count."""
    data, ancillary, _, _ = notify.recvmsg(4096, socket.CMSG_SPACE(16))
    for level, kind, payload in ancillary:
        if level == socket.SOL_SOCKET and kind == _SO_TIMESTAMPNS:
            seconds, nanoseconds = struct.unpack("qq", payload[:16])
            return data, seconds + nanoseconds / 1e9
    raise AssertionError("the kernel did not timestamp the datagram")


def _next_not_watchdog(notify: socket.socket) -> bytes:
    while (message := notify.recv(4096)) == b"WATCHDOG=1":
        pass
    return message


@needs_activate
def test_under_socket_activation_the_daemon_notifies_ready_pings_and_stops(
    tmp_path: Path, notify_socket: tuple[socket.socket, Path]
) -> None:
    notify, notify_path = notify_socket
    notify.setsockopt(socket.SOL_SOCKET, _SO_TIMESTAMPNS, 1)
    sock = tmp_path / "ferryd.sock"
    wrapper = _activate(sock, f"NOTIFY_SOCKET={notify_path}", "WATCHDOG_USEC=1000000")

    # Answering /_ping at all shows the daemon serves the socket it was given: it is
    # started by, and answers, the first connection to systemd-socket-activate's socket.
    with _serve(tmp_path, wrapper) as served:
        assert notify.recv(4096) == b"READY=1\nSTATUS=idle"
        pings = []
        while len(pings) < 4:
            message, sent = _received_at(notify)
            assert message == b"WATCHDOG=1"
            pings.append(sent)
        # Every half of WATCHDOG_USEC (1 s): well inside systemd's deadline, no flood.
        gaps = [later - earlier for earlier, later in itertools.pairwise(pings)]
        assert all(0.3 < gap < 0.8 for gap in gaps), gaps
        answer = _http_get(sock, "/_ping")
        assert answer.startswith(b"HTTP/1.1 200 OK")
        assert answer.endswith(b"OK")

        served.process.send_signal(signal.SIGTERM)
        # grace 30 s (the default shutdown_timeout) + 15 s
        assert _next_not_watchdog(notify) == b"STOPPING=1\nEXTEND_TIMEOUT_USEC=45000000"
        assert served.process.wait(20) == 0

    assert stat.S_ISSOCK(sock.lstat().st_mode), "systemd's socket was removed"
    [ready] = served.log_events("daemon.ready")
    assert ready["socket_activated"] is True


@needs_activate
def test_status_follows_the_running_transfers(
    registry: Registry,
    layout: Path,
    tmp_path: Path,
    notify_socket: tuple[socket.socket, Path],
) -> None:
    notify, notify_path = notify_socket
    build_image(layout, layers=[LayerSpec(size=12 * MB, seed=401, compression="none")])
    seed(registry, layout, "latest", "systemd/status:v1")
    wrapper = _activate(tmp_path / "ferryd.sock", f"NOTIFY_SOCKET={notify_path}")

    with throttled(registry.host, rate=4 * MB) as proxy, _serve(tmp_path, wrapper) as served:
        assert notify.recv(4096) == b"READY=1\nSTATUS=idle"
        reference = f"{proxy.host}/systemd/status:v1"
        pulled: list[list[dict[str, Any]]] = []
        puller = threading.Thread(
            target=lambda: pulled.append(
                list(served.client().stream("POST", "/images/create", {"fromImage": reference}))
            )
        )
        puller.start()
        statuses = [notify.recv(4096)]
        while statuses[-1] != b"STATUS=idle":
            statuses.append(notify.recv(4096))
        puller.join(60)

        served.process.send_signal(signal.SIGTERM)
        assert notify.recv(4096).startswith(b"STOPPING=1")
        assert served.process.wait(20) == 0

    [messages] = pulled
    assert errors(messages) == []
    [*active, idle] = statuses
    # Each is sent when it changes, never twice in a row (not each second); the pull
    # shows as soon as it is asked for, its download once it moves.
    assert all(a != b for a, b in itertools.pairwise(statuses))
    assert all(status.startswith(b"STATUS=1 pulls, 0 pushes; ") for status in active)
    assert b"STATUS=1 pulls, 0 pushes; 1 downloads, 0 uploads active" in active
    assert idle == b"STATUS=idle"


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


# -- MemoryDenyWriteExecute=yes -------------------------------------------------------

# PR_SET_MDWE (Linux ≥ 6.3) refuses writable+executable memory as the unit's
# MemoryDenyWriteExecute=yes does; it survives execve, so it covers the daemon.
_DENY_WRITE_EXECUTE = textwrap.dedent(
    """
    import ctypes, os, sys
    PR_SET_MDWE, PR_MDWE_REFUSE_EXEC_GAIN = 65, 1
    if ctypes.CDLL(None).prctl(PR_SET_MDWE, PR_MDWE_REFUSE_EXEC_GAIN, 0, 0, 0) != 0:
        sys.exit(77)
    os.execv(sys.argv[1], sys.argv[1:])
    """
)
_WRITE_EXECUTE_PROBE = "import mmap; mmap.mmap(-1, 4096, prot=7)"  # PROT_READ|WRITE|EXEC


def _registry_auth(username: str, password: str) -> str:
    """An X-Registry-Auth header, as the docker CLI sends it."""
    payload = {"username": username, "password": password}
    return base64.urlsafe_b64encode(json.dumps(payload).encode()).decode()


@pytest.fixture
def deny_write_execute() -> list[str]:
    """A command prefix that runs a program without writable+executable memory."""
    wrapper = [sys.executable, "-c", _DENY_WRITE_EXECUTE]
    probe = subprocess.run(
        [*wrapper, sys.executable, "-c", _WRITE_EXECUTE_PROBE], capture_output=True, timeout=30
    )
    if probe.returncode == 77:
        pytest.skip("the kernel has no PR_SET_MDWE (Linux 6.3 or later)")
    assert probe.returncode != 0, "PR_SET_MDWE did not refuse writable+executable memory"
    return wrapper


def test_the_daemon_pulls_over_tls_without_writable_executable_memory(
    tls_registry: Registry,
    ca: trustme.CA,
    layout: Path,
    tmp_path: Path,
    deny_write_execute: list[str],
) -> None:
    built = build_image(
        layout,
        layers=[
            LayerSpec(size=300_000, seed=411, compression="gzip"),
            LayerSpec(size=300_000, seed=412, compression="zstd"),
        ],
    )
    seed(tls_registry, layout, "latest", "systemd/mdwe:v1")
    trust(tmp_path / "daemon" / "certs.d", tls_registry.host, ca)
    reference = f"{tls_registry.host}/systemd/mdwe:v1"

    with _serve(tmp_path / "daemon", deny_write_execute, insecure_registries=[]) as served:
        auth = {"X-Registry-Auth": _registry_auth(USER, PASSWORD)}
        messages = list(
            served.client().stream("POST", "/images/create", {"fromImage": reference}, auth)
        )
        image = served.client().get_json(f"/images/{reference}/json")
        served.process.send_signal(signal.SIGTERM)
        assert served.process.wait(20) == 0

    assert errors(messages) == []
    assert image["Id"] == built.config_digest
    assert "Traceback" not in served.log.read_text()


# -- the daemon's own socket ----------------------------------------------------------


def test_without_systemd_the_daemon_makes_its_socket_with_mode_0660(daemon: Daemon) -> None:
    mode = daemon.socket.stat().st_mode

    assert stat.S_ISSOCK(mode)
    assert stat.S_IMODE(mode) == 0o660


def test_socket_group_is_given_to_the_socket(start_daemon: type[Daemon]) -> None:
    group = grp.getgrgid(os.getgid()).gr_name

    daemon = start_daemon(socket_group=group)

    assert daemon.socket.stat().st_gid == os.getgid()


def _another_group() -> grp.struct_group:
    """A group other than our primary one that we may give files to."""
    # root may use any group; anyone else only the groups they are in.
    candidates = [g.gr_gid for g in grp.getgrall()] if os.geteuid() == 0 else os.getgroups()
    for gid in candidates:
        if gid != os.getgid():
            with contextlib.suppress(KeyError):
                return grp.getgrgid(gid)
    pytest.skip("no group but our primary one to give the socket to")


@pytest.mark.parametrize("spelling", ["name", "number"])
def test_socket_group_by_name_or_number_changes_the_sockets_group(
    start_daemon: type[Daemon], spelling: str
) -> None:
    group = _another_group()

    daemon = start_daemon(socket_group=group.gr_name if spelling == "name" else str(group.gr_gid))

    assert daemon.socket.stat().st_gid == group.gr_gid
    assert stat.S_IMODE(daemon.socket.stat().st_mode) == 0o660


def test_an_unknown_socket_group_stops_the_daemon_with_a_clear_message(tmp_path: Path) -> None:
    config = tmp_path / "ferryd.toml"
    config.write_text(
        f'root = "{tmp_path / "root"}"\nsocket = "{tmp_path / "s.sock"}"\n'
        'socket_group = "no-such-group-ferryd"\n'
    )

    done = ferryd("serve", "--config", str(config))

    assert done.returncode != 0
    failed = start_failure(done)
    assert "socket_group: there is no group named 'no-such-group-ferryd'" in failed["error"]
    assert not (tmp_path / "s.sock").exists()


def test_a_socket_group_that_cannot_be_given_leaves_no_socket_behind(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    def refuse(*_: object) -> None:
        raise PermissionError(errno.EPERM, os.strerror(errno.EPERM))

    monkeypatch.setattr(os, "chown", refuse)  # as for a group we are not a member of
    path = tmp_path / "s.sock"

    with pytest.raises(ConfigError, match=r"socket_group: cannot give .* to group '0'"):
        bind_unix_socket(path, 0o660, "0")
    assert not path.exists()


# -- the unit files ---------------------------------------------------------------------


def _verify(analyze: str, *units: Path) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [analyze, "verify", *map(str, units)], capture_output=True, text=True, timeout=60
    )


def test_the_units_pass_systemd_analyze_verify(tmp_path: Path) -> None:
    analyze, true = shutil.which("systemd-analyze"), shutil.which("true")
    if analyze is None or true is None:
        pytest.skip("systemd-analyze is not installed")
    # A unit that cannot be wrong tells whether systemd-analyze can work here at all.
    probe = tmp_path / "probe.service"
    probe.write_text(f"[Service]\nType=oneshot\nExecStart={true}\n")
    if (done := _verify(analyze, probe)).returncode != 0:
        pytest.skip(f"systemd-analyze verify cannot run here: {done.stderr.strip()}")
    units = tmp_path / "units"
    units.mkdir()
    service = (UNITS / "ferryd.service").read_text()
    assert "ExecStart=/usr/local/bin/ferryd " in service
    # verify checks that ExecStart= exists: use the ferryd this test runs.
    ferryd = Path(sys.executable).parent / "ferryd"
    (units / "ferryd.service").write_text(service.replace("/usr/local/bin/ferryd", str(ferryd)))
    shutil.copy(UNITS / "ferryd.socket", units / "ferryd.socket")

    done = _verify(analyze, units / "ferryd.service", units / "ferryd.socket")

    # Unknown or misspelt directives and bad values are only warned about (exit 0):
    # any diagnostic about our units counts as a failure.
    ours = (str(units), "ferryd.service:", "ferryd.socket:")
    assert [line for line in done.stderr.splitlines() if line.startswith(ours)] == []
    assert done.returncode == 0, done.stderr


def _directives(unit: Path) -> dict[str, str]:
    lines = unit.read_text().splitlines()
    return dict(line.split("=", 1) for line in lines if "=" in line and not line.startswith("#"))


def test_the_service_is_a_hardened_notify_unit_with_watchdog_and_state_directories() -> None:
    service = _directives(UNITS / "ferryd.service")

    assert (
        service
        | {
            "Type": "notify",
            "NotifyAccess": "main",
            "ExecStart": "/usr/local/bin/ferryd serve --config /etc/ferryd/config.toml",
            "Restart": "on-failure",
            "Requires": "ferryd.socket",
            "StateDirectory": "ferryd",
            "RuntimeDirectory": "ferryd",
            # Stopping the service must not delete the socket that ferryd.socket owns.
            "RuntimeDirectoryPreserve": "yes",
            "ProtectSystem": "strict",
            "ProtectHome": "yes",
            "NoNewPrivileges": "yes",
            "PrivateTmp": "yes",
            "PrivateDevices": "yes",
            "UMask": "0077",
            "SystemCallFilter": "@system-service",
            "RestrictAddressFamilies": "AF_UNIX AF_INET AF_INET6 AF_NETLINK",
        }
        == service
    )
    assert "ferryd.socket" in service["After"].split()
    assert int(service["WatchdogSec"]) >= 10
    # Room for the default grace period before systemd sends SIGKILL.
    assert int(service["TimeoutStopSec"]) > Settings().shutdown_timeout


def test_the_socket_unit_owns_the_default_socket_for_the_ferryd_group() -> None:
    socket_unit = _directives(UNITS / "ferryd.socket")

    assert socket_unit["ListenStream"] == str(Settings().socket_path)
    assert socket_unit["SocketMode"] == "0660"
    assert socket_unit["SocketGroup"] == "ferryd"
    assert socket_unit["WantedBy"] == "sockets.target"
    sysusers = (UNITS / "ferryd.sysusers").read_text().splitlines()
    assert "g ferryd -" in sysusers
