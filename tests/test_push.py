"""Push, tag and rmi through the real daemon, against real registries (docker-registry).

Images get into the daemon the only way they can: built, seeded into the shared registry
and pulled. They are pushed mostly to a second registry (`other_registry`), so that each
layer has to travel; skopeo reads what was pushed back as an independent client.
"""

from __future__ import annotations

import base64
import gzip
import json
import os
import signal
import threading
from collections.abc import Callable
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from typing import Any
from urllib.parse import parse_qs

import httpx
import pytest
import trustme

from support.daemon import Daemon, errors, statuses
from support.digests import sha256, short
from support.images import (
    DOCKER_MANIFEST,
    LAYER_TYPES,
    OCI_MANIFEST,
    BuiltImage,
    LayerSpec,
    blob_path,
    build_image,
    layout_descriptor,
    registry_manifest,
    seed,
    skopeo_copy_to_oci,
    skopeo_inspect_raw,
)
from support.registry import (
    PASSWORD,
    USER,
    AccessLogEntry,
    Registry,
    start_registry,
)
from support.throttle import throttled

pytestmark = pytest.mark.registry

Messages = list[dict[str, Any]]


# -- helpers -------------------------------------------------------------------


def push_auth(username: str, password: str) -> str:
    """An `X-Registry-Auth` header value, as the docker CLI sends it (base64url JSON)."""
    payload = {"username": username, "password": password}
    return base64.urlsafe_b64encode(json.dumps(payload).encode()).decode()


def push(
    daemon: Daemon, repository: str, tag: str | None = None, auth: str | None = None
) -> Messages:
    """The whole progress stream of `POST /images/{repository}/push?tag=`."""
    params = {"tag": tag} if tag else None
    headers = {"X-Registry-Auth": auth} if auth else None
    return list(daemon.client().stream("POST", f"/images/{repository}/push", params, headers))


def tag(daemon: Daemon, source: str, target: str) -> httpx.Response:
    """`POST /images/{source}/tag?repo=&tag=`, `target` being `repository:tag`."""
    repository, _, tag_ = target.rpartition(":")
    with daemon.http() as client:
        return client.post(f"/images/{source}/tag", params={"repo": repository, "tag": tag_})


def rmi(daemon: Daemon, name: str, *, force: bool | str = False) -> httpx.Response:
    """`force`: True sends `force=1`; a string is sent as it is."""
    value = "1" if force is True else force or None
    with daemon.http() as client:
        return client.delete(f"/images/{name}", params={"force": value} if value else None)


def pulled(
    daemon: Daemon,
    registry: Registry,
    layout: Path,
    dest: str,
    layers: list[LayerSpec],
    media: str = "oci",
) -> BuiltImage:
    """Build an image, seed it into `registry` as `dest` and pull it into the daemon."""
    built = build_image(layout, layers=layers, media=media)  # type: ignore[arg-type]
    seed(registry, layout, "latest", dest)
    assert errors(daemon.pull(f"{registry.host}/{dest}")) == []
    return built


def aux(messages: Messages) -> list[dict[str, Any]]:
    return [m["aux"] for m in messages if "aux" in m]


def status_texts(messages: Messages) -> list[str]:
    return [str(m.get("status", "")) for m in messages]


def mark(registry: Registry) -> int:
    """Where the access log is now: `since(registry, mark)` is what came after."""
    return len(registry.access_log())


def since(registry: Registry, start: int) -> list[AccessLogEntry]:
    return registry.access_log()[start:]


def uploads(entries: list[AccessLogEntry]) -> list[str]:
    """Digests of finished blob uploads (`PUT …/blobs/uploads/…?digest=`), in order."""
    return [
        parse_qs(entry.query)["digest"][0]
        for entry in entries
        if entry.method == "PUT" and "/blobs/uploads/" in entry.path
    ]


def upload_traffic(entries: list[AccessLogEntry]) -> list[AccessLogEntry]:
    """Every request that opens, feeds or closes a blob upload (mounts included)."""
    return [
        entry
        for entry in entries
        if entry.method in ("POST", "PATCH", "PUT") and "/blobs/uploads/" in entry.path
    ]


def read_back(registry: Registry, ref: str, dest: Path) -> tuple[dict[str, Any], dict[str, bytes]]:
    """skopeo copies `ref` into an OCI layout; its manifest and every blob it names,
    each checked against its descriptor's digest and size."""
    skopeo_copy_to_oci(registry, ref, dest, tag="pushed", all_platforms=False)
    manifest = json.loads(blob_path(dest, layout_descriptor(dest, "pushed")["digest"]).read_bytes())
    blobs = {}
    for descriptor in [manifest["config"], *manifest["layers"]]:
        data = blob_path(dest, descriptor["digest"]).read_bytes()
        assert sha256(data) == descriptor["digest"]
        assert len(data) == descriptor["size"]
        blobs[descriptor["digest"]] = data
    return manifest, blobs


def store_blob(daemon: Daemon, digest: str) -> bytes:
    return (daemon.root / "blobs" / "sha256" / digest.removeprefix("sha256:")).read_bytes()


def blob_names(daemon: Daemon) -> set[str]:
    return {path.name for path in daemon.blob_files()}


def hexes(*digests: str) -> set[str]:
    return {digest.removeprefix("sha256:") for digest in digests}


def image_blobs(built: BuiltImage) -> set[str]:
    """What the store keeps of an image pulled as built: manifest, config, layer blobs."""
    return hexes(built.manifest_digest, built.config_digest, *(x.digest for x in built.layers))


def _tls_daemon(
    start_daemon: Callable[..., Daemon], tls_registry: Registry, ca: trustme.CA, plain: Registry
) -> Daemon:
    """A daemon that verifies the TLS registry with the test CA (certs.d) and reaches the
    plain registry, where its images come from, over HTTP."""
    daemon = start_daemon(insecure_registries=[plain.host])
    daemon.trust(tls_registry.host, ca)
    return daemon


# -- push: what arrives --------------------------------------------------------


@pytest.mark.parametrize(
    ("media", "compressions"), [("oci", ["gzip", "zstd", "gzip"]), ("docker", ["gzip", "gzip"])]
)
def test_pushed_image_reads_back_with_skopeo_blob_for_blob_as_stored(
    registry: Registry,
    other_registry: Registry,
    daemon: Daemon,
    tmp_path: Path,
    media: str,
    compressions: list[str],
) -> None:
    layers = [
        LayerSpec(size=200_000 // (i + 1), seed=300 + i, compression=c)  # type: ignore[arg-type]
        for i, c in enumerate(compressions)
    ]
    built = pulled(daemon, registry, tmp_path / "layout", f"readback/{media}:v1", layers, media)
    target = f"{other_registry.host}/readback/{media}"
    assert tag(daemon, f"{registry.host}/readback/{media}:v1", f"{target}:v1").status_code == 201

    messages = push(daemon, target, "v1")

    assert errors(messages) == []
    [pushed] = aux(messages)
    raw, _ = registry_manifest(other_registry, f"readback/{media}:v1")
    assert pushed["Digest"] == sha256(raw)
    manifest, blobs = read_back(other_registry, f"readback/{media}:v1", tmp_path / "back")
    assert manifest["config"]["digest"] == built.config_digest
    assert [layer["digest"] for layer in manifest["layers"]] == [x.digest for x in built.layers]
    for digest, data in blobs.items():
        assert data == store_blob(daemon, digest)  # what the store holds, byte for byte
        assert data == blob_path(tmp_path / "layout", digest).read_bytes()  # what was built


@pytest.mark.parametrize("media", ["oci", "docker"])
def test_pull_tag_push_to_a_second_registry_keeps_every_blob_and_the_manifest_digest(
    registry: Registry, other_registry: Registry, daemon: Daemon, tmp_path: Path, media: str
) -> None:
    layout = tmp_path / "layout"
    built = pulled(
        daemon,
        registry,
        layout,
        f"keep/{media}:v1",
        [LayerSpec(size=150_000, seed=310), LayerSpec(size=3_000, seed=311)],
        media,
    )
    target = f"{other_registry.host}/kept/{media}"
    assert tag(daemon, f"{registry.host}/keep/{media}:v1", f"{target}:v2").status_code == 201

    messages = push(daemon, target, "v2")

    assert errors(messages) == []
    assert messages[0] == {"status": f"The push refers to repository [{target}]"}
    ids = [short(d) for d in built.diff_ids]
    assert sorted(statuses(messages, "Preparing")) == sorted(ids)
    assert sorted(statuses(messages, "Pushed")) == sorted(ids)
    for layer, diff_id in zip(built.layers, built.diff_ids, strict=True):
        assert any(
            m.get("progressDetail", {}).get("total") == layer.size
            for m in messages
            if m.get("status") == "Pushing" and m.get("id") == short(diff_id)
        )
    assert f"v2: digest: {built.manifest_digest} size: {built.manifest_size}" in status_texts(
        messages
    )
    assert messages[-1] == {
        "aux": {"Tag": "v2", "Digest": built.manifest_digest, "Size": built.manifest_size}
    }
    raw, content_type = registry_manifest(other_registry, f"kept/{media}:v2")
    assert raw == built.manifest
    assert content_type == (OCI_MANIFEST if media == "oci" else DOCKER_MANIFEST)
    with other_registry.client() as client:
        for digest in [built.config_digest, *(x.digest for x in built.layers)]:
            response = client.get(f"/v2/kept/{media}/blobs/{digest}")
            assert response.status_code == 200
            assert response.content == blob_path(layout, digest).read_bytes()
    assert f"{target}@{built.manifest_digest}" in daemon.inspect(f"{target}:v2")["RepoDigests"]


def test_second_push_of_the_same_tag_finds_every_layer_and_uploads_nothing(
    registry: Registry, other_registry: Registry, daemon: Daemon, tmp_path: Path
) -> None:
    built = pulled(
        daemon,
        registry,
        tmp_path / "layout",
        "again/src:v1",
        [LayerSpec(size=40_000, seed=320), LayerSpec(size=1_000, seed=321)],
    )
    target = f"{other_registry.host}/again/app"
    tag(daemon, f"{registry.host}/again/src:v1", f"{target}:v1")
    assert errors(push(daemon, target, "v1")) == []
    start = mark(other_registry)

    messages = push(daemon, target, "v1")

    assert errors(messages) == []
    assert sorted(statuses(messages, "Layer already exists")) == sorted(
        short(d) for d in built.diff_ids
    )
    assert statuses(messages, "Pushed") == []
    assert statuses(messages, "Pushing") == []
    assert aux(messages) == [
        {"Tag": "v1", "Digest": built.manifest_digest, "Size": built.manifest_size}
    ]
    assert upload_traffic(since(other_registry, start)) == []


def test_push_to_another_repository_of_the_same_registry_mounts_the_layers(
    registry: Registry, daemon: Daemon, tmp_path: Path
) -> None:
    built = pulled(
        daemon,
        registry,
        tmp_path / "layout",
        "mount/src:v1",
        [LayerSpec(size=60_000, seed=330), LayerSpec(size=2_000, seed=331)],
    )
    target = f"{registry.host}/mount/dst"
    tag(daemon, f"{registry.host}/mount/src:v1", f"{target}:v1")
    start = mark(registry)

    messages = push(daemon, target, "v1")

    assert errors(messages) == []
    assert sorted(statuses(messages, "Mounted from mount/src")) == sorted(
        short(d) for d in built.diff_ids
    )
    assert statuses(messages, "Pushed") == []
    entries = since(registry, start)
    mounts = [parse_qs(e.query) for e in entries if e.method == "POST" and "mount=" in e.query]
    assert sorted(m["mount"][0] for m in mounts) == sorted(x.digest for x in built.layers)
    assert all(m["from"] == ["mount/src"] for m in mounts)
    assert all(e.status == 201 for e in entries if e.method == "POST" and "mount=" in e.query)
    # Only the config travels (it is not mounted); no layer is uploaded.
    assert uploads(entries) == [built.config_digest]
    assert sum(1 for e in entries if e.method == "PATCH") == 1
    assert skopeo_inspect_raw(registry, "mount/dst:v1") == built.manifest


def test_max_concurrent_uploads_makes_the_other_layers_wait(
    registry: Registry,
    other_registry: Registry,
    start_daemon: Callable[..., Daemon],
    tmp_path: Path,
) -> None:
    daemon = start_daemon(max_concurrent_uploads=1)
    built = pulled(
        daemon,
        registry,
        tmp_path / "layout",
        "waiting/src:v1",
        [LayerSpec(size=30_000, seed=340 + i) for i in range(3)],
    )
    target = f"{other_registry.host}/waiting/app"
    tag(daemon, f"{registry.host}/waiting/src:v1", f"{target}:v1")

    messages = push(daemon, target, "v1")

    assert errors(messages) == []
    assert statuses(messages, "Waiting")
    assert sorted(statuses(messages, "Pushed")) == sorted(short(d) for d in built.diff_ids)


# -- auth over TLS ---------------------------------------------------------------


def test_push_with_basic_auth_over_tls(
    registry: Registry,
    tls_registry: Registry,
    start_daemon: Callable[..., Daemon],
    tmp_path: Path,
    ca: trustme.CA,
) -> None:
    daemon = _tls_daemon(start_daemon, tls_registry, ca, registry)
    built = pulled(
        daemon,
        registry,
        tmp_path / "layout",
        "private/src:v1",
        [LayerSpec(size=20_000, seed=350), LayerSpec(size=500, seed=351)],
    )
    target = f"{tls_registry.host}/private/pushed"
    tag(daemon, f"{registry.host}/private/src:v1", f"{target}:v1")

    messages = push(daemon, target, "v1", auth=push_auth(USER, PASSWORD))

    assert errors(messages) == []
    assert sorted(statuses(messages, "Pushed")) == sorted(short(d) for d in built.diff_ids)
    assert aux(messages)[0]["Digest"] == built.manifest_digest
    assert skopeo_inspect_raw(tls_registry, "private/pushed:v1") == built.manifest
    _, blobs = read_back(tls_registry, "private/pushed:v1", tmp_path / "back")
    assert set(blobs) == {built.config_digest, *(x.digest for x in built.layers)}


def test_push_with_a_wrong_password_is_a_clear_error_and_the_daemon_stays_up(
    registry: Registry,
    tls_registry: Registry,
    start_daemon: Callable[..., Daemon],
    tmp_path: Path,
    ca: trustme.CA,
) -> None:
    daemon = _tls_daemon(start_daemon, tls_registry, ca, registry)
    pulled(daemon, registry, tmp_path / "layout", "private/src:v2", [LayerSpec(size=500, seed=352)])
    target = f"{tls_registry.host}/private/refused"
    tag(daemon, f"{registry.host}/private/src:v2", f"{target}:v1")

    messages = push(daemon, target, "v1", auth=push_auth(USER, "not-the-pass-7d1e"))

    [error] = errors(messages)
    assert "authentication required" in error or "unauthorized" in error
    assert "not-the-pass-7d1e" not in error  # the password given is never echoed
    assert daemon.alive
    assert daemon.client().request("GET", "/_ping").read() == b"OK"
    with tls_registry.client() as client:
        assert client.get("/v2/private/refused/manifests/v1").status_code == 404


# -- faults ----------------------------------------------------------------------


def test_registry_stopped_mid_push_retries_then_fails_and_the_next_push_completes(
    registry: Registry, start_daemon: Callable[..., Daemon], tmp_path: Path
) -> None:
    target_registry = start_registry(tmp_path / "stopping-registry")
    # The upload is slowed so that the kill lands while the blob is being sent: killed
    # while it commits an upload, the registry can answer 500 for that blob for good.
    try:
        with throttled(target_registry.host, 10_000_000, both_ways=True) as proxy:
            daemon = start_daemon(retry_delay=0.3, max_upload_attempts=3)
            big = LayerSpec(size=20_000_000, seed=360, compression="zstd", level=1)
            built = pulled(daemon, registry, tmp_path / "layout", "stopping/src:v1", [big])
            target = f"{proxy.host}/stopping/app"
            tag(daemon, f"{registry.host}/stopping/src:v1", f"{target}:v1")
            messages: Messages = []

            stream = daemon.client().stream("POST", f"/images/{target}/push", {"tag": "v1"})
            for message in stream:
                messages.append(message)
                if message.get("status") == "Pushing" and target_registry.running:
                    assert target_registry.pid is not None
                    os.kill(target_registry.pid, signal.SIGKILL)
                    target_registry.stop()

            assert not target_registry.running, "the push never said Pushing"
            assert any(text.startswith("Retrying in") for text in status_texts(messages))
            [error] = errors(messages)
            assert proxy.host in error
            assert aux(messages) == []
            assert daemon.alive
            target_registry.start()
            again = push(daemon, target, "v1")
            assert errors(again) == []
            assert aux(again)[0]["Digest"] == built.manifest_digest
        assert skopeo_inspect_raw(target_registry, "stopping/app:v1") == built.manifest
        with target_registry.client() as client:
            head = client.head(f"/v2/stopping/app/blobs/{built.layers[0].digest}")
            assert int(head.headers["content-length"]) == built.layers[0].size
    finally:
        target_registry.stop()


# -- sharing ---------------------------------------------------------------------


def test_concurrent_pushes_of_images_sharing_layers_upload_each_blob_once(
    registry: Registry, other_registry: Registry, daemon: Daemon, tmp_path: Path
) -> None:
    base = [
        LayerSpec(size=12_000_000, seed=370, compression="zstd", level=1),
        LayerSpec(size=3_000_000, seed=371, compression="zstd", level=1),
    ]
    first = pulled(
        daemon, registry, tmp_path / "a", "both/first:v1", [*base, LayerSpec(size=100, seed=372)]
    )
    second = pulled(
        daemon, registry, tmp_path / "b", "both/second:v1", [*base, LayerSpec(size=100, seed=373)]
    )
    target = f"{other_registry.host}/both/app"
    tag(daemon, f"{registry.host}/both/first:v1", f"{target}:first")
    tag(daemon, f"{registry.host}/both/second:v1", f"{target}:second")
    start = mark(other_registry)
    barrier = threading.Barrier(2)

    def push_after_barrier(tag_: str) -> Messages:
        barrier.wait()
        return push(daemon, target, tag_)

    with ThreadPoolExecutor(2) as pool:
        results = list(pool.map(push_after_barrier, ["first", "second"]))

    for messages, built in zip(results, [first, second], strict=True):
        assert errors(messages) == []
        assert aux(messages)[0]["Digest"] == built.manifest_digest
    uploaded = uploads(since(other_registry, start))
    for layer in first.layers[:2]:
        assert uploaded.count(layer.digest) == 1
    assert uploaded.count(first.layers[2].digest) == 1
    assert uploaded.count(second.layers[2].digest) == 1
    assert skopeo_inspect_raw(other_registry, "both/app:first") == first.manifest
    assert skopeo_inspect_raw(other_registry, "both/app:second") == second.manifest


# -- a layer held as a plain tar -------------------------------------------------


@pytest.mark.parametrize("media", ["oci", "docker"])
def test_uncompressed_layer_is_gzipped_on_the_way_and_keeps_its_diff_id(
    registry: Registry, other_registry: Registry, daemon: Daemon, tmp_path: Path, media: str
) -> None:
    built = pulled(
        daemon,
        registry,
        tmp_path / "layout",
        f"plain/{media}:v1",
        [LayerSpec(size=300_000, seed=380, compression="none", compressible=True)],
        media,
    )
    target = f"{other_registry.host}/plain/{media}"
    tag(daemon, f"{registry.host}/plain/{media}:v1", f"{target}:v1")
    start = mark(other_registry)

    messages = push(daemon, target, "v1")

    assert errors(messages) == []
    assert statuses(messages, "Pushed") == [short(built.diff_ids[0])]
    raw, _ = registry_manifest(other_registry, f"plain/{media}:v1")
    [pushed] = aux(messages)
    assert pushed == {"Tag": "v1", "Digest": sha256(raw), "Size": len(raw)}
    manifest = json.loads(raw)
    [layer] = manifest["layers"]
    assert layer["mediaType"] == LAYER_TYPES[media]["gzip"]  # type: ignore[index]
    assert layer["digest"] != built.layers[0].digest
    assert layer["size"] < built.layers[0].size
    assert manifest["config"]["digest"] == built.config_digest
    assert sorted(uploads(since(other_registry, start))) == sorted(
        [layer["digest"], built.config_digest]
    )
    _, blobs = read_back(other_registry, f"plain/{media}:v1", tmp_path / "back")
    data = blobs[layer["digest"]]
    assert data[:2] == b"\x1f\x8b"
    assert sha256(gzip.decompress(data)) == built.diff_ids[0]
    assert blob_names(daemon) >= hexes(built.layers[0].digest)  # the store keeps its tar


def test_layer_gzipped_on_the_way_is_not_uploaded_again_to_the_same_repository(
    registry: Registry, other_registry: Registry, daemon: Daemon, tmp_path: Path
) -> None:
    built = pulled(
        daemon,
        registry,
        tmp_path / "layout",
        "plain/again:v1",
        [LayerSpec(size=50_000, seed=381, compression="none")],
    )
    target = f"{other_registry.host}/plain/again"
    tag(daemon, f"{registry.host}/plain/again:v1", f"{target}:v1")
    [first] = aux(push(daemon, target, "v1"))
    start = mark(other_registry)

    messages = push(daemon, target, "v1")

    assert errors(messages) == []
    assert statuses(messages, "Layer already exists") == [short(built.diff_ids[0])]
    assert aux(messages) == [first]
    assert upload_traffic(since(other_registry, start)) == []


def test_layer_gzipped_on_the_way_is_mounted_into_another_repository(
    registry: Registry, other_registry: Registry, daemon: Daemon, tmp_path: Path
) -> None:
    built = pulled(
        daemon,
        registry,
        tmp_path / "layout",
        "plain/mountsrc:v1",
        [LayerSpec(size=50_000, seed=382, compression="none")],
    )
    tag(daemon, f"{registry.host}/plain/mountsrc:v1", f"{other_registry.host}/plain/one:v1")
    tag(daemon, f"{registry.host}/plain/mountsrc:v1", f"{other_registry.host}/plain/two:v1")
    assert errors(push(daemon, f"{other_registry.host}/plain/one", "v1")) == []
    start = mark(other_registry)

    messages = push(daemon, f"{other_registry.host}/plain/two", "v1")

    assert errors(messages) == []
    assert statuses(messages, "Mounted from plain/one") == [short(built.diff_ids[0])]
    assert uploads(since(other_registry, start)) == [built.config_digest]


# -- which tags ------------------------------------------------------------------


def test_push_of_a_tag_that_does_not_exist_locally_is_a_clear_error(
    other_registry: Registry, daemon: Daemon
) -> None:
    start = mark(other_registry)

    messages = push(daemon, f"{other_registry.host}/nothing/here", "v1")

    [error] = errors(messages)
    assert error == (
        f"An image does not exist locally with the tag: {other_registry.host}/nothing/here:v1"
    )
    assert not [e for e in since(other_registry, start) if "/nothing/here/" in e.path]
    assert daemon.alive


def test_push_without_a_tag_pushes_every_tag_of_the_repository(
    registry: Registry, other_registry: Registry, daemon: Daemon, tmp_path: Path
) -> None:
    one = pulled(
        daemon, registry, tmp_path / "a", "alltags/one:v1", [LayerSpec(size=1_000, seed=390)]
    )
    two = pulled(
        daemon, registry, tmp_path / "b", "alltags/two:v1", [LayerSpec(size=1_000, seed=391)]
    )
    target = f"{other_registry.host}/alltags/app"
    tag(daemon, f"{registry.host}/alltags/one:v1", f"{target}:one")
    tag(daemon, f"{registry.host}/alltags/one:v1", f"{target}:uno")
    tag(daemon, f"{registry.host}/alltags/two:v1", f"{target}:two")
    tag(daemon, f"{registry.host}/alltags/two:v1", f"{other_registry.host}/alltags/other:two")

    messages = push(daemon, target)

    assert errors(messages) == []
    assert status_texts(messages).count(f"The push refers to repository [{target}]") == 1
    assert sorted((a["Tag"], a["Digest"]) for a in aux(messages)) == [
        ("one", one.manifest_digest),
        ("two", two.manifest_digest),
        ("uno", one.manifest_digest),
    ]
    for tag_, built in [("one", one), ("uno", one), ("two", two)]:
        assert f"{tag_}: digest: {built.manifest_digest} size: {built.manifest_size}" in (
            status_texts(messages)
        )
        assert registry_manifest(other_registry, f"alltags/app:{tag_}")[0] == built.manifest
    with other_registry.client() as client:
        assert client.get("/v2/alltags/other/manifests/two").status_code == 404


# -- tag -------------------------------------------------------------------------


def test_tag_answers_201_and_the_image_lists_the_new_tag(
    registry: Registry, daemon: Daemon, tmp_path: Path
) -> None:
    built = pulled(
        daemon, registry, tmp_path / "layout", "tagging/src:v1", [LayerSpec(size=500, seed=400)]
    )
    source = f"{registry.host}/tagging/src:v1"

    by_name = tag(daemon, source, "example.com/team/app:v2")
    by_id = tag(daemon, built.config_digest, "example.com/team/app:by-id")
    by_short_id = tag(daemon, short(built.config_digest), "example.com/team/app:by-short-id")

    assert (by_name.status_code, by_id.status_code, by_short_id.status_code) == (201, 201, 201)
    [row] = daemon.images()
    assert sorted(row["RepoTags"]) == sorted(
        [
            source,
            "example.com/team/app:v2",
            "example.com/team/app:by-id",
            "example.com/team/app:by-short-id",
        ]
    )
    assert daemon.inspect("example.com/team/app:v2")["Id"] == built.config_digest


def test_tag_of_an_unknown_image_is_404(daemon: Daemon) -> None:
    response = tag(daemon, "nothing/here:v1", "example.com/team/app:v1")

    assert response.status_code == 404
    assert "No such image" in response.json()["message"]
    assert daemon.images() == []


# -- rmi -------------------------------------------------------------------------


def test_rmi_of_one_of_two_tags_only_untags(
    registry: Registry, daemon: Daemon, tmp_path: Path
) -> None:
    built = pulled(
        daemon, registry, tmp_path / "layout", "rmi/keep:v1", [LayerSpec(size=500, seed=410)]
    )
    source = f"{registry.host}/rmi/keep:v1"
    tag(daemon, source, f"{registry.host}/rmi/keep:v2")
    blobs_before = blob_names(daemon)

    response = rmi(daemon, f"{registry.host}/rmi/keep:v2")

    assert response.status_code == 200
    assert response.json() == [{"Untagged": f"{registry.host}/rmi/keep:v2"}]
    [row] = daemon.images()
    assert row["Id"] == built.config_digest
    assert row["RepoTags"] == [source]
    assert blob_names(daemon) == blobs_before


def test_rmi_of_the_last_tag_deletes_the_image_and_frees_its_blobs(
    registry: Registry, daemon: Daemon, tmp_path: Path
) -> None:
    built = pulled(
        daemon,
        registry,
        tmp_path / "layout",
        "rmi/last:v1",
        [LayerSpec(size=5_000, seed=411), LayerSpec(size=500, seed=412, compression="none")],
    )
    ref = f"{registry.host}/rmi/last:v1"
    assert blob_names(daemon) == image_blobs(built)

    response = rmi(daemon, ref)

    assert response.status_code == 200
    records = response.json()
    assert records[0] == {"Untagged": ref}
    assert {"Untagged": f"{registry.host}/rmi/last@{built.manifest_digest}"} in records
    assert {"Deleted": built.config_digest} in records
    assert len([r for r in records if "Deleted" in r]) == 1 + len(built.layers)
    assert daemon.images() == []
    assert daemon.blob_files() == []
    with daemon.http() as client:
        assert client.get(f"/images/{ref}/json").status_code == 404


def test_rmi_by_id_of_an_image_in_two_repositories_needs_force(
    registry: Registry, daemon: Daemon, tmp_path: Path
) -> None:
    built = pulled(
        daemon, registry, tmp_path / "layout", "rmi/twice:v1", [LayerSpec(size=500, seed=413)]
    )
    tag(daemon, f"{registry.host}/rmi/twice:v1", "example.com/elsewhere:v1")

    refused = rmi(daemon, built.config_digest)
    forced = rmi(daemon, built.config_digest, force=True)

    assert refused.status_code == 409
    assert "must be forced" in refused.json()["message"]
    assert forced.status_code == 200
    records = forced.json()
    assert {"Untagged": f"{registry.host}/rmi/twice:v1"} in records
    assert {"Untagged": "example.com/elsewhere:v1"} in records
    assert {"Deleted": built.config_digest} in records
    assert daemon.images() == []
    assert daemon.blob_files() == []


@pytest.mark.parametrize(("value", "forced"), [("yes", True), ("True", True), ("no", False)])
def test_rmi_reads_force_as_dockerd_reads_its_booleans(
    registry: Registry, daemon: Daemon, tmp_path: Path, value: str, forced: bool
) -> None:
    # dockerd's BoolValue: anything but empty, 0, no, false or none is true.
    built = pulled(
        daemon, registry, tmp_path / "layout", "rmi/flag:v1", [LayerSpec(size=500, seed=414)]
    )
    tag(daemon, f"{registry.host}/rmi/flag:v1", "example.com/flag:v1")

    answer = rmi(daemon, built.config_digest, force=value)

    assert answer.status_code == (200 if forced else 409)
    assert (daemon.images() == []) is forced


def test_rmi_of_an_unknown_image_is_404(daemon: Daemon) -> None:
    by_name = rmi(daemon, "nothing/here:v1")
    by_id = rmi(daemon, "sha256:" + "0" * 64)

    assert by_name.status_code == 404
    assert "No such image" in by_name.json()["message"]
    assert by_id.status_code == 404


def test_rmi_keeps_the_layers_another_image_shares_and_that_image_still_pushes(
    registry: Registry, other_registry: Registry, daemon: Daemon, tmp_path: Path
) -> None:
    base = [LayerSpec(size=20_000, seed=420), LayerSpec(size=2_000, seed=421)]
    first = pulled(
        daemon, registry, tmp_path / "a", "rmi/first:v1", [*base, LayerSpec(size=100, seed=422)]
    )
    second = pulled(
        daemon, registry, tmp_path / "b", "rmi/second:v1", [*base, LayerSpec(size=100, seed=423)]
    )

    response = rmi(daemon, f"{registry.host}/rmi/first:v1")

    assert response.status_code == 200
    assert {"Deleted": first.config_digest} in response.json()
    assert blob_names(daemon) == image_blobs(second)
    assert [row["Id"] for row in daemon.images()] == [second.config_digest]
    target = f"{other_registry.host}/rmi/second"
    tag(daemon, f"{registry.host}/rmi/second:v1", f"{target}:v1")
    messages = push(daemon, target, "v1")
    assert errors(messages) == []
    assert skopeo_inspect_raw(other_registry, "rmi/second:v1") == second.manifest


# -- the log ---------------------------------------------------------------------


def test_every_push_is_one_structured_log_event(
    registry: Registry, other_registry: Registry, daemon: Daemon, tmp_path: Path
) -> None:
    built = pulled(
        daemon,
        registry,
        tmp_path / "layout",
        "logged/src:v1",
        [LayerSpec(size=3_000, seed=430), LayerSpec(size=3_000, seed=431)],
    )
    first, second = f"{other_registry.host}/logged/one:v1", f"{other_registry.host}/logged/two:v1"
    tag(daemon, f"{registry.host}/logged/src:v1", first)
    tag(daemon, f"{registry.host}/logged/src:v1", second)

    assert errors(push(daemon, f"{other_registry.host}/logged/one", "v1")) == []
    assert errors(push(daemon, f"{other_registry.host}/logged/one", "v1")) == []
    assert errors(push(daemon, f"{other_registry.host}/logged/two", "v1")) == []

    events = daemon.log_events("image.push")
    assert [e["reference"] for e in events] == [first, first, second]
    counts = [
        (e["layers_uploaded"], e["layers_mounted"], e["layers_skipped"], e["bytes"]) for e in events
    ]
    layer_bytes = sum(layer.size for layer in built.layers)
    assert counts == [(2, 0, 0, layer_bytes), (0, 0, 2, 0), (0, 2, 0, 0)]
    for event in events:
        assert event["action"] == "push"
        assert event["digest"] == built.manifest_digest
        assert event["image_id"] == built.config_digest
        assert 0 <= event["seconds"] < 60
