"""What an index lists beyond images and their attestations, through the real daemon and
registries: an `unknown/unknown` entry without the attestation annotation (an image
manifest or an artifact of other media types) and a nested index. A pull of all
platforms keeps each as it is, with the blobs it names (and a nested index with what it
lists); a push of the index sends all of it, children first, so that the registry gets
the index digest for digest, as `skopeo copy --all --preserve-digests` would; an rmi
removes it with the index, and fsck and the sweeps keep it while the index is kept.
"""

from __future__ import annotations

import json
from collections.abc import Callable
from pathlib import Path
from typing import Any

import pytest

from support.daemon import Daemon, errors
from support.digests import sha256
from support.images import (
    OCI_INDEX,
    OCI_MANIFEST,
    BuiltImage,
    LayerSpec,
    PlatformSpec,
    _build_manifest,
    _init_layout,
    _tag,
    _write_json_blob,
    blob_path,
    registry_manifest,
    seed,
    skopeo_inspect_raw,
)
from support.registry import Registry

pytestmark = pytest.mark.registry

Messages = list[dict[str, Any]]
UNKNOWN = {"os": "unknown", "architecture": "unknown"}
EMPTY_CONFIG = "application/vnd.oci.empty.v1+json"
SIGNATURE = "application/vnd.example.signature.v1+json"


@pytest.fixture
def daemon(start_daemon: Callable[..., Daemon]) -> Daemon:
    return start_daemon(default_platform="linux/amd64")


def image(layout: Path, architecture: str, seed_number: int, os: str = "linux") -> BuiltImage:
    spec = PlatformSpec([LayerSpec(size=3_000, seed=seed_number)], os, architecture)
    return _build_manifest(layout, spec, "oci")


def entry(built: BuiltImage) -> dict[str, Any]:
    return {**built.descriptor(), "platform": dict(built.platform)}


def unknown_image(layout: Path, seed_number: int) -> tuple[dict[str, Any], list[str]]:
    """An image manifest for `unknown/unknown`, without the attestation annotation:
    its entry, and the blobs it names."""
    built = image(layout, "unknown", seed_number, os="unknown")
    return {**built.descriptor(), "platform": UNKNOWN}, [
        built.config_digest,
        *(layer.digest for layer in built.layers),
    ]


def artifact(layout: Path, payload: bytes) -> tuple[dict[str, Any], list[str]]:
    """A signature-like artifact (an empty config, a layer that is no tar) listed as
    `unknown/unknown`: its entry, and the blobs it names."""
    config = b"{}"
    blob_path(layout, sha256(config)).write_bytes(config)
    blob_path(layout, sha256(payload)).write_bytes(payload)
    data, digest = _write_json_blob(
        layout,
        {
            "schemaVersion": 2,
            "mediaType": OCI_MANIFEST,
            "artifactType": SIGNATURE,
            "config": {"mediaType": EMPTY_CONFIG, "digest": sha256(config), "size": 2},
            "layers": [{"mediaType": SIGNATURE, "digest": sha256(payload), "size": len(payload)}],
        },
    )
    descriptor = {
        "mediaType": OCI_MANIFEST,
        "digest": digest,
        "size": len(data),
        "artifactType": SIGNATURE,
        "platform": UNKNOWN,
    }
    return descriptor, [sha256(config), sha256(payload)]


def index(layout: Path, entries: list[dict[str, Any]], tag: str | None = "latest") -> bytes:
    data, digest = _write_json_blob(
        layout, {"schemaVersion": 2, "mediaType": OCI_INDEX, "manifests": entries}
    )
    if tag is not None:
        _tag(layout, tag, {"mediaType": OCI_INDEX, "digest": digest, "size": len(data)})
    return data


def with_unknown_entries(layout: Path, base: int) -> tuple[bytes, list[dict[str, Any]], list[str]]:
    """An index of amd64, arm64, an unknown/unknown image and an artifact: its bytes,
    the two unknown entries, and the blobs they name."""
    _init_layout(layout)
    amd64, arm64 = image(layout, "amd64", base), image(layout, "arm64", base + 1)
    unknown, unknown_blobs = unknown_image(layout, base + 2)
    signed, signed_blobs = artifact(layout, f'{{"signature": {base}}}'.encode())
    raw = index(layout, [entry(amd64), entry(arm64), unknown, signed])
    return raw, [unknown, signed], unknown_blobs + signed_blobs


def push(daemon: Daemon, repository: str, tag: str) -> Messages:
    return list(daemon.client().stream("POST", f"/images/{repository}/push", {"tag": tag}))


def tag(daemon: Daemon, source: str, target: str) -> None:
    repository, _, name = target.rpartition(":")
    daemon.client().request(
        "POST", f"/images/{source}/tag", {"repo": repository, "tag": name}
    ).read()


def has_blob(registry: Registry, repository: str, digest: str) -> bytes | None:
    with registry.client() as client:
        response = client.get(f"/v2/{repository}/blobs/{digest}")
    return response.content if response.status_code == 200 else None


def stored_blob(daemon: Daemon, digest: str) -> Path:
    return daemon.root / "blobs" / "sha256" / digest.removeprefix("sha256:")


def test_push_of_an_index_with_unknown_entries_sends_them_whole(
    registry: Registry, other_registry: Registry, daemon: Daemon, layout: Path
) -> None:
    raw, unknown, blobs = with_unknown_entries(layout, 9900)
    seed(registry, layout, "latest", "others/unknown:v1")
    source = f"{registry.host}/others/unknown:v1"

    assert errors(daemon.pull(source, **{"all-platforms": "1"})) == []
    tag(daemon, source, f"{other_registry.host}/ops/unknown:v1")
    pushed = push(daemon, f"{other_registry.host}/ops/unknown", "v1")

    assert errors(pushed) == []
    assert skopeo_inspect_raw(other_registry, "ops/unknown:v1") == raw
    for listed in unknown:
        served, media_type = registry_manifest(other_registry, f"ops/unknown@{listed['digest']}")
        assert sha256(served) == listed["digest"]
        assert media_type == OCI_MANIFEST
    for digest in blobs:
        assert (
            has_blob(other_registry, "ops/unknown", digest)
            == blob_path(layout, digest).read_bytes()
        )


def test_push_of_a_nested_index_sends_it_with_what_it_lists(
    registry: Registry, other_registry: Registry, daemon: Daemon, layout: Path
) -> None:
    _init_layout(layout)
    amd64, arm64 = image(layout, "amd64", 9910), image(layout, "arm64", 9911)
    signed, signed_blobs = artifact(layout, b'{"signature": "nested"}')
    inner = index(layout, [entry(arm64), signed], tag=None)
    inner_entry = {"mediaType": OCI_INDEX, "digest": sha256(inner), "size": len(inner)}
    raw = index(layout, [entry(amd64), inner_entry])
    seed(registry, layout, "latest", "others/nested:v1")
    source = f"{registry.host}/others/nested:v1"

    assert errors(daemon.pull(source, **{"all-platforms": "1"})) == []
    tag(daemon, source, f"{other_registry.host}/ops/nested:v1")
    pushed = push(daemon, f"{other_registry.host}/ops/nested", "v1")

    assert errors(pushed) == []
    assert skopeo_inspect_raw(other_registry, "ops/nested:v1") == raw
    assert skopeo_inspect_raw(other_registry, f"ops/nested@{sha256(inner)}") == inner
    served, _ = registry_manifest(other_registry, f"ops/nested@{arm64.manifest_digest}")
    assert served == arm64.manifest
    assert skopeo_inspect_raw(other_registry, f"ops/nested@{signed['digest']}") == (
        blob_path(layout, signed["digest"]).read_bytes()
    )
    for digest in [*signed_blobs, *(layer.digest for layer in arm64.layers)]:
        assert has_blob(other_registry, "ops/nested", digest) is not None


def test_what_an_index_lists_beyond_images_is_kept_with_it_and_goes_with_it(
    registry: Registry, daemon: Daemon, layout: Path
) -> None:
    raw, unknown, blobs = with_unknown_entries(layout, 9920)
    seed(registry, layout, "latest", "others/kept:v1")
    source = f"{registry.host}/others/kept:v1"
    kept = [*(listed["digest"] for listed in unknown), *blobs]

    assert errors(daemon.pull(source, **{"all-platforms": "1"})) == []
    assert [digest for digest in kept if not stored_blob(daemon, digest).is_file()] == []
    checked = daemon.ferryd("fsck")
    assert checked.returncode == 0, checked.stdout + checked.stderr
    # A restart sweeps what no row references: none of it.
    daemon.stop()
    daemon.start()
    assert [digest for digest in kept if not stored_blob(daemon, digest).is_file()] == []

    removed = daemon.ferryd("rmi", source)  # its digest reference goes with it
    assert removed.returncode == 0, removed.stderr
    assert daemon.ferryd("inspect", f"{registry.host}/others/kept@{sha256(raw)}").returncode != 0

    assert [digest for digest in kept if stored_blob(daemon, digest).exists()] == []
    assert daemon.blob_files() == []
    checked = daemon.ferryd("fsck")
    assert checked.returncode == 0, checked.stdout + checked.stderr


def test_fsck_finds_a_broken_artifact_blob_an_index_lists(
    registry: Registry, daemon: Daemon, layout: Path
) -> None:
    _, unknown, blobs = with_unknown_entries(layout, 9930)
    seed(registry, layout, "latest", "others/broken:v1")
    source = f"{registry.host}/others/broken:v1"
    assert errors(daemon.pull(source, **{"all-platforms": "1"})) == []
    payload = blobs[-1]  # the signature's payload: no image's blob
    stored_blob(daemon, payload).write_bytes(b"not the signature")

    checked = daemon.ferryd("fsck")

    assert checked.returncode != 0
    assert payload in checked.stdout + checked.stderr
    assert unknown[1]["digest"] in checked.stdout + checked.stderr


def test_push_of_an_incomplete_index_says_where_to_pull_it_from_not_the_target(
    registry: Registry, other_registry: Registry, daemon: Daemon, layout: Path
) -> None:
    raw, _, _ = with_unknown_entries(layout, 9940)
    seed(registry, layout, "latest", "others/advice:v1")
    source = f"{registry.host}/others/advice:v1"
    assert errors(daemon.pull(source)) == []  # the default platform only
    tag(daemon, source, f"{other_registry.host}/ops/advice:v1")

    [error] = errors(push(daemon, f"{other_registry.host}/ops/advice", "v1"))

    assert f"ferryd pull --all-platforms {registry.host}/others/advice@{sha256(raw)}" in error
    assert f"--all-platforms {other_registry.host}" not in error
    # Following the advice makes the push whole.
    again = daemon.pull(f"{registry.host}/others/advice@{sha256(raw)}", **{"all-platforms": "1"})
    assert errors(again) == []
    assert errors(push(daemon, f"{other_registry.host}/ops/advice", "v1")) == []
    assert skopeo_inspect_raw(other_registry, "ops/advice:v1") == raw


def test_an_unknown_entry_whose_blob_is_not_what_it_says_fails_the_pull(
    registry: Registry, daemon: Daemon, layout: Path
) -> None:
    _init_layout(layout)
    amd64 = image(layout, "amd64", 9950)
    signed, signed_blobs = artifact(layout, b'{"signature": "short"}')
    manifest = json.loads(blob_path(layout, signed["digest"]).read_bytes())
    manifest["layers"][0]["size"] += 5  # the registry serves fewer bytes than it says
    data, digest = _write_json_blob(layout, manifest)
    signed = {**signed, "digest": digest, "size": len(data)}
    raw = index(layout, [entry(amd64), signed])
    seed(registry, layout, "latest", "others/short:v1")

    pulled = daemon.pull(f"{registry.host}/others/short:v1", **{"all-platforms": "1"})

    assert errors(pulled) != []
    assert signed_blobs[-1] in errors(pulled)[0]
    # Nothing of it was kept: the index is not.
    assert daemon.ferryd("inspect", f"{registry.host}/others/short@{sha256(raw)}").returncode != 0


def test_a_nested_index_is_kept_with_the_index_and_goes_with_it(
    registry: Registry, daemon: Daemon, layout: Path
) -> None:
    _init_layout(layout)
    amd64, arm64 = image(layout, "amd64", 9960), image(layout, "arm64", 9961)
    inner = index(layout, [entry(arm64)], tag=None)
    inner_entry = {"mediaType": OCI_INDEX, "digest": sha256(inner), "size": len(inner)}
    index(layout, [entry(amd64), inner_entry])
    seed(registry, layout, "latest", "others/kept-nested:v1")
    source = f"{registry.host}/others/kept-nested:v1"
    kept = [sha256(inner), arm64.manifest_digest, arm64.config_digest, arm64.layers[0].digest]

    assert errors(daemon.pull(source, **{"all-platforms": "1"})) == []

    assert [digest for digest in kept if not stored_blob(daemon, digest).is_file()] == []
    checked = daemon.ferryd("fsck")
    assert checked.returncode == 0, checked.stdout + checked.stderr
    removed = daemon.ferryd("rmi", source)
    assert removed.returncode == 0, removed.stderr
    assert daemon.blob_files() == []
    assert daemon.ferryd("fsck").returncode == 0


def test_a_stored_nested_index_and_artifact_show_as_available_in_the_list(
    registry: Registry, daemon: Daemon, layout: Path
) -> None:
    _init_layout(layout)
    amd64, arm64 = image(layout, "amd64", 9970), image(layout, "arm64", 9971)
    signed, signed_blobs = artifact(layout, b'{"signature": 9972}')
    inner = index(layout, [entry(arm64)], tag=None)
    inner_entry = {"mediaType": OCI_INDEX, "digest": sha256(inner), "size": len(inner)}
    index(layout, [entry(amd64), inner_entry, signed])
    seed(registry, layout, "latest", "others/listed-nested:v1")
    source = f"{registry.host}/others/listed-nested:v1"

    def availability() -> dict[str, bool]:
        listed = daemon.client().get_json("/images/json", {"manifests": "1"})
        [row] = [row for row in listed if source in row["RepoTags"]]
        return {m["ID"]: m["Available"] for m in row["Manifests"]}

    assert errors(daemon.pull(source)) == []  # amd64 alone
    assert availability() == {
        amd64.manifest_digest: True,
        sha256(inner): False,
        signed["digest"]: False,
    }

    assert errors(daemon.pull(source, **{"all-platforms": "1"})) == []
    assert availability() == {
        amd64.manifest_digest: True,
        sha256(inner): True,
        signed["digest"]: True,
    }
    listed = daemon.client().get_json("/images/json", {"manifests": "1"})
    [row] = [row for row in listed if source in row["RepoTags"]]
    [shown] = [m for m in row["Manifests"] if m["ID"] == signed["digest"]]
    sizes = {digest: stored_blob(daemon, digest).stat().st_size for digest in signed_blobs}
    assert shown["Size"]["Content"] == signed["size"] + sum(sizes.values())
