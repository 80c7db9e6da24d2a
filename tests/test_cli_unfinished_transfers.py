"""`ferryd pull` and `ferryd push` fail (exit 1, with a message) when the daemon's answer
ends before its final status, as when the daemon is killed mid-transfer; `-q` prints
nothing then. Without a terminal, a push prints one line per state change of each layer,
as a pull does."""

from __future__ import annotations

import io
import signal
import subprocess
import sys
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

from ferryd.cli.display import StreamError, finished, pull_done, push_done, show
from support.daemon import Daemon, errors
from support.images import BuiltImage, LayerSpec, build_image, seed
from support.registry import Registry, start_registry
from support.slow_link import slow_link
from support.throttle import throttled
from support.waiting import wait_until


def _ferryd(daemon: Daemon, *args: str) -> subprocess.Popen[str]:
    return subprocess.Popen(
        [sys.executable, "-m", "ferryd", "-H", daemon.host, *args],
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        stdin=subprocess.DEVNULL,
        text=True,
    )


def _killed(daemon: Daemon) -> None:
    assert daemon.process is not None
    daemon.process.send_signal(signal.SIGKILL)
    daemon.process.wait()


@pytest.fixture(scope="module")
def big(registry: Registry, tmp_path_factory: pytest.TempPathFactory) -> BuiltImage:
    layout = tmp_path_factory.mktemp("big")
    built = build_image(
        layout, layers=[LayerSpec(size=100, seed=7301), LayerSpec(size=3_000_000, seed=7302)]
    )
    seed(registry, layout, "latest", "unfinished/app:v1")
    return built


@pytest.mark.registry
@pytest.mark.parametrize("quiet", [False, True], ids=["progress", "quiet"])
def test_a_pull_cut_by_the_daemons_death_exits_non_zero(
    registry: Registry, daemon: Daemon, big: BuiltImage, quiet: bool
) -> None:
    with throttled(registry.host, 300_000) as proxy:
        reference = f"{proxy.host}/unfinished/app:v1"
        pull = _ferryd(daemon, "pull", *(["-q"] if quiet else []), reference)
        daemon.wait_for_download(big.layers[1].digest, 100_000)
        _killed(daemon)
        out, err = pull.communicate(timeout=60)

    assert pull.returncode == 1
    assert "Error: the pull did not finish" in err
    assert f"run `ferryd pull {reference}` again" in err
    assert "Traceback" not in err
    if quiet:
        assert out == ""
    else:
        assert "Pulling fs layer" in out
        assert "Status:" not in out


@pytest.mark.registry
def test_a_quiet_pull_prints_the_reference_when_it_finishes(
    registry: Registry, daemon: Daemon, big: BuiltImage
) -> None:
    pull = _ferryd(daemon, "pull", "-q", f"{registry.host}/unfinished/app:v1")
    out, err = pull.communicate(timeout=120)

    assert pull.returncode == 0, err
    assert out == f"{registry.host}/unfinished/app:v1\n"


@pytest.fixture
def target(tmp_path: Path) -> Iterator[Registry]:
    with start_registry(tmp_path / "target") as reg:
        yield reg


@pytest.mark.registry
def test_a_push_cut_by_the_daemons_death_exits_non_zero(
    registry: Registry, target: Registry, daemon: Daemon, big: BuiltImage
) -> None:
    assert not errors(daemon.pull(f"{registry.host}/unfinished/app:v1"))
    with slow_link(target.host, 300_000) as link:
        reference = f"{link.host}/unfinished/pushed:v1"
        daemon.client().request(
            "POST",
            f"/images/{registry.host}/unfinished/app:v1/tag",
            {"repo": f"{link.host}/unfinished/pushed", "tag": "v1"},
        ).read()
        push = _ferryd(daemon, "push", "-q", reference)
        wait_until(
            lambda: any(
                row["Action"] == "upload" and (row["Current"] or 0) > 100_000
                for row in daemon.client().get_json("/transfers")
            ),
            60,
            what="the upload of the big layer to pass 100 kB",
        )
        _killed(daemon)
        out, err = push.communicate(timeout=60)

    assert push.returncode == 1
    assert "Error: the push did not finish" in err
    assert out == ""


# -- the stream's end and the plain display, on made-up streams --------------------------


def _pulled(*statuses: str) -> list[dict[str, Any]]:
    return [{"status": status} for status in statuses]


def test_a_stream_that_ends_on_its_final_status_is_finished() -> None:
    messages = _pulled("Pulling from team/app", "Digest: sha256:ab", "Status: Image is up to date")

    assert list(finished(messages, pull_done, "cut")) == messages


@pytest.mark.parametrize(
    "messages",
    [[], _pulled("Pulling from team/app"), _pulled("Status: x", "Pulling from team/app")],
    ids=["empty", "no-status", "status-not-last"],
)
def test_a_stream_that_ends_early_is_an_error(messages: list[dict[str, Any]]) -> None:
    with pytest.raises(StreamError, match=r"^cut$"):
        list(finished(messages, pull_done, "cut"))


def test_a_push_stream_ends_on_its_aux() -> None:
    done = [{"status": "v1: digest: sha256:ab size: 9"}, {"aux": {"Tag": "v1"}}]

    assert list(finished(done, push_done, "cut")) == done
    with pytest.raises(StreamError):
        list(finished(done[:1], push_done, "cut"))


def test_plain_output_prints_each_layer_state_once() -> None:
    def progress(status: str, layer: str, current: int) -> dict[str, Any]:
        return {
            "status": status,
            "id": layer,
            "progressDetail": {"current": current, "total": 100},
            "progress": f"[{'=' * (current // 10)}>] {current}B/100B",
        }

    messages = [
        {"status": "The push refers to repository [r/app]"},
        {"status": "Preparing", "id": "aaa"},
        {"status": "Preparing", "id": "bbb"},
        {"status": "Waiting", "id": "bbb"},
        progress("Pushing", "aaa", 10),
        progress("Pushing", "aaa", 50),
        {"status": "Retrying in 3 seconds", "id": "aaa"},
        {"status": "Retrying in 2 seconds", "id": "aaa"},
        progress("Pushing", "aaa", 90),
        {"status": "Pushed", "id": "aaa"},
        {"status": "Layer already exists", "id": "bbb"},
        {"status": "v1: digest: sha256:ab size: 9"},
        {"aux": {"Tag": "v1", "Digest": "sha256:ab", "Size": 9}},
    ]
    out = io.StringIO()

    aux = show(messages, out)

    assert out.getvalue().splitlines() == [
        "The push refers to repository [r/app]",
        "aaa: Preparing",
        "bbb: Preparing",
        "bbb: Waiting",
        "aaa: Pushing",
        "aaa: Retrying in 3 seconds",
        "aaa: Pushing",
        "aaa: Pushed",
        "bbb: Layer already exists",
        "v1: digest: sha256:ab size: 9",
    ]
    assert aux == {"Tag": "v1", "Digest": "sha256:ab", "Size": 9}
