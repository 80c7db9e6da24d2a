"""Sweeping what a crash or a failed pull leaves behind, so that it never accumulates.

A blob is written before the rows that reference it and deleted after the rows are
gone, so the store never points at a missing blob; but a crash between the two steps
leaves a blob file no row references, and `BlobStore.put` can leave a `.tmp-*` file.
The daemon sweeps at start (before it serves) and after each `rmi`:

- blob files no layer, image, manifest or index row references, unless a running
  transfer pins them (a pull between storing a blob and registering it), or pinned them
  at any moment since the sweep began (a pull or load that found the file there and
  registers a row on it: `RefCounter.watching`). A layer blob written in the last
  `PARTIAL_MAX_AGE` is most likely one a pull verified and had not yet registered when
  it failed or the daemon died: it goes back to `partial/` as a complete partial
  download, which the next pull of its image verifies from disk instead of fetching
  again. Older ones, configs, manifests and indexes (JSON), and those an rmi was
  deleting when the daemon died (it notes them first: `note_removal`) go;
- `.tmp-*` files in the blob directories that no `put` is writing, and the staging
  directories under `loading/` that no running load uses (`ferryd.store.staging`),
  counted with them;
- partial downloads whose blob is already stored, or that nobody resumed for
  `PARTIAL_MAX_AGE` (7 days, by the file's mtime). Others stay: the next pull of the
  image resumes them with a Range request.

Each sweep that removed something logs one `store.swept` line with counts and bytes.
"""

from __future__ import annotations

import os
import time
from dataclasses import dataclass, field
from pathlib import Path

import structlog

from ferryd.errors import FerrydError, InvalidDigestError
from ferryd.oci.digest import Digest, parse_digest
from ferryd.store.blobs import TEMP_PREFIX, BlobStore
from ferryd.store.gc import kept_blobs
from ferryd.store.staging import sweep_staging
from ferryd.store.store import Store

log = structlog.get_logger("ferryd.store")

PARTIAL_MAX_AGE = 7 * 24 * 3600.0
"""Seconds after its last write that a partial download is given up (its mtime)."""

REMOVING_NAME = "removing"  # the blobs the last rmi deletes, until a sweep has run


def note_removal(store: Store, blobs: set[Digest]) -> None:
    """Note the blobs an rmi is about to delete (before its transaction commits), so
    that the next sweep deletes them outright if a crash leaves them behind, instead of
    keeping their layers for a resume. Best effort, never flushed: without the note
    (an OS crash, a full disk) they are only kept longer."""
    try:
        fd = os.open(store.root / REMOVING_NAME, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
        with os.fdopen(fd, "w") as file:
            file.write("".join(f"{digest}\n" for digest in sorted(blobs)))
    except OSError as exc:
        log.warning("store.note_failed", path=str(store.root / REMOVING_NAME), error=str(exc))


def _noted_removals(store: Store) -> set[Digest]:
    try:
        lines = (store.root / REMOVING_NAME).read_text().split()
    except FileNotFoundError:
        return set()
    return {digest for line in lines if (digest := _digest(*line.partition(":")[::2]))}


@dataclass
class Inventory:
    """What the blob and partial directories hold, by kind."""

    blobs: dict[Digest, Path] = field(default_factory=dict)
    temp_files: list[Path] = field(default_factory=list)
    partials: dict[Digest, Path] = field(default_factory=dict)
    stray: list[Path] = field(default_factory=list)  # files that are none of the above


def scan(blobs: BlobStore) -> Inventory:
    """List the files under `blobs/` and `partial/` (nothing is read)."""
    found = Inventory()
    if blobs.blobs_dir.is_dir():
        for directory in sorted(blobs.blobs_dir.iterdir()):
            if not directory.is_dir():
                found.stray.append(directory)
                continue
            for path in sorted(directory.iterdir()):
                if path.name.startswith(TEMP_PREFIX):
                    found.temp_files.append(path)
                elif (digest := _digest(directory.name, path.name)) is not None:
                    found.blobs[digest] = path
                else:
                    found.stray.append(path)
    if blobs.partial_dir.is_dir():
        for path in sorted(blobs.partial_dir.iterdir()):
            algorithm, _, hex_part = path.name.partition("-")
            digest = _digest(algorithm, hex_part)
            if digest is not None and path.is_file():
                found.partials[digest] = path
            elif digest is None or path.exists():
                found.stray.append(path)
            # Else gone since the listing: a download renamed into the store meanwhile.
    return found


def _digest(algorithm: str, hex_part: str) -> Digest | None:
    try:
        return parse_digest(f"{algorithm}:{hex_part}")
    except InvalidDigestError:
        return None


def referenced_blobs(store: Store) -> set[Digest]:
    """Every blob a row needs (each layer's blobs, image configs, manifests, indexes,
    the blobs of artifacts an index lists), in one snapshot."""
    with store.db.snapshot():
        return kept_blobs(store)


@dataclass(frozen=True, slots=True)
class Leftovers:
    """What nothing needs any more, as the sweep and `ferryd fsck` see it."""

    blobs: list[tuple[Digest, Path]]  # no row references them, no transfer pins them
    temp_files: list[Path]
    stored_partials: list[tuple[Digest, Path]]  # the blob is stored already
    pinned: frozenset[Digest]  # what running transfers pinned when this was taken
    referenced: frozenset[Digest]


def leftovers(store: Store, inventory: Inventory | None = None) -> Leftovers:
    """Orphans in the store. Files are listed first, then the pins read, then the rows:
    a blob is pinned before it is stored and unpinned after its row is committed, so a
    file a running pull is adding is always seen pinned or referenced."""
    found = inventory if inventory is not None else scan(store.blobs)
    pinned = frozenset(store.blobs.pins.keys())
    referenced = frozenset(referenced_blobs(store))
    return Leftovers(
        blobs=[
            (digest, path)
            for digest, path in found.blobs.items()
            if digest not in referenced and digest not in pinned
        ],
        temp_files=list(found.temp_files),
        stored_partials=[
            (digest, path)
            for digest, path in found.partials.items()
            if digest not in pinned and store.blobs.has(digest)
        ],
        pinned=pinned,
        referenced=referenced,
    )


@dataclass(frozen=True, slots=True)
class SweepResult:
    blobs: int = 0  # deleted
    blobs_to_partial: int = 0  # kept as partial downloads, for the next pull
    temp_files: int = 0
    partials: int = 0
    bytes: int = 0  # freed

    @property
    def removed(self) -> int:
        return self.blobs + self.blobs_to_partial + self.temp_files + self.partials


def sweep(store: Store, *, reason: str, now: float | None = None) -> SweepResult:
    """Remove the leftovers (see the module's docstring); log `store.swept` if any.

    Never fails: what it cannot do is logged (`store.sweep_failed`) and left for the
    next sweep, as the removal or the start that asked for it did succeed.
    """
    counts = {"blobs": 0, "blobs_to_partial": 0, "temp_files": 0, "partials": 0}
    freed = 0
    try:
        freed = _sweep(store, counts, (time.time() if now is None else now) - PARTIAL_MAX_AGE)
    except (OSError, FerrydError) as exc:
        log.warning("store.sweep_failed", reason=reason, error=str(exc))
    result = SweepResult(**counts, bytes=freed)
    if result.removed:
        log.info("store.swept", reason=reason, **counts, bytes=freed)
    return result


def _sweep(store: Store, counts: dict[str, int], cutoff: float) -> int:
    freed = 0
    blobs = store.blobs
    # A blob or partial file pinned at any moment from before the listing until it
    # would go stays: a pull or load that found it there uses it.
    with store.maintenance, blobs.pins.watching() as watch:
        found = scan(blobs)
        orphans = leftovers(store, found)
        stale = {digest for digest, _ in orphans.stored_partials}
        for digest, path in found.partials.items():
            if digest in orphans.pinned:
                continue  # a transfer is writing it
            if digest in stale or _older_than(path, cutoff):
                freed += _taken(blobs.take_unless_used(digest, path, watch), counts, "partials")
        removing = _noted_removals(store)
        for digest, path in orphans.blobs:
            if digest in removing or _older_than(path, cutoff) or _is_json(path):
                taken = blobs.take_unless_used(digest, path, watch)
                freed += _taken(taken, counts, "blobs")
            else:
                # A whole, verified blob replaces any shorter partial download of it.
                taken = blobs.take_unless_used(digest, path, watch, to=blobs.partial_path(digest))
                counts["blobs_to_partial"] += taken is not None
            if taken is not None:
                blobs.undefer([digest])  # no removal waits for it any more
        # Nor for one a row references again (a pull that had it pinned registered it).
        blobs.undefer(blobs.deferred(orphans.referenced))
        for path in orphans.temp_files:
            with store.blobs.unless_writing(path) as leftover:
                if leftover:
                    freed += _remove(path, counts, "temp_files")
        staged, staged_bytes = sweep_staging(store.root)
        counts["temp_files"] += staged
        freed += staged_bytes
        (store.root / REMOVING_NAME).unlink(missing_ok=True)
    return freed


def _older_than(path: Path, moment: float) -> bool:
    try:
        return path.stat().st_mtime < moment
    except FileNotFoundError:
        return False


def _is_json(path: Path) -> bool:
    """Configs, manifests and indexes are JSON objects; layers are tar, gzip or zstd."""
    try:
        with path.open("rb") as file:
            return file.read(1) == b"{"
    except FileNotFoundError:
        return False


def _taken(aside: Path | None, counts: dict[str, int], kind: str) -> int:
    """Unlink what `take_unless_used` set aside (if it did), count it, and return the
    bytes it freed."""
    return _remove(aside, counts, kind) if aside is not None else 0


def _remove(path: Path, counts: dict[str, int], kind: str) -> int:
    """Unlink `path`, count it, and return the bytes it freed (0 if it was gone)."""
    try:
        size = path.stat().st_size
        path.unlink()
    except FileNotFoundError:
        return 0
    counts[kind] += 1
    return size
