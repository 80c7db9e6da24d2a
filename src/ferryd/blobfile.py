"""A blob's partial file, appended to past the page cache.

A pull writes hundreds of MiB that nothing reads soon after. Written through the page
cache, each MiB takes 256 pages: on a virtual machine whose host takes freed memory
back (free page reporting), a page touched anew costs the guest a trip to the host,
~2 ms of CPU per MiB here, as much as inflating that MiB (a 379 MiB image: 0.8 s of
CPU to write it, 0.08 s into pages still held). Written with O_DIRECT from a buffer
kept for the next blob, the bytes go from that buffer to the disk: no page cache, no
copy into it, 0.06 s for the same 379 MiB (and fsync has nothing left to write).

Direct IO moves whole blocks at block-aligned offsets from aligned memory, so the bytes
of the last, partial block wait in the buffer for the next write; `finish` writes them
through the page cache. The file therefore always holds a prefix of the blob, which a
resume reads back. Where the filesystem refuses direct IO, the file is written as any
other.
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
# Buffers kept for the next blob: their pages stay with this process, so writing
# through them costs no new pages (3 downloads at once, and a little room).
_KEEP = 4


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


class BlobFile:
    """A partial blob file opened to be appended to (see the module's docstring).

    Opening it reads nothing; `pieces` gives what it holds (for a resume to hash);
    `write` appends; `finish` writes what waits and fsyncs. OSError is raised as is:
    the caller knows which file it writes and what the error means to it.
    """

    def __init__(self, path: Path, *, direct: bool = True) -> None:
        self.path = path
        self._fd = os.open(path, os.O_RDWR | os.O_CREAT | os.O_CLOEXEC, 0o666)
        self.size = os.fstat(self._fd).st_size  # what the file holds now
        self._buffer: mmap.mmap | None = None
        self._view = memoryview(b"")
        self._fill = 0  # bytes waiting in the buffer, to be written at `_at`
        self._at = self.size
        if direct:
            self._go_direct()

    def _go_direct(self) -> None:
        buffer = _buffers.take()
        view = memoryview(buffer)
        # A last partial block waits in the buffer; the next write rewrites it whole.
        # (Read before the flag: a direct read takes whole blocks only.)
        tail = self.size % BLOCK
        if tail and os.preadv(self._fd, [view[:tail]], self.size - tail) != tail:
            raise OSError(errno.EIO, f"{self.path} changed while it was read")
        try:
            flags = fcntl.fcntl(self._fd, fcntl.F_GETFL)
            fcntl.fcntl(self._fd, fcntl.F_SETFL, flags | os.O_DIRECT)
        except OSError:  # the filesystem has no direct IO: the page cache it is
            view.release()
            _buffers.give(buffer)
            return
        self._buffer, self._view = buffer, view
        self._at, self._fill = self.size - tail, tail

    @property
    def direct(self) -> bool:
        return self._buffer is not None

    def pieces(self, size: int) -> Iterator[bytes]:
        """What the file held when it was opened, from its start, `size` bytes at a time."""
        with open(self.path, "rb", buffering=0) as reader:
            left = self.size
            while left > 0 and (piece := reader.read(min(size, left))):
                left -= len(piece)
                yield piece

    def write(self, data: bytes | memoryview) -> None:
        """Append `data`: its whole blocks now, its last partial block with the next
        write or `finish`."""
        view = memoryview(data)
        if not self.direct:
            self._write_through(view)
            return
        while view:
            taken = min(len(view), _CAPACITY - self._fill)
            self._view[self._fill : self._fill + taken] = view[:taken]
            self._fill += taken
            view = view[taken:]
            self._write_blocks()

    def _write_blocks(self) -> None:
        """Write the buffer's whole blocks; keep the partial one, moved to its start."""
        whole = self._fill - self._fill % BLOCK
        done = 0
        try:
            while done < whole:
                written = os.pwrite(self._fd, self._view[done:whole], self._at + done)
                if not written:  # no progress, no error: call it what it is
                    raise OSError(errno.ENOSPC, os.strerror(errno.ENOSPC))
                done += written
        except OSError as exc:
            self._written(done)
            if exc.errno != errno.EINVAL:
                raise
            # The filesystem took the flag but not the IO (or a short write left an
            # unaligned rest): the rest goes through the page cache.
            self._leave_direct()
            return
        self._written(done)

    def _written(self, done: int) -> None:
        """`done` bytes from the buffer's start reached the file."""
        self._at += done
        self._fill -= done
        if done and self._fill:
            assert self._buffer is not None
            self._buffer.move(0, done, self._fill)

    def _leave_direct(self) -> None:
        """Through the page cache from here: what waits in the buffer is written now."""
        flags = fcntl.fcntl(self._fd, fcntl.F_GETFL)
        fcntl.fcntl(self._fd, fcntl.F_SETFL, flags & ~os.O_DIRECT)
        waiting = bytes(self._view[: self._fill])
        self._release_buffer()
        self._write_through(memoryview(waiting))

    def _write_through(self, view: memoryview) -> None:
        while view:
            written = os.pwrite(self._fd, view, self._at)
            if not written:
                raise OSError(errno.ENOSPC, os.strerror(errno.ENOSPC))
            self._at += written
            view = view[written:]

    def truncate(self) -> None:
        """Empty the file (and the buffer): the blob starts again from byte 0."""
        os.ftruncate(self._fd, 0)
        self.size = self._at = self._fill = 0

    def finish(self) -> None:
        """Write what waits in the buffer and fsync: the file is the whole blob."""
        if self._fill:
            self._leave_direct()
        os.fsync(self._fd)

    def close(self) -> None:
        """Write what waits in the buffer (failing that, a resume reads back what did
        reach the file), and close."""
        if self._fill:
            with contextlib.suppress(OSError):
                self._leave_direct()
        self._release_buffer()
        if self._fd >= 0:
            fd, self._fd = self._fd, -1
            os.close(fd)

    def _release_buffer(self) -> None:
        self._view.release()
        self._view = memoryview(b"")
        buffer, self._buffer = self._buffer, None
        self._fill = 0
        if buffer is not None:
            _buffers.give(buffer)
