"""A blob's file: written through the page cache at once; every 4 MiB a background thread
hands the last 16 MiB to the kernel (to write, then drop), every 64 MiB flushing the file
too, on a spare descriptor of the file's own, one hand-over per file at a time; fsynced
and let go of whole by `finish`. Read past the page cache (O_DIRECT into kept buffers),
through it where the filesystem refuses direct IO."""

from __future__ import annotations

import errno
import fcntl
import os
import threading
from collections.abc import Iterator
from concurrent import futures
from pathlib import Path
from typing import Any

import anyio
import pytest

from ferryd import blobfile
from ferryd.blobfile import BLOCK, BlobFile, BlobReader
from ferryd.distribution import push_layers
from ferryd.distribution.archives import save
from ferryd.distribution.archives.intake import _EntrySink
from ferryd.distribution.push_layers import StoredBlob
from ferryd.errors import StorageFullError
from ferryd.oci.digest import sha256_digest
from support import disks

MiB = 1 << 20  # a read's kept buffer
BLOB = os.urandom(3 * MiB + 12345)  # under `_KICK`: nothing handed to the kernel
# Pieces of every awkward size: under a block, a block and one byte, over a MiB.
SIZES = [1, BLOCK - 1, BLOCK + 1, 100_000, (1 << 20) + 7, 3]
PAGE = blobfile._PAGE
DONTNEED = os.POSIX_FADV_DONTNEED
# `_KICK` and `_FLUSH_EVERY` in the tests of background flushes (`flushes`), and their data.
KICK = 4 * PAGE
EVERY = 4 * KICK
DATA = os.urandom(4 * EVERY + KICK)


def _direct_io_works(directory: Path) -> bool:
    try:
        fd = os.open(directory / "probe", os.O_WRONLY | os.O_CREAT | os.O_DIRECT)
    except OSError:
        return False
    os.close(fd)
    return True


@pytest.fixture
def path(tmp_path: Path) -> Path:
    return tmp_path / "blob"


@pytest.fixture
def direct_path(path: Path) -> Path:
    """`path`, on a filesystem that takes direct IO (which a reader uses)."""
    if not _direct_io_works(path.parent):
        pytest.skip("this filesystem refuses O_DIRECT")
    return path


def _pieces(data: bytes) -> list[bytes]:
    out, at, turn = [], 0, 0
    while at < len(data):
        size = SIZES[turn % len(SIZES)]
        out.append(data[at : at + size])
        at, turn = at + size, turn + 1
    return out


def _write(file: BlobFile, data: bytes) -> None:
    for piece in _pieces(data):
        file.write(piece)


def _chunks(data: bytes, size: int) -> Iterator[bytes]:
    for start in range(0, len(data), size):
        yield data[start : start + size]


def _is_direct(file: BlobReader) -> bool:
    return bool(fcntl.fcntl(file._fd, fcntl.F_GETFL) & os.O_DIRECT)


def _open_fds() -> int:
    """How many descriptors this process holds."""
    return len(os.listdir("/proc/self/fd"))


def _recorded(
    monkeypatch: pytest.MonkeyPatch,
    name: str,
    calls: list[tuple[Any, ...]],
    threads: list[str] | None = None,
) -> None:
    """`os.<name>` as blob files see it, patched to record each call in `calls` (and the
    name of the thread that makes it in `threads`), then make it."""
    real = getattr(os, name)

    def call(*args: Any) -> Any:
        calls.append((name, *args))
        if threads is not None:
            threads.append(threading.current_thread().name)
        return real(*args)

    monkeypatch.setattr(blobfile.os, name, call)


# Writing.


def test_pieces_of_any_size_reach_the_file_at_once_and_end_as_the_blob(path: Path) -> None:
    file = BlobFile(path)
    _write(file, BLOB)
    assert path.read_bytes() == BLOB  # nothing waits in the process for finish
    file.finish()
    file.close()

    assert path.read_bytes() == BLOB


def test_a_short_write_goes_on_from_where_it_stopped(
    path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    real = os.pwrite
    monkeypatch.setattr(
        blobfile.os, "pwrite", lambda fd, data, offset: real(fd, data[:1000], offset)
    )
    file = BlobFile(path)
    _write(file, BLOB)
    file.finish()
    file.close()

    assert path.read_bytes() == BLOB


def test_a_reopened_file_gives_back_its_bytes_and_goes_on_after_them(path: Path) -> None:
    cut = 2 * BLOCK + 1000
    path.write_bytes(BLOB[:cut])

    file = BlobFile(path)
    assert file.size == cut
    assert b"".join(file.pieces(5000)) == BLOB[:cut]
    _write(file, BLOB[cut:])
    file.finish()
    file.close()

    assert path.read_bytes() == BLOB


def test_closing_without_finishing_leaves_what_was_written_for_a_resume(path: Path) -> None:
    file = BlobFile(path)
    _write(file, BLOB[: 5 * BLOCK + 77])
    file.close()

    assert path.read_bytes() == BLOB[: 5 * BLOCK + 77]


def test_truncating_starts_the_blob_again_from_its_first_byte(path: Path) -> None:
    file = BlobFile(path)
    _write(file, b"x" * (BLOCK * 3 + 5))
    file.truncate()
    _write(file, BLOB)
    file.finish()
    file.close()

    assert path.read_bytes() == BLOB


def test_a_blob_started_again_after_finishing_ends_as_the_new_blob(path: Path) -> None:
    file = BlobFile(path)
    _write(file, b"x" * (BLOCK + 5))
    file.finish()
    file.truncate()
    _write(file, BLOB)
    file.finish()
    file.close()

    assert path.read_bytes() == BLOB


def test_a_full_disk_is_raised_and_what_reached_the_file_is_a_prefix_of_the_blob(
    path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    disks.fills_after(monkeypatch, 2 * MiB)
    file = BlobFile(path)
    with pytest.raises(OSError) as refused:
        _write(file, BLOB)
    file.close()

    assert refused.value.errno == errno.ENOSPC
    assert path.read_bytes() == BLOB[: 2 * MiB]  # all the room it had


def test_a_write_that_makes_no_progress_is_a_full_disk(
    path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setattr(blobfile.os, "pwrite", lambda fd, data, offset: 0)
    file = BlobFile(path)
    with pytest.raises(OSError) as refused:
        file.write(BLOB[: 2 * BLOCK])
    file.close()

    assert refused.value.errno == errno.ENOSPC


def _staged(path: Path, data: bytes) -> _EntrySink:
    """A load's sink for an archive file holding `data`, named after its digest."""
    return _EntrySink("blobs/sha256/" + sha256_digest(data).split(":")[1], path, len(data))


def test_a_staged_archive_file_that_finds_the_disk_full_fails_the_load(
    path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    disks.fills_after(monkeypatch, 0)
    data = BLOB[: 3 * BLOCK + 1000]
    sink = _staged(path, data)

    with pytest.raises(StorageFullError):
        sink.write(data)
    sink.close()


def test_a_staged_archive_file_too_short_to_tell_its_format_finds_the_disk_full_as_it_ends(
    path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    disks.fills_after(monkeypatch, 0)
    data = b"1.0"  # fewer bytes than a compression magic: written by `finish`
    sink = _staged(path, data)
    assert sink.write(data) is None

    with pytest.raises(StorageFullError):
        sink.finish()
    sink.close()


# The page cache: what was appended is handed to the kernel as it goes, by a background
# thread on a spare descriptor of the file's own; all of it at the end, by `finish`.


def _handed_over(file: BlobFile) -> None:
    """Wait for the file's hand-over, if one is under way (its error stays for the file to
    raise)."""
    if file._background is not None:
        futures.wait([file._background])


def test_every_4_mib_appended_the_last_16_mib_are_handed_to_the_kernel_to_write_and_drop(
    path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    calls: list[tuple[Any, ...]] = []
    threads: list[str] = []
    _recorded(monkeypatch, "posix_fadvise", calls, threads)
    file = BlobFile(path)
    for _ in range(40):
        file.write(bytes(MiB))
        _handed_over(file)
    assert path.stat().st_size == 40 * MiB
    spare = file._spare
    assert spare not in (-1, file._fd)
    file.close()

    ends = range(4 * MiB, 41 * MiB, 4 * MiB)
    assert calls == [
        ("posix_fadvise", spare, max(0, end - 16 * MiB), min(end, 16 * MiB), DONTNEED)
        for end in ends
    ]
    assert threading.current_thread().name not in threads  # none made by the writer
    assert all(name.startswith("ferryd-writeback") for name in threads)


def test_a_write_of_many_mib_hands_over_its_last_16_mib_once(
    path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    calls: list[tuple[Any, ...]] = []
    _recorded(monkeypatch, "posix_fadvise", calls)
    file = BlobFile(path)
    file.write(bytes(3 * MiB))  # not 4 MiB yet: nothing
    assert file._background is None
    file.write(bytes(37 * MiB))
    _handed_over(file)
    spare = file._spare
    file.close()

    assert calls == [("posix_fadvise", spare, 24 * MiB, 16 * MiB, DONTNEED)]


def test_the_partial_last_page_of_a_write_is_never_handed_over(
    path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    calls: list[tuple[Any, ...]] = []
    _recorded(monkeypatch, "posix_fadvise", calls)
    first, second = 4 * MiB + PAGE, 8 * MiB + 3 * PAGE  # page boundaries
    file = BlobFile(path)
    file.write(bytes(3 * MiB))
    file.write(bytes(first + 123 - 3 * MiB))  # ends 123 bytes into a page
    _handed_over(file)
    file.write(bytes(second + PAGE - 1 - (first + 123)))  # ends a byte short of the next
    _handed_over(file)
    spare = file._spare
    file.close()

    assert path.stat().st_size == second + PAGE - 1
    assert calls == [  # each up to the page boundary below the end
        ("posix_fadvise", spare, 0, first, DONTNEED),
        ("posix_fadvise", spare, 0, second, DONTNEED),
    ]


def test_finish_fsyncs_then_lets_go_of_the_whole_files_pages(
    path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    calls: list[tuple[Any, ...]] = []
    _recorded(monkeypatch, "fsync", calls)
    _recorded(monkeypatch, "posix_fadvise", calls)
    file = BlobFile(path)
    fd = file._fd
    _write(file, BLOB)
    assert calls == []
    file.finish()
    file.close()

    assert calls == [("fsync", fd), ("posix_fadvise", fd, 0, 0, DONTNEED)]
    assert path.read_bytes() == BLOB


def test_a_system_without_fadvise_gets_the_same_blob(
    path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.delattr(blobfile.os, "posix_fadvise")
    blob = os.urandom(9 * MiB)
    file = BlobFile(path)
    for piece in _chunks(blob, MiB):
        file.write(piece)
    file.finish()
    file.close()

    assert path.read_bytes() == blob


# Background flushes: a hand-over flushes the file too, every `_FLUSH_EVERY` bytes.


class _Flushes:
    """`os.fdatasync` as blob files see it, patched: records each flush (the inode and
    size of the file its descriptor names, the descriptor, the thread), waits while held,
    fails with `error` if set."""

    def __init__(self, monkeypatch: pytest.MonkeyPatch) -> None:
        self.calls: list[tuple[int, int]] = []
        self.fds: list[int] = []
        self.threads: list[str] = []
        self.error: int | None = None
        self.done: list[int] = []  # the descriptors whose flush has ended
        self._release = threading.Event()
        self._release.set()
        self._changed = threading.Condition()
        real = os.fdatasync

        def fdatasync(fd: int) -> None:
            stat = os.fstat(fd)
            with self._changed:
                self.calls.append((stat.st_ino, stat.st_size))
                self.fds.append(fd)
                self.threads.append(threading.current_thread().name)
                self._changed.notify_all()
            self._release.wait(5)
            try:
                if self.error is not None:
                    raise OSError(self.error, os.strerror(self.error))
                real(fd)
            finally:
                self.done.append(fd)

        monkeypatch.setattr(blobfile.os, "fdatasync", fdatasync)

    def hold(self) -> None:
        """Flushes wait from here until `release`."""
        self._release.clear()

    def release(self) -> None:
        self._release.set()

    def wait_for(self, count: int) -> None:
        """Until `count` flushes have started."""
        with self._changed:
            assert self._changed.wait_for(lambda: len(self.calls) >= count, 5)


@pytest.fixture
def flushes(monkeypatch: pytest.MonkeyPatch) -> Iterator[_Flushes]:
    """A hand-over every `KICK` bytes and a flush every `EVERY`, through a patched
    fdatasync."""
    monkeypatch.setattr(blobfile, "_KICK", KICK)
    monkeypatch.setattr(blobfile, "_FLUSH_EVERY", EVERY)
    flushes = _Flushes(monkeypatch)
    yield flushes
    flushes.release()  # a held flush ends with its test


def test_a_hand_over_flushes_every_flush_every_bytes_in_the_background_on_a_spare_descriptor(
    path: Path, flushes: _Flushes, monkeypatch: pytest.MonkeyPatch
) -> None:
    dups: list[tuple[Any, ...]] = []
    _recorded(monkeypatch, "dup", dups)
    fds = _open_fds()
    file = BlobFile(path)
    own = file._fd
    for piece in _chunks(DATA[: 4 * EVERY], EVERY // 2):  # a hand-over each
        file.write(piece)
        _handed_over(file)
    file.finish()
    file.close()

    inode = path.stat().st_ino
    assert flushes.calls == [
        (inode, EVERY),
        (inode, 2 * EVERY),
        (inode, 3 * EVERY),
        (inode, 4 * EVERY),
    ]
    assert dups == [("dup", own)]  # one spare for the file, not one per flush
    assert own not in flushes.fds
    assert len(set(flushes.fds)) == 1
    assert all(name.startswith("ferryd-writeback") for name in flushes.threads)
    assert _open_fds() == fds  # the spare closed with the file
    assert path.read_bytes() == DATA[: 4 * EVERY]


def test_truncating_starts_the_flush_count_again(path: Path, flushes: _Flushes) -> None:
    file = BlobFile(path)
    for piece in _chunks(DATA[: 3 * EVERY], EVERY):
        file.write(piece)
        _handed_over(file)
    file.truncate()
    file.write(DATA[:EVERY])  # a flush due: EVERY since the file was emptied
    _handed_over(file)
    file.close()

    inode = path.stat().st_ino
    assert flushes.calls == [(inode, EVERY), (inode, 2 * EVERY), (inode, 3 * EVERY), (inode, EVERY)]
    assert path.read_bytes() == DATA[:EVERY]


def test_a_file_has_one_hand_over_at_a_time_and_a_kick_during_one_is_skipped(
    path: Path, flushes: _Flushes, monkeypatch: pytest.MonkeyPatch
) -> None:
    calls: list[tuple[Any, ...]] = []
    _recorded(monkeypatch, "posix_fadvise", calls)
    flushes.hold()
    file = BlobFile(path)
    other = BlobFile(path.with_name("other"))
    file.write(DATA[:EVERY])
    flushes.wait_for(1)
    running = file._background
    for piece in _chunks(DATA[EVERY : 4 * EVERY], EVERY):  # each would start one
        file.write(piece)
        assert file._background is running
    other.write(DATA[:EVERY])  # another file's starts meanwhile
    flushes.wait_for(2)
    flushes.release()
    _handed_over(file)
    _handed_over(other)
    assert len(flushes.calls) == 2

    file.write(b"x")  # the next one, once the last has ended
    _handed_over(file)
    spare, other_spare = file._spare, other._spare
    file.close()
    other.close()

    inode, other_inode = path.stat().st_ino, path.with_name("other").stat().st_ino
    assert flushes.calls == [(inode, EVERY), (other_inode, EVERY), (inode, 4 * EVERY + 1)]
    assert [call[1:] for call in calls if call[1] == spare] == [
        (spare, 0, EVERY, DONTNEED),
        (spare, 0, 4 * EVERY, DONTNEED),  # the kicks skipped meanwhile handed nothing
    ]
    assert [call[1:] for call in calls if call[1] == other_spare] == [
        (other_spare, 0, EVERY, DONTNEED)
    ]


def test_a_disk_error_met_by_a_background_flush_is_raised_by_finish(
    path: Path, flushes: _Flushes
) -> None:
    flushes.error = errno.EIO
    fds = _open_fds()
    file = BlobFile(path)
    file.write(DATA[:EVERY])
    with pytest.raises(OSError) as failed:
        file.finish()
    file.close()

    assert failed.value.errno == errno.EIO
    assert _open_fds() == fds  # the spare too


def test_a_disk_error_met_by_a_background_flush_is_raised_by_the_write_due_to_start_the_next(
    path: Path, flushes: _Flushes
) -> None:
    flushes.error = errno.EIO
    fds = _open_fds()
    file = BlobFile(path)
    file.write(DATA[:EVERY])
    _handed_over(file)
    file.write(DATA[EVERY : EVERY + KICK - 1])  # no hand-over due: nothing said yet
    with pytest.raises(OSError) as failed:
        file.write(DATA[EVERY + KICK - 1 : EVERY + KICK])
    file.close()

    assert failed.value.errno == errno.EIO
    assert path.read_bytes() == DATA[: EVERY + KICK]  # the write's bytes reached the file
    assert _open_fds() == fds


def test_closing_a_file_while_its_hand_over_runs_leaks_nothing_and_the_hand_over_ends(
    path: Path, flushes: _Flushes
) -> None:
    flushes.hold()
    fds = _open_fds()
    file = BlobFile(path)
    file.write(DATA[:EVERY])
    flushes.wait_for(1)
    running = file._background
    assert running is not None
    file.close()
    assert _open_fds() == fds + 1  # the spare, still flushing
    closed = threading.Event()
    running.add_done_callback(lambda _: closed.set())  # after the file's own callback

    flushes.release()
    assert running.result(5) is None  # on the spare: the file's closing is no matter
    assert closed.wait(5)
    assert flushes.done == flushes.fds
    assert _open_fds() == fds  # the spare closed once the hand-over ended
    assert path.read_bytes() == DATA[:EVERY]


@pytest.mark.parametrize("opening", [BlobFile, BlobReader])
def test_a_file_that_fails_as_it_opens_leaks_no_descriptor(
    path: Path, monkeypatch: pytest.MonkeyPatch, opening: type[BlobFile | BlobReader]
) -> None:
    path.write_bytes(BLOB[:5000])
    fds = _open_fds()

    def no_stat(fd: int) -> Any:
        raise OSError(errno.EIO, os.strerror(errno.EIO))

    monkeypatch.setattr(blobfile.os, "fstat", no_stat)
    with pytest.raises(OSError):
        opening(path)
    monkeypatch.undo()

    assert _open_fds() == fds


def test_a_reader_whose_buffer_cannot_be_had_leaks_no_descriptor(
    direct_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    direct_path.write_bytes(BLOB[:5000])
    fds = _open_fds()

    def no_memory() -> Any:
        raise OSError(errno.ENOMEM, os.strerror(errno.ENOMEM))

    monkeypatch.setattr(blobfile._buffers, "take", no_memory)
    with pytest.raises(OSError):
        BlobReader(direct_path)

    assert _open_fds() == fds


def test_a_new_download_opens_nothing_to_read_back(
    path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setattr(blobfile, "BlobReader", None)
    file = BlobFile(path)

    assert list(file.pieces(1 << 20)) == []
    file.close()


def test_a_partial_file_gives_back_what_it_held_when_opened(path: Path) -> None:
    path.write_bytes(BLOB[: 3 * BLOCK + 10])
    file = BlobFile(path)
    held = file.pieces(1 << 20)
    file.write(BLOB[3 * BLOCK + 10 : 8 * BLOCK])
    assert path.stat().st_size == 8 * BLOCK

    assert b"".join(held) == BLOB[: 3 * BLOCK + 10]
    file.close()


# Reading.


def _read_all(reader: BlobReader, size: int) -> bytes:
    out = []
    while piece := reader.read(size):
        out.append(piece)
    reader.close()
    return b"".join(out)


def test_a_stored_blob_is_read_past_the_page_cache_in_whole_blocks(direct_path: Path) -> None:
    direct_path.write_bytes(BLOB)
    reader = BlobReader(direct_path)

    assert reader.direct
    assert _is_direct(reader)
    first = reader.read(1 << 20)
    assert len(first) == 1 << 20
    assert first + _read_all(reader, 1 << 20) == BLOB
    assert reader.read(1 << 20) == b""


def test_reads_of_any_size_give_the_blob_through_the_page_cache_once_unaligned(
    direct_path: Path,
) -> None:
    direct_path.write_bytes(BLOB)
    reader = BlobReader(direct_path)

    assert _read_all(reader, 5000) == BLOB


def test_a_filesystem_without_direct_io_has_its_blobs_read_through_the_page_cache(
    path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    real = fcntl.fcntl

    def no_direct(fd: int, command: int, arg: Any = 0) -> Any:
        if command == fcntl.F_SETFL and arg & os.O_DIRECT:
            raise OSError(errno.EINVAL, "Invalid argument")
        return real(fd, command, arg)

    monkeypatch.setattr(blobfile.fcntl, "fcntl", no_direct)
    path.write_bytes(BLOB)
    reader = BlobReader(path)

    assert not reader.direct
    assert _read_all(reader, 1 << 20) == BLOB


def test_a_direct_read_the_filesystem_refuses_goes_on_through_the_page_cache(
    direct_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    direct_path.write_bytes(BLOB)
    real = os.preadv
    calls = []

    def refuse_second(fd: int, buffers: Any, offset: int) -> int:
        calls.append(offset)
        if len(calls) == 2:
            raise OSError(errno.EINVAL, "Invalid argument")
        return real(fd, buffers, offset)

    monkeypatch.setattr(blobfile.os, "preadv", refuse_second)
    reader = BlobReader(direct_path)
    data = reader.read(1 << 20) + reader.read(1 << 20)

    assert not reader.direct
    assert data + _read_all(reader, 1 << 20) == BLOB


def test_read_buffers_are_kept_for_the_next_reader(direct_path: Path) -> None:
    direct_path.write_bytes(BLOB[:5000])
    first = BlobReader(direct_path)
    buffer = first._buffer
    first.close()
    second = BlobReader(direct_path)

    assert second._buffer is buffer
    second.close()


def test_the_last_partial_block_is_read_past_the_page_cache_too(direct_path: Path) -> None:
    direct_path.write_bytes(BLOB)  # its last block is partial
    reader = BlobReader(direct_path)
    while reader.read(1 << 20):
        pass

    assert reader.direct
    reader.close()


def test_a_direct_read_failing_with_a_disk_error_raises_it(
    direct_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    direct_path.write_bytes(BLOB)

    def eio(*args: Any) -> int:
        raise OSError(errno.EIO, os.strerror(errno.EIO))

    monkeypatch.setattr(blobfile.os, "preadv", eio)
    reader = BlobReader(direct_path)
    with pytest.raises(OSError) as failed:
        reader.read(1 << 20)
    reader.close()

    assert failed.value.errno == errno.EIO


# A push's reads (and a save's).


@pytest.fixture
def stored(direct_path: Path) -> StoredBlob:
    direct_path.write_bytes(BLOB)
    return StoredBlob(sha256_digest(BLOB), len(BLOB), direct_path)


@pytest.mark.anyio
async def test_a_push_reads_a_stored_blob_whole_with_the_next_read_started_ahead(
    stored: StoredBlob,
) -> None:
    pieces = []
    async with stored.reading() as reading:
        while piece := await reading.read():
            pieces.append(piece)
            assert reading._ahead is not None  # the next one is being read meanwhile

    assert b"".join(pieces) == BLOB


@pytest.mark.anyio
async def test_a_push_cancelled_mid_read_closes_the_blob_once_its_read_has_ended(
    stored: StoredBlob,
) -> None:
    fds = _open_fds()
    with anyio.CancelScope() as scope:
        async with stored.reading() as reading:
            await reading.read()
            scope.cancel()
            await reading.read()

    assert scope.cancelled_caught
    assert reading._ahead is not None
    assert reading._ahead.done()
    assert _open_fds() == fds


@pytest.mark.anyio
async def test_a_push_cancelled_mid_read_closes_the_blob_only_after_that_read(
    stored: StoredBlob, monkeypatch: pytest.MonkeyPatch
) -> None:
    started, release, order = threading.Event(), threading.Event(), []
    real_read, real_close = BlobReader.read, BlobReader.close

    def read(self: BlobReader, size: int) -> bytes:
        started.set()
        release.wait(5)
        order.append("read")
        return real_read(self, size)

    def close(self: BlobReader) -> None:
        order.append("close")
        real_close(self)

    monkeypatch.setattr(BlobReader, "read", read)
    monkeypatch.setattr(BlobReader, "close", close)
    with anyio.CancelScope() as scope:
        async with stored.reading() as reading, anyio.create_task_group() as tasks:
            tasks.start_soon(reading.read)
            await anyio.to_thread.run_sync(started.wait)
            scope.cancel()
            threading.Timer(0.2, release.set).start()

    assert order == ["read", "close"]


@pytest.mark.anyio
async def test_a_push_cancelled_while_its_read_waits_for_a_thread_calls_the_read_off(
    stored: StoredBlob,
) -> None:
    fds = _open_fds()
    busy = threading.Event()
    for _ in range(6):  # every reading thread taken
        push_layers._READ_AHEAD.submit(busy.wait, 5)
    with anyio.move_on_after(0.1) as scope:
        async with stored.reading() as reading:
            await reading.read()
    busy.set()

    assert scope.cancelled_caught
    assert reading._ahead is not None
    assert reading._ahead.cancelled()
    assert _open_fds() == fds


@pytest.mark.anyio
async def test_a_read_after_one_called_off_reads_again(stored: StoredBlob) -> None:
    busy = threading.Event()
    for _ in range(6):
        push_layers._READ_AHEAD.submit(busy.wait, 5)
    async with stored.reading() as reading:
        with anyio.move_on_after(0.1):
            await reading.read()
        busy.set()

        assert await reading.read() == BLOB[: 1 << 20]


@pytest.mark.anyio
async def test_a_disk_error_in_the_read_ahead_is_raised_by_the_next_read(
    stored: StoredBlob, monkeypatch: pytest.MonkeyPatch
) -> None:
    real = os.preadv

    def fails_after_the_first(fd: int, buffers: Any, offset: int) -> int:
        if offset:
            raise OSError(errno.EIO, os.strerror(errno.EIO))
        return real(fd, buffers, offset)

    monkeypatch.setattr(blobfile.os, "preadv", fails_after_the_first)
    async with stored.reading() as reading:
        await reading.read()
        with pytest.raises(OSError) as failed:
            await reading.read()

    assert failed.value.errno == errno.EIO


@pytest.mark.anyio
@pytest.mark.parametrize("whole", [True, False], ids=["read whole", "cut short"])
async def test_a_saved_blob_closes_its_file(stored: StoredBlob, whole: bool) -> None:
    fds = _open_fds()
    entry = save._Entry("blobs/sha256/x", stored.size, path=stored.path, digest=stored.digest)
    pieces = save._blob_pieces(entry)
    if whole:
        assert b"".join([piece async for piece in pieces]) == BLOB
    else:
        await pieces.__anext__()
        await pieces.aclose()

    assert _open_fds() == fds
