"""The byte pipeline: LayerSink writes, hashes and un-compresses a layer blob in one pass."""

from __future__ import annotations

import errno
import gzip
import hashlib
import io
import os
import random
import tarfile
import tempfile
import threading
import time
import tracemalloc
from collections.abc import Callable, Iterator
from pathlib import Path

import pytest
from backports import zstd
from hypothesis import assume, given, settings
from hypothesis import strategies as st
from isal import isal_zlib

from ferryd import blobfile
from ferryd.codec import BATCH_SIZE, LayerSink, detect_compression, inflater
from ferryd.errors import ContentError, DigestMismatchError, StorageFullError, StoreError
from ferryd.oci.digest import Digest
from ferryd.oci.mediatypes import Compression
from support import disks
from support.digests import sha256

MiB = 1 << 20
deterministic = settings(derandomize=True, max_examples=100, deadline=None)


def _tar(files: dict[str, bytes]) -> bytes:
    """A real, reproducible tar archive: what a layer holds once uncompressed."""
    buffer = io.BytesIO()
    with tarfile.open(fileobj=buffer, mode="w", format=tarfile.PAX_FORMAT) as archive:
        for name, content in files.items():
            info = tarfile.TarInfo(name)
            info.size = len(content)
            info.mtime = 1_700_000_000
            archive.addfile(info, io.BytesIO(content))
    return buffer.getvalue()


def _gzip(data: bytes) -> bytes:
    return gzip.compress(data, mtime=0)


def _zstd(data: bytes) -> bytes:
    return zstd.compress(data)


def _plain(data: bytes) -> bytes:
    return data


COMPRESSORS: dict[str, Callable[[bytes], bytes]] = {
    "gzip": _gzip,
    "zstd": _zstd,
    "plain": _plain,
}


def _mixed(size: int, seed: int = 0) -> bytes:
    """`size` bytes that compress about 16:1: random 4 KiB runs between zero runs."""
    rng = random.Random(seed)
    block = 64 * 1024
    pieces = [rng.randbytes(4096) + bytes(block - 4096) for _ in range(size // block + 1)]
    return b"".join(pieces)[:size]


def _chunks(data: bytes, size: int) -> Iterator[bytes]:
    for start in range(0, len(data), size):
        yield data[start : start + size]


def _opened(path: Path, blob: bytes) -> LayerSink:
    """A sink for `blob`, its partial file opened empty."""
    sink = LayerSink(path, sha256(blob))
    assert sink.open() == 0
    return sink


def _pour(
    path: Path,
    blob: bytes,
    chunk_size: int | None = None,
    *,
    expected: Digest | None = None,
    diff_id: bool = True,
    piped: bool = False,
) -> tuple[Digest | None, LayerSink]:
    """Write `blob` through a fresh sink in chunks of `chunk_size` and finish it; `piped`:
    through `pipe` (inflated in the sink's own thread) instead of `write`."""
    sink = LayerSink(path, expected or sha256(blob), diff_id=diff_id)
    try:
        assert sink.open() == 0
        for chunk in _chunks(blob, chunk_size or max(len(blob), 1)):
            if piped:
                sink.pipe([chunk])
            else:
                sink.write(chunk)
        return sink.finish(), sink
    finally:
        sink.close()


@pytest.fixture
def blob_path(tmp_path: Path) -> Path:
    return tmp_path / "partial" / "sha256" / "blob"


LAYER = _tar({"etc/os-release": b"NAME=ferry\n", "bin/tool": _mixed(300_000)})


# Formats


@pytest.mark.parametrize("kind", COMPRESSORS)
def test_finish_returns_the_diff_id_of_the_uncompressed_tar(blob_path: Path, kind: str) -> None:
    blob = COMPRESSORS[kind](LAYER)

    diff_id, sink = _pour(blob_path, blob)

    assert diff_id == sha256(LAYER)
    assert sink.offset == len(blob)
    assert sink.uncompressed_size == len(LAYER)
    assert blob_path.read_bytes() == blob


def test_a_plain_tar_has_its_digest_as_diff_id(blob_path: Path) -> None:
    diff_id, _ = _pour(blob_path, LAYER)
    assert diff_id == sha256(LAYER)


@pytest.mark.parametrize(
    ("head", "compression"),
    [
        (b"\x1f\x8b\x08\x00", Compression.GZIP),
        (b"\x1f\x8b", Compression.GZIP),
        (b"\x28\xb5\x2f\xfd\x00", Compression.ZSTD),
        (b"\x28\xb5\x2f", Compression.NONE),
        (b"\x1f", Compression.NONE),
        (b"", Compression.NONE),
        (b"ustar", Compression.NONE),
        (LAYER[:512], Compression.NONE),
    ],
)
def test_detect_compression_by_magic_bytes(head: bytes, compression: Compression) -> None:
    assert detect_compression(head) is compression


def test_the_media_type_does_not_matter_the_bytes_do(blob_path: Path) -> None:
    # A zstd blob is recognised as zstd whatever the manifest says: the sink never sees it.
    diff_id, _ = _pour(blob_path, _zstd(LAYER))
    assert diff_id == sha256(LAYER)


def test_an_empty_blob_has_the_empty_diff_id(blob_path: Path) -> None:
    diff_id, sink = _pour(blob_path, b"")
    assert diff_id == sha256(b"")
    assert (sink.offset, sink.uncompressed_size) == (0, 0)
    assert blob_path.read_bytes() == b""


@pytest.mark.parametrize("blob", [b"a", b"ab", b"abc", b"\x28\xb5\x2f"])
def test_a_blob_shorter_than_any_magic_is_plain(blob_path: Path, blob: bytes) -> None:
    diff_id, _ = _pour(blob_path, blob, 1)
    assert diff_id == sha256(blob)


@pytest.mark.parametrize("kind", ["gzip", "zstd"])
def test_a_compressed_empty_tar_stream(blob_path: Path, kind: str) -> None:
    diff_id, _ = _pour(blob_path, COMPRESSORS[kind](b""))
    assert diff_id == sha256(b"")


def test_multi_member_gzip_is_read_to_the_end(blob_path: Path) -> None:
    first, second = LAYER[:1000], LAYER[1000:]
    blob = _gzip(first) + _gzip(b"") + _gzip(second)

    diff_id, sink = _pour(blob_path, blob)

    assert diff_id == sha256(LAYER)
    assert sink.uncompressed_size == len(LAYER)


def test_multi_frame_zstd_is_read_to_the_end(blob_path: Path) -> None:
    blob = _zstd(LAYER[:1000]) + _zstd(b"") + _zstd(LAYER[1000:])
    diff_id, _ = _pour(blob_path, blob)
    assert diff_id == sha256(LAYER)


@pytest.mark.parametrize("kind", ["gzip", "zstd"])
def test_a_member_or_frame_that_ends_exactly_at_a_write_boundary(tmp_path: Path, kind: str) -> None:
    # The next write must start a new member/frame, not feed an ended decompressor.
    compress = COMPRESSORS[kind]
    parts = [b"first part " * 50, b"second part " * 70, b"third"]
    members = [compress(part) for part in parts]
    for number, _ in enumerate(members):
        sink = LayerSink(tmp_path / f"{kind}{number}", sha256(b"".join(members)))
        sink.open()
        for member in members:
            sink.write(member)
        assert sink.finish() == sha256(b"".join(parts))
        sink.close()


@pytest.mark.parametrize("kind", ["gzip", "zstd"])
def test_every_cut_of_a_multi_part_stream_gives_the_same_diff_id(tmp_path: Path, kind: str) -> None:
    compress = COMPRESSORS[kind]
    parts = [b"a" * 300, b"", b"b" * 200]
    blob = b"".join(compress(part) for part in parts)
    for cut in range(len(blob) + 1):
        sink = LayerSink(tmp_path / "blob", sha256(blob))
        sink.open()
        sink.restart()
        for piece in (blob[:cut], blob[cut:]):
            if piece:
                sink.write(piece)
        assert sink.finish() == sha256(b"".join(parts)), cut
        sink.close()


@pytest.mark.parametrize("kind", COMPRESSORS)
def test_empty_writes_are_harmless_even_after_the_stream_ends(blob_path: Path, kind: str) -> None:
    blob = COMPRESSORS[kind](LAYER)
    sink = LayerSink(blob_path, sha256(blob))
    try:
        sink.open()
        sink.write(b"")
        sink.write(blob)
        sink.write(b"")  # an ended zstd decompressor raises EOFError if fed again
        assert sink.finish() == sha256(LAYER)
    finally:
        sink.close()


def test_a_sha512_blob_digest(blob_path: Path) -> None:
    blob = _gzip(LAYER)
    expected = Digest("sha512:" + hashlib.sha512(blob).hexdigest())
    assert _pour(blob_path, blob, expected=expected)[0] == sha256(LAYER)


def test_without_diff_id_only_the_blob_is_checked(blob_path: Path) -> None:
    blob = b"\x1f\x8b not gzip at all"
    diff_id, sink = _pour(blob_path, blob, diff_id=False)
    assert diff_id is None
    assert sink.uncompressed_size == 0
    assert blob_path.read_bytes() == blob


# Chunking: any batch sizes give the same result.

LARGE = _mixed(9 * MiB)  # more than two inflate pieces


@pytest.mark.parametrize("piped", [False, True], ids=["write", "pipe"])
@pytest.mark.parametrize("kind", COMPRESSORS)
@pytest.mark.parametrize("chunk_size", [4096, 65536, BATCH_SIZE, 3 * MiB, None])
def test_any_chunking_gives_the_same_digests(
    blob_path: Path, kind: str, chunk_size: int | None, piped: bool
) -> None:
    blob = COMPRESSORS[kind](LARGE)
    diff_id, sink = _pour(blob_path, blob, chunk_size, piped=piped)
    assert diff_id == sha256(LARGE)
    assert sink.uncompressed_size == len(LARGE)
    assert blob_path.read_bytes() == blob


@pytest.mark.parametrize("kind", COMPRESSORS)
def test_one_byte_at_a_time(blob_path: Path, kind: str) -> None:
    data = _mixed(150_000, seed=3)
    diff_id, _ = _pour(blob_path, COMPRESSORS[kind](data), 1)
    assert diff_id == sha256(data)


_PAYLOADS = st.builds(
    lambda head, zeros, tail: head + bytes(zeros) + tail,
    st.binary(max_size=300),
    st.integers(0, 200_000),
    st.binary(max_size=300),
)


@st.composite
def _cuts(draw: st.DrawFn, blob: bytes) -> list[bytes]:
    points = sorted(draw(st.lists(st.integers(0, len(blob)), max_size=8)))
    pieces, start = [], 0
    for point in [*points, len(blob)]:
        pieces.append(blob[start:point])
        start = point
    return [piece for piece in pieces if piece]


@deterministic
@given(st.sampled_from(sorted(COMPRESSORS)), _PAYLOADS, st.integers(1, 3), st.data())
def test_random_chunkings_of_random_layers(
    kind: str, payload: bytes, parts: int, data: st.DataObject
) -> None:
    # An uncompressed layer is a tar: it never starts with a compression magic number.
    assume(kind != "plain" or detect_compression(payload) is Compression.NONE)
    compress = COMPRESSORS[kind]
    step = len(payload) // parts + 1
    blob = b"".join(compress(payload[i : i + step]) for i in range(0, len(payload), step))
    with tempfile.TemporaryDirectory() as directory:
        sink = LayerSink(Path(directory) / "blob", sha256(blob))
        try:
            sink.open()
            for piece in data.draw(_cuts(blob)):
                sink.write(piece)
            assert sink.finish() == sha256(payload)
            assert sink.uncompressed_size == len(payload)
        finally:
            sink.close()


@deterministic
@given(st.sampled_from(["gzip", "zstd"]), _PAYLOADS, st.data())
def test_inflaters_give_back_the_payload_whatever_the_feeding(
    kind: str, payload: bytes, data: st.DataObject
) -> None:
    blob = COMPRESSORS[kind](payload)
    decoder = inflater(detect_compression(blob))
    out = b"".join(piece for chunk in data.draw(_cuts(blob)) for piece in decoder.feed(chunk))
    decoder.finish()
    assert out == payload


# Resuming a download cut in the middle


@pytest.mark.parametrize("kind", COMPRESSORS)
@pytest.mark.parametrize("where", [1 / 1e9, 3 / 1e9, 10 / 1e9, 0.1, 0.5, 0.99, 1])
def test_reopening_resumes_at_the_bytes_written(blob_path: Path, kind: str, where: float) -> None:
    blob = COMPRESSORS[kind](LAYER)
    cut = max(1, round(len(blob) * where)) if where < 1 else len(blob)
    first = LayerSink(blob_path, sha256(blob))
    first.open()
    first.write(blob[:cut])
    first.close()

    # A new sink, as after a daemon restart, reads the partial file back.
    second = LayerSink(blob_path, sha256(blob))
    assert second.open() == cut
    second.write(blob[cut:])
    assert second.finish() == sha256(LAYER)
    assert second.uncompressed_size == len(LAYER)
    second.close()
    assert blob_path.read_bytes() == blob


@pytest.mark.parametrize("kind", COMPRESSORS)
def test_reopening_the_same_sink_starts_from_the_file(blob_path: Path, kind: str) -> None:
    blob = COMPRESSORS[kind](LAYER)
    sink = _opened(blob_path, blob)
    sink.write(blob[:5000])
    sink.close()

    assert sink.open() == 5000
    sink.write(blob[5000:])
    assert sink.finish() == sha256(LAYER)
    assert sink.uncompressed_size == len(LAYER)
    sink.close()


def test_opening_twice_does_not_count_the_file_twice(blob_path: Path) -> None:
    blob = _gzip(LAYER)
    sink = _opened(blob_path, blob)
    sink.write(blob[:100])
    assert sink.open() == 100
    sink.write(blob[100:])
    assert sink.finish() == sha256(LAYER)
    sink.close()


def test_resuming_across_many_cuts(blob_path: Path) -> None:
    blob = _zstd(LARGE)
    for start, end in [
        (0, 7),
        (7, 5000),
        (5000, 5001),
        (5001, len(blob) // 2),
        (len(blob) // 2, len(blob)),
    ]:
        sink = LayerSink(blob_path, sha256(blob))
        assert sink.open() == start
        sink.write(blob[start:end])
        if end == len(blob):
            assert sink.finish() == sha256(LARGE)
        sink.close()


def test_open_creates_the_directories(tmp_path: Path) -> None:
    path = tmp_path / "a" / "b" / "c" / "blob"
    sink = LayerSink(path, sha256(b""))
    assert sink.open() == 0
    sink.close()
    assert path.exists()


def test_a_partial_file_that_is_not_a_layer_is_emptied_on_open(blob_path: Path) -> None:
    blob_path.parent.mkdir(parents=True)
    blob_path.write_bytes(b"\x1f\x8bgarbage that is not deflate" * 10)
    good = _gzip(LAYER)

    sink = LayerSink(blob_path, sha256(good))
    assert sink.open() == 0
    assert blob_path.read_bytes() == b""
    sink.write(good)
    assert sink.finish() == sha256(LAYER)
    sink.close()


def test_restart_truncates_the_file_and_forgets_the_hashes(blob_path: Path) -> None:
    blob = _gzip(LAYER)
    sink = _opened(blob_path, blob)
    sink.write(blob[:3000])
    sink.write(b"bytes from another blob")

    sink.restart()

    assert (sink.offset, sink.uncompressed_size) == (0, 0)
    assert blob_path.stat().st_size == 0
    sink.write(blob)
    assert sink.finish() == sha256(LAYER)
    sink.close()
    assert blob_path.read_bytes() == blob


@pytest.mark.parametrize("kind", ["gzip", "zstd"])
def test_layers_piped_at_once_each_get_their_own_diff_id(tmp_path: Path, kind: str) -> None:
    # With another layer inflating, a layer hashes its output where it inflates; alone
    # again, in the hash pool: either way, in order.
    rng = random.Random(7)
    payloads = [rng.randbytes(size) + _mixed(size) for size in (MiB, MiB, 3 * MiB)]
    blobs = [COMPRESSORS[kind](payload) for payload in payloads]
    sinks = [LayerSink(tmp_path / f"blob{n}", sha256(blob)) for n, blob in enumerate(blobs)]
    pieces = [list(_chunks(blob, BATCH_SIZE)) for blob in blobs]
    assert [len(p) for p in pieces] == [2, 2, 4]
    for sink in sinks:
        sink.open()
    for step in range(4):
        for sink, chunks in zip(sinks, pieces, strict=True):
            if step < len(chunks):
                sink.pipe([chunks[step]])
        if step == 1:  # the last layer goes on alone
            assert sinks[0].finish() == sha256(payloads[0])
            assert sinks[1].finish() == sha256(payloads[1])
    assert sinks[2].finish() == sha256(payloads[2])
    for sink in sinks:
        sink.close()


def test_restart_while_piping_forgets_what_the_inflate_thread_had(blob_path: Path) -> None:
    blob = _gzip(LARGE)
    sink = _opened(blob_path, blob)
    sink.pipe([blob[: 3 * MiB]])
    sink.pipe([b"bytes from another blob"])

    sink.restart()

    for chunk in _chunks(blob, BATCH_SIZE):
        sink.pipe([chunk])
    assert sink.finish() == sha256(LARGE)
    assert sink.uncompressed_size == len(LARGE)
    sink.close()


def test_a_piped_broken_stream_is_a_content_error_at_finish(blob_path: Path) -> None:
    blob = _gzip(LARGE)
    broken = blob[:1000] + bytes(5000) + blob[6000:]
    sink = LayerSink(blob_path, sha256(broken))
    sink.open()
    for chunk in _chunks(broken, BATCH_SIZE):
        sink.pipe([chunk])
    with pytest.raises(ContentError, match="not valid gzip"):
        sink.finish()
    sink.close()


def test_a_failure_in_the_inflate_thread_is_raised_at_finish(
    blob_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    blob = _gzip(LARGE)
    sink = _opened(blob_path, blob)

    def fail(batch: bytes) -> None:
        raise MemoryError("no room to inflate")

    monkeypatch.setattr(sink, "inflate", fail)
    for chunk in _chunks(blob, BATCH_SIZE):
        sink.pipe([chunk])  # the thread goes on taking batches: the store never waits
    with pytest.raises(MemoryError, match="no room"):
        sink.finish()
    sink.close()


def test_restart_forgets_a_broken_stream(blob_path: Path) -> None:
    blob = _zstd(LAYER)
    sink = _opened(blob_path, blob)
    sink.write(b"\x28\xb5\x2f\xfd\xff\xff\xff\xff\xff\xff")
    sink.restart()
    sink.write(blob)
    assert sink.finish() == sha256(LAYER)
    sink.close()


# Broken content


@pytest.mark.parametrize("kind", ["gzip", "zstd"])
@pytest.mark.parametrize("keep", [4, 5, 10, 0.5, -8, -4, -1])
def test_a_truncated_stream_is_a_content_error(blob_path: Path, kind: str, keep: float) -> None:
    blob = COMPRESSORS[kind](LAYER)
    cut = int(len(blob) * keep) if isinstance(keep, float) else keep
    truncated = blob[:cut]

    # Its digest is right (the registry served exactly this): the stream is what is wrong.
    with pytest.raises(ContentError, match=r"truncated|not valid") as caught:
        _pour(blob_path, truncated)
    assert not isinstance(caught.value, DigestMismatchError)


def test_a_gzip_magic_alone_is_a_truncated_stream(blob_path: Path) -> None:
    with pytest.raises(ContentError, match="truncated"):
        _pour(blob_path, b"\x1f\x8b")


def test_a_blob_cut_inside_the_zstd_magic_is_taken_as_plain(blob_path: Path) -> None:
    # Three bytes cannot be told from an uncompressed blob; docker decides the same way.
    assert _pour(blob_path, b"\x28\xb5\x2f")[0] == sha256(b"\x28\xb5\x2f")


def test_garbage_after_the_gzip_magic_is_a_content_error(blob_path: Path) -> None:
    blob = b"\x1f\x8b" + b"this is not deflate data" * 100
    with pytest.raises(ContentError, match="not valid gzip"):
        _pour(blob_path, blob)


def test_garbage_after_the_zstd_magic_is_a_content_error(blob_path: Path) -> None:
    blob = b"\x28\xb5\x2f\xfd" + b"\xff" * 100
    with pytest.raises(ContentError, match="not valid zstd"):
        _pour(blob_path, blob)


@pytest.mark.parametrize("trailer", [b"\x00" * 8, b"junk", b"\x1f\x8b"])
def test_garbage_after_a_complete_gzip_member_is_a_content_error(
    blob_path: Path, trailer: bytes
) -> None:
    with pytest.raises(ContentError):
        _pour(blob_path, _gzip(LAYER) + trailer)


def test_a_corrupted_crc_is_a_content_error(blob_path: Path) -> None:
    blob = bytearray(_gzip(LAYER))
    blob[-6] ^= 0xFF  # inside the CRC32 of the trailer
    with pytest.raises(ContentError, match="not valid gzip"):
        _pour(blob_path, bytes(blob))


def test_a_broken_stream_is_reported_at_finish_not_at_write(blob_path: Path) -> None:
    blob = b"\x1f\x8b" + b"garbage" * 10
    sink = _opened(blob_path, blob)
    sink.write(blob)  # the bytes are on disk, hashed: the blob digest decides first
    with pytest.raises(ContentError):
        sink.finish()
    sink.close()


def test_a_wrong_blob_digest_is_a_digest_mismatch(blob_path: Path) -> None:
    blob = _gzip(LAYER)
    expected = sha256(b"something else")
    with pytest.raises(DigestMismatchError, match=str(expected)):
        _pour(blob_path, blob, expected=expected)


def test_a_wrong_digest_wins_over_a_broken_stream(blob_path: Path) -> None:
    with pytest.raises(DigestMismatchError):
        _pour(blob_path, b"\x1f\x8bnot gzip", expected=sha256(b"other"))


# Bounded memory: a small blob that inflates hugely is hashed in pieces.

BOMB_SIZE = 200 * MiB


def _compress_zeros(kind: str, size: int) -> bytes:
    zeros = bytes(MiB)
    if kind == "gzip":
        deflate = isal_zlib.compressobj(1, isal_zlib.DEFLATED, 31)
        return b"".join(deflate.compress(zeros) for _ in range(size // MiB)) + deflate.flush()
    compressor = zstd.ZstdCompressor()
    return b"".join(compressor.compress(zeros) for _ in range(size // MiB)) + compressor.flush()


@pytest.mark.parametrize("kind", ["gzip", "zstd"])
def test_a_decompression_bomb_is_hashed_in_bounded_memory(blob_path: Path, kind: str) -> None:
    blob = _compress_zeros(kind, BOMB_SIZE)
    assert len(blob) < BOMB_SIZE // 500
    expected = hashlib.sha256()
    zeros = bytes(MiB)
    for _ in range(BOMB_SIZE // MiB):
        expected.update(zeros)

    sink = _opened(blob_path, blob)
    tracemalloc.start()
    try:
        for batch in _chunks(blob, BATCH_SIZE):
            sink.write(batch)
        diff_id = sink.finish()
        _, peak = tracemalloc.get_traced_memory()
    finally:
        tracemalloc.stop()
        sink.close()

    assert diff_id == "sha256:" + expected.hexdigest()
    assert sink.uncompressed_size == BOMB_SIZE
    assert peak < 32 * MiB, f"peak {peak / MiB:.1f} MiB while inflating {BOMB_SIZE // MiB} MiB"


# Random bytes: gzip leaves them as they are, so the blob is several batches.
INCOMPRESSIBLE = random.Random(3).randbytes(4 * MiB)


def test_piped_batches_reach_the_file_in_another_thread_before_a_written_one(
    blob_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    # `pipe` hands the file's writes to the sink's writer thread (the disk's wait is
    # not in front of the next batch); a batch written at once (a resumed blob's small
    # rest) goes after them, in the file and in the inflated stream.
    blob = _gzip(INCOMPRESSIBLE)
    writers: set[str] = set()
    real = blobfile.BlobFile.write

    def write(self: blobfile.BlobFile, data: bytes) -> None:
        writers.add(threading.current_thread().name)
        real(self, data)

    monkeypatch.setattr(blobfile.BlobFile, "write", write)
    sink = _opened(blob_path, blob)
    chunks = list(_chunks(blob, BATCH_SIZE))
    for chunk in chunks[:-1]:
        sink.pipe([chunk])
    sink.write(chunks[-1])

    assert sink.finish() == sha256(INCOMPRESSIBLE)
    sink.close()
    assert blob_path.read_bytes() == blob
    assert writers == {"ferryd-write", threading.current_thread().name}


def test_a_full_disk_met_by_the_writer_thread_is_raised_by_the_next_pipe(
    blob_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    blob = _gzip(INCOMPRESSIBLE)
    disks.fills_after(monkeypatch, BATCH_SIZE)
    sink = _opened(blob_path, blob)

    def pipe_all() -> None:
        for chunk in _chunks(blob, BATCH_SIZE):
            sink.pipe([chunk])

    with pytest.raises(StorageFullError):
        pipe_all()
    sink.close()

    held = blob_path.read_bytes()
    assert 0 < len(held) < len(blob)
    assert held == blob[: len(held)]  # a prefix: a later pull resumes after it


def test_a_full_disk_met_by_the_last_piped_batch_is_raised_by_finish(
    blob_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    blob = _gzip(INCOMPRESSIBLE)
    sink = _opened(blob_path, blob)
    chunks = list(_chunks(blob, BATCH_SIZE))
    for chunk in chunks[:-1]:
        sink.pipe([chunk])
    sink.settle()  # what came before is in the file

    disks.fills_after(monkeypatch, 0)
    sink.pipe([chunks[-1]])
    with pytest.raises(StorageFullError):
        sink.finish()
    sink.close()
    assert blob.startswith(blob_path.read_bytes())


def test_a_failed_write_is_raised_again_until_the_sink_starts_over(
    blob_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    # The batches counted after the failed one never reached the file: nothing may go
    # on from those counts (a later pipe, a digest that matches the hashes but not the
    # file), until a restart truncates the file and the counts with it.
    blob = _gzip(INCOMPRESSIBLE)
    chunks = list(_chunks(blob, BATCH_SIZE))
    sink = _opened(blob_path, blob)
    disks.fills_after(monkeypatch, 0)

    def pipe_all() -> None:
        for chunk in chunks:
            sink.pipe([chunk])

    with pytest.raises(StorageFullError):
        pipe_all()
    with pytest.raises(StorageFullError):
        sink.pipe([chunks[0]])
    with pytest.raises(StorageFullError):
        sink.settle()
    with pytest.raises(StorageFullError):
        sink.finish()

    monkeypatch.undo()  # room again
    sink.restart()
    pipe_all()
    assert sink.finish() == sha256(INCOMPRESSIBLE)
    sink.close()
    assert blob_path.read_bytes() == blob


@pytest.mark.parametrize("kind", ["gzip", "zstd"])
def test_a_layer_piped_in_batches_of_several_pieces_gets_its_digest_and_diff_id(
    blob_path: Path, kind: str
) -> None:
    blob = (_gzip if kind == "gzip" else _zstd)(LARGE)
    sink = _opened(blob_path, blob)
    pieces = list(_chunks(blob, 200_000))  # as a socket gives them
    for start in range(0, len(pieces), 6):  # ~1 MiB batches, not joined
        sink.pipe(pieces[start : start + 6])

    assert sink.finish() == sha256(LARGE)
    assert sink.uncompressed_size == len(LARGE)
    sink.close()
    assert blob_path.read_bytes() == blob


def test_settling_leaves_the_file_holding_what_offset_counts(
    blob_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    blob = _gzip(INCOMPRESSIBLE)
    written: list[int] = []
    real = blobfile.BlobFile.write

    def slow_write(self: blobfile.BlobFile, data: bytes) -> None:
        time.sleep(0.05)  # a disk that takes its time: settle must wait for it
        real(self, data)
        written.append(len(data))

    monkeypatch.setattr(blobfile.BlobFile, "write", slow_write)
    sink = _opened(blob_path, blob)
    pieces = list(_chunks(blob[: 3 * BATCH_SIZE // 2], 200_000))  # not a whole MiB
    sink.pipe(pieces[:4])
    sink.pipe(pieces[4:])

    sink.settle()

    assert sum(written) == sink.offset  # settled: every piece reached the file
    assert blob_path.stat().st_size == sink.offset  # all of it: nothing waits in the process
    sink.close()
    assert blob_path.read_bytes() == blob[: sink.offset]


def test_a_full_disk_met_by_a_piped_batch_is_raised_by_settling(
    blob_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    # What a cut download waits for before its next attempt: the full disk is the truer
    # error, though no later `pipe` has come to raise it.
    blob = _gzip(INCOMPRESSIBLE)
    sink = _opened(blob_path, blob)
    disks.fills_after(monkeypatch, 100_000)
    sink.pipe([blob[:300_000]])

    with pytest.raises(StorageFullError):
        sink.settle()
    sink.close()
    assert blob_path.read_bytes() == blob[:100_000]  # a prefix: a later pull resumes after it


def test_a_disk_error_met_by_the_files_background_flush_is_raised_by_settling(
    blob_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    # Settling waits for the file's hand-over to the disk too: a cut download's next
    # attempt, or a load about to move the file into the store, learns what it refused.
    monkeypatch.setattr(blobfile, "_KICK", 4 * blobfile._PAGE)
    monkeypatch.setattr(blobfile, "_FLUSH_EVERY", 4 * blobfile._PAGE)

    def failing_flush(fd: int) -> None:
        time.sleep(0.1)  # a disk that takes its time: settle must wait for it
        raise OSError(errno.EIO, os.strerror(errno.EIO))

    monkeypatch.setattr(blobfile.os, "fdatasync", failing_flush)
    blob = _gzip(INCOMPRESSIBLE)
    sink = _opened(blob_path, blob)
    sink.pipe([blob[:300_000]])  # a flush due as it is written

    with pytest.raises(StoreError) as failed:
        sink.settle()
    sink.close()
    assert type(failed.value) is StoreError  # what `disk_errors` makes of EIO: a failing disk
    assert "I/O error" in str(failed.value)
    assert blob_path.stat().st_size == 0  # emptied: a later pull does not resume from it
