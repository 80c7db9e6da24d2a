"""The CLI against a fake daemon whose answers are cut or malformed: a clear error that
names the problem and a non-zero exit, never a traceback, nor a success (a push of every
tag of a repository that stops between two tags, a save cut short of its length)."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from ferryd.cli import client
from support.daemon import ferryd
from support.fake_daemon import assert_failed, chunked, fake_daemon, lines, sized

# -- a push of every tag of a repository, cut between two tags ---------------------------


PUSHED_A = lines(
    {"status": "The push refers to repository [r.example/seven]"},
    {"status": "Pushed", "id": "0123456789ab"},
    {"status": "a: digest: sha256:aa size: 402"},
    {"aux": {"Tag": "a", "Digest": "sha256:aa", "Size": 402}},
)


@pytest.mark.parametrize("quiet", [False, True], ids=["progress", "quiet"])
def test_a_repository_push_cut_after_its_first_tag_exits_non_zero(
    tmp_path: Path, quiet: bool
) -> None:
    """The same messages with the answer's last chunk are a whole push of one tag."""
    command = ["push", *(["-q"] if quiet else []), "r.example/seven"]
    with fake_daemon(tmp_path, chunked(PUSHED_A, last=False)) as fake:
        cut = ferryd("-H", fake.host, *command)
    with fake_daemon(tmp_path, chunked(PUSHED_A)) as fake:
        whole = ferryd("-H", fake.host, *command)

    assert_failed(cut, "Error: the push did not finish")
    assert "run `ferryd push r.example/seven` again" in cut.stderr
    assert whole.returncode == 0, whole.stderr
    if quiet:
        assert cut.stdout == ""
        assert whole.stdout == "sha256:aa\n"


def test_a_push_whose_aux_is_not_an_object_fails_clearly(tmp_path: Path) -> None:
    answer = chunked(lines({"status": "a: digest: sha256:aa size: 1"}, {"aux": [1]}))
    with fake_daemon(tmp_path, answer) as fake:
        result = ferryd("-H", fake.host, "push", "-q", "r.example/seven:a")

    assert_failed(result, "the daemon's progress stream is malformed: an aux is not a JSON")


# -- streams: events, pull -------------------------------------------------------------


EVENT = {
    "Type": "image",
    "Action": "pull",
    "Actor": {"ID": "r.example/app:v1", "Attributes": {"name": "r.example/app"}},
    "time": 1,
    "timeNano": 1_000_000_000,
}


def test_events_cut_mid_stream_exit_non_zero(tmp_path: Path) -> None:
    """As a daemon killed while `ferryd events` follows it; one that stops ends the
    stream with its last chunk: exit 0."""
    command = ["events", "--json", "--since", "0", "--until", "9999999999"]
    with fake_daemon(tmp_path, chunked(lines(EVENT), last=False)) as fake:
        cut = ferryd("-H", fake.host, *command)
    with fake_daemon(tmp_path, chunked(lines(EVENT))) as fake:
        whole = ferryd("-H", fake.host, *command)

    assert_failed(cut, "the daemon's answer to GET /events was cut short")
    assert json.loads(cut.stdout) == EVENT
    assert whole.returncode == 0, whole.stderr
    assert json.loads(whole.stdout) == EVENT


@pytest.mark.parametrize(
    ("line", "problem"),
    [
        (b"[1]\r\n", "expected a JSON object, got a list"),
        (b"null\r\n", "expected a JSON object, got null"),
        (b"hello\r\n", "not JSON: 'hello\\r'"),
    ],
    ids=["list", "null", "not-json"],
)
@pytest.mark.parametrize("command", [["pull", "r.example/app:v1"], ["pull", "-q", "x"], ["events"]])
def test_a_stream_line_that_is_not_a_json_object_is_named(
    tmp_path: Path, line: bytes, problem: str, command: list[str]
) -> None:
    with fake_daemon(tmp_path, chunked(line)) as fake:
        result = ferryd("-H", fake.host, *command)

    assert_failed(result, f"is malformed: {problem}")


def test_a_progress_line_with_odd_field_types_is_shown(tmp_path: Path) -> None:
    answer = chunked(
        lines(
            {"status": "Downloading", "id": ["a"], "progress": 7},
            {"status": "Status: Downloaded newer image for r.example/app:v1"},
        )
    )
    with fake_daemon(tmp_path, answer) as fake:
        result = ferryd("-H", fake.host, "pull", "r.example/app:v1")

    assert result.returncode == 0, result.stderr
    assert "['a']: Downloading" in result.stdout


# -- answers read whole ----------------------------------------------------------------


@pytest.mark.parametrize(
    "answer",
    [sized(b"[]", length=102), chunked(b"[", b"]", last=False)],
    ids=["content-length", "chunked"],
)
@pytest.mark.parametrize("command", [["images"], ["history", "x"], ["ps"], ["df"]])
def test_an_answer_cut_short_is_an_error_naming_the_request(
    tmp_path: Path, answer: bytes, command: list[str]
) -> None:
    with fake_daemon(tmp_path, answer) as fake:
        result = ferryd("-H", fake.host, *command)

    assert_failed(result, "was cut short (the connection closed before its end")
    assert "the daemon's answer to GET /" in result.stderr


@pytest.mark.parametrize(
    ("body", "problem"),
    [(b"hello", "not JSON: 'hello'"), (b"[" * 100_000, "not JSON: '[[[")],
    ids=["text", "nested-too-deep"],
)
def test_an_answer_that_is_not_json_is_an_error_naming_the_request(
    tmp_path: Path, body: bytes, problem: str
) -> None:
    with fake_daemon(tmp_path, sized(body)) as fake:
        result = ferryd("-H", fake.host, "inspect", "x")

    assert_failed(result, f"the daemon's answer to GET /images/x/json is malformed: {problem}")


def test_a_refusal_cut_short_is_still_said(tmp_path: Path) -> None:
    answer = sized(b'{"message": "No such', length=100, status="404 Not Found")
    with fake_daemon(tmp_path, answer) as fake:
        result = ferryd("-H", fake.host, "images")

    assert_failed(result, 'Error response from daemon: {"message": "No such')


@pytest.mark.parametrize(
    ("body", "method", "problem"),
    [
        (b"[1]", "json_object", "expected a JSON object, got a list"),
        (b"{}", "json_objects", "expected a list of JSON objects, got an object"),
        (b"[{}, 1]", "json_objects", "expected a JSON object, got a number"),
    ],
)
def test_the_client_gives_the_shape_asked_for_or_says_what_came(
    tmp_path: Path, body: bytes, method: str, problem: str
) -> None:
    with fake_daemon(tmp_path, sized(body)) as fake, pytest.raises(client.DaemonError) as caught:
        getattr(client.Client(fake.host), method)("GET", "/images/json")

    assert str(caught.value) == (f"the daemon's answer to GET /images/json is malformed: {problem}")


def test_the_client_reads_an_answer_whole_or_says_it_was_cut(tmp_path: Path) -> None:
    with fake_daemon(tmp_path, sized(b"OK", length=3)) as fake, pytest.raises(client.CutAnswer):
        client.Client(fake.host).read("GET", "/_ping")
    with fake_daemon(tmp_path, sized(b'[{"Id": "a"}]')) as fake:
        assert client.Client(fake.host).json_objects("GET", "/images/json") == [{"Id": "a"}]


def test_a_missing_field_read_in_answer_fields_names_the_request() -> None:
    row: dict[str, str] = {}
    with (
        pytest.raises(client.DaemonError, match=r"to GET /jobs is malformed: KeyError: 'ID'"),
        client.answer_fields("GET /jobs"),
    ):
        print(row["ID"])


# -- save and load ---------------------------------------------------------------------


def test_save_of_an_archive_shorter_than_its_length_fails_and_leaves_no_file(
    tmp_path: Path,
) -> None:
    output = tmp_path / "out" / "o.tar"
    output.parent.mkdir()
    with fake_daemon(tmp_path, sized(b"ab", length=102)) as fake:
        cut = ferryd("-H", fake.host, "save", "x", "-o", str(output))
    left = list(output.parent.iterdir())
    with fake_daemon(tmp_path, sized(b"ab")) as fake:
        whole = ferryd("-H", fake.host, "save", "x", "-o", str(output))

    assert_failed(cut, "the daemon's archive ended early")
    assert left == []
    assert whole.returncode == 0, whole.stderr
    assert output.read_bytes() == b"ab"


def test_save_to_a_directory_says_it_is_one(tmp_path: Path) -> None:
    out = tmp_path / "out"
    out.mkdir()
    with fake_daemon(tmp_path, sized(b"ab")) as fake:
        result = ferryd("-H", fake.host, "save", "x", "-o", f"{out}/")

    assert_failed(result, f"Error: cannot write {out}/: it is a directory")
    assert ".tmp" not in result.stderr
    assert list(out.iterdir()) == []


@pytest.mark.parametrize(
    ("where", "reason"),
    [("long", "AF_UNIX path too long"), ("under-a-file", "Not a directory")],
)
def test_load_says_why_the_daemon_cannot_be_reached(
    tmp_path: Path, where: str, reason: str
) -> None:
    archive = tmp_path / "image.tar"
    archive.write_bytes(bytes(1024))
    path = tmp_path / ("s" * 120) if where == "long" else archive / "ferryd.sock"

    result = ferryd("-H", f"unix://{path}", "load", "-i", str(archive))

    assert_failed(result, f"cannot connect to the ferryd daemon at unix://{path} ({reason})")


def test_load_of_a_stream_line_that_is_not_an_object_is_named(tmp_path: Path) -> None:
    archive = tmp_path / "image.tar"
    archive.write_bytes(bytes(1024))
    with fake_daemon(tmp_path, chunked(b"[1]\r\n")) as fake:
        result = ferryd("-H", fake.host, "load", "-i", str(archive))

    assert_failed(result, "answer to POST /images/load is malformed: expected a JSON object")
