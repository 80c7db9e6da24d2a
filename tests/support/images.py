"""Build OCI image layouts on disk and seed them into a test registry (over its HTTP
API; skopeo reads them back where a test checks what a real client sees).

Layers are real tar archives (deterministic: sorted names, fixed mtime/owner), compressed
with gzip, zstd or not at all, and streamed to disk so multi-hundred-MiB benchmark layers
never sit in memory.  Images can carry OCI or Docker schema2 media types.
"""

from __future__ import annotations

import gzip
import hashlib
import io
import json
import random
import tarfile
import uuid
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any, Literal, Protocol

import httpx
from backports.zstd import ZstdFile

if TYPE_CHECKING:
    from _typeshed import ReadableBuffer

from .digests import sha256
from .registry import Registry, run_skopeo, skopeo_workdir

Compression = Literal["gzip", "zstd", "none"]
Media = Literal["oci", "docker"]

OCI_MANIFEST = "application/vnd.oci.image.manifest.v1+json"
OCI_INDEX = "application/vnd.oci.image.index.v1+json"
OCI_CONFIG = "application/vnd.oci.image.config.v1+json"
DOCKER_MANIFEST = "application/vnd.docker.distribution.manifest.v2+json"
DOCKER_LIST = "application/vnd.docker.distribution.manifest.list.v2+json"
DOCKER_CONFIG = "application/vnd.docker.container.image.v1+json"
INDEX_TYPES = (OCI_INDEX, DOCKER_LIST)
MANIFEST_TYPES = (OCI_MANIFEST, DOCKER_MANIFEST)
ALL_MANIFEST_TYPES = (*MANIFEST_TYPES, *INDEX_TYPES)

LAYER_TYPES: dict[Media, dict[Compression, str]] = {
    "oci": {
        "gzip": "application/vnd.oci.image.layer.v1.tar+gzip",
        "zstd": "application/vnd.oci.image.layer.v1.tar+zstd",
        "none": "application/vnd.oci.image.layer.v1.tar",
    },
    # Docker schema2 has no zstd layer type.
    "docker": {
        "gzip": "application/vnd.docker.image.rootfs.diff.tar.gzip",
        "none": "application/vnd.docker.image.rootfs.diff.tar",
    },
}

REF_NAME = "org.opencontainers.image.ref.name"
MTIME = 1_700_000_000  # fixed timestamp for tar members
CREATED = "2023-11-14T22:13:20Z"
CHUNK = 1 << 20
_IN_MEMORY = 64 << 20  # a blob seeded from memory at most; larger ones are streamed


# -- specs and results ---------------------------------------------------------


@dataclass
class LayerSpec:
    """One layer: explicit ``files``, or ``size`` bytes of content derived from ``seed``."""

    files: dict[str, bytes] | None = None
    size: int = 0
    compression: Compression = "gzip"
    seed: int = 0
    compressible: bool = False  # hex text (gzip ~55%) instead of random bytes
    level: int | None = None  # compressor level; None = the library default


@dataclass
class PlatformSpec:
    """One platform's image inside a multi-platform index."""

    layers: list[LayerSpec]
    os: str = "linux"
    architecture: str = "amd64"
    variant: str | None = None
    config_extra: dict[str, Any] | None = None
    wrong_diff_id: bool = False


@dataclass(frozen=True)
class BuiltLayer:
    digest: str  # of the blob as stored (compressed)
    diff_id: str  # of the uncompressed tar
    size: int  # of the blob
    media_type: str
    uncompressed_size: int

    def descriptor(self) -> dict[str, Any]:
        return {"mediaType": self.media_type, "digest": self.digest, "size": self.size}


@dataclass(frozen=True)
class BuiltImage:
    manifest_digest: str
    manifest_media_type: str
    manifest_size: int
    config_digest: str
    config_media_type: str
    config_size: int
    layers: list[BuiltLayer]
    diff_ids: list[str]  # as written in the config: wrong ones if wrong_diff_id
    platform: dict[str, str]
    manifest: bytes = field(repr=False)
    config: bytes = field(repr=False)

    def descriptor(self) -> dict[str, Any]:
        return {
            "mediaType": self.manifest_media_type,
            "digest": self.manifest_digest,
            "size": self.manifest_size,
        }


@dataclass(frozen=True)
class BuiltIndex:
    digest: str
    media_type: str
    size: int
    images: list[BuiltImage]
    index: bytes = field(repr=False)

    def image(self, architecture: str, variant: str | None = None) -> BuiltImage:
        for image in self.images:
            p = image.platform
            if p["architecture"] == architecture and p.get("variant") == variant:
                return image
        raise KeyError(f"{architecture}/{variant}")


# -- layout helpers ------------------------------------------------------------


def blob_path(layout: Path, digest: str) -> Path:
    algorithm, _, hexdigest = digest.partition(":")
    return layout / "blobs" / algorithm / hexdigest


def _init_layout(layout: Path) -> None:
    (layout / "blobs" / "sha256").mkdir(parents=True, exist_ok=True)
    (layout / "oci-layout").write_text('{"imageLayoutVersion": "1.0.0"}')
    if not (layout / "index.json").exists():
        _write_layout_index(layout, [])


def _write_layout_index(layout: Path, manifests: list[dict[str, Any]]) -> None:
    index = {"schemaVersion": 2, "mediaType": OCI_INDEX, "manifests": manifests}
    (layout / "index.json").write_text(json.dumps(index, indent=2) + "\n")


def layout_descriptors(layout: Path) -> list[dict[str, Any]]:
    """The descriptors of the layout's top-level index.json."""
    manifests: list[dict[str, Any]] = json.loads((layout / "index.json").read_text())["manifests"]
    return manifests


def layout_descriptor(layout: Path, tag: str) -> dict[str, Any]:
    for desc in layout_descriptors(layout):
        if desc.get("annotations", {}).get(REF_NAME) == tag:
            return desc
    raise KeyError(f"no {tag!r} in {layout}/index.json")


def _tag(layout: Path, tag: str, descriptor: dict[str, Any]) -> None:
    manifests = [
        d for d in layout_descriptors(layout) if d.get("annotations", {}).get(REF_NAME) != tag
    ]
    manifests.append({**descriptor, "annotations": {REF_NAME: tag}})
    _write_layout_index(layout, manifests)


def _write_json_blob(layout: Path, obj: dict[str, Any]) -> tuple[bytes, str]:
    data = json.dumps(obj, separators=(",", ":")).encode()
    digest = sha256(data)
    blob_path(layout, digest).write_bytes(data)
    return data, digest


# -- layers --------------------------------------------------------------------


class _Writer(Protocol):
    def write(self, data: ReadableBuffer, /) -> object: ...


class _HashingSink(io.RawIOBase):
    """A write-only stream that hashes and counts what passes through it."""

    def __init__(self, out: _Writer | None) -> None:
        super().__init__()
        self.out = out
        self.sha = hashlib.sha256()
        self.size = 0

    def write(self, data: ReadableBuffer, /) -> int:
        self.sha.update(data)
        self.size += memoryview(data).nbytes
        if self.out is not None:
            self.out.write(data)
        return memoryview(data).nbytes

    def writable(self) -> bool:
        return True

    @property
    def digest(self) -> str:
        return "sha256:" + self.sha.hexdigest()


class _GeneratedFile(io.RawIOBase):
    """``size`` bytes of deterministic content, produced on demand."""

    def __init__(self, size: int, seed: int, compressible: bool) -> None:
        self.remaining = size
        self.rng = random.Random(seed)
        self.compressible = compressible

    def readable(self) -> bool:
        return True

    def readinto(self, buffer: Any) -> int:
        n = min(len(buffer), self.remaining)
        if self.compressible:
            data = self.rng.randbytes(n // 2 + 1).hex().encode()[:n]
        else:
            data = self.rng.randbytes(n)
        buffer[:n] = data
        self.remaining -= n
        return n


def _write_tar(spec: LayerSpec, out: _HashingSink) -> None:
    def info(name: str, size: int = 0, *, directory: bool = False) -> tarfile.TarInfo:
        ti = tarfile.TarInfo(name)
        ti.size, ti.mtime, ti.uid, ti.gid, ti.uname, ti.gname = size, MTIME, 0, 0, "", ""
        ti.type = tarfile.DIRTYPE if directory else tarfile.REGTYPE
        ti.mode = 0o755 if directory else 0o644
        return ti

    with tarfile.open(fileobj=out, mode="w|", format=tarfile.PAX_FORMAT) as tar:
        tar.copybufsize = CHUNK  # type: ignore[attr-defined]
        if spec.files is None:
            name = f"random-{spec.seed}.bin"
            tar.addfile(
                info(name, spec.size), _GeneratedFile(spec.size, spec.seed, spec.compressible)
            )
            return
        dirs_done: set[str] = set()
        for name in sorted(spec.files):
            parts = name.strip("/").split("/")
            for i in range(1, len(parts)):
                parent = "/".join(parts[:i])
                if parent not in dirs_done:
                    dirs_done.add(parent)
                    tar.addfile(info(parent, directory=True))
            data = spec.files[name]
            tar.addfile(info("/".join(parts), len(data)), io.BytesIO(data))


def build_layer(layout: Path, spec: LayerSpec, media: Media = "oci") -> BuiltLayer:
    """Write one layer blob into ``layout``, streaming tar -> compressor -> file."""
    if spec.compression not in LAYER_TYPES[media]:
        raise ValueError(f"{media} images cannot have {spec.compression} layers")
    _init_layout(layout)
    tmp = layout / "blobs" / f".tmp-{uuid.uuid4().hex}"
    with tmp.open("wb") as fh:
        blob = _HashingSink(fh)
        compressor: gzip.GzipFile | ZstdFile | None
        if spec.compression == "gzip":
            level = 6 if spec.level is None else spec.level
            compressor = gzip.GzipFile(fileobj=blob, mode="wb", compresslevel=level, mtime=0)
        elif spec.compression == "zstd":
            compressor = ZstdFile(blob, "w", level=spec.level)
        else:
            compressor = None
        tar = _HashingSink(compressor) if compressor is not None else blob
        _write_tar(spec, tar)
        if compressor is not None:
            compressor.close()
    tmp.rename(blob_path(layout, blob.digest))
    return BuiltLayer(
        digest=blob.digest,
        diff_id=tar.digest,
        size=blob.size,
        media_type=LAYER_TYPES[media][spec.compression],
        uncompressed_size=tar.size,
    )


# -- images and indexes --------------------------------------------------------


def _build_manifest(layout: Path, spec: PlatformSpec, media: Media) -> BuiltImage:
    layers = [build_layer(layout, layer, media) for layer in spec.layers]
    diff_ids = [layer.diff_id for layer in layers]
    if spec.wrong_diff_id:
        # A lying image: every diff_id is the hash of something else.
        diff_ids = [sha256(b"not this layer: " + d.encode()) for d in diff_ids]
    platform = {"architecture": spec.architecture, "os": spec.os}
    if spec.variant is not None:
        platform["variant"] = spec.variant
    config_obj: dict[str, Any] = {
        "created": CREATED,
        **platform,
        "config": {
            "Env": ["PATH=/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin"],
            "Cmd": ["/bin/sh"],
            "WorkingDir": "/",
        },
        "rootfs": {"type": "layers", "diff_ids": diff_ids},
        "history": [{"created": CREATED, "created_by": f"layer {i}"} for i in range(len(layers))],
        **(spec.config_extra or {}),
    }
    config, config_digest = _write_json_blob(layout, config_obj)
    manifest_type, config_type = (
        (OCI_MANIFEST, OCI_CONFIG) if media == "oci" else (DOCKER_MANIFEST, DOCKER_CONFIG)
    )
    manifest, manifest_digest = _write_json_blob(
        layout,
        {
            "schemaVersion": 2,
            "mediaType": manifest_type,
            "config": {"mediaType": config_type, "digest": config_digest, "size": len(config)},
            "layers": [layer.descriptor() for layer in layers],
        },
    )
    return BuiltImage(
        manifest_digest=manifest_digest,
        manifest_media_type=manifest_type,
        manifest_size=len(manifest),
        config_digest=config_digest,
        config_media_type=config_type,
        config_size=len(config),
        layers=layers,
        diff_ids=diff_ids,
        platform=platform,
        manifest=manifest,
        config=config,
    )


def build_image(
    layout: Path,
    *,
    layers: list[LayerSpec],
    media: Media = "oci",
    os: str = "linux",
    architecture: str = "amd64",
    variant: str | None = None,
    tag: str = "latest",
    config_extra: dict[str, Any] | None = None,
    wrong_diff_id: bool = False,
) -> BuiltImage:
    """Write (or add to) an OCI layout an image tagged ``tag``."""
    _init_layout(layout)
    spec = PlatformSpec(layers, os, architecture, variant, config_extra, wrong_diff_id)
    image = _build_manifest(layout, spec, media)
    _tag(layout, tag, {**image.descriptor(), "platform": image.platform})
    return image


def build_index(
    layout: Path,
    images: list[PlatformSpec],
    *,
    media: Media = "oci",
    tag: str = "latest",
) -> BuiltIndex:
    """Write a multi-platform image (OCI index or Docker manifest list) tagged ``tag``."""
    _init_layout(layout)
    built = [_build_manifest(layout, spec, media) for spec in images]
    index_type = OCI_INDEX if media == "oci" else DOCKER_LIST
    data, digest = _write_json_blob(
        layout,
        {
            "schemaVersion": 2,
            "mediaType": index_type,
            "manifests": [{**image.descriptor(), "platform": image.platform} for image in built],
        },
    )
    _tag(layout, tag, {"mediaType": index_type, "digest": digest, "size": len(data)})
    return BuiltIndex(
        digest=digest, media_type=index_type, size=len(data), images=built, index=data
    )


def iter_blobs(layout: Path, descriptor: dict[str, Any]) -> Iterator[dict[str, Any]]:
    """Every descriptor reachable from ``descriptor``, children before parents."""
    if descriptor["mediaType"] in ALL_MANIFEST_TYPES:
        doc = json.loads(blob_path(layout, descriptor["digest"]).read_bytes())
        if descriptor["mediaType"] in INDEX_TYPES:
            for child in doc["manifests"]:
                yield from iter_blobs(layout, child)
        else:
            yield doc["config"]
            yield from doc["layers"]
    yield descriptor


# -- seeding a registry --------------------------------------------------------


def _split_reference(dest: str) -> tuple[str, str]:
    """``"repo:tag"`` / ``"repo@sha256:..."`` / ``"repo"`` -> (repo, tag or digest)."""
    if "@" in dest:
        name, _, digest = dest.partition("@")
        return name, digest
    name, sep, tag = dest.rpartition(":")
    if not sep or "/" in tag:
        return dest, "latest"
    return name, tag


def registry_manifest(registry: Registry, dest: str) -> tuple[bytes, str]:
    """The raw manifest stored for ``dest`` and its media type, fetched with httpx."""
    name, reference = _split_reference(dest)
    with registry.client() as client:
        response = client.get(
            f"/v2/{name}/manifests/{reference}", headers={"Accept": ", ".join(ALL_MANIFEST_TYPES)}
        )
        response.raise_for_status()
        return response.content, response.headers["content-type"]


def seed(registry: Registry, layout: Path, tag: str, dest: str) -> str:
    """Copy ``layout``'s image ``tag`` to ``<registry>/<dest>`` byte for byte; return its
    digest.

    As a registry client pushes: each blob (HEAD, then a monolithic POST + PUT when the
    repository lacks it, streamed from its file), then the manifests bottom-up (an
    index's images by digest, the top one by ``dest``'s tag or digest), each with its
    own media type. What the registry then serves is read back and checked.
    """
    descriptor = layout_descriptor(layout, tag)
    name, reference = _split_reference(dest)
    with registry.client(timeout=600) as client:
        for desc in iter_blobs(layout, descriptor):  # children before parents
            digest, path = desc["digest"], blob_path(layout, desc["digest"])
            if desc["mediaType"] in ALL_MANIFEST_TYPES:
                target = reference if digest == descriptor["digest"] else digest
                client.put(
                    f"/v2/{name}/manifests/{target}",
                    content=path.read_bytes(),
                    headers={"Content-Type": desc["mediaType"]},
                ).raise_for_status()
            elif client.head(f"/v2/{name}/blobs/{digest}").status_code != 200:
                _upload(client, name, digest, path)
    raw, _ = registry_manifest(registry, dest)
    if sha256(raw) != descriptor["digest"]:
        raise AssertionError(f"{dest}: registry has {sha256(raw)}, built {descriptor['digest']}")
    return str(descriptor["digest"])


def _upload(client: httpx.Client, name: str, digest: str, path: Path) -> None:
    """One monolithic upload. A blob that fits in memory is sent as bytes, which an
    authenticating client can send again after a 401; a larger one (a benchmark's) is
    streamed from its file, to a registry that asks for no login."""
    started = client.post(f"/v2/{name}/blobs/uploads/")
    started.raise_for_status()
    location = httpx.URL(started.headers["Location"]).copy_merge_params({"digest": digest})
    size = path.stat().st_size
    headers = {"Content-Type": "application/octet-stream", "Content-Length": str(size)}
    with path.open("rb") as file:
        content = file.read() if size <= _IN_MEMORY else iter(lambda: file.read(CHUNK), b"")
        client.put(location, content=content, headers=headers).raise_for_status()


def seeded(registry: Registry, layout: Path, repository: str, seed_number: int) -> str:
    """A one-layer image of its own (`seed_number`) in `registry` as `repository:v1`;
    its reference."""
    build_image(layout, layers=[LayerSpec(size=2000, seed=seed_number)])
    seed(registry, layout, "latest", f"{repository}:v1")
    return f"{registry.host}/{repository}:v1"


def skopeo_inspect_raw(registry: Registry, ref: str) -> bytes:
    """``skopeo inspect --raw docker://<registry>/<ref>``: the manifest bytes as stored."""
    out = run_skopeo(
        ["inspect", "--raw", *registry.skopeo_flags(), f"docker://{registry.host}/{ref}"],
        workdir=skopeo_workdir(registry),
    )
    return out.encode()


def skopeo_copy_to_oci(
    registry: Registry,
    src: str,
    dest_dir: Path,
    *,
    tag: str | None = None,
    all_platforms: bool = True,
    preserve_digests: bool = False,
) -> None:
    """Read ``<registry>/<src>`` into the OCI layout ``dest_dir`` with skopeo.

    Layer and config blobs arrive unchanged (uncompressed layers stay uncompressed).
    skopeo 1.9.3 can only write OCI manifests into a layout, so Docker schema2 images
    get new OCI manifests; pass ``preserve_digests=True`` to fail instead.
    """
    args = ["copy", "--quiet", "--dest-oci-accept-uncompressed-layers"]
    args += registry.skopeo_flags("src-")
    if all_platforms:
        args.append("--all")
    if preserve_digests:
        args.append("--preserve-digests")
    target = f"oci:{dest_dir}" + (f":{tag}" if tag else "")
    run_skopeo([*args, f"docker://{registry.host}/{src}", target], workdir=skopeo_workdir(registry))
