"""`docker import`: a root filesystem tarball becomes a one-layer image, as dockerd's
`ImportImage` makes it.

The body streams through the codec (`ArchiveSink`) in ~1 MiB batches, each decompressed
(plain tar, gzip, bzip2, xz or zstd, told by its first bytes), parsed as a tar and
written and hashed in one worker-thread pass: nothing of it is held in memory. The
layer is stored as the plain tar, so its digest is its DiffID (one hash, no
recompression of what the client may have compressed another way); a push gzips it on
the way, as it does every layer held as a plain tar. It is staged under `loading/` and
renamed into the store only once it is whole and checked.

The tar is checked as a layer is when dockerd applies it: every header, a stream cut
inside an entry, names that leave the root (`../x`, a hard link to `../x`, a
symbolic link whose relative target climbs out) and data after the tar's end other than
zero padding refuse the whole import (400, `ArchiveError`), and nothing of it is kept.

The config is dockerd's: the platform asked for (else this host's), `changes` applied
to an empty container config, `created` now, `comment` the message (default
`Imported from -`) and one history entry. The image is tagged `repo[:tag]` when given.
Events: `import` (the image ID, as dockerd names it), then `tag`.
"""

from __future__ import annotations

import json
import posixpath
from collections.abc import AsyncIterator
from dataclasses import dataclass
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import anyio

from ferryd.codec import BATCH_SIZE, ArchiveSink
from ferryd.distribution.archives import tarstream
from ferryd.distribution.changes import apply_changes, empty_config
from ferryd.distribution.events import ImageEventLogger, failure_logged
from ferryd.errors import ArchiveError, BadRequestError, ContentError, FerrydError
from ferryd.oci.digest import Digest, chain_id, sha256_digest
from ferryd.oci.mediatypes import DOCKER_CONFIG, DOCKER_LAYER_TAR
from ferryd.oci.platform import Platform
from ferryd.oci.reference import Reference
from ferryd.store import Store
from ferryd.store.gc import forget_unnamed_indexes, take_back
from ferryd.store.staging import staged_in

DEFAULT_SOURCE = "-"  # fromSrc: the request body


@dataclass(frozen=True, slots=True)
class ImportResult:
    image_id: Digest
    diff_id: Digest
    size: int  # of the layer, uncompressed
    format: str  # what the body was: tar, gzip, bzip2, xz, zstd


async def import_image(
    store: Store,
    event_logger: ImageEventLogger,
    body: AsyncIterator[bytes],
    *,
    reference: Reference | None,
    platform: Platform,
    message: str,
    changes: list[str],
) -> ImportResult:
    """Import the tarball `body` streams as a one-layer image (see the module)."""
    if platform.os != "linux":
        raise BadRequestError("operating system is not supported")
    config_section = apply_changes(changes)  # a bad change is refused before any byte
    name = str(reference) if reference else DEFAULT_SOURCE
    with failure_logged("import", name):
        async with staged_in(store.root) as directory:
            layer = await _receive(body, directory / "layer.tar")
            created = datetime.now(UTC).isoformat().replace("+00:00", "Z")
            config = _config(platform, config_section, layer.diff_id, message, created)
            image_id = await anyio.to_thread.run_sync(
                _commit, store, layer.path, layer.diff_id, layer.size, config, reference
            )
    event_logger(image_id, image_id, "import", bytes=layer.size, format=layer.format)
    if reference is not None:
        event_logger(image_id, str(reference), "tag")
    return ImportResult(image_id, layer.diff_id, layer.size, layer.format)


@dataclass(frozen=True, slots=True)
class _Layer:
    path: Path
    diff_id: Digest
    size: int
    format: str


async def _receive(body: AsyncIterator[bytes], path: Path) -> _Layer:
    """Stream `body` into `path` as the plain tar, checked; its digest and size."""
    check = _LayerCheck()
    sink = ArchiveSink(path, check.feed, "the imported archive")
    await anyio.to_thread.run_sync(sink.open)
    try:
        batch = bytearray()
        async for chunk in body:
            batch += chunk
            if len(batch) >= BATCH_SIZE:
                data = bytes(batch)
                batch.clear()
                await anyio.to_thread.run_sync(_feed, sink, data)
        data = bytes(batch)

        def end() -> Digest:
            _feed(sink, data)
            try:
                digest = sink.finish()
            except ContentError as exc:
                raise _refused(exc) from None
            check.close()
            return digest

        diff_id = await anyio.to_thread.run_sync(end)
    finally:
        sink.close()
    if sink.size == 0:
        raise ArchiveError(
            "the import is empty: send a tar archive (plain, or compressed with gzip, "
            "bzip2, xz or zstd)"
        )
    return _Layer(path, diff_id, sink.size, sink.format)


def _feed(sink: ArchiveSink, data: bytes) -> None:
    try:
        sink.feed(data)
    except ArchiveError:
        raise
    except ContentError as exc:  # compressed data that does not decompress
        raise _refused(exc) from None


def _refused(exc: ContentError) -> ArchiveError:
    return ArchiveError(f"the import is refused: {exc}")


class _LayerCheck:
    """The tar parser with a layer's rules on names, as dockerd's ApplyLayer has them:
    a name is taken under the root (absolute or not), and must stay under it once
    cleaned; a hard link must point under the root; a relative symbolic link must not
    climb out of it from its own directory.

    After the end-of-archive marker only zeros may follow: tar pads its output to whole
    records (10 KiB for GNU and Python's tar), and those bytes are kept, so the DiffID is
    the digest of the stream as dockerd computes it. Anything else (another tar
    appended, junk) would be stored in the layer without being in its files: refused."""

    def __init__(self) -> None:
        self._reader = tarstream.TarReader(self)
        self._seen = 0  # bytes of the decompressed stream so far

    def feed(self, piece: bytes) -> None:
        start = self._reader.offset
        self._reader.feed(piece)
        if self._reader.ended:
            self._check_trailing(piece, self._reader.offset - start)
        self._seen += len(piece)

    def _check_trailing(self, piece: bytes, used: int) -> None:
        """`piece[used:]` comes after the end-of-archive marker: zeros only."""
        if piece.count(0, used) == len(piece) - used:
            return
        where = self._seen + len(piece) - len(piece[used:].lstrip(b"\0"))
        raise ArchiveError(
            f"refused: data follows the tar's end-of-archive marker (at byte {where}, "
            f"the tar ends at byte {self._reader.offset}): was something appended to it?"
        )

    def close(self) -> None:
        self._reader.close()

    # tarstream.EntryHandler
    def begin(self, entry: tarstream.Entry) -> None:
        name = _under_root(entry.name)
        if name is None:
            raise ArchiveError(f"refused: {entry.name!r} is outside of the root filesystem")
        if entry.kind == tarstream.HARDLINK and _under_root(entry.linkname) is None:
            raise ArchiveError(f"refused: invalid hardlink {entry.name!r} -> {entry.linkname!r}")
        if entry.kind == tarstream.SYMLINK and not entry.linkname.startswith("/"):
            target = posixpath.join(posixpath.dirname(name), entry.linkname)
            if _under_root(target) is None:
                raise ArchiveError(f"refused: invalid symlink {entry.name!r} -> {entry.linkname!r}")

    def data(self, chunk: bytes) -> None:
        return None

    def end(self) -> None:
        return None


def _under_root(name: str) -> str | None:
    """`name` cleaned, relative to the root ("" for the root itself), or None when it
    climbs out of it. An absolute name is taken under the root, as dockerd joins it."""
    if name.startswith("/"):
        return posixpath.normpath(name).lstrip("/")
    cleaned = posixpath.normpath(name) if name else "."
    if cleaned == ".." or cleaned.startswith("../"):
        return None
    return "" if cleaned == "." else cleaned


def _config(
    platform: Platform,
    container: dict[str, Any],
    diff_id: Digest,
    message: str,
    created: str,
) -> bytes:
    """The image config dockerd writes for an import (its fields, in its order)."""
    config: dict[str, Any] = {
        "comment": message,
        "created": created,
        "container_config": empty_config(),
        "config": container,
        "architecture": platform.architecture,
    }
    if platform.variant:
        config["variant"] = platform.variant
    config["os"] = platform.os
    config["rootfs"] = {"type": "layers", "diff_ids": [diff_id]}
    config["history"] = [{"created": created, "comment": message}]
    return json.dumps(config, separators=(",", ":")).encode()


def _commit(
    store: Store,
    staged: Path,
    diff_id: Digest,
    size: int,
    config: bytes,
    reference: Reference | None,
) -> Digest:
    """The layer's blob, then the config, then one transaction for the layer, the image
    and its tag. Held and pinned throughout: a sweep or an rmi cannot take them between."""
    layers, blobs = store.layers, store.blobs
    chain = chain_id(None, diff_id)
    image_id = sha256_digest(config)
    added: list[Digest] = []  # blobs this import put into the store
    layers.holds.acquire(chain)  # hold first, then look
    try:
        with blobs.pinned(diff_id, image_id):
            known = layers.get(chain) is not None
            if not known and not blobs.has(diff_id):
                # The tar was verified and fsync'd as it streamed in.
                blobs.move_in(staged, diff_id)
                added.append(diff_id)
            if not blobs.has(image_id):
                added.append(image_id)
            blobs.put(config, image_id)  # flushed, or flushes one found unflushed
            blobs.sync([diff_id])  # one found there may be a pull's, unflushed
            with store.db.transaction():
                if layers.get(chain) is None:
                    layers.register(None, diff_id, diff_id, DOCKER_LAYER_TAR, size, size)
                    layers.holds.release(chain)  # register holds it too
                store.images.put(config, media_type=DOCKER_CONFIG, size=size)
                if reference is not None:
                    store.references.add(reference, image_id)
                    forget_unnamed_indexes(store)  # the tag may have named an index
    except FerrydError:
        # The disk or the database failed: what this import added goes again (as a
        # failed load's), now that its pins are let go.
        take_back(store, added)
        raise
    finally:
        layers.holds.release(chain)
    return image_id
