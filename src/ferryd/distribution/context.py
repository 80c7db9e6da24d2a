"""What a pull or a push is given: moby's Config, ImagePullConfig and ImagePushConfig,
and the download manager's interface (RootFSDownloadManager); the push layer interfaces
are in `push_layers`.

A context holds everything its operation reaches, each once and as a required field:
the store, the registries, the transfer managers, where progress goes and who hears of
events. The API builds one per request (`ImageService`).
"""

from __future__ import annotations

from collections.abc import Callable, Mapping, Sequence
from contextlib import AbstractAsyncContextManager
from dataclasses import dataclass, field
from typing import Protocol

from ferryd.distribution.events import ImageEventLogger
from ferryd.distribution.jobs import Job
from ferryd.distribution.progress import ProgressOutput
from ferryd.distribution.push_layers import PushLayerProvider
from ferryd.distribution.transfers import RetryPolicy
from ferryd.distribution.uploads import UploadManager
from ferryd.metrics import Metrics
from ferryd.oci.digest import Digest
from ferryd.oci.image_config import RootFS
from ferryd.oci.manifest import Descriptor
from ferryd.oci.mediatypes import DEFAULT_CONFIG_TYPES
from ferryd.oci.platform import Platform
from ferryd.registry.auth import Credentials
from ferryd.registry.client import OpenBlob
from ferryd.registry.connector import Connector
from ferryd.store import Store


class BlobFetcher(Protocol):
    """How the download manager reaches blobs: a RegistryClient for the pull's repository."""

    def open_blob(
        self,
        digest: Digest,
        offset: int = 0,
        *,
        whole: int | None = None,
        keep: Callable[[bytes], object] | None = None,
        into: Callable[[bytes], None] | None = None,
    ) -> AbstractAsyncContextManager[OpenBlob]:
        """A blob's answer from `offset`; `whole`: its size, to read it in a worker
        thread: at once, with `keep` what to do with a body of that size in the call
        that read it; or piece by piece into `into` as it is read."""
        ...

    async def get_blob(self, digest: Digest, limit: int, what: str) -> bytes:
        """A small blob (an image config) read whole and verified."""
        ...

    async def open_connections(self, count: int) -> None:
        """Have `count` connections open for the blobs to come (where that is up to it)."""
        ...

    def reads_in_worker(self) -> bool:
        """Whether `open_blob(whole=…)` reads in a worker thread (else it streams)."""
        ...


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
    # The blobs counted as fetched: the platforms of an index that share a layer all
    # wait on its one transfer, and the pull fetched it once.
    counted: set[str] = field(default_factory=set)


class RootFSDownloadManager(Protocol):
    async def download(
        self,
        fetcher: BlobFetcher,
        initial: RootFS,
        os: str,
        layers: list[DownloadDescriptor],
        progress: ProgressOutput,
        stats: DownloadStats | None = None,
    ) -> tuple[RootFS, Callable[[], None]]:
        """Bring every layer into the store on top of `initial`; return the rootfs and a
        function that releases the holds on its layers."""
        ...

    async def config(self, fetcher: BlobFetcher, digest: Digest, limit: int) -> bytes:
        """An image config, fetched once for the pulls that want it at the same time."""
        ...

    def sending_ahead(
        self, fetcher: BlobFetcher, layers: Sequence[Descriptor]
    ) -> AbstractAsyncContextManager[None]:
        """While the block runs, the GETs of layers surely to be downloaded are sent
        for their transfers to take; those none took are let go at its end."""
        ...


@dataclass(frozen=True, kw_only=True)
class TransferContext:
    """moby's Config: what pulls and pushes share."""

    store: Store  # images (the ImageConfigStore), references, manifests, layers, blobs
    connector: Connector  # the registry service, its endpoints, TLS and logins
    credentials: Credentials  # what the client sent, or the daemon's own login
    meta_headers: Mapping[str, str]  # X-Meta-* copied to every registry request
    progress: ProgressOutput  # the job, which passes it on to the client
    event_logger: ImageEventLogger
    job: Job  # what `ferryd ps` shows of this pull or push: its phase, its layers
    metrics: Metrics  # the daemon's counters (GET /metrics)


@dataclass(frozen=True, kw_only=True)
class PullContext(TransferContext):
    """moby's ImagePullConfig."""

    downloads: RootFSDownloadManager
    retries: RetryPolicy  # for manifests a registry rate-limits (429)
    platform: Platform  # of an index, the manifest for this platform is pulled
    # The client named the platform: a single-platform image must be of it.
    exact_platform: bool = False
    schema2_types: tuple[str, ...] = DEFAULT_CONFIG_TYPES  # config media types allowed
    # ferryd's own: several platforms of an index (`platforms=`), or every one of them
    # (`all-platforms=1`); either replaces `platform` as what is pulled.
    platforms: tuple[Platform, ...] = ()
    all_platforms: bool = False
    # Whose image a reference to an index gives (`ReferenceStore`): the daemon's
    # default platform; None: `platform`.
    default_platform: Platform | None = None

    @property
    def several(self) -> bool:
        """More than the one platform `platform` names is asked for."""
        return self.all_platforms or bool(self.platforms)


@dataclass(frozen=True, kw_only=True)
class PushContext(TransferContext):
    """moby's ImagePushConfig (without TrustKey: it signed schema1, never written)."""

    layers: PushLayerProvider
    uploads: UploadManager
    # The manifest's format: "" keeps the image's own (the media type it was pulled with).
    config_media_type: str = ""
    # dockerd's `platform` (API 1.46+): of a tag that names an index, push only this
    # platform's image, as a single-platform manifest.
    platform: Platform | None = None
    # ferryd's own (`reduced-index=1`): of an index some of whose platforms are not
    # stored, push a new index of the stored ones (a new digest) instead of refusing.
    reduced_index: bool = False
