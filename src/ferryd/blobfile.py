"""A blob's file, written and read past the page cache.

A pull writes hundreds of MiB that nothing reads soon after. Written through the page
cache, each MiB takes 256 pages: on a virtual machine whose host takes freed memory
back (free page reporting), a page touched anew costs the guest a trip to the host,
~2 ms of CPU per MiB here, as much as inflating that MiB (a 379 MiB image: 0.8 s of
CPU to write it, 0.08 s into pages still held). Written with O_DIRECT from a buffer
kept for the next blob, the bytes go from that buffer to the disk: no page cache, no
copy into it, 0.06 s for the same 379 MiB (and fsync has nothing left to write).

Direct IO moves whole blocks at block-aligned offsets from aligned memory: the buffer is
written each time it is full (a MiB), and what waits in it when the blob ends is written
by `flush`, `finish` or `close`, its whole blocks directly and its last partial block
through the page cache. The file therefore always holds a prefix of the blob, which a
resume reads back. A push reads a stored blob the same way (`BlobReader`): the blobs a
pull just wrote are not in the page cache, and reading them through it would pay for
the pages there instead. Where the filesystem refuses direct IO, the file is written
and read as any other.
"""

from __future__ import annotations

import contextlib
import errno
import fcntl
import mmap
import os
import threading
from collections.abc import Iterator
from pathlib import Path

# A multiple of every logical block size in use (512 and 4096).
BLOCK = 4096
_CAPACITY = 1 << 20
# Buffers kept for the next blob: their pages stay with this process, so moving bytes
# through them costs no new pages (3 downloads or 6 uploads at once).
_KEEP = 6


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


class _Direct:
    """An open file and, while its IO is direct, a kept buffer for it."""

    def __init__(self, path: Path, fd: int) -> None:
        self.path = path
        self._fd = fd
        self._buffer: mmap.mmap | None = None
        self._view = memoryview(b"")

    @property
    def direct(self) -> bool:
        return self._buffer is not None

    def _go_direct(self) -> bool:
        buffer = _buffers.take()  # first: the flag is never set without a buffer
        try:
            flags = fcntl.fcntl(self._fd, fcntl.F_GETFL)
            fcntl.fcntl(self._fd, fcntl.F_SETFL, flags | os.O_DIRECT)
        except OSError:  # the filesystem has no direct IO: the page cache it is
            _buffers.give(buffer)
            return False
        self._buffer = buffer
        self._view = memoryview(buffer)
        return True

    def _leave_direct(self) -> None:
        """Through the page cache from here (the buffer's bytes are the caller's)."""
        flags = fcntl.fcntl(self._fd, fcntl.F_GETFL)
        fcntl.fcntl(self._fd, fcntl.F_SETFL, flags & ~os.O_DIRECT)
        self._release_buffer()

    def _release_buffer(self) -> None:
        self._view.release()
        self._view = memoryview(b"")
        buffer, self._buffer = self._buffer, None
        if buffer is not None:
            _buffers.give(buffer)

    def close(self) -> None:
        try:
            self._release_buffer()
        finally:
            if self._fd >= 0:
                fd, self._fd = self._fd, -1
                os.close(fd)


class BlobFile(_Direct):
    """A partial blob file opened to be appended to (see the module's docstring).

    Opening it reads nothing; `pieces` gives what it holds (for a resume to hash);
    `write` appends; `finish` writes what waits and fsyncs. OSError is raised as is:
    the caller knows which file it writes and what the error means to it.
    """

    def __init__(self, path: Path) -> None:
        super().__init__(path, os.open(path, os.O_RDWR | os.O_CREAT | os.O_CLOEXEC, 0o666))
        self._fill = 0  # bytes waiting in the buffer, to be written at `_at`
        try:
            self.size = os.fstat(self._fd).st_size  # what the file holds now
            self._at = self.size
            self._start_direct()
        except BaseException:
            self.close()
            raise

    def _start_direct(self) -> None:
        # A last partial block waits in the buffer; the next write rewrites it whole.
        # (Read before the flag: a direct read takes whole blocks only.)
        tail = os.pread(self._fd, self._at % BLOCK, self._at - self._at % BLOCK)
        if self._go_direct():
            self._view[: len(tail)] = tail
            self._at, self._fill = self._at - len(tail), len(tail)

    def pieces(self, size: int) -> Iterator[bytes]:
        """What the file held when it was opened, from its start, `size` bytes at a time."""
        if not self.size:  # a new download: nothing to open again
            return iter(())
        return read_pieces(self.path, size, until=self.size)

    def write(self, data: bytes | memoryview) -> None:
        """Append `data`: into the buffer, which is written each time it is full; what
        waits there is written by the write that fills it, `flush`, `finish` or `close`.
        A direct write waits for the device: one per MiB, however many pieces make it."""
        view = memoryview(data)
        while view:
            if not self.direct:  # no direct IO here, or a direct write was refused
                self._write_through(view)
                return
            taken = min(len(view), _CAPACITY - self._fill)
            self._view[self._fill : self._fill + taken] = view[:taken]
            self._fill += taken
            view = view[taken:]
            if self._fill == _CAPACITY:
                self._write_blocks()

    def write_blocks(self) -> None:
        """Write the buffer's whole blocks now, not when it is full: the file then holds
        all that was given but a last partial block, and a disk that refuses it says so
        now."""
        if self.direct:
            self._write_blocks()

    def _write_blocks(self) -> None:
        """Write the buffer's whole blocks; keep the partial one, moved to its start."""
        whole = self._fill - self._fill % BLOCK
        done = 0
        try:
            while done < whole:
                done += self._pwrite(self._view[done:whole], self._at + done)
        except OSError as exc:
            self._written(done)
            if exc.errno != errno.EINVAL:
                raise
            # The filesystem took the flag but not the IO (or a short write left an
            # unaligned rest): the rest goes through the page cache.
            self._write_waiting()
            return
        self._written(done)

    def _written(self, done: int) -> None:
        """`done` bytes from the buffer's start reached the file."""
        self._at += done
        self._fill -= done
        if done and self._fill:
            assert self._buffer is not None
            self._buffer.move(0, done, self._fill)

    def _write_waiting(self) -> None:
        """Through the page cache from here: what waits in the buffer is written now."""
        waiting = bytes(self._view[: self._fill])
        self._fill = 0
        self._leave_direct()
        self._write_through(memoryview(waiting))

    def _write_through(self, view: memoryview) -> None:
        while view:
            written = self._pwrite(view, self._at)
            self._at += written
            view = view[written:]

    def _pwrite(self, view: memoryview, at: int) -> int:
        written = os.pwrite(self._fd, view, at)
        if not written:  # no progress, no error: call it what it is
            raise OSError(errno.ENOSPC, os.strerror(errno.ENOSPC))
        return written

    def truncate(self) -> None:
        """Empty the file (and the buffer): the blob starts again from byte 0, direct
        again (after `finish`, a resumed blob that failed its check is fetched anew)."""
        os.ftruncate(self._fd, 0)
        self.size = self._at = self._fill = 0
        if not self.direct:
            self._start_direct()

    def flush(self) -> None:
        """Write what waits in the buffer (its whole blocks directly, the last partial
        one through the page cache): the file holds every byte given."""
        self.write_blocks()
        if self._fill:
            self._write_waiting()

    def finish(self) -> None:
        """`flush` and fsync: the file is the whole blob."""
        self.flush()
        os.fsync(self._fd)

    def close(self) -> None:
        """Write what waits in the buffer (failing that, a resume reads back what did
        reach the file), and close."""
        with contextlib.suppress(OSError):
            self.flush()
        super().close()


class BlobReader(_Direct):
    """A stored blob read from its start past the page cache, into a kept buffer (see
    the module's docstring); through the page cache where the filesystem refuses direct
    IO. Reads of whole blocks (a multiple of 4 KiB asked for) stay direct. OSError is
    raised as is."""

    def __init__(self, path: Path, size: int | None = None) -> None:
        super().__init__(path, os.open(path, os.O_RDONLY | os.O_CLOEXEC))
        self._at = 0
        try:
            # Read up to `size` (what a partial file held when it was opened).
            self._size = os.fstat(self._fd).st_size if size is None else size
            self._go_direct()
        except BaseException:
            self.close()
            raise

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


def read_pieces(path: Path, size: int, *, until: int | None = None) -> Iterator[bytes]:
    """The file at `path` from its start (its first `until` bytes), `size` bytes at a
    time, read past the page cache (`BlobReader`)."""
    reader = BlobReader(path, until)
    try:
        while piece := reader.read(size):
            yield piece
    finally:
        reader.close()
