"""Content-addressed blobs: `blobs/<algorithm>/<hex>`, only ever with the right content.

New content is written to a temp file (or a partial download) beside the store, fsync'd,
then renamed into place, so a crash leaves either the whole blob or none of it. A crash
can leave a `.tmp-*` file behind, or a blob no row references yet: the sweep
(`ferryd.store.sweep`) removes those.

A write the disk refuses (full, read-only, failing) raises the `StoreError` that says so.
"""

from __future__ import annotations

import contextlib
import os
import tempfile
import threading
from collections.abc import Iterable, Iterator
from contextlib import AbstractContextManager
from pathlib import Path

from ferryd.errors import DigestMismatchError, StoreError, disk_errors
from ferryd.oci.digest import Digest, algorithm_of, hex_of, sha256_digest
from ferryd.store.refcount import RefCounter, Watch

TEMP_PREFIX = ".tmp-"


class BlobStore:
    def __init__(self, root: Path) -> None:
        self.root = root
        self._blobs = root / "blobs"
        self._partial = root / "partial"
        with self.disk_errors(root):
            for directory in (self._blobs / "sha256", self._partial):
                directory.mkdir(parents=True, exist_ok=True)
            # What an earlier process renamed in and did not flush (it died first) is
            # flushed now: `sync` counts only this process's renames.
            for directory in self._blobs.iterdir():
                if directory.is_dir():
                    _fsync_dir(directory)
        # Blobs a pull has chosen but not yet registered a layer on, and blobs written
        # just before the rows that will reference them: never collected.
        self.pins: RefCounter[Digest] = RefCounter()
        # Blobs a removal left because they were pinned (`delete_unless_used`): whoever
        # lets go of them deletes those no row references by then (`gc.unpin`).
        self._deferred: set[Digest] = set()
        self._deferred_lock = threading.Lock()
        # Temp files `put` is writing: the sweep leaves them alone.
        self._writing: set[str] = set()
        self._writing_lock = threading.Lock()
        # The blobs renamed in whose names may not be durable yet, each with its rename's
        # number: an fsync of its directory that began after that rename makes it so. A
        # rename and its entry are one step under the lock: a caller that finds a blob
        # there (and writes nothing) and then calls `sync` sees it.
        self._renames = 0
        self._unflushed: dict[Path, int] = {}
        self._sync_lock = threading.Lock()

    @property
    def blobs_dir(self) -> Path:
        return self._blobs

    @property
    def partial_dir(self) -> Path:
        return self._partial

    def disk_errors(self, path: Path) -> AbstractContextManager[None]:
        """An OSError the disk is to blame for (full, read-only, failing) becomes the
        `StoreError` that tells the operator what to do."""
        return disk_errors(path, self.root)

    @contextlib.contextmanager
    def pinned(self, *digests: Digest) -> Iterator[None]:
        """Keep the sweep off blobs stored just before the rows that will need them."""
        for digest in digests:
            self.pins.acquire(digest)
        try:
            yield
        finally:
            for digest in digests:
                self.pins.release(digest)

    @contextlib.contextmanager
    def unless_writing(self, temp: Path) -> Iterator[bool]:
        """Whether `temp` is a leftover (True) or a file `put` is writing now (False);
        while the block runs, `put` can neither start nor finish a file (a `put` that
        finished since `temp` was listed has renamed it away: check that it exists)."""
        with self._writing_lock:
            yield temp.name not in self._writing

    def path(self, digest: Digest) -> Path:
        return self._blobs / algorithm_of(digest) / hex_of(digest)

    def partial_path(self, digest: Digest) -> Path:
        """Where an unfinished download of `digest` lives until it is verified."""
        return self._partial / f"{algorithm_of(digest)}-{hex_of(digest)}"

    def has(self, digest: Digest) -> bool:
        return self.path(digest).is_file()

    def size(self, digest: Digest) -> int:
        return self.path(digest).stat().st_size

    def commit_partial(self, digest: Digest, *, sync_dir: bool = True) -> None:
        """Move a verified, fsync'd partial download into the store (see `move_in`)."""
        self.move_in(self.partial_path(digest), digest, sync_dir=sync_dir)

    def move_in(
        self, source: Path, digest: Digest, *, fsync: bool = False, sync_dir: bool = True
    ) -> None:
        """Rename a verified file on the store's filesystem (a partial download, a file a
        load or an import staged) into the store as `digest`, never copied: a crash
        leaves the whole blob or none of it. `fsync`: flush the file first, when its
        writer has not. `sync_dir=False` leaves the directory's fsync to one `sync()`
        for several blobs, which must come before any row that references them."""
        target = self.path(digest)
        with self.disk_errors(target):
            if fsync:
                fd = os.open(source, os.O_RDONLY)
                try:
                    os.fsync(fd)
                finally:
                    os.close(fd)
            if not target.parent.is_dir():  # a digest algorithm's first blob
                target.parent.mkdir(parents=True, exist_ok=True)
                _fsync_dir(self._blobs)  # the new directory's name is durable too
            self._rename(source, target, sync_dir=sync_dir)

    def _rename(self, source: Path | str, target: Path, *, sync_dir: bool) -> None:
        """Rename `source` to `target`, its name made durable now (`sync_dir`) or by the
        next `sync`. Counted either way: a `sync` that finds the blob there before this
        fsync has ended must not take its name for durable."""
        with self._sync_lock:
            os.replace(source, target)
            self._renames += 1
            self._unflushed[target] = number = self._renames
        if sync_dir:
            _fsync_dir(target.parent)
            self._flushed(number, {target.parent})  # the renames before it there too

    def sync(self, digests: Iterable[Digest] | None = None) -> None:
        """Make the names of blobs moved in without `sync_dir` durable, before the rows
        that reference them are written: an fsync of the directories of those not
        durable yet, if any; with `digests` (the blobs the rows will name), only if one
        of those is not: another pull's renames are that pull's to flush. An up-to-date
        pull writes nothing and flushes nothing: on ext4 a directory's fsync commits the
        journal, and waits for every block other pulls have written. The lock is not
        held while the disk flushes: renames go on meanwhile."""
        named = None if digests is None else [self.path(digest) for digest in digests]
        with self._sync_lock:
            waiting = self._unflushed.keys() if named is None else self._unflushed.keys() & named
            if not waiting:
                return
            number = self._renames
            directories = {target.parent for target in self._unflushed}
        for directory in sorted(directories):
            with self.disk_errors(directory):
                _fsync_dir(directory)
        self._flushed(number, directories)

    def _flushed(self, number: int, directories: set[Path]) -> None:
        """The renames into `directories` up to `number` are durable: an fsync of each
        that began after them has ended."""
        with self._sync_lock:
            for target, renamed in list(self._unflushed.items()):
                if renamed <= number and target.parent in directories:
                    del self._unflushed[target]

    def discard_partial(self, digest: Digest) -> None:
        self.partial_path(digest).unlink(missing_ok=True)

    def discard_partial_if_empty(self, digest: Digest) -> None:
        """A download that failed before its first byte leaves no file behind."""
        path = self.partial_path(digest)
        try:
            if path.stat().st_size == 0:
                path.unlink()
        except FileNotFoundError:
            pass

    def put(self, data: bytes, expected: Digest | None = None, *, sync_dir: bool = True) -> Digest:
        """Store a small blob held in memory (configs, manifests); see `commit_partial`
        for `sync_dir`."""
        digest = sha256_digest(data)
        if expected is not None and digest != expected:
            raise DigestMismatchError(f"blob has digest {digest}, expected {expected}")
        target = self.path(digest)
        if target.exists():
            if sync_dir:  # another caller may have renamed it in and not synced yet
                self.sync([digest])
            return digest
        with self.disk_errors(target):
            with self._writing_lock:
                fd, temp = tempfile.mkstemp(dir=target.parent, prefix=TEMP_PREFIX)
                self._writing.add(os.path.basename(temp))
            try:
                with os.fdopen(fd, "wb") as file:
                    file.write(data)
                    file.flush()
                    os.fsync(file.fileno())
                self._rename(temp, target, sync_dir=sync_dir)
            except BaseException:
                Path(temp).unlink(missing_ok=True)
                raise
            finally:
                with self._writing_lock:
                    self._writing.discard(os.path.basename(temp))
        return digest

    def get(self, digest: Digest) -> bytes:
        try:
            return self.path(digest).read_bytes()
        except FileNotFoundError:
            raise StoreError(f"blob {digest} is missing from the store") from None

    def delete(self, digest: Digest) -> None:
        self.path(digest).unlink(missing_ok=True)

    def take_unless_used(
        self, digest: Digest, path: Path, watch: Watch[Digest], *, to: Path | None = None
    ) -> Path | None:
        """Move `path` (the blob `digest`, or its partial download) to `to`, or else aside
        to be deleted, unless someone has pinned `digest` since `watch` began (see
        `RefCounter.watching`); where it went, or None (in use, or gone). Aside is a temp
        file beside the blobs: a sweep removes it if the process dies before the caller
        has unlinked it. One who pins `digest` once it is chosen waits for the rename to
        end, then finds nothing there; pins of other digests (the event loop's among
        them) do not wait for it (`RefCounter.unless_used`)."""
        aside = self._blobs / "sha256" / f"{TEMP_PREFIX}removed-{path.parent.name}-{path.name}"
        target = to if to is not None else aside
        with self.pins.unless_used(digest, watch) as unused:
            if not unused:
                return None
            try:
                os.replace(path, target)
            except FileNotFoundError:
                return None
        return target

    def delete_unless_used(self, digest: Digest, watch: Watch[Digest]) -> int:
        """Delete the blob `digest` unless someone has pinned it since `watch` began (a
        pull or load that found it there and will reference it, a save that reads it);
        the bytes freed. One that stays is noted (`deferred`), for whoever lets go of it
        last to delete if no row references it by then."""
        aside = self.take_unless_used(digest, self.path(digest), watch)
        # Once used during a watch, always so for it: None was that, or no file.
        if aside is None and self.pins.used_since(digest, watch):
            with self._deferred_lock:
                self._deferred.add(digest)
            return 0
        self.undefer([digest])
        return _unlink(aside)

    def deferred(self, digests: Iterable[Digest]) -> set[Digest]:
        """Those of `digests` a removal left because they were pinned."""
        with self._deferred_lock:
            return self._deferred.intersection(digests)

    def undefer(self, digests: Iterable[Digest]) -> None:
        """`digests` are no removal's business any more (gone, or referenced again)."""
        with self._deferred_lock:
            self._deferred.difference_update(digests)

    def usage(self) -> tuple[int, int]:
        """Bytes and count of the blobs on disk (temp files left out): one scandir of
        each algorithm's directory and a stat per blob. Blocking: from a worker thread.

        Measured here: 0.7 ms for 300 blobs, 8 ms for 3,000, 84 ms for 30,000 (inodes
        cached). Summing the database's sizes was 5x faster but misses image configs
        (no row holds their size) and takes the lock every pull's transaction needs;
        this counts what is on disk, and holds no lock.
        """
        size = count = 0
        with os.scandir(self._blobs) as algorithms:
            directories = [entry.path for entry in algorithms if entry.is_dir()]
        for directory in directories:
            with os.scandir(directory) as blobs:
                for blob in blobs:
                    if blob.name.startswith("."):
                        continue
                    try:
                        size += blob.stat(follow_symlinks=False).st_size
                    except FileNotFoundError:  # removed since it was listed
                        continue
                    count += 1
        return size, count


def _unlink(path: Path | None) -> int:
    """Remove `path` if there is one; the bytes it freed."""
    if path is None:
        return 0
    try:
        size = path.stat().st_size
        path.unlink()
    except FileNotFoundError:
        return 0
    return size


def _fsync_dir(directory: Path) -> None:
    fd = os.open(directory, os.O_RDONLY | os.O_DIRECTORY)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)
