"""Hostile settings, more: each mistake is a ConfigError naming the key and the problem
(exit 2 at start, `daemon.reload_failed` on reload), never a traceback nor a socket
file left behind; and SIGHUP never kills the daemon, while it starts or stops."""

from __future__ import annotations

import contextlib
import errno
import os
import signal
import subprocess
import sys
import time
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import pytest

from ferryd.cli.client import Client, DaemonError
from ferryd.daemon.api.serve import bind_unix_socket
from ferryd.daemon.settings import Settings, load_settings
from ferryd.errors import ConfigError
from support import forkserver
from support.daemon import Daemon, ferryd, start_failure, write_config
from support.waiting import wait_until


def _error(tmp_path: Path, text: str) -> str:
    config = tmp_path / "ferryd.toml"
    config.write_text(text, encoding="utf-8")
    with pytest.raises(ConfigError) as caught:
        load_settings(config)
    return str(caught.value)


def _load(tmp_path: Path, text: str) -> Settings:
    config = tmp_path / "ferryd.toml"
    config.write_text(text, encoding="utf-8")
    return load_settings(config)


def _serve_fails(tmp_path: Path, **settings: Any) -> dict[str, Any]:
    """`ferryd serve` with a config of `settings` over a root and socket in tmp_path:
    it must fail with exit 2 and one `daemon.start_failed` line (no traceback)."""
    config = write_config(tmp_path, settings)
    done = ferryd("serve", "--config", str(config))
    failed = start_failure(done)
    assert done.returncode == 2, failed
    return failed


def _sockets(directory: Path) -> list[Path]:
    if not directory.exists():
        return []
    return [p for p in directory.rglob("*") if p.is_socket()]


# -- 9: a socket_group number beyond what a gid can be ---------------------------------


@pytest.mark.parametrize("number", ["4294967295", "4294967296", "99999999999999999999"])
def test_a_socket_group_number_no_gid_can_have_is_refused_naming_the_key(
    tmp_path: Path, number: str
) -> None:
    message = _error(tmp_path, f'socket_group = "{number}"\n')

    assert (
        message
        == f"config file {tmp_path / 'ferryd.toml'}: socket_group: {number} is not a group number"
    )


@pytest.mark.daemon  # runs `ferryd serve`
def test_serve_with_a_socket_group_number_too_big_exits_2_leaving_no_socket(
    tmp_path: Path,
) -> None:
    failed = _serve_fails(tmp_path, socket_group="4294967296")

    assert "socket_group: 4294967296 is not a group number" in failed["error"]
    assert _sockets(tmp_path) == []


def test_binding_with_a_socket_group_number_too_big_is_a_config_error_leaving_nothing(
    tmp_path: Path,
) -> None:
    path = tmp_path / "s.sock"

    with pytest.raises(ConfigError, match="socket_group: 4294967296 is not a group number"):
        bind_unix_socket(path, 0o660, "4294967296")
    assert not path.exists()


# -- 10: a NUL character in a path -------------------------------------------------------


@pytest.mark.parametrize("key", ["root", "socket", "certs_dir", "credentials_file"])
def test_a_nul_in_a_path_setting_is_refused_naming_the_key(tmp_path: Path, key: str) -> None:
    message = _error(tmp_path, f'{key} = "/srv/a\\u0000b"\n')

    assert message == (
        f"config file {tmp_path / 'ferryd.toml'}: {key}: a path cannot contain a NUL "
        'character, got "/srv/a\\u0000b"'
    )


@pytest.mark.daemon  # runs `ferryd serve`
def test_serve_with_a_nul_in_the_socket_path_exits_2_leaving_no_stray_socket(
    tmp_path: Path,
) -> None:
    failed = _serve_fails(tmp_path, socket=str(tmp_path / "s\0.sock"))

    assert "socket: a path cannot contain a NUL character" in failed["error"]
    assert _sockets(tmp_path) == []  # not even `s`, where bind() would stop reading


def test_a_reload_with_a_nul_in_certs_dir_fails_naming_the_key_without_a_traceback(
    start_daemon: Callable[..., Daemon],
) -> None:
    daemon = start_daemon()

    event = daemon.reload(certs_dir=str(daemon.workdir / "certs\0.d"))

    assert event["event"] == "daemon.reload_failed"
    assert "certs_dir: a path cannot contain a NUL character" in event["error"]
    assert "exception" not in event
    assert "Traceback" not in daemon.log_path.read_text()
    with daemon.http(timeout=10) as http:
        assert http.get("/_ping").status_code == 200


# -- 14: messages that name the problem ---------------------------------------------------


def test_a_socket_path_too_long_for_a_unix_socket_is_refused_naming_the_key(
    tmp_path: Path,
) -> None:
    socket = "/run/" + "s" * 103  # 108 bytes: one more than sockaddr_un holds

    message = _error(tmp_path, f'socket = "{socket}"\n')

    assert message == (
        f'config file {tmp_path / "ferryd.toml"}: socket: "{socket}" is 108 bytes long; the '
        "path of a Unix socket can have at most 107 (choose a shorter one)"
    )
    assert _load(tmp_path, f'socket = "{socket[:-1]}"\n').socket == socket[:-1]


@pytest.mark.daemon  # runs `ferryd serve`
def test_serve_with_a_socket_path_too_long_exits_2_saying_why_and_makes_nothing(
    tmp_path: Path,
) -> None:
    directory = tmp_path / "run"
    socket = directory / ("s" * (120 - len(str(directory))))

    failed = _serve_fails(tmp_path, socket=str(socket))

    assert "socket:" in failed["error"]
    assert "at most 107" in failed["error"]
    assert "None" not in failed["error"]
    assert not directory.exists()


def test_binding_a_path_too_long_says_so(tmp_path: Path) -> None:
    path = tmp_path / ("s" * (120 - len(str(tmp_path))))

    with pytest.raises(ConfigError) as caught:
        bind_unix_socket(path, 0o660)

    assert str(caught.value) == f"cannot listen on {path}: AF_UNIX path too long"
    assert not path.exists()


@pytest.mark.parametrize(
    ("value", "shown"),
    [('"http://m.example"', '"http://m.example"'), ("[1, 2]", "[1, 2]"), ("{}", "{}")],
)
def test_mirrors_of_the_wrong_type_are_refused_naming_the_registry(
    tmp_path: Path, value: str, shown: str
) -> None:
    message = _error(tmp_path, f'[registry_mirrors]\n"docker.io" = {value}\n')

    assert message == (
        f'config file {tmp_path / "ferryd.toml"}: registry_mirrors."docker.io": expected an '
        f'array of mirror URLs such as ["https://mirror.example.com"], got {shown}'
    )


@pytest.mark.daemon  # runs `ferryd serve`
def test_serve_with_root_a_regular_file_exits_2_saying_it_is_not_a_directory(
    tmp_path: Path,
) -> None:
    root = tmp_path / "root-file"
    root.write_text("not a store\n")

    failed = _serve_fails(tmp_path, root=str(root))

    assert failed["error"] == f"root: {root} is not a directory"
    assert _sockets(tmp_path) == []


@pytest.mark.daemon  # runs `ferryd serve`
def test_serve_with_root_below_a_regular_file_exits_2_naming_the_file(tmp_path: Path) -> None:
    blocker = tmp_path / "file"
    blocker.write_text("")

    failed = _serve_fails(tmp_path, root=str(blocker / "store"))

    assert failed["error"] == (
        f"root: {blocker} is not a directory (so {blocker / 'store'} cannot be made)"
    )


# -- 15: mirror keys that no reference can ever have ---------------------------------------

_NOT_A_NAME = (
    "is not a registry name: HOST[:PORT], a valid host name or address (an IPv6 one in "
    'brackets, "[::1]:5000") and a port from 1 to 65535'
)


@pytest.mark.parametrize(
    ("key", "problem"),
    [
        ("", 'is empty; write a registry name such as "docker.io" or "registry.example:5000"'),
        (" ", 'is empty; write a registry name such as "docker.io" or "registry.example:5000"'),
        ("a b", _NOT_A_NAME),
        ("x:99999", _NOT_A_NAME),
        ("x:0", _NOT_A_NAME),
        ("x:", _NOT_A_NAME),
        ("under_score.lan", _NOT_A_NAME),
        ("-registry.lan", _NOT_A_NAME),
        ("registry..lan", _NOT_A_NAME),
        ("::1", _NOT_A_NAME),  # references write it "[::1]"
        ("a\\u0000b", _NOT_A_NAME),
    ],
)
def test_a_mirror_key_no_reference_can_have_is_refused(
    tmp_path: Path, key: str, problem: str
) -> None:
    message = _error(tmp_path, f'[registry_mirrors]\n"{key}" = ["https://m.example"]\n')

    assert message == (
        f'config file {tmp_path / "ferryd.toml"}: registry_mirrors: key "{key}" {problem}'
    )
    # What a reference can have as its registry is still taken.
    good = ["docker.io", "registry.lan:5000", "10.1.2.3", "[::1]:5000", "[fd00::1]", "localhost"]
    text = "[registry_mirrors]\n" + "".join(f'"{g}" = ["https://m.example"]\n' for g in good)
    assert list(_load(tmp_path, text).registry_mirrors) == good


# -- 16: socket_group is looked up by load_settings -----------------------------------------


def test_a_socket_group_naming_no_group_is_refused_by_load_settings(tmp_path: Path) -> None:
    message = _error(tmp_path, 'socket_group = "no-such-group-ferryd"\n')

    assert message == (
        f"config file {tmp_path / 'ferryd.toml'}: socket_group: there is no group named "
        "'no-such-group-ferryd' (create it, e.g. with systemd-sysusers or groupadd, or give "
        "a group number)"
    )


def test_a_reload_to_a_socket_group_naming_no_group_fails_as_the_next_start_would(
    start_daemon: Callable[..., Daemon], tmp_path: Path
) -> None:
    daemon = start_daemon()

    event = daemon.reload(socket_group="no-such-group-ferryd")

    assert event["event"] == "daemon.reload_failed"
    assert "socket_group: there is no group named 'no-such-group-ferryd'" in event["error"]
    assert daemon.alive
    # The next start says the same.
    assert (
        "socket_group: there is no group named"
        in _serve_fails(tmp_path / "next", socket_group="no-such-group-ferryd")["error"]
    )


# -- 4: SIGHUP while the daemon starts or stops ----------------------------------------------


def _writer_once_read(daemon: Daemon, fifo: Path) -> int:
    """`fifo` opened for writing, once the daemon has it open for reading (blocked in
    its start-up until something is written); fails the test if the daemon exits."""

    def opened() -> int | None:
        assert daemon.process is not None
        if daemon.process.poll() is not None:
            raise AssertionError(f"ferryd exited {daemon.process.returncode}:\n{daemon.log_tail()}")
        try:
            return os.open(fifo, os.O_WRONLY | os.O_NONBLOCK)
        except OSError as exc:
            if exc.errno == errno.ENXIO:  # nobody reads it yet
                return None
            raise

    writer = wait_until(
        opened, 20, what=lambda: f"ferryd to read its credentials file:\n{daemon.log_tail()}"
    )
    assert writer is not None
    return writer


@pytest.fixture
def held_start(tmp_path: Path) -> Iterator[tuple[Daemon, Path]]:
    """A daemon whose start-up waits, as a big store's sweep would: its credentials file
    is a FIFO it reads (on the way to binding its socket) until the test writes it."""
    daemon = Daemon(tmp_path / "daemon", {})
    daemon.workdir.mkdir()
    fifo = daemon.workdir / "credentials.fifo"
    os.mkfifo(fifo)
    daemon.settings = {"credentials_file": str(fifo)}
    write_config(daemon.workdir, daemon.settings)
    daemon.process = forkserver.spawn(
        ["serve", "--config", str(daemon.config_path)], env=dict(os.environ), log=daemon.log_path
    )
    yield daemon, fifo
    assert daemon.process is not None
    if daemon.process.poll() is None:
        with contextlib.suppress(OSError):  # still waiting for its credentials: let it go
            writer = os.open(fifo, os.O_WRONLY | os.O_NONBLOCK)
            os.write(writer, b"{}")
            os.close(writer)
        daemon.stop()


@pytest.mark.daemon  # runs `ferryd serve`
def test_sighups_during_start_up_are_held_and_applied_once_ready(
    held_start: tuple[Daemon, Path],
) -> None:
    daemon, fifo = held_start
    assert daemon.process is not None
    writer = _writer_once_read(daemon, fifo)
    try:
        for _ in range(3):
            daemon.process.send_signal(signal.SIGHUP)
            time.sleep(0.05)
        time.sleep(0.2)
        assert daemon.process.poll() is None, f"SIGHUP killed ferryd:\n{daemon.log_tail()}"
        # Edited while the daemon starts, after it read the file: the held HUP applies it.
        daemon.settings = {"credentials_file": "", "log_level": "debug"}
        write_config(daemon.workdir, daemon.settings)
        os.write(writer, b"{}")
    finally:
        os.close(writer)

    wait_until(daemon._reload_events, 20, what=lambda: f"a reload:\n{daemon.log_tail()}")
    time.sleep(0.3)  # three HUPs held make one reload, not three
    reloads = daemon._reload_events()
    assert [r["event"] for r in reloads] == ["daemon.reloaded"]
    assert reloads[0]["changed"] == ["credentials_file", "log_level"]
    events = [e["event"] for e in daemon.log_events()]
    assert events.index("daemon.ready") < events.index("daemon.reloaded")
    assert daemon.stop() == 0


@pytest.mark.daemon  # runs `ferryd serve`
def test_sighups_while_the_daemon_stops_never_kill_it(tmp_path: Path) -> None:
    # A plain `python -m ferryd serve` (no fork server): its exit includes the
    # interpreter's finalization, which gives caught signals their default action back.
    config = write_config(tmp_path, {})
    log = tmp_path / "ferryd.log"
    host = f"unix://{tmp_path / 'ferryd.sock'}"
    for attempt in range(3):
        with log.open("ab") as out:
            process = subprocess.Popen(
                [sys.executable, "-m", "ferryd", "serve", "--config", str(config)],
                stdout=out,
                stderr=subprocess.STDOUT,
                env={**os.environ, "PYTHONUNBUFFERED": "1"},
            )
        try:

            def answering(process: subprocess.Popen[bytes] = process) -> bool:
                if process.poll() is not None:
                    raise AssertionError(f"ferryd exited {process.returncode}")
                try:
                    Client(host, timeout=5).request("GET", "/_ping").read()
                except DaemonError:
                    return False
                return True

            wait_until(answering, 30, what="ferryd to answer")
            process.send_signal(signal.SIGTERM)
            deadline = time.monotonic() + 30
            while process.poll() is None and time.monotonic() < deadline:
                process.send_signal(signal.SIGHUP)  # Popen: never once it has exited
                time.sleep(0.0005)
            code = process.wait(10)
        finally:
            if process.poll() is None:
                process.kill()
                process.wait()
        assert code == 0, f"attempt {attempt}: ferryd exited {code}:\n{log.read_text()[-3000:]}"
    assert "Traceback" not in log.read_text()


# -- and URLs: a NUL, a control character or a space is no part of one -----------------------


@pytest.mark.parametrize("url", ["http://a\\u0000b:3128", "http://a\\tb:3128", "http://a b:3128"])
def test_a_proxy_or_mirror_url_with_a_control_character_or_space_is_refused(
    tmp_path: Path, url: str
) -> None:
    assert "proxy: expected a URL such as" in _error(tmp_path, f'proxy = "{url}"\n')
    message = _error(tmp_path, f'[registry_mirrors]\n"docker.io" = ["{url}"]\n')
    assert 'registry_mirrors."docker.io": expected a URL such as' in message
