"""Which platform an image serves, as containerd's `platforms.Only` (and dockerd) choose
it, and `rmi ID` of the platform whose ID the image list shows for a multi-platform
image: that platform alone goes, and only when forced.

The unit tables are checked against containerd's compare.go (`platformVector`) and
moby's `filterManifests` / `OnlyPlatformWithFallback`; the rmi tests run the real
daemon against a real registry.
"""

from __future__ import annotations

import json
from collections.abc import Callable
from pathlib import Path
from typing import Any

import pytest

from ferryd.errors import PlatformNotFoundError
from ferryd.oci.manifest import decode_index, select_platform
from ferryd.oci.platform import check_platform, parse_platform
from support.daemon import Daemon, errors
from support.digests import sha256
from support.images import (
    BuiltIndex,
    LayerSpec,
    PlatformSpec,
    build_index,
    registry_manifest,
    seed,
)
from support.registry import Registry

Entry = tuple[str, str, str | None]

# -- choosing an index entry ---------------------------------------------------------


def _index(entries: list[Entry]) -> bytes:
    manifests = []
    for number, (os, architecture, variant) in enumerate(entries, 1):
        platform = {"os": os, "architecture": architecture}
        if variant is not None:
            platform["variant"] = variant
        manifests.append(
            {
                "mediaType": "application/vnd.oci.image.manifest.v1+json",
                "digest": "sha256:" + f"{number:x}" * 64,
                "size": 500,
                "platform": platform,
            }
        )
    return json.dumps({"schemaVersion": 2, "manifests": manifests}).encode()


def _chosen(entries: list[Entry], wanted: str) -> int | None:
    """The position (from 1) of the entry a pull of `wanted` takes; None: no match."""
    index = decode_index(_index(entries))
    try:
        chosen = select_platform(index, parse_platform(wanted))
    except PlatformNotFoundError:
        return None
    return [entry.digest for entry in index.manifests].index(chosen.digest) + 1


@pytest.mark.parametrize(
    ("entries", "wanted", "expected"),
    [
        # The reviewer's table (docker's answers).
        ([("linux", "arm", "v6")], "linux/arm", 1),
        ([("linux", "arm", "v6")], "linux/arm/v7", 1),
        ([("linux", "arm", "v6")], "linux/arm64", 1),
        ([("linux", "386", None)], "linux/amd64", 1),
        ([("linux", "arm", None)], "linux/arm/v6", 1),
        ([("linux", "amd64", "v3")], "linux/amd64", None),
        # The closest wins, wherever it is listed.
        ([("linux", "arm", "v5"), ("linux", "arm", "v6")], "linux/arm/v7", 2),
        ([("linux", "arm", "v6"), ("linux", "arm", "v7")], "linux/arm64", 2),
        ([("linux", "arm", "v7"), ("linux", "arm64", "v8")], "linux/arm/v8", 1),
        ([("linux", "amd64", None), ("linux", "amd64", "v2")], "linux/amd64/v3", 2),
        ([("linux", "386", None), ("linux", "amd64", "v2")], "linux/amd64/v3", 2),
        ([("linux", "arm64", None), ("linux", "arm64", "v8.1")], "linux/arm64/v8.2", 2),
        ([("linux", "arm64", "v8.6"), ("linux", "arm64", "v9.2")], "linux/arm64/v9.1", 1),
        ([("windows", "386", None)], "windows/amd64", 1),
        # An entry that names no variant is the last resort for any variant of its
        # architecture; one that names another variant is never taken.
        ([("linux", "arm", "v5"), ("linux", "arm", None)], "linux/arm/v6", 1),
        ([("linux", "arm", "v7"), ("linux", "arm", None)], "linux/arm/v6", 2),
        # A newer variant than asked for never serves it.
        ([("linux", "amd64", "v2"), ("linux", "amd64", "v3")], "linux/amd64", None),
        ([("linux", "arm64", "v9")], "linux/arm64", None),
    ],
)
def test_a_pull_takes_the_entry_containerd_only_takes(
    entries: list[Entry], wanted: str, expected: int | None
) -> None:
    assert _chosen(entries, wanted) == expected


_EVERY = [
    "linux/amd64",
    "linux/amd64/v2",
    "linux/amd64/v3",
    "linux/386",
    "linux/arm64",
    "linux/arm64/v8.1",
    "linux/arm64/v8.2",
    "linux/arm64/v9",
    "linux/arm/v5",
    "linux/arm/v6",
    "linux/arm/v7",
    "linux/arm/v8",
    "linux/s390x",
    "windows/amd64",
]


@pytest.mark.parametrize(
    ("wanted", "order"),
    [
        ("linux/amd64", ["linux/amd64", "linux/386"]),
        ("linux/amd64/v3", ["linux/amd64/v3", "linux/amd64/v2", "linux/amd64", "linux/386"]),
        ("linux/arm", ["linux/arm/v7", "linux/arm/v6", "linux/arm/v5"]),
        ("linux/arm/v6", ["linux/arm/v6", "linux/arm/v5"]),
        (
            "linux/arm64",
            ["linux/arm64", "linux/arm/v8", "linux/arm/v7", "linux/arm/v6", "linux/arm/v5"],
        ),
        (
            "linux/arm64/v8.2",
            [
                "linux/arm64/v8.2",
                "linux/arm64/v8.1",
                "linux/arm64",
                "linux/arm/v8",
                "linux/arm/v7",
                "linux/arm/v6",
                "linux/arm/v5",
            ],
        ),
        (
            # v9 branched from v8.5: it runs v8.5 and below, then 32-bit arm from v9.
            "linux/arm64/v9",
            [
                "linux/arm64/v9",
                "linux/arm64/v8.2",
                "linux/arm64/v8.1",
                "linux/arm64",
                "linux/arm/v8",
                "linux/arm/v7",
                "linux/arm/v6",
                "linux/arm/v5",
            ],
        ),
        ("linux/386", ["linux/386"]),
        ("linux/s390x", ["linux/s390x"]),
        ("windows/amd64", ["windows/amd64"]),
    ],
)
def test_the_platforms_a_request_takes_best_first(wanted: str, order: list[str]) -> None:
    asked = parse_platform(wanted)
    ranked = []
    for text in _EVERY:
        os, architecture, *variant = text.split("/")
        rank = asked.preference(os, architecture, variant[0] if variant else None)
        if rank is not None:
            ranked.append((rank, text))
    assert [text for _, text in sorted(ranked)] == order


@pytest.mark.parametrize(
    ("wanted", "config", "taken"),
    [
        ("linux/arm/v7", ("linux", "arm", "v6"), True),
        ("linux/arm64", ("linux", "arm", "v7"), True),
        ("linux/amd64", ("linux", "386", None), True),
        # A config that names no variant (most do not): any variant of its architecture.
        ("linux/arm/v6", ("linux", "arm", None), True),
        ("linux/amd64", ("linux", "amd64", "v3"), False),
        ("linux/arm64", ("linux", "arm64", "v9"), False),
    ],
)
def test_a_single_images_config_is_checked_with_the_same_rule(
    wanted: str, config: Entry, taken: bool
) -> None:
    try:
        check_platform("team/app:1", [parse_platform(wanted)], *config)
    except PlatformNotFoundError:
        assert not taken
    else:
        assert taken


# -- through the daemon ----------------------------------------------------------------

AMD64, ARM64, ARMV7 = "linux/amd64", "linux/arm64/v8", "linux/arm/v7"


@pytest.fixture
def daemon(start_daemon: Callable[..., Daemon]) -> Daemon:
    return start_daemon(default_platform="linux/amd64")


def _seeded(
    registry: Registry, layout: Path, repository: str, seed_number: int, platforms: list[Entry]
) -> BuiltIndex:
    base = LayerSpec(size=20_000, seed=seed_number)
    index = build_index(
        layout,
        [
            PlatformSpec(
                [base, LayerSpec(size=3_000, seed=seed_number + n)],
                os=os,
                architecture=architecture,
                variant=variant,
            )
            for n, (os, architecture, variant) in enumerate(platforms, 1)
        ],
    )
    seed(registry, layout, "latest", repository)
    return index


_THREE: list[Entry] = [("linux", "amd64", None), ("linux", "arm64", "v8"), ("linux", "arm", "v7")]


def _available(daemon: Daemon, name: str) -> set[str]:
    """The platforms of `name`'s index that are stored."""
    found = set()
    for manifest in daemon.inspect(name)["Manifests"]:
        platform = (manifest.get("ImageData") or {}).get("Platform") or {}
        if manifest["Available"] and platform:
            parts = [platform["os"], platform["architecture"], platform.get("variant")]
            found.add("/".join(part for part in parts if part))
    return found


def _fsck(daemon: Daemon) -> list[Any]:
    problems: list[Any] = json.loads(daemon.client().request("POST", "/fsck").read())["Problems"]
    return problems


def test_rmi_of_the_id_the_list_shows_for_an_index_needs_force_and_keeps_the_rest(
    registry: Registry, daemon: Daemon, layout: Path
) -> None:
    index = _seeded(registry, layout, "fallback/rmi-shown:1", 9910, _THREE)
    ref = f"{registry.host}/fallback/rmi-shown:1"
    assert errors(daemon.pull(ref, **{"all-platforms": "1"})) == []
    [row] = daemon.images()
    shown = row["Id"]
    assert shown == index.image("amd64").config_digest
    blobs = daemon.blob_files()

    with daemon.http() as client:
        refused = client.delete(f"/images/{shown.removeprefix('sha256:')[:12]}")

    assert refused.status_code == 409
    message = refused.json()["message"]
    assert "must be forced" in message
    assert index.digest in message
    assert daemon.blob_files() == blobs
    assert daemon.images() == [row]
    assert _available(daemon, ref) == {AMD64, ARM64, ARMV7}

    # The index's digest names the whole image: that removes every platform.
    with daemon.http() as client:
        whole = client.delete(f"/images/{index.digest}")
    assert whole.status_code == 200
    assert {"Deleted": index.digest} in whole.json()
    assert daemon.images() == []
    assert daemon.blob_files() == []


def test_forced_rmi_of_the_id_the_list_shows_removes_that_platform_alone(
    registry: Registry, daemon: Daemon, layout: Path
) -> None:
    index = _seeded(registry, layout, "fallback/rmi-forced:1", 9920, _THREE)
    ref = f"{registry.host}/fallback/rmi-forced:1"
    assert errors(daemon.pull(ref, **{"all-platforms": "1"})) == []
    amd64 = index.image("amd64").config_digest
    arm64 = index.image("arm64", "v8").config_digest
    armv7 = index.image("arm", "v7").config_digest

    with daemon.http() as client:
        first = client.delete(f"/images/{amd64}", params={"force": "1"})
        after_first = (_available(daemon, ref), daemon.inspect(ref)["Id"], _fsck(daemon))
        second = client.delete(f"/images/{arm64}", params={"force": "1"})
        after_second = (_available(daemon, ref), daemon.inspect(ref)["Id"])
        last = client.delete(f"/images/{armv7}", params={"force": "1"})

    assert first.status_code == 200
    assert {"Deleted": amd64} in first.json()
    assert not any("Untagged" in record for record in first.json())
    # The tag still names the index; it now gives the next stored platform.
    assert after_first == ({ARM64, ARMV7}, arm64, [])
    assert second.status_code == 200
    assert after_second == ({ARMV7}, armv7)
    # The last platform takes the index's names and the index with it.
    assert last.status_code == 200
    assert {"Untagged": ref} in last.json()
    assert {"Deleted": index.digest} in last.json()
    assert {"Deleted": armv7} in last.json()
    assert daemon.images() == []
    assert daemon.blob_files() == []
    assert _fsck(daemon) == []


def test_rmi_by_id_of_a_platform_also_tagged_on_its_own_still_needs_force(
    registry: Registry, daemon: Daemon, layout: Path
) -> None:
    index = _seeded(registry, layout, "fallback/rmi-own:1", 9930, _THREE)
    ref = f"{registry.host}/fallback/rmi-own:1"
    assert errors(daemon.pull(ref, **{"all-platforms": "1"})) == []
    arm64 = index.image("arm64", "v8").config_digest
    daemon.client().request(
        "POST", f"/images/{arm64}/tag", {"repo": "team/own", "tag": "arm"}
    ).read()

    with daemon.http() as client:
        refused = client.delete(f"/images/{arm64}")
        still_tagged = daemon.inspect("team/own:arm")["Id"]
        forced = client.delete(f"/images/{arm64}", params={"force": "1"})

    assert refused.status_code == 409
    assert still_tagged == arm64
    assert forced.status_code == 200
    assert {"Untagged": "team/own:arm"} in forced.json()
    assert {"Deleted": arm64} in forced.json()
    assert _available(daemon, ref) == {AMD64, ARMV7}
    assert daemon.inspect(ref)["Id"] == index.image("amd64").config_digest


def test_a_pull_falls_back_as_docker_does_and_a_push_takes_the_platform_itself(
    registry: Registry,
    other_registry: Registry,
    daemon: Daemon,
    layout: Path,
) -> None:
    """A pull of arm/v7 takes the arm/v6 image (containerd's `platforms.Only`); a push
    with `--platform` takes a stored image of that platform itself, as docker's does
    (`platforms.OnlyStrict`): arm64 does not push the arm/v6 image under the tag."""
    index = _seeded(
        registry,
        layout,
        "fallback/older:1",
        9940,
        [("linux", "arm", "v6"), ("linux", "amd64", "v3")],
    )
    ref = f"{registry.host}/fallback/older:1"

    pulled = daemon.pull(ref, platform="linux/arm/v7")
    variant = daemon.inspect(ref).get("Variant")
    plain_amd64 = daemon.pull(ref, platform="linux/amd64")
    assert errors(daemon.pull(ref, **{"all-platforms": "1"})) == []
    target = f"{other_registry.host}/fallback/older"
    daemon.client().request("POST", f"/images/{ref}/tag", {"repo": target, "tag": "arm"}).read()
    with daemon.http() as client:
        as_arm64 = client.post(
            f"/images/{target}/push", params={"tag": "arm", "platform": "linux/arm64"}
        )
        pushed = client.post(
            f"/images/{target}/push", params={"tag": "arm", "platform": "linux/arm/v6"}
        )

    assert errors(pulled) == []
    assert variant == "v6"
    [refused] = errors(plain_amd64)
    assert "no matching manifest for linux/amd64" in refused
    assert "no matching manifest for linux/arm64" in as_arm64.text
    assert pushed.status_code == 200, pushed.text
    assert '"error"' not in pushed.text
    raw, _ = registry_manifest(other_registry, "fallback/older:arm")
    assert sha256(raw) == index.image("arm", "v6").manifest_digest
