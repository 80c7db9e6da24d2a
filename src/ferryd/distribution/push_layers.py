"""moby's PushLayerProvider and PushLayer, and their implementation over the layer store.

A push gets its image's top layer by ChainID and walks down with `parent()`. The top
layer is held (reference-counted) from `get` until `release`, which keeps the whole
stack below it from garbage collection while the push reads it.
"""

from __future__ import annotations

import asyncio
import contextlib
from collections.abc import AsyncIterator
from concurrent.futures import Future, ThreadPoolExecutor
from contextlib import asynccontextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import Protocol, runtime_checkable

import anyio

from ferryd.blobfile import BlobReader
from ferryd.codec import BATCH_SIZE, detect_compression, inflater
from ferryd.errors import ImageNotFoundError
from ferryd.oci.digest import Digest
from ferryd.oci.image_config import EMPTY_CHAIN
from ferryd.oci.manifest import Descriptor
from ferryd.oci.mediatypes import Compression
from ferryd.store.blobs import BlobStore
from ferryd.store.layers import Layer, LayerStore


@dataclass(frozen=True, slots=True)
class StoredBlob:
    """A layer's blob as the store holds it (what the registry sent, byte for byte)."""

    digest: Digest
    size: int
    path: Path

    def compression(self) -> Compression:
        """Read from the first bytes, as docker does: media types can lie."""
        with self.path.open("rb") as file:
            return detect_compression(file.read(4))

    @asynccontextmanager
    async def reading(self) -> AsyncIterator[BlobReading]:
        """The blob's file, open for reads in worker threads (past the page cache: see
        `blobfile`). Opening and closing are shielded from cancellation: a cancelled
        open would drop the file the thread opened, unclosed."""
        with anyio.CancelScope(shield=True):
            reader = await anyio.to_thread.run_sync(BlobReader, self.path)
        reading = BlobReading(reader)
        try:
            yield reading
        finally:
            with anyio.CancelScope(shield=True):
                await anyio.to_thread.run_sync(reading.close)


# Reads ahead of the uploads (at most 6 at once: 5 layers and a config).
_READ_AHEAD = ThreadPoolExecutor(6, thread_name_prefix="ferryd-read")


class BlobReading:
    """A stored blob's reads of ~1 MiB, each in a worker thread, the next one started as
    soon as the last one is handed over: a read past the page cache waits for the disk,
    with no readahead of the kernel's to hide it (without this, pushing an image again
    took 18 % longer than through the page cache)."""

    def __init__(self, reader: BlobReader) -> None:
        self._reader = reader
        self._ahead: Future[bytes] | None = None

    async def read(self) -> bytes:
        """The next ~1 MiB (`BATCH_SIZE`) of the blob; b"" at the end."""
        if self._ahead is None or self._ahead.cancelled():  # a cancelled one never ran
            self._ahead = _READ_AHEAD.submit(self._reader.read, BATCH_SIZE)
        # Kept until it is replaced: a read cancelled while it runs still ends in its
        # thread, and `close` waits for it before the file is closed.
        data = await asyncio.wrap_future(self._ahead)
        self._ahead = _READ_AHEAD.submit(self._reader.read, BATCH_SIZE) if data else None
        return data

    def close(self) -> None:
        """Once the read ahead (if any) has ended or been called off; in a worker thread."""
        if self._ahead is not None and not self._ahead.cancel():  # running or done
            with contextlib.suppress(Exception):  # nobody wants what it read
                self._ahead.result()
        self._reader.close()


class PushLayer(Protocol):
    @property
    def chain_id(self) -> Digest: ...
    @property
    def diff_id(self) -> Digest: ...
    @property
    def media_type(self) -> str: ...
    def parent(self) -> PushLayer | None:
        """The layer below; None for the first one."""
        ...

    def open(self) -> AsyncIterator[bytes]:
        """The layer's uncompressed tar."""
        ...

    def size(self) -> int:
        """The uncompressed size."""
        ...

    def release(self) -> None: ...
    def blob(self) -> StoredBlob | None:
        """The stored blob, uploaded as it is when compressed; None when nothing is stored."""
        ...


@runtime_checkable
class DescribableLayer(Protocol):
    """A foreign layer: referenced in the manifest by its descriptor, never uploaded."""

    def descriptor(self) -> Descriptor: ...


class PushLayerProvider(Protocol):
    def get(self, chain_id: Digest) -> PushLayer:
        """The layer with this ChainID, held until released; "" is the empty layer."""
        ...


@dataclass
class StoreLayer:
    """A stored layer."""

    record: Layer
    _layers: LayerStore
    _blobs: BlobStore
    _held: bool

    @property
    def chain_id(self) -> Digest:
        return self.record.chain_id

    @property
    def diff_id(self) -> Digest:
        return self.record.diff_id

    @property
    def media_type(self) -> str:
        return self.record.media_type

    def parent(self) -> StoreLayer | None:
        """The layer below, not held itself: it lives as long as this one is held."""
        if self.record.parent is None:
            return None
        return _get(self._layers, self._blobs, self.record.parent, hold=False)

    def blob(self) -> StoredBlob:
        return StoredBlob(
            self.record.blob_digest,
            self.record.compressed_size,
            self._blobs.path(self.record.blob_digest),
        )

    async def open(self) -> AsyncIterator[bytes]:
        """The uncompressed tar, inflated from the stored blob in a worker thread."""
        async with self.blob().reading() as file:
            batch = await file.read()
            decoder = inflater(detect_compression(batch))

            def inflate(data: bytes) -> list[bytes]:
                return list(decoder.feed(data))

            while batch:
                for piece in await anyio.to_thread.run_sync(inflate, batch):
                    yield piece
                batch = await file.read()
            decoder.finish()

    def size(self) -> int:
        return self.record.size

    def release(self) -> None:
        if self._held:
            self._held = False
            self._layers.holds.release(self.record.chain_id)


@dataclass
class ForeignStoreLayer(StoreLayer):
    def descriptor(self) -> Descriptor:
        return Descriptor(
            mediaType=self.record.media_type,
            digest=self.record.blob_digest,
            size=self.record.compressed_size,
            urls=list(self.record.urls),
        )


class EmptyLayer:
    """The layer below the first one (ChainID ""): what an image without layers has."""

    chain_id = EMPTY_CHAIN
    diff_id = EMPTY_CHAIN
    media_type = ""

    def parent(self) -> None:
        return None

    async def open(self) -> AsyncIterator[bytes]:
        return
        yield b""  # an empty async generator

    def size(self) -> int:
        return 0

    def release(self) -> None:
        return None

    def blob(self) -> None:
        return None


class StoreLayerProvider:
    def __init__(self, layers: LayerStore, blobs: BlobStore) -> None:
        self._layers = layers
        self._blobs = blobs

    def get(self, chain_id: Digest) -> StoreLayer | EmptyLayer:
        """The layer with this ChainID, held until released; "" is the empty layer."""
        if chain_id == EMPTY_CHAIN:
            return EmptyLayer()
        return _get(self._layers, self._blobs, chain_id, hold=True)


def _get(layers: LayerStore, blobs: BlobStore, chain_id: Digest, *, hold: bool) -> StoreLayer:
    if hold:
        # Hold first, then look: a removal between the two cannot take it.
        layers.holds.acquire(chain_id)
    record = layers.get(chain_id)
    if record is None:
        if hold:
            layers.holds.release(chain_id)
        raise ImageNotFoundError(f"layer {chain_id} is not in the store")
    kind = ForeignStoreLayer if record.urls else StoreLayer
    return kind(record, layers, blobs, _held=hold)
