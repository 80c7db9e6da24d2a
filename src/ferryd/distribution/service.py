"""What the API drives: the store, the registries and the transfer managers, turned into
one pull or push context per request."""

from __future__ import annotations

from collections.abc import AsyncIterator, Mapping
from contextlib import asynccontextmanager
from dataclasses import dataclass, field, fields
from typing import Any

import anyio

from ferryd.distribution.context import PullContext, PushContext, TransferContext
from ferryd.distribution.downloads import DownloadManager
from ferryd.distribution.events import ImageEventLogger
from ferryd.distribution.inflight import InFlightPulls
from ferryd.distribution.jobs import JobBoard
from ferryd.distribution.progress import ProgressOutput
from ferryd.distribution.pull import PullResult, pull
from ferryd.distribution.push import PushResult, push
from ferryd.distribution.push_layers import StoreLayerProvider
from ferryd.distribution.tagging import remove, tag_image
from ferryd.distribution.uploads import UploadManager
from ferryd.metrics import Metrics
from ferryd.oci.platform import Platform, host_platform
from ferryd.oci.reference import Reference
from ferryd.registry.auth import Credentials
from ferryd.registry.connector import Connector
from ferryd.registry.credentials import CredentialStore
from ferryd.store import Store


def _shared(base: TransferContext, **changed: Any) -> dict[str, Any]:
    """`base`'s fields (with `changed`), as the keywords of a pull's or push's context."""
    return {f.name: getattr(base, f.name) for f in fields(TransferContext)} | changed


@dataclass
class ImageService:
    store: Store
    connector: Connector
    downloads: DownloadManager
    uploads: UploadManager
    event_logger: ImageEventLogger
    default_platform: Platform | None = None
    # The daemon's own logins (credentials file and helpers); replaced on reload.
    saved_credentials: CredentialStore = field(default_factory=CredentialStore)
    jobs: JobBoard = field(default_factory=JobBoard)
    # Give the transfer managers the same one: they count transfers, bytes and retries.
    metrics: Metrics = field(default_factory=Metrics)
    pulls: InFlightPulls = field(default_factory=InFlightPulls)

    async def credentials_for(self, domain: str, given: Credentials) -> Credentials:
        """What the client sent wins; else the daemon's own login; else anonymous."""
        if not given.anonymous:
            return given
        return await self.saved_credentials.lookup(domain)

    @asynccontextmanager
    async def _job(
        self,
        action: str,
        reference: Reference,
        progress: ProgressOutput,
        credentials: Credentials,
        meta_headers: Mapping[str, str] | None,
    ) -> AsyncIterator[TransferContext]:
        """A pull's or push's job (`ferryd ps`, metrics) while it runs, and what its
        context shares with the other's."""
        with self.metrics.job(action), self.jobs.track(action, str(reference), progress) as job:
            yield TransferContext(
                store=self.store,
                connector=self.connector,
                credentials=await self.credentials_for(reference.domain, credentials),
                meta_headers=dict(meta_headers or {}),
                progress=job,
                event_logger=self.event_logger,
                job=job,
                metrics=self.metrics,
            )

    async def pull(
        self,
        reference: Reference,
        progress: ProgressOutput,
        *,
        platform: Platform | None = None,
        platforms: tuple[Platform, ...] = (),
        all_platforms: bool = False,
        credentials: Credentials,
        meta_headers: Mapping[str, str] | None = None,
    ) -> list[PullResult]:
        """Pull `reference`: of an index, the image for `platform` (else the default
        platform), for each of `platforms`, or for every platform (`all_platforms`)."""
        default = self.default_platform or host_platform()
        async with self._job("pull", reference, progress, credentials, meta_headers) as base:

            async def run(output: ProgressOutput) -> list[PullResult]:
                ctx = PullContext(
                    **_shared(base, progress=output),  # the followers' output, too
                    downloads=self.downloads,
                    retries=self.downloads.retries,
                    platform=platform or default,
                    exact_platform=platform is not None,
                    platforms=platforms,
                    all_platforms=all_platforms,
                    default_platform=default,
                )
                return await pull(reference, ctx)

            # Identical: the same content, asked for by the same login.
            key = (
                str(reference),
                platform,
                platforms,
                all_platforms,
                base.credentials,
                tuple(sorted(base.meta_headers.items())),
            )
            return await self.pulls.run(key, base.job, run)

    async def push(
        self,
        reference: Reference,
        progress: ProgressOutput,
        *,
        platform: Platform | None = None,
        reduced_index: bool = False,
        credentials: Credentials,
        meta_headers: Mapping[str, str] | None = None,
    ) -> list[PushResult]:
        async with self._job("push", reference, progress, credentials, meta_headers) as base:
            ctx = PushContext(
                **_shared(base),
                layers=StoreLayerProvider(self.store.layers, self.store.blobs),
                uploads=self.uploads,
                platform=platform,
                reduced_index=reduced_index,
            )
            return await push(reference, ctx)

    async def tag(self, source: str, target: Reference) -> None:
        await anyio.to_thread.run_sync(tag_image, self.store, source, target, self.event_logger)

    async def remove(self, name: str, *, force: bool) -> list[dict[str, Any]]:
        def run() -> list[dict[str, Any]]:
            return remove(self.store, name, force=force, log=self.event_logger)

        return await anyio.to_thread.run_sync(run)
