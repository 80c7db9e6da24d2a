"""Save images to an archive (`docker save`), produced as the client reads it.

One tar holds both forms docker 25+ writes: an OCI image layout (`oci-layout`,
`index.json`, `blobs/sha256/…`) and docker's `manifest.json` and `repositories`, whose
paths point into `blobs/`, so each blob is in the archive once. The blobs are the store's
own: the registry's compressed layers and the manifest the image was pulled with, so a
load followed by a push gives the registry the same manifest digest (docker cannot: it
exports uncompressed layers). dockerd of every version since 1.10 decompresses layers
as it loads them, skopeo reads both `docker-archive:` and `oci-archive:`.

A name of an index (a multi-platform image) saves the index as itself: `index.json`
names the index (its own bytes, so its digest is kept) and the archive carries every
platform of it that is stored, each with its manifest, config and layers; docker's
`manifest.json` lists each platform's image, as docker 25+ does, the name on the one
for the default platform. With a `platform`, the image of that platform alone is saved.
An index saved whole carries, in the OCI part, what it lists beyond images that is kept
whole (as a push sends it): each nested index with the images it lists, each artifact
with the blobs it names; `manifest.json` lists images only, as before.

Everything is decided before the first byte (an unknown name is a 404, an image of
another platform too) and held until the last: the images' top layers (and with them
every layer below) and the blobs of the artifacts (pinned); their configs, manifests and
indexes are read then, and kept in memory (an rmi while the archive streams deletes
their files). Layer and artifact blobs are streamed
from disk in 1 MiB pieces, each read and hashed in one worker-thread call; a blob that
is no longer what its digest says ends the archive short, and the client sees a cut
transfer rather than a corrupt archive.
"""

from __future__ import annotations

from collections.abc import AsyncIterator
from dataclasses import dataclass, field
from pathlib import Path

import anyio
import msgspec

from ferryd.blobfile import BlobReader
from ferryd.codec import BATCH_SIZE
from ferryd.distribution.archives import layout, tarstream
from ferryd.errors import (
    BadRequestError,
    CorruptBlobError,
    FerrydError,
    ImageNotFoundError,
    InvalidReferenceError,
    PlatformNotFoundError,
)
from ferryd.oci.digest import Digest, algorithm_of, chain_ids, hex_of, new_hasher, sha256_digest
from ferryd.oci.image_config import decode_config, rootfs_of
from ferryd.oci.manifest import (
    Descriptor,
    ImageManifest,
    decode_manifest,
)
from ferryd.oci.mediatypes import (
    IMAGE_MANIFEST_TYPES,
    INDEX_TYPES,
    OCI_INDEX,
    config_type,
    family_of,
    manifest_type,
)
from ferryd.oci.platform import Platform, check_platform
from ferryd.oci.reference import Reference, parse_reference
from ferryd.store import Store
from ferryd.store.gc import unpin
from ferryd.store.images import ImageRecord
from ferryd.store.indexes import IndexEntry, StoredIndex
from ferryd.store.layers import Layer, LayerBlob
from ferryd.store.manifests import StoredManifest
from ferryd.store.references import Target


@dataclass(frozen=True, slots=True)
class _Entry:
    """One file of the archive: small JSON held here, or a stored blob read from disk."""

    name: str
    size: int
    data: bytes | None = None
    path: Path | None = None
    digest: Digest | None = None  # what a blob read from disk must hash to


@dataclass
class _Image:
    image_id: Digest
    record: ImageRecord
    config: bytes
    layers: list[Layer]  # bottom first, each as its first blob holds it
    tags: list[Reference] = field(default_factory=list)
    standalone: bool = False  # named on its own (not only as a platform of an index)
    manifest: Digest | None = None  # the stored manifest it must be saved with
    # The blobs stored for each layer, by ChainID and blob digest: a manifest names one
    # of them (another platform's manifest may name another compression).
    variants: dict[Digest, dict[Digest, LayerBlob]] = field(default_factory=dict)
    listed: list[Layer] | None = None  # the layers manifest.json lists, as a manifest names


@dataclass(frozen=True, slots=True)
class _Other:
    """A nested index or an artifact an index lists, kept whole: saved as it is."""

    digest: Digest
    raw: bytes
    blobs: list[IndexEntry]  # of an artifact: the blobs it names (streamed from disk)


@dataclass
class _Index:
    index: StoredIndex
    raw: bytes
    image_id: Digest  # the image its names give (listed with them in manifest.json)
    children: list[tuple[Digest, Digest]]  # (manifest, image ID) of the platforms stored
    tags: list[Reference] = field(default_factory=list)
    # What it lists beyond images, kept whole: the images its nested indexes list
    # (manifest, image ID; in the OCI part only), and the nested indexes and artifacts.
    nested: list[tuple[Digest, Digest]] = field(default_factory=list)
    others: list[_Other] = field(default_factory=list)


@dataclass
class Export:
    """An archive ready to stream: `chunks()` produces it, `release()` lets go of what it
    holds (call it when the response ends, however it ends)."""

    images: list[Digest]
    _store: Store
    _entries: list[_Entry]
    _held: list[Digest]
    _pinned: list[Digest]
    _streamed: list[Digest]  # artifact blobs read from disk as the archive streams: pinned

    async def chunks(self) -> AsyncIterator[bytes]:
        """The tar, in pieces of about 1 MiB (headers and small files joined)."""
        buffer = bytearray()
        for entry in self._entries:
            if entry.data is not None or entry.size == 0:
                buffer += _header(entry)
                buffer += entry.data or b""
                buffer += tarstream.padding(entry.size)
            else:
                buffer += _header(entry)
                yield bytes(buffer)
                buffer.clear()
                async for piece in _blob_pieces(entry):
                    yield piece
                buffer += tarstream.padding(entry.size)
            if len(buffer) >= BATCH_SIZE:
                yield bytes(buffer)
                buffer.clear()
        buffer += tarstream.END_OF_ARCHIVE
        yield bytes(buffer)

    def release(self) -> None:
        held, self._held = self._held, []
        pinned, self._pinned = self._pinned, []
        streamed, self._streamed = self._streamed, []
        for chain in held:
            self._store.layers.holds.release(chain)
        for digest in [*pinned, *streamed]:
            self._store.blobs.pins.release(digest)


def _header(entry: _Entry) -> bytes:
    if entry.name.endswith("/"):
        return tarstream.directory_header(entry.name)
    return tarstream.file_header(entry.name, entry.size)


async def _blob_pieces(entry: _Entry) -> AsyncIterator[bytes]:
    """A stored blob's bytes, checked against its digest as they go."""
    assert entry.path is not None
    assert entry.digest is not None
    digest = entry.digest
    hasher = new_hasher(digest)
    try:
        # Past the page cache, as a push reads (see `blobfile`).
        file = await anyio.to_thread.run_sync(BlobReader, entry.path)
    except FileNotFoundError:
        raise CorruptBlobError(f"blob {digest} is missing from the store") from None

    def read() -> bytes:
        piece = file.read(BATCH_SIZE)
        hasher.update(piece)
        return piece

    sent = 0
    try:
        while sent < entry.size:
            piece = await anyio.to_thread.run_sync(read)
            if not piece:
                break
            piece = piece[: entry.size - sent]
            sent += len(piece)
            yield piece
    finally:
        file.close()  # cheap, and it must happen even when the response is cancelled
    if sent != entry.size or f"{algorithm_of(digest)}:{hasher.hexdigest()}" != digest:
        raise CorruptBlobError(
            f"blob {digest} in the store no longer matches its digest: the archive was cut "
            "short; run `ferryd fsck` to find and repair what is broken"
        )


def prepare_export(store: Store, names: list[str], platform: Platform | None) -> Export:
    """Resolve `names` as dockerd does and hold what the archive needs (run it in a
    worker thread). An unknown name is an `ImageNotFoundError` (404), an image of
    another platform than `platform` a `PlatformNotFoundError` (404)."""
    if not names:
        raise BadRequestError("name at least one image to save (names=…)")
    held: list[Digest] = []
    pinned: list[Digest] = []
    streamed: list[Digest] = []
    export = Export([], store, [], held, pinned, streamed)
    try:
        images: dict[Digest, _Image] = {}
        indexes: dict[Digest, _Index] = {}

        def image_of(image_id: Digest) -> _Image:
            image = images.get(image_id)
            if image is None:
                image = images[image_id] = _load(store, image_id, held, pinned)
            return image

        for name in names:
            for target, tag in _select(store, name):
                stored = store.indexes.get(target.index) if target.index is not None else None
                if stored is not None and platform is None:
                    indexed = indexes.get(stored.digest)
                    if indexed is None:
                        indexed = indexes[stored.digest] = _index(
                            store, stored, target, pinned, streamed
                        )
                        for _, child in [*indexed.children, *indexed.nested]:
                            image_of(child)
                    if tag is not None and tag not in indexed.tags:
                        indexed.tags.append(tag)
                    continue
                manifest = None
                image_id = target.image_id
                if stored is not None and platform is not None:
                    manifest, image_id = _platform_child(store, stored, name, platform)
                image = image_of(image_id)
                _check_platform(image, name, platform)
                image.standalone = True
                image.manifest = image.manifest or manifest
                if tag is not None and tag not in image.tags:
                    image.tags.append(tag)
        export.images = [
            *(indexed.image_id for indexed in indexes.values()),
            *(image.image_id for image in images.values() if image.standalone),
        ]
        export.images = list(dict.fromkeys(export.images))
        export._entries = _entries(store, list(images.values()), list(indexes.values()), pinned)
    except BaseException:
        export._pinned = []  # let go of below, with what an rmi meanwhile left to us
        export.release()
        unpin(store, pinned)
        raise
    # The configs, manifests and indexes the archive holds are in memory now: their pins
    # go (and their files, if an rmi removed them meanwhile), so that an rmi while the
    # archive streams deletes them at once. The layers stay held until its end.
    export._pinned = []
    unpin(store, pinned)
    return export


def _select(store: Store, name: str) -> list[tuple[Target, Reference | None]]:
    """What `name` means, each with the tag it was named by (None: by ID or digest,
    exported untagged as dockerd does). A repository alone means every reference of it,
    as in dockerd's tarexport: its tags, and its digest references untagged (so a
    repository pulled by digest only is saved, without RepoTags)."""
    image_id = store.resolve_id(name)
    if image_id is not None:
        return [(Target(image_id), None)]
    by_index = store.index_by_id(name)
    if by_index is not None:
        return [(by_index, None)]
    try:
        reference = parse_reference(name, default_tag=False)
    except InvalidReferenceError:
        raise ImageNotFoundError(f"No such image: {name}") from None
    if reference.digest is not None or reference.tag is not None:
        found = store.references.target(reference)
        if found is None:
            raise ImageNotFoundError(f"No such image: {reference.familiar}")
        return [(found, _tag_of(reference))]
    named = store.references.targets_of(reference)
    if not named:
        raise ImageNotFoundError(f"No such image: {reference.familiar_name}")
    return [(target, _tag_of(ref)) for ref, target in named]


def _tag_of(reference: Reference) -> Reference | None:
    """The tag an archive gives the image `reference` names: none for a reference with a
    digest (`repo:tag@digest` too), as dockerd's tarexport adds no tag for those."""
    return reference if reference.digest is None else None


def _index(
    store: Store,
    stored: StoredIndex,
    target: Target,
    pinned: list[Digest],
    streamed: list[Digest],
) -> _Index:
    """An index to save whole, its blob pinned, with the platforms of it that are stored
    and what it lists beyond images that is kept whole (`_whole_others`)."""
    store.blobs.pins.acquire(stored.digest)
    pinned.append(stored.digest)
    children = list(store.indexes.stored_children(stored.digest).items())
    raw = store.indexes.raw(stored.digest)
    nested, others = _whole_others(store, stored, pinned, streamed)
    return _Index(stored, raw, target.image_id, children, nested=nested, others=others)


def _whole_others(
    store: Store, stored: StoredIndex, pinned: list[Digest], streamed: list[Digest]
) -> tuple[list[tuple[Digest, Digest]], list[_Other]]:
    """The nested indexes and artifacts the index's entries reach that are kept whole
    (`IndexStore.complete`: a load then keeps them, and a push after it sends the index
    whole), each once, pinned and read; the blobs of the artifacts, pinned until the
    archive ends (read from disk as it streams, as layers are); and the images the
    nested indexes list (manifest, image ID), which the archive carries as the index's
    own. One that is not kept whole is left out, as a platform that is not stored."""
    nested: list[tuple[Digest, Digest]] = []
    others: list[_Other] = []
    seen: set[Digest] = set()
    todo = [
        entry
        for entry in stored.entries
        if entry.kind in ("index", "unknown") and store.indexes.complete(entry.digest)
    ]
    while todo:
        entry = todo.pop()
        if entry.digest in seen:
            continue
        seen.add(entry.digest)
        # Pin first, then look: a removal between the two cannot take it.
        store.blobs.pins.acquire(entry.digest)
        pinned.append(entry.digest)
        kept = store.indexes.get(entry.digest)
        if kept is None:
            continue  # removed since `complete` looked: left out
        blobs = [child for child in kept.entries if child.kind == "blob"]
        for blob in blobs:
            store.blobs.pins.acquire(blob.digest)
            streamed.append(blob.digest)
        if kept.media_type in INDEX_TYPES:
            nested += store.indexes.stored_children(kept.digest).items()
            todo += [child for child in kept.entries if child.kind in ("index", "unknown")]
        others.append(_Other(kept.digest, store.indexes.raw(kept.digest), blobs))
    return nested, others


def _platform_child(
    store: Store, stored: StoredIndex, name: str, platform: Platform
) -> tuple[Digest, Digest]:
    """The stored platform of an index that is `platform` itself, as docker saves one
    (never an older platform it runs): (its manifest, its image)."""
    children = store.indexes.stored_children(stored.digest)
    images = [
        (entry, children[entry.digest])
        for entry in stored.entries
        if entry.kind == "image"
        and entry.platform is not None
        and platform.is_platform_of(entry.os or "", entry.architecture or "", entry.variant)
        and entry.digest in children
    ]
    if not images:
        have = sorted(
            str(entry.platform)
            for entry in stored.entries
            if entry.platform is not None and entry.digest in children
        )
        raise PlatformNotFoundError(
            f"image with reference {name} has no platform {platform} stored"
            + (f" (it has {', '.join(have)})" if have else "")
        )
    entry, image_id = images[0]
    return entry.digest, image_id


def _load(store: Store, image_id: Digest, held: list[Digest], pinned: list[Digest]) -> _Image:
    """An image with its layers, held (top layer, so all below) and its config pinned."""
    store.blobs.pins.acquire(image_id)
    pinned.append(image_id)
    record = store.images.record(image_id)
    if record is None:
        raise ImageNotFoundError(f"No such image: {image_id}")
    config = store.images.get(image_id)
    chains = chain_ids(rootfs_of(config).diff_ids)
    layers: list[Layer] = []
    variants = {}
    if chains:
        # Hold first, then look: a removal between the two cannot take it.
        store.layers.holds.acquire(chains[-1])
        held.append(chains[-1])
        for chain in chains:
            layer = store.layers.get(chain)
            if layer is None:
                raise ImageNotFoundError(f"layer {chain} of image {image_id} is not in the store")
            layers.append(layer)
        variants = store.layers.blobs_of(chains)
    return _Image(image_id, record, config, layers, variants=variants)


def _named_layers(image: _Image, raw: bytes) -> list[Layer] | None:
    """The image's layers as the manifest `raw` names them (each with the stored blob it
    names); None when it names a config or a blob that is not the image's, or not
    stored."""
    try:
        described = decode_manifest(raw)
    except FerrydError:
        return None
    if described.config.digest != image.image_id or len(described.layers) != len(image.layers):
        return None
    named = []
    for layer, descriptor in zip(image.layers, described.layers, strict=True):
        blob = image.variants.get(layer.chain_id, {}).get(Digest(descriptor.digest))
        if blob is None or blob.size != descriptor.size:
            return None
        named.append(layer.with_blob(blob))
    return named


def _manifest_layers(image: _Image, digest: Digest, raw: bytes) -> list[Layer]:
    """`_named_layers` of a manifest that must be saved as it is: a blob it names that
    is not stored would leave the archive without it."""
    named = _named_layers(image, raw)
    if named is None:
        raise CorruptBlobError(
            f"the stored manifest {digest} of image {image.image_id} names a config or "
            "layer blob the store does not have for it: run `ferryd fsck`"
        )
    return named


def _check_platform(image: _Image, name: str, platform: Platform | None) -> None:
    record = image.record
    wanted = [platform] if platform is not None else []
    check_platform(name, wanted, record.os, record.architecture, record.variant, strict=True)


def _entries(
    store: Store, images: list[_Image], indexes: list[_Index], pinned: list[Digest]
) -> list[_Entry]:
    blobs: dict[Digest, _Entry] = {}
    by_id = {image.image_id: image for image in images}

    def add_layers(layers: list[Layer]) -> None:
        for layer in layers:
            if layer.blob_digest not in blobs:
                blobs[layer.blob_digest] = _Entry(
                    layout.blob_name(layer.blob_digest),
                    layer.compressed_size,
                    path=store.blobs.path(layer.blob_digest),
                    digest=layer.blob_digest,
                )

    index: list[dict[str, object]] = []
    items: list[tuple[str, list[str], list[str], dict[str, Descriptor]]] = []
    repositories: dict[str, dict[str, str]] = {}
    # The names an index gives its image for the default platform, in manifest.json.
    listed_tags: dict[Digest, list[Reference]] = {}
    in_manifest_json: set[Digest] = set()
    for indexed in indexes:
        index_tags: list[Reference | None] = [*indexed.tags] or [None]
        for index_tag in index_tags:
            index_descriptor: dict[str, object] = {
                "mediaType": indexed.index.media_type,
                "digest": indexed.index.digest,
                "size": len(indexed.raw),
            }
            if index_tag is not None:
                index_descriptor["annotations"] = layout.annotations_for(index_tag)
            index.append(index_descriptor)
        blobs.setdefault(
            indexed.index.digest,
            _data(layout.blob_name(indexed.index.digest), indexed.raw),
        )
        for manifest_digest, child_id in [*indexed.children, *indexed.nested]:
            child = store.manifests.get(manifest_digest)
            if child is not None and manifest_digest not in blobs:
                store.blobs.pins.acquire(manifest_digest)
                pinned.append(manifest_digest)
                blobs[manifest_digest] = _data(layout.blob_name(manifest_digest), child.raw)
                # Each platform's manifest with the blobs it names, byte for byte.
                image = by_id[child_id]
                child_layers = _manifest_layers(image, manifest_digest, child.raw)
                add_layers(child_layers)
                if image.listed is None:
                    image.listed = child_layers
        for other in indexed.others:
            blobs.setdefault(other.digest, _data(layout.blob_name(other.digest), other.raw))
            for blob in other.blobs:
                blobs.setdefault(
                    blob.digest,
                    _Entry(
                        layout.blob_name(blob.digest),
                        blob.size,
                        path=store.blobs.path(blob.digest),
                        digest=blob.digest,
                    ),
                )
        listed_tags.setdefault(indexed.image_id, []).extend(
            tag for tag in indexed.tags if tag not in listed_tags.get(indexed.image_id, [])
        )
        for manifest_digest, image_id in indexed.children:
            entry = indexed.index.entry(manifest_digest)
            if entry is not None and entry.kind == "image":
                in_manifest_json.add(image_id)
    for image in images:
        # The manifest each tag is exported with (one for an untagged image); an image
        # saved only as a platform of an index is in it through the index.
        tags_or_none: list[Reference | None] = [*image.tags] or [None]
        if not image.standalone:
            tags_or_none = []
        for tag in tags_or_none:
            media_type, raw, manifest_layers = _manifest(store, image, tag)
            add_layers(manifest_layers)
            if image.listed is None:
                image.listed = manifest_layers
            digest = sha256_digest(raw)
            if digest not in blobs:
                store.blobs.pins.acquire(digest)
                pinned.append(digest)
                blobs[digest] = _data(layout.blob_name(digest), raw)
            descriptor: dict[str, object] = {
                "mediaType": media_type,
                "digest": digest,
                "size": len(raw),
                "platform": decode_config(image.config).platform(),
            }
            if tag is not None:
                descriptor["annotations"] = layout.annotations_for(tag)
            index.append(descriptor)
        config_name = layout.blob_name(image.image_id)
        blobs.setdefault(image.image_id, _data(config_name, image.config))
        listed = image.listed if image.listed is not None else image.layers
        add_layers(listed)
        if not image.standalone and image.image_id not in in_manifest_json:
            continue  # an attestation: its blobs are in the OCI part, it is no image to docker
        layer_names = []
        sources: dict[str, Descriptor] = {}
        for layer in listed:
            layer_names.append(layout.blob_name(layer.blob_digest))
            if layer.urls:
                sources[layer.diff_id] = Descriptor(
                    layer.media_type, layer.blob_digest, layer.compressed_size, list(layer.urls)
                )
        named = [
            *image.tags,
            *(t for t in listed_tags.get(image.image_id, []) if t not in image.tags),
        ]
        tags = [tag.familiar for tag in named]
        items.append((config_name, tags, layer_names, sources))
        for tag in named:
            assert tag.tag is not None
            top = hex_of(listed[-1].blob_digest) if listed else ""
            repositories.setdefault(tag.familiar_name, {})[tag.tag] = top
    entries = [
        _data(layout.OCI_LAYOUT, layout.OCI_LAYOUT_CONTENT),
        _json(layout.INDEX_JSON, {"schemaVersion": 2, "mediaType": OCI_INDEX, "manifests": index}),
        _data(layout.MANIFEST_JSON, layout.encode_manifest_json(items)),
    ]
    if repositories:
        entries.append(_json(layout.REPOSITORIES, repositories))
    entries += [_Entry("blobs/", 0), _Entry("blobs/sha256/", 0)]
    entries += blobs.values()
    return entries


def _json(name: str, value: object) -> _Entry:
    return _data(name, msgspec.json.encode(value))


def _data(name: str, data: bytes) -> _Entry:
    return _Entry(name, len(data), data=data)


def _manifest(store: Store, image: _Image, tag: Reference | None) -> tuple[str, bytes, list[Layer]]:
    """The manifest to export an image with, and its layers as it names them: one it came
    with whose config and layer blobs are stored (the platform's manifest of an index,
    or the one its repository's digest reference names, when there is one; one naming
    the layers' first blobs before others), else a new one in the image's format, as a
    push would make it."""
    if image.manifest is not None:
        platform_manifest = store.manifests.get(image.manifest)
        if platform_manifest is not None:
            layers = _manifest_layers(image, image.manifest, platform_manifest.raw)
            return platform_manifest.media_type, platform_manifest.raw, layers
    candidates: list[tuple[StoredManifest, list[Layer]]] = []
    for stored in sorted(store.manifests.for_image(image.image_id), key=lambda m: m.digest):
        if stored.media_type not in IMAGE_MANIFEST_TYPES:
            continue
        named_layers = _named_layers(image, stored.raw)
        if named_layers is not None:
            candidates.append((stored, named_layers))
    candidates.sort(key=lambda candidate: candidate[1] != image.layers)
    if candidates:
        named = {
            reference.digest
            for reference in store.references.for_image(image.image_id)
            if reference.digest is not None and (tag is None or reference.name == tag.name)
        }
        chosen, chosen_layers = next((c for c in candidates if c[0].digest in named), candidates[0])
        return chosen.media_type, chosen.raw, chosen_layers
    family = family_of(image.record.config_media_type)
    manifest = ImageManifest(
        config=Descriptor(config_type(family), image.image_id, len(image.config)),
        layers=[
            Descriptor(
                layer.media_type,
                layer.blob_digest,
                layer.compressed_size,
                urls=list(layer.urls) or None,
            )
            for layer in image.layers
        ],
        schemaVersion=2,
        mediaType=manifest_type(family),
    )
    return manifest_type(family), msgspec.json.encode(manifest), image.layers
