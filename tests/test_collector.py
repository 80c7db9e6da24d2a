"""The daemon's start-up heap is frozen: full collections during pulls no longer walk it."""

from __future__ import annotations

import gc
import urllib.parse

from ferryd.daemon import collector
from support.daemon import Daemon


class _Held:
    """An object made before the freeze, as the daemon's modules and clients are."""


def test_objects_made_before_the_freeze_are_no_longer_walked() -> None:
    held = _Held()
    try:
        frozen = collector.freeze_startup_heap()
        assert frozen == gc.get_freeze_count() > 0
        assert not any(found is held for found in gc.get_objects())
        later = _Held()
        assert any(found is later for found in gc.get_objects())  # made after: walked
    finally:
        gc.unfreeze()


def test_the_table_of_percent_escapes_is_built_before_the_first_request() -> None:
    urllib.parse._hextobyte = None  # type: ignore[attr-defined]  # as a new process has it
    try:
        collector.freeze_startup_heap()
    finally:
        gc.unfreeze()
    assert urllib.parse._hextobyte is not None  # type: ignore[attr-defined]


def test_the_daemon_freezes_its_heap_once_it_is_ready(daemon: Daemon) -> None:
    [ready] = daemon.log_events("daemon.ready")
    # Its modules, routes, store and clients: tens of thousands of objects.
    assert ready["frozen_objects"] > 10_000
