"""Self-check of the test helpers in tests/support: real registry, real skopeo."""

from __future__ import annotations

import gzip
import io
import json
import socket
import tarfile
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import httpx
import pytest
import trustme
from backports import zstd

from support import registry as registry_module
from support.digests import sha256
from support.images import (
    DOCKER_CONFIG,
    DOCKER_LIST,
    DOCKER_MANIFEST,
    OCI_INDEX,
    OCI_MANIFEST,
    BuiltImage,
    LayerSpec,
    PlatformSpec,
    blob_path,
    build_image,
    build_index,
    build_layer,
    layout_descriptor,
    registry_manifest,
    seed,
    skopeo_copy_to_oci,
    skopeo_inspect_raw,
)
from support.registry import Registry, have_registry_tools, start_registry

pytestmark = [
    pytest.mark.registry,
    pytest.mark.skipif(not have_registry_tools(), reason="docker-registry/skopeo missing"),
]


def untar(data: bytes) -> dict[str, bytes | None]:
    """Member name -> content (None for directories)."""
    out: dict[str, bytes | None] = {}
    with tarfile.open(fileobj=io.BytesIO(data)) as tar:
        for member in tar:
            fh = tar.extractfile(member)
            out[member.name] = None if fh is None else fh.read()
    return out


@pytest.fixture(scope="module")
def registry(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Registry]:
    with start_registry(tmp_path_factory.mktemp("plain-registry")) as reg:
        yield reg


# -- layers ----------------------------------------------------------------------


@pytest.mark.parametrize("compression", ["gzip", "zstd", "none"])
def test_layer_is_a_real_tar_with_matching_digests(tmp_path: Path, compression: Any) -> None:
    files = {"etc/os-release": b"ID=test\n", "usr/bin/tool": b"\x7fELF" + bytes(100)}
    layer = build_layer(tmp_path, LayerSpec(files=files, compression=compression))
    blob = blob_path(tmp_path, layer.digest).read_bytes()
    assert sha256(blob) == layer.digest
    assert len(blob) == layer.size
    decompress: dict[str, Callable[[bytes], bytes]] = {
        "gzip": gzip.decompress,
        "zstd": zstd.decompress,
        "none": bytes,
    }
    tar = decompress[compression](blob)
    assert sha256(tar) == layer.diff_id
    assert len(tar) == layer.uncompressed_size
    assert untar(tar) == {"etc": None, "usr": None, "usr/bin": None, **files}
    again = build_layer(tmp_path / "again", LayerSpec(files=files, compression=compression))
    assert again == layer  # deterministic


def test_generated_layer_content(tmp_path: Path) -> None:
    random = build_layer(tmp_path, LayerSpec(size=300_000, seed=7))
    text = build_layer(tmp_path, LayerSpec(size=300_000, seed=7, compressible=True))
    assert random == build_layer(tmp_path / "b", LayerSpec(size=300_000, seed=7))
    assert random.digest != build_layer(tmp_path, LayerSpec(size=300_000, seed=8)).digest
    assert random.size > 300_000 > 300_000 * 0.6 > text.size
    content = untar(gzip.decompress(blob_path(tmp_path, text.digest).read_bytes()))
    assert [len(v or b"") for v in content.values()] == [300_000]


def test_docker_has_no_zstd(tmp_path: Path) -> None:
    with pytest.raises(ValueError, match="zstd"):
        build_image(tmp_path, layers=[LayerSpec(compression="zstd")], media="docker")


def test_wrong_diff_id(tmp_path: Path) -> None:
    image = build_image(tmp_path, layers=[LayerSpec(size=10, seed=i) for i in range(2)])
    liar = build_image(
        tmp_path, layers=[LayerSpec(size=10, seed=i) for i in range(2)], wrong_diff_id=True
    )
    assert image.layers == liar.layers
    assert image.diff_ids == [layer.diff_id for layer in image.layers]
    assert all(a != b for a, b in zip(image.diff_ids, liar.diff_ids, strict=True))
    assert json.loads(liar.config)["rootfs"]["diff_ids"] == liar.diff_ids


# -- seeding a plain registry ------------------------------------------------------

IMAGES: dict[str, dict[str, Any]] = {
    "oci-gzip": {"layers": [LayerSpec(files={"hello": b"hi\n"}), LayerSpec(size=50_000)]},
    "oci-zstd": {"layers": [LayerSpec(size=50_000, seed=1, compression="zstd")]},
    "oci-none": {"layers": [LayerSpec(size=50_000, seed=2, compression="none")]},
    "oci-mixed": {
        "layers": [
            LayerSpec(size=9, seed=1, compression="gzip"),
            LayerSpec(size=9, seed=2, compression="zstd"),
            LayerSpec(size=9, seed=3, compression="none"),
        ]
    },
    "oci-empty": {"layers": []},
    "oci-liar": {"layers": [LayerSpec(size=500, seed=3)], "wrong_diff_id": True},
    "docker-gzip": {"layers": [LayerSpec(size=50_000, seed=4)], "media": "docker"},
    "docker-none": {
        "layers": [LayerSpec(size=50_000, seed=5, compression="none")],
        "media": "docker",
    },
    "oci-extra": {
        "layers": [LayerSpec(size=10)],
        "architecture": "arm64",
        "variant": "v8",
        "config_extra": {"config": {"Env": ["A=1"], "Entrypoint": ["/a"]}},
    },
}


def check_read_back(registry: Registry, ref: str, image: BuiltImage, out: Path) -> None:
    """skopeo copies the image back into an OCI layout with the same config and layers."""
    oci = image.manifest_media_type == OCI_MANIFEST
    skopeo_copy_to_oci(registry, ref, out, tag="back", preserve_digests=oci)
    desc = layout_descriptor(out, "back")
    assert desc["mediaType"] == OCI_MANIFEST
    manifest = json.loads(blob_path(out, desc["digest"]).read_bytes())
    if oci:
        assert desc["digest"] == image.manifest_digest
    assert manifest["config"]["digest"] == image.config_digest
    assert [layer["digest"] for layer in manifest["layers"]] == [x.digest for x in image.layers]
    for layer in image.layers:
        assert sha256(blob_path(out, layer.digest).read_bytes()) == layer.digest


@pytest.mark.parametrize("name", list(IMAGES))
def test_seed_image(registry: Registry, tmp_path: Path, name: str) -> None:
    layout = tmp_path / "layout"
    build_image(layout, tag="other", layers=[LayerSpec(size=1)])  # layouts hold many tags
    image = build_image(layout, tag=name, **IMAGES[name])
    ref = f"selfcheck/{name}:v1"
    assert seed(registry, layout, name, ref) == image.manifest_digest

    assert skopeo_inspect_raw(registry, ref) == image.manifest
    raw, content_type = registry_manifest(registry, ref)
    assert raw == image.manifest
    assert content_type == image.manifest_media_type
    if name.startswith("docker"):
        assert content_type == DOCKER_MANIFEST
        assert image.config_media_type == DOCKER_CONFIG
        suffix = ".tar.gzip" if name.endswith("gzip") else ".tar"
        assert image.layers[0].media_type == f"application/vnd.docker.image.rootfs.diff{suffix}"
    with registry.client() as client:
        for layer in image.layers:
            blob = client.get(f"/v2/selfcheck/{name}/blobs/{layer.digest}").content
            assert sha256(blob) == layer.digest
    check_read_back(registry, ref, image, tmp_path / "back")


@pytest.mark.parametrize("media", ["oci", "docker"])
def test_seed_index(registry: Registry, tmp_path: Path, media: Any) -> None:
    platforms = [
        PlatformSpec([LayerSpec(size=100, seed=1)]),
        PlatformSpec([LayerSpec(size=100, seed=2)], architecture="arm64", variant="v8"),
        PlatformSpec([LayerSpec(size=100, seed=3)], architecture="arm", variant="v7"),
    ]
    index = build_index(tmp_path / "layout", platforms, media=media, tag="multi")
    ref = f"selfcheck/index-{media}:multi"
    assert seed(registry, tmp_path / "layout", "multi", ref) == index.digest
    raw, content_type = registry_manifest(registry, ref)
    assert raw == index.index == skopeo_inspect_raw(registry, ref)
    assert content_type == {"oci": OCI_INDEX, "docker": DOCKER_LIST}[media]
    assert index.image("arm", "v7").platform == {
        "architecture": "arm",
        "os": "linux",
        "variant": "v7",
    }
    for image in index.images:
        child_ref = f"selfcheck/index-{media}@{image.manifest_digest}"
        assert registry_manifest(registry, child_ref)[0] == image.manifest

    skopeo_copy_to_oci(registry, ref, tmp_path / "back", tag="x", preserve_digests=media == "oci")
    back = layout_descriptor(tmp_path / "back", "x")
    assert back["mediaType"] == OCI_INDEX
    if media == "oci":
        assert back["digest"] == index.digest
    for image in index.images:
        for layer in image.layers:
            assert blob_path(tmp_path / "back", layer.digest).exists()


# -- registry behaviour -------------------------------------------------------------


def test_blob_get_counting(registry: Registry, tmp_path: Path) -> None:
    image = build_image(tmp_path / "layout", layers=[LayerSpec(size=1000, seed=99)])
    seed(registry, tmp_path / "layout", "latest", "selfcheck/counting")
    digest = image.layers[0].digest
    assert registry.blob_gets(digest) == 0  # pushing HEADs it, never GETs it
    heads = registry.requests("HEAD", f"/blobs/{digest}")
    assert heads >= 1
    with registry.client() as client:
        assert client.head(f"/v2/selfcheck/counting/blobs/{digest}").status_code == 200
        assert client.get(f"/v2/selfcheck/counting/blobs/{digest}").status_code == 200
        assert client.get(f"/v2/selfcheck/counting/blobs/{digest}?x=1").status_code == 200
        client.get(f"/v2/other/repo/blobs/{digest}")  # 404, but still a GET
    assert registry.blob_gets(digest) == 3
    assert registry.requests("HEAD", f"/blobs/{digest}") == heads + 1
    skopeo_copy_to_oci(registry, "selfcheck/counting", tmp_path / "back")
    assert registry.blob_gets(digest) == 4
    assert registry.blob_gets(image.config_digest) == 1


def test_restart_keeps_data_and_port(tmp_path: Path) -> None:
    image = build_image(tmp_path / "layout", layers=[LayerSpec(size=100)])
    with start_registry(tmp_path / "reg") as reg:
        seed(reg, tmp_path / "layout", "latest", "keep/me:1")
        host, pid = reg.host, reg.pid
        reg.restart()
        assert (reg.host, reg.running) == (host, True)
        assert reg.pid != pid
        assert registry_manifest(reg, "keep/me:1")[0] == image.manifest
        assert reg.requests("PUT", "/manifests/1") == 1  # the log survives restarts
    assert not reg.running


def test_tls_and_auth(tmp_path: Path) -> None:
    ca = trustme.CA()
    image = build_image(tmp_path / "layout", layers=[LayerSpec(size=100)])
    with start_registry(tmp_path / "reg", tls=ca, htpasswd=("alice", "s3cret")) as reg:
        assert reg.url.startswith("https://127.0.0.1:")
        assert reg.ca_cert_pem == ca.cert_pem.bytes()
        assert seed(reg, tmp_path / "layout", "latest", "private/img:1") == image.manifest_digest
        assert skopeo_inspect_raw(reg, "private/img:1") == image.manifest
        with reg.client() as client:
            assert client.get("/v2/").status_code == 200
        with reg.client(auth=False) as client:
            response = client.get("/v2/private/img/manifests/1")
            assert response.status_code == 401
            assert response.headers["www-authenticate"].startswith("Basic ")
            wrong = client.get("/v2/", auth=("alice", "wrong"))
            assert wrong.status_code == 401
        with (
            httpx.Client(verify=True, trust_env=False) as untrusting,
            pytest.raises(httpx.ConnectError),
        ):
            untrusting.get(f"{reg.url}/v2/")

        reg.password = "wrong"
        with pytest.raises(RuntimeError, match=r"unauthorized|401"):
            skopeo_inspect_raw(reg, "private/img:1")


def test_start_failure_reports_log(tmp_path: Path) -> None:
    (tmp_path / "config.yml").write_text("version: 0.1\nstorage: {nonsense: {}}\n")
    reg = Registry(
        host="127.0.0.1:1",
        url="http://127.0.0.1:1",
        storage=tmp_path,
        config_path=tmp_path / "config.yml",
        log_path=tmp_path / "log",
    )
    with pytest.raises(RuntimeError, match="exited with"):
        reg.start()
    assert not reg.running


def test_start_retries_a_taken_port(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    with socket.socket() as taken:
        taken.bind(("127.0.0.1", 0))
        taken.listen()
        ports = iter([taken.getsockname()[1], registry_module.free_port()])
        monkeypatch.setattr(registry_module, "free_port", lambda: next(ports))
        with start_registry(tmp_path) as reg:
            assert reg.host != f"127.0.0.1:{taken.getsockname()[1]}"
            assert "address already in use" in reg.log_path.read_text()
