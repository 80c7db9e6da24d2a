"""A blob's partial file written past the page cache: whole blocks with O_DIRECT, the
last partial block when the next write comes or the file is finished or closed; the
page cache where the filesystem refuses direct IO."""

from __future__ import annotations

import errno
import fcntl
import os
from collections.abc import Callable
from pathlib import Path
from typing import Any

import pytest

from ferryd import blobfile
from ferryd.blobfile import BLOCK, BlobFile
from ferryd.codec import LayerSink
from ferryd.oci.digest import sha256_digest

BLOB = os.urandom(3 * (1 << 20) + 12345)
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


def _is_direct(file: BlobFile) -> bool:
    return bool(fcntl.fcntl(file._fd, fcntl.F_GETFL) & os.O_DIRECT)


def test_pieces_of_any_size_are_written_past_the_page_cache_and_end_as_the_blob(
    path: Path,
) -> None:
    file = BlobFile(path)
    assert file.direct
    assert _is_direct(file)
    _write(file, BLOB)
    # Only whole blocks have reached the file; the rest waits for finish.
    assert path.stat().st_size == len(BLOB) - len(BLOB) % BLOCK
    file.finish()
    file.close()

    assert path.read_bytes() == BLOB


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
    real = os.pwrite
    budget = [2 * (1 << 20)]

    def fills_up(fd: int, data: Any, offset: int) -> int:
        if budget[0] <= 0:
            raise OSError(errno.ENOSPC, os.strerror(errno.ENOSPC))
        written = real(fd, memoryview(data)[: budget[0]], offset)
        budget[0] -= written
        return written

    monkeypatch.setattr(blobfile.os, "pwrite", fills_up)
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
