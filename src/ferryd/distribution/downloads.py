"""The download manager: moby's RootFSDownloadManager, over the store and a transfer pool.

Layers download concurrently (at most `max_concurrent` at once) and register in chain
order. A blob wanted by several pulls at once is one `Transfer` that all of them watch;
it is cancelled only when the last of them goes away, and its partial file stays for the
next attempt to resume from.
"""

from __future__ import annotations

import asyncio
import time
from collections import OrderedDict
from collections.abc import AsyncGenerator, AsyncIterator, Callable, Sequence
from contextlib import aclosing, asynccontextmanager
from dataclasses import dataclass, field, replace
from typing import cast

import anyio
import structlog
from anyio.abc import TaskGroup

from ferryd.codec import BATCH_SIZE, LayerSink, read_layer
from ferryd.concurrency import single_errors
from ferryd.distribution.ahead import SentAhead
from ferryd.distribution.context import BlobFetcher, DownloadDescriptor, DownloadStats
from ferryd.distribution.progress import UPDATE_INTERVAL, Broadcast, Message, ProgressOutput
from ferryd.distribution.transfers import RetryPolicy, TransferPool, TransferState, with_retries
from ferryd.errors import (
    ContentError,
    DiffIDMismatchError,
    DigestMismatchError,
    FerrydError,
    ManifestError,
    RangeNotSatisfiableError,
    RegistryProtocolError,
    TransientRegistryError,
)
from ferryd.metrics import Metrics
from ferryd.oci.digest import Digest, chain_ids, short_id
from ferryd.oci.image_config import RootFS
from ferryd.oci.manifest import Descriptor
from ferryd.registry.blocking import Kept
from ferryd.registry.client import ReadBlob
from ferryd.store.blobs import BlobStore
from ferryd.store.layers import Layer, LayerStore
from ferryd.store.metadata import V2Metadata, V2MetadataStore

log = structlog.get_logger("ferryd.transfers")


@dataclass(frozen=True, slots=True)
class BlobInfo:
    """A verified blob in the store and what it holds."""

    digest: Digest
    diff_id: Digest
    size: int
    uncompressed_size: int
    fetched: bool
    transferred: int = 0  # bytes this pull's transfer received over the network
    resumed: int = 0  # bytes it took from a partial file an earlier attempt left


class DownloadManager:
    def __init__(
        self,
        blobs: BlobStore,
        layers: LayerStore,
        metadata: V2MetadataStore,
        task_group: TaskGroup,
        *,
        max_concurrent: int = 3,
        max_attempts: int = 5,
        retry_delay: float = 5.0,
        max_retry_after: float = 60.0,
        slow_after: float | None = None,
        metrics: Metrics | None = None,
    ) -> None:
        self._blobs = blobs
        self._layers = layers
        self._metadata = metadata
        self._metrics = metrics
        self.retries = RetryPolicy(max_attempts, retry_delay, max_retry_after, metrics=metrics)
        self._transfers: TransferPool[tuple[Digest, Digest], BlobInfo] = TransferPool(
            task_group, max_concurrent, "download", slow_after=slow_after, metrics=metrics
        )
        self._max_concurrent = max_concurrent
        self._ahead = SentAhead(task_group)
        # Transfers are per (digest, DiffID), partial files per digest: two transfers of
        # one blob (two configs that disagree on its DiffID) must take turns on the file.
        self._partial_locks: dict[Digest, anyio.Lock] = {}
        # Blobs a transfer has committed whose layer is not registered yet (it waits for
        # the layers below it): a pull that starts now takes them from here.
        self._committed: dict[Digest, BlobInfo] = {}
        # Image configs being fetched, and the latest fetched (content-addressed, so
        # never stale; bounded in bytes): pulls of one image at once fetch it once.
        self._configs: dict[Digest, _Shared] = {}
        self._recent_configs: OrderedDict[Digest, bytes] = OrderedDict()

    @property
    def active(self) -> int:
        return self._transfers.active

    def states(self) -> list[TransferState]:
        return self._transfers.states()

    async def download(
        self,
        fetcher: BlobFetcher,
        initial: RootFS,
        os: str,
        layers: list[DownloadDescriptor],
        progress: ProgressOutput,
        stats: DownloadStats | None = None,
    ) -> tuple[RootFS, Callable[[], None]]:
        """Bring every layer into the store on top of `initial`; return the rootfs and a
        function that releases the holds on its layers (call it once the image is stored).
        """
        stats = stats if stats is not None else DownloadStats()
        diff_ids = list(initial.diff_ids)
        chains = chain_ids(diff_ids + [d.diff_id for d in layers])[len(diff_ids) :]
        held: list[Digest] = []

        def release() -> None:
            for chain in held:
                self._layers.holds.release(chain)
            held.clear()

        pinned: list[Digest] = []  # blobs chosen, kept from removal until registered
        try:
            wanted: dict[int, DownloadDescriptor] = {}
            for index, (layer, chain) in enumerate(zip(layers, chains, strict=True)):
                # Hold first, then look: a removal between the two cannot take it. The
                # layer is there only with the blob this manifest names: another blob of
                # its DiffID (another compression) would not let a push send this one.
                self._layers.holds.acquire(chain)
                if self._layers.has_blob(chain, Digest(layer.descriptor.digest)):
                    held.append(chain)
                    progress.write(Message("Already exists", short_id(layer.descriptor.digest)))
                    stats.reused += 1
                else:
                    self._layers.holds.release(chain)
                    wanted[index] = layer
                    progress.write(Message("Pulling fs layer", short_id(layer.descriptor.digest)))
            for layer in wanted.values():
                pinned.append(Digest(layer.descriptor.digest))
                self._blobs.pins.acquire(pinned[-1])
            results: dict[int, BlobInfo] = {}
            with single_errors():
                async with anyio.create_task_group() as tg:
                    for index, layer in wanted.items():
                        tg.start_soon(self._fetch_one, fetcher, layer, progress, results, index)
            # Every blob is in the store: register their layers in chain order (a layer
            # needs its parent), all in one transaction after one directory fsync.
            todo = [
                (chains[index - 1] if index > 0 else _top(diff_ids), wanted[index], results[index])
                for index in sorted(wanted)
            ]
            held += await anyio.to_thread.run_sync(self._register_all, todo)
            for _, layer, info in todo:
                if info.fetched and info.digest not in stats.counted:
                    stats.counted.add(info.digest)
                    stats.fetched += 1
                    stats.bytes += info.transferred
                else:
                    stats.reused += 1
                progress.write(Message("Pull complete", short_id(layer.descriptor.digest)))
        except BaseException:
            release()
            raise
        finally:
            for digest in pinned:
                self._blobs.pins.release(digest)
        return RootFS(diff_ids + [d.diff_id for d in layers]), release

    def _register_all(
        self, todo: list[tuple[Digest | None, DownloadDescriptor, BlobInfo]]
    ) -> list[Digest]:
        """Register each layer on its parent, in order; return their (held) ChainIDs."""
        # The blobs' names are durable before a row names them.
        self._blobs.sync(info.digest for _, _, info in todo)
        with self._layers.transaction():
            return [self._register(*item).chain_id for item in todo]

    def _register(self, parent: Digest | None, layer: DownloadDescriptor, info: BlobInfo) -> Layer:
        self._committed.pop(info.digest, None)
        registered = self._layers.register(
            parent,
            info.diff_id,
            info.digest,
            layer.descriptor.mediaType,
            info.size,
            info.uncompressed_size,
            layer.descriptor.urls or (),
        )
        self._metadata.add(info.diff_id, V2Metadata(info.digest, layer.registry, layer.repository))
        return registered

    async def _fetch_one(
        self,
        fetcher: BlobFetcher,
        layer: DownloadDescriptor,
        progress: ProgressOutput,
        results: dict[int, BlobInfo],
        index: int,
    ) -> None:
        results[index] = await self.blob(fetcher, layer, progress)

    async def config(self, fetcher: BlobFetcher, digest: Digest, limit: int) -> bytes:
        """An image config, fetched once however many pulls want it at the same time
        (a pull whose fetch failed leaves the next to try on its own)."""
        recent = self._recent_configs.get(digest)
        if recent is not None:
            return recent
        shared = self._configs.get(digest)
        if shared is not None:
            await shared.done.wait()
            if shared.result is not None:
                return shared.result
        shared = self._configs[digest] = _Shared()
        try:
            shared.result = await fetcher.get_blob(digest, limit, f"image config {digest}")
            self._remember_config(digest, shared.result)
            return shared.result
        finally:
            shared.done.set()
            if self._configs.get(digest) is shared:
                del self._configs[digest]

    def _remember_config(self, digest: Digest, raw: bytes) -> None:
        self._recent_configs[digest] = raw
        while sum(map(len, self._recent_configs.values())) > _RECENT_CONFIG_BYTES:
            self._recent_configs.popitem(last=False)

    @asynccontextmanager
    async def sending_ahead(
        self, fetcher: BlobFetcher, layers: Sequence[Descriptor]
    ) -> AsyncIterator[None]:
        """While the block runs (the image config is fetched, then the layers): the GETs
        of the first layers (as many as download at once) whose blobs are nowhere here
        (no layer, blob, partial file or transfer of theirs) are sent, for their transfers
        to take (see `ahead`), but for the bigger ones the fetcher reads in worker
        threads, whose connections are opened instead; the answers no transfer took are
        let go at its end."""
        let_go = await self._send_ahead(fetcher, layers)
        try:
            yield
        finally:
            let_go()

    async def _send_ahead(
        self, fetcher: BlobFetcher, layers: Sequence[Descriptor]
    ) -> Callable[[], None]:
        # What memory knows first, then the database and the disk in one worker call,
        # then memory again: a transfer that started meanwhile (another platform's pull
        # of the same layer) has sent its own GET.
        known = self._on_its_way()
        wanted: dict[Digest, int] = {}  # digest: size
        for layer in layers:
            digest = Digest(layer.digest)
            if (
                layer.urls  # a foreign layer: whether to fetch it is decided later
                or digest in wanted
                or digest in self._ahead
                or digest in known
            ):
                continue
            wanted[digest] = layer.size
        if not wanted:
            return lambda: None

        def nowhere() -> list[Digest]:
            return [
                digest
                for digest in wanted
                if self._layers.by_blob(digest) is None and self._not_on_disk(digest)
            ]

        fresh = await anyio.to_thread.run_sync(nowhere)
        known = self._on_its_way()
        # Of the layers that download first, a small blob is read whole meanwhile, over
        # the connections its transfer would use (`_fetch`); one of up to SMALL_BLOB is
        # sent and waits unread. A bigger one, where its transfer reads it in a worker
        # thread, into its sink, is not sent: an answer sent ahead (streamed through the
        # async client, as its taker was not known yet) would not let it (5-layer pull
        # -8 % wall, -9 % CPU, 6 of 6 pairs); its connection is opened meanwhile
        # instead: behind latency, its handshake overlaps the config's.
        first = [digest for digest in fresh if digest not in known][: self._max_concurrent]
        in_worker = fetcher.reads_in_worker()
        sent = [
            (digest, _whole(wanted[digest], AHEAD_WHOLE))
            for digest in first
            if wanted[digest] <= SMALL_BLOB or not in_worker
        ]
        return self._ahead.send(fetcher, sent, len(first) - len(sent))

    def _not_on_disk(self, digest: Digest) -> bool:
        """Neither the blob nor a partial file of it is in the store (two stats)."""
        return not self._blobs.has(digest) and not self._blobs.partial_path(digest).exists()

    def _on_its_way(self) -> set[Digest]:
        """The blobs a running transfer fetches (it holds the partial file) or one has
        committed, as far as memory knows."""
        return {digest for digest, _ in self._transfers.running()} | self._committed.keys()

    async def blob(
        self, fetcher: BlobFetcher, layer: DownloadDescriptor, progress: ProgressOutput
    ) -> BlobInfo:
        """The verified blob for `layer`, from the store or from a (shared) transfer."""
        digest = Digest(layer.descriptor.digest)
        known = self._layers.by_blob(digest)
        stored: BlobInfo | None = None
        if known is not None:
            stored = BlobInfo(digest, known.diff_id, known.compressed_size, known.size, False)
        else:
            stored = self._committed.get(digest)
        if stored is not None and self._blobs.has(digest):
            if stored.diff_id != layer.diff_id:
                raise DiffIDMismatchError(
                    f"layer {digest} has DiffID {stored.diff_id}, "
                    f"but the image config says {layer.diff_id}"
                )
            return replace(stored, fetched=False, transferred=0, resumed=0)

        async def fetch(progress: Broadcast) -> BlobInfo:
            async with self._partial_file(digest):
                return await self._fetch_with_retries(fetcher, layer, progress)

        return await self._transfers.join(
            (digest, layer.diff_id),
            progress,
            fetch,
            name=f"{layer.registry}/{layer.repository}@{digest}",
            progress_id=short_id(digest),
        )

    @asynccontextmanager
    async def _partial_file(self, digest: Digest) -> AsyncIterator[None]:
        """Hold the partial file of `digest`: one transfer at a time writes it."""
        lock = self._partial_locks.setdefault(digest, anyio.Lock())
        try:
            async with lock:
                yield
        finally:
            if not lock.locked() and lock.statistics().tasks_waiting == 0:
                self._partial_locks.pop(digest, None)

    async def _fetch_with_retries(
        self, fetcher: BlobFetcher, layer: DownloadDescriptor, progress: Broadcast
    ) -> BlobInfo:
        digest = Digest(layer.descriptor.digest)
        layer_id = short_id(digest)
        small = layer.descriptor.size <= SMALL_BLOB
        sink = LayerSink(self._blobs.partial_path(digest), digest, small=small)
        tally = _Tally()

        def open_unless_stored() -> bool:
            """Whether the blob is stored already; if not, its partial file is opened.
            One worker call for both: a thread hop costs ~75 us of CPU, ~2 ms a pull of
            24 layers."""
            if self._blobs.has(digest):
                return True
            tally.resumed = sink.open()
            return False

        stored = False
        try:
            # A small blob with nothing of it on disk has its file opened by the worker
            # call that first writes it (`_open_if_closed`): a hop less, ~0.2 ms a layer.
            if not (small and self._not_on_disk(digest)):
                stored = await anyio.to_thread.run_sync(open_unless_stored)
            if stored:
                # Stored, but no layer stands on it (a pull failed before registering
                # it): read it back from disk instead of fetching it again.
                return await self._verify_stored(layer, progress)
            return await with_retries(
                lambda: self._fetch(fetcher, layer, sink, progress, tally),
                policy=self.retries,
                progress=progress,
                progress_id=layer_id,
                name=digest,
            )
        except (ContentError, RangeNotSatisfiableError):
            if stored:  # the stored blob's own check failed: no partial file is open
                raise
            # Retrying the same bytes cannot help, and they must never be resumed.
            if sink.is_open:
                await anyio.to_thread.run_sync(sink.restart)
            await anyio.to_thread.run_sync(self._blobs.discard_partial, digest)
            raise
        finally:
            # Every byte received, whether the transfer succeeded or not: once per
            # transfer, not per chunk.
            if self._metrics is not None and not stored:
                self._metrics.moved("download", tally.received)

            # Off the loop (closing waits for the DiffID hash thread), and shielded: a
            # cancelled transfer must still close its file.
            def close() -> None:
                sink.close()
                self._blobs.discard_partial_if_empty(digest)

            if sink.is_open:  # a committed blob's sink closed in the hop that moved it
                with anyio.CancelScope(shield=True):
                    await anyio.to_thread.run_sync(close)

    async def _fetch(
        self,
        fetcher: BlobFetcher,
        layer: DownloadDescriptor,
        sink: LayerSink,
        progress: Broadcast,
        tally: _Tally,
    ) -> BlobInfo:
        digest = Digest(layer.descriptor.digest)
        size = layer.descriptor.size
        layer_id = short_id(digest)
        if sink.offset > size:
            await anyio.to_thread.run_sync(sink.restart)
            tally.resumed = 0
        resumed = sink.offset > 0

        def verify_and_commit(rest: bytes) -> Digest:
            """One worker call: what is left to write, fsync, the blob digest, the DiffID,
            into the store, the file closed. For a small blob read whole from byte 0, the
            call that read it (`keep`): no thread hop of its own."""
            _open_if_closed(sink)  # a small blob's, at its first write
            if rest:
                sink.write(rest)
            diff_id = sink.finish()
            if diff_id != layer.diff_id:
                raise DiffIDMismatchError(
                    f"layer {digest} uncompresses to DiffID {diff_id}, "
                    f"but the image config says {layer.diff_id}"
                )
            self._blobs.commit_partial(digest, sync_dir=False)
            sink.close()
            return diff_id

        rest = b""  # a small blob's bytes, written by the worker call that verifies them
        kept: Kept | None = None  # that call's outcome, when it was the read's own
        if sink.offset < size or size == 0:
            start = sink.offset
            # From byte 0, read in a worker: a small blob whole, a big one into the sink.
            keep = into = None
            if start == 0 and size <= SMALL_BLOB:
                keep = verify_and_commit
            elif start == 0 and not tally.lost_in_worker:
                into = _feeding(sink, size, layer_id, progress, tally)
            whole = size if keep is not None or into is not None else None
            opened = self._ahead.open_blob(fetcher, digest, start, whole, keep, into)
            async with opened as blob:
                kept = blob.kept if isinstance(blob, ReadBlob) else None
                if kept is not None:  # written and verified by the call that read it
                    tally.received += size
                    progress.update(Message("Downloading", layer_id, size, size))
                elif isinstance(blob, ReadBlob) and blob.streamed:  # into the sink already
                    # Cut before a whole MiB came, and so lost: the next attempt reads the
                    # way that keeps every byte, or a link that never carries a MiB would
                    # never get past byte 0.
                    tally.lost_in_worker = blob.cut is not None and sink.offset == 0
                    progress.update(Message("Downloading", layer_id, sink.offset, size))
                    await _pump(blob.chunks(), sink, size, layer_id, progress, tally)
                else:
                    if blob.start == 0 and sink.offset:
                        await anyio.to_thread.run_sync(sink.restart)  # Range was ignored
                        resumed, tally.resumed, start = False, 0, 0
                    if size - start <= SMALL_BLOB:
                        rest = await _take_whole(blob.chunks(), sink, size, tally)
                        current = sink.offset + len(rest)
                        progress.update(Message("Downloading", layer_id, current, size))
                    else:
                        await _pump(blob.chunks(), sink, size, layer_id, progress, tally)
            if kept is None and sink.offset + len(rest) < size:
                # The answer ended cleanly (a cut raises in _pump) but short.
                await self._short(sink, size, received=sink.offset - start)
        progress.write(Message("Verifying Checksum", layer_id))

        try:
            if kept is not None:
                diff_id = cast(Digest, kept.result())
            else:
                diff_id = await anyio.to_thread.run_sync(verify_and_commit, rest)
        except DigestMismatchError as exc:
            if not resumed:
                raise
            # The kept part may be what is wrong: once, start over from byte 0.
            log.warning("transfer.restart", name=digest, error=str(exc))
            await anyio.to_thread.run_sync(sink.restart)
            tally.resumed = 0
            return await self._fetch(fetcher, layer, sink, progress, tally)
        progress.write(Message("Download complete", layer_id))
        info = BlobInfo(
            digest,
            diff_id,
            size,
            sink.uncompressed_size,
            fetched=True,
            transferred=tally.received,
            resumed=tally.resumed,
        )
        self._committed[digest] = info
        return info

    async def _short(self, sink: LayerSink, size: int, *, received: int) -> None:
        """A blob answer that ended before `size` bytes: worth another attempt only when
        it may have been cut; a registry that says it is done says so every time."""
        digest = sink.expected
        if received == 0:
            raise RegistryProtocolError(
                f"blob {digest}: the registry answered with an empty body for a blob the "
                f"manifest gives {size} bytes"
            )
        if await anyio.to_thread.run_sync(sink.digest_so_far) == digest:
            raise ManifestError(
                f"blob {digest}: its {sink.offset} bytes are the whole blob (they hash to its "
                f"digest), but the manifest says it has {size}: the manifest is wrong"
            )
        raise TransientRegistryError(
            f"blob {digest}: the registry sent {sink.offset} of {size} bytes"
        )

    async def _verify_stored(self, layer: DownloadDescriptor, progress: Broadcast) -> BlobInfo:
        digest = Digest(layer.descriptor.digest)
        progress.write(Message("Verifying Checksum", short_id(digest)))
        diff_id, size = await anyio.to_thread.run_sync(read_layer, self._blobs.path(digest), digest)
        if diff_id != layer.diff_id:
            raise DiffIDMismatchError(
                f"layer {digest} uncompresses to DiffID {diff_id}, "
                f"but the image config says {layer.diff_id}"
            )
        info = BlobInfo(digest, diff_id, layer.descriptor.size, size, fetched=False)
        self._committed[digest] = info
        return info


_RECENT_CONFIG_BYTES = 4 << 20  # configs are a few KB: this keeps hundreds


@dataclass
class _Shared:
    """A small fetch that several pulls wait on."""

    done: anyio.Event = field(default_factory=anyio.Event)
    result: bytes | None = None


@dataclass
class _Tally:
    """A transfer's bytes: received over the network, and resumed from a partial file."""

    resumed: int = 0
    received: int = 0
    lost_in_worker: bool = False  # a worker's read was cut before it had a MiB to keep


# Up to this much left to fetch, a blob is taken in one batch and written, hashed and
# inflated in one worker call: the two-stage pipeline's tasks and hops cost a small
# layer more than they save. 4 MiB rather than 2: a new daemon's 24-layer pull (three
# layers of 2-3.5 MB) -3.4 % wall, -2.4 % CPU (7 and 9 of 10 pairs), the 3-platform
# index (2.0 MB layers) unchanged; at 5 MiB its 4.8 MB layers lost their pipelining
# (+3.6 % wall, 5 of 16 pairs faster).
SMALL_BLOB = 4 * BATCH_SIZE


# A GET sent ahead holds its body until its transfer takes it (the config may take a
# while), and every pull at once sends its own: read whole only up to this, as before
# the transfers' own limit went to 4 MiB; a bigger answer waits unread in its socket.
AHEAD_WHOLE = 2 * BATCH_SIZE


def _whole(size: int, limit: int = SMALL_BLOB) -> int | None:
    """A small blob's size: it is read whole in a worker thread (`open_blob`)."""
    return size if size <= limit else None


async def _counted(
    chunks: AsyncIterator[bytes], held: int, size: int, tally: _Tally
) -> AsyncGenerator[bytes, None]:
    """The answer's chunks, counted as they arrive (with the `held` bytes a resumed
    download already has), up to the descriptor's `size` (`_check_within`)."""
    received = held
    async for chunk in chunks:
        received += len(chunk)
        tally.received += len(chunk)
        _check_within(received, size)
        yield chunk


def _check_within(received: int, size: int) -> None:
    """Past the descriptor's `size` the registry is lying: the download stops there
    rather than store what no digest can match."""
    if received > size:
        raise DigestMismatchError(
            f"the registry sent more than the {size} bytes the manifest gives"
        )


async def _take_whole(
    chunks: AsyncIterator[bytes], sink: LayerSink, size: int, tally: _Tally
) -> bytes:
    """The rest of a small blob in one batch: returned whole for the caller's worker
    call to write and verify at once; what arrived before a cut, or before an answer
    that ended short, is written here, so that the next attempt resumes after it."""
    pending: list[bytes] = []
    cut: FerrydError | None = None
    try:
        async with aclosing(_counted(chunks, sink.offset, size, tally)) as counted:
            async for chunk in counted:
                pending.append(chunk)  # noqa: PERF401 - kept when a cut ends the loop
    except FerrydError as exc:
        if not exc.retryable:
            raise
        cut = exc
    if cut is None and sink.offset + sum(map(len, pending)) == size:
        return b"".join(pending)
    if pending:
        batch = b"".join(pending)

        def write_what_came() -> None:
            _open_if_closed(sink)
            sink.write(batch)

        await anyio.to_thread.run_sync(write_what_came)
    if cut is not None:
        raise cut
    return b""


def _feeding(
    sink: LayerSink, size: int, layer_id: str, progress: Broadcast, tally: _Tally
) -> Callable[[bytes], None]:
    """What takes a big blob's batches in the worker thread that reads them
    (`open_blob(into=…)`): each is counted (`_check_within`), hashed and handed to the
    sink's writer and inflate threads (`LayerSink.pipe`); the progress goes to the event
    loop no more often than clients see it (`Broadcast.update`): each costs the loop a
    wakeup."""
    loop = asyncio.get_running_loop()
    reported = 0.0

    def feed(batch: bytes) -> None:
        nonlocal reported
        tally.received += len(batch)
        _check_within(sink.offset + len(batch), size)
        sink.pipe((batch,))
        now = time.monotonic()
        if now - reported >= UPDATE_INTERVAL:
            reported = now
            message = Message("Downloading", layer_id, sink.offset, size)
            loop.call_soon_threadsafe(progress.update, message)

    return feed


def _open_if_closed(sink: LayerSink) -> None:
    """A small blob's partial file, opened by the worker call that first writes it: its
    transfer found nothing of it on disk (`_not_on_disk`), under the partial file's lock,
    so it opens empty."""
    if not sink.is_open:
        sink.open()


async def _pump(
    chunks: AsyncIterator[bytes],
    sink: LayerSink,
    size: int,
    layer_id: str,
    progress: Broadcast,
    tally: _Tally,
) -> None:
    """Move the response into the sink through worker-thread stages.

    The loop gathers ~1 MiB batches; a worker call hashes each batch and hands it to
    the sink's writer thread and its inflate thread, which write and inflate the one
    before it, so a single layer keeps two cores busy.
    """

    # One batch at most waits in front of the inflate thread, and one in front of the
    # writer thread: a layer holds three at most (the two threads share them). While
    # the worker call runs, the next batch waits in the socket, not in a task of the
    # loop: that task's hand-overs cost more than the overlap gave (5-layer image: 3 %
    # less wall time, 2.5 % less CPU, 5 MiB less peak RSS; 12 A/B pairs).
    # Handing the batch to the inflate thread directly, not through a task of the loop
    # and a second worker call, took a 1 GiB layer's pull 13 % less time and 5 % less
    # CPU (6 pairs).
    async def store(batch: list[bytes]) -> None:
        await anyio.to_thread.run_sync(sink.pipe, batch)
        progress.update(Message("Downloading", layer_id, sink.offset, size))

    cut: FerrydError | None = None
    pending: list[bytes] = []
    pending_size = 0
    try:
        async with aclosing(_counted(chunks, sink.offset, size, tally)) as counted:
            async for chunk in counted:
                pending.append(chunk)
                pending_size += len(chunk)
                if pending_size >= BATCH_SIZE:
                    # Handed over as they came (`pipe`), and let go of after it.
                    batch, pending, pending_size = pending, [], 0
                    await store(batch)
                    del batch
    except FerrydError as exc:
        if not exc.retryable:
            raise
        # A cut or stalled connection: write what did arrive, so that the next
        # attempt resumes after it instead of fetching it again.
        cut = exc
    if pending:
        await store(pending)
    if cut is not None or sink.offset < size:
        # A cut, or an answer that ended short: the next attempt asks for what comes
        # after `offset`, which must be in the file first, and a write the disk refused
        # meanwhile is the truer error (no retry mends it).
        await anyio.to_thread.run_sync(sink.settle)
    if cut is not None:
        raise cut


def _top(diff_ids: list[Digest]) -> Digest | None:
    chains = chain_ids(diff_ids)
    return chains[-1] if chains else None
