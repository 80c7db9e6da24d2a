"""Save and load through the real daemon: archives it writes are loaded by itself, skopeo
and docker's formats; archives docker (24 and 25+) and skopeo write load into it; a load
followed by a push gives the registry the manifests it had."""

from __future__ import annotations

import bz2
import gzip
import io
import json
import lzma
import tarfile
from collections.abc import Callable, Iterator
from pathlib import Path

import httpx
import pytest
from backports.zstd import ZstdCompressor

from ferryd.daemon.api.access import permission_for
from support.archives import (
    chunked,
    docker24_archive,
    docker25_archive,
    load,
    members,
    pulled,
    save,
    store_state,
)
from support.daemon import Daemon, errors
from support.digests import sha256, short
from support.images import (
    BuiltImage,
    LayerSpec,
    PlatformSpec,
    build_image,
    build_index,
    seed,
    skopeo_inspect_raw,
)
from support.registry import (
    Registry,
    have_registry_tools,
    run_skopeo,
    skopeo_workdir,
    start_registry,
)
from support.waiting import wait_until


@pytest.fixture(scope="module")
def target(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Registry]:
    """A second registry, for pushes after a load: every blob has to travel."""
    if not have_registry_tools():
        pytest.skip("Debian's docker-registry and skopeo are not installed")
    with start_registry(tmp_path_factory.mktemp("saveload-target")) as reg:
        yield reg


def push(daemon: Daemon, source: str, target: str) -> None:
    repository, _, tag = target.rpartition(":")
    client = daemon.client()
    client.request("POST", f"/images/{source}/tag", {"repo": repository, "tag": tag}).read()
    messages = list(client.stream("POST", f"/images/{repository}/push", {"tag": tag}))
    assert errors(messages) == []


def test_pull_save_load_push_gives_the_registry_the_same_manifest_digests(
    registry: Registry, target: Registry, start_daemon: Callable[..., Daemon], tmp_path: Path
) -> None:
    first = start_daemon()
    oci = pulled(
        first,
        registry,
        tmp_path / "oci",
        "saveload/oci:v1",
        layers=[
            LayerSpec(size=300_000, seed=7101),
            LayerSpec(size=9_000, seed=7102, compression="zstd"),
        ],
    )
    docker = pulled(
        first,
        registry,
        tmp_path / "docker",
        "saveload/docker:v1",
        layers=[LayerSpec(size=200_000, seed=7103), LayerSpec(size=7_000, seed=7104)],
        media="docker",
    )
    names = [f"{registry.host}/saveload/oci:v1", f"{registry.host}/saveload/docker:v1"]
    archive = save(first, *names)

    second = start_daemon()
    answer = load(second, chunked(archive))

    assert answer.status == 200, answer.messages
    assert sorted(answer.lines) == sorted(f"Loaded image: {name}" for name in names)
    listed = {image["Id"]: image["RepoTags"] for image in second.images()}
    assert listed == {oci.config_digest: [names[0]], docker.config_digest: [names[1]]}
    for name, built, dest in ((names[0], oci, "copy/oci:v1"), (names[1], docker, "copy/docker:v1")):
        push(second, name, f"{target.host}/{dest}")
        raw = skopeo_inspect_raw(target, dest)
        assert sha256(raw) == built.manifest_digest
        assert raw == built.manifest


def test_the_archive_holds_the_registry_blobs_once_and_points_both_formats_at_them(
    registry: Registry, daemon: Daemon, layout: Path
) -> None:
    built = pulled(
        daemon,
        registry,
        layout,
        "saveload/shape:v1",
        layers=[LayerSpec(size=50_000, seed=7111), LayerSpec(size=50_000, seed=7111)],
    )
    name = f"{registry.host}/saveload/shape:v1"

    archive = save(daemon, name)

    files = members(archive)
    blob_names = {
        f"blobs/sha256/{d.removeprefix('sha256:')}"
        for d in (built.manifest_digest, built.config_digest, built.layers[0].digest)
    }
    assert set(files) == {"oci-layout", "index.json", "manifest.json", "repositories", *blob_names}
    for blob in blob_names:
        assert sha256(files[blob]) == "sha256:" + blob.rpartition("/")[2]
    [item] = json.loads(files["manifest.json"])
    layer_file = f"blobs/sha256/{built.layers[0].digest.removeprefix('sha256:')}"
    assert item == {
        "Config": f"blobs/sha256/{built.config_digest.removeprefix('sha256:')}",
        "RepoTags": [name],
        "Layers": [layer_file, layer_file],
    }
    [entry] = json.loads(files["index.json"])["manifests"]
    assert entry["digest"] == built.manifest_digest
    assert entry["annotations"] == {
        "io.containerd.image.name": name,
        "org.opencontainers.image.ref.name": "v1",
    }
    assert entry["platform"] == {"architecture": "amd64", "os": "linux"}
    repository, _, tag = name.rpartition(":")
    assert json.loads(files["repositories"]) == {repository: {tag: layer_file.rpartition("/")[2]}}


def test_skopeo_reads_the_archive_as_docker_archive_and_as_oci_archive(
    registry: Registry, target: Registry, daemon: Daemon, tmp_path: Path
) -> None:
    built = pulled(
        daemon,
        registry,
        tmp_path / "layout",
        "saveload/skopeo:v1",
        layers=[LayerSpec(size=120_000, seed=7121), LayerSpec(size=3_000, seed=7122)],
        media="docker",
    )
    archive = tmp_path / "image.tar"
    archive.write_bytes(save(daemon, f"{registry.host}/saveload/skopeo:v1"))
    workdir = skopeo_workdir(target)
    flags = target.skopeo_flags("dest-")

    run_skopeo(
        [
            "copy",
            "--quiet",
            *flags,
            f"docker-archive:{archive}",
            f"docker://{target.host}/from/docker-archive:v1",
        ],
        workdir=workdir,
    )
    run_skopeo(
        [
            "copy",
            "--quiet",
            *flags,
            f"oci-archive:{archive}",
            f"docker://{target.host}/from/oci-archive:v1",
        ],
        workdir=workdir,
    )

    # docker-archive: holds no manifest; skopeo makes one around the same config.
    from_docker = json.loads(skopeo_inspect_raw(target, "from/docker-archive:v1"))
    assert from_docker["config"]["digest"] == built.config_digest
    # oci-archive: the registry's own manifest, unchanged.
    assert sha256(skopeo_inspect_raw(target, "from/oci-archive:v1")) == built.manifest_digest


def test_an_archive_skopeo_writes_as_docker_archive_loads(
    registry: Registry, daemon: Daemon, tmp_path: Path
) -> None:
    built = build_image(
        tmp_path / "layout",
        layers=[
            LayerSpec(size=80_000, seed=7131),
            LayerSpec(size=80_000, seed=7131),
            LayerSpec(size=2_000, seed=7132),
        ],
        media="docker",
    )
    seed(registry, tmp_path / "layout", "latest", "saveload/skopeo-made:v1")
    archive = tmp_path / "skopeo.tar"
    run_skopeo(
        [
            "copy",
            "--quiet",
            *registry.skopeo_flags("src-"),
            f"docker://{registry.host}/saveload/skopeo-made:v1",
            f"docker-archive:{archive}:team/app:v3",
        ],
        workdir=skopeo_workdir(registry),
    )
    with tarfile.open(archive) as tar:
        assert any(m.issym() for m in tar.getmembers())  # its legacy layer links

    answer = load(daemon, archive.read_bytes())

    assert answer.lines == ["Loaded image: team/app:v3"]
    inspected = daemon.inspect("team/app:v3")
    assert inspected["Id"] == built.config_digest
    assert inspected["RootFS"]["Layers"] == built.diff_ids


def test_an_archive_skopeo_writes_as_oci_archive_loads_with_its_name(
    registry: Registry, daemon: Daemon, tmp_path: Path
) -> None:
    built = build_image(tmp_path / "layout", layers=[LayerSpec(size=60_000, seed=7141)])
    seed(registry, tmp_path / "layout", "latest", "saveload/oci-made:v1")
    archive = tmp_path / "oci.tar"
    run_skopeo(
        [
            "copy",
            "--quiet",
            *registry.skopeo_flags("src-"),
            f"docker://{registry.host}/saveload/oci-made:v1",
            f"oci-archive:{archive}:example.com/team/oci:v7",
        ],
        workdir=skopeo_workdir(registry),
    )

    answer = load(daemon, archive.read_bytes())

    assert answer.lines == ["Loaded image: example.com/team/oci:v7"]
    assert daemon.inspect("example.com/team/oci:v7")["Id"] == built.config_digest


def test_a_docker_25_archive_loads_its_uncompressed_layers_and_tags(
    daemon: Daemon, layout: Path
) -> None:
    built = build_image(
        layout,
        layers=[
            LayerSpec(size=40_000, seed=7151),
            LayerSpec(size=500, seed=7152, compression="zstd"),
        ],
    )
    writer, manifest_digest = docker25_archive(layout, built, "team/modern:v25")

    answer = load(daemon, writer.bytes(), quiet=False)

    assert answer.lines == ["Loaded image: team/modern:v25"]
    loading = [m for m in answer.messages if m.get("status") == "Loading layer"]
    assert {m["id"] for m in loading} >= {short(d) for d in built.diff_ids}
    inspected = daemon.inspect("team/modern:v25")
    assert inspected["Id"] == built.config_digest
    assert inspected["RootFS"]["Layers"] == built.diff_ids
    assert store_state(daemon).rows["manifests"] == 1  # docker's manifest, kept
    assert (daemon.root / "blobs" / "sha256" / manifest_digest.removeprefix("sha256:")).exists()


def test_a_docker_24_archive_with_layer_tar_directories_and_a_linked_layer_loads(
    daemon: Daemon, layout: Path
) -> None:
    built = build_image(
        layout,
        layers=[
            LayerSpec(size=30_000, seed=7161),
            LayerSpec(size=30_000, seed=7161),
            LayerSpec(size=900, seed=7162),
        ],
        media="docker",
    )
    archive = docker24_archive(layout, built, ["team/old:v24", "team/old:latest"]).bytes()
    with tarfile.open(fileobj=io.BytesIO(archive)) as tar:
        layer_files = [m.name for m in tar.getmembers() if m.isfile() and "layer.tar" in m.name]

    answer = load(daemon, archive, quiet=False)

    assert sorted(answer.lines) == ["Loaded image: team/old:latest", "Loaded image: team/old:v24"]
    # Progress for the layer files only (not VERSION, json), by their directory, as docker.
    loading = {m["id"] for m in answer.messages if m.get("status") == "Loading layer"}
    assert loading == {name[:12] for name in layer_files}
    inspected = daemon.inspect("team/old:v24")
    assert inspected["Id"] == built.config_digest
    assert inspected["RootFS"]["Layers"] == built.diff_ids
    # The layers are stored as the archive had them: plain tars, one blob for two layers.
    layer_blobs = {p.name for p in (daemon.root / "blobs" / "sha256").iterdir()} - {
        built.config_digest.removeprefix("sha256:")
    }
    assert layer_blobs == {d.removeprefix("sha256:") for d in built.diff_ids}


@pytest.mark.parametrize("compression", ["gzip", "zstd", "xz", "bzip2"])
def test_a_compressed_archive_loads(
    registry: Registry, start_daemon: Callable[..., Daemon], layout: Path, compression: str
) -> None:
    first = start_daemon()
    pulled(
        first,
        registry,
        layout,
        f"saveload/compressed-{compression}:v1",
        layers=[LayerSpec(size=100_000, seed=7171)],
    )
    archive = save(first, f"{registry.host}/saveload/compressed-{compression}:v1")
    packed = {
        "gzip": gzip.compress,
        "zstd": lambda data: ZstdCompressor().compress(data, ZstdCompressor.FLUSH_FRAME),
        "xz": lzma.compress,
        "bzip2": bz2.compress,
    }[compression](archive)

    answer = load(start_daemon(), chunked(packed, 7_000))

    assert answer.lines == [f"Loaded image: {registry.host}/saveload/compressed-{compression}:v1"]
    assert answer.status == 200


def test_loading_an_image_that_shares_layers_with_a_stored_one_reuses_them(
    daemon: Daemon, tmp_path: Path
) -> None:
    base = [LayerSpec(size=70_000, seed=7181), LayerSpec(size=20_000, seed=7182)]
    first = build_image(tmp_path / "a", layers=base)
    second = build_image(tmp_path / "b", layers=[*base, LayerSpec(size=5_000, seed=7183)])
    load(daemon, docker25_archive(tmp_path / "a", first, "team/base:v1")[0].bytes())
    before = store_state(daemon)

    answer = load(daemon, docker25_archive(tmp_path / "b", second, "team/child:v1")[0].bytes())

    assert answer.lines == ["Loaded image: team/child:v1"]
    after = store_state(daemon)
    assert after.rows["layers"] == before.rows["layers"] + 1
    new_blobs = after.blobs - before.blobs
    assert new_blobs == {
        f"blobs/sha256/{d.removeprefix('sha256:')}"
        for d in (second.diff_ids[-1], second.config_digest, _manifest_of(daemon, second))
    }
    [event] = [e for e in daemon.log_events("image.load") if e["image_id"] == second.config_digest]
    assert (event["layers_loaded"], event["layers_reused"]) == (1, 2)


def _manifest_of(daemon: Daemon, image: BuiltImage) -> str:
    with daemon.http() as client:
        archive = client.get(f"/images/{image.config_digest}/get").content
    [entry] = json.loads(members(archive)["index.json"])["manifests"]
    return str(entry["digest"])


def test_saving_by_id_gives_an_untagged_archive_that_loads_by_id(
    registry: Registry, start_daemon: Callable[..., Daemon], layout: Path
) -> None:
    first = start_daemon()
    built = pulled(
        first, registry, layout, "saveload/byid:v1", layers=[LayerSpec(size=10_000, seed=7191)]
    )

    with first.http() as client:
        archive = client.get(
            f"/images/{built.config_digest.removeprefix('sha256:')[:12]}/get"
        ).content
    answer = load(start_daemon(), archive)

    [item] = json.loads(members(archive)["manifest.json"])
    assert item["RepoTags"] is None
    assert answer.lines == [f"Loaded image ID: {built.config_digest}"]


def test_a_repository_name_saves_every_tag_of_it(
    registry: Registry, daemon: Daemon, layout: Path
) -> None:
    pulled(daemon, registry, layout, "saveload/tags:v1", layers=[LayerSpec(size=1_000, seed=7201)])
    source = f"{registry.host}/saveload/tags:v1"
    for tag in ("v2", "v3"):
        daemon.client().request(
            "POST", f"/images/{source}/tag", {"repo": f"{registry.host}/saveload/tags", "tag": tag}
        ).read()

    archive = save(daemon, f"{registry.host}/saveload/tags")

    [item] = json.loads(members(archive)["manifest.json"])
    assert sorted(item["RepoTags"]) == [
        f"{registry.host}/saveload/tags:{t}" for t in ("v1", "v2", "v3")
    ]
    assert len(json.loads(members(archive)["index.json"])["manifests"]) == 3


def test_unknown_names_and_other_platforms_are_refused_before_any_byte(
    registry: Registry, daemon: Daemon, layout: Path
) -> None:
    pulled(
        daemon, registry, layout, "saveload/refused:v1", layers=[LayerSpec(size=1_000, seed=7211)]
    )
    name = f"{registry.host}/saveload/refused:v1"

    with daemon.http() as client:
        unknown = client.get("/images/get", params=[("names", name), ("names", "no/such:image")])
        by_path = client.get("/images/no/such:image/get")
        arm = client.get(f"/images/{name}/get", params={"platform": "linux/arm64"})
        arm_json = client.get(
            f"/images/{name}/get",
            params={"platform": json.dumps({"os": "linux", "architecture": "arm64"})},
        )
        amd = client.get(f"/images/{name}/get", params={"platform": "linux/amd64"})

    for answer in (unknown, by_path):
        assert answer.status_code == 404
        assert answer.json() == {"message": "No such image: no/such:image"}
    for answer in (arm, arm_json):
        assert answer.status_code == 404
        assert "wanted linux/arm64, actual: linux/amd64" in answer.json()["message"]
    assert amd.status_code == 200
    assert amd.headers["content-type"] == "application/x-tar"
    # Nothing is held after a refusal: the image can go.
    assert daemon.client().request("DELETE", f"/images/{name}").status == 200


def test_load_with_a_platform_takes_only_that_platforms_image_of_an_index(
    registry: Registry, daemon: Daemon, tmp_path: Path
) -> None:
    index = build_index(
        tmp_path / "layout",
        [
            PlatformSpec([LayerSpec(size=4_000, seed=7221)], architecture="amd64"),
            PlatformSpec([LayerSpec(size=4_000, seed=7222)], architecture="arm64"),
        ],
    )
    archive = tmp_path / "all.tar"
    seed(registry, tmp_path / "layout", "latest", "saveload/multi:v1")
    run_skopeo(
        [
            "copy",
            "--quiet",
            "--all",
            *registry.skopeo_flags("src-"),
            f"docker://{registry.host}/saveload/multi:v1",
            f"oci-archive:{archive}:team/multi:v1",
        ],
        workdir=skopeo_workdir(registry),
    )

    arm = load(daemon, archive.read_bytes(), platform="linux/arm64")
    s390x = load(daemon, archive.read_bytes(), platform="linux/s390x")

    assert arm.lines == ["Loaded image: team/multi:v1"]
    assert daemon.inspect("team/multi:v1")["Id"] == index.image("arm64").config_digest
    assert s390x.status == 404
    assert "no image for platform linux/s390x" in (s390x.error or "")


def test_a_tag_that_named_another_image_moves_and_says_so(daemon: Daemon, tmp_path: Path) -> None:
    old = build_image(tmp_path / "old", layers=[LayerSpec(size=1_000, seed=7231)])
    new = build_image(tmp_path / "new", layers=[LayerSpec(size=1_000, seed=7232)])
    load(daemon, docker25_archive(tmp_path / "old", old, "team/moved:v1")[0].bytes())

    answer = load(daemon, docker25_archive(tmp_path / "new", new, "team/moved:v1")[0].bytes())

    assert answer.lines == [
        f"The image team/moved:v1 already exists, renaming the old one with ID "
        f"{old.config_digest} to empty string",
        "Loaded image: team/moved:v1",
    ]
    assert {i["Id"]: i["RepoTags"] for i in daemon.images()} == {
        old.config_digest: [],
        new.config_digest: ["team/moved:v1"],
    }


def test_a_load_logs_one_event_per_image_and_a_save_too(
    registry: Registry, start_daemon: Callable[..., Daemon], layout: Path
) -> None:
    first = start_daemon()
    built = pulled(
        first, registry, layout, "saveload/events:v1", layers=[LayerSpec(size=1_000, seed=7241)]
    )
    archive = save(first, f"{registry.host}/saveload/events:v1")
    second = start_daemon()
    load(second, archive)

    [saved] = first.log_events("image.save")
    [loaded] = second.log_events("image.load")
    assert saved["image_id"] == loaded["image_id"] == built.config_digest
    assert loaded["names"] == [f"{registry.host}/saveload/events:v1"]
    assert loaded["manifest"] == built.manifest_digest


def test_a_stored_blob_gone_bad_cuts_the_archive_short_instead_of_sending_it(
    registry: Registry, daemon: Daemon, layout: Path
) -> None:
    built = pulled(
        daemon,
        registry,
        layout,
        "saveload/rotten:v1",
        layers=[LayerSpec(size=3_000_000, seed=7251)],
    )
    name = f"{registry.host}/saveload/rotten:v1"
    blob = daemon.root / "blobs" / "sha256" / built.layers[0].digest.removeprefix("sha256:")
    data = bytearray(blob.read_bytes())
    data[len(data) // 2] ^= 0xFF
    blob.write_bytes(bytes(data))

    with daemon.http() as client, pytest.raises(httpx.RemoteProtocolError):
        client.get(f"/images/{name}/get")

    [failed] = wait_until(lambda: daemon.log_events("image.save_failed"))
    assert (
        f"blob {built.layers[0].digest} in the store no longer matches its digest"
        in failed["error"]
    )
    assert "ferryd fsck" in failed["error"]
    # Nothing is held after it: the image can go.
    assert (
        daemon.client().request("DELETE", f"/images/{registry.host}/saveload/rotten:v1").status
        == 200
    )


def test_save_needs_push_and_load_delete() -> None:
    assert permission_for("GET", "/images/get") == "push"
    assert permission_for("GET", "/images/127.0.0.1:5000/team/app:v1/get") == "push"
    assert permission_for("GET", "/images/sha256:abc/get") == "push"
    assert permission_for("POST", "/images/load") == "delete"


def test_a_client_that_leaves_mid_save_lets_go_of_the_image(
    registry: Registry, daemon: Daemon, layout: Path
) -> None:
    built = pulled(
        daemon,
        registry,
        layout,
        "saveload/left:v1",
        layers=[LayerSpec(size=20_000_000, seed=7261)],
    )
    name = f"{registry.host}/saveload/left:v1"

    with daemon.http() as client, client.stream("GET", f"/images/{name}/get") as response:
        assert response.status_code == 200
        next(response.iter_raw(65536))

    [failed] = wait_until(lambda: daemon.log_events("image.save_failed"))
    assert failed["error"] == "cancelled"
    assert failed["images"] == [built.config_digest]
    assert daemon.client().request("DELETE", f"/images/{name}").status == 200
    assert daemon.blob_files() == []
