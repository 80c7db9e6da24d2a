"""codec's ArchiveSink: an archive (plain tar, bzip2, gzip, xz, zstd) written as what it
decompresses to, hashed as written, every piece seen by the check first."""

from __future__ import annotations

import bz2
import gzip
import hashlib
import lzma
import os
from collections.abc import Callable
from pathlib import Path

import pytest
from backports import zstd

from ferryd.codec import ArchiveSink, archive_inflater
from ferryd.errors import ContentError

PAYLOAD = os.urandom(300_000) + bytes(3_000_000)  # random, then very compressible


@pytest.mark.parametrize(
    ("compress", "name"),
    [
        (lambda data: data, "tar"),
        (gzip.compress, "gzip"),
        (lambda data: gzip.compress(data[:1000]) + gzip.compress(data[1000:]), "gzip"),
        (bz2.compress, "bzip2"),
        (lzma.compress, "xz"),
        (zstd.compress, "zstd"),
    ],
)
def test_every_format_is_written_as_what_it_decompresses_to(
    tmp_path: Path, compress: Callable[[bytes], bytes], name: str
) -> None:
    seen: list[int] = []
    sink = ArchiveSink(tmp_path / "out", lambda piece: seen.append(len(piece)))
    sink.open()
    data = compress(PAYLOAD)
    for start in range(0, len(data), 100_000):  # pieces as a request body brings them
        sink.feed(data[start : start + 100_000])
    digest = sink.finish()
    sink.close()

    assert sink.format == name
    assert digest == "sha256:" + hashlib.sha256(PAYLOAD).hexdigest()
    assert (tmp_path / "out").read_bytes() == PAYLOAD
    assert sink.size == sum(seen) == len(PAYLOAD)
    assert max(seen) <= 1 << 20 or name == "tar"  # inflated output comes in bounded pieces


def test_a_check_that_refuses_stops_the_write(tmp_path: Path) -> None:
    def refuse(piece: bytes) -> None:
        raise ContentError("no")

    sink = ArchiveSink(tmp_path / "out", refuse)
    sink.open()
    with pytest.raises(ContentError, match="no"):
        sink.feed(b"x" * 100)
    sink.close()

    assert (tmp_path / "out").read_bytes() == b""


def test_a_cut_stream_is_truncated(tmp_path: Path) -> None:
    sink = ArchiveSink(tmp_path / "out", lambda piece: None, "the upload")
    sink.open()
    sink.feed(lzma.compress(PAYLOAD)[:5000])
    with pytest.raises(ContentError, match="the upload is truncated: the xz stream does not end"):
        sink.finish()
    sink.close()


def test_short_input_is_told_by_what_there_is() -> None:
    assert archive_inflater(b"BZh")[0] == "bzip2"
    assert archive_inflater(b"ab")[0] == "tar"
    assert archive_inflater(b"")[0] == "tar"
