"""Push one repository's tag(s): layers → config → manifest → V2 metadata, reference.

A tag that names an index (a multi-platform image) pushes every platform's image, each
with the manifest it was pulled with (PUT by digest, so each digest is kept), then the
index's own bytes under the tag: the registry gets the index the tag was pulled as, with
its digest. When some of the index's platforms are not stored, the push refuses and
names them, unless asked for less: dockerd's `platform` pushes that platform's image
alone (a single-platform manifest under the tag), and ferryd's `reduced_index` pushes a
new index of the platforms stored (a new digest, which the push says).

What an index lists beyond images (a nested index, an artifact: an `unknown` entry's
manifest), which a pull of all platforms keeps as it is, goes too, as it is: an
artifact's blobs then its manifest, a nested index's images then its own bytes, each
before the index listing it, by digest.
"""

from __future__ import annotations

import json
import time
from dataclasses import dataclass, field, replace

import anyio
import msgspec

from ferryd.concurrency import single_errors
from ferryd.distribution.context import PushContext
from ferryd.distribution.events import failure_logged
from ferryd.distribution.progress import Message
from ferryd.distribution.push_layers import DescribableLayer, PushLayer, StoreLayer
from ferryd.distribution.transfers import with_retries
from ferryd.distribution.uploads import Uploaded, UploadManager
from ferryd.errors import (
    FerrydError,
    ImageNotFoundError,
    IncompleteImageError,
    PlatformNotFoundError,
    StoreError,
)
from ferryd.oci.digest import Digest, chain_ids, sha256_digest, short_id
from ferryd.oci.image_config import RootFS, rootfs_of
from ferryd.oci.manifest import Descriptor, ImageManifest, decode_index, decode_manifest
from ferryd.oci.mediatypes import INDEX_TYPES, Family, config_type, family_of, manifest_type
from ferryd.oci.platform import Platform, check_platform
from ferryd.oci.reference import Reference
from ferryd.registry.client import RegistryClient
from ferryd.store import Store
from ferryd.store.indexes import IndexEntry, StoredIndex
from ferryd.store.layers import LayerBlob
from ferryd.store.manifests import StoredManifest
from ferryd.store.references import Target


@dataclass(frozen=True, slots=True)
class PushResult:
    tag: str
    digest: Digest
    size: int


@dataclass
class _Stats:
    uploaded: int = 0
    mounted: int = 0
    skipped: int = 0
    bytes: int = 0

    def count(self, result: Uploaded) -> None:
        if result.outcome == "pushed":
            self.uploaded += 1
            self.bytes += result.size
        elif result.outcome == "mounted":
            self.mounted += 1
        else:
            self.skipped += 1


@dataclass(frozen=True, slots=True)
class _Child:
    """A platform of an index to push: its entry and the stored image it is."""

    entry: IndexEntry
    image_id: Digest


@dataclass(frozen=True, slots=True)
class _Other:
    """A nested index or an artifact an index lists, to push as it is (by digest)."""

    digest: Digest
    media_type: str
    raw: bytes
    blobs: list[IndexEntry]  # of an artifact: the blobs it names


@dataclass(frozen=True, slots=True)
class _Plan:
    """What one tag's push sends: an image (with the stored manifest to keep, if one),
    or an index's children and then the index (its own bytes, or a reduced one)."""

    target: Target
    manifest: Digest | None = None  # of an image: the stored manifest it must keep
    index: StoredIndex | None = None
    children: list[_Child] = field(default_factory=list)
    index_raw: bytes = b""  # the index to PUT under the tag
    reduced: bool = False
    others: list[_Other] = field(default_factory=list)  # deeper first


async def push(reference: Reference, ctx: PushContext) -> list[PushResult]:
    """Push `reference`'s tag, or every tag of its repository when it has none.

    A failure is logged as one `image.push_failed` event, then raised.
    """
    with failure_logged("push", str(reference)):
        return await _push(reference, ctx)


async def _push(reference: Reference, ctx: PushContext) -> list[PushResult]:
    ctx.progress.write(Message(f"The push refers to repository [{reference.name}]"))

    def make_plans() -> list[tuple[Reference, _Plan]]:
        # Every refusal before a byte goes up: a tag of an incomplete index names what
        # it lacks. In a worker thread: a plan reads the index's bytes from disk.
        tags = _tags_to_push(reference, ctx.store)
        return [(tag, _plan(tag, target, ctx)) for tag, target in tags]

    plans = await anyio.to_thread.run_sync(make_plans)
    client = await ctx.connector.open(
        reference.domain,
        reference.path,
        ctx.credentials,
        actions="pull,push",
        meta_headers=ctx.meta_headers,
    )
    return [await _push_tag(client, tag, plan, ctx) for tag, plan in plans]


def _tags_to_push(reference: Reference, store: Store) -> list[tuple[Reference, Target]]:
    if reference.tag is not None:
        target = store.references.target(reference)
        if target is None:
            raise ImageNotFoundError(
                f"An image does not exist locally with the tag: {reference.familiar_name}"
                f":{reference.tag}"
            )
        return [(reference, target)]
    tags = store.references.tag_targets_of(reference.repository())
    if not tags:
        raise ImageNotFoundError(
            f"An image does not exist locally with the tag: {reference.familiar_name}"
        )
    return tags


def _plan(tag: Reference, target: Target, ctx: PushContext) -> _Plan:
    store = ctx.store
    index = store.indexes.get(target.index) if target.index is not None else None
    if index is None:
        if ctx.platform is not None:
            _check_image_platform(store, tag, target.image_id, ctx.platform)
        return _Plan(Target(target.image_id))
    stored = store.indexes.stored_children(index.digest)
    if ctx.platform is not None:
        entry = _platform_entry(tag, index, stored, ctx.platform)
        return _Plan(Target(stored[entry.digest]), manifest=entry.digest)
    # What it lists beyond images counts as stored when kept whole (each walked once).
    whole = [
        entry
        for entry in index.entries
        if entry.digest not in stored
        and entry.kind in ("index", "unknown")
        and store.indexes.complete(entry.digest)
    ]
    missing = [e for e in index.entries if e.digest not in stored and e not in whole]
    if not missing:
        children = [
            _Child(entry, stored[entry.digest]) for entry in index.entries if entry.digest in stored
        ]
        nested, others = _others(store, index)
        seen = {child.entry.digest for child in children}
        children += [child for child in nested if child.entry.digest not in seen]
        return _Plan(
            target,
            index=index,
            children=children,
            index_raw=store.indexes.raw(index.digest),
            others=others,
        )
    if not ctx.reduced_index:
        raise IncompleteImageError(
            f"cannot push {tag.familiar}: its index {index.digest} lists "
            f"{_counted(len(missing), 'manifest')} that {'is' if len(missing) == 1 else 'are'} "
            f"not stored: {', '.join(_shown(entry) for entry in missing)}. Pull them "
            f"({_pull_advice(store, tag, index.digest)}), push one platform "
            "(`--platform OS/ARCH`), or push an index of the platforms stored "
            "(`--reduced-index`: a new index, with a new digest)"
        )
    kept = _reduced_entries(index, stored)
    if not any(entry.kind == "image" for entry in kept):
        raise IncompleteImageError(
            f"cannot push {tag.familiar}: no platform of its index is stored"
        )
    # What it lists beyond images, kept whole, stays in it: pushed as it is.
    kept = [entry for entry in index.entries if entry in kept or entry in whole]
    raw = _reduced_index(store.indexes.raw(index.digest), kept)
    children = [_Child(entry, stored[entry.digest]) for entry in kept if entry.digest in stored]
    nested, others = _others(store, replace(index, entries=whole))
    seen = {child.entry.digest for child in children}
    children += [child for child in nested if child.entry.digest not in seen]
    return _Plan(
        target,
        index=index,
        children=children,
        index_raw=raw,
        reduced=True,
        others=others,
    )


def _pull_advice(store: Store, tag: Reference, index: Digest) -> str:
    """Where to pull an index's missing entries from: another repository that names the
    index (where it came from, as a rule: a tag for another registry names it too),
    by its digest; else, in words, the registry it came from. Never the push's target,
    which may not have it."""
    sources = [
        name
        for name in store.references.naming_index(index)
        if name.repository() != tag.repository()
    ]
    if sources:
        source = sources[0].repository().with_digest(index)
        return f"`ferryd pull --all-platforms {source.familiar}`"
    return f"with `ferryd pull --all-platforms REPOSITORY@{index}` from the registry it came from"


def _others(store: Store, index: StoredIndex) -> tuple[list[_Child], list[_Other]]:
    """What `index` lists beyond its images, kept whole (`IndexStore.complete`): the
    nested indexes and artifacts, deeper first (each before the index listing it), and
    the images the nested indexes list."""
    children: list[_Child] = []
    others: list[_Other] = []
    seen: set[Digest] = set()

    def walk(entries: list[IndexEntry]) -> None:
        for entry in entries:
            if entry.kind not in ("index", "unknown") or entry.digest in seen:
                continue
            seen.add(entry.digest)
            kept = store.indexes.get(entry.digest)
            if kept is None:  # a platform image listed as unknown: pushed as an image
                continue
            if kept.media_type in INDEX_TYPES:
                walk(kept.entries)
                stored = store.indexes.stored_children(kept.digest)
                children.extend(
                    _Child(child, stored[child.digest])
                    for child in kept.entries
                    if child.digest in stored
                )
                others.append(
                    _Other(kept.digest, kept.media_type, store.indexes.raw(kept.digest), [])
                )
            else:
                raw = store.indexes.raw(kept.digest)
                others.append(_Other(kept.digest, kept.media_type, raw, kept.entries))

    walk(index.entries)
    return children, others


def _platform_entry(
    tag: Reference, index: StoredIndex, stored: dict[Digest, Digest], platform: Platform
) -> IndexEntry:
    """The stored image of an index for `platform` itself, as docker pushes one: never
    an older platform it runs (`Platform.is_platform_of`)."""
    images = [e for e in index.entries if e.kind == "image" and e.platform is not None]
    matching = [
        e for e in images if platform.is_platform_of(e.os or "", e.architecture or "", e.variant)
    ]
    present = [e for e in matching if e.digest in stored]
    if present:
        return present[0]
    have = sorted({str(e.platform) for e in images if e.digest in stored})
    if matching:
        raise PlatformNotFoundError(
            f"the image for {platform} of {tag.familiar} ({matching[0].digest}) is not "
            f"stored: pull it first (`ferryd pull --platform {platform} {tag.familiar}`)"
            + (f"; stored: {', '.join(have)}" if have else "")
        )
    raise PlatformNotFoundError(
        f"no matching manifest for {platform} in the index of {tag.familiar}"
        + (f" (stored: {', '.join(have)})" if have else "")
    )


def _check_image_platform(
    store: Store, tag: Reference, image_id: Digest, platform: Platform
) -> None:
    record = store.images.record(image_id)
    if record is not None:
        check_platform(
            tag.familiar, [platform], record.os, record.architecture, record.variant, strict=True
        )


def _reduced_entries(index: StoredIndex, stored: dict[Digest, Digest]) -> list[IndexEntry]:
    """The stored entries, without attestations of images left out."""
    kept = {entry.digest for entry in index.entries if entry.digest in stored}
    return [
        entry
        for entry in index.entries
        if entry.digest in kept
        and (entry.kind != "attestation" or entry.attests is None or entry.attests in kept)
    ]


def _reduced_index(raw: bytes, kept: list[IndexEntry]) -> bytes:
    """The index `raw` with only the entries `kept`, each as the index wrote it, and
    every other field of the index as it was."""
    document = json.loads(raw)
    wanted = {entry.position for entry in kept}
    document["manifests"] = [
        entry for position, entry in enumerate(document["manifests"]) if position in wanted
    ]
    return json.dumps(document, separators=(",", ":"), ensure_ascii=False).encode()


def _shown(entry: IndexEntry) -> str:
    what = str(entry.platform) if entry.platform is not None else entry.kind
    if entry.kind == "attestation":
        what = f"attestation of {short_id(entry.attests or '')}"
    elif entry.kind != "image":
        what = f"{entry.kind} entry"
    return f"{what} ({entry.digest})"


def _counted(count: int, noun: str) -> str:
    return f"{count} {noun}{'' if count == 1 else 's'}"


async def _push_tag(
    client: RegistryClient, tag: Reference, plan: _Plan, ctx: PushContext
) -> PushResult:
    started = time.monotonic()
    store = ctx.store
    stats = _Stats()
    assert tag.tag is not None
    if plan.index is None:
        media_type, raw = await _push_image(
            client, plan.target.image_id, ctx, stats, keep=plan.manifest
        )
        digest = await client.put_manifest(tag.tag, media_type, raw)
        recorded = Target(plan.target.image_id)
        extra: dict[str, object] = {}
    else:
        index = plan.index
        pushed: dict[Digest, tuple[str, bytes]] = {}

        async def one(child: _Child) -> None:
            media_type, raw = await _push_image(
                client, child.image_id, ctx, stats, keep=child.entry.digest
            )
            ctx.job.phase = "manifest"
            await client.put_manifest(child.entry.digest, media_type, raw)
            pushed[child.entry.digest] = (media_type, raw)

        with single_errors():
            async with anyio.create_task_group() as tg:
                for child in plan.children:
                    tg.start_soon(one, child)
        for other in plan.others:  # deeper first: each before what lists it
            await _push_other(client, other, ctx, stats)
        ctx.job.phase = "manifest"
        media_type, raw = index.media_type, plan.index_raw
        digest = await client.put_manifest(tag.tag, media_type, raw)
        if plan.reduced:
            ctx.progress.write(
                Message(
                    f"{tag.tag}: pushed a reduced index of the "
                    f"{_counted(len(plan.children), 'manifest')} stored: its digest {digest} "
                    f"is not the original index's {index.digest}"
                )
            )
        recorded = Target(plan.target.image_id, digest)
        ctx.metrics.index_manifests.labels("push").inc(len(plan.children))
        extra = {
            "platforms": [str(c.entry.platform) for c in plan.children if c.entry.kind == "image"],
            "index": index.digest,
        }
    ctx.progress.write(Message(f"{tag.tag}: digest: {digest} size: {len(raw)}"))
    ctx.progress.write(Message(aux={"Tag": tag.tag, "Digest": digest, "Size": len(raw)}))

    def still_stored() -> bool:
        """Whether what the push would record a digest reference to is still stored: an
        rmi while it ran leaves the registry with the image, and nothing here to name."""
        if store.images.record(recorded.image_id) is None:
            return False
        return plan.index is None or plan.reduced or store.indexes.get(digest) is not None

    def record_push() -> None:
        if not still_stored():
            return
        # Pinned until its row references it: a sweep must not take it between.
        with store.blobs.pinned(sha256_digest(raw)):
            store.blobs.put(raw)  # outside the transaction: no fsync under the database lock
            with store.db.transaction():
                if not still_stored():
                    return  # removed since the look above: the sweep takes the blob
                if plan.index is None:
                    store.manifests.add(digest, recorded.image_id, media_type, raw)
                else:
                    # A reduced index is a new one: kept, so that its name resolves.
                    store.indexes.add(digest, media_type, raw, decode_index(raw))
                store.references.point(tag.repository().with_digest(digest), recorded)

    ctx.job.phase = "committing"
    await anyio.to_thread.run_sync(record_push)
    ctx.event_logger(
        plan.target.image_id,
        str(tag),
        "push",
        digest=digest,
        **extra,
        layers_uploaded=stats.uploaded,
        layers_mounted=stats.mounted,
        layers_skipped=stats.skipped,
        bytes=stats.bytes,
        seconds=round(time.monotonic() - started, 3),
    )
    return PushResult(tag.tag, digest, len(raw))


async def _push_other(
    client: RegistryClient, other: _Other, ctx: PushContext, stats: _Stats
) -> None:
    """A nested index or an artifact, as it is: an artifact's blobs first (those the
    registry lacks), then the manifest, by digest."""
    ctx.job.phase = "layers"
    for blob in other.blobs:

        async def send(blob: IndexEntry = blob) -> None:
            async def read() -> bytes:
                return await anyio.to_thread.run_sync(ctx.store.blobs.get, blob.digest)

            if await ctx.uploads.send_whole(client, blob.digest, blob.size, read, "blob"):
                stats.uploaded += 1
                stats.bytes += blob.size
            else:
                stats.skipped += 1

        await with_retries(
            send,
            policy=ctx.uploads.retries,
            progress=ctx.progress,
            progress_id=None,
            name=f"blob {blob.digest} of {other.digest}",
        )
    ctx.job.phase = "manifest"
    await client.put_manifest(other.digest, other.media_type, other.raw)


async def _push_image(
    client: RegistryClient,
    image_id: Digest,
    ctx: PushContext,
    stats: _Stats,
    *,
    keep: Digest | None,
) -> tuple[str, bytes]:
    """Upload an image's layers and config; the manifest to PUT for it. `keep`: the
    stored manifest it must be pushed with (a platform of an index: its digest is the
    one the index lists)."""
    store = ctx.store

    def stored() -> tuple[bytes, RootFS, str, list[StoredManifest], list[LayerBlob] | None]:
        """The config, its rootfs, the media type that says the manifest's format, the
        manifests the image came with, and the layers' blobs to send (`_named_blobs`):
        read in a worker thread, as they are blobs on disk, and read now, so that the
        push sends what it started with, whatever an rmi does meanwhile."""
        try:
            record = store.images.record(image_id)
            if record is None:
                raise ImageNotFoundError(f"No such image: {image_id}")
            raw_config = store.images.get(image_id)
            manifests = store.manifests.for_image(image_id)
        except StoreError:
            if store.images.record(image_id) is None:  # an rmi took it meanwhile
                raise ImageNotFoundError(f"No such image: {image_id}") from None
            raise
        rootfs = rootfs_of(raw_config)
        kept = next((m for m in manifests if m.digest == keep), None)
        if kept is not None:
            media_type = kept.media_type
        else:
            media_type = ctx.config_media_type or record.config_media_type
        blobs = _named_blobs(store, image_id, rootfs, manifests, kept, media_type)
        return raw_config, rootfs, media_type, manifests, blobs

    raw_config, rootfs, media_type, manifests, blobs = await anyio.to_thread.run_sync(stored)
    family = family_of(media_type)
    # As moby: the top layer, held for the whole upload, and the stack below it.
    top = ctx.layers.get(rootfs.chain_id())
    ctx.job.phase = "layers"
    try:
        layers = _stack(top, len(rootfs.diff_ids))
        if blobs is not None:
            layers = [_with_blob(layer, blob) for layer, blob in zip(layers, blobs, strict=True)]
        for layer in reversed(layers):  # docker lists the top layer first
            progress_id = short_id(layer.diff_id)
            if isinstance(layer, DescribableLayer):
                ctx.progress.write(Message("Skipped foreign layer", progress_id))
            else:
                ctx.progress.write(Message("Preparing", progress_id))
        configs: list[Descriptor] = []

        async def push_config() -> None:
            # Retried as a layer is: a failure would cancel layers that are retrying.
            pushed = await with_retries(
                lambda: _push_config(ctx.uploads, client, raw_config, family),
                policy=ctx.uploads.retries,
                progress=ctx.progress,
                progress_id=None,
                name=f"config of {image_id}",
            )
            configs.append(pushed)

        with single_errors():
            async with anyio.create_task_group() as tg:
                # Beside the layers: after them, its round trips would add to every push.
                tg.start_soon(push_config)
                # A manifest to keep names the blobs as stored, a plain tar one included.
                descriptors = await _upload_layers(
                    client, layers, family, ctx, stats, as_stored=keep is not None
                )
    finally:
        top.release()
    ctx.job.phase = "manifest"
    [config_descriptor] = configs
    # Off the loop: it decodes the manifests (up to 4 MiB each).
    media_type, raw = await anyio.to_thread.run_sync(
        _manifest, manifests, family, config_descriptor, descriptors, keep
    )
    if keep is not None and sha256_digest(raw) != keep:
        raise StoreError(
            f"the stored manifest {keep} of image {image_id} does not describe its config "
            "and layers: run `ferryd fsck`"
        )
    return media_type, raw


def _named_blobs(
    store: Store,
    image_id: Digest,
    rootfs: RootFS,
    manifests: list[StoredManifest],
    kept: StoredManifest | None,
    media_type: str,
) -> list[LayerBlob] | None:
    """The stored blobs of the image's layers (bottom first) that the manifest it is
    pushed with names: `kept`, the one it must keep, else the first of its manifests in
    the push's format whose blobs are all stored. None: the layers' first blobs (no such
    manifest; a `kept` one that names a blob not stored fails the push at its end).
    A layer may be stored with several blobs (another platform's, another compression):
    each manifest's digest is kept only with the blobs it names."""
    chains = chain_ids(rootfs.diff_ids)
    if kept is not None:
        candidates = [kept]
    else:
        wanted = manifest_type(family_of(media_type))
        candidates = sorted(
            (m for m in manifests if m.media_type == wanted), key=lambda m: m.digest
        )
    if not chains or not candidates:
        return None
    variants = store.layers.blobs_of(chains)
    for manifest in candidates:
        try:
            described = decode_manifest(manifest.raw)
        except FerrydError:
            continue
        if described.config.digest != image_id or len(described.layers) != len(chains):
            continue
        named = [
            variants.get(chain, {}).get(Digest(descriptor.digest))
            for chain, descriptor in zip(chains, described.layers, strict=True)
        ]
        if all(
            blob is not None and blob.size == descriptor.size
            for blob, descriptor in zip(named, described.layers, strict=True)
        ):
            return [blob for blob in named if blob is not None]
    return None


def _with_blob(layer: PushLayer, blob: LayerBlob) -> PushLayer:
    """`layer` as `blob` holds it; not held itself: the top layer's hold keeps it."""
    if not isinstance(layer, StoreLayer) or layer.record.blob_digest == blob.digest:
        return layer
    return replace(layer, record=layer.record.with_blob(blob), _held=False)


def _stack(top: PushLayer, count: int) -> list[PushLayer]:
    """The `count` layers from `top` down, bottom first."""
    layers: list[PushLayer] = []
    layer: PushLayer | None = top
    for _ in range(count):
        assert layer is not None  # a stored layer's chain is whole down to its first
        layers.append(layer)
        layer = layer.parent()
    return layers[::-1]


async def _upload_layers(
    client: RegistryClient,
    layers: list[PushLayer],
    family: Family,
    ctx: PushContext,
    stats: _Stats,
    *,
    as_stored: bool = False,
) -> list[Descriptor]:
    """Every layer's descriptor, in order; uploads run concurrently."""
    descriptors: list[Descriptor | None] = [None] * len(layers)

    async def one(index: int, layer: PushLayer) -> None:
        if isinstance(layer, DescribableLayer):
            descriptors[index] = layer.descriptor()
            return
        result = await ctx.uploads.upload(client, layer, family, ctx.progress, as_stored=as_stored)
        stats.count(result)
        descriptors[index] = Descriptor(result.media_type, result.digest, result.blob_size)

    with single_errors():
        async with anyio.create_task_group() as tg:
            for index, layer in enumerate(layers):
                tg.start_soon(one, index, layer)
    return [d for d in descriptors if d is not None]


async def _push_config(
    uploads: UploadManager, client: RegistryClient, raw: bytes, family: Family
) -> Descriptor:
    digest = sha256_digest(raw)

    async def read() -> bytes:
        return raw

    await uploads.send_whole(client, digest, len(raw), read, "config")
    return Descriptor(config_type(family), digest, len(raw))


def _manifest(
    manifests: list[StoredManifest],
    family: Family,
    config_descriptor: Descriptor,
    layers: list[Descriptor],
    keep: Digest | None = None,
) -> tuple[str, bytes]:
    """The manifest to PUT: the one the image came with (of `manifests`) when it
    describes exactly these blobs (so its digest is kept; `keep` first), else a new one
    of the same format."""
    media_type = manifest_type(family)
    stored = sorted(manifests, key=lambda m: m.digest != keep)
    for manifest in stored:
        if manifest.media_type != media_type:
            continue
        described = decode_manifest(manifest.raw)
        if described.config.digest == config_descriptor.digest and [
            (d.digest, d.size) for d in described.layers
        ] == [(d.digest, d.size) for d in layers]:
            return media_type, manifest.raw
    built = ImageManifest(
        config=config_descriptor, layers=layers, schemaVersion=2, mediaType=media_type
    )
    return media_type, msgspec.json.encode(built)
