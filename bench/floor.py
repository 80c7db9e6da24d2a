"""The floor of a pull: the CPU work that verifying an image's blobs cannot avoid.

For each blob, in one thread: sha256 of the blob as stored (its digest), and for a layer
its decompression (isal for gzip, as ferryd does; backports.zstd for zstd; nothing for a
plain tar) and sha256 of the result (its DiffID). The figure is the CPU time of that
thread (`time.thread_time`, so other processes on the machine do not inflate it; reading
the files is left out). The least of `REPEATS` passes, per blob.

A pull that spends N times the floor in CPU seconds does N times the work that cannot be
avoided; what is above 1.0 is the pipeline's own (copies, the event loop, HTTP,
threads handing work over, the store). Measured in every run, beside the pulls it is
compared with: on a shared machine the same work takes more CPU seconds when the
machine is busy (caches, memory bandwidth), and a floor from another hour would skew
every ratio.
"""

from __future__ import annotations

import hashlib
import time
from collections.abc import Iterable, Iterator
from pathlib import Path
from typing import Any

from backports import zstd
from common import Built, log
from isal import isal_zlib

from support.images import blob_path

PIECE = 1 << 20
REPEATS = 3  # passes over an image under 512 MiB; one above
_GZIP = b"\x1f\x8b"
_ZSTD = b"\x28\xb5\x2f\xfd"


def _gzip() -> Any:
    return isal_zlib.decompressobj(wbits=31)


def blob_floor(path: Path, *, layer: bool) -> float:
    """CPU seconds of this thread to hash `path`, and for a layer to inflate it and hash
    what comes out."""
    blob_hash = hashlib.sha256()
    diff_hash = hashlib.sha256()
    spent = 0.0
    with path.open("rb") as fh:
        head = fh.read(4)
        fh.seek(0)
        new: Any = None
        if layer and head.startswith(_GZIP):
            new = _gzip
        elif layer and head.startswith(_ZSTD):
            new = zstd.ZstdDecompressor
        inflate = new() if new is not None else None
        while piece := fh.read(PIECE):
            started = time.thread_time()
            blob_hash.update(piece)
            if inflate is not None:
                data = piece
                while data:
                    if inflate.eof:  # what follows is the next gzip member or zstd frame
                        inflate = new()
                    diff_hash.update(inflate.decompress(data))
                    data = inflate.unused_data if inflate.eof else b""
            elif layer:
                diff_hash.update(piece)
            spent += time.thread_time() - started
    return spent


def _blobs(image: Built) -> Iterator[tuple[str, Path, bool]]:
    """Each of `image`'s blobs (its configs, one per platform of an index, then its
    distinct layers): digest, file, whether it is a layer."""
    for index, digest in enumerate(image.blobs):
        yield digest, blob_path(image.layout, digest), index >= image.configs


def image_floor(image: Built, repeats: int) -> dict[str, float]:
    """Floor CPU seconds of each of `image`'s blobs, the least of `repeats` passes."""
    best: dict[str, float] = {}
    for _ in range(repeats):
        for digest, path, layer in _blobs(image):
            seconds = blob_floor(path, layer=layer)
            best[digest] = min(seconds, best.get(digest, seconds))
    return best


def floors(images: Iterable[Built]) -> dict[str, float]:
    """The floor of every blob of `images` (digest: CPU seconds), measured in this run:
    a floor measured on a quieter (or busier) machine would make every ratio lie."""
    out: dict[str, float] = {}
    for image in images:
        repeats = REPEATS if image.layer_bytes < 512 << 20 else 1
        started = time.perf_counter()
        floor = image_floor(image, repeats)
        log(
            f"floor of {image.name}: {sum(floor.values()):.2f} CPU s "
            f"(best of {repeats}, {time.perf_counter() - started:.0f} s)"
        )
        out.update(floor)
    return out


def floor_pass(images: Iterable[Built]) -> float:
    """One pass over the distinct blobs of `images`, now: the floor of a run, measured
    right after it. The machine's speed drifts by a fifth within minutes here; the best
    of the passes made at the start would compare every run with the quietest moment."""
    seen: dict[str, float] = {}
    for image in images:
        for digest, path, layer in _blobs(image):
            if digest not in seen:
                seen[digest] = blob_floor(path, layer=layer)
    return sum(seen.values())


def floor_of(floor: dict[str, float], digests: Iterable[str]) -> float:
    """The floor of these blobs, each counted once (a blob shared by several images is
    verified once)."""
    return sum(floor[d] for d in set(digests))
