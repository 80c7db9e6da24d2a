"""A disk that fills up, as blob files see it: `os.pwrite` in `ferryd.blobfile` patched."""

from __future__ import annotations

import errno
import os
from typing import Any

import pytest

from ferryd import blobfile


def fills_after(monkeypatch: pytest.MonkeyPatch, room: int) -> None:
    """Blob files' writes take `room` more bytes (the last one partly), then ENOSPC."""
    real = os.pwrite
    left = [room]

    def pwrite(fd: int, data: Any, offset: int) -> int:
        if left[0] <= 0:
            raise OSError(errno.ENOSPC, os.strerror(errno.ENOSPC))
        written = real(fd, memoryview(data)[: left[0]], offset)
        left[0] -= written
        return written

    monkeypatch.setattr(blobfile.os, "pwrite", pwrite)
