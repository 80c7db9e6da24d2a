"""A blob's file: written through the page cache, its pages let go of as they reach the
disk; read past the page cache.

A pull writes hundreds of MiB that nothing reads soon after, and it must be durable
before a row names it (`finish` fsyncs). Three things about the disk decide how:

- A flush (fsync) holds up every other IO to the disk until it is done: on a virtual
  disk with a write cache, measured at ~1.9 ms per MiB written since the last flush,
  during which even a direct (O_DIRECT) read waits. Written directly, a layer's writes
  waited out each other layer's fsync, and with them its hashing and inflating: 0.1 to
  0.3 s of a 5-layer pull with both cores idle, each time a layer ended. Written into
  the page cache, a write does not wait for the disk, and a flush holds up only the
  kernel's own writeback.
- A flush takes as long as what was written since the last one: the fsync that ends a
  blob flushed all of it, with both cores idle (1.6 s of a 1 GiB layer's pull). So
  every few MiB a background thread tells the kernel to start writing what was appended
  (`posix_fadvise(DONTNEED)` over the last `_WINDOW` bytes, which also drops what is
  already written) and every `_FLUSH_EVERY` flushes the file: `finish` finds little
  left to write or flush.
- A page touched anew costs CPU: on a virtual machine whose host takes freed memory
  back (free page reporting), ~2 ms per MiB, as much as inflating it. Dropped as they
  reach the disk, the pages a blob passes through are freed while still warm and taken
  again by its next MiB, and the page cache does not fill with blobs nobody reads.

The file holds a prefix of the blob, which a resume reads back (after a crash, what
reached the disk: a resumed blob that fails its digest is fetched again). A push reads a
stored blob past the page cache (`BlobReader`, O_DIRECT into a kept buffer): the blobs
a pull wrote are no longer there, and reading them through it would pay for the pages.
Where the filesystem refuses direct IO, it is read as any other file.
"""

from __future__ import annotations

import contextlib
import errno
import fcntl
import mmap
import os
import threading
from collections.abc import Iterator
from concurrent.futures import Future, ThreadPoolExecutor
from pathlib import Path

# A multiple of every logical block size in use (512 and 4096).
BLOCK = 4096
_CAPACITY = 1 << 20
# Read buffers kept for the next blob: their pages stay with this process, so moving
# bytes through them costs no new pages (6 uploads at once).
_KEEP = 6
# Every `_KICK` bytes appended, a background thread hands the last `_WINDOW` to the
# kernel: written if new, dropped if on the disk (a range still being written is
# dropped by a later turn); every `_FLUSH_EVERY`, it flushes the file too.
_KICK = 4 << 20
_WINDOW = 16 << 20
_FLUSH_EVERY = 64 << 20
_PAGE = mmap.PAGESIZE
# Handing over waits for the disk (a flush, or a block bitmap read while another file's
# flush holds the disk up), which the thread that writes must not.
_BACKGROUND = ThreadPoolExecutor(3, thread_name_prefix="ferryd-writeback")


class _Buffers:
    """Page-aligned buffers, reused."""

    def __init__(self) -> None:
        self._free: list[mmap.mmap] = []
        self._lock = threading.Lock()

    def take(self) -> mmap.mmap:
        with self._lock:
            if self._free:
                return self._free.pop()
        return mmap.mmap(-1, _CAPACITY)

    def give(self, buffer: mmap.mmap) -> None:
        with self._lock:
            if len(self._free) < _KEEP:
                self._free.append(buffer)
                return
        buffer.close()


_buffers = _Buffers()


def _let_go(fd: int, start: int, length: int) -> None:
    """Have the kernel write the range's dirty pages and drop its clean ones (length 0:
    to the end of the file). Advice only: where there is none, nothing happens."""
    if hasattr(os, "posix_fadvise"):
        os.posix_fadvise(fd, start, length, os.POSIX_FADV_DONTNEED)


def _hand_over(fd: int, start: int, end: int, flush: bool) -> None:
    _let_go(fd, start, end - start)
    if flush:
        os.fdatasync(fd)


class BlobFile:
    """A partial blob file opened to be appended to (see the module's docstring).

    Opening it reads nothing; `pieces` gives what it holds (for a resume to hash);
    `write` appends; `finish` fsyncs. OSError is raised as is (a hand-over's by the
    write that would start the next one, `settle` or `finish`): the caller knows which
    file it writes and what the error means to it.
    """

    def __init__(self, path: Path) -> None:
        self.path = path
        self._background: Future[None] | None = None  # one hand-over at a time
        self._spare = -1  # the background's descriptor: this one may close first
        self._failed = False  # a hand-over met an error: the disk may lack what it holds
        self._fd = os.open(path, os.O_RDWR | os.O_CREAT | os.O_CLOEXEC, 0o666)
        try:
            self.size = os.fstat(self._fd).st_size  # what the file held when opened
        except BaseException:
            self.close()
            raise
        # The end; where the last hand-over was asked for; where its last flush ended.
        self._at = self._handed = self._flushed = self.size

    def pieces(self, size: int) -> Iterator[bytes]:
        """What the file held when it was opened, from its start, `size` bytes at a time."""
        if not self.size:  # a new download: nothing to open again
            return iter(())
        return read_pieces(self.path, size, until=self.size)

    def write(self, data: bytes | memoryview) -> None:
        """Append `data`; every `_KICK` bytes, hand over what was appended."""
        view = memoryview(data)
        while view:
            written = os.pwrite(self._fd, view, self._at)
            if not written:  # no progress, no error: call it what it is
                raise OSError(errno.ENOSPC, os.strerror(errno.ENOSPC))
            self._at += written
            view = view[written:]
        if self._at - self._handed >= _KICK and self._background_done():
            self._hand_over()

    def _hand_over(self) -> None:
        end = self._at - self._at % _PAGE  # a partial last page stays: the next write's
        start = max(0, end - _WINDOW)
        flush = end - self._flushed >= _FLUSH_EVERY
        try:
            if self._spare < 0:
                # A description of its own, not a dup: the error a background flush
                # meets is then reported again by this one's fsync (`finish`).
                self._spare = os.open(self.path, os.O_RDONLY | os.O_CLOEXEC)
            self._background = _BACKGROUND.submit(_hand_over, self._spare, start, end, flush)
        except (OSError, RuntimeError):  # no descriptor to spare, or the daemon is ending:
            return  # the writes go on, and `finish` writes and flushes all that is left
        self._handed = self._at
        if flush:
            self._flushed = end

    def _background_done(self) -> bool:
        """No hand-over is under way; raises the error of the last one."""
        background = self._background
        if background is None:
            return True
        if not background.done():
            return False
        self.settle()
        return True

    def settle(self) -> None:
        """Wait for the hand-over under way, if any; raise its error."""
        background, self._background = self._background, None
        if background is not None:
            try:
                background.result()
            except BaseException:
                self._failed = True
                raise

    def truncate(self) -> None:
        """Empty the file: the blob starts again from byte 0."""
        with contextlib.suppress(Exception):  # what the disk failed to take goes too
            self.settle()
        os.ftruncate(self._fd, 0)
        self.size = self._at = self._handed = self._flushed = 0
        self._failed = False

    def finish(self) -> None:
        """fsync, then drop the file's pages: the file is the whole blob, on the disk.
        A hand-over under way is waited for first (one that has not started is called
        off: the fsync does its work), and an error it met is raised."""
        self._call_off()
        self.settle()
        try:
            os.fsync(self._fd)
        except OSError:
            self._failed = True  # reported once: a resume must not build on the file
            raise
        _let_go(self._fd, 0, 0)

    def _call_off(self) -> None:
        """Cancel a hand-over that has not started (in the queue behind other files')."""
        if self._background is not None and self._background.cancel():
            self._background = None

    def close(self) -> None:
        """Close; a file a hand-over or `finish` failed on is emptied first: a later
        resume would build on bytes the disk may not have, and no later fsync would say
        so (the failure was reported once)."""
        self._call_off()
        with contextlib.suppress(Exception):
            self.settle()
        if self._failed and self._fd >= 0:
            with contextlib.suppress(OSError):
                os.ftruncate(self._fd, 0)
        for fd in (self._spare, self._fd):
            if fd >= 0:
                os.close(fd)
        self._spare = self._fd = -1


class BlobReader:
    """A stored blob read from its start past the page cache, into a kept buffer (see
    the module's docstring); through the page cache where the filesystem refuses direct
    IO. Reads of whole blocks (a multiple of 4 KiB asked for) stay direct. OSError is
    raised as is."""

    def __init__(self, path: Path, size: int | None = None) -> None:
        self.path = path
        self._fd = os.open(path, os.O_RDONLY | os.O_CLOEXEC)
        self._buffer: mmap.mmap | None = None
        self._view = memoryview(b"")
        self._at = 0
        try:
            # Read up to `size` (what a partial file held when it was opened).
            self._size = os.fstat(self._fd).st_size if size is None else size
            self._go_direct()
        except BaseException:
            self.close()
            raise

    @property
    def direct(self) -> bool:
        return self._buffer is not None

    def _go_direct(self) -> None:
        buffer = _buffers.take()  # first: the flag is never set without a buffer
        try:
            flags = fcntl.fcntl(self._fd, fcntl.F_GETFL)
            fcntl.fcntl(self._fd, fcntl.F_SETFL, flags | os.O_DIRECT)
        except OSError:  # the filesystem has no direct IO: the page cache it is
            _buffers.give(buffer)
            return
        self._buffer = buffer
        self._view = memoryview(buffer)

    def _leave_direct(self) -> None:
        """Through the page cache from here."""
        flags = fcntl.fcntl(self._fd, fcntl.F_GETFL)
        fcntl.fcntl(self._fd, fcntl.F_SETFL, flags & ~os.O_DIRECT)
        self._release_buffer()

    def _release_buffer(self) -> None:
        self._view.release()
        self._view = memoryview(b"")
        buffer, self._buffer = self._buffer, None
        if buffer is not None:
            _buffers.give(buffer)

    def read(self, size: int) -> bytes:
        """Up to `size` bytes from where the last read ended; b"" at the end."""
        size = min(size, self._size - self._at, _CAPACITY)
        if size <= 0:
            return b""
        if self.direct:
            # Whole blocks: the last one ends at the file's end, where a read stops.
            blocks = -(-size // BLOCK) * BLOCK
            try:
                got = min(os.preadv(self._fd, [self._view[:blocks]], self._at), size)
            except OSError as exc:
                if exc.errno != errno.EINVAL:
                    raise
                self._leave_direct()  # the filesystem took the flag but not the IO
            else:
                self._at += got
                return bytes(self._view[:got])
        data = os.pread(self._fd, size, self._at)
        self._at += len(data)
        return data

    def close(self) -> None:
        try:
            self._release_buffer()
        finally:
            if self._fd >= 0:
                fd, self._fd = self._fd, -1
                os.close(fd)


def read_pieces(path: Path, size: int, *, until: int | None = None) -> Iterator[bytes]:
    """The file at `path` from its start (its first `until` bytes), `size` bytes at a
    time, read past the page cache (`BlobReader`)."""
    reader = BlobReader(path, until)
    try:
        while piece := reader.read(size):
            yield piece
    finally:
        reader.close()
