"""Multi-platform images through the real daemon, against real registries: an index (OCI
index or Docker manifest list) is kept as itself through pull, tag, push, save, load,
list, inspect and rmi, and skopeo reads back what was pushed, digest for digest.

Every image here has three platforms that share their base layer, each with a layer of
its own; the daemon's default platform is linux/amd64 whatever machine runs the tests.
"""

from __future__ import annotations

import json
from collections.abc import Callable
from pathlib import Path
from typing import Any

import pytest

from support.archives import load, members, save
from support.daemon import Daemon, errors, now
from support.digests import sha256
from support.docker_cli import docker, needs_docker
from support.images import (
    OCI_INDEX,
    BuiltIndex,
    LayerSpec,
    PlatformSpec,
    blob_path,
    build_image,
    build_index,
    layout_descriptors,
    registry_manifest,
    seed,
    skopeo_copy_to_oci,
    skopeo_inspect_raw,
)
from support.registry import Registry, fixture_registry

pytestmark = pytest.mark.registry

Messages = list[dict[str, Any]]
AMD64, ARM64, ARMV7 = "linux/amd64", "linux/arm64", "linux/arm/v7"


@pytest.fixture
def daemon(start_daemon: Callable[..., Daemon]) -> Daemon:
    return start_daemon(default_platform=AMD64)


def three_platforms(layout: Path, seed_number: int, media: str = "oci") -> BuiltIndex:
    """amd64, arm64 and arm/v7 images on one base layer, each with a layer of its own."""
    base = LayerSpec(size=60_000, seed=seed_number)
    return build_index(
        layout,
        [
            PlatformSpec([base, LayerSpec(size=5_000, seed=seed_number + 1)], architecture="amd64"),
            PlatformSpec(
                [base, LayerSpec(size=5_000, seed=seed_number + 2)],
                architecture="arm64",
                variant="v8",
            ),
            PlatformSpec(
                [base, LayerSpec(size=5_000, seed=seed_number + 3, compression="zstd")]
                if media == "oci"
                else [base, LayerSpec(size=5_000, seed=seed_number + 3)],
                architecture="arm",
                variant="v7",
            ),
        ],
        media=media,  # type: ignore[arg-type]
    )


def seeded(registry: Registry, layout: Path, repository: str, seed_number: int) -> BuiltIndex:
    index = three_platforms(layout, seed_number)
    seed(registry, layout, "latest", repository)
    return index


def push(daemon: Daemon, repository: str, tag: str, **params: str) -> Messages:
    query = {"tag": tag, **params}
    return list(daemon.client().stream("POST", f"/images/{repository}/push", query))


def tag(daemon: Daemon, source: str, target: str) -> None:
    repository, _, name = target.rpartition(":")
    daemon.client().request(
        "POST", f"/images/{source}/tag", {"repo": repository, "tag": name}
    ).read()


def manifests(daemon: Daemon, name: str) -> dict[str, dict[str, Any]]:
    """The `Manifests` inspect shows for `name`, by platform (or kind)."""
    shown = daemon.inspect(name)["Manifests"]
    out = {}
    for manifest in shown:
        platform = (manifest.get("ImageData") or {}).get("Platform") or {}
        key = "/".join(
            [platform.get("os", ""), platform.get("architecture", "")]
            + ([platform["variant"]] if platform.get("variant") else [])
        )
        out[key if platform else manifest["Kind"]] = manifest
    return out


def available(daemon: Daemon, name: str) -> set[str]:
    return {key for key, m in manifests(daemon, name).items() if m["Available"]}


# -- the round trip ----------------------------------------------------------------------


@pytest.mark.parametrize("media", ["oci", "docker"])
def test_pull_all_platforms_tag_and_push_keeps_the_index_digest_and_every_platform(
    registry: Registry,
    other_registry: Registry,
    daemon: Daemon,
    layout: Path,
    tmp_path: Path,
    media: str,
) -> None:
    index = three_platforms(layout, 9700 if media == "oci" else 9710, media)
    seed(registry, layout, "latest", f"multi/round-{media}:v1")
    source = f"{registry.host}/multi/round-{media}:v1"
    target = f"{other_registry.host}/ops/round-{media}:stable"

    pulled = daemon.pull(source, **{"all-platforms": "1"})
    tag(daemon, source, target)
    pushed = push(daemon, f"{other_registry.host}/ops/round-{media}", "stable")

    assert errors(pulled) == errors(pushed) == []
    base = index.images[0].layers[0].digest
    assert all(image.layers[0].digest == base for image in index.images)
    assert registry.blob_gets(base) == 1  # shared by three platforms, fetched once
    raw = skopeo_inspect_raw(other_registry, f"ops/round-{media}:stable")
    assert raw == index.index
    assert sha256(raw) == index.digest
    assert {"aux": {"Tag": "stable", "Digest": index.digest, "Size": index.size}} in pushed
    for image in index.images:
        child = skopeo_inspect_raw(other_registry, f"ops/round-{media}@{image.manifest_digest}")
        assert sha256(child) == image.manifest_digest
    if media == "docker":
        return  # skopeo writes OCI manifests into a layout: read back the OCI one only
    # skopeo copies every platform back, each blob checked against its digest.
    copied = tmp_path / "copied"
    skopeo_copy_to_oci(other_registry, f"ops/round-{media}:stable", copied, tag="all")
    for image in index.images:
        for layer in image.layers:
            data = blob_path(copied, layer.digest).read_bytes()
            assert sha256(data) == layer.digest
        assert blob_path(copied, image.config_digest).read_bytes() == image.config


def test_platforms_sharing_a_base_layer_are_pulled_at_once_and_the_base_shown_once(
    registry: Registry, daemon: Daemon, layout: Path
) -> None:
    index = seeded(registry, layout, "multi/once:v1", 9720)
    base = index.images[0].layers[0].digest

    pulled = daemon.pull(f"{registry.host}/multi/once:v1", **{"all-platforms": "1"})

    assert errors(pulled) == []
    assert registry.blob_gets(base) == 1
    # One transfer the three platforms waited on at once, reported by one of them (one
    # after another, the later ones would each say "Already exists").
    base_id = base.removeprefix("sha256:")[:12]
    statuses = [m["status"] for m in pulled if m.get("id") == base_id]
    assert statuses.count("Pull complete") == 1
    assert statuses.count("Pulling fs layer") + statuses.count("Already exists") == 1
    [event] = daemon.log_events("image.pull")
    assert (event["layers_fetched"], event["layers_reused"]) == (4, 2)


def test_a_pull_of_several_platforms_stores_those_and_records_the_index(
    registry: Registry, daemon: Daemon, layout: Path
) -> None:
    index = seeded(registry, layout, "multi/several:v1", 9720)
    ref = f"{registry.host}/multi/several:v1"

    messages = daemon.pull(ref, platforms=f"{AMD64},{ARM64}")

    assert errors(messages) == []
    inspected = daemon.inspect(ref)
    assert inspected["Id"] == index.image("amd64").config_digest
    assert inspected["Descriptor"] == {
        "mediaType": index.media_type,
        "digest": index.digest,
        "size": index.size,
    }
    shown = manifests(daemon, ref)
    assert set(shown) == {AMD64, "linux/arm64/v8", ARMV7}
    assert available(daemon, ref) == {AMD64, "linux/arm64/v8"}
    arm = shown["linux/arm64/v8"]
    wanted = index.image("arm64", "v8")
    assert arm["ID"] == wanted.manifest_digest
    assert arm["Kind"] == "image"
    assert arm["Descriptor"]["digest"] == wanted.manifest_digest
    assert arm["ImageData"]["Size"]["Unpacked"] == sum(x.uncompressed_size for x in wanted.layers)
    content = wanted.manifest_size + wanted.config_size + sum(x.size for x in wanted.layers)
    assert arm["Size"] == {
        "Content": content,
        "Total": content + arm["ImageData"]["Size"]["Unpacked"],
    }
    assert shown[ARMV7]["Size"] == {"Content": 0, "Total": 0}


def test_a_single_platform_pull_records_the_index_and_a_later_pull_adds_to_it(
    registry: Registry, daemon: Daemon, layout: Path
) -> None:
    index = seeded(registry, layout, "multi/later:v1", 9730)
    ref = f"{registry.host}/multi/later:v1"

    first = daemon.pull(ref, platform=ARM64)
    after_first = available(daemon, ref)
    first_id = daemon.inspect(ref)["Id"]
    second = daemon.pull(ref)  # the default platform, amd64

    assert errors(first) == errors(second) == []
    assert after_first == {"linux/arm64/v8"}
    assert first_id == index.image("arm64", "v8").config_digest
    assert available(daemon, ref) == {AMD64, "linux/arm64/v8"}
    # The tag gives the default platform's image once it is stored.
    assert daemon.inspect(ref)["Id"] == index.image("amd64").config_digest
    assert {
        "status": "Status: Downloaded newer image for " + ref.split("/", 1)[0] + "/multi/later:v1"
    } in second
    assert daemon.inspect(ref)["RepoDigests"] == [f"{registry.host}/multi/later@{index.digest}"]
    # One row for the image, the other platform in its Manifests, nothing dangling.
    rows = daemon.client().get_json("/images/json", {"manifests": "1"})
    assert [row["Id"] for row in rows] == [index.image("amd64").config_digest]
    assert len(rows[0]["Manifests"]) == 3


def test_a_pull_that_names_a_platform_the_index_lacks_says_what_it_has(
    registry: Registry, daemon: Daemon, layout: Path
) -> None:
    seeded(registry, layout, "multi/lacks:v1", 9740)

    [error] = errors(
        daemon.pull(f"{registry.host}/multi/lacks:v1", platforms=f"{AMD64},linux/s390x")
    )

    assert "linux/s390x" in error
    assert "linux/arm64" in error
    assert daemon.images() == []


def test_one_pull_event_per_reference_with_the_platforms_it_stored(
    registry: Registry, daemon: Daemon, layout: Path
) -> None:
    index = seeded(registry, layout, "multi/events:v1", 9750)
    ref = f"{registry.host}/multi/events:v1"

    assert errors(daemon.pull(ref, **{"all-platforms": "1"})) == []

    [event] = daemon.log_events("image.pull")
    assert event["reference"] == ref
    assert event["digest"] == index.digest
    assert event["image_id"] == index.image("amd64").config_digest
    assert event["platforms"] == [AMD64, "linux/arm64", ARMV7]
    assert event["layers_fetched"] == 4  # the base once, and one layer per platform
    replayed = list(daemon.client().stream("GET", "/events", {"since": "0", "until": now()}))
    assert [e["Action"] for e in replayed] == ["pull"]
    metrics = daemon.client().request("GET", "/metrics").read().decode()
    assert 'ferryd_index_manifests_total{action="pull"} 3.0' in metrics


def with_attestation(layout: Path, index: BuiltIndex) -> tuple[bytes, str, str]:
    """Add to `index` (tag latest of `layout`) a BuildKit-style attestation of its amd64
    image: an unknown/unknown manifest the index names with the attestation
    annotations. Returns the new index's bytes, its digest and the attestation's."""
    attestation = build_image(
        layout,
        layers=[LayerSpec(files={"provenance.json": b'{"predicate": {}}'}, compression="none")],
        os="unknown",
        architecture="unknown",
        tag="attestation",
    )
    document = json.loads(index.index)
    document["manifests"].append(
        {
            **attestation.descriptor(),
            "platform": {"architecture": "unknown", "os": "unknown"},
            "annotations": {
                "vnd.docker.reference.type": "attestation-manifest",
                "vnd.docker.reference.digest": index.image("amd64").manifest_digest,
            },
        }
    )
    raw = json.dumps(document, separators=(",", ":")).encode()
    digest = sha256(raw)
    blob_path(layout, digest).write_bytes(raw)
    top = {"mediaType": OCI_INDEX, "digest": digest, "size": len(raw)}
    kept = [
        d
        for d in layout_descriptors(layout)
        if d.get("annotations", {}).get("org.opencontainers.image.ref.name")
        not in ("latest", "attestation")
    ]
    top["annotations"] = {"org.opencontainers.image.ref.name": "latest"}
    (layout / "index.json").write_text(
        json.dumps({"schemaVersion": 2, "mediaType": OCI_INDEX, "manifests": [*kept, top]})
    )
    return raw, digest, attestation.manifest_digest


def test_attestations_come_with_every_platform_or_with_their_platform_and_push_back(
    registry: Registry, other_registry: Registry, daemon: Daemon, layout: Path
) -> None:
    index = three_platforms(layout, 9910)
    raw, digest, attestation = with_attestation(layout, index)
    seed(registry, layout, "latest", "multi/attested:v1")
    ref = f"{registry.host}/multi/attested:v1"

    one = daemon.pull(ref)
    after_one = manifests(daemon, ref)["attestation"]
    refused = errors(push(daemon, f"{registry.host}/multi/attested", "v1"))
    arm = daemon.pull(ref, platforms=f"{ARM64},{AMD64}")
    after_arm = manifests(daemon, ref)["attestation"]
    every = daemon.pull(ref, **{"all-platforms": "1"})
    tag(daemon, ref, f"{other_registry.host}/ops/attested:v1")
    pushed = push(daemon, f"{other_registry.host}/ops/attested", "v1")

    assert errors(one) == errors(arm) == errors(every) == errors(pushed) == []
    assert after_one["Available"] is False  # one platform: no attestation
    assert after_one["AttestationData"] == {"For": index.image("amd64").manifest_digest}
    assert "ImageData" not in after_one
    short = index.image("amd64").manifest_digest[7:19]
    assert f"attestation of {short} ({attestation})" in refused[0]
    assert after_arm["Available"] is True  # the attestation of a platform asked for
    assert sha256(skopeo_inspect_raw(other_registry, "ops/attested:v1")) == digest
    assert (
        skopeo_inspect_raw(other_registry, f"ops/attested@{attestation}")
        == blob_path(layout, attestation).read_bytes()
    )
    assert [row["Id"] for row in daemon.images()] == [index.image("amd64").config_digest]
    assert raw == skopeo_inspect_raw(registry, "multi/attested:v1")


def test_every_platform_includes_other_operating_systems_kept_and_pushed_not_run(
    registry: Registry, other_registry: Registry, daemon: Daemon, layout: Path
) -> None:
    index = build_index(
        layout,
        [
            PlatformSpec([LayerSpec(size=3_000, seed=9920)], architecture="amd64"),
            PlatformSpec([LayerSpec(size=3_000, seed=9921)], os="windows", architecture="amd64"),
        ],
    )
    seed(registry, layout, "latest", "multi/windows:v1")
    ref = f"{registry.host}/multi/windows:v1"

    refused = daemon.pull(ref, platform="windows/amd64")
    every = daemon.pull(ref, **{"all-platforms": "1"})
    tag(daemon, ref, f"{other_registry.host}/ops/windows:v1")
    pushed = push(daemon, f"{other_registry.host}/ops/windows", "v1")

    assert "cannot be used on this platform" in errors(refused)[0]
    assert errors(every) == errors(pushed) == []
    assert available(daemon, ref) == {AMD64, "windows/amd64"}
    assert sha256(skopeo_inspect_raw(other_registry, "ops/windows:v1")) == index.digest


def test_a_mirror_that_lacks_a_platforms_manifest_is_skipped_for_the_registry(
    registry: Registry,
    start_daemon: Callable[..., Daemon],
    layout: Path,
    tmp_path_factory: pytest.TempPathFactory,
) -> None:
    index = seeded(registry, layout, "multi/mirrored:v1", 9930)
    with fixture_registry(tmp_path_factory, "platform-mirror") as mirror:
        seed(mirror, layout, "latest", "multi/mirrored:v1")
        arm = index.image("arm64", "v8").manifest_digest
        link = (
            mirror.storage
            / "docker/registry/v2/repositories/multi/mirrored/_manifests/revisions/sha256"
            / arm.removeprefix("sha256:")
        )
        for path in sorted(link.rglob("*"), reverse=True):
            path.unlink() if path.is_file() else path.rmdir()
        link.rmdir()
        daemon = start_daemon(
            default_platform=AMD64, registry_mirrors={registry.host: [mirror.url]}
        )
        ref = f"{registry.host}/multi/mirrored:v1"

        from_mirror = daemon.pull(ref)  # the default platform: the mirror has it
        every = daemon.pull(ref, **{"all-platforms": "1"})

    assert errors(from_mirror) == errors(every) == []
    [first, second] = daemon.log_events("image.pull")
    assert first["mirror"] == mirror.url
    assert "mirror" not in second
    [failed] = daemon.log_events("registry.mirror_failed")
    assert arm in failed["error"]
    assert available(daemon, ref) == {AMD64, "linux/arm64/v8", ARMV7}


# -- push --------------------------------------------------------------------------------


def test_a_push_of_an_index_with_platforms_missing_refuses_and_names_them(
    registry: Registry, other_registry: Registry, daemon: Daemon, layout: Path
) -> None:
    index = seeded(registry, layout, "multi/missing:v1", 9760)
    source = f"{registry.host}/multi/missing:v1"
    assert errors(daemon.pull(source)) == []
    tag(daemon, source, f"{other_registry.host}/ops/missing:v1")

    [error] = errors(push(daemon, f"{other_registry.host}/ops/missing", "v1"))

    assert f"linux/arm64 ({index.image('arm64', 'v8').manifest_digest})" in error
    assert f"linux/arm/v7 ({index.image('arm', 'v7').manifest_digest})" in error
    assert "--platform" in error
    assert "--reduced-index" in error
    assert other_registry.requests("PUT", "/ops/missing/manifests/") == 0
    with other_registry.client() as client:
        assert client.get("/v2/ops/missing/tags/list").status_code == 404


def test_a_push_with_a_platform_sends_that_platforms_manifest_as_it_was_pulled(
    registry: Registry, other_registry: Registry, daemon: Daemon, layout: Path
) -> None:
    index = seeded(registry, layout, "multi/one:v1", 9770)
    source = f"{registry.host}/multi/one:v1"
    assert errors(daemon.pull(source, platforms=f"{AMD64},{ARM64}")) == []
    tag(daemon, source, f"{other_registry.host}/ops/one:arm")

    pushed = push(
        daemon,
        f"{other_registry.host}/ops/one",
        "arm",
        platform=json.dumps({"os": "linux", "architecture": "arm64"}),
    )
    absent = push(daemon, f"{other_registry.host}/ops/one", "arm", platform=ARMV7)

    wanted = index.image("arm64", "v8")
    assert errors(pushed) == []
    assert skopeo_inspect_raw(other_registry, "ops/one:arm") == wanted.manifest
    assert {
        "aux": {"Tag": "arm", "Digest": wanted.manifest_digest, "Size": wanted.manifest_size}
    } in (pushed)
    [error] = errors(absent)
    assert "linux/arm/v7" in error
    assert "not stored" in error


def test_a_push_whose_kept_manifest_was_changed_in_the_store_refuses_and_says_run_fsck(
    registry: Registry, other_registry: Registry, daemon: Daemon, layout: Path
) -> None:
    index = seeded(registry, layout, "multi/damaged:v1", 9950)
    source = f"{registry.host}/multi/damaged:v1"
    assert errors(daemon.pull(source)) == []  # amd64: the index is recorded, its digests kept
    tag(daemon, source, f"{other_registry.host}/ops/damaged:v1")
    image = index.image("amd64")
    kept = daemon.root / "blobs" / "sha256" / image.manifest_digest.removeprefix("sha256:")
    manifest = json.loads(kept.read_bytes())
    manifest["layers"][-1]["size"] += 1  # still a manifest, no longer of these blobs
    kept.write_bytes(json.dumps(manifest).encode())

    [error] = errors(push(daemon, f"{other_registry.host}/ops/damaged", "v1", platform=AMD64))

    assert error == (
        f"the stored manifest {image.manifest_digest} of image {image.config_digest} does "
        "not describe its config and layers: run `ferryd fsck`"
    )
    assert other_registry.requests("PUT", "/ops/damaged/manifests/") == 0


def test_a_reduced_index_pushes_the_stored_platforms_under_a_new_digest_and_says_so(
    registry: Registry, other_registry: Registry, daemon: Daemon, layout: Path
) -> None:
    index = seeded(registry, layout, "multi/reduced:v1", 9780)
    source = f"{registry.host}/multi/reduced:v1"
    assert errors(daemon.pull(source, platforms=f"{AMD64},{ARMV7}")) == []
    tag(daemon, source, f"{other_registry.host}/ops/reduced:v1")

    pushed = push(daemon, f"{other_registry.host}/ops/reduced", "v1", **{"reduced-index": "1"})

    assert errors(pushed) == []
    raw = skopeo_inspect_raw(other_registry, "ops/reduced:v1")
    reduced = json.loads(raw)
    original = json.loads(index.index)
    assert sha256(raw) != index.digest
    assert reduced["mediaType"] == original["mediaType"]
    assert reduced["manifests"] == [original["manifests"][0], original["manifests"][2]]
    texts = [m.get("status", "") for m in pushed]
    assert any("reduced index" in t and sha256(raw) in t and index.digest in t for t in texts)
    for image in (index.image("amd64"), index.image("arm", "v7")):
        child, _ = registry_manifest(other_registry, f"ops/reduced@{image.manifest_digest}")
        assert child == image.manifest
    # The reduced index is kept: its digest names it, and it pushes whole again.
    again = push(daemon, f"{other_registry.host}/ops/reduced", "v1")
    assert errors(again) != []  # the tag still names the original index
    tag(
        daemon,
        f"{other_registry.host}/ops/reduced@{sha256(raw)}",
        f"{other_registry.host}/ops/r2:v1",
    )
    assert errors(push(daemon, f"{other_registry.host}/ops/r2", "v1")) == []
    assert skopeo_inspect_raw(other_registry, "ops/r2:v1") == raw


# -- list, inspect, rmi, prune -----------------------------------------------------------


def test_the_list_shows_an_index_once_and_its_platforms_in_manifests(
    registry: Registry, daemon: Daemon, layout: Path
) -> None:
    index = seeded(registry, layout, "multi/list:v1", 9790)
    ref = f"{registry.host}/multi/list:v1"
    assert errors(daemon.pull(ref, **{"all-platforms": "1"})) == []

    plain = daemon.images()
    with_manifests = daemon.client().get_json("/images/json", {"manifests": "1"})
    dangling = daemon.client().get_json(
        "/images/json", {"filters": json.dumps({"dangling": ["true"]})}
    )

    assert [row["Id"] for row in plain] == [index.image("amd64").config_digest]
    assert plain[0]["RepoTags"] == [ref]
    assert "Manifests" not in plain[0]
    assert plain[0]["Descriptor"]["digest"] == index.digest
    assert dangling == []
    [row] = with_manifests
    assert [m["ID"] for m in row["Manifests"]] == [i.manifest_digest for i in index.images]
    assert all(m["Available"] and m["Kind"] == "image" for m in row["Manifests"])
    assert [m["ImageData"]["Platform"] for m in row["Manifests"]] == [
        {"architecture": "amd64", "os": "linux"},
        {"architecture": "arm64", "os": "linux", "variant": "v8"},
        {"architecture": "arm", "os": "linux", "variant": "v7"},
    ]
    assert all(m["ImageData"]["Containers"] == [] for m in row["Manifests"])


def test_prune_leaves_the_platforms_of_a_tagged_index_and_prune_all_removes_them(
    registry: Registry, daemon: Daemon, layout: Path
) -> None:
    seeded(registry, layout, "multi/prune:v1", 9800)
    ref = f"{registry.host}/multi/prune:v1"
    assert errors(daemon.pull(ref, **{"all-platforms": "1"})) == []

    with daemon.http() as client:
        dangling = client.post("/images/prune").json()
        kept = available(daemon, ref)
        every = client.post(
            "/images/prune", params={"filters": json.dumps({"dangling": ["false"]})}
        ).json()

    assert dangling["ImagesDeleted"] is None
    assert kept == {AMD64, "linux/arm64/v8", ARMV7}
    assert len([r for r in every["ImagesDeleted"] if "Deleted" in r]) >= 4  # index + 3 images
    assert daemon.client().get_json("/images/json") == []
    assert daemon.blob_files() == []


def test_rmi_of_an_index_tag_removes_the_platforms_nothing_else_uses(
    registry: Registry, daemon: Daemon, layout: Path
) -> None:
    index = seeded(registry, layout, "multi/rmi:v1", 9810)
    ref = f"{registry.host}/multi/rmi:v1"
    assert errors(daemon.pull(ref, **{"all-platforms": "1"})) == []
    tag(daemon, ref, "team/copy:v1")

    with daemon.http() as client:
        first = client.delete(f"/images/{ref}").json()
        still = available(daemon, "team/copy:v1")
        second = client.delete("/images/team/copy:v1").json()

    assert first == [
        {"Untagged": ref},
        {"Untagged": f"{registry.host}/multi/rmi@{index.digest}"},
    ]
    assert still == {AMD64, "linux/arm64/v8", ARMV7}
    deleted = [record["Deleted"] for record in second if "Deleted" in record]
    assert deleted[0] == index.digest
    assert set(deleted[1:4]) == {image.config_digest for image in index.images}
    assert daemon.blob_files() == []


def test_rmi_by_id_of_one_platform_needs_force_and_leaves_the_index_without_it(
    registry: Registry, daemon: Daemon, layout: Path
) -> None:
    index = seeded(registry, layout, "multi/rmid:v1", 9820)
    ref = f"{registry.host}/multi/rmid:v1"
    assert errors(daemon.pull(ref, **{"all-platforms": "1"})) == []
    arm = index.image("arm64", "v8").config_digest

    with daemon.http() as client:
        refused = client.delete(f"/images/{arm}")
        forced = client.delete(f"/images/{arm}", params={"force": "1"})

    assert refused.status_code == 409
    assert "must be forced" in refused.json()["message"]
    assert index.digest in refused.json()["message"]
    assert forced.status_code == 200
    assert {"Deleted": arm} in forced.json()
    assert available(daemon, ref) == {AMD64, ARMV7}


def test_a_tag_that_moves_off_an_index_leaves_it_named_by_its_digest_as_one_image_would_be(
    registry: Registry, daemon: Daemon, layout: Path, tmp_path: Path
) -> None:
    old = seeded(registry, layout, "multi/moved:v1", 9830)
    ref = f"{registry.host}/multi/moved:v1"
    assert errors(daemon.pull(ref, platforms=f"{AMD64},{ARM64}")) == []
    new = seeded(registry, tmp_path / "new", "multi/moved:v1", 9840)

    assert errors(daemon.pull(ref, platforms=f"{AMD64},{ARM64}")) == []

    rows = {row["Id"]: row for row in daemon.images()}
    assert set(rows) == {new.image("amd64").config_digest, old.image("amd64").config_digest}
    assert rows[new.image("amd64").config_digest]["RepoTags"] == [ref]
    assert rows[old.image("amd64").config_digest]["RepoTags"] == []
    assert rows[old.image("amd64").config_digest]["RepoDigests"] == [
        f"{registry.host}/multi/moved@{old.digest}"
    ]
    old_name = f"{registry.host}/multi/moved@{old.digest}"
    assert available(daemon, old_name) == {AMD64, "linux/arm64/v8"}
    with daemon.http() as client:
        removed = client.delete(f"/images/{old_name}").json()
    assert {"Deleted": old.digest} in removed
    assert {"Deleted": old.image("arm64", "v8").config_digest} in removed
    assert json.loads(daemon.client().request("POST", "/fsck").read())["Problems"] == []


# -- save and load -----------------------------------------------------------------------


def test_save_and_load_keep_the_index_and_a_push_after_the_load_keeps_its_digest(
    registry: Registry,
    other_registry: Registry,
    start_daemon: Callable[..., Daemon],
    layout: Path,
) -> None:
    index = seeded(registry, layout, "multi/saved:v1", 9850)
    ref = f"{registry.host}/multi/saved:v1"
    first = start_daemon(default_platform=AMD64)
    assert errors(first.pull(ref, **{"all-platforms": "1"})) == []

    archive = save(first, ref)
    files = members(archive)
    second = start_daemon(default_platform=AMD64)
    answer = load(second, archive)
    tag(second, ref, f"{other_registry.host}/ops/saved:v1")
    pushed = push(second, f"{other_registry.host}/ops/saved", "v1")

    [named] = json.loads(files["index.json"])["manifests"]
    assert named["digest"] == index.digest
    assert named["mediaType"] == index.media_type
    assert named["annotations"]["io.containerd.image.name"] == ref
    listed = json.loads(files["manifest.json"])
    assert [item["Config"] for item in listed] == [
        f"blobs/sha256/{image.config_digest.removeprefix('sha256:')}" for image in index.images
    ]
    assert [item.get("RepoTags") for item in listed] == [[ref], None, None]
    assert files[f"blobs/sha256/{index.digest.removeprefix('sha256:')}"] == index.index
    assert answer.lines == [f"Loaded image: {ref}"]
    assert second.inspect(ref)["Descriptor"]["digest"] == index.digest
    assert available(second, ref) == {AMD64, "linux/arm64/v8", ARMV7}
    assert errors(pushed) == []
    assert sha256(skopeo_inspect_raw(other_registry, "ops/saved:v1")) == index.digest
    [event] = second.log_events("image.load")
    assert event["manifest"] == index.digest
    assert event["platforms"] == [AMD64, "linux/arm64", ARMV7]


def test_save_with_a_platform_writes_that_platforms_image_alone(
    registry: Registry, daemon: Daemon, layout: Path
) -> None:
    index = seeded(registry, layout, "multi/saveone:v1", 9860)
    ref = f"{registry.host}/multi/saveone:v1"
    assert errors(daemon.pull(ref, **{"all-platforms": "1"})) == []

    files = members(save(daemon, ref, platform=ARM64))

    [named] = json.loads(files["index.json"])["manifests"]
    assert named["digest"] == index.image("arm64", "v8").manifest_digest
    [item] = json.loads(files["manifest.json"])
    assert item["RepoTags"] == [ref]


def test_loading_skopeos_archive_of_every_platform_keeps_the_index(
    registry: Registry, daemon: Daemon, layout: Path, tmp_path: Path
) -> None:
    index = seeded(registry, layout, "multi/skopeo:v1", 9870)
    exported = tmp_path / "exported"
    skopeo_copy_to_oci(registry, "multi/skopeo:v1", exported, tag="team/multi:v1")
    # skopeo's layout names the index with a ref name that is a whole reference.
    assert [d["digest"] for d in layout_descriptors(exported)] == [index.digest]
    import io
    import tarfile

    buffer = io.BytesIO()
    with tarfile.open(fileobj=buffer, mode="w") as tar:
        tar.add(exported, arcname=".")

    answer = load(daemon, buffer.getvalue())

    assert answer.status == 200, answer.error
    assert daemon.inspect("team/multi:v1")["Descriptor"]["digest"] == index.digest
    assert available(daemon, "team/multi:v1") == {AMD64, "linux/arm64/v8", ARMV7}


# -- fsck --------------------------------------------------------------------------------


def test_fsck_checks_an_indexs_blob_and_rows_and_repair_keeps_the_tags(
    registry: Registry, daemon: Daemon, layout: Path
) -> None:
    index = seeded(registry, layout, "multi/fsck:v1", 9880)
    ref = f"{registry.host}/multi/fsck:v1"
    assert errors(daemon.pull(ref, **{"all-platforms": "1"})) == []
    clean = json.loads(daemon.client().request("POST", "/fsck").read())
    said = daemon.ferryd("fsck").stdout
    blob = daemon.root / "blobs" / "sha256" / index.digest.removeprefix("sha256:")
    blob.write_bytes(blob.read_bytes().replace(b"arm64", b"arm65"))

    found = json.loads(daemon.client().request("POST", "/fsck").read())
    repaired = json.loads(daemon.client().request("POST", "/fsck", {"repair": "1"}).read())
    after = json.loads(daemon.client().request("POST", "/fsck").read())

    assert clean["Problems"] == []
    assert clean["Checked"]["Indexes"] == 1
    assert "3 images, 3 manifests, 1 index, 2 references in " in said
    kinds = {(p["Kind"], p["Subject"]) for p in found["Problems"]}
    assert ("corrupt-blob", index.digest) in kinds
    assert ("broken-index", index.digest) in kinds
    assert {"Kind": "index", "Subject": index.digest} in repaired["Removed"]
    assert after["Problems"] == []
    # The tag keeps naming its image, without the index.
    inspected = daemon.inspect(ref)
    assert inspected["Id"] == index.image("amd64").config_digest
    assert "Descriptor" not in inspected


# -- the CLI -----------------------------------------------------------------------------


def test_the_cli_pulls_several_or_all_platforms_and_shows_the_tree(
    registry: Registry, daemon: Daemon, layout: Path
) -> None:
    index = seeded(registry, layout, "multi/cli:v1", 9890)
    ref = f"{registry.host}/multi/cli:v1"

    several = daemon.ferryd("pull", "-q", "--platform", f"{AMD64},{ARM64}", ref)
    tree = daemon.ferryd("images", "--tree")
    every = daemon.ferryd("pull", "-q", "--all-platforms", ref)
    tree_all = daemon.ferryd("images", "--tree", "-a")
    refused = daemon.ferryd("pull", "--all-platforms", "--platform", AMD64, ref)

    assert several.returncode == 0, several.stderr
    lines = tree.stdout.splitlines()
    assert lines[0].split() == ["IMAGE", "ID", "DISK", "USAGE", "CONTENT", "SIZE", "EXTRA"]
    assert lines[1].startswith(ref)
    assert lines[2].startswith(f"├─ {AMD64}")
    assert index.image("amd64").manifest_digest.removeprefix("sha256:")[:12] in lines[2]
    assert lines[3].startswith("└─ linux/arm64/v8")
    assert len(lines) == 4  # arm/v7 is not stored: shown with -a only
    assert every.returncode == 0, every.stderr
    assert [line.split()[1] for line in tree_all.stdout.splitlines()[2:]] == [
        AMD64,
        "linux/arm64/v8",
        ARMV7,
    ]
    assert refused.returncode == 1
    assert "--all-platforms" in refused.stderr


def test_the_cli_pushes_one_platform_or_a_reduced_index(
    registry: Registry, other_registry: Registry, daemon: Daemon, layout: Path
) -> None:
    index = seeded(registry, layout, "multi/clipush:v1", 9900)
    source = f"{registry.host}/multi/clipush:v1"
    assert errors(daemon.pull(source)) == []
    target = f"{other_registry.host}/ops/clipush:v1"
    assert daemon.ferryd("tag", source, target).returncode == 0

    refused = daemon.ferryd("push", target)
    one = daemon.ferryd("push", "-q", "--platform", AMD64, target)
    reduced = daemon.ferryd("push", "-q", "--reduced-index", target)

    assert refused.returncode == 1
    assert "not stored" in refused.stderr
    assert one.stdout.split() == [index.image("amd64").manifest_digest]
    [digest] = reduced.stdout.split()
    assert digest != index.digest
    assert json.loads(skopeo_inspect_raw(other_registry, "ops/clipush:v1"))["manifests"] == [
        json.loads(index.index)["manifests"][0]
    ]


# -- the docker CLI ----------------------------------------------------------------------


@needs_docker
def test_the_docker_cli_reads_the_manifests_and_pushes_one_platform(
    registry: Registry,
    other_registry: Registry,
    daemon: Daemon,
    layout: Path,
    docker_config: Path,
) -> None:
    index = seeded(registry, layout, "multi/docker:v1", 9940)
    ref = f"{registry.host}/multi/docker:v1"
    assert errors(daemon.pull(ref, platforms=f"{AMD64},{ARM64}")) == []
    target = f"{other_registry.host}/ops/docker:v1"

    inspected = json.loads(docker(daemon, "image", "inspect", ref, config=docker_config).stdout)
    tree = docker(daemon, "image", "ls", "--tree", config=docker_config)
    docker(daemon, "tag", ref, target, config=docker_config)
    refused = docker(daemon, "push", target, config=docker_config, check=False)
    pushed = docker(daemon, "push", "--platform", ARM64, target, config=docker_config)

    assert [m["ID"] for m in inspected[0]["Manifests"]] == [i.manifest_digest for i in index.images]
    assert "/multi/docker" in tree.stdout  # docker cuts long names
    assert AMD64 in tree.stdout
    assert "linux/arm64/v8" in tree.stdout
    assert refused.returncode != 0
    assert "not stored" in refused.stderr + refused.stdout
    assert f"v1: digest: {index.image('arm64', 'v8').manifest_digest}" in pushed.stdout
