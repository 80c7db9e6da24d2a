"""The units under a real systemd: a minimal Debian 12 booted in systemd-nspawn, ferryd
installed in it as the README says, then its whole life as a service.

The Debian root and ferryd's dependencies are built once and cached outside the checkout
(tests/support/debian_boot.py; `make test` builds them before pytest runs). Each run
boots the cached root under a tmpfs overlay, so the cache stays clean. The registry runs
on the host's loopback, which the container shares: nothing leaves the machine.

Skipped, with the reason, where the machine cannot do it: not root, no debootstrap
(no network to fetch Debian), or systemd-nspawn unable to boot a container here.
"""

from __future__ import annotations

import contextlib
import re
import subprocess
import time
from pathlib import Path

import pytest

from support.debian_boot import (
    CHECKOUT,
    Container,
    Prepared,
    Unavailable,
    booted,
    copy_checkout,
    prepare,
)
from support.images import LayerSpec, build_image, seed
from support.registry import Registry
from support.throttle import throttled
from support.waiting import wait_until

pytestmark = pytest.mark.systemd_boot

MB = 1_000_000
SOURCE = "/usr/src/ferryd"
# Short, so that the run outlives several deadlines: a daemon that stopped pinging
# would be killed (and restarted) while the test looks.
WATCHDOG_SEC = 3
# The hardening of the unit, as `systemd-analyze security` rates it (2.2 when written).
MAX_EXPOSURE = 3.0

# README "Install as a service", with pip kept off the network (the wheels of the
# lock's versions are in /opt/wheels), and two users: alice in the ferryd group, bob not.
INSTALL = f"""
cd {SOURCE}
python3 -m venv /opt/ferryd && /opt/ferryd/bin/pip install --quiet --no-index \
    --find-links /opt/wheels .
ln -s /opt/ferryd/bin/ferryd /usr/local/bin/ferryd
install -m 0644 systemd/ferryd.service systemd/ferryd.socket /etc/systemd/system/
install -m 0644 systemd/ferryd.sysusers /usr/lib/sysusers.d/ferryd.conf
systemd-sysusers
install -d /etc/ferryd && install -m 0644 config.example.toml /etc/ferryd/config.toml
mkdir -p /etc/systemd/system/ferryd.service.d
printf '[Service]\\nWatchdogSec={WATCHDOG_SEC}\\n' > /etc/systemd/system/ferryd.service.d/test.conf
systemctl daemon-reload
systemctl enable --now ferryd.socket
useradd --create-home alice && usermod -aG ferryd alice
useradd --create-home bob
"""


@pytest.fixture(scope="module")
def prepared() -> Prepared:
    try:
        return prepare()
    except Unavailable as exc:
        pytest.skip(str(exc))


def test_the_units_work_under_a_real_systemd(
    prepared: Prepared, registry: Registry, layout: Path, tmp_path: Path
) -> None:
    built = build_image(layout, layers=[LayerSpec(size=6 * MB, seed=901, compression="none")])
    seed(registry, layout, "latest", "boot/app:v1")
    source = copy_checkout(CHECKOUT, tmp_path / "ferryd")

    with contextlib.ExitStack() as stack:
        # 3 MB/s: the pull lasts long enough to be seen in `systemctl status`.
        proxy = stack.enter_context(throttled(registry.host, rate=3 * MB))
        try:
            box = stack.enter_context(booted(prepared, tmp_path / "boot", [(source, SOURCE)]))
        except Unavailable as exc:
            pytest.skip(str(exc))
        try:
            box.sh(INSTALL, timeout=300)
            _life_cycle(box, f"{proxy.host}/boot/app:v1", built.config_digest)
        except BaseException:
            print(box.journal_text("ferryd.socket") + box.journal_text("ferryd.service"))
            raise


def _life_cycle(box: Container, reference: str, image_id: str) -> None:
    # The socket listens, for root and the ferryd group; nothing runs yet.
    assert box.run("systemctl", "is-active", "ferryd.socket").stdout == "active\n"
    assert box.show("ferryd.service", "ActiveState")["ActiveState"] == "inactive"
    socket_file = box.run("stat", "-c", "%F %a %U %G", "/run/ferryd/ferryd.sock").stdout
    assert socket_file == "socket 660 root ferryd\n"

    # The first client starts the service, which says it is ready and idle.
    assert box.run("ferryd", "images").returncode == 0
    started = time.monotonic()
    service = box.show(
        "ferryd.service", "ActiveState", "SubState", "MainPID", "StatusText", "WatchdogUSec"
    )
    assert (service["ActiveState"], service["SubState"]) == ("active", "running")
    assert service["StatusText"] == "idle"
    assert service["WatchdogUSec"] == f"{WATCHDOG_SEC}s"
    main_pid = service["MainPID"]
    assert 'Status: "idle"' in box.run("systemctl", "status", "ferryd.service").stdout

    # A member of the group pulls, inside the unit's hardening; systemctl status shows it.
    puller = subprocess.Popen(
        box.argv("ferryd", "pull", reference, user="alice"),
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
    )
    busy = 'Status: "1 pulls, 0 pushes; 1 downloads, 0 uploads active"'
    seen: list[str] = []

    def shows_busy() -> bool:
        status = box.run("systemctl", "status", "ferryd.service", check=False).stdout
        if busy in status:
            seen.append(status)
        return bool(seen) or puller.poll() is not None

    wait_until(shows_busy, 60, what="the pull to show in systemctl status")
    out, err = puller.communicate(timeout=120)
    assert puller.returncode == 0, out + err
    assert f"Status: Downloaded newer image for {reference}" in out
    assert seen, "systemctl status never showed the running pull"
    inspected = box.run("ferryd", "inspect", reference, user="alice").stdout
    assert f'"Id": "{image_id}"' in inspected
    wait_until(lambda: box.show("ferryd.service", "StatusText")["StatusText"] == "idle", 10)

    # Someone outside the group cannot even connect.
    refused = box.run("ferryd", "images", user="bob", check=False)
    assert refused.returncode == 1
    assert "permission denied" in refused.stderr

    # Reload, without /bin/kill: the daemon reads its config again and stays the same process.
    assert box.run("test", "-e", "/bin/kill", check=False).returncode != 0
    box.run("sed", "-i", 's/^log_level = "info"$/log_level = "debug"/', "/etc/ferryd/config.toml")
    reloaded = box.run("systemctl", "reload", "ferryd.service", check=False)
    assert reloaded.returncode == 0, reloaded.stderr + box.journal_text("ferryd.service")
    [event] = wait_until(lambda: _events(box, "daemon.reloaded"), 30)
    assert event["changed"] == ["log_level"]
    wait_until(lambda: _state(box) == ("active", "running"), 30, what="the reload to end")
    assert box.show("ferryd.service", "MainPID")["MainPID"] == main_pid

    # The hardening, as systemd rates it.
    security = box.run("systemd-analyze", "security", "ferryd.service", "--no-pager").stdout
    exposure = re.search(r"Overall exposure level for ferryd\.service: ([0-9.]+)", security)
    assert exposure is not None, security
    assert float(exposure[1]) <= MAX_EXPOSURE, security

    # The watchdog was fed all along: several deadlines passed, no restart, same process.
    time.sleep(max(0.0, started + 2.5 * WATCHDOG_SEC - time.monotonic()))
    fed = box.show("ferryd.service", "NRestarts", "MainPID", "WatchdogTimestampMonotonic")
    assert fed["NRestarts"] == "0"
    assert fed["MainPID"] == main_pid
    assert int(fed["WatchdogTimestampMonotonic"]) > 0
    assert "atchdog timeout" not in box.journal_text("ferryd.service")

    # A stop is clean: exit status 0, and the socket stays for the next client.
    box.run("systemctl", "stop", "ferryd.service")
    stopped = box.show("ferryd.service", "ActiveState", "Result", "ExecMainCode", "ExecMainStatus")
    assert stopped == {
        "ActiveState": "inactive",
        "Result": "success",
        "ExecMainCode": "1",  # CLD_EXITED
        "ExecMainStatus": "0",
    }
    assert _events(box, "daemon.stopped")
    assert box.run("systemctl", "is-active", "ferryd.socket").stdout == "active\n"
    assert box.run("ferryd", "images", user="alice").returncode == 0  # started again


def _events(box: Container, event: str) -> list[dict[str, object]]:
    return [e for e in box.journal("ferryd.service") if e.get("event") == event]


def _state(box: Container) -> tuple[str, str]:
    service = box.show("ferryd.service", "ActiveState", "SubState")
    return service["ActiveState"], service["SubState"]
