"""Per-load staging directories: where an archive being loaded waits until it is checked.

A tar is read as it arrives, and its entries may come in any order (`manifest.json`
last, as docker writes it), so every file of it is written to a directory of its own
under `root/loading/` before anything says what the files are. The directory is on the
store's filesystem: verified layer blobs are renamed from it into `blobs/`, never
copied. It is removed when the load ends, whether it succeeded or not.

A daemon killed during a load leaves its directory behind; no row ever points into it.
The sweep (`ferryd.store.sweep`, at start and after each rmi) removes every directory
here that no running load of this process is using: one daemon per store, so a
directory nobody here uses is a leftover.
"""

from __future__ import annotations

import contextlib
import shutil
import tempfile
import threading
from collections.abc import AsyncIterator, Iterator
from pathlib import Path

import anyio

from ferryd.errors import disk_errors

STAGING_DIR = "loading"

_lock = threading.Lock()
_active: set[Path] = set()  # directories running loads are writing


@contextlib.asynccontextmanager
async def staged_in(root: Path) -> AsyncIterator[Path]:
    """`staging_directory`, made and removed in a worker thread: removing what a load or
    an import staged (gigabytes, when its layers were stored already or it was refused)
    must not stall the event loop; the removal is shielded, so a cancelled load still
    cleans up."""
    staging = staging_directory(root)
    directory = await anyio.to_thread.run_sync(staging.__enter__)
    try:
        yield directory
    finally:
        with anyio.CancelScope(shield=True):
            await anyio.to_thread.run_sync(staging.__exit__, None, None, None)


@contextlib.contextmanager
def staging_directory(root: Path) -> Iterator[Path]:
    """A new, empty directory under `root/loading/`, removed (with whatever was written
    to it) when the block ends; the sweep leaves it alone until then."""
    base = root / STAGING_DIR
    with disk_errors(base, root), _lock:
        base.mkdir(mode=0o700, exist_ok=True)
        path = Path(tempfile.mkdtemp(dir=base, prefix="load-"))
        _active.add(path)
    try:
        yield path
    finally:
        shutil.rmtree(path, ignore_errors=True)
        with _lock:
            _active.discard(path)


def sweep_staging(root: Path) -> tuple[int, int]:
    """Remove the staging directories no running load uses; (how many, bytes freed)."""
    base = root / STAGING_DIR
    try:
        entries = list(base.iterdir())
    except FileNotFoundError:
        return 0, 0
    removed = freed = 0
    for path in entries:
        with _lock:
            if path in _active:
                continue
        freed += _size(path)
        if path.is_dir() and not path.is_symlink():
            shutil.rmtree(path, ignore_errors=True)
        else:
            path.unlink(missing_ok=True)
        removed += 1
    return removed, freed


def _size(path: Path) -> int:
    if path.is_symlink() or not path.is_dir():
        with contextlib.suppress(OSError):
            return path.lstat().st_size
        return 0
    total = 0
    for item in path.rglob("*"):
        with contextlib.suppress(OSError):
            if item.is_file() and not item.is_symlink():
                total += item.stat().st_size
    return total
