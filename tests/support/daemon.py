"""Run the real daemon (`python -m ferryd serve`) on a temp root and socket."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import httpx
import trustme

from ferryd.cli.client import Client, DaemonError

from . import forkserver
from .registry import trust
from .waiting import wait_until


@dataclass
class Daemon:
    workdir: Path
    settings: dict[str, Any] = field(default_factory=dict)
    process: subprocess.Popen[bytes] | forkserver.ForkedProcess | None = None

    @property
    def root(self) -> Path:
        return self.workdir / "root"

    @property
    def socket(self) -> Path:
        return self.workdir / "ferryd.sock"

    @property
    def host(self) -> str:
        return f"unix://{self.socket}"

    @property
    def log_path(self) -> Path:
        return self.workdir / "ferryd.log"

    @property
    def config_path(self) -> Path:
        return self.workdir / "ferryd.toml"

    def start(self) -> None:
        write_config(self.workdir, self.settings)
        self.process = forkserver.spawn(
            ["serve", "--config", str(self.config_path)], env=dict(os.environ), log=self.log_path
        )
        wait_until(
            self._answering,
            20,
            what=lambda: f"ferryd to answer on {self.socket}:\n{self.log_tail()}",
            interval=0.02,
        )

    def _answering(self) -> bool:
        assert self.process is not None
        if self.process.poll() is not None:
            raise RuntimeError(f"ferryd exited {self.process.returncode}:\n{self.log_tail()}")
        try:
            Client(self.host, timeout=5).request("GET", "/_ping").read()
        except DaemonError:
            return False
        return True

    def stop(self) -> int:
        assert self.process is not None
        if self.process.poll() is None:
            self.process.send_signal(signal.SIGTERM)
            try:
                self.process.wait(20)
            except subprocess.TimeoutExpired:
                self.process.kill()
                self.process.wait()
        return self.process.wait()

    def stop_later(self) -> None:
        """SIGTERM, and let it exit while the next test runs (a fixture's clean-up: an
        idle daemon takes a fifth of a second to stop, and nobody reads its exit code;
        the fork server kills what has not stopped when the tests end)."""
        assert self.process is not None
        if isinstance(self.process, forkserver.ForkedProcess):
            self.process.terminate()
        else:
            self.stop()

    def reload(self, **changes: Any) -> dict[str, Any]:
        """Rewrite the config file with `changes`, send SIGHUP, and return the daemon's
        `daemon.reloaded` or `daemon.reload_failed` log event."""
        assert self.process is not None
        self.settings = {**self.settings, **changes}
        write_config(self.workdir, self.settings)
        before = len(self._reload_events())
        self.process.send_signal(signal.SIGHUP)
        events = wait_until(
            lambda: self._reload_events()[before:],
            20,
            what=lambda: f"ferryd to reload:\n{self.log_tail()}",
        )
        return events[-1]

    def _reload_events(self) -> list[dict[str, Any]]:
        return [
            e
            for e in self.log_events()
            if e.get("event") in ("daemon.reloaded", "daemon.reload_failed")
        ]

    def restart(self) -> None:
        self.stop()
        self.start()

    @property
    def alive(self) -> bool:
        return self.process is not None and self.process.poll() is None

    def client(self) -> Client:
        return Client(self.host, timeout=120)

    def http(self, timeout: float = 120) -> httpx.Client:
        """An httpx client on the daemon's socket, for the status codes and headers
        that `client()` turns into errors."""
        return httpx.Client(
            transport=httpx.HTTPTransport(uds=str(self.socket)),
            base_url="http://ferryd",
            timeout=timeout,
            trust_env=False,
        )

    def ferryd(self, *args: str) -> subprocess.CompletedProcess[str]:
        """Our CLI against this daemon: `ferryd -H <socket> <args>`."""
        return ferryd("-H", self.host, *args)

    def trust(self, host: str, ca: trustme.CA) -> None:
        """The daemon verifies `host`'s certificate with `ca` (its certs.d)."""
        trust(self.workdir / "certs.d", host, ca)

    def pull(
        self,
        reference: str,
        *,
        platform: str | None = None,
        auth: str | None = None,
        **query: str,
    ) -> list[dict[str, Any]]:
        """The whole progress stream of a pull, with `query` as more of its parameters
        (`platforms=`, `all-platforms=`); an error ends it as a message, whether the
        daemon streamed it or refused with an HTTP status."""
        params = {"fromImage": reference, **query}
        if platform:
            params["platform"] = platform
        headers = {"X-Registry-Auth": auth} if auth else {}
        try:
            return list(self.client().stream("POST", "/images/create", params, headers))
        except DaemonError as exc:
            # Refused before streaming (an HTTP error status, as dockerd): the same
            # message, as the stream's error would carry it.
            return [{"error": str(exc).removeprefix("Error response from daemon: ")}]

    def images(self) -> list[dict[str, Any]]:
        result: list[dict[str, Any]] = self.client().get_json("/images/json")
        return result

    def inspect(self, name: str) -> dict[str, Any]:
        result: dict[str, Any] = self.client().get_json(f"/images/{name}/json")
        return result

    def log_events(self, event: str | None = None) -> list[dict[str, Any]]:
        events = []
        for line in self.log_path.read_text().splitlines():
            try:
                entry = json.loads(line)
            except ValueError:
                continue
            if event is None or entry.get("event") == event:
                events.append(entry)
        return events

    def logged_requests(self, path: str) -> list[dict[str, Any]]:
        """The `api.request` lines for `path`. Each is written once its answer has been
        sent, so a moment after the client has it: this waits for the first one."""
        return wait_until(
            lambda: [e for e in self.log_events("api.request") if e["path"] == path],
            20,
            what=f"a logged request for {path}",
        )

    def log_tail(self, lines: int = 40) -> str:
        try:
            return "\n".join(self.log_path.read_text().splitlines()[-lines:])
        except FileNotFoundError:
            return ""

    def partial_path(self, digest: str) -> Path:
        """Where a download of `digest` is kept while it runs (and when it is cut)."""
        return self.root / "partial" / ("sha256-" + digest.removeprefix("sha256:"))

    def wait_for_download(self, digest: str, size: int = 1_000_000) -> Path:
        """Until the download of `digest` has written more than `size` bytes; its
        partial file."""
        partial = self.partial_path(digest)
        wait_until(
            lambda: partial.exists() and partial.stat().st_size > size,
            30,
            what=f"the download of {digest} to pass {size} bytes",
        )
        return partial

    def blob_files(self) -> list[Path]:
        return sorted(p for p in (self.root / "blobs").rglob("*") if p.is_file())


def write_config(workdir: Path, settings: dict[str, Any]) -> Path:
    """The config file of a daemon in `workdir`: its root, socket and certs.d there, a
    short retry delay, and `settings` over them."""
    workdir.mkdir(parents=True, exist_ok=True)
    path = workdir / "ferryd.toml"
    defaults = {
        "root": str(workdir / "root"),
        "socket": str(workdir / "ferryd.sock"),
        "retry_delay": 0.05,
        "certs_dir": str(workdir / "certs.d"),
    }
    path.write_text(toml({**defaults, **settings}))
    return path


def toml(settings: dict[str, Any]) -> str:
    return "".join(f"{key} = {_toml_value(value)}\n" for key, value in settings.items())


def _toml_value(value: Any) -> str:
    """JSON is TOML for strings, numbers, booleans and arrays; tables need `=`."""
    if isinstance(value, dict):
        pairs = ", ".join(f"{json.dumps(k)} = {_toml_value(v)}" for k, v in value.items())
        return "{" + pairs + "}"
    return json.dumps(value)


def ferryd(*args: str) -> subprocess.CompletedProcess[str]:
    """Our CLI as a user runs it (`python -m ferryd <args>`), its output as text."""
    return subprocess.run(
        [sys.executable, "-m", "ferryd", *args], capture_output=True, text=True, timeout=120
    )


def now() -> str:
    """This moment as the API's `since` and `until` take it (seconds.nanoseconds)."""
    return f"{time.time():.9f}"


def errors(messages: list[dict[str, Any]]) -> list[str]:
    return [m["error"] for m in messages if "error" in m]


def statuses(messages: list[dict[str, Any]], status: str) -> list[str]:
    """The layer ids that reported `status`."""
    return [m.get("id", "") for m in messages if m.get("status") == status]


def start_failure(done: subprocess.CompletedProcess[str]) -> dict[str, Any]:
    """The one `daemon.start_failed` line of a `ferryd serve` that could not start: its
    output is JSON lines only (a journal read with jq shows it), and nothing is left
    on stderr or as a traceback."""
    lines = [json.loads(line) for line in done.stdout.splitlines() if line.strip()]
    [failed] = [line for line in lines if line.get("event") == "daemon.start_failed"]
    assert failed["level"] == "error"
    assert failed["exit_status"] == done.returncode
    assert done.stderr == ""
    assert "Traceback" not in done.stdout
    return failed
