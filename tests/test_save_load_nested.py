"""Save and load of an index that lists, beyond images, a nested index and artifacts
(`unknown/unknown` entries: a signature), through the real daemons and registries. An
index saved whole carries what it lists that is kept whole (a nested index with the
images it lists, an artifact with its blobs), and a load keeps them as a pull of all
platforms does: after save and load, the index pushes whole, byte for byte. An archive
that lacks part of one loads without it; a hostile one (nested too deep, nested indexes
listing more than a pull takes, an artifact's blob that is not what its manifest says)
is refused, and nothing is stored.
"""

from __future__ import annotations

import json
from collections.abc import Callable
from pathlib import Path
from typing import Any

import pytest

from support.archives import IMAGE_NAME, TarWriter, load, members, save
from support.daemon import Daemon, errors
from support.digests import sha256
from support.images import (
    OCI_INDEX,
    OCI_MANIFEST,
    BuiltImage,
    _init_layout,
    _write_json_blob,
    blob_path,
    registry_manifest,
    seed,
    skopeo_inspect_raw,
)
from support.registry import Registry
from test_index_other_entries import artifact, entry, has_blob, image, index, push, tag
from test_save_load_hostile import refused

pytestmark = pytest.mark.registry


def blob_name(digest: str) -> str:
    return f"blobs/sha256/{digest.removeprefix('sha256:')}"


def nested_entry(raw: bytes) -> dict[str, Any]:
    return {"mediaType": OCI_INDEX, "digest": sha256(raw), "size": len(raw)}


class Nested:
    """An index of amd64, a nested index (arm64 and a signature) and a signature, in a
    layout: what a pull of all platforms keeps, and a save must carry."""

    def __init__(self, layout: Path, base: int) -> None:
        _init_layout(layout)
        self.layout = layout
        self.amd64: BuiltImage = image(layout, "amd64", base)
        self.arm64: BuiltImage = image(layout, "arm64", base + 1)
        self.inner_signed, self.inner_blobs = artifact(layout, f'{{"inner": {base}}}'.encode())
        self.inner = index(layout, [entry(self.arm64), self.inner_signed], tag=None)
        self.signed, self.signed_blobs = artifact(layout, f'{{"top": {base}}}'.encode())
        self.raw = index(layout, [entry(self.amd64), nested_entry(self.inner), self.signed])

    def blob(self, digest: str) -> bytes:
        return blob_path(self.layout, digest).read_bytes()

    def beyond_images(self) -> list[str]:
        """The blobs of the nested index and the artifacts, and of the image it lists."""
        arm64 = [self.arm64.manifest_digest, self.arm64.config_digest]
        arm64 += [layer.digest for layer in self.arm64.layers]
        signatures = [self.inner_signed["digest"], self.signed["digest"]]
        return [sha256(self.inner), *signatures, *self.inner_blobs, *self.signed_blobs, *arm64]


def pulled_whole(daemon: Daemon, registry: Registry, built: Nested, dest: str) -> str:
    seed(registry, built.layout, "latest", dest)
    source = f"{registry.host}/{dest}"
    assert errors(daemon.pull(source, **{"all-platforms": "1"})) == []
    return source


def test_an_index_saved_and_loaded_whole_pushes_whole_byte_for_byte(
    registry: Registry,
    other_registry: Registry,
    start_daemon: Callable[..., Daemon],
    layout: Path,
) -> None:
    built = Nested(layout, 9980)
    first = start_daemon(default_platform="linux/amd64")
    source = pulled_whole(first, registry, built, "nested/saved:v1")

    archive = save(first, source)

    files = members(archive)
    for digest in [sha256(built.raw), *built.beyond_images()]:
        assert files.get(blob_name(digest)) == built.blob(digest), digest
    # manifest.json lists the index's own images only, as before.
    [item] = json.loads(files["manifest.json"])
    assert item["Config"] == blob_name(built.amd64.config_digest)
    assert item["RepoTags"] == [source]

    second = start_daemon(default_platform="linux/amd64")
    answer = load(second, archive)
    assert answer.error is None, answer.messages
    assert answer.lines == [f"Loaded image: {source}"]
    checked = second.ferryd("fsck")
    assert checked.returncode == 0, checked.stdout + checked.stderr

    tag(second, source, f"{other_registry.host}/ops/saved:v1")
    assert errors(push(second, f"{other_registry.host}/ops/saved", "v1")) == []
    assert skopeo_inspect_raw(other_registry, "ops/saved:v1") == built.raw
    assert skopeo_inspect_raw(other_registry, f"ops/saved@{sha256(built.inner)}") == built.inner
    for manifest in (built.amd64, built.arm64):
        served, _ = registry_manifest(other_registry, f"ops/saved@{manifest.manifest_digest}")
        assert served == manifest.manifest
    for signed in (built.signed, built.inner_signed):
        served, _ = registry_manifest(other_registry, f"ops/saved@{signed['digest']}")
        assert served == built.blob(signed["digest"])
    for digest in [*built.signed_blobs, *built.inner_blobs]:
        assert has_blob(other_registry, "ops/saved", digest) == built.blob(digest)


def test_saving_one_platform_of_such_an_index_writes_that_platform_only(
    registry: Registry, start_daemon: Callable[..., Daemon], layout: Path
) -> None:
    built = Nested(layout, 9985)
    daemon = start_daemon(default_platform="linux/amd64")
    source = pulled_whole(daemon, registry, built, "nested/one:v1")

    archive = save(daemon, source, platform="linux/amd64")

    amd64 = built.amd64
    blobs = [amd64.manifest_digest, amd64.config_digest, *(lay.digest for lay in amd64.layers)]
    assert set(members(archive)) == {
        "oci-layout",
        "index.json",
        "manifest.json",
        "repositories",
        *(blob_name(digest) for digest in blobs),
    }


def test_an_archive_lacking_an_artifacts_blob_loads_without_it_and_says_so_at_push(
    registry: Registry,
    other_registry: Registry,
    start_daemon: Callable[..., Daemon],
    layout: Path,
) -> None:
    built = Nested(layout, 9990)
    first = start_daemon(default_platform="linux/amd64")
    source = pulled_whole(first, registry, built, "nested/partial:v1")
    payload = built.signed_blobs[-1]
    files = members(save(first, source))
    writer = TarWriter()
    for name, data in files.items():
        if name != blob_name(payload):
            writer.file(name, data)

    second = start_daemon(default_platform="linux/amd64")
    answer = load(second, writer.bytes())

    assert answer.error is None, answer.messages
    assert second.ferryd("fsck").returncode == 0
    tag(second, source, f"{other_registry.host}/ops/partial:v1")
    [error] = errors(push(second, f"{other_registry.host}/ops/partial", "v1"))
    # The nested index came whole: only the top artifact is missing.
    assert f"lists 1 manifest that is not stored: unknown entry ({built.signed['digest']})" in error


# -- hostile archives ------------------------------------------------------------------


def layout_archive(layout: Path, top: bytes, name: str) -> bytes:
    """An OCI archive of every blob of `layout`, its index.json naming `top` as `name`."""
    descriptor = {**nested_entry(top), "annotations": {IMAGE_NAME: name}}
    writer = TarWriter().file("oci-layout", b'{"imageLayoutVersion":"1.0.0"}')
    writer.json(
        "index.json", {"schemaVersion": 2, "mediaType": OCI_INDEX, "manifests": [descriptor]}
    )
    writer.directory("blobs/").directory("blobs/sha256/")
    for path in sorted((layout / "blobs" / "sha256").iterdir()):
        writer.file(f"blobs/sha256/{path.name}", path.read_bytes())
    return writer.bytes()


def nested_chain(layout: Path, depth: int, base: int) -> bytes:
    """An index of amd64 and an index nested `depth` deep (each listing the next), the
    deepest listing arm64: its bytes."""
    _init_layout(layout)
    amd64, arm64 = image(layout, "amd64", base), image(layout, "arm64", base + 1)
    inner = index(layout, [entry(arm64)], tag=None)
    for _ in range(depth - 1):
        inner = index(layout, [nested_entry(inner)], tag=None)
    return index(layout, [entry(amd64), nested_entry(inner)], tag=None)


def test_an_index_nested_as_deep_as_a_pull_takes_loads_whole(
    start_daemon: Callable[..., Daemon], layout: Path
) -> None:
    daemon = start_daemon(default_platform="linux/amd64")
    top = nested_chain(layout, 4, 9994)

    answer = load(daemon, layout_archive(layout, top, "team/deep:v1"))

    assert answer.error is None, answer.messages
    manifests = daemon.client().get_json("/images/json", {"manifests": "1"})
    [row] = [row for row in manifests if "team/deep:v1" in row["RepoTags"]]
    assert [m["Available"] for m in row["Manifests"]] == [True, True]
    assert daemon.ferryd("fsck").returncode == 0


def test_an_index_nested_deeper_than_a_pull_takes_is_refused(
    start_daemon: Callable[..., Daemon], layout: Path
) -> None:
    daemon = start_daemon(default_platform="linux/amd64")
    top = nested_chain(layout, 5, 9996)
    deepest = json.loads(top)["manifests"][1]["digest"]
    for _ in range(4):
        deepest = json.loads(blob_path(layout, deepest).read_bytes())["manifests"][0]["digest"]

    answer = refused(daemon, layout_archive(layout, top, "team/deeper:v1"))

    assert f"the archive's image index {deepest} is nested 5 deep" in (answer.error or "")
    assert "at most 4" in (answer.error or "")


def signed_index(layout: Path, base: int, change: Callable[[dict[str, Any]], object]) -> bytes:
    """An index of amd64 and a signature whose manifest `change` altered: its bytes."""
    _init_layout(layout)
    amd64 = image(layout, "amd64", base)
    signed, _ = artifact(layout, f'{{"signature": {base}}}'.encode())
    manifest = json.loads(blob_path(layout, signed["digest"]).read_bytes())
    change(manifest)
    data, digest = _write_json_blob(layout, manifest)
    return index(layout, [entry(amd64), {**signed, "digest": digest, "size": len(data)}], None)


def test_an_artifact_blob_of_another_size_than_its_manifest_says_is_refused(
    start_daemon: Callable[..., Daemon], layout: Path
) -> None:
    daemon = start_daemon(default_platform="linux/amd64")

    def lie(manifest: dict[str, Any]) -> None:
        manifest["layers"][0]["size"] += 5

    top = signed_index(layout, 9997, lie)
    signed = json.loads(top)["manifests"][1]["digest"]
    payload = json.loads(blob_path(layout, signed).read_bytes())["layers"][0]

    answer = refused(daemon, layout_archive(layout, top, "team/lying:v1"))

    assert f"the archive's artifact {signed}" in (answer.error or "")
    assert (
        f"{blob_name(payload['digest'])} has {payload['size'] - 5} bytes, but its descriptor "
        f"says {payload['size']}"
    ) in (answer.error or "")


def test_an_artifact_blob_that_is_not_what_its_digest_says_is_refused(
    start_daemon: Callable[..., Daemon], layout: Path
) -> None:
    daemon = start_daemon(default_platform="linux/amd64")
    top = signed_index(layout, 9998, lambda manifest: None)
    signed = json.loads(top)["manifests"][1]["digest"]
    payload = json.loads(blob_path(layout, signed).read_bytes())["layers"][0]["digest"]
    blob_path(layout, payload).write_bytes(b"not the signature")

    answer = refused(daemon, layout_archive(layout, top, "team/forged:v1"))

    assert f"the archive's {blob_name(payload)} is not the blob it is named after" in (
        answer.error or ""
    )


def test_nested_indexes_listing_more_entries_than_a_pull_takes_are_refused(
    start_daemon: Callable[..., Daemon], layout: Path
) -> None:
    daemon = start_daemon(default_platform="linux/amd64")
    _init_layout(layout)
    amd64 = image(layout, "amd64", 9999)
    listed = [
        {"mediaType": OCI_MANIFEST, "digest": f"sha256:{n:064x}", "size": 100} for n in range(513)
    ]
    inner = index(layout, listed, tag=None)
    top = index(layout, [entry(amd64), nested_entry(inner)], tag=None)

    answer = refused(daemon, layout_archive(layout, top, "team/wide:v1"))

    assert f"the archive's image index {sha256(top)} lists over 512 entries" in (answer.error or "")


def test_artifacts_whose_manifests_come_to_more_than_a_pull_takes_are_refused(
    start_daemon: Callable[..., Daemon], layout: Path
) -> None:
    daemon = start_daemon(default_platform="linux/amd64")
    _init_layout(layout)
    amd64 = image(layout, "amd64", 9990)
    signed, _ = artifact(layout, b'{"signature": 9990}')
    manifest = json.loads(blob_path(layout, signed["digest"]).read_bytes())
    listed = [entry(amd64)]
    for n in range(17):  # 17 manifests of 4 MiB: over the 64 MiB a pull takes
        padded = {**manifest, "annotations": {f"pad{n}": "x" * (4 * 2**20 - 1024)}}
        data, digest = _write_json_blob(layout, padded)
        listed.append({**signed, "digest": digest, "size": len(data)})
    top = index(layout, listed, tag=None)

    answer = refused(daemon, layout_archive(layout, top, "team/heavy:v1"))

    assert "lists come to over 64 MiB" in (answer.error or "")
