"""The store is the daemon's: its root 0700 (0750 when the socket has a group), its
database and lock 0600; a store made before is set right at start, each fix logged."""

from __future__ import annotations

import grp
import os
import stat
from collections.abc import Callable
from pathlib import Path

from support.daemon import Daemon


def mode(path: Path) -> int:
    return stat.S_IMODE(path.stat().st_mode)


def test_a_new_store_is_readable_by_the_daemon_alone(
    start_daemon: Callable[..., Daemon],
) -> None:
    daemon = start_daemon()

    assert mode(daemon.root) == 0o700
    for name in ("ferryd.db", "ferryd.db-wal", "ferryd.db-shm", "ferryd.lock"):
        assert mode(daemon.root / name) == 0o600, name
    assert daemon.log_events("store.mode_fixed") == []


def test_a_store_whose_socket_has_a_group_lets_that_group_in(
    start_daemon: Callable[..., Daemon],
) -> None:
    daemon = start_daemon(socket_group=grp.getgrgid(os.getgid()).gr_name)

    assert mode(daemon.root) == 0o750
    assert mode(daemon.root / "ferryd.db") == 0o600


def test_a_store_made_with_open_modes_is_closed_at_start_and_each_fix_logged(
    start_daemon: Callable[..., Daemon],
) -> None:
    daemon = start_daemon()
    daemon.stop()
    os.chmod(daemon.root, 0o755)
    os.chmod(daemon.root / "ferryd.db", 0o644)
    os.chmod(daemon.root / "ferryd.lock", 0o666)

    daemon.start()

    assert mode(daemon.root) == 0o700
    assert mode(daemon.root / "ferryd.db") == 0o600
    assert mode(daemon.root / "ferryd.lock") == 0o600
    fixes = {
        (e["path"], e["old_mode"], e["new_mode"]) for e in daemon.log_events("store.mode_fixed")
    }
    assert fixes == {
        (str(daemon.root), "0755", "0700"),
        (str(daemon.root / "ferryd.db"), "0644", "0600"),
        (str(daemon.root / "ferryd.lock"), "0666", "0600"),
    }
