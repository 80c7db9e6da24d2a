"""Image archives for save/load tests: built here the way docker 24, docker 25+ and a
hostile client would write them, and sent to a daemon's `/images/load`."""

from __future__ import annotations

import gzip
import hashlib
import io
import json
import sqlite3
import tarfile
from collections.abc import Iterable, Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from backports.zstd import ZstdDecompressor

from .daemon import Daemon, errors
from .digests import sha256
from .images import REF_NAME, BuiltImage, blob_path, build_image, seed
from .registry import Registry

OCI_LAYER_TAR = "application/vnd.oci.image.layer.v1.tar"
OCI_MANIFEST = "application/vnd.oci.image.manifest.v1+json"
OCI_CONFIG = "application/vnd.oci.image.config.v1+json"
OCI_INDEX = "application/vnd.oci.image.index.v1+json"
IMAGE_NAME = "io.containerd.image.name"


# -- writing tars ----------------------------------------------------------------------


@dataclass
class TarWriter:
    """A tar built in memory, entry by entry, any kind of entry (hostile ones too)."""

    buffer: io.BytesIO = field(default_factory=io.BytesIO)

    def __post_init__(self) -> None:
        self.tar = tarfile.open(  # noqa: SIM115 - closed by `bytes()`
            fileobj=self.buffer, mode="w", format=tarfile.PAX_FORMAT
        )

    def _info(self, name: str, kind: bytes, size: int = 0) -> tarfile.TarInfo:
        info = tarfile.TarInfo(name)
        info.type, info.size, info.mode, info.mtime = kind, size, 0o644, 0
        return info

    def file(self, name: str, data: bytes) -> TarWriter:
        self.tar.addfile(self._info(name, tarfile.REGTYPE, len(data)), io.BytesIO(data))
        return self

    def json(self, name: str, value: object) -> TarWriter:
        return self.file(name, json.dumps(value).encode())

    def directory(self, name: str) -> TarWriter:
        self.tar.addfile(self._info(name, tarfile.DIRTYPE))
        return self

    def link(self, name: str, target: str, kind: bytes = tarfile.SYMTYPE) -> TarWriter:
        info = self._info(name, kind)
        info.linkname = target
        self.tar.addfile(info)
        return self

    def special(self, name: str, kind: bytes) -> TarWriter:
        self.tar.addfile(self._info(name, kind))
        return self

    def bytes(self) -> bytes:
        self.tar.close()
        return self.buffer.getvalue()


def uncompressed(layout: Path, digest: str) -> bytes:
    """A layer blob of `layout` as the tar it decompresses to."""
    data = blob_path(layout, digest).read_bytes()
    if data[:2] == b"\x1f\x8b":
        return gzip.decompress(data)
    if data[:4] == b"\x28\xb5\x2f\xfd":
        return ZstdDecompressor().decompress(data)
    return data


def v1_id(*parts: str) -> str:
    return hashlib.sha256(" ".join(parts).encode()).hexdigest()


def docker24_archive(layout: Path, image: BuiltImage, tags: list[str]) -> TarWriter:
    """An archive as docker save wrote it before 25: `<id>/layer.tar` (uncompressed),
    `<id>/json`, `<id>/VERSION`, `<config hex>.json`, manifest.json, repositories; a layer
    repeated in the stack is a symbolic link to the first one's layer.tar."""
    writer = TarWriter()
    layers: list[str] = []
    first: dict[str, str] = {}
    parent = ""
    for index, layer in enumerate(image.layers):
        layer_id = v1_id(image.config_digest, str(index), parent)
        writer.directory(f"{layer_id}/")
        writer.file(f"{layer_id}/VERSION", b"1.0")
        writer.json(f"{layer_id}/json", {"id": layer_id, "parent": parent or None})
        if layer.diff_id in first:
            writer.link(f"{layer_id}/layer.tar", f"../{first[layer.diff_id]}/layer.tar")
        else:
            writer.file(f"{layer_id}/layer.tar", uncompressed(layout, layer.digest))
            first[layer.diff_id] = layer_id
        layers.append(f"{layer_id}/layer.tar")
        parent = layer_id
    config_name = image.config_digest.removeprefix("sha256:") + ".json"
    writer.file(config_name, image.config)
    writer.json("manifest.json", [{"Config": config_name, "RepoTags": tags, "Layers": layers}])
    repositories: dict[str, dict[str, str]] = {}
    for tag in tags:
        name, _, version = tag.rpartition(":")
        repositories.setdefault(name, {})[version] = parent
    writer.json("repositories", repositories)
    return writer


def docker25_archive(layout: Path, image: BuiltImage, tag: str) -> tuple[TarWriter, str]:
    """An archive as docker save writes it since 25: an OCI layout whose layers are the
    uncompressed tars (named by DiffID) and an OCI manifest docker made for them, and a
    manifest.json pointing into blobs/. Returns the writer and that manifest's digest."""
    writer = TarWriter()
    blobs: dict[str, bytes] = {}
    for layer in image.layers:
        blobs[layer.diff_id] = uncompressed(layout, layer.digest)
    blobs[image.config_digest] = image.config
    manifest = json.dumps(
        {
            "schemaVersion": 2,
            "mediaType": OCI_MANIFEST,
            "config": {
                "mediaType": OCI_CONFIG,
                "digest": image.config_digest,
                "size": len(image.config),
            },
            "layers": [
                {"mediaType": OCI_LAYER_TAR, "digest": d, "size": len(blobs[d])}
                for d in image.diff_ids
            ],
        }
    ).encode()
    digest = sha256(manifest)
    blobs[digest] = manifest
    name, _, version = tag.rpartition(":")
    full = f"docker.io/{tag}" if "/" in name else f"docker.io/library/{tag}"
    index = {
        "schemaVersion": 2,
        "mediaType": OCI_INDEX,
        "manifests": [
            {
                "mediaType": OCI_MANIFEST,
                "digest": digest,
                "size": len(manifest),
                "annotations": {IMAGE_NAME: full, REF_NAME: version},
            }
        ],
    }
    # Lexical order, as docker's archive package walks its temp directory.
    writer.directory("blobs/").directory("blobs/sha256/")
    for blob_digest in sorted(blobs):
        writer.file(f"blobs/sha256/{blob_digest.removeprefix('sha256:')}", blobs[blob_digest])
    writer.json("index.json", index)
    writer.json(
        "manifest.json",
        [
            {
                "Config": f"blobs/sha256/{image.config_digest.removeprefix('sha256:')}",
                "RepoTags": [tag],
                "Layers": [f"blobs/sha256/{d.removeprefix('sha256:')}" for d in image.diff_ids],
            }
        ],
    )
    writer.file("oci-layout", b'{"imageLayoutVersion":"1.0.0"}')
    writer.json("repositories", {name: {version: image.diff_ids[-1].removeprefix("sha256:")}})
    return writer, digest


# -- the daemon's side -----------------------------------------------------------------


@dataclass
class Answer:
    status: int
    messages: list[dict[str, Any]]

    @property
    def error(self) -> str | None:
        """The refusal, whether an HTTP status or an error message in the stream said it."""
        for message in self.messages:
            if "error" in message:
                return str(message["error"])
            if self.status >= 400 and "message" in message:
                return str(message["message"])
        return None

    @property
    def lines(self) -> list[str]:
        return [m["stream"].rstrip("\n") for m in self.messages if "stream" in m]


def pulled(daemon: Daemon, registry: Registry, layout: Path, dest: str, **spec: Any) -> BuiltImage:
    """An image built in `layout` from `spec` (`build_image`'s arguments), pushed to
    `registry` as `dest` and pulled by `daemon`: one to save."""
    built = build_image(layout, **spec)
    seed(registry, layout, "latest", dest)
    assert errors(daemon.pull(f"{registry.host}/{dest}")) == []
    return built


def load(
    daemon: Daemon, body: bytes | Iterable[bytes], *, quiet: bool = True, **params: str
) -> Answer:
    """POST the archive to `/images/load` and read the whole answer."""
    query = {"quiet": "1" if quiet else "0", **params}
    with daemon.http() as client:
        response = client.post("/images/load", params=query, content=body)
    messages = [json.loads(line) for line in response.text.splitlines() if line.strip()]
    return Answer(response.status_code, messages)


def save(daemon: Daemon, *names: str, **params: str) -> bytes:
    with daemon.http() as client:
        response = client.get(
            "/images/get", params=[("names", n) for n in names] + list(params.items())
        )
    assert response.status_code == 200, response.text
    return response.content


def members(archive: bytes) -> dict[str, bytes]:
    """The regular files of an archive, by name."""
    with tarfile.open(fileobj=io.BytesIO(archive)) as tar:
        return {
            m.name: tar.extractfile(m).read()  # type: ignore[union-attr]
            for m in tar.getmembers()
            if m.isfile()
        }


@dataclass(frozen=True)
class StoreState:
    """What a store holds on disk and in its database (read while the daemon runs)."""

    blobs: frozenset[str]
    rows: dict[str, int]
    staging: tuple[str, ...]
    partials: frozenset[str]


def store_state(daemon: Daemon) -> StoreState:
    root = daemon.root
    blobs = frozenset(str(p.relative_to(root)) for p in (root / "blobs").rglob("*") if p.is_file())
    loading = root / "loading"
    staging = tuple(sorted(p.name for p in loading.iterdir())) if loading.exists() else ()
    partials = frozenset(p.name for p in (root / "partial").iterdir())
    with sqlite3.connect(f"file:{root / 'ferryd.db'}?mode=ro", uri=True) as db:
        rows = {
            table: db.execute(f"SELECT COUNT(*) FROM {table}").fetchone()[0]
            for table in ("layers", "images", "manifests", "refs")
        }
    return StoreState(blobs, rows, staging, partials)


def chunked(data: bytes, size: int = 256 * 1024) -> Iterator[bytes]:
    for start in range(0, len(data), size):
        yield data[start : start + size]
