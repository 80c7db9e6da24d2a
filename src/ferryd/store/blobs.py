"""Content-addressed blobs: `blobs/<algorithm>/<hex>`, only ever with the right content.

New content is written to a temp file (or a partial download) beside the store, fsync'd,
then renamed into place, so a crash leaves either the whole blob or none of it.
"""

from __future__ import annotations

import os
import tempfile
from pathlib import Path

from ferryd.errors import DigestMismatchError, StoreError
from ferryd.oci.digest import Digest, algorithm_of, hex_of, sha256_digest
from ferryd.store.refcount import RefCounter


class BlobStore:
    def __init__(self, root: Path) -> None:
        self.root = root
        self._blobs = root / "blobs"
        self._partial = root / "partial"
        for directory in (self._blobs / "sha256", self._partial):
            directory.mkdir(parents=True, exist_ok=True)
        # Blobs a pull has chosen but not yet registered a layer on: never collected.
        self.pins: RefCounter[Digest] = RefCounter()

    def path(self, digest: Digest) -> Path:
        return self._blobs / algorithm_of(digest) / hex_of(digest)

    def partial_path(self, digest: Digest) -> Path:
        """Where an unfinished download of `digest` lives until it is verified."""
        return self._partial / f"{algorithm_of(digest)}-{hex_of(digest)}"

    def has(self, digest: Digest) -> bool:
        return self.path(digest).is_file()

    def size(self, digest: Digest) -> int:
        return self.path(digest).stat().st_size

    def commit_partial(self, digest: Digest) -> None:
        """Move a verified, fsync'd partial download into the store."""
        target = self.path(digest)
        target.parent.mkdir(parents=True, exist_ok=True)
        os.replace(self.partial_path(digest), target)
        _fsync_dir(target.parent)

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

    def put(self, data: bytes, expected: Digest | None = None) -> Digest:
        """Store a small blob held in memory (configs, manifests)."""
        digest = sha256_digest(data)
        if expected is not None and digest != expected:
            raise DigestMismatchError(f"blob has digest {digest}, expected {expected}")
        target = self.path(digest)
        if target.exists():
            return digest
        fd, temp = tempfile.mkstemp(dir=target.parent, prefix=".tmp-")
        try:
            with os.fdopen(fd, "wb") as file:
                file.write(data)
                file.flush()
                os.fsync(file.fileno())
            os.replace(temp, target)
        except BaseException:
            Path(temp).unlink(missing_ok=True)
            raise
        _fsync_dir(target.parent)
        return digest

    def get(self, digest: Digest) -> bytes:
        try:
            return self.path(digest).read_bytes()
        except FileNotFoundError:
            raise StoreError(f"blob {digest} is missing from the store") from None

    def delete(self, digest: Digest) -> None:
        self.path(digest).unlink(missing_ok=True)


def _fsync_dir(directory: Path) -> None:
    fd = os.open(directory, os.O_RDONLY | os.O_DIRECTORY)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)
