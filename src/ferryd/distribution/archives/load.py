"""Load images from an archive (`docker load`): read as it streams, check everything,
store it all in one go or nothing at all.

1. Intake. The request body is read in ~1 MiB batches, each handled by one worker-
   thread call: the whole archive's gzip, zstd, xz or bzip2 is undone (pieces of at
   most 1 MiB, at most `_WORK_PER_CALL` of output per call, so a bomb is worked through
   in bounded steps and memory), the tar is parsed, and every file is written to the
   load's staging directory (`ferryd.store.staging`) and hashed; a second thread,
   a batch behind, inflates compressed files and hashes what they decompress to, their
   DiffID (`intake`). Nothing is read twice.
2. Plan. Once the archive has ended: `index.json` (OCI layout) and `manifest.json`
   (docker) say which files are configs, manifests and layers. An image the OCI part
   describes completely keeps that manifest and its layer blobs as they are (a registry's
   compressed blobs, its manifest digest: a push after the load sends the same
   manifest); otherwise `manifest.json`'s files are its layers. An index that
   `index.json` names (a multi-platform image) is kept as itself, with every platform
   whose blobs the archive holds (only `platform`'s, when given), and its names name it.
   Loaded whole (no `platform`), it keeps what it lists beyond images as a pull of all
   platforms does, each nested index (with its images) and artifact (with its blobs)
   the archive holds whole, within a pull's depth and entry limits.
   Every blob's digest and size, every layer's DiffID, every config and manifest are
   checked against each other; a blob's content against the digest it is used as, when
   its name is a symbolic link too. Manifests and indexes are named by their sha256.
   The archive's own JSON is read with limits (`layout.SMALL_FILES`, the config and
   manifest limits of `oci/`).
3. Commit. Layers already stored (by ChainID) are held and reused; the other layer blobs
   are fsync'd and renamed into `blobs/`, configs and manifests written, all of them
   pinned; then one database transaction registers every layer, image, manifest and tag
   of the load. A crash before it commits leaves only files no row references (the
   sweep removes them, and the staging directory); after it, everything. A commit the
   disk or the database refuses takes back the blobs it added that nothing else uses.

A broken or hostile archive is refused with an `ArchiveError` that says what is wrong,
after the rest of the body has been read (so that the client, still sending, hears
why), and nothing is stored.
"""

from __future__ import annotations

import time
from collections.abc import AsyncIterator, Callable, Hashable, Iterator
from dataclasses import dataclass, field, replace
from pathlib import Path
from typing import Generic, TypeVar

import anyio

from ferryd.codec import ARCHIVE_SNIFF, BATCH_SIZE, Inflater, archive_inflater
from ferryd.concurrency import single_errors
from ferryd.distribution.archives import layout
from ferryd.distribution.archives.intake import (
    Intake,
    Job,
    StagedFile,
    clean_name,
    not_the_blob,
    progress_id,
)
from ferryd.distribution.archives.tarstream import TarReader
from ferryd.distribution.events import ImageEventLogger, failure_logged
from ferryd.distribution.progress import UPDATE_INTERVAL, Message, ProgressOutput
from ferryd.errors import (
    ArchiveError,
    ContentError,
    FerrydError,
    PlatformNotFoundError,
)
from ferryd.oci.digest import Digest, algorithm_of, chain_ids, sha256_digest, short_id
from ferryd.oci.image_config import MAX_CONFIG_SIZE, check_usable_os, decode_config, rootfs_of
from ferryd.oci.manifest import (
    MAX_CHILDREN_BYTES,
    MAX_INDEX_DEPTH,
    MAX_INDEX_ENTRIES,
    MAX_LAYERS,
    MAX_MANIFEST_SIZE,
    Descriptor,
    FetchedManifest,
    ImageIndex,
    artifact_blobs,
    check_supported,
    decode_index,
    decode_manifest,
    entry_kind,
    media_type_of,
    pullable_entries,
    select_platforms,
)
from ferryd.oci.mediatypes import (
    DOCKER_CONFIG,
    IMAGE_MANIFEST_TYPES,
    INDEX_TYPES,
    OCI_CONFIG,
    SCHEMA1_TYPES,
    Compression,
    Family,
    layer_media_type,
)
from ferryd.oci.platform import Platform, host_platform, normalize
from ferryd.oci.reference import Reference
from ferryd.store import Store
from ferryd.store.gc import forget_unnamed_indexes, take_back
from ferryd.store.indexes import default_child
from ferryd.store.references import Target
from ferryd.store.staging import staged_in

# Decompressed archive bytes one worker call handles at most before it gives the event
# loop a turn (progress, cancellation): a small gzip member can inflate a thousandfold.
_WORK_PER_CALL = 4 * BATCH_SIZE

# What one archive's manifest.json or index.json may list: docker save of every image of
# a busy host lists some hundreds of images and tags. Tens of thousands of items naming
# one config (an 8 MiB manifest.json holds 559,000) only make the load plan them all.
MAX_ARCHIVE_IMAGES = 10_000
MAX_ARCHIVE_TAGS = 10_000
# Layers all of manifest.json's items list, together: each costs a lookup, and 10,000
# items of 125 layers each would take seconds to plan.
MAX_ARCHIVE_LAYERS = 100_000


@dataclass(frozen=True, slots=True)
class StreamLine(Message):
    """A line of text in the progress stream, `{"stream": …}`, as dockerd says what it
    loaded."""

    text: str = ""

    def to_json(self) -> dict[str, object]:
        return {"stream": self.text}


@dataclass(frozen=True, slots=True)
class LoadedImage:
    image_id: Digest  # of an index: the image its names give (the default platform's)
    names: list[Reference]
    replaced: list[tuple[Reference, Digest]]  # tags that named another image before
    layers_loaded: int
    layers_reused: int
    manifest: Digest | None = None  # the manifest (or index) kept with it
    index: Digest | None = None  # it is an index, with this digest
    platforms: list[str] = field(default_factory=list)  # of an index: those loaded


async def load_archive(
    store: Store,
    body: AsyncIterator[bytes],
    progress: ProgressOutput,
    event_logger: ImageEventLogger,
    *,
    quiet: bool = True,
    platform: Platform | None = None,
    default_platform: Platform | None = None,
) -> list[LoadedImage]:
    """Load every image of the archive streaming in as `body` (only those of `platform`,
    when given); report as dockerd does to `progress`. Raises `ArchiveError` for an
    archive that is broken, hostile or cut short, with nothing stored. A loaded index's
    names give its image for `default_platform` (this host's when None)."""
    started = time.monotonic()
    with failure_logged("load", "archive"):
        async with staged_in(store.root) as directory:
            intake = Intake(directory)
            try:
                received = await _receive(body, intake, None if quiet else progress)
            finally:
                # Closing a file waits for its DiffID hashing to drain: in a thread.
                with anyio.CancelScope(shield=True):
                    await anyio.to_thread.run_sync(intake.abort)
            plans = await anyio.to_thread.run_sync(_plan, intake, platform)
            loaded = await anyio.to_thread.run_sync(
                _commit, store, plans, default_platform or host_platform()
            )
    seconds = round(time.monotonic() - started, 3)
    for image in loaded:
        for reference, before in image.replaced:
            progress.write(
                StreamLine(
                    text=f"The image {reference.familiar} already exists, renaming the old "
                    f"one with ID {before} to empty string\n"
                )
            )
        for reference in image.names:
            progress.write(StreamLine(text=f"Loaded image: {reference.familiar}\n"))
        if not image.names:
            progress.write(StreamLine(text=f"Loaded image ID: {image.image_id}\n"))
        of_index = {"platforms": image.platforms} if image.index is not None else {}
        event_logger(
            image.image_id,
            image.image_id,
            "load",
            names=[str(reference) for reference in image.names],
            layers_loaded=image.layers_loaded,
            layers_reused=image.layers_reused,
            manifest=image.manifest,
            **of_index,
            archive_bytes=received,
            seconds=seconds,
        )
    return loaded


# -- 1. intake -------------------------------------------------------------------------


class _Reader:
    """Body bytes → the archive's own compression undone → tar → the intake."""

    def __init__(self, intake: Intake) -> None:
        self.intake = intake
        self.tar = TarReader(intake)
        self._head = b""
        self._sniffed = False
        self._inflater: Inflater | None = None
        self._pieces: Iterator[bytes] | None = None
        self.format = "tar"

    @property
    def done(self) -> bool:
        """The end-of-archive marker was read: what follows is not looked at."""
        return self.tar.ended

    def feed(self, batch: bytes) -> bool:
        """Take a batch of the body; True when there is more to do (call `resume`)."""
        if not self._sniffed:
            self._head += batch
            if len(self._head) < ARCHIVE_SNIFF:
                return False
            batch, self._head = self._head, b""
            self._start(batch)
        if self._inflater is None:
            self.tar.feed(batch)
            return False
        self._pieces = self._inflater.feed(batch)
        return self.resume()

    def resume(self) -> bool:
        if self._pieces is None:
            return False
        budget = _WORK_PER_CALL
        try:
            for piece in self._pieces:
                self.tar.feed(piece)
                budget -= len(piece)
                if self.tar.ended:
                    break
                if budget <= 0:
                    return True
        except ContentError as exc:
            if isinstance(exc, ArchiveError):
                raise
            raise ArchiveError(str(exc)) from None
        self._pieces = None
        return False

    def _start(self, head: bytes) -> None:
        self._sniffed = True
        # As dockerd's DecompressStream: bzip2, gzip, xz, zstd, else a plain tar.
        self.format, decompressor = archive_inflater(head, "the archive")
        if self.format != "tar":
            self._inflater = decompressor

    def finish(self) -> bool:
        """The body has ended (False: nothing more to do)."""
        if not self._sniffed:
            head, self._head = self._head, b""
            if not head:
                raise ArchiveError("the archive is empty")
            self._start(head)
            if self._inflater is None:
                self.tar.feed(head)
            else:
                self._pieces = self._inflater.feed(head)
                while self.resume():
                    pass
        self.tar.close()
        if self._inflater is not None and not self.tar.ended:
            try:
                self._inflater.finish()
            except ContentError:
                raise ArchiveError(
                    f"the archive ended early: its {self.format} stream does not end (was "
                    "the upload cut short?)"
                ) from None
        return False


async def _receive(
    body: AsyncIterator[bytes], intake: Intake, progress: ProgressOutput | None
) -> int:
    """Stream the body into the intake; the bytes received. A refusal is raised once
    the client has sent everything (it hears why instead of a broken pipe).

    Two worker-thread stages, as a pull's layers: one parses and writes and hashes each
    batch while the other inflates compressed files for their DiffIDs, a batch behind.
    """
    reader = _Reader(intake)
    shown = _LayerProgress(progress, reader)
    failure: ArchiveError | None = None
    pending: list[bytes] = []
    pending_size = received = 0
    to_inflate, inflating = anyio.create_memory_object_stream[list[Job]](2)

    async def inflate() -> None:
        async with inflating:
            async for jobs in inflating:
                await anyio.to_thread.run_sync(intake.inflate, jobs)

    async def stage(step: Callable[[], bool]) -> bool:
        more = await anyio.to_thread.run_sync(step)
        jobs = intake.take_jobs()
        if jobs:
            await to_inflate.send(jobs)
        shown.update()
        return more

    async def process(batch: bytes) -> None:
        more = await stage(lambda: reader.feed(batch))
        while more:
            more = await stage(reader.resume)

    with single_errors():
        async with anyio.create_task_group() as tg:
            tg.start_soon(inflate)
            async with to_inflate:
                async for chunk in body:
                    received += len(chunk)
                    if failure is not None or reader.done:
                        continue  # read to the end, and let it go
                    pending.append(chunk)
                    pending_size += len(chunk)
                    if pending_size >= BATCH_SIZE:
                        batch, pending, pending_size = b"".join(pending), [], 0
                        try:
                            await process(batch)
                        except ArchiveError as exc:
                            failure = exc
                if failure is None:
                    try:
                        if pending and not reader.done:
                            await process(b"".join(pending))
                        await stage(reader.finish)
                    except ArchiveError as exc:
                        failure = exc
    if failure is not None:
        raise failure
    shown.update()
    intake.complete = reader.done
    return received


class _LayerProgress:
    """`Loading layer` messages for the files that look like layers, as dockerd sends
    them while it reads an archive (ids: the file's digest or directory, 12 chars)."""

    def __init__(self, output: ProgressOutput | None, reader: _Reader) -> None:
        self._output = output
        self._reader = reader
        self._last: dict[str, float] = {}

    def update(self) -> None:
        finished = self._reader.intake.finished
        output = self._output
        if output is None:
            finished.clear()  # a quiet load too: one item per layer-like entry adds up
            return
        for ident, size in finished:
            output.write(Message("Loading layer", ident, size, size))
        finished.clear()
        entry, sink = self._reader.tar.entry, self._reader.intake.current
        if entry is None or sink is None or not sink.may_be_layer(entry.size):
            return
        ident = progress_id(sink.name)
        now = time.monotonic()
        if now - self._last.get(ident, 0.0) >= UPDATE_INTERVAL:
            self._last[ident] = now
            output.write(Message("Loading layer", ident, self._reader.tar.received, entry.size))


# -- 2. plan ---------------------------------------------------------------------------


@dataclass
class _LayerPlan:
    staged: StagedFile
    media_type: str
    urls: tuple[str, ...] = ()


@dataclass
class _ImagePlan:
    image_id: Digest
    config: bytes
    config_media_type: str
    diff_ids: list[Digest]
    layers: list[_LayerPlan]
    platform: Platform
    names: list[Reference] = field(default_factory=list)
    manifest: FetchedManifest | None = None  # kept with the image: a push re-uses it
    in_index: bool = False  # a platform of an index the archive holds: said with it


@dataclass
class _OtherPlan:
    """A nested index or an artifact (an `unknown` entry's manifest) an index lists,
    kept as a pull of all platforms keeps it: as it is, with what it lists or names."""

    manifest: FetchedManifest
    index: ImageIndex | None  # a nested index, decoded
    blobs: list[Descriptor]  # of an artifact: the blobs it names
    staged: dict[Digest, StagedFile]  # of those, the ones the archive holds (checked)
    # Of a nested index: the plans of the images it lists, by manifest digest.
    children: dict[Digest, _ImagePlan] = field(default_factory=dict)


@dataclass
class _IndexPlan:
    """An index `index.json` names, kept as itself with the platforms loaded."""

    index: FetchedManifest
    decoded: ImageIndex
    names: list[Reference]
    children: list[_ImagePlan]  # the images of its entries (nested ones') the archive holds
    others: list[_OtherPlan]  # its nested indexes and artifacts the archive holds whole


@dataclass
class _Plans:
    images: list[_ImagePlan]
    indexes: list[_IndexPlan]


_K = TypeVar("_K", bound=Hashable)
_V = TypeVar("_V")


class _Once(Generic[_K, _V]):
    """Results by key, each computed once: an archive may name one config or manifest
    in thousands of places, and decoding an 8 MiB config takes tens of milliseconds. A
    refusal is kept too, and raised again wherever the same thing is named."""

    def __init__(self) -> None:
        self._results: dict[_K, _V | ArchiveError | _Missing] = {}

    def get(self, key: _K, compute: Callable[[], _V]) -> _V:
        if key not in self._results:
            try:
                self._results[key] = compute()
            except (ArchiveError, _Missing) as exc:
                self._results[key] = exc
        result = self._results[key]
        if isinstance(result, (ArchiveError, _Missing)):
            # Without its old traceback: raised again and again, it would grow each time.
            raise result.with_traceback(None)
        return result


@dataclass(frozen=True, slots=True)
class _Config:
    raw: bytes
    image_id: Digest
    diff_ids: tuple[Digest, ...]
    platform: Platform


_Blob = tuple[Digest, str]  # a manifest's or an index's digest, and its media type
# An index decoded, the plans of its images and its others (see `_index_children`).
_Indexed = tuple[ImageIndex, list[_ImagePlan], list[_OtherPlan]]


@dataclass
class _Decoded:
    """What planning one archive has read and decoded (see `_Once`): configs by the
    staged file they are, manifests (read, and planned as images) and indexes (planned
    with their children) by digest and media type."""

    configs: _Once[Path, _Config] = field(default_factory=_Once)
    manifests: _Once[_Blob, FetchedManifest] = field(default_factory=_Once)
    images: _Once[_Blob, _ImagePlan] = field(default_factory=_Once)
    indexes: _Once[_Blob, _Indexed | None] = field(default_factory=_Once)


def _named(plan: _ImagePlan, names: list[Reference]) -> _ImagePlan:
    """A plan of its own, with `names`, for a place that names a planned image: plans
    are merged and marked (`in_index`) one by one, a cached one is never handed out."""
    return replace(plan, names=list(names))


def _plan(intake: Intake, platform: Platform | None) -> _Plans:
    """What the archive holds, checked: one plan per image to load, and per index."""
    try:
        return _plan_checked(intake, platform)
    except ArchiveError as exc:
        if intake.complete:
            raise
        raise ArchiveError(
            f"{exc} (the archive ended without its end-of-archive marker: was it cut short?)"
        ) from None


def _plan_checked(intake: Intake, platform: Platform | None) -> _Plans:
    has_manifest_json = intake.resolve(layout.MANIFEST_JSON) is not None
    has_index = intake.resolve(layout.INDEX_JSON) is not None
    if not has_manifest_json and not has_index:
        if intake.resolve(layout.REPOSITORIES) is not None:
            raise ArchiveError(
                "the archive has no manifest.json: it was written by docker before 1.10, "
                "whose format ferryd does not read"
            )
        raise ArchiveError(
            "not an image archive: it has neither manifest.json (docker save) nor "
            "index.json (an OCI image layout)"
        )
    intake.check_blob_links()
    decoded = _Decoded()
    plans: dict[Digest, _ImagePlan] = {}
    indexes: dict[Digest, _IndexPlan] = {}
    problems: dict[Digest | None, ArchiveError] = {}
    if has_index:
        for plan_or_problem in _oci_plans(intake, platform, decoded):
            if isinstance(plan_or_problem, tuple):
                image_id, problem = plan_or_problem
                problems[image_id] = problem
                continue
            if isinstance(plan_or_problem, _IndexPlan):
                known = indexes.setdefault(plan_or_problem.index.digest, plan_or_problem)
                if known is not plan_or_problem:
                    known.names += plan_or_problem.names
                for child in plan_or_problem.children:
                    _merge(plans, child)
                continue
            _merge(plans, plan_or_problem)
    if has_manifest_json:
        for plan in _docker_plans(intake, decoded):
            problems.pop(plan.image_id, None)
            _merge(plans, plan)
    if problems:
        raise next(iter(problems.values()))
    # Names are gathered with repeats and made unique once: thousands of tags checked
    # against each other as they come would take quadratic time.
    for plan in plans.values():
        plan.names = list(dict.fromkeys(plan.names))
    for index in indexes.values():
        index.names = list(dict.fromkeys(index.names))
    # An index's names name the index: the same names manifest.json gives one of its
    # images (docker 25 and ferryd write them there too) do not name that image alone.
    for index in indexes.values():
        index_names = set(index.names)
        for child in index.children:
            child.in_index = True
            plans[child.image_id].in_index = True
            plans[child.image_id].names = [
                name for name in plans[child.image_id].names if name not in index_names
            ]
    wanted = list(plans.values())
    if platform is not None:
        # The platform itself, as docker loads one: never an older one it runs.
        wanted = [
            plan for plan in wanted if platform.is_platform_of(*_platform_of(plan)) or plan.in_index
        ]
        if not any(platform.is_platform_of(*_platform_of(plan)) for plan in wanted):
            offered = ", ".join(sorted({str(plan.platform) for plan in plans.values()}))
            raise PlatformNotFoundError(
                f"the archive has no image for platform {platform}"
                + (f" (it has {offered})" if offered else "")
            )
    if not wanted:
        raise ArchiveError("the archive holds no image")
    for plan in wanted:
        if platform is not None or not plan.in_index:
            _check_usable(plan)
        _check_layers(intake, plan)
    # A platform whose image another entry has too (gzip and zstd entries of one
    # config) is not among `wanted`, but its layer blobs are loaded (`_variants`).
    for index in indexes.values():
        for child in index.children:
            _check_layers(intake, child)
    return _Plans(wanted, list(indexes.values()))


def _platform_of(plan: _ImagePlan) -> tuple[str, str, str | None]:
    return plan.platform.os, plan.platform.architecture, plan.platform.variant


def _merge(plans: dict[Digest, _ImagePlan], plan: _ImagePlan) -> None:
    """The OCI part's plan wins (it keeps the manifest); names are gathered from both
    (repeats are dropped once all are in)."""
    known = plans.setdefault(plan.image_id, plan)
    if known is not plan:
        known.names += plan.names


def _read(intake: Intake, name: str, limit: int, what: str) -> tuple[StagedFile, bytes]:
    return _read_staged(intake.resolve(name), name, limit, what)


def _read_staged(
    staged: StagedFile | None, name: str, limit: int, what: str
) -> tuple[StagedFile, bytes]:
    if staged is None:
        raise ArchiveError(f"the archive names {what} {name}, which it does not have")
    if staged.size > limit:
        raise ArchiveError(
            f"refused: {what} {name} in the archive has {staged.size} bytes (the limit is {limit})"
        )
    return staged, staged.path.read_bytes()


def _blob(
    intake: Intake, descriptor: Descriptor, limit: int, what: str
) -> tuple[StagedFile, bytes]:
    staged = _sized_blob(intake, descriptor)
    return _read_staged(staged, layout.blob_name(Digest(descriptor.digest)), limit, what)


def _sized_blob(intake: Intake, descriptor: Descriptor) -> StagedFile | None:
    """The blob a descriptor names (None: the archive has none), its size checked before
    anything reads it: a descriptor that lies costs no read."""
    staged = _resolve_blob(intake, Digest(descriptor.digest))
    if staged is not None:
        _check_size(staged, descriptor)
    return staged


def _resolve_blob(intake: Intake, digest: Digest) -> StagedFile | None:
    """The file of the archive that is the blob `digest` (None: it has none), its content
    checked against the digest it is used as: a regular file was checked against its
    name already, but that name may be a symbolic link to another file, and a
    descriptor's digest is only a string (`sha256:ABC…` names no file the intake
    checked)."""
    name = layout.blob_name(digest)
    staged = intake.resolve(name)
    if staged is not None and staged.digest != digest:
        raise ArchiveError(not_the_blob(name, digest, staged))
    return staged


def _check_size(staged: StagedFile, descriptor: Descriptor) -> None:
    if staged.size != descriptor.size:
        raise ArchiveError(
            f"the archive's {staged.name} has {staged.size} bytes, but its descriptor "
            f"says {descriptor.size}"
        )


def _image_config(
    decoded: _Decoded, staged: StagedFile | None, name: str, where: str | None = None
) -> _Config:
    """The config the archive has as `name` (`where`, in messages), read and decoded
    once however many images use it."""

    def decode() -> _Config:
        found, raw = _read_staged(staged, name, MAX_CONFIG_SIZE, "image config")
        return _config(raw, where or found.name)

    if staged is None:
        return decode()  # raises: the archive does not have it
    return decoded.configs.get(staged.path, decode)


def _config(raw: bytes, where: str) -> _Config:
    try:
        model = decode_config(raw)
        # Any OS: the platforms of an index are kept whatever it is (`_check_usable`).
        rootfs = rootfs_of(model)  # decoded once
    except ContentError as exc:
        raise ArchiveError(f"the archive's image config {where}: {exc}") from None
    if len(rootfs.diff_ids) > MAX_LAYERS:
        # As dockerd's layer store: a chain that deep is refused, and every layer of it
        # would be a row of the load (a few KB of gzip repeat one DiffID 100,000 times).
        raise ArchiveError(
            f"the archive's image config {where} has {len(rootfs.diff_ids)} layers: max "
            f"depth exceeded (docker and ferryd take at most {MAX_LAYERS})"
        )
    platform = normalize(model.os, model.architecture, model.variant)
    return _Config(raw, sha256_digest(raw), tuple(rootfs.diff_ids), platform)


def _check_usable(plan: _ImagePlan) -> None:
    """An image loaded to be used must be one this host can run, as a pull decides: one
    loaded alone, or the platform `--platform` asks for (a pull of one image or one
    platform); an index loaded whole keeps its other operating systems' images, as a
    pull of every platform does (they are moved, never run)."""
    try:
        check_usable_os(plan.platform.os)
    except ContentError as exc:
        raise ArchiveError(f"the archive's image config {plan.image_id}: {exc}") from None


def _check_listed(count: int, what: str, where: str, limit: int) -> None:
    if count > limit:
        raise ArchiveError(
            f"refused: the archive's {where} lists {count} {what} (the limit is {limit}; "
            f"docker save of every image of a host lists far fewer)"
        )


def _oci_plans(
    intake: Intake, platform: Platform | None, decoded: _Decoded
) -> Iterator[_ImagePlan | _IndexPlan | tuple[Digest | None, ArchiveError]]:
    """A plan per image or index index.json names (a problem instead, for an image whose
    blobs are not all there: manifest.json may describe it with files of its own)."""
    _, raw = _read(intake, layout.INDEX_JSON, layout.MAX_ARCHIVE_JSON, "its index")
    try:
        index = decode_index(raw)
    except ContentError as exc:
        raise ArchiveError(f"the archive's index.json: {exc}") from None
    _check_listed(len(index.manifests), "images", "index.json", MAX_ARCHIVE_IMAGES)
    for descriptor in index.manifests:
        names = layout.names_in(descriptor.annotations)
        try:
            manifest = _top_manifest(intake, descriptor, decoded)
        except ArchiveError as exc:
            yield None, exc
            continue
        if manifest is None:
            continue
        if manifest.media_type in INDEX_TYPES:
            indexed = _index_plan(intake, manifest, names, platform, decoded)
            if indexed is not None:
                yield indexed
            continue
        try:
            yield _oci_plan(intake, manifest, names, decoded)
        except _Missing as missing:
            yield missing.image_id, missing.error


class _Missing(Exception):
    def __init__(self, image_id: Digest, error: ArchiveError) -> None:
        super().__init__(str(error))
        self.image_id = image_id
        self.error = error


def _top_manifest(
    intake: Intake, descriptor: Descriptor, decoded: _Decoded
) -> FetchedManifest | None:
    """The manifest or index a descriptor names, read and checked (once, however often
    it is named); None for one that is neither (an artifact)."""
    if (
        descriptor.mediaType
        and descriptor.mediaType not in IMAGE_MANIFEST_TYPES
        and descriptor.mediaType not in INDEX_TYPES
    ):
        return None
    what = "image index" if descriptor.mediaType in INDEX_TYPES else "image manifest"
    algorithm = algorithm_of(Digest(descriptor.digest))
    if algorithm != "sha256":
        # The store keeps a manifest's or an index's blob under its sha256 only.
        raise ArchiveError(
            f"the archive's {what} {descriptor.digest} is named by a {algorithm} digest: "
            "ferryd loads only manifests and indexes named by their sha256 (as docker does)"
        )
    _sized_blob(intake, descriptor)  # what each descriptor says of it
    key = (Digest(descriptor.digest), descriptor.mediaType)
    return decoded.manifests.get(key, lambda: _read_manifest(intake, descriptor, what))


def _read_manifest(intake: Intake, descriptor: Descriptor, what: str) -> FetchedManifest:
    _, raw = _blob(intake, descriptor, MAX_MANIFEST_SIZE, what)
    try:
        media_type = media_type_of(descriptor.mediaType, raw)
        check_supported(media_type)
    except ContentError as exc:
        raise ArchiveError(f"the archive's manifest {descriptor.digest}: {exc}") from None
    return FetchedManifest(media_type, Digest(descriptor.digest), raw)


def _index_plan(
    intake: Intake,
    index: FetchedManifest,
    names: list[Reference],
    platform: Platform | None,
    decoded: _Decoded,
) -> _IndexPlan | None:
    """An index with the images of it the archive holds whole (only the one for
    `platform`, when given, and its attestations); None when it has none for
    `platform`."""
    key = (index.digest, index.media_type)
    planned = decoded.indexes.get(key, lambda: _index_children(intake, index, platform, decoded))
    if planned is None:
        return None
    decoded_index, children, others = planned
    copies = [_named(c, c.names) for c in children]
    return _IndexPlan(index, decoded_index, list(names), copies, others)


def _index_children(
    intake: Intake, index: FetchedManifest, platform: Platform | None, decoded: _Decoded
) -> _Indexed | None:
    """The index decoded, the plans of its images the archive holds (see `_index_plan`)
    and, loaded whole, its nested indexes and artifacts the archive holds whole
    (`_whole_others`), whose images are among those plans."""
    try:
        index_model = decode_index(index.raw)
    except ContentError as exc:
        raise ArchiveError(f"the archive's image index {index.digest}: {exc}") from None
    present = [
        entry
        for entry in pullable_entries(index_model)
        if _resolve_blob(intake, Digest(entry.digest)) is not None
    ]
    if platform is not None:
        try:
            present = select_platforms(ImageIndex(present), [platform])
        except PlatformNotFoundError:
            return None  # another platform's image: not one to load
    children = [
        plan for entry in present if (plan := _entry_image(intake, entry, decoded)) is not None
    ]
    if not any(entry_kind(c.entry) == "image" for c in _entries_of(present, children)):
        raise ArchiveError(
            f"the archive's image index {index.digest} has none of its images whole in it"
        )
    if platform is not None:
        return index_model, children, []
    others = _whole_others(intake, index.digest, index_model, decoded)
    planned = {Digest(entry.digest) for entry in present}
    for other in others:
        for digest, child in other.children.items():
            if digest not in planned:
                planned.add(digest)
                children.append(child)
    return index_model, children, others


def _entry_image(intake: Intake, entry: Descriptor, decoded: _Decoded) -> _ImagePlan | None:
    """The image an index entry the archive has names; None when the archive holds its
    manifest only (as containerd writes it), or it is no image manifest."""
    manifest = _top_manifest(intake, entry, decoded)
    if manifest is None or manifest.media_type in INDEX_TYPES:
        return None
    try:
        return _oci_plan(intake, manifest, [], decoded)
    except _Missing:
        return None


def _whole_others(
    intake: Intake, digest: Digest, index: ImageIndex, decoded: _Decoded
) -> list[_OtherPlan]:
    """What the index `digest`, loaded whole, lists beyond images that the archive holds
    whole, as a pull of all platforms keeps it: each nested index and artifact, each
    once (a digest names its content: none can list itself), deeper first; within a
    pull's limits (`MAX_INDEX_DEPTH` deep, `MAX_INDEX_ENTRIES` entries and
    `MAX_CHILDREN_BYTES` of manifests in all). One the archive lacks, or holds part of,
    is left out (`_whole`)."""
    found: list[_OtherPlan] = []
    seen: set[str] = set()
    listed = held = 0
    level, depth = [index], 0
    while level:
        depth += 1
        reached = []
        for current in level:
            for entry in current.manifests:
                if entry.digest in seen:
                    continue
                seen.add(entry.digest)
                if entry_kind(entry) in ("index", "unknown") and (
                    _resolve_blob(intake, Digest(entry.digest)) is not None
                ):
                    reached.append(_other_plan(intake, entry, depth))
                    held += len(reached[-1].manifest.raw)
                    if held > MAX_CHILDREN_BYTES:
                        raise ArchiveError(
                            f"refused: the nested indexes and artifacts the archive's image "
                            f"index {digest} lists come to over "
                            f"{MAX_CHILDREN_BYTES // 2**20} MiB (as a pull takes)"
                        )
        found[:0] = reached
        level = [other.index for other in reached if other.index is not None]
        # Counted before they are walked: a nested index may list tens of thousands.
        listed += sum(len(nested.manifests) for nested in level)
        if listed > MAX_INDEX_ENTRIES:
            raise ArchiveError(
                f"refused: the archive's image index {digest} lists over {MAX_INDEX_ENTRIES} "
                f"entries in its nested indexes (a pull takes at most {MAX_INDEX_ENTRIES})"
            )
    return _whole(intake, found, decoded)


def _other_plan(intake: Intake, entry: Descriptor, depth: int) -> _OtherPlan:
    """A nested index or an artifact the archive holds (`depth`: 1 for the top index's
    entries), read and checked as a pull checks what it fetches: named by its sha256,
    of the size its entry says, nested at most `MAX_INDEX_DEPTH` deep; an artifact's
    blobs (`artifact_blobs`) checked where the archive has them."""
    digest = Digest(entry.digest)
    what = "image index" if entry_kind(entry) == "index" else "artifact manifest"
    algorithm = algorithm_of(digest)
    if algorithm != "sha256":
        # The store keeps a manifest's or an index's blob under its sha256 only.
        raise ArchiveError(
            f"the archive's {what} {digest} is named by a {algorithm} digest: ferryd loads "
            "only manifests and indexes named by their sha256 (as docker does)"
        )
    _, raw = _blob(intake, entry, MAX_MANIFEST_SIZE, what)
    try:
        media_type = media_type_of(entry.mediaType, raw)
        if media_type in SCHEMA1_TYPES:
            check_supported(media_type)
        index = decode_index(raw) if media_type in INDEX_TYPES else None
        blobs = artifact_blobs(raw) if index is None else []
    except ContentError as exc:
        raise ArchiveError(f"the archive's {what} {digest}: {exc}") from None
    if index is not None and depth > MAX_INDEX_DEPTH:
        raise ArchiveError(
            f"refused: the archive's image index {digest} is nested {depth} deep (ferryd "
            f"takes indexes nested at most {MAX_INDEX_DEPTH} deep, as its pulls do)"
        )
    staged: dict[Digest, StagedFile] = {}
    for blob in blobs:
        blob_digest = Digest(blob.digest)
        if algorithm_of(blob_digest) != "sha256":
            raise ArchiveError(
                f"the archive's artifact {digest} names blob {blob_digest}: ferryd keeps "
                "blobs by their sha256 only"
            )
        try:
            found = _sized_blob(intake, blob)
        except ArchiveError as exc:
            raise ArchiveError(f"the archive's artifact {digest}: {exc}") from None
        if found is not None:
            staged[blob_digest] = found
    return _OtherPlan(FetchedManifest(media_type, digest, raw), index, blobs, staged)


def _whole(intake: Intake, found: list[_OtherPlan], decoded: _Decoded) -> list[_OtherPlan]:
    """Of `found`, those the archive holds whole (a pull keeps them so, and a push sends
    them so): an artifact with every blob it names, a nested index with each image it
    lists (`_entry_image`, kept as its `children`) and each nested index and artifact
    it lists whole in turn. One that lacks a part is left out with all that list it."""
    by_digest = {other.manifest.digest: other for other in found}
    listing: dict[Digest, list[Digest]] = {}  # of each, the nested indexes listing it
    partial: list[Digest] = []
    for other in found:
        digest = other.manifest.digest
        if other.index is None:
            if len(other.staged) < len(other.blobs):
                partial.append(digest)
            continue
        for entry in other.index.manifests:
            child = Digest(entry.digest)
            if entry_kind(entry) in ("index", "unknown"):
                if child in by_digest:
                    listing.setdefault(child, []).append(digest)
                else:
                    partial.append(digest)
                continue
            present = _resolve_blob(intake, child) is not None
            plan = _entry_image(intake, entry, decoded) if present else None
            if plan is None:
                partial.append(digest)
            else:
                other.children[child] = plan
    left_out: set[Digest] = set()
    while partial:
        digest = partial.pop()
        if digest not in left_out:
            left_out.add(digest)
            partial += listing.get(digest, [])
    return [other for other in found if other.manifest.digest not in left_out]


@dataclass(frozen=True, slots=True)
class _PlannedEntry:
    entry: Descriptor
    plan: _ImagePlan


def _entries_of(entries: list[Descriptor], plans: list[_ImagePlan]) -> list[_PlannedEntry]:
    by_digest = {plan.manifest.digest: plan for plan in plans if plan.manifest is not None}
    return [
        _PlannedEntry(entry, by_digest[Digest(entry.digest)])
        for entry in entries
        if entry.digest in by_digest
    ]


def _oci_plan(
    intake: Intake, manifest: FetchedManifest, names: list[Reference], decoded: _Decoded
) -> _ImagePlan:
    """The image a manifest describes, planned once however often it is named."""
    key = (manifest.digest, manifest.media_type)
    return _named(decoded.images.get(key, lambda: _oci_image(intake, manifest, decoded)), names)


def _oci_image(intake: Intake, manifest: FetchedManifest, decoded: _Decoded) -> _ImagePlan:
    try:
        image = decode_manifest(manifest.raw)
    except ContentError as exc:
        raise ArchiveError(f"the archive's manifest {manifest.digest}: {exc}") from None
    digest = Digest(image.config.digest)
    staged = _sized_blob(intake, image.config)
    if staged is None:
        raise _Missing(
            digest,
            ArchiveError(
                f"the archive's manifest {manifest.digest} names config {image.config.digest}, "
                "which the archive does not have"
            ),
        )
    config = _image_config(decoded, staged, layout.blob_name(digest), image.config.digest)
    image_id, diff_ids = config.image_id, list(config.diff_ids)
    if len(image.layers) != len(diff_ids):
        raise _Missing(
            image_id,
            ArchiveError(
                f"the archive's manifest {manifest.digest} lists {len(image.layers)} layers, "
                f"but its image config has {len(diff_ids)} DiffIDs"
            ),
        )
    layers = []
    for descriptor in image.layers:
        staged = _resolve_blob(intake, Digest(descriptor.digest))
        if staged is None:
            raise _Missing(
                image_id,
                ArchiveError(
                    f"the archive's manifest {manifest.digest} names layer {descriptor.digest}, "
                    "which the archive does not have"
                ),
            )
        _check_size(staged, descriptor)
        layers.append(_LayerPlan(staged, descriptor.mediaType, tuple(descriptor.urls or ())))
    return _ImagePlan(
        image_id,
        config.raw,
        image.config.mediaType,
        diff_ids,
        layers,
        config.platform,
        [],
        manifest,
    )


def _docker_plans(intake: Intake, decoded: _Decoded) -> list[_ImagePlan]:
    _, raw = _read(intake, layout.MANIFEST_JSON, layout.MAX_ARCHIVE_JSON, "its manifest")
    items = layout.decode_manifest_json(raw)
    _check_listed(len(items), "images", "manifest.json", MAX_ARCHIVE_IMAGES)
    tags = sum(len(item.RepoTags or ()) for item in items)
    _check_listed(tags, "tags", "manifest.json", MAX_ARCHIVE_TAGS)
    layers_listed = sum(len(item.Layers) for item in items)
    _check_listed(layers_listed, "layers", "manifest.json", MAX_ARCHIVE_LAYERS)
    plans = []
    for item in items:
        config = _image_config(decoded, intake.resolve(item.Config), item.Config)
        image_id, diff_ids = config.image_id, list(config.diff_ids)
        if len(item.Layers) != len(diff_ids):
            raise ArchiveError(
                f"the archive's manifest.json lists {len(item.Layers)} layers for image "
                f"{short_id(image_id)}, but its config has {len(diff_ids)} DiffIDs"
            )
        sources = item.LayerSources or {}
        layers = []
        compressions = []
        for path, diff_id in zip(item.Layers, diff_ids, strict=True):
            staged = intake.resolve(path)
            if staged is None:
                raise ArchiveError(
                    f"the archive's manifest.json names layer {_shown(path)}, which the "
                    "archive does not have"
                )
            compressions.append(staged.compression)
            source = sources.get(diff_id)
            if source is None:
                layers.append(_LayerPlan(staged, ""))
            else:
                layers.append(_LayerPlan(staged, source.mediaType, tuple(source.urls or ())))
        # Docker's formats unless a layer is zstd, which only OCI manifests can describe.
        family: Family = "oci" if Compression.ZSTD in compressions else "docker"
        for layer in layers:
            if not layer.media_type:
                layer.media_type = layer_media_type(family, layer.staged.compression) or ""
        plans.append(
            _ImagePlan(
                image_id,
                config.raw,
                OCI_CONFIG if family == "oci" else DOCKER_CONFIG,
                diff_ids,
                layers,
                config.platform,
                [layout.tagged(tag) for tag in item.RepoTags or []],
            )
        )
    return plans


def _shown(path: str) -> str:
    try:
        return clean_name(path)
    except ArchiveError:
        return repr(path)


def _check_layers(intake: Intake, plan: _ImagePlan) -> None:
    """Each layer file decompresses to the DiffID the config gives it."""
    for layer, diff_id in zip(plan.layers, plan.diff_ids, strict=True):
        staged = layer.staged
        if staged.broken is not None:
            raise ArchiveError(
                f"layer {staged.name} of image {short_id(plan.image_id)} is broken: {staged.broken}"
            )
        if staged.diff_id != diff_id:
            raise ArchiveError(
                f"layer {staged.name} of image {short_id(plan.image_id)} has DiffID "
                f"{staged.diff_id}, but the image config says {diff_id}"
            )


# -- 3. commit -------------------------------------------------------------------------


def _commit(store: Store, planned: _Plans, default_platform: Platform) -> list[LoadedImage]:
    layers, blobs = store.layers, store.blobs
    plans = planned.images
    variants = _variants(planned)
    held: list[Digest] = []
    pinned: list[Digest] = []
    written: list[Digest] = []  # blobs this load added to the store

    def pin(digest: Digest) -> None:
        blobs.pins.acquire(digest)
        pinned.append(digest)

    def put(raw: bytes, digest: Digest) -> None:
        if not blobs.has(digest):
            written.append(digest)
        blobs.put(raw, digest)

    def release() -> None:
        for chain in held:
            layers.holds.release(chain)
        for digest in pinned:
            blobs.pins.release(digest)
        held.clear()
        pinned.clear()

    try:
        # Hold first, then look (a removal between the two cannot take the layer): a
        # layer stored already is used as it is; the blobs of the others are moved in.
        moving: dict[Digest, StagedFile] = {}
        for plan in [*plans, *variants]:
            for chain, layer in zip(chain_ids(plan.diff_ids), plan.layers, strict=True):
                layers.holds.acquire(chain)
                held.append(chain)
                if _stored(store, chain, layer, plan):
                    continue
                digest = layer.staged.digest
                if digest not in moving:
                    pin(digest)
                    if not blobs.has(digest):
                        moving[digest] = layer.staged
            pin(plan.image_id)
            if plan.manifest is not None:
                pin(plan.manifest.digest)
        for indexed in planned.indexes:
            pin(indexed.index.digest)  # what it is put under below
            for other in indexed.others:
                pin(other.manifest.digest)
                for digest, staged in other.staged.items():
                    pin(digest)
                    if digest not in moving and not blobs.has(digest):
                        moving[digest] = staged
        # Blob files first, each fsync'd, outside the transaction: the database lock is
        # never held across a disk flush, and a row never points at a missing blob.
        for digest, staged in moving.items():
            blobs.move_in(staged.path, digest, fsync=True, sync_dir=False)
            written.append(digest)
        # Also when nothing moved: a blob found in the store may be a pull's, renamed in
        # and not flushed yet.
        blobs.sync(pinned)
        for plan in [*plans, *variants]:
            put(plan.config, plan.image_id)
            if plan.manifest is not None:
                put(plan.manifest.raw, plan.manifest.digest)
        for indexed in planned.indexes:
            put(indexed.index.raw, indexed.index.digest)
            for other in indexed.others:
                put(other.manifest.raw, other.manifest.digest)
        with store.db.transaction():
            loaded = {plan.image_id: _register(store, plan, held) for plan in plans}
            for plan in variants:
                _register_variant(store, plan)
            results = [loaded[plan.image_id] for plan in plans if not plan.in_index or plan.names]
            for indexed in planned.indexes:
                result = _register_index(store, indexed, loaded, default_platform)
                if result is not None:
                    results.append(result)
            forget_unnamed_indexes(store)  # an index a name moved off
            return results
    except FerrydError:
        # The disk or the database failed (what else is raised is a bug, left as a crash
        # leaves it, for the sweep): what this load added goes again, once let go.
        release()
        take_back(store, written)
        raise
    finally:
        release()


def _register_index(
    store: Store,
    indexed: _IndexPlan,
    loaded: dict[Digest, LoadedImage],
    default_platform: Platform,
) -> LoadedImage | None:
    """Keep the index and point its names at it (and at its image for the default
    platform); None when none of its images was loaded (another platform's)."""
    index = indexed.index
    children = [child for child in indexed.children if child.image_id in loaded]
    if not children:
        return None
    store.indexes.add(index.digest, index.media_type, index.raw, indexed.decoded)
    for other in indexed.others:  # deeper first, as a pull keeps them
        manifest = other.manifest
        if other.index is not None:
            store.indexes.add(manifest.digest, manifest.media_type, manifest.raw, other.index)
        else:
            store.indexes.add_artifact(
                manifest.digest, manifest.media_type, manifest.raw, other.blobs
            )
    entries = store.indexes.entries(index.digest)
    stored = store.indexes.stored_children(index.digest)
    image_id = default_child(entries, stored, default_platform)
    if image_id is None:
        return None
    replaced = []
    target = Target(image_id, index.digest)
    for reference in indexed.names:
        before = store.references.point(reference, target)
        if before is not None and before.image_id != image_id and before.index != index.digest:
            replaced.append((reference, before.image_id))
    store.references.repoint_index(index.digest, image_id)
    platforms = [
        str(entry.platform)
        for entry in entries
        if entry.kind == "image" and entry.digest in stored and entry.platform is not None
    ]
    return LoadedImage(
        image_id,
        list(indexed.names),
        replaced,
        sum(loaded[child.image_id].layers_loaded for child in children),
        sum(loaded[child.image_id].layers_reused for child in children),
        manifest=index.digest,
        index=index.digest,
        platforms=platforms,
    )


def _variants(planned: _Plans) -> list[_ImagePlan]:
    """The platforms of the indexes loaded whose image another plan loads with another
    manifest (gzip and zstd entries of one config: plans are one per image): their
    manifests, and the layer blobs those name, are kept too."""
    kept = {plan.manifest.digest for plan in planned.images if plan.manifest is not None}
    variants = []
    for indexed in planned.indexes:
        for child in indexed.children:
            if child.manifest is not None and child.manifest.digest not in kept:
                kept.add(child.manifest.digest)
                variants.append(child)
    return variants


def _stored(store: Store, chain: Digest, layer: _LayerPlan, plan: _ImagePlan) -> bool:
    """Whether the layer is stored as the plan needs it: with the blob its manifest
    names, if it has one (a push or save sends that blob); else in any blob."""
    if plan.manifest is not None:
        return store.layers.has_blob(chain, layer.staged.digest)
    return store.layers.get(chain) is not None


def _register_variant(store: Store, plan: _ImagePlan) -> None:
    """Keep another manifest of an image `_register` stored, with the blobs it names."""
    assert plan.manifest is not None
    for chain, layer in zip(chain_ids(plan.diff_ids), plan.layers, strict=True):
        store.layers.add_blob(chain, layer.staged.digest, layer.media_type, layer.staged.size)
    manifest = plan.manifest
    store.manifests.add(manifest.digest, plan.image_id, manifest.media_type, manifest.raw)


def _register(store: Store, plan: _ImagePlan, held: list[Digest]) -> LoadedImage:
    parent: Digest | None = None
    loaded = reused = 0
    chains = chain_ids(plan.diff_ids)
    for chain, layer, diff_id in zip(chains, plan.layers, plan.diff_ids, strict=True):
        if store.layers.get(chain) is None:
            staged = layer.staged
            store.layers.register(
                parent,
                diff_id,
                staged.digest,
                layer.media_type,
                staged.size,
                staged.uncompressed_size,
                layer.urls,
            )
            held.append(chain)  # register holds what it registers
            loaded += 1
        else:
            if plan.manifest is not None:
                # The manifest kept names this blob: a push or save sends it.
                staged = layer.staged
                store.layers.add_blob(chain, staged.digest, layer.media_type, staged.size)
            reused += 1
        parent = chain
    size = sum(store.layers.size_of(chain) for chain in chains)
    store.images.put(plan.config, media_type=plan.config_media_type, size=size)
    if plan.manifest is not None:
        manifest = plan.manifest
        store.manifests.add(manifest.digest, plan.image_id, manifest.media_type, manifest.raw)
    replaced = []
    for reference in plan.names:
        before = store.references.add(reference, plan.image_id)
        if before is not None and before != plan.image_id:
            replaced.append((reference, before))
    kept = plan.manifest.digest if plan.manifest is not None else None
    return LoadedImage(plan.image_id, list(plan.names), replaced, loaded, reused, kept)
