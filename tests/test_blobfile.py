"""A blob's file written and read past the page cache: whole blocks with O_DIRECT, the
last partial block of a write when the next write comes or the file is finished or
closed; the page cache where the filesystem refuses direct IO."""

from __future__ import annotations

import errno
import fcntl
import os
import threading
from collections.abc import Callable
from pathlib import Path
from typing import Any

import anyio
import pytest

from ferryd import blobfile
from ferryd.blobfile import BLOCK, BlobFile, BlobReader
from ferryd.codec import LayerSink
from ferryd.distribution import push_layers
from ferryd.distribution.archives import save
from ferryd.distribution.archives.intake import _EntrySink
from ferryd.distribution.push_layers import StoredBlob
from ferryd.errors import StorageFullError
from ferryd.oci.digest import sha256_digest
from support import disks

MiB = 1 << 20  # the kept buffer's size
BLOB = os.urandom(3 * MiB + 12345)
# Pieces of every awkward size: under a block, a block and one byte, over the buffer.
SIZES = [1, BLOCK - 1, BLOCK + 1, 100_000, (1 << 20) + 7, 3]


def _direct_io_works(directory: Path) -> bool:
    try:
        fd = os.open(directory / "probe", os.O_WRONLY | os.O_CREAT | os.O_DIRECT)
    except OSError:
        return False
    os.close(fd)
    return True


@pytest.fixture
def path(tmp_path: Path) -> Path:
    if not _direct_io_works(tmp_path):
        pytest.skip("this filesystem refuses O_DIRECT")
    return tmp_path / "blob"


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


def _is_direct(file: BlobFile | BlobReader) -> bool:
    return bool(fcntl.fcntl(file._fd, fcntl.F_GETFL) & os.O_DIRECT)


def test_pieces_of_any_size_are_written_past_the_page_cache_and_end_as_the_blob(
    path: Path,
) -> None:
    file = BlobFile(path)
    assert file.direct
    assert _is_direct(file)
    _write(file, BLOB)
    # Only whole buffers (a MiB each) have reached the file; the rest waits for finish.
    assert path.stat().st_size == len(BLOB) - len(BLOB) % MiB
    file.finish()
    assert path.read_bytes() == BLOB  # finished: all of it, before it is closed
    file.close()

    assert path.read_bytes() == BLOB


def test_pieces_smaller_than_the_buffer_reach_the_disk_a_mib_per_direct_write(
    path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    writes: list[int] = []
    real = os.pwrite

    def counted(fd: int, data: Any, offset: int) -> int:
        writes.append(len(data))
        return real(fd, data, offset)

    monkeypatch.setattr(blobfile.os, "pwrite", counted)
    file = BlobFile(path)
    for start in range(0, len(BLOB), 200_000):  # pieces as a socket gives them
        file.write(BLOB[start : start + 200_000])
    file.finish()
    file.close()

    assert path.read_bytes() == BLOB
    # Three whole MiBs, the rest's whole blocks, its partial block: each a device wait.
    assert writes == [MiB, MiB, MiB, len(BLOB) % MiB // BLOCK * BLOCK, len(BLOB) % BLOCK]


def test_a_file_reopened_at_a_partial_block_gives_back_its_bytes_and_goes_on_after_them(
    path: Path,
) -> None:
    cut = 2 * BLOCK + 1000
    path.write_bytes(BLOB[:cut])

    file = BlobFile(path)
    assert file.size == cut
    assert b"".join(file.pieces(5000)) == BLOB[:cut]
    _write(file, BLOB[cut:])
    assert file.direct  # its writes start at the partial block's start: aligned
    file.finish()
    file.close()

    assert path.read_bytes() == BLOB


def test_closing_without_finishing_writes_what_waits_for_a_resume(path: Path) -> None:
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


def test_a_filesystem_without_direct_io_gets_the_same_bytes_through_the_page_cache(
    path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    real = fcntl.fcntl

    def no_direct(fd: int, command: int, arg: Any = 0) -> Any:
        if command == fcntl.F_SETFL and arg & os.O_DIRECT:
            raise OSError(errno.EINVAL, "Invalid argument")
        return real(fd, command, arg)

    monkeypatch.setattr(blobfile.fcntl, "fcntl", no_direct)
    file = BlobFile(path)
    assert not file.direct
    _write(file, BLOB[:100_000])
    assert path.stat().st_size == 100_000  # nothing waits
    _write(file, BLOB[100_000:])
    file.finish()
    file.close()
    reader = BlobReader(path)
    assert not reader.direct

    assert _read_all(reader, 1 << 20) == BLOB
    assert path.read_bytes() == BLOB


@pytest.mark.parametrize("after", [0, 1], ids=["first write", "later write"])
def test_a_direct_write_the_filesystem_refuses_goes_on_through_the_page_cache(
    path: Path, monkeypatch: pytest.MonkeyPatch, after: int
) -> None:
    real: Callable[[int, Any, int], int] = os.pwrite
    calls = []

    def refuse_once(fd: int, data: Any, offset: int) -> int:
        calls.append(offset)
        if len(calls) == after + 1:
            raise OSError(errno.EINVAL, "Invalid argument")
        return real(fd, data, offset)

    monkeypatch.setattr(blobfile.os, "pwrite", refuse_once)
    file = BlobFile(path)
    _write(file, BLOB)
    assert not file.direct
    assert not _is_direct(file)
    file.finish()
    file.close()

    assert path.read_bytes() == BLOB


def test_a_full_disk_is_raised_and_what_reached_the_file_is_a_prefix_of_the_blob(
    path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    disks.fills_after(monkeypatch, 2 * (1 << 20))
    file = BlobFile(path)
    with pytest.raises(OSError) as refused:
        _write(file, BLOB)
    file.close()

    assert refused.value.errno == errno.ENOSPC
    held = path.read_bytes()
    assert len(held) > 0
    assert held == BLOB[: len(held)]


def test_buffers_are_kept_for_the_next_file(path: Path) -> None:
    first = BlobFile(path)
    buffer = first._buffer
    first.close()
    second = BlobFile(path.with_name("second"))

    assert second._buffer is buffer
    second.close()


def test_a_layer_sink_writes_its_partial_file_past_the_page_cache(path: Path) -> None:
    sink = LayerSink(path, sha256_digest(BLOB), diff_id=False)
    sink.open()
    sink.store(BLOB)

    assert sink._file is not None
    assert sink._file.direct
    assert sink.finish() is None
    sink.close()
    assert path.read_bytes() == BLOB


def _read_all(reader: BlobReader, size: int) -> bytes:
    out = []
    while piece := reader.read(size):
        out.append(piece)
    reader.close()
    return b"".join(out)


def test_a_stored_blob_is_read_past_the_page_cache_in_whole_blocks(path: Path) -> None:
    path.write_bytes(BLOB)
    reader = BlobReader(path)

    assert reader.direct
    assert _is_direct(reader)
    first = reader.read(1 << 20)
    assert len(first) == 1 << 20
    assert first + _read_all(reader, 1 << 20) == BLOB
    assert reader.read(1 << 20) == b""


def test_reads_of_any_size_give_the_blob_through_the_page_cache_once_unaligned(
    path: Path,
) -> None:
    path.write_bytes(BLOB)
    reader = BlobReader(path)

    assert _read_all(reader, 5000) == BLOB


def test_a_direct_read_the_filesystem_refuses_goes_on_through_the_page_cache(
    path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    path.write_bytes(BLOB)
    real = os.preadv
    calls = []

    def refuse_second(fd: int, buffers: Any, offset: int) -> int:
        calls.append(offset)
        if len(calls) == 2:
            raise OSError(errno.EINVAL, "Invalid argument")
        return real(fd, buffers, offset)

    monkeypatch.setattr(blobfile.os, "preadv", refuse_second)
    reader = BlobReader(path)
    data = reader.read(1 << 20) + reader.read(1 << 20)

    assert not reader.direct
    assert data + _read_all(reader, 1 << 20) == BLOB


def test_a_partial_file_gives_back_what_it_held_when_opened(path: Path) -> None:
    path.write_bytes(BLOB[: 3 * BLOCK + 10])
    file = BlobFile(path)
    held = file.pieces(1 << 20)
    file.write(BLOB[3 * BLOCK + 10 : 8 * BLOCK])
    file.flush()  # whole blocks: written directly
    assert path.stat().st_size == 8 * BLOCK

    assert b"".join(held) == BLOB[: 3 * BLOCK + 10]
    file.close()


@pytest.mark.parametrize("first", [0, 100, BLOCK + 1])
def test_a_filesystem_that_takes_the_flag_but_refuses_direct_writes_gets_a_long_write_whole(
    path: Path, monkeypatch: pytest.MonkeyPatch, first: int
) -> None:
    real = os.pwrite

    def no_direct_io(fd: int, data: Any, offset: int) -> int:
        if fcntl.fcntl(fd, fcntl.F_GETFL) & os.O_DIRECT:
            raise OSError(errno.EINVAL, "Invalid argument")
        return real(fd, data, offset)

    monkeypatch.setattr(blobfile.os, "pwrite", no_direct_io)
    file = BlobFile(path)
    file.write(BLOB[:first])
    file.write(BLOB[first:])  # longer than the buffer, in one call
    file.finish()
    file.close()

    assert path.read_bytes() == BLOB


def test_a_write_that_makes_no_progress_is_a_full_disk(
    path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setattr(blobfile.os, "pwrite", lambda fd, data, offset: 0)
    file = BlobFile(path)
    file.write(BLOB[: 2 * BLOCK])  # waits in the buffer
    with pytest.raises(OSError) as refused:
        file.flush()
    file.close()

    assert refused.value.errno == errno.ENOSPC


def test_a_staged_archive_file_whose_last_block_finds_the_disk_full_fails_the_load(
    path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    real = os.pwrite

    def room_for_direct_blocks_only(fd: int, data: Any, offset: int) -> int:
        if not fcntl.fcntl(fd, fcntl.F_GETFL) & os.O_DIRECT:
            raise OSError(errno.ENOSPC, os.strerror(errno.ENOSPC))
        return real(fd, data, offset)

    monkeypatch.setattr(blobfile.os, "pwrite", room_for_direct_blocks_only)
    data = BLOB[: 3 * BLOCK + 1000]
    sink = _EntrySink("blobs/sha256/" + sha256_digest(data).split(":")[1], path, len(data))
    sink.write(data)

    with pytest.raises(StorageFullError):
        sink.finish()
    sink.close()


@pytest.mark.parametrize("opening", [BlobFile, BlobReader])
def test_a_file_that_fails_as_it_opens_leaks_no_descriptor(
    path: Path, monkeypatch: pytest.MonkeyPatch, opening: type[BlobFile | BlobReader]
) -> None:
    path.write_bytes(BLOB[:5000])
    fds = len(os.listdir("/proc/self/fd"))

    def no_memory() -> Any:
        raise OSError(errno.ENOMEM, os.strerror(errno.ENOMEM))

    monkeypatch.setattr(blobfile._buffers, "take", no_memory)
    with pytest.raises(OSError):
        opening(path)

    assert len(os.listdir("/proc/self/fd")) == fds


def test_a_blob_started_again_after_finishing_is_written_past_the_page_cache_again(
    path: Path,
) -> None:
    file = BlobFile(path)
    _write(file, BLOB[: BLOCK + 5])
    file.finish()
    file.truncate()

    assert file.direct
    _write(file, BLOB)
    file.finish()
    file.close()
    assert path.read_bytes() == BLOB


@pytest.fixture
def stored(path: Path) -> StoredBlob:
    path.write_bytes(BLOB)
    return StoredBlob(sha256_digest(BLOB), len(BLOB), path)


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
    fds = len(os.listdir("/proc/self/fd"))
    with anyio.CancelScope() as scope:
        async with stored.reading() as reading:
            await reading.read()
            scope.cancel()
            await reading.read()

    assert scope.cancelled_caught
    assert reading._ahead is not None
    assert reading._ahead.done()
    assert len(os.listdir("/proc/self/fd")) == fds


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
    fds = len(os.listdir("/proc/self/fd"))
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
    assert len(os.listdir("/proc/self/fd")) == fds


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


def test_a_direct_read_failing_with_a_disk_error_raises_it(
    path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    path.write_bytes(BLOB)

    def eio(*args: Any) -> int:
        raise OSError(errno.EIO, os.strerror(errno.EIO))

    monkeypatch.setattr(blobfile.os, "preadv", eio)
    reader = BlobReader(path)
    with pytest.raises(OSError) as failed:
        reader.read(1 << 20)
    reader.close()

    assert failed.value.errno == errno.EIO


@pytest.mark.anyio
@pytest.mark.parametrize("whole", [True, False], ids=["read whole", "cut short"])
async def test_a_saved_blob_closes_its_file(stored: StoredBlob, whole: bool) -> None:
    fds = len(os.listdir("/proc/self/fd"))
    entry = save._Entry("blobs/sha256/x", stored.size, path=stored.path, digest=stored.digest)
    pieces = save._blob_pieces(entry)
    if whole:
        assert b"".join([piece async for piece in pieces]) == BLOB
    else:
        await pieces.__anext__()
        await pieces.aclose()

    assert len(os.listdir("/proc/self/fd")) == fds


def test_the_last_partial_block_is_read_past_the_page_cache_too(path: Path) -> None:
    path.write_bytes(BLOB)  # its last block is partial
    reader = BlobReader(path)
    while reader.read(1 << 20):
        pass

    assert reader.direct
    reader.close()


def test_a_new_download_opens_nothing_to_read_back(
    path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setattr(blobfile, "BlobReader", None)
    file = BlobFile(path)

    assert list(file.pieces(1 << 20)) == []
    file.close()
