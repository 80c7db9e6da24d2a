"""Boot a minimal Debian 12 under a real systemd (PID 1 of a systemd-nspawn container).

What is built once and cached (outside the checkout, in `CACHE`, default
/var/cache/ferryd-test-root or $FERRYD_TEST_ROOT_CACHE):

- a Debian root made by `debootstrap --variant=minbase` with systemd, dbus and
  python3-venv and nothing else (no procps: no /bin/kill), keyed by its recipe;
- a wheelhouse of ferryd's runtime dependencies at the versions of requirements.lock
  (and setuptools to build ferryd), so that installing ferryd in the container needs
  no network. Keyed by the dependencies and the lock.

Each boot runs the cached root with `--volatile=overlay`: it is mounted read-only under
a tmpfs overlay, so nothing a test does reaches the cache, and nothing is left on the
host to clean. The container shares the host's network (a registry on the host's
loopback is reachable) and is driven with nsenter (there is no machined to register
with: PID 1 of the host need not be systemd).

Also a script, for `make` to build the cache before pytest runs:
    python tests/support/debian_boot.py
prints how long it took, or why this machine cannot boot the container (exit 0 then:
the test skips with the same reason).
"""

from __future__ import annotations

import contextlib
import fcntl
import hashlib
import json
import os
import shutil
import signal
import subprocess
import sys
import time
import tomllib
import uuid
from collections.abc import Iterator, Sequence
from dataclasses import dataclass
from pathlib import Path

CACHE = Path(os.environ.get("FERRYD_TEST_ROOT_CACHE") or "/var/cache/ferryd-test-root")
MIRROR = os.environ.get("FERRYD_DEBIAN_MIRROR") or "http://deb.debian.org/debian"
SUITE = "bookworm"
PACKAGES = ("systemd", "systemd-sysv", "dbus", "python3-venv")
TOOL_PACKAGES = ("debootstrap", "systemd-container")  # on the host
RECIPE = "1"  # change to rebuild every cached root
CHECKOUT = Path(__file__).resolve().parents[2]
# What the README's install steps use from the checkout.
CHECKOUT_FILES = ("pyproject.toml", "README.md", "src", "systemd", "config.example.toml")
PATH = "/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin"


class Unavailable(Exception):
    """This machine cannot boot the container; the message says why (a skip reason)."""


@dataclass(frozen=True)
class Prepared:
    root: Path  # the cached Debian root (never written to by a boot)
    wheels: Path  # ferryd's dependencies as wheels


def prepare(checkout: Path = CHECKOUT) -> Prepared:
    """The cached root and wheelhouse, built first when missing."""
    if os.geteuid() != 0:
        raise Unavailable("booting a container needs root (systemd-nspawn, debootstrap)")
    _ensure_tools()
    CACHE.mkdir(parents=True, exist_ok=True)
    with _locked(CACHE / ".lock"):
        return Prepared(_debian_root(), _wheelhouse(checkout))


def _ensure_tools() -> None:
    if shutil.which("debootstrap") and shutil.which("systemd-nspawn") and shutil.which("nsenter"):
        return
    env = {**os.environ, "DEBIAN_FRONTEND": "noninteractive"}
    for command in (
        ["apt-get", "update", "-qq"],
        # No recommends: libnss-mymachines would change the host's nsswitch.conf.
        [*("apt-get", "install", "-y", "-qq", "--no-install-recommends"), *TOOL_PACKAGES],
    ):
        try:
            done = subprocess.run(command, capture_output=True, text=True, env=env, timeout=600)
        except (OSError, subprocess.TimeoutExpired) as exc:
            raise Unavailable(f"cannot install debootstrap and systemd-container: {exc}") from None
        if done.returncode != 0:
            raise Unavailable(
                f"cannot install debootstrap and systemd-container ({' '.join(command)}): "
                + _tail(done.stdout + done.stderr)
            )


@contextlib.contextmanager
def _locked(path: Path) -> Iterator[None]:
    """One builder at a time (parallel test workers, two checkouts)."""
    with path.open("a") as lock:
        fcntl.flock(lock, fcntl.LOCK_EX)
        try:
            yield
        finally:
            fcntl.flock(lock, fcntl.LOCK_UN)


def _key(*parts: str) -> str:
    return hashlib.sha256("\0".join(parts).encode()).hexdigest()[:12]


def _debian_root() -> Path:
    name = f"{SUITE}-{_key(RECIPE, SUITE, *PACKAGES)}"
    root = CACHE / name
    if (root / ".complete").exists():
        return root
    _remove_others(f"{SUITE}-", keep=name)
    building = CACHE / f"building-{name}"
    shutil.rmtree(building, ignore_errors=True)
    command = [
        "debootstrap",
        "--variant=minbase",
        f"--include={','.join(PACKAGES)}",
        SUITE,
        str(building),
        MIRROR,
    ]
    try:
        done = subprocess.run(command, capture_output=True, text=True, timeout=1200)
    except subprocess.TimeoutExpired:
        shutil.rmtree(building, ignore_errors=True)
        raise Unavailable(f"debootstrap of {SUITE} from {MIRROR} took over 20 minutes") from None
    if done.returncode != 0:
        log = building / "debootstrap" / "debootstrap.log"
        detail = log.read_text(errors="replace") if log.exists() else done.stdout + done.stderr
        shutil.rmtree(building, ignore_errors=True)
        raise Unavailable(f"debootstrap of {SUITE} from {MIRROR} failed: {_tail(detail)}")
    # What apt downloaded is not needed to boot.
    for leftover in ("var/cache/apt/archives", "var/lib/apt/lists"):
        for path in (building / leftover).glob("*"):
            if path.is_file():
                path.unlink()
    (building / ".complete").write_text(f"{time.time()}\n")
    building.rename(root)
    return root


def _wheelhouse(checkout: Path) -> Path:
    """ferryd's runtime dependencies (pinned by the lock) and setuptools, as wheels."""
    project = tomllib.loads((checkout / "pyproject.toml").read_text())["project"]
    dependencies = [*project["dependencies"], "setuptools>=77"]
    lock = (checkout / "requirements.lock").read_text()
    name = f"wheels-{_key(RECIPE, *dependencies, lock)}"
    wheels = CACHE / name
    if (wheels / ".complete").exists():
        return wheels
    _remove_others("wheels-", keep=name)
    shutil.rmtree(wheels, ignore_errors=True)
    command = [
        sys.executable,
        "-m",
        "pip",
        "download",
        "--quiet",
        "--disable-pip-version-check",
        # For the container's Python (Debian 12's 3.11), whatever runs this.
        "--only-binary=:all:",
        "--python-version=3.11",
        "--implementation=cp",
        "--abi=cp311",
        "-d",
        str(wheels),
        "-c",
        str(checkout / "requirements.lock"),
        *dependencies,
    ]
    done = subprocess.run(command, capture_output=True, text=True, timeout=600)
    if done.returncode != 0:
        shutil.rmtree(wheels, ignore_errors=True)
        raise Unavailable(f"cannot download ferryd's dependencies: {_tail(done.stderr)}")
    (wheels / ".complete").write_text(f"{time.time()}\n")
    return wheels


def _remove_others(prefix: str, keep: str) -> None:
    """Roots and wheelhouses of older recipes and locks: they are never used again."""
    for path in CACHE.glob(f"{prefix}*"):
        if path.name != keep:
            shutil.rmtree(path, ignore_errors=True)


def _tail(text: str, lines: int = 15) -> str:
    return "\n".join(text.strip().splitlines()[-lines:])


# -- a booted container ----------------------------------------------------------------


@dataclass
class Container:
    """A Debian booted under systemd; commands run in it with nsenter."""

    name: str
    leader: int  # its PID 1, as the host sees it
    log: Path

    def run(
        self,
        *command: str,
        user: str | None = None,
        check: bool = True,
        stdin: str | None = None,
        timeout: float = 120,
    ) -> subprocess.CompletedProcess[str]:
        """`command` in the container, as root or as `user` (with their groups)."""
        argv = self.argv(*command, user=user)
        done = subprocess.run(argv, capture_output=True, text=True, input=stdin, timeout=timeout)
        if check and done.returncode != 0:
            raise AssertionError(
                f"{' '.join(command)} (as {user or 'root'}) exited {done.returncode}:\n"
                f"{done.stdout}{done.stderr}"
            )
        return done

    def argv(self, *command: str, user: str | None = None) -> list[str]:
        """What runs `command` in the container (for a command to start, not wait for)."""
        home = "/root" if user is None else f"/home/{user}"
        as_user = [] if user is None else ["setpriv", f"--reuid={user}", f"--regid={user}"]
        if user is not None:
            as_user.append("--init-groups")
        return [
            *("nsenter", "-t", str(self.leader), "-a"),
            *("env", "-i", f"PATH={PATH}", f"HOME={home}", "LANG=C.UTF-8", "SYSTEMD_PAGER="),
            *as_user,
            *command,
        ]

    def sh(self, script: str, **options: object) -> subprocess.CompletedProcess[str]:
        return self.run("sh", "-ec", script, **options)  # type: ignore[arg-type]

    def show(self, unit: str, *properties: str) -> dict[str, str]:
        """`systemctl show -p …` as a dict."""
        done = self.run("systemctl", "show", unit, *(f"--property={p}" for p in properties))
        return dict(line.split("=", 1) for line in done.stdout.splitlines() if "=" in line)

    def journal(self, unit: str) -> list[dict[str, object]]:
        """The unit's JSON log lines (the daemon's own), oldest first."""
        done = self.run("journalctl", "--unit", unit, "--output=cat", "--no-pager")
        return [json.loads(line) for line in done.stdout.splitlines() if line.startswith("{")]

    def journal_text(self, unit: str) -> str:
        return self.run("journalctl", "--unit", unit, "--no-pager", check=False).stdout


@contextlib.contextmanager
def booted(
    prepared: Prepared, workdir: Path, binds: Sequence[tuple[Path, str]] = ()
) -> Iterator[Container]:
    """Boot the cached root (read-only, under a tmpfs overlay) with `binds` (host path,
    container path; writable), and the wheelhouse at /opt/wheels; power it off at the
    end, whatever happened."""
    workdir.mkdir(parents=True, exist_ok=True)
    name = f"ferryd-{uuid.uuid4().hex[:8]}"
    log = workdir / "nspawn.log"
    command = [
        "systemd-nspawn",
        f"--directory={prepared.root}",
        "--volatile=overlay",
        f"--machine={name}",
        # No machined, no unit of our own: PID 1 of the host need not be systemd.
        "--register=no",
        "--keep-unit",
        "--link-journal=no",
        "--console=passive",
        "--quiet",
        f"--bind-ro={prepared.wheels}:/opt/wheels",
        *(f"--bind={host}:{inside}" for host, inside in binds),
        "--boot",
    ]
    env = {k: v for k, v in os.environ.items() if not k.startswith(("NOTIFY_", "LISTEN_"))}
    with log.open("wb") as out:
        nspawn = subprocess.Popen(
            command, stdin=subprocess.DEVNULL, stdout=out, stderr=subprocess.STDOUT, env=env
        )
    leader = None
    try:
        leader = _wait_for_leader(nspawn, log)
        container = Container(name, leader, log)
        _wait_for_boot(container, nspawn)
        yield container
    finally:
        _power_off(nspawn, leader)


def _wait_for_leader(nspawn: subprocess.Popen[bytes], log: Path) -> int:
    deadline = time.monotonic() + 30
    while time.monotonic() < deadline:
        if nspawn.poll() is not None:
            raise Unavailable(
                f"systemd-nspawn cannot boot a container here (exit {nspawn.returncode}): "
                + _tail(log.read_text(errors="replace"))
            )
        for child in _children(nspawn.pid):
            with contextlib.suppress(OSError):
                if Path(f"/proc/{child}/comm").read_text().strip() == "systemd":
                    return child
        time.sleep(0.05)
    raise Unavailable("systemd-nspawn started no systemd within 30 s")


def _children(pid: int) -> list[int]:
    children = []
    for task in Path(f"/proc/{pid}/task").glob("*"):
        with contextlib.suppress(OSError):
            children += [int(c) for c in (task / "children").read_text().split()]
    return children


def _wait_for_boot(container: Container, nspawn: subprocess.Popen[bytes]) -> None:
    """Until systemd has finished booting (running, or degraded with a failed unit)."""
    deadline = time.monotonic() + 90
    state = ""
    while time.monotonic() < deadline:
        if nspawn.poll() is not None:
            raise Unavailable(
                f"the container stopped while booting (exit {nspawn.returncode}): "
                + _tail(container.log.read_text(errors="replace"))
            )
        done = container.run("systemctl", "is-system-running", "--wait", check=False, timeout=90)
        state = done.stdout.strip()
        if state in ("running", "degraded"):
            return
        if state in ("maintenance", "stopping"):
            break
        time.sleep(0.1)  # "offline": not answering yet, its private socket is not up
    failed = container.run("systemctl", "--failed", "--no-legend", check=False).stdout
    raise Unavailable(f"systemd in the container did not boot ({state or 'no answer'}): {failed}")


def _power_off(nspawn: subprocess.Popen[bytes], leader: int | None) -> None:
    """SIGTERM to nspawn halts the container cleanly; if it hangs, SIGKILL to its PID 1
    ends every process in it (a PID namespace dies with its init)."""
    if nspawn.poll() is None:
        nspawn.send_signal(signal.SIGTERM)
        try:
            nspawn.wait(30)
            return
        except subprocess.TimeoutExpired:
            pass
    if leader is not None:
        with contextlib.suppress(ProcessLookupError):
            os.kill(leader, signal.SIGKILL)
    with contextlib.suppress(ProcessLookupError):
        nspawn.kill()
    nspawn.wait(30)


def copy_checkout(checkout: Path, target: Path) -> Path:
    """What `pip install .` and the install steps need from the checkout, in a copy that
    pip may write its build files into."""
    target.mkdir(parents=True, exist_ok=True)
    for name in CHECKOUT_FILES:
        source = checkout / name
        if source.is_dir():
            shutil.copytree(
                source, target / name, ignore=shutil.ignore_patterns("__pycache__", "*.egg-info")
            )
        else:
            shutil.copy2(source, target / name)
    return target


def main() -> int:
    started = time.monotonic()
    try:
        prepared = prepare()
    except Unavailable as exc:
        print(f"debian_boot: the systemd boot test will be skipped: {exc}", file=sys.stderr)
        return 0
    print(
        f"debian_boot: Debian root {prepared.root}, wheels {prepared.wheels} "
        f"ready in {time.monotonic() - started:.1f} s"
    )
    return 0


if __name__ == "__main__":
    sys.exit(main())
