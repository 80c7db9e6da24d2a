"""Run Debian's ``docker-registry`` (CNCF distribution 2.8) on 127.0.0.1 for tests.

The registry is started with a generated config: filesystem storage, deletes enabled,
access log on, optional TLS (certificate from a ``trustme`` CA) and optional htpasswd
basic auth.  No proxy/pull-through, redis or notifications are configured, and the
child gets a scrubbed environment, so it never talks to anything but its own socket.
"""

from __future__ import annotations

import contextlib
import json
import os
import re
import signal
import socket
import ssl
import subprocess
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from pathlib import Path
from types import TracebackType
from typing import IO, Self, TypeVar

import httpx
import pytest
import trustme

from .waiting import wait_until

_R = TypeVar("_R", bound="Registry")

REGISTRY_BIN = "/usr/bin/docker-registry"
SKOPEO_BIN = "/usr/bin/skopeo"

START_TIMEOUT = 15.0
STOP_TIMEOUT = 10.0

# The login of the `tls_registry` fixture (htpasswd, Basic auth).
USER, PASSWORD = "ferry", "s3cret-pass"

# The access log of distribution 2.8 is gorilla/handlers' Apache "combined" format,
# written to stdout next to logrus' "response completed" lines (which we ignore):
#   127.0.0.1 - - [28/Nov/2026:04:27:07 +0000] "GET /v2/ HTTP/1.1" 200 2 "" "curl/7.88.1"
# Over TLS the protocol is usually "HTTP/2.0".
_ACCESS_LINE = re.compile(
    r'^\S+ \S+ \S+ \[[^\]]*\] "(?P<method>[A-Z]+) (?P<uri>\S+) [^"]*" (?P<status>\d{3}) '
)
_BLOB_PATH = re.compile(r"^/v2/.+/blobs/(?P<digest>[^/]+)$")


def have_registry_tools() -> bool:
    """True when both the registry binary and skopeo are installed."""
    return all(os.access(path, os.X_OK) for path in (REGISTRY_BIN, SKOPEO_BIN))


def free_port() -> int:
    """A TCP port on 127.0.0.1 that was free a moment ago."""
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


@dataclass(frozen=True)
class AccessLogEntry:
    method: str
    path: str  # without the query string
    query: str
    status: int


@dataclass
class Registry:
    host: str
    url: str
    storage: Path
    config_path: Path
    log_path: Path
    ca_cert_pem: bytes | None = field(default=None, repr=False)
    username: str | None = None
    password: str | None = None
    cert_dir: Path | None = None  # holds ca.crt, for skopeo's --*-cert-dir
    _proc: subprocess.Popen[bytes] | None = field(default=None, repr=False)
    _log: IO[bytes] | None = field(default=None, repr=False)

    # -- lifecycle -------------------------------------------------------------

    def start(self) -> None:
        if self._proc is not None:
            raise RuntimeError("registry already running")
        # Append, so that counters survive restart().
        self._log = self.log_path.open("ab")
        self._proc = subprocess.Popen(
            [REGISTRY_BIN, "serve", str(self.config_path)],
            stdin=subprocess.DEVNULL,
            stdout=self._log,
            stderr=subprocess.STDOUT,
            cwd=self.config_path.parent,
            # No REGISTRY_* overrides or proxy settings leak in from the caller.
            env={"PATH": "/usr/bin:/bin", "HOME": str(self.config_path.parent)},
        )
        try:
            self._wait_ready()
        except BaseException:
            self.stop()
            raise

    def stop(self) -> None:
        proc, self._proc = self._proc, None
        if proc is not None and proc.poll() is None:
            proc.send_signal(signal.SIGTERM)
            try:
                proc.wait(STOP_TIMEOUT)
            except subprocess.TimeoutExpired:
                proc.kill()
                proc.wait()
        if self._log is not None:
            self._log.close()
            self._log = None

    def restart(self) -> None:
        """Stop and start again on the same port with the same storage."""
        self.stop()
        self.start()

    @property
    def running(self) -> bool:
        return self._proc is not None and self._proc.poll() is None

    @property
    def pid(self) -> int | None:
        return None if self._proc is None else self._proc.pid

    def __enter__(self) -> Self:
        if self._proc is None:
            self.start()
        return self

    def __exit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        self.stop()

    def _wait_ready(self) -> None:
        last_error = "no answer yet"

        def ready() -> bool:
            nonlocal last_error
            assert self._proc is not None
            if self._proc.poll() is not None:
                raise RuntimeError(
                    f"docker-registry exited with {self._proc.returncode}:\n{self.log_tail()}"
                )
            try:
                return client.get("/v2/").status_code in (200, 401)
            except httpx.HTTPError as exc:
                last_error = repr(exc)
                return False

        with self.client(auth=False, timeout=1.0) as client:
            wait_until(
                ready,
                START_TIMEOUT,
                what=lambda: f"docker-registry to be ready ({last_error}):\n{self.log_tail()}",
                interval=0.02,
            )

    # -- talking to it ---------------------------------------------------------

    def ssl_context(self) -> ssl.SSLContext | bool:
        """What to pass as httpx's ``verify=``."""
        if self.ca_cert_pem is None:
            return False
        return ssl.create_default_context(cadata=self.ca_cert_pem.decode())

    def client(self, *, auth: bool = True, timeout: float = 30.0) -> httpx.Client:
        """A synchronous httpx client with base_url, CA and (optionally) credentials set."""
        creds = None
        if auth and self.username is not None:
            creds = (self.username, self.password or "")
        return httpx.Client(
            base_url=self.url,
            verify=self.ssl_context(),
            auth=creds,
            timeout=timeout,
            trust_env=False,
        )

    def skopeo_flags(self, prefix: str = "") -> list[str]:
        """TLS and credential flags for skopeo.

        ``prefix`` is ``"src-"`` or ``"dest-"`` for ``copy``; ``inspect`` takes none.
        """
        if self.cert_dir is not None:
            flags = [f"--{prefix}cert-dir={self.cert_dir}", f"--{prefix}tls-verify=true"]
        else:
            flags = [f"--{prefix}tls-verify=false"]
        if self.username is not None:
            flags.append(f"--{prefix}creds={self.username}:{self.password or ''}")
        else:
            flags.append(f"--{prefix}no-creds")
        return flags

    # -- the access log --------------------------------------------------------

    def log_tail(self, lines: int = 40) -> str:
        try:
            text = self.log_path.read_text(errors="replace")
        except FileNotFoundError:
            return "<no log>"
        return "\n".join(text.splitlines()[-lines:])

    def access_log(self) -> list[AccessLogEntry]:
        """Parsed access-log lines, oldest first (restarts included).

        gorilla/handlers writes a line before the handler returns, i.e. before the last
        bytes of a response are flushed, so a request a client has finished is logged.
        """
        entries = []
        with self.log_path.open("r", errors="replace") as fh:
            for line in fh:
                m = _ACCESS_LINE.match(line)
                if m is None:
                    continue
                path, _, query = m["uri"].partition("?")
                entries.append(AccessLogEntry(m["method"], path, query, int(m["status"])))
        return entries

    def requests(self, method: str, path_substring: str) -> int:
        """Count requests with this method whose path (no query) contains the substring."""
        return sum(
            1
            for entry in self.access_log()
            if entry.method == method.upper() and path_substring in entry.path
        )

    def ranged_gets(self, digest: str) -> int:
        """Count answers 206 (a resumed download) to a GET of the blob `digest`."""
        return sum(1 for e in self.access_log() if e.status == 206 and digest in e.path)

    def blob_gets(self, digest: str) -> int:
        """Count ``GET /v2/<any repo>/blobs/<digest>`` requests (HEADs are not counted)."""
        count = 0
        for entry in self.access_log():
            m = _BLOB_PATH.match(entry.path)
            if entry.method == "GET" and m is not None and m["digest"] == digest:
                count += 1
        return count


def trust(certs_dir: Path, host: str, ca: trustme.CA) -> None:
    """`ca` for `host` in a certs.d directory, as docker and ferryd read it:
    <host>/ca.crt."""
    certs = certs_dir / host
    certs.mkdir(parents=True, exist_ok=True)
    ca.cert_pem.write_to_path(str(certs / "ca.crt"))


def write_tls(workdir: Path, ca: trustme.CA) -> tuple[Path, Path, Path]:
    leaf = ca.issue_cert("127.0.0.1", "localhost")
    cert_path = workdir / "server.crt"
    key_path = workdir / "server.key"
    cert_path.write_bytes(b"".join(blob.bytes() for blob in leaf.cert_chain_pems))
    leaf.private_key_pem.write_to_path(str(key_path))
    cert_dir = workdir / "certs.d"
    cert_dir.mkdir(exist_ok=True)
    ca.cert_pem.write_to_path(str(cert_dir / "ca.crt"))
    return cert_path, key_path, cert_dir


def _write_htpasswd(path: Path, username: str, password: str) -> None:
    import bcrypt  # only needed for auth-enabled registries

    hashed = bcrypt.hashpw(password.encode(), bcrypt.gensalt(rounds=5)).decode()
    path.write_text(f"{username}:{hashed}\n")


def start_registry(
    workdir: Path,
    *,
    tls: trustme.CA | None = None,
    htpasswd: tuple[str, str] | None = None,
) -> Registry:
    """Write a config into ``workdir`` and start a registry; returns it running."""
    if not have_registry_tools():
        raise RuntimeError(f"{REGISTRY_BIN} or {SKOPEO_BIN} is not installed")
    workdir.mkdir(parents=True, exist_ok=True)
    storage = workdir / "storage"
    storage.mkdir(exist_ok=True)
    http: dict[str, object] = {"secret": "ferryd-tests-not-secret"}
    config = registry_config(storage, http)
    ca_cert_pem = cert_dir = None
    if tls is not None:
        cert_path, key_path, cert_dir = write_tls(workdir, tls)
        http["tls"] = {"certificate": str(cert_path), "key": str(key_path)}
        ca_cert_pem = tls.cert_pem.bytes()
    username = password = None
    if htpasswd is not None:
        username, password = htpasswd
        htpasswd_path = workdir / "htpasswd"
        _write_htpasswd(htpasswd_path, username, password)
        config["auth"] = {"htpasswd": {"realm": "ferryd-tests", "path": str(htpasswd_path)}}

    def make(host: str, config_path: Path) -> Registry:
        return Registry(
            host=host,
            url=f"{'https' if tls else 'http'}://{host}",
            storage=storage,
            config_path=config_path,
            log_path=workdir / "registry.log",
            ca_cert_pem=ca_cert_pem,
            username=username,
            password=password,
            cert_dir=cert_dir,
        )

    return start_on_a_free_port(workdir, config, http, make)


def registry_config(storage: Path, http: dict[str, object]) -> dict[str, object]:
    """A registry's config: its storage (deletes on, no upload purging), an access
    log for the tests to count requests in, and `http`."""
    return {
        "version": 0.1,
        "log": {"level": "info", "formatter": "text", "accesslog": {"disabled": False}},
        "storage": {
            "filesystem": {"rootdirectory": str(storage)},
            "delete": {"enabled": True},
            "maintenance": {"uploadpurging": {"enabled": False}},
        },
        "http": http,
    }


def start_on_a_free_port(
    workdir: Path,
    config: dict[str, object],
    http: dict[str, object],
    make: Callable[[str, Path], _R],
) -> _R:
    """Write `config` (its `http` section, given a free loopback port) to
    ``workdir/config.yml`` and start the registry `make(host, config_path)` builds."""
    config_path = workdir / "config.yml"
    for attempt in range(3):
        host = f"127.0.0.1:{free_port()}"
        http["addr"] = host
        # JSON is valid YAML, and saves a PyYAML dependency.
        config_path.write_text(json.dumps(config, indent=2) + "\n")
        registry = make(host, config_path)
        try:
            registry.start()
        except RuntimeError as exc:
            # Someone else took the port between free_port() and the registry's bind.
            if "address already in use" in str(exc) and attempt < 2:
                continue
            raise
        return registry
    raise AssertionError("unreachable")


@contextlib.contextmanager
def fixture_registry(
    factory: pytest.TempPathFactory,
    name: str,
    *,
    tls: trustme.CA | None = None,
    htpasswd: tuple[str, str] | None = None,
) -> Iterator[Registry]:
    """A registry for a fixture, in a new temp dir named after `name`; the tests that
    ask for it skip where Debian's registry and skopeo are not installed."""
    if not have_registry_tools():
        pytest.skip("Debian's docker-registry and skopeo are not installed")
    with start_registry(factory.mktemp(name), tls=tls, htpasswd=htpasswd) as registry:
        yield registry


def skopeo_env(workdir: Path) -> dict[str, str]:
    """A hermetic environment for skopeo: own policy, registries.conf and auth file."""
    workdir.mkdir(parents=True, exist_ok=True)
    policy = workdir / "policy.json"
    policy.write_text('{"default": [{"type": "insecureAcceptAnything"}]}\n')
    registries_conf = workdir / "registries.conf"
    registries_conf.write_text("unqualified-search-registries = []\n")
    (workdir / "registries.d").mkdir(exist_ok=True)
    (workdir / "tmp").mkdir(exist_ok=True)
    return {
        "PATH": "/usr/bin:/bin",
        "HOME": str(workdir),
        "TMPDIR": str(workdir / "tmp"),
        "CONTAINERS_REGISTRIES_CONF": str(registries_conf),
        "REGISTRY_AUTH_FILE": str(workdir / "auth.json"),
        "XDG_RUNTIME_DIR": str(workdir),
        "XDG_CONFIG_HOME": str(workdir),
    }


def run_skopeo(args: list[str], *, workdir: Path, timeout: float = 600.0) -> str:
    """Run skopeo hermetically; return stdout, raise with stderr on failure."""
    env = skopeo_env(workdir)
    cmd = [
        SKOPEO_BIN,
        f"--policy={workdir / 'policy.json'}",
        f"--registries.d={workdir / 'registries.d'}",
        f"--tmpdir={env['TMPDIR']}",
        *args,
    ]
    proc = subprocess.run(
        cmd, capture_output=True, env=env, timeout=timeout, check=False, stdin=subprocess.DEVNULL
    )
    if proc.returncode != 0:
        raise RuntimeError(
            f"skopeo failed ({proc.returncode}): {' '.join(cmd)}\n"
            f"{proc.stderr.decode(errors='replace')}"
        )
    return proc.stdout.decode()


def skopeo_workdir(registry: Registry) -> Path:
    """Per-registry scratch directory for skopeo's config and temp files."""
    path = registry.config_path.parent / "skopeo"
    path.mkdir(exist_ok=True)
    return path
