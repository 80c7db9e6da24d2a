"""The seed's Config, ImagePullConfig and the interfaces they name, as Python types."""

from __future__ import annotations

from collections.abc import Callable, Mapping
from contextlib import AbstractAsyncContextManager
from dataclasses import dataclass, field
from typing import Protocol

from ferryd.distribution.progress import ProgressOutput
from ferryd.distribution.push_layers import StoreLayerProvider
from ferryd.distribution.uploads import UploadManager
from ferryd.oci.digest import Digest
from ferryd.oci.manifest import Descriptor
from ferryd.oci.mediatypes import DEFAULT_CONFIG_TYPES
from ferryd.oci.platform import Platform
from ferryd.registry.auth import ANONYMOUS, Credentials
from ferryd.registry.client import BlobResponse
from ferryd.registry.connector import Connector
from ferryd.store.images import RootFS
from ferryd.store.metadata import V2MetadataStore
from ferryd.store.references import ReferenceStore


class ImageEventLogger(Protocol):
    """The seed's ImageEventLogger: (image id, reference, action) plus what it cost."""

    def __call__(self, image_id: str, name: str, action: str, **fields: object) -> None: ...


class ImageConfigStore(Protocol):
    def put(self, config: bytes, *, media_type: str = "", size: int = 0) -> Digest: ...
    def get(self, image_id: Digest) -> bytes: ...
    def rootfs_and_os(self, config: bytes) -> tuple[RootFS, str]: ...


@dataclass(frozen=True, slots=True)
class DownloadDescriptor:
    """One layer to download: its manifest descriptor and the DiffID the config expects."""

    descriptor: Descriptor
    diff_id: Digest
    registry: str
    repository: str


@dataclass
class DownloadStats:
    """What one pull's layers cost: filled in by the download manager."""

    fetched: int = 0
    reused: int = 0
    bytes: int = 0


class RootFSDownloadManager(Protocol):
    async def download(
        self,
        fetcher: BlobFetcher,
        initial: RootFS,
        os: str,
        layers: list[DownloadDescriptor],
        progress: ProgressOutput,
        stats: DownloadStats | None = None,
    ) -> tuple[RootFS, Callable[[], None]]: ...


class BlobFetcher(Protocol):
    """How the download manager reaches blobs: a RegistryClient for the pull's repository."""

    def open_blob(
        self, digest: Digest, offset: int = 0
    ) -> AbstractAsyncContextManager[BlobResponse]: ...


@dataclass
class Config:
    """Settings common to pull and push."""

    connector: Connector
    image_store: ImageConfigStore
    metadata_store: V2MetadataStore
    reference_store: ReferenceStore | None
    progress: ProgressOutput
    event_logger: ImageEventLogger
    credentials: Credentials = ANONYMOUS
    meta_headers: Mapping[str, str] = field(default_factory=dict)


@dataclass
class PullConfig(Config):
    download_manager: RootFSDownloadManager | None = None
    schema2_types: tuple[str, ...] = DEFAULT_CONFIG_TYPES
    platform: Platform | None = None


@dataclass
class PushConfig(Config):
    # The manifest's format: "" keeps the image's own (the media type it was pulled with).
    config_media_type: str = ""
    layer_provider: StoreLayerProvider | None = None
    upload_manager: UploadManager | None = None
