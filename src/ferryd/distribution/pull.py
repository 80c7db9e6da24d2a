"""Pull one image: manifest → config → layers → image, references, V2 metadata."""

from __future__ import annotations

import time
from collections.abc import Awaitable, Callable, Iterator
from contextlib import contextmanager
from dataclasses import dataclass

import anyio
import structlog

from ferryd.distribution.context import DownloadDescriptor, DownloadStats, PullContext
from ferryd.distribution.events import failure_logged
from ferryd.distribution.progress import Message
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
    TooManyRequestsError,
)
from ferryd.oci.digest import Digest, chain_ids, sha256_digest
from ferryd.oci.image_config import MAX_CONFIG_SIZE, RootFS, decode_config
from ferryd.oci.manifest import (
    FetchedManifest,
    ImageManifest,
    check_supported,
    decode_index,
    decode_manifest,
    select_platform,
)
from ferryd.oci.mediatypes import INDEX_TYPES
from ferryd.oci.platform import Platform, normalize
from ferryd.oci.reference import Reference
from ferryd.registry.client import RegistryClient
from ferryd.registry.endpoints import Endpoint

log = structlog.get_logger("ferryd.pull")

DENIED = "denied: requested access to the resource is denied"  # distribution's default


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
    results = [await _pull(repository.with_tag(tag), ctx, say_status=False) for tag in sorted(tags)]
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
    for mirror in await ctx.connector.service.mirror_endpoints(repository.domain):
        try:
            client = await ctx.connector.open_mirror(
                mirror, repository.path, meta_headers=ctx.meta_headers
            )
            return await client.list_tags()
        except (RegistryError, ContentError) as exc:
            log.warning(
                "registry.mirror_failed",
                mirror=mirror.base_url,
                reference=str(repository),
                error=str(exc),
            )
    client = await ctx.connector.open(
        repository.domain, repository.path, ctx.credentials, meta_headers=ctx.meta_headers
    )
    try:
        return await client.list_tags()
    except (AuthenticationError, AccessDeniedError) as exc:
        raise _refused(repository, exc, client.endpoint, "tags/list") from None


async def _pull(reference: Reference, ctx: PullContext, *, say_status: bool = True) -> PullResult:
    started = time.monotonic()
    progress = ctx.progress
    tag_or_digest = reference.digest or reference.tag or "latest"
    source = await _find_source(reference, tag_or_digest, ctx)
    client, top, manifest, image = source.client, source.top, source.manifest, source.image
    # Said once the manifest is in hand, as dockerd: a pull that fails before this is
    # answered with an HTTP error status, not a stream.
    progress.write(Message(f"Pulling from {reference.path}", tag_or_digest, update=False))

    config_descriptor = image.config
    if config_descriptor.mediaType not in ctx.schema2_types:
        raise ImageConfigError(
            f"the image's config has media type {config_descriptor.mediaType!r}, which is "
            "not a container image (allowed: "
            + ", ".join(repr(t) for t in ctx.schema2_types if t)
            + ")"
        )
    image_id = Digest(config_descriptor.digest)
    if not image_id.startswith("sha256:"):
        raise ManifestError(f"image config digest {image_id} is not sha256 (it is the image ID)")
    stats = DownloadStats()
    record = ctx.store.images.record(image_id)
    if record is None:
        with _blamed_on(client.endpoint):
            await _pull_image(client, reference, ctx, top, manifest, image, stats)
    else:
        _check_platform(ctx, reference, top, record.os, record.architecture, record.variant)
        stats.reused = len(image.layers)
    # Which mirror served the pull, when one did: the operator's first question.
    served_by = {"mirror": client.endpoint.base_url} if client.endpoint.mirror else {}
    changed = await anyio.to_thread.run_sync(_tag, ctx, reference, top.digest, image_id)
    updated = stats.fetched > 0 or changed
    progress.write(Message(f"Digest: {top.digest}"))
    if say_status and updated:
        progress.write(Message(f"Status: Downloaded newer image for {reference.familiar}"))
    elif say_status:
        progress.write(Message(f"Status: Image is up to date for {reference.familiar}"))
    ctx.metrics.layers_reused.inc(stats.reused)
    ctx.event_logger(
        image_id,
        str(reference),
        "pull",
        digest=top.digest,
        platform=_platform_of(ctx, image_id),
        layers_fetched=stats.fetched,
        layers_reused=stats.reused,
        bytes=stats.bytes,
        seconds=round(time.monotonic() - started, 3),
        **served_by,
    )
    return PullResult(image_id, top.digest, updated)


def _platform_of(ctx: PullContext, image_id: Digest) -> str:
    """The platform of the image stored (its config's), for the pull's log line."""
    record = ctx.store.images.record(image_id)
    if record is None:
        return str(ctx.platform)
    return str(normalize(record.os, record.architecture, record.variant))


@dataclass(frozen=True, slots=True)
class _Source:
    """Where a pull's content comes from: the endpoint that served its manifest."""

    client: RegistryClient
    top: FetchedManifest  # what the reference names: an index, or the manifest itself
    manifest: FetchedManifest  # the image manifest for the platform
    image: ImageManifest  # `manifest`, decoded and checked


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
    for mirror in await ctx.connector.service.mirror_endpoints(reference.domain):
        try:
            client = await ctx.connector.open_mirror(
                mirror, reference.path, meta_headers=ctx.meta_headers
            )
            ctx.job.phase = "manifest"
            # A mirror that is busy is skipped, not waited for: the registry may not be.
            source = await _manifest_from(client, client.get_manifest, tag_or_digest, ctx.platform)
            log.debug("pull.source", reference=str(reference), endpoint=mirror.base_url)
            return source
        except (RegistryError, ContentError) as exc:
            log.warning(
                "registry.mirror_failed",
                mirror=mirror.base_url,
                reference=str(reference),
                error=str(exc),
            )
    client = await ctx.connector.open(
        reference.domain, reference.path, ctx.credentials, meta_headers=ctx.meta_headers
    )
    log.debug("pull.source", reference=str(reference), endpoint=client.endpoint.base_url)
    ctx.job.phase = "manifest"
    try:
        fetch = _patient(client, ctx)
        return await _manifest_from(client, fetch, tag_or_digest, ctx.platform)
    except (AuthenticationError, AccessDeniedError) as exc:
        raise _refused(reference, exc, client.endpoint, f"manifests/{tag_or_digest}") from None


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
    client: RegistryClient, fetch: ManifestFetch, tag_or_digest: str, platform: Platform
) -> _Source:
    top = await fetch(tag_or_digest)
    manifest = await _resolve_platform(fetch, top, platform)
    return _Source(client, top, manifest, decode_manifest(manifest.raw))


async def _resolve_platform(
    fetch: ManifestFetch, top: FetchedManifest, platform: Platform
) -> FetchedManifest:
    check_supported(top.media_type)
    if top.media_type not in INDEX_TYPES:
        return top
    entry = select_platform(decode_index(top.raw), platform)
    manifest = await fetch(entry.digest)
    check_supported(manifest.media_type)
    if manifest.media_type in INDEX_TYPES:
        raise ManifestError(f"index entry {entry.digest} for {platform} is itself an index")
    return manifest


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


async def _pull_image(
    client: RegistryClient,
    reference: Reference,
    ctx: PullContext,
    top: FetchedManifest,
    manifest: FetchedManifest,
    image: ImageManifest,
    stats: DownloadStats,
) -> None:
    """Config, then layers, then the image in one transaction: all of it or nothing."""
    store = ctx.store
    config_descriptor = image.config
    image_id = Digest(config_descriptor.digest)
    limit = min(config_descriptor.size or MAX_CONFIG_SIZE, MAX_CONFIG_SIZE)
    raw_config = await ctx.downloads.config(client, image_id, limit)
    rootfs, os = store.images.rootfs_and_os(raw_config)
    model = decode_config(raw_config)
    _check_platform(ctx, reference, top, model.os, model.architecture, model.variant)
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
    final, release = await ctx.downloads.download(
        client, RootFS([]), os, descriptors, ctx.progress, stats
    )
    try:

        def commit() -> None:
            size = sum(store.layers.size_of(chain) for chain in chain_ids(final.diff_ids))
            # Blobs first, fsync'd outside the transaction: the database lock is never
            # held across a disk flush. Inside it, `put` finds them stored.
            # Pinned until the rows reference them: a sweep must not take them between.
            with store.blobs.pinned(image_id, sha256_digest(manifest.raw)):
                store.blobs.put(raw_config, image_id, sync_dir=False)
                store.blobs.put(manifest.raw, sync_dir=False)
                store.blobs.sync()
                with store.db.transaction():
                    store.images.put(raw_config, media_type=config_descriptor.mediaType, size=size)
                    store.manifests.add(
                        manifest.digest, image_id, manifest.media_type, manifest.raw
                    )

        ctx.job.phase = "committing"
        await anyio.to_thread.run_sync(commit)
    finally:
        release()


def _check_platform(
    ctx: PullContext,
    reference: Reference,
    top: FetchedManifest,
    os: str,
    architecture: str,
    variant: str | None,
) -> None:
    """A platform the client asked for must be the image's, as dockerd checks: an index
    chose by it already, a single manifest has only its config to go by."""
    if not ctx.exact_platform or top.media_type in INDEX_TYPES:
        return
    if not ctx.platform.matches(os, architecture, variant):
        actual = normalize(os, architecture, variant)
        raise PlatformNotFoundError(
            f"image with reference {reference.familiar} was found but does not match the "
            f"specified platform: wanted {ctx.platform}, actual: {actual}"
        )


def _tag(ctx: PullContext, reference: Reference, digest: Digest, image_id: Digest) -> bool:
    """Record the references a pull makes (the tag, if any, and repo@digest); did any
    of them change? (docker's "Downloaded newer image" vs "Image is up to date")."""
    references = ctx.store.references
    with ctx.store.db.transaction():
        changed = references.add(reference.repository().with_digest(digest), image_id) != image_id
        if reference.tag is not None and reference.digest is None:
            changed |= references.add(reference, image_id) != image_id
        return changed
