"""The seed's PushLayerProvider and PushLayer, backed by the layer store.

A layer is held (reference-counted) from `get` until `release`, so that nothing
removes it while a push reads it.
"""

from __future__ import annotations

from collections.abc import AsyncIterator
from dataclasses import dataclass
from pathlib import Path
from typing import Protocol, runtime_checkable

import anyio

from ferryd.codec import BATCH_SIZE, detect_compression, inflater
from ferryd.errors import ImageNotFoundError
from ferryd.oci.digest import Digest
from ferryd.oci.manifest import Descriptor
from ferryd.oci.mediatypes import Compression
from ferryd.store.blobs import BlobStore
from ferryd.store.layers import Layer, LayerStore

EMPTY_CHAIN = Digest("")


class PushLayer(Protocol):
    @property
    def chain_id(self) -> Digest: ...
    @property
    def diff_id(self) -> Digest: ...
    @property
    def media_type(self) -> str: ...
    def parent(self) -> PushLayer | None: ...
    def open(self) -> AsyncIterator[bytes]: ...
    def size(self) -> int: ...
    def release(self) -> None: ...


@runtime_checkable
class DescribableLayer(Protocol):
    """A foreign layer: referenced in the manifest by its descriptor, never uploaded."""

    def descriptor(self) -> Descriptor: ...


class PushLayerProvider(Protocol):
    def get(self, chain_id: Digest) -> PushLayer: ...


@dataclass
class StoreLayer:
    """A stored layer: its blob is uploaded as it is whenever it is compressed."""

    record: Layer
    _layers: LayerStore
    _blobs: BlobStore
    _released: bool = False

    @property
    def chain_id(self) -> Digest:
        return self.record.chain_id

    @property
    def diff_id(self) -> Digest:
        return self.record.diff_id

    @property
    def media_type(self) -> str:
        return self.record.media_type

    @property
    def blob_digest(self) -> Digest:
        return self.record.blob_digest

    @property
    def blob_path(self) -> Path:
        return self._blobs.path(self.record.blob_digest)

    @property
    def compression(self) -> Compression:
        with self.blob_path.open("rb") as file:
            return detect_compression(file.read(4))

    def parent(self) -> StoreLayer | None:
        """The layer below, not held: it lives as long as this one is held."""
        if self.record.parent is None:
            return None
        return _get(self._layers, self._blobs, self.record.parent, hold=False)

    async def open(self) -> AsyncIterator[bytes]:
        """The uncompressed tar, inflated from the stored blob in a worker thread."""
        async with await anyio.open_file(self.blob_path, "rb") as file:
            batch = await file.read(BATCH_SIZE)
            decoder = inflater(detect_compression(batch))

            def inflate(data: bytes) -> list[bytes]:
                return list(decoder.feed(data))

            while batch:
                for piece in await anyio.to_thread.run_sync(inflate, batch):
                    yield piece
                batch = await file.read(BATCH_SIZE)
            decoder.finish()

    def size(self) -> int:
        return self.record.size

    def release(self) -> None:
        if not self._released:
            self._released = True
            self._layers.release(self.record.chain_id)


@dataclass
class ForeignStoreLayer(StoreLayer):
    def descriptor(self) -> Descriptor:
        return Descriptor(
            mediaType=self.record.media_type,
            digest=self.record.blob_digest,
            size=self.record.compressed_size,
            urls=list(self.record.urls),
        )


@dataclass
class EmptyLayer:
    """The layer below the first one: ChainID "", nothing to push."""

    chain_id: Digest = EMPTY_CHAIN
    diff_id: Digest = EMPTY_CHAIN
    media_type: str = ""

    def parent(self) -> None:
        return None

    async def open(self) -> AsyncIterator[bytes]:
        return
        yield b""  # an empty async generator

    def size(self) -> int:
        return 0

    def release(self) -> None:
        return None


class StoreLayerProvider:
    def __init__(self, layers: LayerStore, blobs: BlobStore) -> None:
        self._layers = layers
        self._blobs = blobs

    def get(self, chain_id: Digest) -> StoreLayer | EmptyLayer:
        """The layer with this ChainID, held until released; "" is the empty layer."""
        if chain_id == EMPTY_CHAIN:
            return EmptyLayer()
        return _get(self._layers, self._blobs, chain_id)


def _get(
    layers: LayerStore, blobs: BlobStore, chain_id: Digest, *, hold: bool = True
) -> StoreLayer:
    record = layers.get(chain_id)
    if record is None:
        raise ImageNotFoundError(f"layer {chain_id} is not in the store")
    if hold:
        layers.hold(chain_id)
    kind = ForeignStoreLayer if record.urls else StoreLayer
    return kind(record, layers, blobs, _released=not hold)
