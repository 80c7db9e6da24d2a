"""SIGTERM: stop accepting, let running pulls finish within the grace period, keep
partial downloads for the next pull, exit 0."""

from __future__ import annotations

import signal
import socket
import threading
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

from support.daemon import Daemon, errors, ferryd, start_failure
from support.images import LayerSpec, build_image, seed
from support.registry import Registry
from support.throttle import throttled
from support.waiting import wait_until

MB = 1_000_000


def _pull_in_background(daemon: Daemon, reference: str) -> tuple[threading.Thread, list[Any]]:
    result: list[Any] = []

    def pull() -> None:
        try:
            result.append(daemon.pull(reference))
        except Exception as exc:  # the daemon may go away mid-stream
            result.append(exc)

    thread = threading.Thread(target=pull)
    thread.start()
    return thread, result


def _refuses_connections(path: Path) -> bool:
    probe = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
    try:
        probe.connect(str(path))
    except OSError:
        return True
    finally:
        probe.close()
    return False


def test_sigterm_lets_a_running_pull_finish_then_exits_0(
    registry: Registry, start_daemon: Callable[..., Daemon], layout: Path
) -> None:
    built = build_image(layout, layers=[LayerSpec(size=12 * MB, seed=301, compression="none")])
    seed(registry, layout, "latest", "lifecycle/finish:v1")
    daemon = start_daemon(shutdown_timeout=60)
    with throttled(registry.host, rate=8 * MB) as proxy:
        reference = f"{proxy.host}/lifecycle/finish:v1"
        thread, result = _pull_in_background(daemon, reference)
        daemon.wait_for_download(built.layers[0].digest)
        assert daemon.process is not None
        daemon.process.send_signal(signal.SIGTERM)
        wait_until(lambda: bool(daemon.log_events("daemon.stopping")), 30, what="the stop to begin")

        wait_until(lambda: _refuses_connections(daemon.socket), 5, what="new connections refused")
        proxy.rate = 1000 * MB  # stopping mid-pull: the rest may come at once
        thread.join(60)
        assert daemon.process.wait(60) == 0

    [messages] = result
    assert errors(messages) == []
    assert messages[-1]["status"].startswith("Status: Downloaded newer image")
    daemon.start()
    assert daemon.inspect(reference)["Id"] == built.config_digest


def test_a_pull_still_running_after_the_grace_period_is_cancelled_and_resumed_later(
    registry: Registry, start_daemon: Callable[..., Daemon], layout: Path
) -> None:
    built = build_image(layout, layers=[LayerSpec(size=20 * MB, seed=302, compression="none")])
    seed(registry, layout, "latest", "lifecycle/cut:v1")
    daemon = start_daemon(shutdown_timeout=0.5)
    digest = built.layers[0].digest
    with throttled(registry.host, rate=2 * MB) as proxy:
        reference = f"{proxy.host}/lifecycle/cut:v1"
        thread, result = _pull_in_background(daemon, reference)
        partial = daemon.wait_for_download(digest)
        assert daemon.process is not None
        started = time.monotonic()

        assert daemon.stop() == 0
        assert time.monotonic() - started < 15
        thread.join(30)
        [messages] = result
        assert errors(messages) == ["ferryd is shutting down; run the command again to resume"]
        kept = partial.stat().st_size
        assert MB < kept < 20 * MB
        assert not daemon.socket.exists()
        assert daemon.log_events("transfer.cancelled")
        [failed] = daemon.log_events("image.pull_failed")
        assert failed["error"] == "cancelled"

        proxy.rate = 1000 * MB
        daemon.start()
        assert errors(daemon.pull(reference)) == []
    assert daemon.inspect(reference)["Id"] == built.config_digest
    assert registry.ranged_gets(digest), (
        "the pull after the restart did not resume from the partial file"
    )


def test_a_second_signal_stops_at_once(
    registry: Registry, start_daemon: Callable[..., Daemon], layout: Path
) -> None:
    built = build_image(layout, layers=[LayerSpec(size=20 * MB, seed=303, compression="none")])
    seed(registry, layout, "latest", "lifecycle/twice:v1")
    daemon = start_daemon(shutdown_timeout=600)
    with throttled(registry.host, rate=2 * MB) as proxy:
        thread, _ = _pull_in_background(daemon, f"{proxy.host}/lifecycle/twice:v1")
        daemon.wait_for_download(built.layers[0].digest)
        assert daemon.process is not None
        daemon.process.send_signal(signal.SIGTERM)
        wait_until(lambda: bool(daemon.log_events("daemon.stopping")), 30, what="the stop to begin")
        daemon.process.send_signal(signal.SIGINT)

        assert daemon.process.wait(15) == 0
        thread.join(30)
    assert daemon.log_events("daemon.stopping_now")
    assert not [
        line for line in daemon.log_path.read_text().splitlines() if not line.startswith("{")
    ]
    assert daemon.log_events("daemon.stopped")


def test_an_idle_daemon_stops_at_once(daemon: Daemon) -> None:
    started = time.monotonic()

    assert daemon.stop() == 0
    assert time.monotonic() - started < 5
    assert daemon.log_events("daemon.stopped")


def test_a_second_daemon_on_the_same_socket_leaves_the_first_ones_socket_alone(
    daemon: Daemon, tmp_path: Path
) -> None:
    config = tmp_path / "second.toml"
    config.write_text(f'root = "{tmp_path / "other-root"}"\nsocket = "{daemon.socket}"\n')

    done = ferryd("serve", "--config", str(config))

    assert done.returncode == 2
    assert (
        f"another daemon is already listening on {daemon.socket}" in (start_failure(done)["error"])
    )
    assert daemon.client().get_json("/images/json") == []


def test_a_second_daemon_on_the_same_store_is_refused(daemon: Daemon, tmp_path: Path) -> None:
    config = tmp_path / "second.toml"
    config.write_text(f'root = "{daemon.root}"\nsocket = "{tmp_path / "other.sock"}"\n')

    done = ferryd("serve", "--config", str(config))

    assert done.returncode == 1
    assert (
        f"another ferryd is already using the store in {daemon.root}"
        in (start_failure(done)["error"])
    )
    assert not (tmp_path / "other.sock").exists()
