"""Broken and hostile archives sent to `POST /images/load`: each is refused with a message
that says what is wrong, and the store is as it was (no new blob, row, partial download
or staging file), the daemon small and alive."""

from __future__ import annotations

import gzip
import io
import json
import lzma
import tarfile
import zlib
from collections.abc import Callable, Iterator
from pathlib import Path

import pytest

from support.archives import (
    Answer,
    TarWriter,
    chunked,
    docker24_archive,
    docker25_archive,
    load,
    store_state,
)
from support.daemon import Daemon
from support.images import BuiltImage, LayerSpec, build_image

MiB = 1 << 20
RSS_LIMIT = 200 * MiB
MAX_ARCHIVE_JSON = 8 * MiB  # the config limit of oci/, applied to manifest.json too


@pytest.fixture
def image(tmp_path: Path) -> tuple[Path, BuiltImage]:
    layout = tmp_path / "layout"
    built = build_image(
        layout, layers=[LayerSpec(size=20_000, seed=7301), LayerSpec(size=700, seed=7302)]
    )
    return layout, built


@pytest.fixture
def stocked(daemon: Daemon, tmp_path: Path) -> Daemon:
    """A daemon with an image already loaded: the store has something to keep intact."""
    layout = tmp_path / "stock"
    built = build_image(layout, layers=[LayerSpec(size=5_000, seed=7309)])
    answer = load(daemon, docker25_archive(layout, built, "stock/kept:v1")[0].bytes())
    assert answer.lines == ["Loaded image: stock/kept:v1"]
    return daemon


def refused(daemon: Daemon, body: bytes | Iterator[bytes], **params: str) -> Answer:
    """Load `body`, expecting a refusal; the store must be as it was before."""
    before = store_state(daemon)
    answer = load(daemon, body, **params)
    assert answer.error is not None, answer.messages
    assert "Loaded image" not in json.dumps(answer.messages)
    assert store_state(daemon) == before
    assert daemon.alive
    return answer


def peak_rss(daemon: Daemon) -> int:
    assert daemon.process is not None
    status = Path(f"/proc/{daemon.process.pid}/status").read_text()
    [line] = [line for line in status.splitlines() if line.startswith("VmHWM:")]
    return int(line.split()[1]) * 1024


def with_entries(layout: Path, built: BuiltImage, add: Callable[[TarWriter], object]) -> bytes:
    """A good docker 25 archive, entries of `add` first."""
    good = docker25_archive(layout, built, "team/app:v1")[0].bytes()
    writer = TarWriter()
    add(writer)
    with tarfile.open(fileobj=io.BytesIO(good)) as tar:
        for member in tar.getmembers():
            data = tar.extractfile(member)
            writer.tar.addfile(member, data)
    return writer.bytes()


@pytest.mark.parametrize(
    ("add", "message"),
    [
        (
            lambda w: w.file("../escape", b"x"),
            "refused: archive entry '../escape' points outside the archive (..)",
        ),
        (lambda w: w.file("blobs/../../escape", b"x"), "points outside the archive (..)"),
        (
            lambda w: w.file("/etc/escape", b"x"),
            "refused: archive entry '/etc/escape' has an absolute path",
        ),
        (
            lambda w: w.link("blobs/sha256/evil", "../../../etc/passwd"),
            "refused: symbolic link blobs/sha256/evil points outside the archive "
            "('../../../etc/passwd')",
        ),
        (
            lambda w: w.link("evil", "/etc/passwd"),
            "refused: symbolic link evil points to an absolute path ('/etc/passwd')",
        ),
        (
            lambda w: w.link("evil", "oci-layout", tarfile.LNKTYPE),
            "refused: archive entry evil is a hard link",
        ),
        (
            lambda w: w.special("dev/tty", tarfile.CHRTYPE),
            "refused: archive entry dev/tty is a character device",
        ),
        (
            lambda w: w.special("dev/sda", tarfile.BLKTYPE),
            "refused: archive entry dev/sda is a block device",
        ),
        (lambda w: w.special("pipe", tarfile.FIFOTYPE), "refused: archive entry pipe is a FIFO"),
        (lambda w: w.file("oci-layout", b"{}"), "refused: the archive has oci-layout twice"),
    ],
    ids=[
        "dotdot",
        "dotdot-inside",
        "absolute",
        "symlink-out",
        "symlink-absolute",
        "hardlink",
        "char-device",
        "block-device",
        "fifo",
        "twice",
    ],
)
def test_a_hostile_entry_refuses_the_whole_archive(
    stocked: Daemon,
    image: tuple[Path, BuiltImage],
    add: Callable[[TarWriter], object],
    message: str,
) -> None:
    answer = refused(stocked, with_entries(*image, add))

    assert answer.status == 400
    assert message in (answer.error or "")


def test_a_layer_blob_the_manifests_name_but_the_archive_lacks_is_refused(
    stocked: Daemon, image: tuple[Path, BuiltImage]
) -> None:
    layout, built = image
    good = docker25_archive(layout, built, "team/app:v1")[0].bytes()
    missing = "blobs/sha256/" + built.diff_ids[0].removeprefix("sha256:")

    answer = refused(stocked, without(good, missing))

    assert (
        f"the archive's manifest.json names layer {missing}, which the archive does not have"
        in (answer.error or "")
    )


def test_a_config_the_manifest_names_but_the_archive_lacks_is_refused(
    stocked: Daemon, image: tuple[Path, BuiltImage]
) -> None:
    layout, built = image
    writer = docker24_archive(layout, built, ["team/app:v1"])
    config = built.config_digest.removeprefix("sha256:") + ".json"

    answer = refused(stocked, without(writer.bytes(), config))

    assert f"the archive names image config {config}, which it does not have" in (
        answer.error or ""
    )


def test_a_blob_that_is_not_what_its_name_says_is_refused(
    stocked: Daemon, image: tuple[Path, BuiltImage]
) -> None:
    layout, built = image
    good = docker25_archive(layout, built, "team/app:v1")[0].bytes()
    name = "blobs/sha256/" + built.diff_ids[1].removeprefix("sha256:")

    answer = refused(stocked, replaced(good, name, b"not the layer"))

    assert f"the archive's {name} is not the blob it is named after" in (answer.error or "")


def docker24_with_first_layer(layout: Path, built: BuiltImage) -> tuple[bytes, str]:
    """A docker 24 archive of `built`, and the name of its first `<id>/layer.tar`."""
    archive = docker24_archive(layout, built, ["team/app:v1"]).bytes()
    with tarfile.open(fileobj=io.BytesIO(archive)) as tar:
        first = next(m.name for m in tar.getmembers() if m.name.endswith("layer.tar"))
    return archive, first


def test_a_layer_whose_diff_id_is_not_the_configs_is_refused(
    stocked: Daemon, image: tuple[Path, BuiltImage]
) -> None:
    layout, built = image
    archive, first = docker24_with_first_layer(layout, built)
    other = TarWriter().file("other-file", b"other content").bytes()

    answer = refused(stocked, replaced(archive, first, other))

    assert f"layer {first} of image" in (answer.error or "")
    assert f"but the image config says {built.diff_ids[0]}" in (answer.error or "")


def test_a_compressed_layer_that_does_not_decompress_is_refused(
    stocked: Daemon, image: tuple[Path, BuiltImage]
) -> None:
    archive, first = docker24_with_first_layer(*image)
    broken = gzip.compress(b"x" * 10_000)[:-20] + b"\0" * 20

    answer = refused(stocked, replaced(archive, first, broken))

    assert f"layer {first} of image" in (answer.error or "")
    assert "is broken" in (answer.error or "")


def test_an_oversized_manifest_json_is_refused_from_its_header(stocked: Daemon) -> None:
    archive = TarWriter().file("manifest.json", b" " * (MAX_ARCHIVE_JSON + 1)).bytes()

    answer = refused(stocked, chunked(archive))

    assert (
        f"refused: the archive's manifest.json has {MAX_ARCHIVE_JSON + 1} bytes "
        f"(the limit is {MAX_ARCHIVE_JSON})"
    ) in (answer.error or "")


def test_an_oversized_config_is_refused(stocked: Daemon) -> None:
    manifest = [{"Config": "config.json", "RepoTags": ["team/app:v1"], "Layers": []}]
    archive = (
        TarWriter()
        .file("config.json", b"{" + b" " * MAX_ARCHIVE_JSON + b"}")
        .json("manifest.json", manifest)
        .bytes()
    )

    answer = refused(stocked, chunked(archive))

    assert f"refused: image config config.json in the archive has {MAX_ARCHIVE_JSON + 2} bytes" in (
        answer.error or ""
    )


def test_an_archive_cut_inside_a_ten_gigabyte_entry_says_it_ended_early(stocked: Daemon) -> None:
    info = tarfile.TarInfo("blobs/sha256/" + "ab" * 32)
    info.size = 10 * 1000**3
    header = info.tobuf(tarfile.PAX_FORMAT)

    def body() -> Iterator[bytes]:
        yield header
        for _ in range(8):
            yield bytes(MiB)

    answer = refused(stocked, body())

    assert (
        f"the archive ended early: 'blobs/sha256/{'ab' * 32}' has {8 * MiB} of its "
        f"{10 * 1000**3} bytes (was the upload cut short?)"
    ) in (answer.error or "")


def test_a_compressed_archive_cut_short_says_it_ended_early(
    stocked: Daemon, image: tuple[Path, BuiltImage]
) -> None:
    layout, built = image
    good = docker25_archive(layout, built, "team/app:v1")[0].bytes()
    packed = gzip.compress(good)

    answer = refused(stocked, packed[: len(packed) // 2])

    assert "the archive ended early" in (answer.error or "")


def test_an_archive_without_its_end_marker_and_a_blob_short_says_it_was_cut(
    stocked: Daemon, image: tuple[Path, BuiltImage]
) -> None:
    layout, built = image
    good = docker25_archive(layout, built, "team/app:v1")[0].bytes()
    # Everything up to (not including) the last layer blob: a cut between two entries.
    last = "blobs/sha256/" + built.diff_ids[1].removeprefix("sha256:")
    cut = TarWriter()
    with tarfile.open(fileobj=io.BytesIO(good)) as tar:
        for member in tar.getmembers():
            if member.name == last:
                break
            cut.tar.addfile(member, tar.extractfile(member))
    cut.tar.fileobj.write(b"")  # type: ignore[union-attr]
    body = cut.buffer.getvalue()  # no end-of-archive blocks: the tar was never closed

    answer = refused(stocked, body)

    assert "the archive ended without its end-of-archive marker: was it cut short?" in (
        answer.error or ""
    )


@pytest.mark.parametrize(
    ("body", "message"),
    [
        (b"", "the archive is empty"),
        (b"\x00\x01garbage" * 100, "not a tar archive"),
        (lzma.compress(b"x" * 1000), "not a tar archive"),
        (gzip.compress(b"x" * 100_000), "not a tar archive"),
        (
            TarWriter().file("hello.txt", b"hi").bytes(),
            "not an image archive: it has neither manifest.json",
        ),
        (TarWriter().json("repositories", {}).bytes(), "written by docker before 1.10"),
        (
            TarWriter().json("manifest.json", {"not": "a list"}).bytes(),
            "the archive's manifest.json is malformed",
        ),
        (
            TarWriter().file("manifest.json", b"[").bytes(),
            "the archive's manifest.json is malformed",
        ),
    ],
    ids=[
        "empty",
        "not-tar",
        "xz",
        "gzip-not-tar",
        "no-manifest",
        "pre-1.10",
        "manifest-not-list",
        "manifest-not-json",
    ],
)
def test_what_is_not_an_image_archive_is_refused_saying_what_it_is(
    stocked: Daemon, body: bytes, message: str
) -> None:
    answer = refused(stocked, body)

    assert message in (answer.error or "")


def test_layer_counts_that_disagree_with_the_config_are_refused(
    stocked: Daemon, image: tuple[Path, BuiltImage]
) -> None:
    layout, built = image
    archive = docker24_archive(layout, built, ["team/app:v1"]).bytes()
    with tarfile.open(fileobj=io.BytesIO(archive)) as tar:
        manifest = json.loads(tar.extractfile("manifest.json").read())  # type: ignore[union-attr]
    manifest[0]["Layers"] = manifest[0]["Layers"][:1]

    answer = refused(stocked, replaced(archive, "manifest.json", json.dumps(manifest).encode()))

    assert "manifest.json lists 1 layers for image" in (answer.error or "")
    assert "but its config has 2 DiffIDs" in (answer.error or "")


def zeros_gzip(size: int) -> bytes:
    """gzip of `size` zero bytes, made without holding them."""
    compressor = zlib.compressobj(9, zlib.DEFLATED, 31)
    block = bytes(MiB)
    out = [compressor.compress(block) for _ in range(size // MiB)]
    out.append(compressor.flush())
    return b"".join(out)


def test_a_gzip_bomb_archive_is_refused_and_the_daemon_stays_small(stocked: Daemon) -> None:
    """A 600 MiB entry of zeros in a gzip archive of a few hundred KiB, and a layer-like
    entry that inflates to 600 MiB itself: streamed through in bounded pieces."""
    entry_size = 600 * MiB
    inner = zeros_gzip(entry_size)
    info = tarfile.TarInfo("blobs/sha256/" + "cd" * 32)
    info.size = entry_size
    tar = io.BytesIO()
    tar.write(info.tobuf(tarfile.PAX_FORMAT))
    compressor = zlib.compressobj(9, zlib.DEFLATED, 31)
    parts = [compressor.compress(tar.getvalue())]
    parts += [compressor.compress(bytes(MiB)) for _ in range(entry_size // MiB)]
    bomb_info = tarfile.TarInfo("layer.tar.gz")
    bomb_info.size = len(inner)
    parts.append(
        compressor.compress(bomb_info.tobuf(tarfile.PAX_FORMAT) + inner + bytes(-len(inner) % 512))
    )
    parts.append(compressor.compress(bytes(1024)) + compressor.flush())
    body = b"".join(parts)
    assert len(body) < 4 * MiB

    answer = refused(stocked, chunked(body))

    assert f"the archive's blobs/sha256/{'cd' * 32} is not the blob it is named after" in (
        answer.error or ""
    )
    assert peak_rss(stocked) < RSS_LIMIT, f"peak RSS {peak_rss(stocked) / MiB:.0f} MiB"


def test_an_oci_index_naming_a_manifest_the_archive_lacks_is_refused(stocked: Daemon) -> None:
    index = {
        "schemaVersion": 2,
        "manifests": [
            {
                "mediaType": "application/vnd.oci.image.manifest.v1+json",
                "digest": "sha256:" + "ef" * 32,
                "size": 100,
            }
        ],
    }
    archive = TarWriter().json("index.json", index).file("oci-layout", b"{}").bytes()

    answer = refused(stocked, archive)

    assert f"the archive names image manifest blobs/sha256/{'ef' * 32}, which it does not have" in (
        answer.error or ""
    )


# -- helpers ---------------------------------------------------------------------------


def without(archive: bytes, name: str) -> bytes:
    writer = TarWriter()
    with tarfile.open(fileobj=io.BytesIO(archive)) as tar:
        for member in tar.getmembers():
            if member.name != name:
                writer.tar.addfile(member, tar.extractfile(member))
    return writer.bytes()


def replaced(archive: bytes, name: str, data: bytes) -> bytes:
    writer = TarWriter()
    with tarfile.open(fileobj=io.BytesIO(archive)) as tar:
        for member in tar.getmembers():
            if member.name == name:
                writer.file(name, data)
            else:
                writer.tar.addfile(member, tar.extractfile(member))
    return writer.bytes()
