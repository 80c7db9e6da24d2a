"""Run the docker CLI against the daemon's socket, with its own config directory."""

from __future__ import annotations

import shutil
import subprocess
from pathlib import Path

import pytest

from .daemon import Daemon

needs_docker = pytest.mark.skipif(shutil.which("docker") is None, reason="docker CLI not installed")


def docker(
    daemon: Daemon, *args: str, config: Path, check: bool = True
) -> subprocess.CompletedProcess[str]:
    result = subprocess.run(
        ["docker", "-H", daemon.host, *args],
        capture_output=True,
        text=True,
        timeout=120,
        env={
            "PATH": "/usr/local/bin:/usr/bin:/bin",
            "DOCKER_CONFIG": str(config),
            "HOME": str(config),
        },
    )
    if check and result.returncode != 0:
        raise AssertionError(f"docker {' '.join(args)} failed:\n{result.stdout}\n{result.stderr}")
    return result
