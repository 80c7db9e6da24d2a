"""The CLI given what it cannot use: a daemon answer of another shape than the one asked
for, a stdout it cannot write (a full disk, none at all), the end of input at a prompt,
a config.json that is not UTF-8, a date at the end of the calendar, a PID in digits
that are not ASCII. A clear error naming the problem and an exit status that says so,
never a traceback, nor a success with nothing printed."""

from __future__ import annotations

import json
import os
import select
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest

from support.fake_daemon import assert_failed, chunked, fake_daemon, host, lines, sized


def ferryd(
    *args: str,
    env: dict[str, str] | None = None,
    stdout: int | None = subprocess.PIPE,
    shell_redirect: str = "",
) -> subprocess.CompletedProcess[str]:
    """`python -m ferryd ARGS`; `shell_redirect` (`>&-`) is applied by a shell first."""
    command = [sys.executable, "-m", "ferryd", *args]
    if shell_redirect:
        command = ["sh", "-c", f'exec "$@" {shell_redirect}', "sh", *command]
    return subprocess.run(
        command,
        stdin=subprocess.DEVNULL,
        stdout=stdout,
        stderr=subprocess.PIPE,
        text=True,
        timeout=60,
        env={**os.environ, **(env or {})},
    )


# -- answers of another shape than the command reads -------------------------------------


IMAGE = {"Id": "sha256:" + "a" * 64, "Created": 1, "Size": 1, "RepoTags": ["r.example/a:v1"]}
STEP = {"Id": "<missing>", "Created": 1, "CreatedBy": "x", "Size": 1, "Comment": ""}


def _malformed(request: str, problem: str) -> str:
    return f"the daemon's answer to {request} is malformed: {problem}"


SHAPES = [
    # command, answer's JSON, what is said
    (
        ["images"],
        "null",
        _malformed("GET /images/json", "expected a list of JSON objects, got null"),
    ),
    (["images"], "[1]", _malformed("GET /images/json", "expected a JSON object, got a number")),
    (["images"], "[{}]", _malformed("GET /images/json", "KeyError: 'Id'")),
    (["images"], "{}", "expected a list of JSON objects, got an object"),
    (["images", "-q"], "[{}]", _malformed("GET /images/json", "KeyError: 'Id'")),
    (["images", "--tree"], "[{}]", _malformed("GET /images/json", "KeyError: 'Id'")),
    (
        ["images"],
        json.dumps([{**IMAGE, "RepoTags": "r.example/a:v1"}]),
        "TypeError: 'RepoTags' is not a list of strings: 'r.example/a:v1'",
    ),
    (
        ["images", "-q", "--no-trunc"],
        json.dumps([{**IMAGE, "Id": 7}]),
        "TypeError: an image ID is not a string: 7",
    ),
    (["history", "x"], "[{}]", _malformed("GET /images/x/history", "KeyError: 'CreatedBy'")),
    (["history", "x"], "null", "expected a list of JSON objects, got null"),
    (
        ["history", "x"],
        json.dumps([STEP, {**STEP, "Comment": ["a"]}]),
        "TypeError: 'Comment' is not a string: ['a']",
    ),
    (["ps"], "null", _malformed("GET /jobs", "expected a list of JSON objects, got null")),
    (["ps"], "[{}]", _malformed("GET /jobs", "KeyError: 'ID'")),
    (["df"], "[1]", _malformed("GET /system/df", "expected a JSON object, got a list")),
    (["df"], '{"Images": 3}', _malformed("GET /system/df", "TypeError: 'Images' is not a list")),
    (["rmi", "x"], "{}", _malformed("DELETE /images/x", "expected a list of JSON objects")),
    (["rmi", "x"], "[1]", _malformed("DELETE /images/x", "expected a JSON object, got a number")),
    (["prune", "--force"], "[1]", _malformed("POST /images/prune", "expected a JSON object")),
    (
        ["prune", "--force"],
        '{"ImagesDeleted": [1]}',
        _malformed("POST /images/prune", "AttributeError"),
    ),
    (
        ["login", "-u", "a", "-p", "b", "r.example"],
        "[1]",
        _malformed("POST /auth", "expected a JSON object, got a list"),
    ),
    (
        ["login", "-u", "a", "-p", "b", "r.example"],
        '{"IdentityToken": 5}',
        _malformed("POST /auth", "'IdentityToken' is not a string: 5"),
    ),
]


@pytest.mark.parametrize(
    ("command", "body", "message"), SHAPES, ids=[f"{c[0]} {b[:20]}" for c, b, _ in SHAPES]
)
def test_an_answer_of_another_shape_is_named_and_nothing_is_printed(
    tmp_path: Path, command: list[str], body: str, message: str
) -> None:
    env = {"DOCKER_CONFIG": str(tmp_path / "docker")}
    with fake_daemon(tmp_path, sized(body.encode())):
        result = ferryd("-H", host(tmp_path), *command, env=env)

    assert_failed(result, message)
    assert result.stdout == ""
    assert not (tmp_path / "docker" / "config.json").exists()  # no login kept


@pytest.mark.parametrize(
    ("body", "message"),
    [
        ("{}", _malformed("POST /fsck", "KeyError: 'Problems'")),
        ("null", _malformed("POST /fsck", "expected a JSON object, got null")),
        ('{"Problems": "ab"}', _malformed("POST /fsck", "TypeError: 'Problems' is not a list")),
        ("hello", _malformed("POST /fsck", "not JSON: 'hello'")),
    ],
    ids=["no-problems", "null", "problems-a-string", "not-json"],
)
def test_fsck_of_a_malformed_report_could_not_check(
    tmp_path: Path, body: str, message: str
) -> None:
    """2, as for a daemon that cannot be reached: 1 would say the store has problems."""
    with fake_daemon(tmp_path, sized(body.encode())):
        result = ferryd("-H", host(tmp_path), "fsck")

    assert_failed(result, message, status=2)
    assert result.stdout == ""


@pytest.mark.parametrize(
    "command",
    [["rmi", "x"], ["tag", "x", "y:z"], ["prune", "--force"], ["login", "-u", "a", "-p", "b"]],
)
def test_answers_read_whole_say_when_they_are_cut_or_not_json(
    tmp_path: Path, command: list[str]
) -> None:
    cut = b"HTTP/1.1 200 OK\r\nContent-Length: 50\r\nConnection: close\r\n\r\n[]"
    env = {"DOCKER_CONFIG": str(tmp_path / "docker")}
    with fake_daemon(tmp_path, cut):
        short = ferryd("-H", host(tmp_path), *command, env=env)
    with fake_daemon(tmp_path, sized(b"hello")):
        text = ferryd("-H", host(tmp_path), *command, env=env)

    assert_failed(short, "was cut short (the connection closed before its end")
    if command[0] != "tag":  # its answer's body says nothing
        assert_failed(text, "is malformed: not JSON: 'hello'")


def test_an_event_without_its_fields_is_named(tmp_path: Path) -> None:
    event = {"Type": "image", "Action": "pull", "Actor": {"ID": "a", "Attributes": {}}}
    with fake_daemon(tmp_path, chunked(lines({**event, "timeNano": 10**9}, event))):
        result = ferryd("-H", host(tmp_path), "events", "--until", "1")

    assert_failed(result, _malformed("GET /events", "KeyError: 'timeNano'"))
    assert result.stdout == "1970-01-01T00:00:01.000000+00:00 image pull a ()\n"


# -- stdout --------------------------------------------------------------------------------


PULLED = lines(
    {"status": "Pulling from app", "id": "v1"},
    {"status": "Status: Downloaded newer image for r.example/app:v1"},
)
EVENT = {
    "Type": "image",
    "Action": "pull",
    "Actor": {"ID": "a", "Attributes": {}},
    "time": 1,
    "timeNano": 10**9,
}


@pytest.mark.parametrize(
    ("command", "answer"),
    [
        (["images"], sized(b"[]")),
        (["inspect", "x"], sized(b"{}")),
        (["history", "x"], sized(b"[]")),
        (["ps"], sized(b"[]")),
        (["df"], sized(b"{}")),
        (["pull", "r.example/app:v1"], chunked(PULLED)),
        (["pull", "-q", "r.example/app:v1"], chunked(PULLED)),
        (["events", "--until", "1"], chunked(lines(EVENT))),
    ],
    ids=["images", "inspect", "history", "ps", "df", "pull", "pull-q", "events"],
)
def test_a_full_disk_on_stdout_is_an_error_saying_so(
    tmp_path: Path, command: list[str], answer: bytes
) -> None:
    env = {"DOCKER_CONFIG": str(tmp_path / "docker")}
    with fake_daemon(tmp_path, answer), open("/dev/full", "w") as full:
        result = ferryd("-H", host(tmp_path), *command, env=env, stdout=full.fileno())

    assert_failed(result, "Error: cannot write stdout: No space left on device")
    assert result.stderr.count("\n") == 1, result.stderr  # said once, then nothing


def test_events_to_a_reader_that_left_end_as_by_sigpipe_and_to_a_full_disk_fail(
    tmp_path: Path,
) -> None:
    """The reader of a pipe going away is no error (`ferryd events | head -1`): the
    status of a tool SIGPIPE stopped, and nothing said. A disk that is full is one."""
    answer = chunked(lines(EVENT))
    reader, writer = os.pipe()
    os.close(reader)
    with fake_daemon(tmp_path, answer):
        try:
            left = ferryd("-H", host(tmp_path), "events", "--until", "1", stdout=writer)
        finally:
            os.close(writer)
        with open("/dev/full", "w") as full:
            filled = ferryd("-H", host(tmp_path), "events", "--until", "1", stdout=full.fileno())

    assert left.returncode == 128 + signal.SIGPIPE, left.stderr
    assert left.stderr == ""
    assert_failed(filled, "Error: cannot write stdout: No space left on device")


@pytest.mark.parametrize(
    ("command", "answer"),
    [
        (["images"], sized(b"[]")),
        (["images", "-q"], sized(json.dumps([IMAGE]).encode())),
        (["pull", "r.example/app:v1"], chunked(PULLED)),
        (["pull", "-q", "r.example/app:v1"], chunked(PULLED)),
        (["save", "x"], sized(b"an archive")),
    ],
    ids=["images", "images-q", "pull", "pull-q", "save"],
)
def test_without_a_stdout_a_command_that_prints_fails_saying_so(
    tmp_path: Path, command: list[str], answer: bytes
) -> None:
    """Started with stdout closed (`>&-`): `images` exited 0 having printed nothing;
    `pull` and `save` had a traceback."""
    env = {"DOCKER_CONFIG": str(tmp_path / "docker")}
    with fake_daemon(tmp_path, answer):
        result = ferryd("-H", host(tmp_path), *command, env=env, shell_redirect=">&-")

    assert_failed(result, "Error: cannot write stdout: it is closed")


def test_without_a_stdin_prune_asks_for_force(tmp_path: Path) -> None:
    result = ferryd("-H", host(tmp_path), "prune", shell_redirect="<&-")

    assert_failed(result, "give --force to do it without a terminal")


# -- the end of input at a prompt ----------------------------------------------------------


# Make the pty the command's controlling terminal (getpass reads /dev/tty), then run it.
_ON_THE_TERMINAL = (
    "import fcntl, os, sys, termios; fcntl.ioctl(0, termios.TIOCSCTTY, 0); "
    "os.execv(sys.executable, [sys.executable, '-m', 'ferryd', *sys.argv[1:]])"
)


def on_a_terminal_answer_eof(prompt: bytes, *args: str, env: dict[str, str]) -> tuple[int, str]:
    """Run `ferryd ARGS` on a terminal, type Ctrl-D once `prompt` shows; its exit
    status and what the terminal showed."""
    main, terminal = os.openpty()
    process = subprocess.Popen(
        [sys.executable, "-c", _ON_THE_TERMINAL, *args],
        stdin=terminal,
        stdout=terminal,
        stderr=terminal,
        start_new_session=True,
        env={**os.environ, **env},
    )
    os.close(terminal)
    shown = b""
    deadline = time.monotonic() + 30
    try:
        typed = False
        while time.monotonic() < deadline:
            if not typed and shown.endswith(prompt):
                os.write(main, b"\x04")
                typed = True
            ready, _, _ = select.select([main], [], [], 0.1)
            if not ready:
                continue
            try:
                piece = os.read(main, 1 << 16)
            except OSError:  # EIO: the command has ended, and the terminal with it
                break
            if not piece:
                break
            shown += piece
        status = process.wait(timeout=30)
    finally:
        if process.poll() is None:
            process.kill()
            process.wait()
        os.close(main)
    return status, shown.decode(errors="replace")


def test_ctrl_d_at_the_prune_prompt_is_no(tmp_path: Path) -> None:
    """As `docker image prune` answered no: cancelled, exit 0, and nothing asked of
    the daemon (there is none)."""
    status, shown = on_a_terminal_answer_eof(b"[y/N] ", "-H", host(tmp_path), "prune", env={})

    assert "Traceback" not in shown, shown
    assert status == 0, shown
    assert shown.endswith("Are you sure you want to continue? [y/N] \r\n"), shown


@pytest.mark.parametrize(
    ("args", "prompt", "asked"),
    [
        (["r.example"], b"Username: ", "username"),
        (["-u", "a", "r.example"], b"Password: ", "password"),
    ],
)
def test_ctrl_d_at_a_login_prompt_aborts_the_login(
    tmp_path: Path, args: list[str], prompt: bytes, asked: str
) -> None:
    env = {"DOCKER_CONFIG": str(tmp_path / "docker")}
    status, shown = on_a_terminal_answer_eof(prompt, "-H", host(tmp_path), "login", *args, env=env)

    assert "Traceback" not in shown, shown
    assert status == 1, shown
    assert f"Error: login aborted: the input ended at the {asked} prompt" in shown
    assert not (tmp_path / "docker" / "config.json").exists()


# -- config.json, dates, PIDs --------------------------------------------------------------


def test_a_config_json_that_is_not_utf8_is_broken_json(tmp_path: Path) -> None:
    """A pull warns and goes on without a login, as for any broken config.json; a login
    says the file is broken and keeps nothing."""
    config = tmp_path / "docker" / "config.json"
    config.parent.mkdir()
    config.write_bytes(b"\xff\xfe")
    env = {"DOCKER_CONFIG": str(config.parent)}
    with fake_daemon(tmp_path, chunked(PULLED)):
        pulled = ferryd("-H", host(tmp_path), "pull", "-q", "r.example/app:v1", env=env)
    with fake_daemon(tmp_path, sized(b'{"Status": "Login Succeeded"}')):
        login = ferryd("-H", host(tmp_path), "login", "-u", "a", "-p", "b", "x.example", env=env)

    assert pulled.returncode == 0, pulled.stderr
    assert pulled.stdout == "r.example/app:v1\n"
    assert f"WARNING: {config} is not valid JSON: 'utf-8' codec can't decode" in pulled.stderr
    assert "going on without a login for r.example" in pulled.stderr
    assert_failed(login, f"Error: {config} is not valid JSON: 'utf-8' codec can't decode")
    assert config.read_bytes() == b"\xff\xfe"


@pytest.mark.parametrize(
    ("zone", "option", "value", "seconds"),
    [
        ("UTC", "--since", "0001-01-01", "-62135596800"),
        ("Asia/Tokyo", "--until", "9999-12-31T23:59:59", str(253402300799 - 9 * 3600)),
        ("America/New_York", "--until", "9999-12-31T23:59:59", str(253402300799 + 5 * 3600)),
        ("America/New_York", "--since", "0001-01-01T12:00", None),
    ],
)
def test_events_since_or_until_the_ends_of_the_calendar(
    tmp_path: Path, zone: str, option: str, value: str, seconds: str | None
) -> None:
    """A time without a zone is local, as docker takes it, at year 1 and 9999 too (the
    local offset of year 1 is the zone's mean solar time: only checked to be sent)."""
    with fake_daemon(tmp_path, chunked(b"")) as daemon:
        result = ferryd("-H", host(tmp_path), "events", option, value, env={"TZ": zone})

    assert result.returncode == 0, result.stderr
    [request] = daemon.requests
    sent = request.partition(f"{option[2:]}=")[2].partition("&")[0]
    if seconds is not None:
        assert sent == f"{seconds}.000000000"
    else:
        assert sent.startswith("-62135")


@pytest.mark.parametrize("pid", ["²", "١٢"])
def test_reload_of_a_pid_in_other_digits_is_not_a_process_id(pid: str) -> None:
    result = ferryd("reload", pid)

    assert_failed(result, f"ferryd reload: {pid!r} is not a process ID")
