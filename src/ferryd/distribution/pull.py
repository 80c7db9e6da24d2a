"""Pull one image: manifest → config → layers → image, references, V2 metadata."""

from __future__ import annotations

import time
from collections.abc import Awaitable, Callable, Iterator, Mapping
from contextlib import AbstractAsyncContextManager, contextmanager, nullcontext
from dataclasses import dataclass, field
from typing import TypeVar

import anyio
import structlog

from ferryd.concurrency import single_errors
from ferryd.distribution.context import DownloadDescriptor, DownloadStats, PullContext
from ferryd.distribution.events import failure_logged
from ferryd.distribution.progress import LayerOwners, Message, ProgressOutput
from ferryd.distribution.transfers import with_retries
from ferryd.errors import (
    AccessDeniedError,
    AuthenticationError,
    AuthorizationError,
    ContentError,
    ImageConfigError,
    ManifestError,
    NotFoundError,
    PlatformNotFoundError,
    RegistryError,
    StoreError,
    TooManyRequestsError,
)
from ferryd.oci.digest import Digest, chain_ids, sha256_digest
from ferryd.oci.image_config import (
    MAX_CONFIG_SIZE,
    ConfigModel,
    RootFS,
    decode_config,
    rootfs_of,
)
from ferryd.oci.manifest import (
    MAX_CHILDREN_BYTES,
    MAX_INDEX_DEPTH,
    MAX_INDEX_ENTRIES,
    Descriptor,
    FetchedManifest,
    ImageIndex,
    ImageManifest,
    artifact_blobs,
    check_supported,
    decode_index,
    decode_manifest,
    entry_kind,
    pullable_entries,
    select_platform,
    select_platforms,
)
from ferryd.oci.mediatypes import INDEX_TYPES, SCHEMA1_TYPES
from ferryd.oci.platform import check_platform, normalize
from ferryd.oci.reference import Reference
from ferryd.registry.client import RegistryClient
from ferryd.registry.connector import Connector
from ferryd.registry.endpoints import Endpoint
from ferryd.store import Store
from ferryd.store.gc import delete_left, forget_unnamed_indexes
from ferryd.store.images import ImageRecord
from ferryd.store.indexes import default_child
from ferryd.store.references import Target

log = structlog.get_logger("ferryd.pull")

DENIED = "denied: requested access to the resource is denied"  # distribution's default
# The manifest took this long or more: send the first layers' GETs ahead of the config.
SEND_AHEAD_AFTER = 0.01
_CHILDREN_AT_ONCE = 16
# The blobs of the artifacts an index lists (attestation-like metadata: signatures,
# SBOMs), fetched whole and held until the commit: within this budget.
_ARTIFACT_BYTES = 256 * 2**20

T = TypeVar("T")


@dataclass(frozen=True, slots=True)
class PullResult:
    image_id: Digest
    digest: Digest  # what the reference resolved to: the index's digest for an index
    updated: bool  # a tag moved or layers were fetched


async def pull(reference: Reference, ctx: PullContext) -> list[PullResult]:
    """Pull `reference` into the store, reporting progress to `ctx.progress`; a
    repository without tag or digest means every tag of it (`docker pull -a`).

    A failure is logged as one `image.pull_failed` event, then raised.
    """
    with failure_logged("pull", str(reference)):
        if reference.tag is None and reference.digest is None:
            return await _pull_all_tags(reference, ctx)
        return [await _pull(reference, ctx)]


async def _pull_all_tags(repository: Reference, ctx: PullContext) -> list[PullResult]:
    """Each tag in turn, as dockerd: one status line for the repository at the end."""
    tags = await _list_tags(repository, ctx)
    if not tags:
        raise NotFoundError(f"repository {repository.familiar_name} has no tags to pull")
    # Once each: a registry's pages may list a tag twice (or be the same page again).
    unique = sorted(set(tags))
    results = [await _pull(repository.with_tag(tag), ctx, say_status=False) for tag in unique]
    name = repository.familiar_name
    if any(result.updated for result in results):
        ctx.progress.write(Message(f"Status: Downloaded newer image for {name}"))
    else:
        ctx.progress.write(Message(f"Status: Image is up to date for {name}"))
    return results


async def _list_tags(repository: Reference, ctx: PullContext) -> list[str]:
    """The repository's tags from its first mirror that lists them, else from the
    registry, as dockerd's pull of every tag asks its endpoints in turn. Mirrors are
    asked anonymously; each that fails is one `registry.mirror_failed` warning."""
    tags = await from_mirrors(
        ctx.connector, repository, ctx.meta_headers, lambda client: client.list_tags()
    )
    if tags is not None:
        return tags
    client = await ctx.connector.open(
        repository.domain, repository.path, ctx.credentials, meta_headers=ctx.meta_headers
    )
    try:
        return await client.list_tags()
    except (AuthenticationError, AccessDeniedError) as exc:
        raise _refused(repository, exc, client.endpoint, "tags/list") from None


async def from_mirrors(
    connector: Connector,
    reference: Reference,
    meta_headers: Mapping[str, str] | None,
    attempt: Callable[[RegistryClient], Awaitable[T]],
) -> T | None:
    """What `attempt` gets from the first of the registry's mirrors (in order, asked
    anonymously) that gives it; None when none does, and the caller asks the registry.
    Each mirror that fails is one `registry.mirror_failed` warning."""
    for mirror in await connector.service.mirror_endpoints(reference.domain):
        try:
            client = await connector.open_mirror(mirror, reference.path, meta_headers=meta_headers)
            return await attempt(client)
        except (RegistryError, ContentError) as exc:
            log.warning(
                "registry.mirror_failed",
                mirror=mirror.base_url,
                reference=str(reference),
                error=str(exc),
            )
    return None


async def _pull(reference: Reference, ctx: PullContext, *, say_status: bool = True) -> PullResult:
    started = time.monotonic()
    progress = ctx.progress
    tag_or_digest = reference.digest or reference.tag or "latest"
    source = await _find_source(reference, tag_or_digest, ctx)
    # Sending layer GETs ahead of the config saves a round trip: worth its checks only
    # when a round trip costs something (not on loopback or a LAN).
    send_ahead = time.monotonic() - started >= SEND_AHEAD_AFTER
    client, top = source.client, source.top
    # Said once the manifest is in hand, as dockerd: a pull that fails before this is
    # answered with an HTTP error status, not a stream.
    progress.write(Message(f"Pulling from {reference.path}", tag_or_digest, update=False))

    for child in source.children:
        _check_config_type(ctx, child.image)
    stats = DownloadStats()
    fetched: list[_Fetched | _Kept | None] = [None] * len(source.children)
    kept: list[_Kept] = []  # let go of once the pull ends, however it ends
    # The platforms of an index at once: a layer blob they share is one transfer they
    # all wait on, counted (and shown) once.
    outputs = LayerOwners(progress)

    async def one(position: int, child: _Child) -> None:
        image_id = Digest(child.image.config.digest)
        stored = _keep_stored(ctx.store, image_id)
        if stored is not None:
            kept.append(stored)
        record = stored.record if stored is not None else None
        if record is not None and (
            ctx.store.manifests.image_of(child.manifest.digest) != image_id
            or not _names_stored_blobs(ctx.store, record, child.image)
        ):
            # Stored, but with another manifest, or with this one and not every blob it
            # names (a store of schema 2 kept one blob a layer; fsck --repair removes a
            # blob it finds broken): this one may name other blobs of its layers
            # (another compression), which a push of it must send. The layers stored
            # with the blobs it names are "Already exists", the others fetched.
            record = None
        if record is None:
            output = outputs.view(position)
            config = await _stored_config(ctx.store, image_id) if stored is not None else None
            fetched[position] = await _pull_image(
                client,
                reference,
                ctx,
                source,
                child,
                output,
                stats,
                send_ahead=send_ahead,
                config=config,
            )
        else:
            fetched[position] = stored
            _check_platform(ctx, reference, top, record.os, record.architecture, record.variant)
            stats.reused += len(child.image.layers)

    try:
        with _blamed_on(client.endpoint), single_errors():
            async with anyio.create_task_group() as tg:
                for position, child in enumerate(source.children):
                    tg.start_soon(one, position, child)
        ctx.job.phase = "committing"
        recorded = await anyio.to_thread.run_sync(_commit, ctx, reference, source, fetched)
    finally:
        await _let_go(ctx.store, fetched, kept)
    # Which mirror served the pull, when one did: the operator's first question.
    served_by = {"mirror": client.endpoint.base_url} if client.endpoint.mirror else {}
    updated = stats.fetched > 0 or recorded.changed
    progress.write(Message(f"Digest: {top.digest}"))
    if say_status and updated:
        progress.write(Message(f"Status: Downloaded newer image for {reference.familiar}"))
    elif say_status:
        progress.write(Message(f"Status: Image is up to date for {reference.familiar}"))
    ctx.metrics.layers_reused.inc(stats.reused)
    if source.index is not None:
        ctx.metrics.index_manifests.labels("pull").inc(len(source.children))
    platforms = {"platforms": recorded.platforms} if source.index is not None else {}
    ctx.event_logger(
        recorded.image_id,
        str(reference),
        "pull",
        digest=top.digest,
        platform=_platform_of(ctx, recorded.image_id),
        **platforms,
        layers_fetched=stats.fetched,
        layers_reused=stats.reused,
        bytes=stats.bytes,
        seconds=round(time.monotonic() - started, 3),
        **served_by,
    )
    return PullResult(recorded.image_id, top.digest, updated)


def _names_stored_blobs(store: Store, record: ImageRecord, image: ImageManifest) -> bool:
    """Whether each layer of the stored image `record` is stored with the blob `image`
    (a manifest stored for it) names, in one query. Rows only: a row's blob file is
    there, or fsck reports it missing."""
    layers = image.layers
    if record.top_layer is None:
        return not layers
    stored = store.layers.blobs_under(record.top_layer, len(layers) + 1)
    if len(stored) != len(layers):
        return False
    return all(layer.digest in blobs for layer, blobs in zip(layers, stored, strict=True))


async def _stored_config(store: Store, image_id: Digest) -> bytes | None:
    """The config of an image found stored (pinned), read back in a worker thread and
    checked: a pull that fetches blobs its manifest names need not fetch it again. None
    if it is not there whole."""

    def read() -> bytes | None:
        try:
            raw = store.images.get(image_id)
        except (OSError, StoreError):
            return None
        return raw if sha256_digest(raw) == image_id else None

    return await anyio.to_thread.run_sync(read)


def _check_config_type(ctx: PullContext, image: ImageManifest) -> None:
    config_descriptor = image.config
    if config_descriptor.mediaType not in ctx.schema2_types:
        raise ImageConfigError(
            f"the image's config has media type {config_descriptor.mediaType!r}, which is "
            "not a container image (allowed: "
            + ", ".join(repr(t) for t in ctx.schema2_types if t)
            + ")"
        )
    if not config_descriptor.digest.startswith("sha256:"):
        raise ManifestError(
            f"image config digest {config_descriptor.digest} is not sha256 (it is the image ID)"
        )


def _platform_of(ctx: PullContext, image_id: Digest) -> str:
    """The platform of the image stored (its config's), for the pull's log line."""
    record = ctx.store.images.record(image_id)
    if record is None:
        return str(ctx.platform)
    return str(normalize(record.os, record.architecture, record.variant))


@dataclass(frozen=True, slots=True)
class _Child:
    """One image manifest a pull stores: the one the reference names, or an entry of the
    index it names."""

    entry: Descriptor | None  # its entry in the index (None: the reference names it)
    manifest: FetchedManifest
    image: ImageManifest  # `manifest`, decoded and checked


@dataclass(frozen=True, slots=True)
class _Source:
    """Where a pull's content comes from: the endpoint that served its manifest."""

    client: RegistryClient
    top: FetchedManifest  # what the reference names: an index, or the manifest itself
    index: ImageIndex | None  # `top` decoded, when it is an index
    children: list[_Child]  # the image manifests to store: the platforms asked for
    # Of a pull of all platforms: what the index lists beyond images, kept as it is.
    others: list[_Other] = field(default_factory=list)


@dataclass(frozen=True, slots=True)
class _Other:
    """A nested index an index lists, or an artifact (an `unknown` entry's manifest,
    with the blobs it names): kept as it is, never run, so that a push of the index
    sends it whole."""

    manifest: FetchedManifest
    index: ImageIndex | None  # a nested index, decoded
    blobs: list[Descriptor]  # of an artifact: the blobs it names
    fetched: dict[Digest, bytes]  # of those, the ones not stored yet, fetched and checked


class _Held:
    """What a pull holds in memory until its commit, within budgets."""

    def __init__(self, count: int) -> None:
        self.count = count
        self.manifests = 0
        self.artifacts = 0

    def manifest(self, size: int) -> None:
        self.manifests += size
        if self.manifests > MAX_CHILDREN_BYTES:
            raise ManifestError(
                f"the manifests of the image index's {self.count} entries come to over "
                f"{MAX_CHILDREN_BYTES // 2**20} MiB: refused"
            )

    def artifact(self, size: int) -> None:
        self.artifacts += size
        if self.artifacts > _ARTIFACT_BYTES:
            raise ManifestError(
                "the blobs of the artifacts the image index lists come to over "
                f"{_ARTIFACT_BYTES // 2**20} MiB: refused"
            )


async def _find_source(reference: Reference, tag_or_digest: str, ctx: PullContext) -> _Source:
    """The registry's mirrors in order, then the registry itself: the first that serves
    a usable manifest for the platform serves the whole pull.

    A mirror is skipped (one `registry.mirror_failed` warning each) when it cannot be
    reached, refuses us (401, 403, 429, 5xx), lacks the manifest, or serves one that
    fails its checks: the digest asked for or announced, the media type, the platform,
    the manifest's shape. The same checks on the registry's answer fail the pull.

    Once chosen, the endpoint serves the config and every layer, digests checked as
    always. A failure there fails the pull, naming the mirror, instead of starting over
    at the next endpoint as dockerd does: the download manager has already retried it,
    and the layers already stored stay for the next pull. Mirrors are used anonymously:
    the client's login is for the registry and never goes to another host.
    """

    async def from_mirror(client: RegistryClient) -> _Source:
        ctx.job.phase = "manifest"
        # A mirror that is busy is skipped, not waited for: the registry may not be.
        source = await _manifest_from(client, client.get_manifest, tag_or_digest, ctx)
        log.debug("pull.source", reference=str(reference), endpoint=client.endpoint.base_url)
        return source

    mirrored = await from_mirrors(ctx.connector, reference, ctx.meta_headers, from_mirror)
    if mirrored is not None:
        return mirrored
    client = await ctx.connector.open(
        reference.domain, reference.path, ctx.credentials, meta_headers=ctx.meta_headers
    )
    ctx.job.phase = "manifest"
    try:
        fetch = _patient(client, ctx)
        source = await _manifest_from(client, fetch, tag_or_digest, ctx)
    except (AuthenticationError, AccessDeniedError) as exc:
        raise _refused(reference, exc, client.endpoint, f"manifests/{tag_or_digest}") from None
    # Once it has answered: a registry's first request chooses its endpoint.
    log.debug("pull.source", reference=str(reference), endpoint=client.endpoint.base_url)
    return source


def _refused(
    reference: Reference,
    exc: AuthenticationError | AccessDeniedError,
    endpoint: Endpoint,
    path: str,
) -> RegistryError:
    """A registry's refusal as dockerd's translatePullError answers it, never a 401.

    The registry said no (403 DENIED, a 401 with `insufficient_scope`, or a 401 to the
    login we sent): 404 `pull access denied for R, repository does not exist or may
    require 'docker login': denied: …`. dockerd answers the 401 case with a 401, on which
    the docker CLI prompts for a login, and waits forever at that prompt when stdin is
    not a terminal; the same 404 tells the user what to do without hanging a script.
    The request could not even be made (no login to answer a Basic challenge, the token
    service refused the login): 500 with the request, as dockerd's `Get "URL": no basic
    auth credentials`. Anything else (a realm ferryd will not send the login to) keeps
    its own words, as a 500.
    """
    if isinstance(exc, AuthorizationError) and exc.reason:
        url = f"{endpoint.base_url}/v2/{reference.path}/{path}"
        return RegistryError(f'Get "{url}": {exc.reason}')
    if isinstance(exc, AccessDeniedError) or exc.reason:
        denied = NotFoundError(
            f"pull access denied for {reference.familiar_name}, repository does not exist "
            f"or may require 'docker login': {exc.reason or DENIED}"
        )
        denied.reason = exc.reason
        return denied
    return RegistryError(str(exc))


ManifestFetch = Callable[[str], Awaitable[FetchedManifest]]


def _patient(client: RegistryClient, ctx: PullContext) -> ManifestFetch:
    """`client.get_manifest`, waiting and trying again when the registry rate-limits us
    (as long as its Retry-After says, within the policy's bound)."""

    async def fetch(reference: str) -> FetchedManifest:
        return await with_retries(
            lambda: client.get_manifest(reference),
            policy=ctx.retries,
            progress=ctx.progress,
            progress_id=None,
            name=f"manifest {reference}",
            retry_on=lambda exc: isinstance(exc, TooManyRequestsError),
        )

    return fetch


async def _manifest_from(
    client: RegistryClient, fetch: ManifestFetch, tag_or_digest: str, ctx: PullContext
) -> _Source:
    top = await fetch(tag_or_digest)
    check_supported(top.media_type)
    if top.media_type not in INDEX_TYPES:
        return _Source(client, top, None, [_Child(None, top, decode_manifest(top.raw))])
    index = decode_index(top.raw)
    held = _Held(len(index.manifests))
    others: list[_Other] = []
    if ctx.all_platforms:
        entries, others = await _whole_index(client, fetch, index, ctx, held)
    else:
        entries = _entries_wanted(index, ctx)
    held.count = len(entries) + len(others)
    if len(entries) > MAX_INDEX_ENTRIES:
        raise ManifestError(
            f"the image index lists {len(entries)} entries to pull; ferryd pulls at most "
            f"{MAX_INDEX_ENTRIES} from one index: pull the platforms you need with --platform"
        )
    children: list[_Child | None] = [None] * len(entries)
    # Each answer may be a manifest's 4 MiB: a few at a time, and all of them held until
    # the commit within a budget, however many the index lists.
    fetching = anyio.CapacityLimiter(_CHILDREN_AT_ONCE)

    async def one(position: int, entry: Descriptor) -> None:
        async with fetching:
            manifest = await fetch(entry.digest)
        held.manifest(len(manifest.raw))
        check_supported(manifest.media_type)
        if manifest.media_type in INDEX_TYPES:
            raise ManifestError(f"index entry {entry.digest} is itself an index")
        children[position] = _Child(entry, manifest, decode_manifest(manifest.raw))

    with single_errors():
        async with anyio.create_task_group() as tg:
            for position, entry in enumerate(entries):
                tg.start_soon(one, position, entry)
    return _Source(client, top, index, [child for child in children if child is not None], others)


async def _whole_index(
    client: RegistryClient,
    fetch: ManifestFetch,
    index: ImageIndex,
    ctx: PullContext,
    held: _Held,
) -> tuple[list[Descriptor], list[_Other]]:
    """Of a pull of all platforms: every image and attestation the index lists, and
    what it lists beyond them, kept as it is (`_Other`), children before the index
    listing them: a nested index with what it lists in turn (down to `MAX_INDEX_DEPTH`),
    an artifact with the blobs it names. Each once; `MAX_INDEX_ENTRIES` in all."""
    images: list[Descriptor] = []
    others: list[_Other] = []
    seen: set[str] = set()
    level, depth = [index], 0
    fetching = anyio.CapacityLimiter(_CHILDREN_AT_ONCE)
    while level:
        found: list[Descriptor] = []
        for current in level:
            for entry in current.manifests:
                if entry.digest in seen:
                    continue
                seen.add(entry.digest)
                kind = entry_kind(entry)
                (images if kind in ("image", "attestation") else found).append(entry)
        if len(seen) > MAX_INDEX_ENTRIES:
            raise ManifestError(
                f"the image index lists over {MAX_INDEX_ENTRIES} entries (its nested indexes' "
                f"included); ferryd pulls at most {MAX_INDEX_ENTRIES} from one index: pull "
                "the platforms you need with --platform"
            )
        fetched: list[_Other | None] = [None] * len(found)

        async def one(
            position: int,
            entry: Descriptor,
            depth: int = depth,
            fetched: list[_Other | None] = fetched,
        ) -> None:
            if not entry.digest.startswith("sha256:"):
                raise ManifestError(f"index entry {entry.digest} is not sha256: not kept")
            async with fetching:
                manifest = await fetch(entry.digest)
            held.manifest(len(manifest.raw))
            if manifest.media_type in SCHEMA1_TYPES:
                check_supported(manifest.media_type)
            if manifest.media_type in INDEX_TYPES:
                if depth + 1 > MAX_INDEX_DEPTH:
                    raise ManifestError(
                        f"index entry {entry.digest} is an index nested over "
                        f"{MAX_INDEX_DEPTH} deep: refused"
                    )
                fetched[position] = _Other(manifest, decode_index(manifest.raw), [], {})
                return
            blobs = artifact_blobs(manifest.raw)
            async with fetching:
                content = await _artifact_content(client, ctx, blobs, held)
            fetched[position] = _Other(manifest, None, blobs, content)

        with single_errors():
            async with anyio.create_task_group() as tg:
                for position, entry in enumerate(found):
                    tg.start_soon(one, position, entry)
        done = [other for other in fetched if other is not None]
        others[:0] = done  # the deeper first: a push sends them before what lists them
        level = [other.index for other in done if other.index is not None]
        depth += 1
    if not any(entry_kind(entry) == "image" for entry in images):
        raise PlatformNotFoundError("the index lists no image for any platform")
    return images, others


async def _artifact_content(
    client: RegistryClient, ctx: PullContext, blobs: list[Descriptor], held: _Held
) -> dict[Digest, bytes]:
    """The blobs of `blobs` not stored yet, each fetched whole and checked: its digest
    (sha256 only, as every blob kept) and its size, within the pull's budget."""
    content: dict[Digest, bytes] = {}
    for descriptor in blobs:
        digest = Digest(descriptor.digest)
        if not digest.startswith("sha256:"):
            raise ManifestError(f"artifact blob {digest} is not sha256: not kept")
        if ctx.store.blobs.has(digest):
            continue
        held.artifact(descriptor.size)
        raw = await client.get_blob(digest, descriptor.size, f"artifact blob {digest}")
        if len(raw) != descriptor.size:
            raise ContentError(
                f"artifact blob {digest}: the registry sent {len(raw)} bytes, its "
                f"manifest says {descriptor.size}"
            )
        content[digest] = raw
    return content


def _entries_wanted(index: ImageIndex, ctx: PullContext) -> list[Descriptor]:
    """The index entries a pull stores: the platform asked for (or the default one),
    the platforms asked for with their attestations, or every image and attestation."""
    if ctx.all_platforms:
        entries = pullable_entries(index)
        if not any(entry_kind(entry) == "image" for entry in entries):
            raise PlatformNotFoundError("the index lists no image for any platform")
        return entries
    if ctx.platforms:
        return select_platforms(index, ctx.platforms)
    return [select_platform(index, ctx.platform)]


@contextmanager
def _blamed_on(endpoint: Endpoint) -> Iterator[None]:
    """Name the mirror in the error of a pull it serves: removing it is the user's fix."""
    if not endpoint.mirror:
        yield
        return
    try:
        yield
    except (RegistryError, ContentError) as exc:
        raise exc.with_message(f"{exc} (served by mirror {endpoint.base_url})") from None


@dataclass
class _Fetched:
    """An image whose layers a pull has brought in (and holds until it is recorded)."""

    child: _Child
    config: bytes
    model: ConfigModel  # the config decoded, once: recording it does not decode it again
    rootfs: RootFS
    release: Callable[[], None]


async def _pull_image(
    client: RegistryClient,
    reference: Reference,
    ctx: PullContext,
    source: _Source,
    child: _Child,
    progress: ProgressOutput,
    stats: DownloadStats,
    *,
    send_ahead: bool = True,
    config: bytes | None = None,
) -> _Fetched:
    """The config (`config`, read from the store, or fetched), checked against the
    manifest and the platform, then the layers (held until the pull is recorded). With
    `send_ahead`, the first layers' GETs go out while the config is fetched
    (`DownloadManager.sending_ahead`)."""
    store = ctx.store
    image = child.image
    config_descriptor = image.config
    image_id = Digest(config_descriptor.digest)
    limit = min(config_descriptor.size or MAX_CONFIG_SIZE, MAX_CONFIG_SIZE)
    ahead: AbstractAsyncContextManager[None] = (
        ctx.downloads.sending_ahead(client, image.layers) if send_ahead else nullcontext()
    )
    async with ahead:
        if config is not None:
            raw_config = config
        else:
            raw_config = await ctx.downloads.config(client, image_id, limit)
        model = decode_config(raw_config)
        if ctx.several:
            # The platforms of an index for other operating systems are kept, never run.
            rootfs, os = rootfs_of(model), model.os
        else:
            rootfs, os = store.images.rootfs_and_os(model)
        _check_platform(ctx, reference, source.top, model.os, model.architecture, model.variant)
        if len(rootfs.diff_ids) != len(image.layers):
            raise ImageConfigError(
                f"the manifest has {len(image.layers)} layers but the image config has "
                f"{len(rootfs.diff_ids)} DiffIDs"
            )
        descriptors = [
            DownloadDescriptor(layer, diff_id, reference.domain, reference.path)
            for layer, diff_id in zip(image.layers, rootfs.diff_ids, strict=True)
        ]
        ctx.job.phase = "layers"
        _, release = await ctx.downloads.download(
            client, RootFS([]), os, descriptors, progress, stats
        )
        return _Fetched(child, raw_config, model, rootfs, release)


@dataclass
class _Kept:
    """An image a pull found stored: held (its top layer, and with it every layer below;
    its config blob pinned) until the pull is recorded, so that an rmi meanwhile cannot
    take what the commit needs to record the image again.

    Without a record, an rmi took it before the pull looked again: the pull fetches it
    as new, held all the same, so that what the rmi left for the hold serves the fetch.
    What a removal left for the hold and the pin goes once the pull lets go (`_let_go`)
    if nothing uses it then: the pull failed, or an rmi came after its commit."""

    store: Store
    image_id: Digest
    top: Digest | None
    record: ImageRecord | None = None
    # The hold's release said a removal left the layers for it (`RefCounter.release`).
    top_left: bool = field(default=False, init=False)
    released: bool = field(default=False, init=False)

    def release(self) -> bool:
        """Let go of the pin and the hold, once (counters in memory: on the event loop);
        whether a removal left something because of them, for `gc.delete_left` (in a
        worker thread). A look at the blobs a removal deferred, in memory: nothing to
        do costs nothing more."""
        if self.released:
            return False
        self.released = True
        self.store.blobs.pins.release(self.image_id)
        if self.top is not None:
            self.top_left = self.store.layers.holds.release(self.top)
        return self.top_left or bool(self.store.blobs.deferred([self.image_id]))


def _keep_stored(store: Store, image_id: Digest) -> _Kept | None:
    """The image `image_id` if it is stored, held (see `_Kept`); None if it is not.

    Hold first, then look again: a removal whose transaction came before the second
    look has taken it (no record: the pull fetches it as new), one after it sees the
    hold and the pin, and leaves the layers and the config for the commit. Two queries
    on the event loop: the record, then the image with its top layer."""
    record = store.images.record(image_id)
    if record is None:
        return None
    top = record.top_layer
    store.blobs.pins.acquire(image_id)
    if top is not None:
        store.layers.holds.acquire(top)
    kept = _Kept(store, image_id, top)
    try:
        still = store.layers.image_stored(image_id)
    except BaseException:
        kept.release()  # what a removal left meanwhile is the next one's
        raise
    if still:
        kept.record = record
    return kept


async def _let_go(store: Store, fetched: list[_Fetched | _Kept | None], kept: list[_Kept]) -> None:
    """Let go of what the pull held: the layers it fetched, then the images it found
    stored (the last holder of a layer is told what a removal left for it). What a
    removal left only because of them goes in a worker thread, shielded from the pull's
    cancellation; without such a removal (the common case) nothing leaves the loop."""
    for item in fetched:
        if isinstance(item, _Fetched):
            item.release()
    left = [item for item in kept if item.release()]
    if not left:
        return
    pinned = [item.image_id for item in left]
    held = [item.top for item in left if item.top is not None and item.top_left]
    with anyio.CancelScope(shield=True):
        await anyio.to_thread.run_sync(delete_left, store, pinned, held)


@dataclass(frozen=True, slots=True)
class _Recorded:
    image_id: Digest  # what the reference gives for its image
    changed: bool  # a reference moved, or the index gained a platform
    platforms: list[str]  # of an index: the platforms this pull stored or found stored


def _commit(
    ctx: PullContext,
    reference: Reference,
    source: _Source,
    fetched: list[_Fetched | _Kept | None],
) -> _Recorded:
    """Every new image, every child manifest, the index and the references, in one
    transaction: all of the pull or none of it. Blobs first, fsync'd outside it: the
    database lock is never held across a disk flush. They stay pinned until the rows
    reference them: a sweep must not take them between. An image the pull found stored
    and an rmi removed since is stored again, from its config and layers (held)."""
    store = ctx.store
    top = source.top
    new = [item for item in fetched if isinstance(item, _Fetched)]
    kept = [item.record for item in fetched if isinstance(item, _Kept) and item.record is not None]
    blobs: list[tuple[bytes, Digest]] = [
        (item.config, Digest(item.child.image.config.digest)) for item in new
    ]
    blobs += [(child.manifest.raw, sha256_digest(child.manifest.raw)) for child in source.children]
    if source.index is not None:
        blobs.append((top.raw, sha256_digest(top.raw)))
    # What the index lists beyond images: the manifests, the artifacts' blobs fetched,
    # and those found stored (pinned with the rest, and looked at again once pinned).
    found: list[Digest] = []
    for other in source.others:
        blobs.append((other.manifest.raw, sha256_digest(other.manifest.raw)))
        blobs += [(raw, digest) for digest, raw in other.fetched.items()]
        found += [Digest(blob.digest) for blob in other.blobs if blob.digest not in other.fetched]
    with store.blobs.pinned(*(digest for _, digest in blobs), *found):
        for digest in found:
            if not store.blobs.has(digest):
                raise ContentError(
                    f"blob {digest} was removed while the pull ran: pull the image again"
                )
        for raw, digest in blobs:
            store.blobs.put(raw, digest, sync_dir=False)
        store.blobs.sync(digest for _, digest in blobs)
        with store.db.transaction():
            changed = False
            for record in kept:
                _restore(store, record)
            for item in new:
                chains = chain_ids(item.rootfs.diff_ids)
                size = sum(store.layers.size_of(chain) for chain in chains)
                store.images.put(
                    item.config,
                    media_type=item.child.image.config.mediaType,
                    size=size,
                    model=item.model,
                )
            for child in source.children:
                manifest = child.manifest
                image_id = Digest(child.image.config.digest)
                if store.manifests.image_of(manifest.digest) is None:
                    changed = True
                store.manifests.add(manifest.digest, image_id, manifest.media_type, manifest.raw)
            for other in source.others:
                manifest = other.manifest
                if other.index is not None:
                    added = store.indexes.add(
                        manifest.digest, manifest.media_type, manifest.raw, other.index
                    )
                else:
                    added = store.indexes.add_artifact(
                        manifest.digest, manifest.media_type, manifest.raw, other.blobs
                    )
                changed |= added
            if source.index is None:
                target = Target(Digest(source.children[0].image.config.digest))
                platforms: list[str] = []
            else:
                changed |= store.indexes.add(top.digest, top.media_type, top.raw, source.index)
                target, platforms = _index_target(ctx, top.digest)
            changed |= _tag(ctx, reference, top.digest, target)
            return _Recorded(target.image_id, changed, platforms)


def _restore(store: Store, record: ImageRecord) -> None:
    """Store again, inside the pull's transaction, an image the pull found stored and an
    rmi removed meanwhile (its config pinned and its layers held, so both are there)."""
    if store.images.record(record.id) is not None:
        return
    store.images.put(
        store.images.get(record.id), media_type=record.config_media_type, size=record.size
    )


def _index_target(ctx: PullContext, index: Digest) -> tuple[Target, list[str]]:
    """What the references to `index` name (its image: the stored child for the default
    platform, else the first stored one), and the platforms it has stored."""
    store = ctx.store
    entries = store.indexes.entries(index)
    stored = store.indexes.stored_children(index)
    image_id = default_child(entries, stored, ctx.default_platform or ctx.platform)
    assert image_id is not None  # the pull stored at least one image of it
    platforms = [
        str(entry.platform) if entry.platform is not None else entry.kind
        for entry in entries
        if entry.digest in stored and entry.kind == "image"
    ]
    store.references.repoint_index(index, image_id)
    return Target(image_id, index), platforms


def _check_platform(
    ctx: PullContext,
    reference: Reference,
    top: FetchedManifest,
    os: str,
    architecture: str,
    variant: str | None,
) -> None:
    """A platform the client asked for should be the image's: an index chose by it
    already; a single manifest has only its config to go by, and one of another
    platform is pulled all the same with a warning, as dockerd does (since 20.10.7:
    single-platform images that name the wrong platform in their config abound)."""
    if top.media_type in INDEX_TYPES or ctx.all_platforms:
        return
    wanted = ctx.platforms or ((ctx.platform,) if ctx.exact_platform else ())
    try:
        check_platform(reference.familiar, wanted, os, architecture, variant)
    except PlatformNotFoundError as exc:
        ctx.progress.write(Message(f"WARNING: {exc}"))
        log.warning("pull.platform_mismatch", image=str(reference), error=str(exc))


def _tag(ctx: PullContext, reference: Reference, digest: Digest, target: Target) -> bool:
    """Record the references a pull makes (the tag, if any, and repo@digest), inside the
    pull's transaction; did any of them change? (docker's "Downloaded newer image" vs
    "Image is up to date"). An index a tag moved off and nothing else names goes."""
    references = ctx.store.references
    changed = references.point(reference.repository().with_digest(digest), target) != target
    if reference.tag is not None and reference.digest is None:
        changed |= references.point(reference, target) != target
    forget_unnamed_indexes(ctx.store)
    return changed
