"""The pieces of save and load on their own: the streaming tar parser, and a load whose
database transaction never happens (a crash between the blob files and the rows)."""

from __future__ import annotations

import io
import tarfile
from collections.abc import AsyncIterator
from pathlib import Path

import pytest

from ferryd.distribution.archives import load_archive
from ferryd.distribution.archives.intake import clean_name, progress_id
from ferryd.distribution.archives.tarstream import Entry, TarReader
from ferryd.distribution.events import log_image_event
from ferryd.distribution.progress import Message
from ferryd.errors import ArchiveError
from ferryd.store import Store
from ferryd.store.fsck import check
from ferryd.store.sweep import sweep
from support.archives import docker25_archive
from support.images import LayerSpec, build_image


class Recorder:
    def __init__(self) -> None:
        self.entries: list[tuple[Entry, bytes]] = []
        self._data = bytearray()
        self._entry: Entry | None = None

    def begin(self, entry: Entry) -> None:
        self._entry = entry
        self._data.clear()

    def data(self, chunk: bytes) -> None:
        self._data += chunk

    def end(self) -> None:
        assert self._entry is not None
        self.entries.append((self._entry, bytes(self._data)))


def parse(archive: bytes, piece: int) -> Recorder:
    recorder = Recorder()
    reader = TarReader(recorder)
    for start in range(0, len(archive), piece):
        reader.feed(archive[start : start + piece])
    reader.close()
    assert reader.ended
    return recorder


def tar(fmt: int, *files: tuple[str, bytes], link: bool = True) -> bytes:
    buffer = io.BytesIO()
    with tarfile.open(fileobj=buffer, mode="w", format=fmt) as out:
        for name, data in files:
            info = tarfile.TarInfo(name)
            info.size = len(data)
            out.addfile(info, io.BytesIO(data))
        if link:
            symlink = tarfile.TarInfo("d/" + "l" * 150)
            symlink.type, symlink.linkname = tarfile.SYMTYPE, "../" + "t" * 120
            out.addfile(symlink)
    return buffer.getvalue()


@pytest.mark.parametrize("fmt", [tarfile.PAX_FORMAT, tarfile.GNU_FORMAT, tarfile.USTAR_FORMAT])
@pytest.mark.parametrize("piece", [1, 511, 512, 4096, 1 << 20])
def test_the_tar_parser_reads_what_tarfile_writes_in_any_pieces(fmt: int, piece: int) -> None:
    long_name = "a" * 90 + "/" + "b" * 90  # ustar: a prefix; pax: a record; GNU: 'L'
    files = [("small", b"x" * 700), (long_name, b"y" * 1024), ("empty", b"")]
    expected = [
        ("small", "file", b"x" * 700),
        (long_name, "file", b"y" * 1024),
        ("empty", "file", b""),
        ("d/" + "l" * 150, "symlink", b""),
    ]
    ustar = fmt == tarfile.USTAR_FORMAT
    if ustar:
        with pytest.raises(ValueError):  # ustar cannot name the long link: tarfile says so
            tar(fmt, *files)
        expected.pop()  # without it, the long file name still tests ustar's prefix field

    recorder = parse(tar(fmt, *files, link=not ustar), piece)

    assert [(e.name, e.kind, data) for e, data in recorder.entries] == expected
    if not ustar:
        assert recorder.entries[-1][0].linkname == "../" + "t" * 120


def test_the_tar_parser_takes_sizes_in_base_256() -> None:
    info = tarfile.TarInfo("big")
    info.size = 10 * 1000**3
    header = bytearray(info.tobuf(tarfile.GNU_FORMAT))
    recorder = Recorder()
    reader = TarReader(recorder)

    reader.feed(bytes(header) + b"z" * 100)

    assert header[124] & 0x80  # GNU wrote it in base 256
    assert reader.entry is not None
    assert reader.entry.size == 10 * 1000**3
    assert reader.received == 100
    with pytest.raises(ArchiveError, match="'big' has 100 of its 10000000000 bytes"):
        reader.close()


def test_the_tar_parser_refuses_a_corrupt_header_and_an_oversized_pax_record() -> None:
    good = tar(tarfile.PAX_FORMAT, ("a", b"1"))
    corrupt = bytearray(good)
    corrupt[1024 + 10] ^= 0xFF  # the second header (after the first entry's data)
    pax = tarfile.TarInfo("p" * 10)
    pax.type = tarfile.XHDTYPE
    pax.size = 2 << 20

    with pytest.raises(ArchiveError, match="checksum is wrong at byte"):
        TarReader(Recorder()).feed(bytes(corrupt))
    with pytest.raises(ArchiveError, match="pax header of 2097152 bytes"):
        TarReader(Recorder()).feed(pax.tobuf(tarfile.USTAR_FORMAT))


@pytest.mark.parametrize(
    ("raw", "clean"),
    [("./manifest.json", "manifest.json"), ("blobs//sha256/./x", "blobs/sha256/x"), ("./", "")],
)
def test_names_are_cleaned(raw: str, clean: str) -> None:
    assert clean_name(raw) == clean


@pytest.mark.parametrize(
    ("name", "ident"),
    [
        ("blobs/sha256/" + "ab" * 32, "abababababab"),
        ("0123456789abcdef/layer.tar", "0123456789ab"),
        ("fedcba9876543210ff.tar", "fedcba987654"),
    ],
)
def test_progress_names_a_layer_as_docker_does(name: str, ident: str) -> None:
    assert progress_id(name) == ident


async def test_a_load_that_dies_before_its_transaction_leaves_only_what_the_sweep_takes(
    tmp_path: Path,
) -> None:
    layout = tmp_path / "layout"
    built = build_image(layout, layers=[LayerSpec(size=50_000, seed=7701)])
    archive = docker25_archive(layout, built, "team/dies:v1")[0].bytes()
    store = Store(tmp_path / "root")

    class Died(Exception):
        pass

    def no_transaction() -> object:
        raise Died  # as SIGKILL would, between the blob files and the rows

    async def body() -> AsyncIterator[bytes]:
        yield archive

    messages: list[Message] = []
    real = store.db.transaction
    store.db.transaction = no_transaction  # type: ignore[assignment,method-assign]
    try:
        with pytest.raises(Died):
            await load_archive(store, body(), _Output(messages), log_image_event)
    finally:
        store.db.transaction = real  # type: ignore[method-assign]

    moved = {p.name for p in (tmp_path / "root" / "blobs" / "sha256").iterdir()}
    assert built.diff_ids[0].removeprefix("sha256:") in moved  # the layer went in first
    assert store.images.ids() == []
    sweep(store, reason="start")
    report = check(store).to_json()
    assert report["Problems"] == [], report
    assert list((tmp_path / "root" / "loading").iterdir()) == []
    store.close()


class _Output:
    def __init__(self, messages: list[Message]) -> None:
        self.messages = messages

    def write(self, message: Message) -> None:
        self.messages.append(message)
