"""The byte pipeline: write and hash a layer blob, decompress it and hash the result.

A `LayerSink` takes batches of about 1 MiB in two stages (`store`: write + blob hash;
`inflate`: decompress + DiffID hash, the hash itself in a third thread). `pipe` runs the
first in the worker thread that calls it and hands the batch to the sink's own inflate
thread. sha256 (OpenSSL), inflate (isal) and zstd all release the GIL, so one layer
keeps more than one core busy while the event loop only moves bytes.
"""

from __future__ import annotations

import bz2
import contextlib
import errno
import hashlib
import lzma
import os
import queue
import threading
from collections import deque
from collections.abc import Callable, Iterator, Sequence
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from typing import Any, BinaryIO, Protocol, cast

from backports import zstd
from isal import igzip_lib

from ferryd.blobfile import BlobFile, read_pieces
from ferryd.errors import ContentError, DigestMismatchError, disk_errors
from ferryd.oci.digest import Digest, algorithm_of, new_hasher
from ferryd.oci.mediatypes import Compression

BATCH_SIZE = 1 << 20
# Decompressed output is hashed in pieces of at most this size, so a small blob that
# inflates hugely never becomes one huge buffer.
_MAX_OUTPUT = 1 << 20
_HASH_AHEAD = 4
_GZIP_MAGIC = b"\x1f\x8b"
_ZSTD_MAGIC = b"\x28\xb5\x2f\xfd"
_XZ_MAGIC = b"\xfd7zXZ\x00"
_BZIP2_MAGIC = b"BZh"


def detect_compression(head: bytes) -> Compression:
    """Tell the compression from the first bytes, as docker does (media types can lie)."""
    if head.startswith(_GZIP_MAGIC):
        return Compression.GZIP
    if head.startswith(_ZSTD_MAGIC):
        return Compression.ZSTD
    return Compression.NONE


class Inflater(Protocol):
    def feed(self, data: bytes) -> Iterator[bytes]: ...
    def finish(self) -> None: ...


class _Plain:
    def feed(self, data: bytes) -> Iterator[bytes]:
        yield data

    def finish(self) -> None:
        return None


class _Members:
    """Concatenated gzip members, zstd frames or xz and bzip2 streams, as `gzip -c a b`
    writes and Go's reader accepts: when one ends, what follows starts the next."""

    name = ""
    _errors: tuple[type[Exception], ...] = ()

    def __init__(self, what: str = "layer") -> None:
        self._what = what  # what the errors name: a layer, an HTTP answer
        self._d = self._new()
        self._started = False

    def _new(self) -> Any:
        raise NotImplementedError

    def feed(self, data: bytes) -> Iterator[bytes]:
        if not data:  # nothing new; an ended decompressor may raise on empty input
            return
        while True:
            # A member ended (possibly at the end of the previous batch): what follows
            # starts the next one.
            if self._d.eof and data:
                self._d = self._new()
            try:
                out = self._d.decompress(data, _MAX_OUTPUT)
            except self._errors as exc:
                raise ContentError(f"{self._what} is not valid {self.name}: {exc}") from None
            self._started = True
            if out:
                yield out
            if self._d.eof:
                data = self._d.unused_data
                if not data:
                    return
            elif self._d.needs_input:
                return
            else:  # stopped at _MAX_OUTPUT: it keeps the rest of its input; ask again
                data = b""

    def finish(self) -> None:
        if self._started and not self._d.eof:
            raise ContentError(f"{self._what} is truncated: the {self.name} stream does not end")


class _Gzip(_Members):
    name = "gzip"
    _errors = (cast(type[Exception], igzip_lib.IsalError),)  # an instance, say the stubs

    def _new(self) -> Any:
        # Not isal's zlib-like decompressobj: given a max_length, that one hands back
        # the input it has not consumed as a new bytes object (`unconsumed_tail`), a copy
        # of the rest of the batch at every piece of output, and builds each piece in
        # growing blocks joined at the end. The 24-layer pull -14 % wall, -13 % CPU
        # (8 and 7 of 8 pairs), the 5-layer -6 % wall, -2 to -7 % CPU (6 of 6, twice).
        return igzip_lib.IgzipDecompressor(flag=igzip_lib.DECOMP_GZIP)


class _Zstd(_Members):
    name = "zstd"
    _errors = (zstd.ZstdError,)

    def _new(self) -> Any:
        return zstd.ZstdDecompressor()


# The memory an xz stream may take to decompress. Its header chooses the dictionary size
# (up to 4 GiB), which liblzma allocates as the data asks for it: a few KiB could claim
# gigabytes. xz -9 needs 65 MiB; this is zstd's default window limit too.
XZ_MEMORY_LIMIT = 128 << 20


class _Xz(_Members):
    name = "xz"
    _errors = (lzma.LZMAError,)

    def _new(self) -> Any:
        return lzma.LZMADecompressor(lzma.FORMAT_XZ, memlimit=XZ_MEMORY_LIMIT)

    def feed(self, data: bytes) -> Iterator[bytes]:
        try:
            yield from super().feed(data)
        except ContentError as exc:
            # liblzma's LZMA_MEMLIMIT_ERROR ("Memory usage limit exceeded"): say why.
            if "memory usage limit" not in str(exc).lower():
                raise
            raise ContentError(
                f"{self._what} is not valid xz: it needs more than {XZ_MEMORY_LIMIT >> 20} MiB "
                "of memory to decompress (its dictionary is too large; xz -9 needs 65 MiB)"
            ) from None


class _Bzip2(_Members):
    name = "bzip2"
    _errors = (OSError, ValueError)  # "Invalid data stream"

    def _new(self) -> Any:
        return bz2.BZ2Decompressor()


def inflater(compression: Compression, what: str = "layer") -> Inflater:
    """A decompressor for `compression`; its errors say `what` is broken."""
    if compression is Compression.GZIP:
        return _Gzip(what)
    if compression is Compression.ZSTD:
        return _Zstd(what)
    return _Plain()


class _Inflating:
    """How many layers are inflating in threads of their own (`LayerSink.pipe`)."""

    def __init__(self) -> None:
        self._count = 0
        self._lock = threading.Lock()

    def add(self, step: int) -> None:
        with self._lock:
            self._count += step

    def others(self) -> bool:
        return self._count > 1


_inflating = _Inflating()


# Threads shared by every layer's DiffID hashing: a pool per layer cost a thread start
# and join per layer, which small layers felt.
_HASH_POOL = ThreadPoolExecutor(2, thread_name_prefix="ferryd-hash")


class _OrderedHasher:
    """sha256 fed from one thread and computed in another, in order.

    Inflating a batch and hashing its output are the two heaviest steps of a pull and
    both release the GIL: hashing the previous piece while the next one inflates keeps
    a second core busy. Pieces wait in a queue that one task of the shared pool drains
    in order; at most `_HASH_AHEAD` wait, so memory stays bounded.
    """

    def __init__(self, *, inline: bool = False) -> None:
        self._hasher = hashlib.sha256()
        # A small layer's pieces are hashed where they inflate: handing them over costs
        # more than the overlap saves.
        self._inline = inline
        self._queue: deque[bytes] = deque()
        self._draining = False
        self._changed = threading.Condition()

    def update(self, piece: bytes) -> None:
        # While other layers inflate too, both cores are busy without the overlap: the
        # hand-over would only cost. In order: nothing of this layer waits to be hashed.
        if self._inline or (_inflating.others() and not self._draining):
            self._hasher.update(piece)
            return
        with self._changed:
            while len(self._queue) >= _HASH_AHEAD:
                self._changed.wait()
            self._queue.append(piece)
            if not self._draining:
                self._draining = True
                _HASH_POOL.submit(self._drain_queue)

    def _drain_queue(self) -> None:
        while True:
            with self._changed:
                if not self._queue:
                    self._draining = False
                    self._changed.notify_all()
                    return
                piece = self._queue[0]
            self._hasher.update(piece)  # outside the lock: sha256 releases the GIL
            with self._changed:
                self._queue.popleft()
                self._changed.notify_all()

    def hexdigest(self) -> str:
        self._wait()
        return self._hasher.hexdigest()

    def _wait(self) -> None:
        with self._changed:
            while self._draining:
                self._changed.wait()

    def close(self) -> None:
        self._wait()


class _Behind:
    """Work done in a thread of its own, piece by piece in the order given, at most one
    batch behind the thread that gives it (which waits when it would be further ahead).

    Handing a batch from thread to thread costs one wakeup; through the event loop (a
    task awaiting a worker call per stage) it cost two more per MiB, and the loop's
    own turn.
    """

    def __init__(self, work: Callable[[bytes], None], name: str) -> None:
        self._work = work
        self._queue: queue.Queue[Sequence[bytes] | None] = queue.Queue(1)
        self._error: Exception | None = None
        self._thread = threading.Thread(target=self._run, name=name, daemon=True)
        self._thread.start()

    def put(self, pieces: Sequence[bytes]) -> None:
        """A batch, in the pieces it came in: each is worked on in turn."""
        self._queue.put(pieces)

    @property
    def failed(self) -> bool:
        """The work raised (`join` raises it); what is given from now on is dropped."""
        return self._error is not None

    def _run(self) -> None:
        while (pieces := self._queue.get()) is not None:
            try:
                for piece in pieces:
                    if self._error is None:
                        self._work(piece)
            except Exception as exc:  # raised in the thread that joins
                self._error = exc

    def join(self) -> None:
        """Wait for every batch given; raise what the work raised."""
        self._queue.put(None)
        self._thread.join()
        if self._error is not None:
            raise self._error


class LayerSink:
    """Writes a blob to `path`, hashing it and (optionally) its uncompressed content.

    The hash state describes the bytes taken, so a cut download resumes from `offset`;
    the file (a `BlobFile`) holds a prefix of them, so a
    restart resumes by reading it back. A disk's refusal is raised as the `StoreError`
    that says so (`StorageFullError`); the bytes that reached the file stay for a resume.
    """

    def __init__(
        self, path: Path, expected: Digest, *, diff_id: bool = True, small: bool = False
    ) -> None:
        self.path = path
        self.expected = expected
        self._want_diff_id = diff_id
        self._small = small  # a blob taken in one batch: everything in one thread
        self._file: BlobFile | None = None
        self._diff_hasher = _OrderedHasher(inline=small)
        self._behind: _Behind | None = None  # the inflate stage's thread, for `pipe`
        self._writer: _Behind | None = None  # the file's writes, for `pipe`
        self._write_error: Exception | None = None
        self._reset_state()

    def _reset_state(self) -> None:
        with contextlib.suppress(Exception):  # what it was doing is being forgotten
            self._join_behind()
        self._write_error = None
        self.offset = 0
        self.uncompressed_size = 0
        self._hasher = new_hasher(self.expected)
        self._diff_hasher.close()
        self._diff_hasher = _OrderedHasher(inline=self._small)
        self._inflater: Inflater | None = None
        self._pending = b""  # the first bytes, until there are enough to tell the format
        # A corrupt stream is reported only once the blob digest has been checked: a
        # wrong digest is the truer explanation of bad bytes.
        self._broken: ContentError | None = None

    def open(self) -> int:
        """Open the partial file, reading back what it holds; returns the resume offset.

        Opening again (after `close`) starts from the file, not from the state in memory.
        A partial file that cannot be the start of a layer (bytes that are not valid gzip
        or zstd) is emptied: the download starts again from 0.
        """
        self.close()
        self._reset_state()
        with disk_errors(self.path):
            self.path.parent.mkdir(parents=True, exist_ok=True)
            self._file = BlobFile(self.path)
            for batch in self._file.pieces(BATCH_SIZE):
                self.take_back(batch)
        if self._broken is not None:
            self.restart()
        return self.offset

    @property
    def is_open(self) -> bool:
        return self._file is not None

    def take_back(self, batch: bytes) -> None:
        """Count, hash and inflate bytes that are already on disk."""
        self._hasher.update(batch)
        self.offset += len(batch)
        self.inflate(batch)

    def digest_so_far(self) -> Digest:
        """The digest of the bytes taken so far (cheap: the running hash is copied)."""
        return Digest(f"{algorithm_of(self.expected)}:{self._hasher.copy().hexdigest()}")

    def restart(self) -> None:
        """Forget everything written: the registry will send the blob from its start."""
        assert self._file is not None
        with contextlib.suppress(Exception):  # the bytes it failed on are dropped too
            self._settle_writes()
        with disk_errors(self.path):
            self._file.truncate()
        self._reset_state()

    def write(self, batch: bytes) -> None:
        """Both stages at once: `store`, then `inflate`, after what `pipe` handed over
        (a resumed blob's small rest follows piped batches)."""
        self.store(batch)
        self._join_behind()
        self.inflate(batch)

    def store(self, batch: bytes) -> None:
        """Stage one: append to the file and hash the blob."""
        self._settle_writes()  # what `pipe` handed over goes first
        self._append(batch)
        self._hasher.update(batch)
        self.offset += len(batch)

    def _append(self, batch: bytes) -> None:
        assert self._file is not None
        with disk_errors(self.path):
            self._file.write(batch)

    def pipe(self, batch: Sequence[bytes]) -> None:
        """Hash now; append in the sink's writer thread and `inflate` in its inflate
        thread, each at most one batch behind: a layer keeps two cores busy, and a
        write (a copy into the page cache, which waits when the kernel holds back a
        writer) is not in front of the next batch. A write's failure is raised by the
        next `pipe`, or by what waits for the file (`settle`, `finish`, `store`),
        and again by each of them until the sink starts over (`restart`, `open`): the
        batches counted after the failed one never reached the file.

        The batch comes in the pieces the socket gave (~256 KiB each), not joined:
        joining cost the event loop a copy of every MiB, 16 % of its CPU in a pull of
        big layers, with the GIL held."""
        batch = tuple(batch)  # the threads read it after this returns
        if self._writer is None or self._writer.failed:
            self._settle_writes()  # raises a write's failure, met now or before
            self._writer = _Behind(self._append, "ferryd-write")
        self._writer.put(batch)
        for piece in batch:
            self._hasher.update(piece)
            self.offset += len(piece)
        if not self._want_diff_id or self._broken is not None:
            return
        if self._behind is None:
            self._behind = _Behind(self.inflate, "ferryd-inflate")
            _inflating.add(1)
        self._behind.put(batch)

    def settle(self) -> None:
        """Wait until every batch `pipe` handed over is in the file, so that `offset`
        counts what the file holds, and for the file's hand-over to the disk; raises a
        write's failure or the hand-over's (a cut download's next attempt asks for what
        comes after `offset`, and a full or failing disk is the truer error; a load moves
        the file into the store as it is, so what the disk refused must be known now)."""
        self._settle_writes()
        if self._file is not None:
            with disk_errors(self.path):
                self._file.settle()

    def _settle_writes(self) -> None:
        """Wait for the writer thread; raise a write's failure, met now or before. (The
        file's hand-over is the file's own to wait for or call off: `finish`, `close`,
        `truncate`.)"""
        writer, self._writer = self._writer, None
        if writer is not None:
            try:
                writer.join()
            except Exception as exc:
                self._write_error = exc
        if self._write_error is not None:
            raise self._write_error

    def _join_behind(self) -> None:
        behind, self._behind = self._behind, None
        if behind is not None:
            try:
                behind.join()
            finally:
                _inflating.add(-1)

    def inflate(self, batch: bytes) -> None:
        """Stage two: decompress and hash for the DiffID.

        It may run in another thread than `store`, one batch behind it, as long as each
        stage sees the batches in order: a single gzip stream cannot be inflated in
        parallel, so splitting the stages is how one layer uses more than one core.
        """
        if not self._want_diff_id or self._broken is not None:
            return
        if self._inflater is None:
            self._pending += batch
            if len(self._pending) < len(_ZSTD_MAGIC):
                return
            batch, self._pending = self._pending, b""
            self._inflater = inflater(detect_compression(batch))
        self._inflate(batch)

    def _inflate(self, batch: bytes) -> None:
        assert self._inflater is not None
        try:
            for piece in self._inflater.feed(batch):
                self._diff_hasher.update(piece)
                self.uncompressed_size += len(piece)
        except ContentError as exc:
            self._broken = exc

    def finish(self) -> Digest | None:
        """fsync, check the blob digest, then the stream; return the DiffID.

        Raises DigestMismatchError when the blob is not `expected`, ContentError when
        it is but does not decompress.
        """
        assert self._file is not None
        self._settle_writes()
        with disk_errors(self.path):
            self._file.finish()
        return self.verify()

    def verify(self) -> Digest | None:
        """Check the blob digest, then the stream; return the DiffID (see `finish`)."""
        self._join_behind()
        actual = self.digest_so_far()
        if actual != self.expected:
            raise DigestMismatchError(
                f"filesystem layer verification failed for digest {self.expected}: "
                f"the content has digest {actual}"
            )
        if not self._want_diff_id:
            return None
        if self._inflater is None and self._broken is None:
            self._inflater = inflater(detect_compression(self._pending))
            self._inflate(self._pending)
        if self._broken is not None:
            raise self._broken
        assert self._inflater is not None
        self._inflater.finish()
        return Digest("sha256:" + self._diff_hasher.hexdigest())

    def close(self) -> None:
        with contextlib.suppress(Exception):  # closing: nothing to report it to
            self._settle_writes()
        with contextlib.suppress(Exception):
            self._join_behind()
        self._diff_hasher.close()
        if self._file is not None:
            # A partial file is read back (and checked) before it is used again.
            with contextlib.suppress(OSError):
                self._file.close()
            self._file = None


def read_layer(path: Path, expected: Digest) -> tuple[Digest, int]:
    """Verify a layer blob already on disk as a download would: its digest, then its
    stream; return its DiffID and uncompressed size. Nothing is written."""
    sink = LayerSink(path, expected)
    try:
        for batch in read_pieces(path, BATCH_SIZE):
            sink.take_back(batch)
        diff_id = sink.verify()
        assert diff_id is not None
        return diff_id, sink.uncompressed_size
    finally:
        sink.close()


# An archive's format by its first bytes, as dockerd's archive package (DecompressStream)
# tells them: bzip2, gzip, xz, zstd, else a plain tar.
_ARCHIVE_FORMATS: tuple[tuple[bytes, str, type[_Members]], ...] = (
    (_BZIP2_MAGIC, "bzip2", _Bzip2),
    (_GZIP_MAGIC + b"\x08", "gzip", _Gzip),
    (_XZ_MAGIC, "xz", _Xz),
    (_ZSTD_MAGIC, "zstd", _Zstd),
)
ARCHIVE_SNIFF = len(_XZ_MAGIC)  # bytes that tell every format apart


def archive_inflater(head: bytes, what: str = "the archive") -> tuple[str, Inflater]:
    """The format of an archive that starts with `head` (at least `ARCHIVE_SNIFF` bytes,
    unless it is shorter) and a decompressor for it; "tar" when it is not compressed."""
    for magic, name, kind in _ARCHIVE_FORMATS:
        if head.startswith(magic):
            return name, kind(what)
    return "tar", _Plain()


class ArchiveSink:
    """Writes what an archive decompresses to, hashing it as it is written: a layer as
    `docker import` sends it (a plain tar, or one compressed with bzip2, gzip, xz or
    zstd), stored as the plain tar, whose sha256 is both its blob digest and its DiffID.

    `check` sees each decompressed piece before it is written (the tar parser): a piece
    it refuses never reaches the file. Batches of about 1 MiB go through `feed` in a
    worker thread; decompression output is bounded per piece (`_MAX_OUTPUT`), so a small
    batch that inflates hugely is written as it inflates, never held whole.
    """

    def __init__(
        self, path: Path, check: Callable[[bytes], None], what: str = "the archive"
    ) -> None:
        self.path = path
        self.format = ""
        self.size = 0
        self._check = check
        self._what = what
        self._hasher = hashlib.sha256()
        self._inflater: Inflater | None = None
        self._head = b""
        self._file: BinaryIO | None = None

    def open(self) -> None:
        with disk_errors(self.path):
            self._file = open(self.path, "xb", buffering=0)  # noqa: SIM115 - lives on

    def feed(self, batch: bytes) -> None:
        if self._inflater is None:
            self._head += batch
            if len(self._head) < ARCHIVE_SNIFF:
                return
            batch, self._head = self._head, b""
            self.format, self._inflater = archive_inflater(batch, self._what)
        for piece in self._inflater.feed(batch):
            self._write(piece)

    def _write(self, piece: bytes) -> None:
        self._check(piece)
        assert self._file is not None
        rest = memoryview(piece)
        with disk_errors(self.path):
            while rest:
                written = self._file.write(rest) or 0
                if not written:
                    raise OSError(errno.ENOSPC, os.strerror(errno.ENOSPC))
                rest = rest[written:]
        self._hasher.update(piece)
        self.size += len(piece)

    def finish(self) -> Digest:
        """The stream is over: decompress what is left, fsync; the tar's digest."""
        if self._inflater is None:
            self.format, self._inflater = archive_inflater(self._head, self._what)
            for piece in self._inflater.feed(self._head):
                self._write(piece)
        self._inflater.finish()
        assert self._file is not None
        with disk_errors(self.path):
            os.fsync(self._file.fileno())
        return Digest("sha256:" + self._hasher.hexdigest())

    def close(self) -> None:
        if self._file is not None:
            with contextlib.suppress(OSError):
                self._file.close()
            self._file = None
