"""What one archive may cost to load, however it repeats itself: a config or manifest
named by thousands of items is decoded once; manifest.json and index.json list no more
images, tags and layers than real archives do; the names and link targets kept while an
archive streams in have a memory budget, refused as the entry that passes it arrives."""

from __future__ import annotations

import json
import sys
import tarfile
from collections.abc import Callable
from pathlib import Path
from typing import Any

import pytest

from ferryd.distribution.archives import intake as intake_module
from ferryd.distribution.archives import load as load_module
from ferryd.distribution.archives.intake import MAX_NAME_MEMORY, Intake
from ferryd.distribution.archives.load import (
    MAX_ARCHIVE_IMAGES,
    MAX_ARCHIVE_LAYERS,
    MAX_ARCHIVE_TAGS,
    _LayerProgress,
    _Reader,
)
from ferryd.distribution.archives.tarstream import TarReader
from ferryd.errors import ArchiveError
from ferryd.oci.manifest import MAX_LAYERS
from ferryd.oci.platform import host_platform
from ferryd.store import Store
from support.archives import OCI_INDEX, OCI_MANIFEST, TarWriter
from support.digests import sha256
from test_archive_hostile_more import IMAGE_NAME, Image, blob, load_in, refused

# -- building archives -----------------------------------------------------------------


def docker_archive(image: Image, items: list[dict[str, Any]]) -> bytes:
    """A docker-format archive of `image` (config.json, layer.tar) with these items."""
    writer = TarWriter().file("config.json", image.config).file("layer.tar", image.tar)
    return writer.json("manifest.json", items).bytes()


def item(*tags: str, layers: int = 1) -> dict[str, Any]:
    return {"Config": "config.json", "RepoTags": list(tags), "Layers": ["layer.tar"] * layers}


def entry(digest: str, size: int, tag: str, media_type: str = OCI_MANIFEST) -> dict[str, Any]:
    """An index.json entry naming `digest` as example.com/app:`tag`."""
    annotations = {IMAGE_NAME: f"example.com/app:{tag}"}
    return {"mediaType": media_type, "digest": digest, "size": size, "annotations": annotations}


def oci_archive(image: Image, entries: list[dict[str, Any]], *more: bytes) -> bytes:
    """An OCI layout of `image` (and the blobs `more`) whose index.json lists `entries`."""
    writer = blob(blob(blob(TarWriter(), image.layer), image.config), image.manifest())
    for data in more:
        writer = blob(writer, data)
    return writer.json("index.json", {"schemaVersion": 2, "manifests": entries}).bytes()


def nested_index(image: Image) -> bytes:
    manifest = image.manifest()
    platform = {"os": "linux", "architecture": host_platform().architecture}
    child = {"mediaType": OCI_MANIFEST, "digest": sha256(manifest), "size": len(manifest)}
    index = {
        "schemaVersion": 2,
        "mediaType": OCI_INDEX,
        "manifests": [child | {"platform": platform}],
    }
    return json.dumps(index).encode()


def counting(monkeypatch: pytest.MonkeyPatch, name: str) -> list[None]:
    """Count the calls load.py makes to its `name` (a decoder it imports)."""
    calls: list[None] = []
    real: Callable[..., Any] = getattr(load_module, name)

    def counted(*args: Any) -> Any:
        calls.append(None)
        return real(*args)

    monkeypatch.setattr(load_module, name, counted)
    return calls


def symlink_header(name: str, target: str) -> bytes:
    info = tarfile.TarInfo(name)
    info.type, info.linkname = tarfile.SYMTYPE, target
    return info.tobuf(tarfile.PAX_FORMAT, "utf-8", "surrogateescape")


# -- 1. what is named many times is decoded once ----------------------------------------


async def test_a_config_named_by_many_manifest_json_items_is_decoded_once(
    store: Store, monkeypatch: pytest.MonkeyPatch
) -> None:
    decoded = counting(monkeypatch, "decode_config")
    items = [item(f"team/app:v{n}") for n in range(50)]

    [loaded] = await load_in(store, docker_archive(Image(), items))

    assert len(decoded) == 1
    assert len(loaded.names) == 50


async def test_a_manifest_named_by_many_index_json_entries_is_read_and_decoded_once(
    store: Store, monkeypatch: pytest.MonkeyPatch
) -> None:
    image = Image()
    manifest = image.manifest()
    read = counting(monkeypatch, "media_type_of")
    manifests = counting(monkeypatch, "decode_manifest")
    configs = counting(monkeypatch, "decode_config")
    entries = [entry(sha256(manifest), len(manifest), f"v{n}") for n in range(50)]

    [loaded] = await load_in(store, oci_archive(image, entries))

    assert (len(read), len(manifests), len(configs)) == (1, 1, 1)
    assert len(loaded.names) == 50


async def test_an_index_named_by_many_index_json_entries_is_decoded_once(
    store: Store, monkeypatch: pytest.MonkeyPatch
) -> None:
    image = Image()
    index = nested_index(image)
    indexes = counting(monkeypatch, "decode_index")
    manifests = counting(monkeypatch, "decode_manifest")
    entries = [entry(sha256(index), len(index), f"v{n}", OCI_INDEX) for n in range(50)]

    [loaded] = await load_in(store, oci_archive(image, entries, index))

    assert len(indexes) == 2  # index.json, then the index it names 50 times
    assert len(manifests) == 1
    assert loaded.index == sha256(index)
    assert len(loaded.names) == 50


async def test_a_refusal_for_a_config_named_many_times_is_decided_once(
    store: Store, monkeypatch: pytest.MonkeyPatch
) -> None:
    """A manifest whose config is missing is tried once, however many entries name it."""
    image = Image()
    manifest = image.manifest()
    manifests = counting(monkeypatch, "decode_manifest")
    writer = blob(blob(TarWriter(), image.layer), manifest)
    entries = [entry(sha256(manifest), len(manifest), f"v{n}") for n in range(50)]
    archive = writer.json("index.json", {"schemaVersion": 2, "manifests": entries}).bytes()

    await refused(store, archive, "names config sha256:.*, which the archive does not have")

    assert len(manifests) == 1


async def test_tags_repeated_across_items_name_the_image_once(store: Store) -> None:
    items = [item("team/app:v1", "team/app:v1"), item("team/app:v1", "team/app:v2")]

    [loaded] = await load_in(store, docker_archive(Image(), items))

    assert [name.familiar for name in loaded.names] == ["team/app:v1", "team/app:v2"]


# -- 2. manifest.json and index.json list what real archives list ------------------------


def _too_many_items(image: Image) -> bytes:
    return docker_archive(image, [{"Config": "config.json"}] * (MAX_ARCHIVE_IMAGES + 1))


def _too_many_entries(image: Image) -> bytes:
    manifest = image.manifest()
    entries = [entry(sha256(manifest), len(manifest), "v1")] * (MAX_ARCHIVE_IMAGES + 1)
    return oci_archive(image, entries)


def _too_many_tags(image: Image) -> bytes:
    return docker_archive(image, [item(*(f"team/app:v{n}" for n in range(MAX_ARCHIVE_TAGS + 1)))])


def _too_many_layers(image: Image) -> bytes:
    per_item = MAX_LAYERS
    count = MAX_ARCHIVE_LAYERS // per_item + 1
    return docker_archive(image, [item(layers=per_item)] * count)


@pytest.mark.parametrize(
    ("build", "match"),
    [
        (_too_many_items, rf"manifest.json lists {MAX_ARCHIVE_IMAGES + 1} images"),
        (_too_many_entries, rf"index.json lists {MAX_ARCHIVE_IMAGES + 1} images"),
        (_too_many_tags, rf"manifest.json lists {MAX_ARCHIVE_TAGS + 1} tags"),
        (_too_many_layers, r"manifest.json lists \d+ layers \(the limit is 100000;"),
    ],
    ids=["manifest.json-items", "index.json-entries", "tags", "layers"],
)
async def test_an_archive_listing_more_than_any_real_one_is_refused_saying_the_limit(
    store: Store, build: Callable[[Image], bytes], match: str
) -> None:
    error = await refused(store, build(Image()), match)

    assert "the limit is" in str(error)


async def test_a_config_of_more_layers_than_docker_takes_is_refused(store: Store) -> None:
    """A few KB of gzip can repeat one DiffID 100,000 times: as many layer rows."""
    image = Image()
    config = json.loads(image.config)
    config["rootfs"]["diff_ids"] *= MAX_LAYERS + 1
    image.config = json.dumps(config).encode()

    await refused(
        store,
        docker_archive(image, [item(layers=MAX_LAYERS + 1)]),
        rf"has {MAX_LAYERS + 1} layers: max depth exceeded \(docker and ferryd take at most",
    )


async def test_as_many_layers_as_docker_takes_load(store: Store) -> None:
    image = Image()
    config = json.loads(image.config)
    config["rootfs"]["diff_ids"] *= MAX_LAYERS
    image.config = json.dumps(config).encode()

    [loaded] = await load_in(store, docker_archive(image, [item(layers=MAX_LAYERS)]))

    assert loaded.layers_loaded == MAX_LAYERS


# -- 3. the names kept while an archive streams in have a budget -------------------------


def _feed_long_links(reader: TarReader, count: int) -> None:
    for n in range(count):
        name = ("d/" * 1000 + f"{n:08d}").ljust(4000, "x")
        reader.feed(symlink_header(name, "a/" * 2000 + f"{n:08d}"))


def test_long_names_and_link_targets_are_refused_once_they_pass_the_budget(
    tmp_path: Path,
) -> None:
    """The review's archive: symbolic links of 4 KiB names and 8 KiB targets (20,000 of
    them held 206 MiB). It is refused at the entry that passes the budget."""
    intake = Intake(tmp_path)
    with pytest.raises(ArchiveError, match="take more than 32 MiB") as caught:
        _feed_long_links(TarReader(intake), 20_000)

    kept = sum(sys.getsizeof(text) for link in intake.links.items() for text in link)
    assert kept <= MAX_NAME_MEMORY < kept + 3 * 4096 * 4  # one entry short of it
    assert f"first {len(intake.links) + 1} entries" in str(caught.value)


async def test_a_load_past_the_name_budget_is_refused_and_stores_nothing(
    store: Store, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setattr(intake_module, "MAX_NAME_MEMORY", 64 * 1024)
    writer = TarWriter()
    for n in range(100):
        writer.link(f"{n:03d}" + "n" * 500, "t" * 500)

    await refused(store, writer.bytes(), r"take more than 0\.0625 MiB")


def test_the_budget_counts_what_a_name_occupies_not_its_length(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """One character past Latin-1 makes a str take 4 bytes a character."""
    monkeypatch.setattr(intake_module, "MAX_NAME_MEMORY", 3000)
    ascii_name = "a" * 1000
    TarReader(Intake(tmp_path / "a")).feed(symlink_header(ascii_name, "t"))

    with pytest.raises(ArchiveError, match="take more than"):
        TarReader(Intake(tmp_path / "b")).feed(symlink_header("a" * 999 + "😀", "t"))


def test_a_quiet_load_forgets_the_layers_it_does_not_show(tmp_path: Path) -> None:
    reader = _Reader(Intake(tmp_path))
    reader.intake.finished.append(("0123456789ab", 2048))

    _LayerProgress(None, reader).update()

    assert reader.intake.finished == []
