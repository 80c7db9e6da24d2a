"""Image configs by ID (the config's digest): the seed's ImageConfigStore."""

from __future__ import annotations

import sys
import time
from dataclasses import dataclass
from typing import Any

import msgspec

from ferryd.errors import ImageConfigError, InvalidDigestError
from ferryd.oci.digest import Digest, chain_ids, parse_digest
from ferryd.store.blobs import BlobStore
from ferryd.store.db import Database

MAX_CONFIG_SIZE = 8 * 1024 * 1024


class RootFSModel(msgspec.Struct):
    type: str = ""
    diff_ids: list[str] = msgspec.field(default_factory=list)


class ConfigModel(msgspec.Struct):
    """The fields of an image config ferryd reads; the rest is kept in the raw bytes."""

    rootfs: RootFSModel | None = None
    os: str = ""
    architecture: str = ""
    variant: str | None = None
    created: str | None = None
    author: str | None = None
    config: dict[str, Any] | None = None


@dataclass(frozen=True, slots=True)
class RootFS:
    diff_ids: list[Digest]


@dataclass(frozen=True, slots=True)
class ImageRecord:
    id: Digest
    top_layer: Digest | None
    config_media_type: str
    os: str
    architecture: str
    variant: str | None
    size: int
    created: float


def decode_config(raw: bytes) -> ConfigModel:
    try:
        return msgspec.json.decode(raw, type=ConfigModel)
    except (msgspec.DecodeError, msgspec.ValidationError) as exc:
        raise ImageConfigError(f"malformed image config: {exc}") from None


class ImageConfigStore:
    def __init__(self, db: Database, blobs: BlobStore) -> None:
        self._db = db
        self._blobs = blobs

    def put(self, config: bytes, *, media_type: str = "", size: int = 0) -> Digest:
        """Store the config blob and the image row; the image ID is the config digest.

        Its layers must be registered first: the row points at the top one.
        """
        model = decode_config(config)
        rootfs, _ = self.rootfs_and_os(config)
        image_id = self._blobs.put(config)
        chains = chain_ids(rootfs.diff_ids)
        self._db.execute(
            "INSERT OR IGNORE INTO images VALUES (?, ?, ?, ?, ?, ?, ?, ?)",
            (
                image_id,
                chains[-1] if chains else None,
                media_type,
                model.os,
                model.architecture,
                model.variant,
                size,
                time.time(),
            ),
        )
        return image_id

    def get(self, image_id: Digest) -> bytes:
        return self._blobs.get(image_id)

    def record(self, image_id: Digest) -> ImageRecord | None:
        row = self._db.one("SELECT * FROM images WHERE id = ?", (image_id,))
        if row is None:
            return None
        return ImageRecord(
            Digest(row["id"]),
            Digest(row["top_layer"]) if row["top_layer"] else None,
            row["config_media_type"],
            row["os"],
            row["architecture"],
            row["variant"],
            row["size"],
            row["created"],
        )

    def ids(self) -> list[Digest]:
        return [Digest(row["id"]) for row in self._db.all("SELECT id FROM images")]

    def rootfs_and_os(self, config: bytes) -> tuple[RootFS, str]:
        """The layer DiffIDs and OS of a config; refuses an OS this host cannot run."""
        model = decode_config(config)
        if model.os == "windows" and sys.platform != "win32":
            raise ImageConfigError(
                f'image operating system "{model.os}" cannot be used on this platform'
            )
        if model.rootfs is None:
            raise ImageConfigError("image config has no rootfs")
        if model.rootfs.type != "layers":
            raise ImageConfigError(
                f"image config has rootfs type {model.rootfs.type!r}, not 'layers'"
            )
        try:
            diff_ids = [parse_digest(d) for d in model.rootfs.diff_ids]
        except InvalidDigestError as exc:
            raise ImageConfigError(f"image config has a bad rootfs.diff_ids entry: {exc}") from None
        return RootFS(diff_ids), model.os
