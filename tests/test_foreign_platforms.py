"""Images of another operating system (Windows platforms of an index) through the real
daemon, against real registries: ferryd keeps and moves them, never runs them. A load
keeps them as a pull of every platform does, listings and disk usage show them
(containerd's store does; dockerd's own can never hold one on Linux), and inspect gives
their `OsVersion` as dockerd does.

The daemon's default platform is linux/amd64 whatever machine runs the tests.
"""

from __future__ import annotations

import json
from collections.abc import Callable
from dataclasses import replace
from pathlib import Path
from typing import Any

import pytest

from support.archives import load, save
from support.daemon import Daemon, errors
from support.digests import sha256
from support.images import (
    OCI_INDEX,
    REF_NAME,
    BuiltIndex,
    LayerSpec,
    PlatformSpec,
    blob_path,
    build_image,
    build_index,
    seed,
    skopeo_inspect_raw,
)
from support.registry import Registry

pytestmark = pytest.mark.registry

AMD64, ARM64, WINDOWS = "linux/amd64", "linux/arm64/v8", "windows/amd64"
OS_VERSION = "10.0.17763.5122"
WINDOWS_CONFIG = {"os.version": OS_VERSION, "os.features": ["win32k"]}
WINDOWS_PLATFORM = {"architecture": "amd64", "os": "windows", **WINDOWS_CONFIG}
REFUSED = 'image operating system "windows" cannot be used on this platform'


@pytest.fixture
def daemon(start_daemon: Callable[..., Daemon]) -> Daemon:
    return start_daemon(default_platform=AMD64)


def with_windows(layout: Path, seed_number: int, media: str = "oci") -> BuiltIndex:
    """amd64, arm64 and Windows amd64 images; the Windows one's config and its entry in
    the index carry `os.version` and `os.features`, as Microsoft's images do."""
    built = build_index(
        layout,
        [
            PlatformSpec([LayerSpec(size=3_000, seed=seed_number)], architecture="amd64"),
            PlatformSpec(
                [LayerSpec(size=3_000, seed=seed_number + 1)], architecture="arm64", variant="v8"
            ),
            PlatformSpec(
                [LayerSpec(size=3_000, seed=seed_number + 2)],
                os="windows",
                architecture="amd64",
                config_extra=WINDOWS_CONFIG,
            ),
        ],
        media=media,  # type: ignore[arg-type]
    )
    document = json.loads(built.index)
    document["manifests"][2]["platform"] = WINDOWS_PLATFORM
    raw = json.dumps(document, separators=(",", ":")).encode()
    digest = sha256(raw)
    blob_path(layout, digest).write_bytes(raw)
    top = {
        "mediaType": built.media_type,
        "digest": digest,
        "size": len(raw),
        "annotations": {REF_NAME: "latest"},
    }
    (layout / "index.json").write_text(
        json.dumps({"schemaVersion": 2, "mediaType": OCI_INDEX, "manifests": [top]})
    )
    return replace(built, digest=digest, size=len(raw), index=raw)


def windows_image(index: BuiltIndex) -> str:
    [image] = [image for image in index.images if image.platform["os"] == "windows"]
    return image.config_digest


def push(daemon: Daemon, repository: str, tag: str) -> list[dict[str, Any]]:
    return list(daemon.client().stream("POST", f"/images/{repository}/push", {"tag": tag}))


def tag(daemon: Daemon, source: str, target: str) -> None:
    repository, _, name = target.rpartition(":")
    daemon.client().request(
        "POST", f"/images/{source}/tag", {"repo": repository, "tag": name}
    ).read()


def platform_key(platform: dict[str, Any]) -> str:
    parts = [platform.get("os", ""), platform.get("architecture", "")]
    return "/".join(parts + ([platform["variant"]] if platform.get("variant") else []))


def stored_platforms(daemon: Daemon, name: str) -> set[str]:
    return {
        platform_key(manifest["ImageData"]["Platform"])
        for manifest in daemon.inspect(name)["Manifests"]
        if manifest["Available"] and manifest["Kind"] == "image"
    }


# -- load ------------------------------------------------------------------------------


@pytest.mark.parametrize("media", ["oci", "docker"])
def test_an_archive_of_an_index_with_a_windows_platform_loads_whole_and_pushes_its_digest(
    registry: Registry,
    other_registry: Registry,
    start_daemon: Callable[..., Daemon],
    layout: Path,
    media: str,
) -> None:
    index = with_windows(layout, 12100 if media == "oci" else 12110, media)
    seed(registry, layout, "latest", f"foreign/whole-{media}:v1")
    ref = f"{registry.host}/foreign/whole-{media}:v1"
    first = start_daemon(default_platform=AMD64)
    assert errors(first.pull(ref, **{"all-platforms": "1"})) == []
    archive = save(first, ref)
    second = start_daemon(default_platform=AMD64)

    answer = load(second, archive)
    assert answer.status == 200, answer.error  # nothing to tag and push otherwise
    tag(second, ref, f"{other_registry.host}/ops/whole-{media}:v1")
    pushed = push(second, f"{other_registry.host}/ops/whole-{media}", "v1")

    assert answer.error is None
    assert answer.lines == [f"Loaded image: {ref}"]
    assert stored_platforms(second, ref) == {AMD64, ARM64, WINDOWS}
    assert second.inspect(windows_image(index))["Os"] == "windows"
    assert errors(pushed) == []
    assert sha256(skopeo_inspect_raw(other_registry, f"ops/whole-{media}:v1")) == index.digest
    [event] = second.log_events("image.load")
    assert event["platforms"] == [AMD64, "linux/arm64", WINDOWS]


def test_load_of_one_platform_of_such_an_archive_takes_it_and_refuses_windows_as_a_pull_does(
    registry: Registry, start_daemon: Callable[..., Daemon], layout: Path
) -> None:
    index = with_windows(layout, 12120)
    seed(registry, layout, "latest", "foreign/one:v1")
    ref = f"{registry.host}/foreign/one:v1"
    first = start_daemon(default_platform=AMD64)
    assert errors(first.pull(ref, **{"all-platforms": "1"})) == []
    archive = save(first, ref)
    windows_alone = save(first, ref, platform=WINDOWS)
    second = start_daemon(default_platform=AMD64)

    linux = load(second, archive, platform=AMD64)
    asked_for = load(second, archive, platform=WINDOWS)
    alone = load(second, windows_alone)
    pulled = second.pull(ref, platform=WINDOWS)

    assert linux.status == 200, linux.error
    assert linux.lines == [f"Loaded image: {ref}"]
    assert second.inspect(ref)["Descriptor"]["digest"] == index.digest
    # The one image a load or a pull is asked for is one to use: not Windows on Linux.
    assert REFUSED in (asked_for.error or "")
    assert REFUSED in (alone.error or "")
    assert REFUSED in errors(pulled)[0]
    assert stored_platforms(second, ref) == {AMD64}
    assert windows_image(index) not in {row["Id"] for row in second.images()}


# -- listings --------------------------------------------------------------------------


def test_an_index_whose_only_stored_platform_is_windows_is_listed_and_counted(
    registry: Registry, daemon: Daemon, layout: Path
) -> None:
    index = with_windows(layout, 12130)
    seed(registry, layout, "latest", "foreign/listed:v1")
    ref = f"{registry.host}/foreign/listed:v1"
    assert errors(daemon.pull(ref, platforms=WINDOWS)) == []
    image_id = windows_image(index)

    listed = daemon.client().get_json("/images/json", {"manifests": "1"})
    usage = daemon.client().get_json("/system/df")
    quiet = daemon.ferryd("images", "-q", "--no-trunc")
    tree = daemon.ferryd("images", "--tree")

    [row] = listed
    assert row["Id"] == image_id
    assert row["RepoTags"] == [ref]
    assert row["Descriptor"]["digest"] == index.digest
    [windows] = [m for m in row["Manifests"] if m["Available"]]
    assert windows["ImageData"]["Platform"] == WINDOWS_PLATFORM
    assert [image["Id"] for image in usage["Images"]] == [image_id]
    assert usage["LayersSize"] > 0
    assert quiet.stdout.split() == [image_id]
    assert "windows/amd64" in tree.stdout


# -- inspect ---------------------------------------------------------------------------


def test_inspect_gives_a_windows_images_os_version_as_dockerd(
    registry: Registry, daemon: Daemon, layout: Path
) -> None:
    index = with_windows(layout, 12140)
    seed(registry, layout, "latest", "foreign/inspected:v1")
    ref = f"{registry.host}/foreign/inspected:v1"
    assert errors(daemon.pull(ref, **{"all-platforms": "1"})) == []

    windows = daemon.inspect(windows_image(index))
    linux = daemon.inspect(ref)

    assert (windows["Os"], windows["Architecture"]) == ("windows", "amd64")
    assert windows["OsVersion"] == OS_VERSION
    # dockerd's ImageInspect has no field for `os.features` (its Platform does).
    assert not any("feature" in key.lower() for key in windows)
    assert linux["Os"] == "linux"
    assert "OsVersion" not in linux  # omitempty, as dockerd


def test_a_single_windows_images_manifest_gives_its_configs_os_version_and_features(
    registry: Registry, daemon: Daemon, layout: Path
) -> None:
    image = build_image(
        layout,
        layers=[LayerSpec(size=3_000, seed=12150)],
        os="windows",
        config_extra=WINDOWS_CONFIG,
    )
    seed(registry, layout, "latest", "foreign/single:v1")
    ref = f"{registry.host}/foreign/single:v1"
    # Kept and moved, as every platform of an index: a pull of it alone is refused.
    assert errors(daemon.pull(ref, **{"all-platforms": "1"})) == []

    with daemon.http() as client:
        inspected = client.get(f"/images/{ref}/json", params={"manifests": "1"}).json()
    listed = daemon.client().get_json("/images/json", {"manifests": "1"})

    [manifest] = inspected["Manifests"]
    assert manifest["ID"] == image.manifest_digest
    assert manifest["ImageData"]["Platform"] == WINDOWS_PLATFORM
    assert inspected["OsVersion"] == OS_VERSION
    [row] = listed
    assert row["Id"] == image.config_digest
    assert [m["ImageData"]["Platform"] for m in row["Manifests"]] == [WINDOWS_PLATFORM]
