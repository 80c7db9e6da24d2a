"""Images by ID (the config's digest): moby's ImageConfigStore, over the images table."""

from __future__ import annotations

import time
from dataclasses import dataclass

from ferryd.oci.digest import Digest
from ferryd.oci.image_config import (
    ConfigModel,
    RootFS,
    decode_config,
    rootfs_and_os,
    rootfs_of,
)
from ferryd.store.blobs import BlobStore
from ferryd.store.db import Database


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


class ImageConfigStore:
    def __init__(self, db: Database, blobs: BlobStore) -> None:
        self._db = db
        self._blobs = blobs

    def put(
        self,
        config: bytes,
        *,
        media_type: str = "",
        size: int = 0,
        model: ConfigModel | None = None,
    ) -> Digest:
        """Store the config blob and the image row; the image ID is the config digest.

        Its layers must be registered first: the row points at the top one. Whether
        this host can use its OS is the pull's question (`rootfs_and_os`): the images
        of an index for other operating systems are kept too. `model`: `config` decoded
        already (a pull has it), so that it is not decoded again.
        """
        if model is None:
            model = decode_config(config)
        rootfs = rootfs_of(model)
        image_id = self._blobs.put(config)
        self._db.execute(
            "INSERT OR IGNORE INTO images VALUES (?, ?, ?, ?, ?, ?, ?, ?)",
            (
                image_id,
                rootfs.chain_id() or None,
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

    def rootfs_and_os(self, config: bytes | ConfigModel) -> tuple[RootFS, str]:
        """The layer DiffIDs and OS of a config; refuses an OS this host cannot run."""
        return rootfs_and_os(config)

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

    def top_layers(self) -> list[Digest]:
        """The top layer of every image that has layers: where garbage collection starts."""
        rows = self._db.all("SELECT top_layer FROM images WHERE top_layer IS NOT NULL")
        return [Digest(row["top_layer"]) for row in rows]

    def delete(self, image_id: Digest) -> None:
        self._db.execute("DELETE FROM images WHERE id = ?", (image_id,))
