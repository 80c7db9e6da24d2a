"""SIGKILL a test's daemon, on its own or in the middle of a request, as a crash would."""

from __future__ import annotations

import contextlib
import threading
import time
from collections.abc import Callable
from typing import Any

from ferryd.cli.client import DaemonError

from .daemon import Daemon


def kill(daemon: Daemon) -> None:
    assert daemon.process is not None
    daemon.process.kill()
    daemon.process.wait()


def killed_during(daemon: Daemon, operation: Callable[[], Any], after: float) -> None:
    """Start `operation` (a request to the daemon) and SIGKILL the daemon `after`
    seconds later; the request fails or completes, either is fine."""

    def run() -> None:
        with contextlib.suppress(DaemonError, OSError):
            operation()

    worker = threading.Thread(target=run)
    worker.start()
    time.sleep(after)
    kill(daemon)
    worker.join(30)
    assert not worker.is_alive()
