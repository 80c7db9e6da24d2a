"""More hostile archives, loaded and imported in-process: blob names that lie through
symbolic links, numbers in tar headers and pax records that are not numbers, an xz
stream that asks for gigabytes, manifests named by sha512, a load that fails at its
commit, and data after a tarball's end. Each is refused with an error that says what is
wrong (or, for what is normal, taken), and the store is left as it was."""

from __future__ import annotations

import asyncio
import gzip
import hashlib
import io
import json
import lzma
import os
import struct
import tarfile
import zlib
from collections.abc import AsyncIterator, Callable
from typing import Any

import pytest

from ferryd.codec import archive_inflater
from ferryd.distribution.archives import load_archive
from ferryd.distribution.archives.intake import Intake
from ferryd.distribution.archives.load import LoadedImage
from ferryd.distribution.archives.tarstream import Entry, TarReader
from ferryd.distribution.events import log_image_event
from ferryd.distribution.imports import ImportResult, import_image
from ferryd.distribution.progress import Message
from ferryd.errors import ArchiveError, ContentError, StoreError
from ferryd.oci.digest import Digest
from ferryd.oci.platform import host_platform
from ferryd.store import Store, gc
from ferryd.store.fsck import check
from support.archives import OCI_CONFIG, OCI_INDEX, OCI_MANIFEST, TarWriter
from support.digests import sha256

OCI_LAYER_GZIP = "application/vnd.oci.image.layer.v1.tar+gzip"
IMAGE_NAME = "io.containerd.image.name"
MiB = 1 << 20


# -- building archives -----------------------------------------------------------------


def layer_tar(content: bytes = b"hello world\n" * 100) -> bytes:
    """A layer: one file, as tarfile writes it (padded to a 10 KiB record)."""
    buffer = io.BytesIO()
    with tarfile.open(fileobj=buffer, mode="w", format=tarfile.PAX_FORMAT) as tar:
        info = tarfile.TarInfo("f.txt")
        info.size = len(content)
        tar.addfile(info, io.BytesIO(content))
    return buffer.getvalue()


class Image:
    """A one-layer OCI image: its gzip layer, config and manifest (`manifest()` again
    with other digests makes a lying one)."""

    def __init__(self, content: bytes = b"hello world\n" * 100) -> None:
        self.tar = layer_tar(content)
        self.layer = gzip.compress(self.tar, mtime=0)
        self.config = json.dumps(
            {
                "architecture": host_platform().architecture,
                "os": "linux",
                "rootfs": {"type": "layers", "diff_ids": [sha256(self.tar)]},
            }
        ).encode()

    def manifest(self, *, layer: str | None = None, config: str | None = None) -> bytes:
        return json.dumps(
            {
                "schemaVersion": 2,
                "mediaType": OCI_MANIFEST,
                "config": {
                    "mediaType": OCI_CONFIG,
                    "digest": config or sha256(self.config),
                    "size": len(self.config),
                },
                "layers": [
                    {
                        "mediaType": OCI_LAYER_GZIP,
                        "digest": layer or sha256(self.layer),
                        "size": len(self.layer),
                    }
                ],
            }
        ).encode()


def blob(writer: TarWriter, data: bytes) -> TarWriter:
    return writer.file(f"blobs/sha256/{hashlib.sha256(data).hexdigest()}", data)


def index_json(digest: str, size: int, media_type: str = OCI_MANIFEST) -> bytes:
    entry = {
        "mediaType": media_type,
        "digest": digest,
        "size": size,
        "annotations": {IMAGE_NAME: "example.com/team/app:v1"},
    }
    return json.dumps({"schemaVersion": 2, "manifests": [entry]}).encode()


def oci_archive(image: Image, manifest: bytes | None = None) -> bytes:
    """A well-formed OCI layout of `image` (its own manifest, unless given)."""
    manifest = manifest or image.manifest()
    writer = blob(blob(blob(TarWriter(), image.layer), image.config), manifest)
    return writer.file("index.json", index_json(sha256(manifest), len(manifest))).bytes()


def fake(fill: str) -> str:
    return "sha256:" + fill * 64


# -- running a load or an import in-process --------------------------------------------


class _Output:
    def __init__(self) -> None:
        self.messages: list[Message] = []

    def write(self, message: Message) -> None:
        self.messages.append(message)


async def _body(data: bytes, piece: int = 64 * 1024) -> AsyncIterator[bytes]:
    for start in range(0, len(data), piece):
        yield data[start : start + piece]


async def load_in(store: Store, archive: bytes, **options: Any) -> list[LoadedImage]:
    return await load_archive(store, _body(archive), _Output(), log_image_event, **options)


async def import_in(store: Store, tarball: bytes) -> ImportResult:
    return await import_image(
        store,
        log_image_event,
        _body(tarball),
        reference=None,
        platform=host_platform(),
        message="",
        changes=[],
    )


def blob_files(store: Store) -> list[str]:
    return sorted(
        str(path.relative_to(store.root))
        for path in (store.root / "blobs").rglob("*")
        if path.is_file()
    )


def assert_untouched(store: Store) -> None:
    """Nothing of a refused load or import is kept: no blob, no row, no staging file."""
    assert blob_files(store) == []
    assert store.images.ids() == []
    assert [p for p in (store.root / "loading").rglob("*") if p.is_file()] == []


async def refused(store: Store, archive: bytes, match: str) -> ArchiveError:
    with pytest.raises(ArchiveError, match=match) as caught:
        await load_in(store, archive)
    assert_untouched(store)
    return caught.value


# -- 1. a blob name is the digest of what it holds, symbolic link or not ----------------


def _manifest_alias(image: Image) -> bytes:
    """index.json names a manifest whose blob name links to another manifest."""
    other = json.loads(image.manifest())
    other["annotations"] = {"x": "y"}
    lying = json.dumps(other).encode()
    name = fake("b")
    writer = blob(blob(TarWriter(), image.layer), image.config).file("m", lying)
    writer.link(f"blobs/sha256/{name[7:]}", "../../m")
    return writer.file("index.json", index_json(name, len(lying))).bytes()


def _layer_alias(image: Image) -> bytes:
    manifest = image.manifest(layer=fake("f"))
    writer = TarWriter().file("l", image.layer).link("blobs/sha256/" + "f" * 64, "../../l")
    writer = blob(blob(writer, image.config), manifest)
    return writer.file("index.json", index_json(sha256(manifest), len(manifest))).bytes()


def _config_alias(image: Image) -> bytes:
    manifest = image.manifest(config=fake("c"))
    writer = TarWriter().file("cfg", image.config).link("blobs/sha256/" + "c" * 64, "../../cfg")
    writer = blob(blob(writer, image.layer), manifest)
    return writer.file("index.json", index_json(sha256(manifest), len(manifest))).bytes()


def _index_child_layer_alias(image: Image) -> bytes:
    manifest = image.manifest(layer=fake("f"))
    index = json.dumps(
        {
            "schemaVersion": 2,
            "mediaType": OCI_INDEX,
            "manifests": [
                {
                    "mediaType": OCI_MANIFEST,
                    "digest": sha256(manifest),
                    "size": len(manifest),
                    "platform": {"os": "linux", "architecture": host_platform().architecture},
                }
            ],
        }
    ).encode()
    writer = TarWriter().file("l", image.layer).link("blobs/sha256/" + "f" * 64, "../../l")
    writer = blob(blob(blob(writer, image.config), manifest), index)
    return writer.file("index.json", index_json(sha256(index), len(index), OCI_INDEX)).bytes()


def _docker_config_alias(image: Image) -> bytes:
    """manifest.json (docker's side) names its config by a blob name that lies."""
    writer = TarWriter().file("cfg", image.config).link("blobs/sha256/" + "c" * 64, "../../cfg")
    writer = blob(writer, image.tar)
    items = [
        {
            "Config": "blobs/sha256/" + "c" * 64,
            "RepoTags": ["team/app:v1"],
            "Layers": [f"blobs/sha256/{sha256(image.tar)[7:]}"],
        }
    ]
    return writer.json("manifest.json", items).bytes()


@pytest.mark.parametrize(
    ("build", "link", "target"),
    [
        (_manifest_alias, "b" * 64, "m"),
        (_layer_alias, "f" * 64, "l"),
        (_config_alias, "c" * 64, "cfg"),
        (_index_child_layer_alias, "f" * 64, "l"),
        (_docker_config_alias, "c" * 64, "cfg"),
    ],
    ids=["manifest", "layer", "config", "index-child-layer", "docker-config"],
)
async def test_a_blob_name_that_links_to_other_content_is_refused_before_anything_is_stored(
    store: Store, build: Callable[[Image], bytes], link: str, target: str
) -> None:
    image = Image()

    error = await refused(store, build(image), "is not the blob it is named after")

    assert f"blobs/sha256/{link}" in str(error)
    assert f"symbolic link to {target}, whose content has digest sha256:" in str(error)


async def test_a_blob_name_that_links_to_its_own_content_loads(store: Store) -> None:
    """skopeo and docker before 25 alias repeated blobs with links: still taken."""
    image = Image()
    manifest = image.manifest()
    layer_name = f"blobs/sha256/{sha256(image.layer)[7:]}"
    writer = TarWriter().file("l", image.layer).link(layer_name, "../../l")
    writer = blob(blob(writer, image.config), manifest)
    archive = writer.file("index.json", index_json(sha256(manifest), len(manifest))).bytes()

    [loaded] = await load_in(store, archive)

    assert loaded.manifest == sha256(manifest)
    assert check(store).to_json()["Problems"] == []


@pytest.mark.parametrize(
    "build",
    [_manifest_alias, _layer_alias, _config_alias, _index_child_layer_alias],
    ids=["manifest", "layer", "config", "index-child-layer"],
)
async def test_each_blob_a_descriptor_names_is_checked_where_it_is_used(
    store: Store, monkeypatch: pytest.MonkeyPatch, build: Callable[[Image], bytes]
) -> None:
    """Without the check of every blob-named link, the digest each descriptor gives is
    still compared with the content of the file it leads to."""
    monkeypatch.setattr(Intake, "check_blob_links", lambda self: None)

    error = await refused(store, build(Image()), "is not the blob it is named after")

    assert "symbolic link to" in str(error)


# -- 2 and 3. numbers in tar headers and pax records ------------------------------------


class _Recorder:
    def __init__(self) -> None:
        self.entries: list[tuple[Entry, int]] = []

    def begin(self, entry: Entry) -> None:
        self.entries.append((entry, 0))

    def data(self, chunk: bytes) -> None:
        entry, size = self.entries[-1]
        self.entries[-1] = (entry, size + len(chunk))

    def end(self) -> None:
        return None


def _pax_record(key: str, value: bytes) -> bytes:
    body = b" " + key.encode() + b"=" + value + b"\n"
    length = len(body) + len(str(len(body)))
    length = len(body) + len(str(length))
    return str(length).encode() + body


def _with_pax(records: bytes, data: bytes = b"abc") -> bytes:
    """A pax header with `records`, then a file `a` holding `data`, then the end."""
    pax = tarfile.TarInfo("././@PaxHeader")
    pax.type, pax.size = tarfile.XHDTYPE, len(records)
    out = pax.tobuf(tarfile.USTAR_FORMAT) + records + bytes(-len(records) % 512)
    info = tarfile.TarInfo("a")
    info.size = len(data)
    return out + info.tobuf(tarfile.USTAR_FORMAT) + data + bytes(-len(data) % 512 + 1024)


def _with_size_field(size: bytes) -> bytes:
    """A ustar header for `a` whose size field is `size`, 512 bytes of `x`, the end."""
    header = bytearray(512)
    header[0:1] = b"a"
    header[124 : 124 + len(size)] = size
    header[156:157] = b"0"
    header[257:265] = b"ustar\x0000"
    header[148:156] = b" " * 8
    header[148:156] = b"%06o\x00 " % sum(header)
    return bytes(header) + b"x" * 512 + bytes(1024)


def _parse(data: bytes) -> _Recorder:
    recorder = _Recorder()
    reader = TarReader(recorder)
    reader.feed(data)
    reader.close()
    return recorder


@pytest.mark.parametrize(
    ("records", "match"),
    [
        (_pax_record("size", "²".encode()), "a pax size of '²'"),
        (_pax_record("size", "٣".encode()), "a pax size of '٣'"),  # Arabic-Indic three
        (_pax_record("size", b"9" * 5000), "not a decimal number of at most 19 digits"),
        (_pax_record("size", b"1_0"), "a pax size of '1_0'"),
        (_pax_record("size", b"+3"), r"a pax size of '\+3'"),
        (b"0" * 5000 + b"12 path=abc\n", r"malformed pax record \(its length\)"),
    ],
    ids=["superscript", "other-unicode-digit", "5000-digits", "underscore", "plus", "length"],
)
def test_a_pax_number_that_is_not_plain_ascii_digits_is_an_archive_error(
    records: bytes, match: str
) -> None:
    with pytest.raises(ArchiveError, match=match):
        _parse(_with_pax(records))


def test_a_pax_size_in_plain_digits_is_taken() -> None:
    recorder = _parse(_with_pax(_pax_record("size", b"0003"), b"abc"))

    assert [(entry.name, entry.size, read) for entry, read in recorder.entries] == [("a", 3, 3)]


@pytest.mark.parametrize("field", [b"-7", b"+7", b"1_0", b"0x10", b"8", b"1 2"])
def test_a_header_size_that_is_not_octal_digits_is_an_archive_error(field: bytes) -> None:
    with pytest.raises(ArchiveError, match="a header field is not an octal number"):
        _parse(_with_size_field(field))


@pytest.mark.parametrize("field", [b"00000001000", b"  1000", b"1000 ", b"0001000\x00"])
def test_a_header_size_in_octal_with_spaces_or_a_nul_is_taken(field: bytes) -> None:
    recorder = _parse(_with_size_field(field))

    assert [(entry.size, read) for entry, read in recorder.entries] == [(512, 512)]


async def test_a_load_with_a_bad_pax_size_is_refused_plainly(store: Store) -> None:
    await refused(store, _with_pax(_pax_record("size", "²".encode())), "a pax size of '²'")


@pytest.mark.parametrize("value", ["²".encode(), b"9" * 5000])
async def test_an_import_with_a_bad_pax_size_is_an_archive_error(
    store: Store, value: bytes
) -> None:
    with pytest.raises(ArchiveError, match="a pax size of"):
        await import_in(store, _with_pax(_pax_record("size", value)))
    assert_untouched(store)


# -- 4. xz: a bounded dictionary --------------------------------------------------------


def _xz_claiming_dictionary(code: int) -> bytes:
    """A small xz stream whose block header says its LZMA2 dictionary is of size `code`
    (40: 4 GiB - 1; 38: 2 GiB; 26: 32 MiB), its CRC fixed up: it decompresses fine
    otherwise."""
    filters = [{"id": lzma.FILTER_LZMA2, "dict_size": 1 << 20}]
    data = bytearray(
        lzma.compress(layer_tar(), format=lzma.FORMAT_XZ, check=lzma.CHECK_NONE, filters=filters)
    )
    start = 12  # the stream header; the block header follows
    end = start + (data[start] + 1) * 4
    header = data[start:end]
    at = header.index(b"\x21\x01")  # filter LZMA2, one byte of properties: the dictionary
    header[at + 2] = code
    header[-4:] = struct.pack("<I", zlib.crc32(bytes(header[:-4])))
    data[start:end] = header
    return bytes(data)


def _inflate(data: bytes) -> int:
    _, inflater = archive_inflater(data[:6], "the archive")
    size = sum(len(piece) for piece in inflater.feed(data))
    inflater.finish()
    return size


def test_an_xz_stream_that_asks_for_a_huge_dictionary_is_refused_plainly() -> None:
    with pytest.raises(ContentError, match=r"not valid xz: it needs more than 128 MiB of memory"):
        _inflate(_xz_claiming_dictionary(38))


def test_xz_compressed_at_its_highest_level_still_decompresses() -> None:
    tar = layer_tar()
    extreme = lzma.compress(tar, preset=9 | lzma.PRESET_EXTREME)  # a 64 MiB dictionary

    assert _inflate(extreme) == len(tar)
    assert _inflate(_xz_claiming_dictionary(26)) == len(tar)  # 32 MiB: within the limit


async def test_a_load_and_an_import_of_such_xz_are_refused_and_store_nothing(
    store: Store,
) -> None:
    data = _xz_claiming_dictionary(40)

    await refused(store, data, "it needs more than 128 MiB of memory to decompress")
    with pytest.raises(ArchiveError, match="it needs more than 128 MiB of memory"):
        await import_in(store, data)
    assert_untouched(store)


# -- 5. manifests and indexes are named by their sha256 ---------------------------------


async def test_a_manifest_named_by_sha512_is_refused_naming_it(store: Store) -> None:
    image = Image()
    manifest = image.manifest()
    sha512 = "sha512:" + hashlib.sha512(manifest).hexdigest()
    writer = blob(blob(TarWriter(), image.layer), image.config)
    writer.file(f"blobs/sha512/{sha512[7:]}", manifest)
    archive = writer.file("index.json", index_json(sha512, len(manifest))).bytes()

    error = await refused(store, archive, "is named by a sha512 digest")

    assert sha512 in str(error)
    assert "only manifests and indexes named by their sha256" in str(error)


# -- 6. a load that fails at its commit takes back what it added -------------------------


def _failing_transaction(store: Store) -> Callable[[], None]:
    """Make the store's next transaction fail as a full or broken database does; the
    function that puts the real one back."""
    real = store.db.transaction

    def broken() -> Any:
        raise StoreError("the database is broken (a test)")

    store.db.transaction = broken  # type: ignore[method-assign]
    return lambda: setattr(store.db, "transaction", real)


async def test_a_load_whose_transaction_fails_leaves_no_blob_behind(store: Store) -> None:
    image = Image()
    restore = _failing_transaction(store)
    try:
        with pytest.raises(StoreError, match="the database is broken"):
            await load_in(store, oci_archive(image))
    finally:
        restore()

    assert_untouched(store)
    assert check(store).to_json()["Problems"] == []
    [loaded] = await load_in(store, oci_archive(image))  # and the next one loads
    assert loaded.layers_loaded == 1


async def test_a_failed_load_keeps_a_blob_another_transfer_has_pinned(store: Store) -> None:
    image = Image()
    layer = Digest(sha256(image.layer))
    store.blobs.pins.acquire(layer)  # another load of the same archive, about to use it
    restore = _failing_transaction(store)
    try:
        with pytest.raises(StoreError):
            await load_in(store, oci_archive(image))
    finally:
        restore()
        store.blobs.pins.release(layer)

    assert blob_files(store) == [f"blobs/sha256/{layer[7:]}"]
    assert store.blobs.path(layer).read_bytes() == image.layer


async def test_a_blob_pinned_while_it_is_being_taken_back_stays(
    store: Store, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Another load pins the layer while the failed one reads whether the rows use it:
    it stays where that load will look for it."""
    image = Image()
    layer = Digest(sha256(image.layer))
    rows = gc.is_referenced

    def rows_read_while_a_newcomer_pins(store: Store, digest: Digest) -> bool:
        if digest == layer:
            store.blobs.pins.acquire(layer)
        return rows(store, digest)

    monkeypatch.setattr(gc, "is_referenced", rows_read_while_a_newcomer_pins)
    restore = _failing_transaction(store)
    try:
        with pytest.raises(StoreError):
            await load_in(store, oci_archive(image))
    finally:
        restore()
        store.blobs.pins.release(layer)

    assert store.blobs.path(layer).read_bytes() == image.layer
    assert [p for p in blob_files(store) if not p.endswith(layer[7:])] == []


async def test_an_import_whose_transaction_fails_leaves_no_blob_behind(store: Store) -> None:
    restore = _failing_transaction(store)
    try:
        with pytest.raises(StoreError, match="the database is broken"):
            await import_in(store, layer_tar())
    finally:
        restore()

    assert_untouched(store)
    assert check(store).to_json()["Problems"] == []
    await import_in(store, layer_tar())  # and the next one imports
    assert len(store.images.ids()) == 1


async def test_concurrent_loads_of_one_archive_all_succeed(store: Store) -> None:
    archive = oci_archive(Image(os.urandom(2 * MiB)))

    results = await asyncio.gather(*(load_in(store, archive) for _ in range(4)))

    assert sum(loaded.layers_loaded for [loaded] in results) == 1
    assert check(store).to_json()["Problems"] == []


# -- 7. an import stops at its tar's end ------------------------------------------------


async def test_an_import_with_data_after_the_end_of_the_tar_is_refused(store: Store) -> None:
    tar = layer_tar()
    junk = os.urandom(5 * MiB)

    with pytest.raises(ArchiveError, match="data follows the tar's end-of-archive marker"):
        await import_in(store, tar + junk)
    assert_untouched(store)


@pytest.mark.parametrize("compress", [lambda data: data, gzip.compress], ids=["tar", "gzip"])
async def test_an_import_padded_with_zeros_after_the_end_is_taken_as_dockerd_takes_it(
    store: Store, compress: Callable[[bytes], bytes]
) -> None:
    tar = layer_tar() + bytes(MiB + 7)  # more zero padding, as `tar -b` writes it

    result = await import_in(store, compress(tar))

    assert result.diff_id == sha256(tar)  # dockerd hashes the whole stream
    assert result.size == len(tar)


def test_the_test_helpers_write_what_they_say() -> None:
    """The hand-made headers are tars that Python reads as meant (so the refusals above
    are for what they test, not for a broken helper)."""
    with tarfile.open(fileobj=io.BytesIO(_with_size_field(b"1000"))) as tar:
        assert [(m.name, m.size) for m in tar.getmembers()] == [("a", 512)]
    with tarfile.open(fileobj=io.BytesIO(_with_pax(_pax_record("path", b"b")))) as tar:
        assert tar.getnames() == ["b"]
    assert lzma.decompress(_xz_claiming_dictionary(26)) == layer_tar()
