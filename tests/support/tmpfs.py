"""Small filesystems a test can fill: tmpfs mounts, for root where mounting works."""

from __future__ import annotations

import contextlib
import os
import subprocess
from collections.abc import Iterator
from pathlib import Path

import pytest


@contextlib.contextmanager
def mounted_tmpfs(path: Path, size: str = "8m") -> Iterator[Path]:
    """A tmpfs of `size` on `path` for the block; skips the test where it cannot mount."""
    if os.geteuid() != 0:
        pytest.skip("mounting a tmpfs needs root")
    path.mkdir(parents=True, exist_ok=True)
    mounted = subprocess.run(
        ["mount", "-t", "tmpfs", "-o", f"size={size},mode=0755", "tmpfs", str(path)],
        capture_output=True,
        text=True,
    )
    if mounted.returncode != 0:
        pytest.skip(f"cannot mount a tmpfs here: {mounted.stderr.strip()}")
    try:
        yield path
    finally:
        subprocess.run(["umount", "-l", str(path)], check=False, capture_output=True)


def remount(path: Path, options: str) -> None:
    """Change a mounted tmpfs: `size=64m` (room again), `ro`, `rw`."""
    subprocess.run(["mount", "-o", f"remount,{options}", str(path)], check=True)


def free_bytes(path: Path) -> int:
    stats = os.statvfs(path)
    return stats.f_bavail * stats.f_frsize


def fill(path: Path) -> Path:
    """Write a file into `path` until the filesystem has no byte left; return it."""
    filler = path / "filler"
    with filler.open("wb", buffering=0) as file:
        piece = b"\xff" * (1 << 20)
        while piece:
            try:
                file.write(piece)
            except OSError:
                if len(piece) == 1:
                    break
                piece = piece[: len(piece) // 2]
    return filler
