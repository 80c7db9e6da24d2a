"""Room kept for the database, so that a store on a full disk can still remove images.

SQLite writes before it frees: a removal appends to the WAL, and opening the database
maps its -shm file. On a disk with no byte left, neither can happen, so `ferryd rmi`
could not free anything and the daemon could not even start. The store therefore keeps
`root/reserve`, a file of `RESERVE_SIZE` bytes it gives back when the disk is (almost)
full, at start and before each removal, and takes again once there is room.
"""

from __future__ import annotations

import errno
import os
from pathlib import Path

import structlog

log = structlog.get_logger("ferryd.store")

RESERVE_SIZE = 2 * 1024 * 1024
RESERVE_NAME = "reserve"


class SpaceReserve:
    def __init__(self, path: Path, size: int = RESERVE_SIZE) -> None:
        self.path = path
        self.size = size

    def free_bytes(self) -> int:
        stats = os.statvfs(self.path.parent)
        return stats.f_bavail * stats.f_frsize

    def keep(self) -> None:
        """Give the reserve back when less than its size is free; take it when at least
        twice its size is. Never fails: without a reserve the store works as well, it only
        has no room kept for a full disk."""
        try:
            free = self.free_bytes()
            held = self.path.is_file()
            if held and free < self.size:
                self.release(free)
            elif not held and free >= 2 * self.size:
                self._take()
        except OSError as exc:
            log.warning("store.reserve_failed", path=str(self.path), error=str(exc))

    def release(self, free: int | None = None) -> bool:
        """Delete the reserve (if there is one) so the database can write; True if it did."""
        try:
            self.path.unlink()
        except FileNotFoundError:
            return False
        log.warning(
            "store.reserve_released",
            path=str(self.path),
            bytes=self.size,
            free_bytes=free if free is not None else self.free_bytes(),
        )
        return True

    def _take(self) -> None:
        temp = self.path.with_name(f".tmp-{self.path.name}")
        fd = os.open(temp, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
        try:
            try:
                os.posix_fallocate(fd, 0, self.size)
            except OSError as exc:
                if exc.errno not in (errno.EOPNOTSUPP, errno.EINVAL):
                    raise
                os.write(fd, bytes(self.size))  # no fallocate here: real bytes hold room
            os.fsync(fd)
        except OSError:
            os.close(fd)
            temp.unlink(missing_ok=True)
            raise
        os.close(fd)
        os.replace(temp, self.path)
