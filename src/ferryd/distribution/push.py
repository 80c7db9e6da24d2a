"""Push one repository's tag(s): layers → config → manifest → V2 metadata, reference."""

from __future__ import annotations

import time
from dataclasses import dataclass

import anyio
import msgspec

from ferryd.concurrency import single_errors
from ferryd.distribution.context import PushContext
from ferryd.distribution.events import failure_logged
from ferryd.distribution.progress import Message
from ferryd.distribution.push_layers import DescribableLayer, PushLayer
from ferryd.distribution.uploads import Uploaded
from ferryd.errors import ImageNotFoundError
from ferryd.oci.digest import Digest, sha256_digest, short_id
from ferryd.oci.manifest import Descriptor, ImageManifest, decode_manifest
from ferryd.oci.mediatypes import Family, config_type, family_of, manifest_type
from ferryd.oci.reference import Reference
from ferryd.registry.client import RegistryClient
from ferryd.store import Store


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


async def push(reference: Reference, ctx: PushContext) -> list[PushResult]:
    """Push `reference`'s tag, or every tag of its repository when it has none.

    A failure is logged as one `image.push_failed` event, then raised.
    """
    with failure_logged("push", str(reference)):
        return await _push(reference, ctx)


async def _push(reference: Reference, ctx: PushContext) -> list[PushResult]:
    ctx.progress.write(Message(f"The push refers to repository [{reference.name}]"))
    tags = _tags_to_push(reference, ctx.store)
    client = await ctx.connector.open(
        reference.domain,
        reference.path,
        ctx.credentials,
        actions="pull,push",
        meta_headers=ctx.meta_headers,
    )
    return [await _push_tag(client, tag, image_id, ctx) for tag, image_id in tags]


def _tags_to_push(reference: Reference, store: Store) -> list[tuple[Reference, Digest]]:
    if reference.tag is not None:
        image_id = store.references.get(reference)
        if image_id is None:
            raise ImageNotFoundError(
                f"An image does not exist locally with the tag: {reference.familiar_name}"
                f":{reference.tag}"
            )
        return [(reference, image_id)]
    tags = store.references.tags_of(reference.repository())
    if not tags:
        raise ImageNotFoundError(
            f"An image does not exist locally with the tag: {reference.familiar_name}"
        )
    return tags


async def _push_tag(
    client: RegistryClient, tag: Reference, image_id: Digest, ctx: PushContext
) -> PushResult:
    started = time.monotonic()
    store = ctx.store
    raw_config = store.images.get(image_id)
    rootfs, _ = store.images.rootfs_and_os(raw_config)
    record = store.images.record(image_id)
    if record is None:
        raise ImageNotFoundError(f"No such image: {image_id}")
    family = family_of(ctx.config_media_type or record.config_media_type)
    # As moby: the top layer, held for the whole upload, and the stack below it.
    top = ctx.layers.get(rootfs.chain_id())
    stats = _Stats()
    ctx.job.phase = "layers"
    try:
        layers = _stack(top, len(rootfs.diff_ids))
        for layer in reversed(layers):  # docker lists the top layer first
            progress_id = short_id(layer.diff_id)
            if isinstance(layer, DescribableLayer):
                ctx.progress.write(Message("Skipped foreign layer", progress_id))
            else:
                ctx.progress.write(Message("Preparing", progress_id))
        descriptors = await _upload_layers(client, layers, family, ctx, stats)
    finally:
        top.release()
    ctx.job.phase = "manifest"
    config_descriptor = await _push_config(client, raw_config, family)
    media_type, raw = _manifest(store, image_id, family, config_descriptor, descriptors)
    assert tag.tag is not None
    digest = await client.put_manifest(tag.tag, media_type, raw)
    ctx.progress.write(Message(f"{tag.tag}: digest: {digest} size: {len(raw)}"))
    ctx.progress.write(Message(aux={"Tag": tag.tag, "Digest": digest, "Size": len(raw)}))

    def record_push() -> None:
        # Pinned until its row references it: a sweep must not take it between.
        with store.blobs.pinned(sha256_digest(raw)):
            store.blobs.put(raw)  # outside the transaction: no fsync under the database lock
            with store.db.transaction():
                store.manifests.add(digest, image_id, media_type, raw)
                store.references.add(tag.repository().with_digest(digest), image_id)

    ctx.job.phase = "committing"
    await anyio.to_thread.run_sync(record_push)
    ctx.event_logger(
        image_id,
        str(tag),
        "push",
        digest=digest,
        layers_uploaded=stats.uploaded,
        layers_mounted=stats.mounted,
        layers_skipped=stats.skipped,
        bytes=stats.bytes,
        seconds=round(time.monotonic() - started, 3),
    )
    return PushResult(tag.tag, digest, len(raw))


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
) -> list[Descriptor]:
    """Every layer's descriptor, in order; uploads run concurrently."""
    descriptors: list[Descriptor | None] = [None] * len(layers)

    async def one(index: int, layer: PushLayer) -> None:
        if isinstance(layer, DescribableLayer):
            descriptors[index] = layer.descriptor()
            return
        result = await ctx.uploads.upload(client, layer, family, ctx.progress)
        stats.count(result)
        descriptors[index] = Descriptor(result.media_type, result.digest, result.blob_size)

    with single_errors():
        async with anyio.create_task_group() as tg:
            for index, layer in enumerate(layers):
                tg.start_soon(one, index, layer)
    return [d for d in descriptors if d is not None]


async def _push_config(client: RegistryClient, raw: bytes, family: Family) -> Descriptor:
    digest = sha256_digest(raw)
    if await client.blob_size(digest) is None:
        await client.upload_blob(digest, len(raw), raw)
    return Descriptor(config_type(family), digest, len(raw))


def _manifest(
    store: Store,
    image_id: Digest,
    family: Family,
    config_descriptor: Descriptor,
    layers: list[Descriptor],
) -> tuple[str, bytes]:
    """The manifest to PUT: the one the image came with when it describes exactly these
    blobs (so its digest is kept), else a new one of the same format."""
    media_type = manifest_type(family)
    for stored in store.manifests.for_image(image_id):
        if stored.media_type != media_type:
            continue
        kept = decode_manifest(stored.raw)
        if kept.config.digest == config_descriptor.digest and [
            (d.digest, d.size) for d in kept.layers
        ] == [(d.digest, d.size) for d in layers]:
            return media_type, stored.raw
    manifest = ImageManifest(
        config=config_descriptor, layers=layers, schemaVersion=2, mediaType=media_type
    )
    return media_type, msgspec.json.encode(manifest)
