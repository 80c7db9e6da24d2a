"""What the API drives: one object holding the store, registries and transfer managers."""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass, field
from typing import Any

import anyio

from ferryd.distribution.context import ImageEventLogger, PullConfig, PushConfig
from ferryd.distribution.downloads import DownloadManager
from ferryd.distribution.progress import ProgressOutput
from ferryd.distribution.pull import PullResult, pull
from ferryd.distribution.push import PushResult, push
from ferryd.distribution.push_layers import StoreLayerProvider
from ferryd.distribution.tagging import remove, tag_image
from ferryd.distribution.uploads import UploadManager
from ferryd.oci.platform import Platform
from ferryd.oci.reference import Reference
from ferryd.registry.auth import Credentials
from ferryd.registry.connector import Connector
from ferryd.registry.credentials import CredentialStore
from ferryd.store import Store


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

    async def credentials_for(self, domain: str, given: Credentials) -> Credentials:
        """What the client sent wins; else the daemon's own login; else anonymous."""
        if not given.anonymous:
            return given
        return await self.saved_credentials.lookup(domain)

    async def _common(
        self,
        reference: Reference,
        progress: ProgressOutput,
        credentials: Credentials,
        meta_headers: Mapping[str, str] | None,
    ) -> dict[str, Any]:
        """The seed's Config fields, shared by pull and push."""
        return {
            "connector": self.connector,
            "image_store": self.store.images,
            "metadata_store": self.store.metadata,
            "reference_store": self.store.references,
            "progress": progress,
            "event_logger": self.event_logger,
            "credentials": await self.credentials_for(reference.domain, credentials),
            "meta_headers": dict(meta_headers or {}),
        }

    async def pull(
        self,
        reference: Reference,
        progress: ProgressOutput,
        *,
        platform: Platform | None = None,
        credentials: Credentials,
        meta_headers: Mapping[str, str] | None = None,
    ) -> list[PullResult]:
        config = PullConfig(
            **await self._common(reference, progress, credentials, meta_headers),
            download_manager=self.downloads,
            platform=platform or self.default_platform,
        )
        return await pull(reference, config, self.store)

    async def push(
        self,
        reference: Reference,
        progress: ProgressOutput,
        *,
        credentials: Credentials,
        meta_headers: Mapping[str, str] | None = None,
    ) -> list[PushResult]:
        config = PushConfig(
            **await self._common(reference, progress, credentials, meta_headers),
            layer_provider=StoreLayerProvider(self.store.layers, self.store.blobs),
            upload_manager=self.uploads,
        )
        return await push(reference, config, self.store)

    async def tag(self, source: str, target: Reference) -> None:
        await anyio.to_thread.run_sync(tag_image, self.store, source, target, self.event_logger)

    async def remove(self, name: str, *, force: bool) -> list[dict[str, Any]]:
        def run() -> list[dict[str, Any]]:
            return remove(self.store, name, force=force, log=self.event_logger)

        return await anyio.to_thread.run_sync(run)
