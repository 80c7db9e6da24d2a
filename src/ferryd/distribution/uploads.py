"""The upload manager, as moby's distribution package has it.

Per layer, cheapest first: the target repository has the blob (HEAD) → "Layer already
exists"; V2 metadata knows it in another repository of the same registry → mount →
"Mounted from R"; else upload. A compressed blob is uploaded as it is stored, so its
digest is kept; a layer held as a plain tar is gzip-compressed as it streams, unless
the push must keep a stored manifest that names the plain blob (`as_stored`: a platform
of an index, whose manifest digest the index lists). The same layer to the same
repository is uploaded once, however many pushes want it.
"""

from __future__ import annotations

import hashlib
from collections.abc import AsyncIterator, Awaitable, Callable
from dataclasses import dataclass, replace
from typing import Literal

import anyio
from anyio.abc import TaskGroup
from isal import isal_zlib

from ferryd.concurrency import KeyedLocks
from ferryd.distribution.progress import Broadcast, Message, ProgressOutput
from ferryd.distribution.push_layers import PushLayer, StoredBlob
from ferryd.distribution.transfers import RetryPolicy, TransferPool, TransferState, with_retries
from ferryd.errors import LayerFormatError, RegistryProtocolError
from ferryd.metrics import Metrics
from ferryd.oci.digest import Digest, short_id
from ferryd.oci.mediatypes import Compression, Family, compression_of, layer_media_type
from ferryd.registry.client import RegistryClient
from ferryd.store.metadata import V2Metadata, V2MetadataStore

Outcome = Literal["pushed", "exists", "mounted"]

# A transfer is shared by pushes of either family: it runs as "oci" (which has a media
# type for every compression) and each caller gets the media type of its own family.
_TRANSFER_FAMILY: Family = "oci"
_GZIP_LEVEL = 1  # isal level 1: ~240 MB/s at nearly zlib's default ratio


@dataclass(frozen=True, slots=True)
class Uploaded:
    """A layer the target repository now has, as its manifest must describe it."""

    digest: Digest
    size: int  # bytes sent (0 when the registry already had it)
    blob_size: int
    media_type: str
    outcome: Outcome
    source: str = ""  # the repository it was mounted from

    @property
    def transferred(self) -> int:
        return self.size

    @property
    def resumed(self) -> int:
        return 0  # uploads start over: registries keep no half-uploaded blob for us


def _layer_media_type(family: Family, compression: Compression) -> str:
    media_type = layer_media_type(family, compression)
    if media_type is None:
        raise LayerFormatError(
            f"a {compression.value} layer cannot be described in a {family} manifest; "
            "push it as an OCI image"
        )
    return media_type


class UploadManager:
    def __init__(
        self,
        metadata: V2MetadataStore,
        task_group: TaskGroup,
        *,
        max_concurrent: int = 5,
        max_attempts: int = 5,
        retry_delay: float = 5.0,
        max_retry_after: float = 60.0,
        slow_after: float | None = None,
        metrics: Metrics | None = None,
    ) -> None:
        self._metadata = metadata
        self._metrics = metrics
        self.retries = RetryPolicy(max_attempts, retry_delay, max_retry_after, metrics=metrics)
        self._transfers: TransferPool[tuple[str, str, Digest, str, bool], Uploaded] = TransferPool(
            task_group, max_concurrent, "upload", slow_after=slow_after, metrics=metrics
        )
        self._sending: KeyedLocks[tuple[str, str, Digest]] = KeyedLocks()

    @property
    def active(self) -> int:
        return self._transfers.active

    def states(self) -> list[TransferState]:
        return self._transfers.states()

    async def send_whole(
        self,
        client: RegistryClient,
        digest: Digest,
        size: int,
        read: Callable[[], Awaitable[bytes]],
        who: str,
    ) -> bool:
        """Make sure the client's repository has the small blob `digest` of `size` bytes,
        sending what `read` gives if it lacks it; whether it was sent. `who` names the
        blob in an error: "config", "blob"."""
        key = (client.endpoint.domain, client.repository, digest)
        async with self._sending.hold(key):
            said = await client.blob_size(digest)
            if said is not None:
                checked_size(size, digest, said, f"{client.endpoint.domain} has {who}")
                return False
            raw = await read()
            await client.upload_blob(digest, len(raw), raw)
            return True

    async def upload(
        self,
        client: RegistryClient,
        layer: PushLayer,
        family: Family,
        progress: ProgressOutput,
        *,
        as_stored: bool = False,
    ) -> Uploaded:
        """Make sure the client's repository has `layer`; say how it got there.
        `as_stored`: a plain tar blob goes up as it is stored, not gzip-compressed."""
        registry, repository = client.endpoint.domain, client.repository
        layer_id = short_id(layer.diff_id)
        compression = await anyio.to_thread.run_sync(_compression, layer)
        # Only a plain blob differs in how it goes up: compressed ones go up as stored.
        as_stored = as_stored and compression is Compression.NONE and layer.blob() is not None
        # Before joining: a layer this family cannot describe fails this push only.
        _layer_media_type(
            family,
            Compression.GZIP if compression is Compression.NONE and not as_stored else compression,
        )

        async def work(progress: Broadcast) -> Uploaded:
            result = await with_retries(
                lambda: self._push_layer(
                    client, layer, _TRANSFER_FAMILY, progress, compression, as_stored
                ),
                policy=self.retries,
                progress=progress,
                progress_id=layer_id,
                name=f"{registry}/{repository} {layer.diff_id}",
            )
            self._metadata.add(layer.diff_id, V2Metadata(result.digest, registry, repository))
            if result.outcome == "mounted":
                progress.write(Message(f"Mounted from {result.source}", layer_id))
            elif result.outcome == "exists":
                progress.write(Message("Layer already exists", layer_id))
            else:
                progress.write(Message("Pushed", layer_id))
            return result

        # By blob too: two manifests may name two blobs (compressions) of one DiffID,
        # and each must have its own in the repository.
        stored = layer.blob()
        result = await self._transfers.join(
            (registry, repository, layer.diff_id, stored.digest if stored else "", as_stored),
            progress,
            work,
            name=f"{registry}/{repository}@{layer.diff_id}",
            progress_id=layer_id,
        )
        media_type = _layer_media_type(family, compression_of(result.media_type))
        return replace(result, media_type=media_type)

    async def _push_layer(
        self,
        client: RegistryClient,
        layer: PushLayer,
        family: Family,
        progress: Broadcast,
        compression: Compression,  # the stored blob's, as `upload` read it
        as_stored: bool = False,
    ) -> Uploaded:
        """Cheapest first: the repository has it, a mount from a sibling, an upload."""
        stored = layer.blob()
        plain = compression is Compression.NONE and not as_stored
        media_type = _layer_media_type(family, Compression.GZIP if plain else compression)
        # The digests this layer may have in the registry: the stored blob's, or for a
        # plain tar, those of earlier gzipped uploads that V2 metadata remembers.
        own = stored.digest if stored is not None else None
        known = [
            meta
            for meta in self._metadata.get(layer.diff_id)
            if meta.registry == client.endpoint.domain
            and (meta.digest != own if plain else meta.digest == own)
        ]
        candidates = (
            list(dict.fromkeys(meta.digest for meta in known))
            if plain or stored is None
            else [stored.digest]
        )
        for digest in candidates:
            size = await client.blob_size(digest)
            if size is not None:
                ours = _size_of(stored, digest)
                size = checked_size(ours, digest, size, f"{client.endpoint.domain} has")
                return Uploaded(digest, 0, size, media_type, "exists")
        location = None
        for meta in known:
            if meta.repository == client.repository:
                continue
            location = await client.mount_blob(meta.digest, meta.repository)
            if location is None:
                size = _size_of(stored, meta.digest) or await _mounted_size(client, meta.digest)
                return Uploaded(meta.digest, 0, size, media_type, "mounted", meta.repository)
            break  # a refused mount opened an upload session: use it
        layer_id = short_id(layer.diff_id)
        if plain or stored is None:
            gzip = _GzipStream(layer, progress, layer_id, self._sent)
            await client.upload_blob(lambda: gzip.digest, None, gzip.chunks, location)
            return Uploaded(gzip.digest, gzip.size, gzip.size, media_type, "pushed")
        blob = stored
        body = lambda: _read_file(blob, progress, layer_id, self._sent)  # noqa: E731
        await client.upload_blob(blob.digest, blob.size, body, location)
        return Uploaded(blob.digest, blob.size, blob.size, media_type, "pushed")

    def _sent(self, count: int) -> None:
        """`count` bytes of a blob were handed to the registry (once per attempt)."""
        if self._metrics is not None:
            self._metrics.moved("upload", count)


def _compression(layer: PushLayer) -> Compression:
    """How the stored blob is compressed; a layer with nothing stored is sent gzipped
    from its tar, as a plain tar is."""
    stored = layer.blob()
    return stored.compression() if stored is not None else Compression.NONE


def _size_of(stored: StoredBlob | None, digest: Digest) -> int:
    """The size of the stored blob, when `digest` is it (0 when unknown here)."""
    return stored.size if stored is not None and digest == stored.digest else 0


def checked_size(known: int, digest: Digest, said: int, who: str) -> int:
    """The size the manifest gives `digest`: ours (`known`) when we know it, else what
    the registry `said`. A size that disagrees with ours is another blob (or a lie), and
    0 for one we cannot size is none a blob has: either would go into the manifest, so
    refused. (A 0 beside a size of ours is a HEAD whose Content-Length a proxy dropped:
    ours it is.)"""
    if known and said not in (0, known):
        raise RegistryProtocolError(
            f"{who} blob {digest} as {said} bytes, but it is {known} bytes: the registry "
            "holds something else under that digest, or misreports its size"
        )
    if not known and not said:
        raise RegistryProtocolError(
            f"{who} blob {digest} as 0 bytes: no layer is empty; the registry misreports its size"
        )
    return known or said


async def _mounted_size(client: RegistryClient, digest: Digest) -> int:
    """The size of a blob the registry says it mounted, which only it can tell."""
    size = await client.blob_size(digest)
    if size is None:
        raise RegistryProtocolError(
            f"{client.endpoint.domain}: blob {digest} was reported mounted into "
            f"{client.repository} (HTTP 201 to the mount), but the registry does not have "
            "it there (HEAD: 404)"
        )
    return checked_size(0, digest, size, f"{client.endpoint.domain} has mounted")


async def _read_file(
    stored: StoredBlob, progress: Broadcast, layer_id: str, counted: Callable[[int], None]
) -> AsyncIterator[bytes]:
    """The stored blob in ~1 MiB reads, reporting "Pushing" as it goes; what it gave
    the registry is `counted` once it ends, however it ends."""
    sent = 0
    try:
        async with stored.reading() as file:
            while chunk := await file.read():
                sent += len(chunk)
                progress.update(Message("Pushing", layer_id, sent, stored.size))
                yield chunk
    finally:
        counted(sent)


class _GzipStream:
    """Compresses a layer's tar as it is sent, hashing the result for its digest."""

    def __init__(
        self,
        layer: PushLayer,
        progress: Broadcast,
        layer_id: str,
        counted: Callable[[int], None],
    ) -> None:
        self._layer = layer
        self._progress = progress
        self._layer_id = layer_id
        self._counted = counted  # told what each pass gave the registry, once it ends
        self.digest = Digest("")
        self.size = 0

    async def chunks(self) -> AsyncIterator[bytes]:
        hasher = hashlib.sha256()
        compressor = isal_zlib.compressobj(_GZIP_LEVEL, isal_zlib.DEFLATED, 31)
        # Unknown until this pass ends: an earlier, cut pass's digest must not be used.
        self.digest = Digest("")
        self.size = 0
        read = 0
        total = self._layer.size()

        def deflate(data: bytes, final: bool) -> bytes:
            out = compressor.compress(data) + (compressor.flush() if final else b"")
            hasher.update(out)
            return out

        try:
            async for piece in self._layer.open():
                read += len(piece)
                out = await anyio.to_thread.run_sync(deflate, piece, False)
                self.size += len(out)
                self._progress.update(Message("Pushing", self._layer_id, read, total))
                if out:
                    yield out
            out = await anyio.to_thread.run_sync(deflate, b"", True)
            self.size += len(out)
            self.digest = Digest("sha256:" + hasher.hexdigest())
            yield out
        finally:
            self._counted(self.size)
