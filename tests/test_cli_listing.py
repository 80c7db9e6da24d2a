"""`ferryd images [REPO[:TAG]] [-f …] [-a] [--digests] [-q]`, `ferryd history`, `ferryd
prune` and `ferryd df`, printed as the docker CLI prints them; only `unix://` hosts."""

from __future__ import annotations

import os
import re
import subprocess
import sys

import pytest

from ferryd.units import human_size
from support.daemon import Daemon
from support.inventory import Inventory
from support.inventory_fixtures import inventory_fixtures

pytestmark = pytest.mark.registry


def ferryd(
    *args: str, host: str | None = None, env: dict[str, str] | None = None
) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [sys.executable, "-m", "ferryd", *(["-H", host] if host else []), *args],
        capture_output=True,
        text=True,
        timeout=120,
        stdin=subprocess.DEVNULL,
        env=env,
    )


inventory, stocked = inventory_fixtures("cliinv")


def _rows(output: str) -> list[list[str]]:
    """The table's rows (after its header), split on runs of 3+ spaces."""
    return [re.split(r" {3,}", line) for line in output.splitlines()[1:]]


def short(image_id: str) -> str:
    return image_id[7:19]


def test_images_lists_a_row_per_tag_and_none_for_a_digest_only_image(
    stocked: Daemon, inventory: Inventory
) -> None:
    listed = ferryd("images", host=stocked.host)

    assert listed.returncode == 0, listed.stderr
    assert listed.stdout.splitlines()[0].split() == [
        "REPOSITORY",
        "TAG",
        "IMAGE",
        "ID",
        "CREATED",
        "SIZE",
    ]
    rows = [row[:3] for row in _rows(listed.stdout)]
    assert rows == [
        [inventory.repository("new"), "latest", short(inventory.id("new"))],
        [inventory.repository("new"), "v1", short(inventory.id("new"))],
        [inventory.repository("blue"), "v1", short(inventory.id("blue"))],
        [inventory.repository("red"), "v1", short(inventory.id("red"))],
        [inventory.repository("old"), "<none>", short(inventory.id("old"))],
    ]


def test_images_with_digests_shows_the_manifest_digests(
    stocked: Daemon, inventory: Inventory
) -> None:
    listed = ferryd("images", "--digests", inventory.repository("old"), host=stocked.host)

    assert listed.returncode == 0, listed.stderr
    assert "DIGEST" in listed.stdout.splitlines()[0]
    assert [row[:4] for row in _rows(listed.stdout)] == [
        [
            inventory.repository("old"),
            "<none>",
            inventory.images["old"].manifest_digest,
            short(inventory.id("old")),
        ]
    ]


@pytest.mark.parametrize(
    ("args", "expected"),
    [
        (["-f", "dangling=true"], ["old"]),
        (["-f", "label=team=red"], ["red"]),
        (["-f", "label=team", "-f", "since=cliinv-red"], ["blue"]),
        (["-f", "until=2023-03-01"], ["red", "old"]),
        (["REPO/red:v1"], ["red"]),
        (["REPO/*", "-f", "dangling=false", "-a"], ["new", "blue", "red", "old"]),
    ],
)
def test_images_takes_a_reference_and_filters(
    stocked: Daemon, inventory: Inventory, args: list[str], expected: list[str]
) -> None:
    args = [
        arg.replace("REPO", f"{inventory.registry.host}/cliinv").replace(
            "cliinv-red", f"{inventory.repository('red')}:v1"
        )
        for arg in args
    ]

    listed = ferryd("images", "-q", "--no-trunc", *args, host=stocked.host)

    assert listed.returncode == 0, listed.stderr
    assert listed.stdout.split() == [inventory.id(name) for name in expected]


@pytest.mark.parametrize(
    ("args", "message"),
    [
        (["-f", "colour=red"], "Error response from daemon: invalid filter 'colour'"),
        (["-f", "dangling"], "bad filter 'dangling': expected KEY=VALUE"),
        (["-f", "until=soon"], "invalid value for 'until' filter"),
    ],
)
def test_images_with_a_bad_filter_fails_with_the_reason(
    daemon: Daemon, args: list[str], message: str
) -> None:
    listed = ferryd("images", *args, host=daemon.host)

    assert listed.returncode == 1
    assert message in listed.stderr
    assert "Traceback" not in listed.stderr


def test_history_prints_the_build_steps(stocked: Daemon, inventory: Inventory) -> None:
    reference = f"{inventory.repository('red')}:v1"

    shown = ferryd("history", reference, host=stocked.host)
    quiet = ferryd("history", "-q", "--no-trunc", reference, host=stocked.host)

    assert shown.returncode == 0, shown.stderr
    assert shown.stdout.splitlines()[0].split() == [
        "IMAGE",
        "CREATED",
        "CREATED",
        "BY",
        "SIZE",
        "COMMENT",
    ]
    rows = _rows(shown.stdout)
    assert [row[0] for row in rows] == [short(inventory.id("red")), "<missing>"]
    assert [row[2] for row in rows] == ["layer 1", "layer 0"]
    assert quiet.stdout.split() == [inventory.id("red"), "<missing>"]


def test_history_of_an_unknown_image_fails(daemon: Daemon) -> None:
    shown = ferryd("history", "nothing:here", host=daemon.host)

    assert shown.returncode == 1
    assert "No such image: nothing:here" in shown.stderr


def test_prune_without_force_and_no_terminal_removes_nothing(
    stocked: Daemon, inventory: Inventory
) -> None:
    pruned = ferryd("prune", host=stocked.host)

    assert pruned.returncode == 1
    assert "give --force" in pruned.stderr
    assert len(stocked.images()) == 4


def test_prune_removes_dangling_images_and_says_what_went(
    stocked: Daemon, inventory: Inventory
) -> None:
    old = inventory.images["old"]

    pruned = ferryd("prune", "--force", host=stocked.host)

    assert pruned.returncode == 0, pruned.stderr
    lines = pruned.stdout.splitlines()
    assert lines[0] == "Deleted Images:"
    assert f"untagged: {inventory.repository('old')}@{old.manifest_digest}" in lines
    assert f"deleted: {old.config_digest}" in lines
    assert lines[-1] == f"Total reclaimed space: {human_size(old.layers[0].uncompressed_size)}"
    assert {row["Id"] for row in stocked.images()} == {
        inventory.id(name) for name in ("red", "blue", "new")
    }


def test_prune_all_with_a_filter(stocked: Daemon, inventory: Inventory) -> None:
    pruned = ferryd("prune", "-a", "--force", "-f", "label=team", host=stocked.host)

    assert pruned.returncode == 0, pruned.stderr
    assert {row["Id"] for row in stocked.images()} == {inventory.id("old"), inventory.id("new")}


def test_prune_with_nothing_to_remove(daemon: Daemon) -> None:
    pruned = ferryd("prune", "--force", host=daemon.host)

    assert pruned.returncode == 0, pruned.stderr
    assert pruned.stdout == "Total reclaimed space: 0B\n"


def test_df_shows_the_images_and_their_bytes(stocked: Daemon, inventory: Inventory) -> None:
    shown = ferryd("df", host=stocked.host)

    assert shown.returncode == 0, shown.stderr
    assert shown.stdout.splitlines()[0].split() == [
        "TYPE",
        "TOTAL",
        "ACTIVE",
        "SIZE",
        "RECLAIMABLE",
    ]
    row = shown.stdout.splitlines()[1].split()
    assert row[:3] == ["Images", "4", "0"]
    assert row[-1] == "(100%)"


@pytest.mark.parametrize("host", ["tcp://127.0.0.1:2375", "ssh://me@example", "http://x"])
def test_hosts_other_than_unix_sockets_are_refused(host: str) -> None:
    by_flag = ferryd("images", host=host)
    by_environment = ferryd("images", env={**os.environ, "FERRYD_HOST": host})

    for result in (by_flag, by_environment):
        assert result.returncode == 1
        assert f"cannot use {host}: ferryd serves only unix:// sockets" in result.stderr
