"""Blob GETs sent ahead of their transfers, while the image config is fetched.

A layer's transfer needs its DiffID, which only the image config gives: waiting for the
config before asking for any layer costs a pull one round trip to the registry more.
The GETs of layers that will surely be downloaded (and are small enough: a big one is
read by its transfer in a worker thread, into its sink) are sent while the config is
on its way; the transfer that then wants such a blob from its first byte takes the
answer as it stands (still one GET per blob), and those no transfer took are let go
when the pull ends. An answer waits unread meanwhile: TCP holds the rest of its body
back.
"""

from __future__ import annotations

from collections.abc import AsyncIterator, Callable
from contextlib import asynccontextmanager
from dataclasses import dataclass, field

import anyio
import structlog
from anyio.abc import TaskGroup

from ferryd.distribution.context import BlobFetcher
from ferryd.oci.digest import Digest
from ferryd.registry.client import OpenBlob

log = structlog.get_logger("ferryd.transfers")


@dataclass(eq=False)
class _Sent:
    """One GET sent ahead: its answer, once it came, held until a transfer is done."""

    ready: anyio.Event = field(default_factory=anyio.Event)
    released: anyio.Event = field(default_factory=anyio.Event)
    scope: anyio.CancelScope = field(default_factory=anyio.CancelScope)
    blob: OpenBlob | None = None
    error: Exception | None = None  # what the GET met: the transfer's first attempt's
    taken: bool = False


class SentAhead:
    """The blob GETs sent ahead and not yet taken, by digest."""

    def __init__(self, task_group: TaskGroup) -> None:
        self._task_group = task_group  # the download manager's: it outlives every pull
        self._sent: dict[Digest, _Sent] = {}

    def __contains__(self, digest: object) -> bool:
        return digest in self._sent

    def send(
        self, fetcher: BlobFetcher, wanted: list[tuple[Digest, int | None]], connections: int
    ) -> Callable[[], None]:
        """Send the GET of each blob of `wanted` (a digest, and the size of a small blob
        to be read whole: `RegistryClient.open_blob`) not sent already, and open
        `connections` more for the transfers to come: behind latency a new connection
        costs a round trip, which then overlaps the config's. Returns what lets go of
        the answers no transfer has taken (call it when the pull ends)."""
        if connections > 0:
            self._task_group.start_soon(self._open, fetcher, connections)
        mine: list[tuple[Digest, _Sent]] = []
        for digest, whole in wanted:
            if digest in self._sent:
                continue
            sent = self._sent[digest] = _Sent()
            mine.append((digest, sent))
            self._task_group.start_soon(self._hold, fetcher, digest, whole, sent)

        def let_go() -> None:
            for digest, sent in mine:
                if not sent.taken:
                    self._forget(digest, sent)
                    sent.scope.cancel()

        return let_go

    async def _open(self, fetcher: BlobFetcher, connections: int) -> None:
        try:
            await fetcher.open_connections(connections)
        except Exception as exc:  # the transfers' own requests meet it and say what it is
            log.debug("registry.connections_not_opened", error=str(exc))

    async def _hold(
        self, fetcher: BlobFetcher, digest: Digest, whole: int | None, sent: _Sent
    ) -> None:
        with sent.scope:
            try:
                async with fetcher.open_blob(digest, 0, whole=whole) as blob:
                    sent.blob = blob
                    sent.ready.set()
                    await sent.released.wait()
            except Exception as exc:  # the taker's first attempt fails with it
                sent.error = exc
        sent.blob = None
        sent.ready.set()
        if sent.error is None:  # an error waits for its taker, or for `let_go`
            self._forget(digest, sent)

    def _forget(self, digest: Digest, sent: _Sent) -> None:
        if self._sent.get(digest) is sent:
            del self._sent[digest]

    @asynccontextmanager
    async def open_blob(
        self,
        fetcher: BlobFetcher,
        digest: Digest,
        offset: int,
        whole: int | None = None,
        keep: Callable[[bytes], object] | None = None,
        into: Callable[[bytes], None] | None = None,
    ) -> AsyncIterator[OpenBlob]:
        """`fetcher.open_blob(digest, offset, whole=whole, keep=keep, into=into)`, or the
        answer sent ahead for it (read before `keep` and `into` were known: neither took
        it)."""
        sent = self._sent.get(digest)
        if sent is not None and offset == 0 and not sent.taken:
            sent.taken = True
            self._forget(digest, sent)
            await sent.ready.wait()
            if sent.error is not None:
                # As if this attempt had sent it: retried, logged and counted as such.
                raise sent.error
            if sent.blob is not None:
                try:
                    yield sent.blob
                finally:
                    sent.released.set()
                return
        async with fetcher.open_blob(digest, offset, whole=whole, keep=keep, into=into) as blob:
            yield blob
