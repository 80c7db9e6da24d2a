"""/info, /transfers and `ferryd ps`, the request log (with the client's credentials
from the socket), and secrets kept out of both the log and every answer."""

from __future__ import annotations

import base64
import http.client
import json
import os
import socket
import subprocess
import sys
import time
from collections.abc import AsyncIterator, Callable
from contextlib import asynccontextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import anyio
import pytest
import trustme

from ferryd import __version__
from ferryd.cli.client import DaemonError
from support.app import in_process_api
from support.daemon import Daemon, errors, ferryd
from support.fakes import FakeRegistry, FakeServer, Reply, Request, registry_error, serve_registry
from support.images import BuiltImage, LayerSpec, blob_path, build_image, seed
from support.registry import PASSWORD, USER, Registry
from support.waiting import await_until

MiB = 1 << 20
REPO = "team/app"
STALL_AT = MiB + MiB // 2  # one ~1 MiB batch is written and reported, the rest waits
PS_HEADER = ["ACTION", "ID", "STATUS", "PROGRESS", "CLIENTS", "STARTED", "NAME"]


# -- /info ------------------------------------------------------------------------------


def test_info_has_what_docker_info_reads(
    registry: Registry, start_daemon: Callable[..., Daemon], layout: Path
) -> None:
    build_image(layout, layers=[LayerSpec(size=2000, seed=801)])
    seed(registry, layout, "latest", "info/app:v1")
    daemon = start_daemon(registry_mirrors={"docker.io": ["https://mirror.example"]})
    empty = daemon.client().get_json("/info")
    assert errors(daemon.pull(f"{registry.host}/info/app:v1")) == []

    info = daemon.client().get_json("/info")

    assert (empty["Images"], info["Images"]) == (0, 1)
    assert info["Containers"] == info["ContainersRunning"] == 0
    assert info["Driver"] == "ferryd"
    assert info["DockerRootDir"] == str(daemon.root)
    assert ["Root Dir", str(daemon.root)] in info["DriverStatus"]
    assert info["RegistryConfig"]["InsecureRegistryCIDRs"] == ["127.0.0.0/8", "::1/128"]
    assert info["RegistryConfig"]["Mirrors"] == ["https://mirror.example"]
    assert info["RegistryConfig"]["IndexConfigs"]["docker.io"]["Mirrors"] == [
        "https://mirror.example"
    ]
    assert info["ServerVersion"] == __version__
    assert info["NCPU"] == os.cpu_count()
    assert info["MemTotal"] > 0
    assert info["OperatingSystem"]
    assert info["OSType"] == "linux"
    assert info["NEventsListener"] == 0
    assert info["Warnings"] == []


async def test_info_lists_insecure_hosts_apart_from_insecure_networks(tmp_path: Path) -> None:
    """The docker CLI reads every InsecureRegistryCIDRs entry as a CIDR: a host there
    makes `docker info` fail. dockerd lists hosts as index configs that are not secure."""
    registries = ["10.0.0.0/8", "10.1.2.3", "registry.lan:5000", "http://Other.lan/"]
    async with in_process_api(tmp_path, insecure_registries=registries) as api:
        config = (await api.get("/info")).json()["RegistryConfig"]

    assert config["InsecureRegistryCIDRs"] == ["10.0.0.0/8", "10.1.2.3/32"]
    insecure = {name for name, index in config["IndexConfigs"].items() if not index["Secure"]}
    assert insecure == {"registry.lan:5000", "other.lan"}
    assert config["IndexConfigs"]["docker.io"]["Secure"] is True


async def test_info_hides_the_proxy_password(tmp_path: Path) -> None:
    async with in_process_api(tmp_path, proxy="http://user:hunter2@proxy.example:3128") as api:
        info = (await api.get("/info")).json()

    assert info["HttpProxy"] == info["HttpsProxy"] == "http://user:xxxxx@proxy.example:3128"
    assert "hunter2" not in json.dumps(info)


# -- /transfers and ferryd ps, with a registry that stalls a blob -----------------------


@dataclass
class Stalled:
    """A fake registry serving one image whose layer stalls once, `STALL_AT` bytes in,
    until `release` is set."""

    server: FakeServer
    registry: FakeRegistry
    image: BuiltImage
    release: anyio.Event

    @property
    def reference(self) -> str:
        return f"{self.server.host}/{REPO}:v1"

    @property
    def layer(self) -> str:
        return self.image.layers[0].digest

    @property
    def transfer_name(self) -> str:
        return f"{self.server.host}/{REPO}@{self.layer}"


def _serving(layout: Path, seed_number: int) -> tuple[FakeRegistry, BuiltImage]:
    """A fake registry with a 5 MiB image built in `layout` (streamed: over SMALL_BLOB)."""
    layer = LayerSpec(size=5 * MiB, seed=seed_number, compression="none")
    image = build_image(layout, layers=[layer])
    registry = FakeRegistry()
    registry.add_manifest(image.manifest, image.manifest_media_type, tag="v1")
    registry.add_blob(image.config)
    for built in image.layers:
        registry.add_blob(blob_path(layout, built.digest).read_bytes())
    return registry, image


@asynccontextmanager
async def _stalled(layout: Path, seed_number: int) -> AsyncIterator[Stalled]:
    registry, image = _serving(layout, seed_number)
    release = anyio.Event()
    digest = image.layers[0].digest

    def stall(request: Request) -> Reply:
        reply = registry.blob_reply(request, digest)
        reply.stall_after = STALL_AT
        reply.release = release
        return reply

    registry.on("GET", f"/v2/{REPO}/blobs/{digest}", stall, times=1)
    async with serve_registry(registry) as server:
        try:
            yield Stalled(server, registry, image, release)
        finally:
            release.set()


async def _transfers(daemon: Daemon) -> list[dict[str, Any]]:
    rows: list[dict[str, Any]] = await anyio.to_thread.run_sync(
        daemon.client().get_json, "/transfers"
    )
    return rows


async def _running_transfers(daemon: Daemon) -> list[dict[str, Any]]:
    """/transfers once the download has written its first batch (and says so)."""

    async def running() -> list[dict[str, Any]]:
        rows = await _transfers(daemon)
        return rows if rows and rows[0]["Current"] else []

    return await await_until(running, 30, what="a running transfer", interval=0.02)


async def _no_transfers(daemon: Daemon) -> None:
    """Poll: the daemon is another process, with no event to wait on from here."""

    async def none() -> bool:
        return not await _transfers(daemon)

    await await_until(none, 30, what="no running transfers", interval=0.02)


async def test_transfers_and_ps_show_a_running_download_and_nothing_once_it_is_done(
    start_daemon: Callable[..., Daemon], layout: Path
) -> None:
    daemon = start_daemon()
    async with _stalled(layout, 802) as stalled, anyio.create_task_group() as tg:
        result: list[list[dict[str, Any]]] = []

        async def pull() -> None:
            result.append(await anyio.to_thread.run_sync(daemon.pull, stalled.reference))

        tg.start_soon(pull)
        [transfer] = await _running_transfers(daemon)
        listing = await anyio.to_thread.run_sync(daemon.ferryd, "ps")
        stalled.release.set()

    size = stalled.image.layers[0].size
    assert transfer["Action"] == "download"
    assert transfer["Name"] == stalled.transfer_name
    assert transfer["ID"] == stalled.layer[7:19]
    assert transfer["Status"] == "Downloading"
    assert MiB <= transfer["Current"] <= STALL_AT
    assert transfer["Total"] == size
    assert transfer["Watchers"] == 1
    assert time.time() - 60 < transfer["Started"] <= time.time()
    assert listing.returncode == 0, listing.stderr
    # The pull as a job, its one layer not done yet; then the transfer moving it.
    jobs, transfers = listing.stdout.split("\n\n")
    job_header, job = jobs.splitlines()
    assert job_header.split() == ["JOB", "ACTION", "PHASE", "LAYERS", "STARTED", "REFERENCE"]
    assert job.split()[1:4] == ["pull", "layers", "0/1"]
    assert job.endswith(stalled.reference)
    header, row = transfers.splitlines()
    assert header.split() == PS_HEADER
    assert row.split()[:3] == ["download", stalled.layer[7:19], "Downloading"]
    assert f"/{size / 1e6:.4g}MB (" in row
    assert row.endswith(stalled.transfer_name)
    assert errors(result[0]) == []
    assert daemon.client().get_json("/transfers") == []
    assert daemon.ferryd("ps").stdout.split() == header.split()


async def test_a_download_its_only_client_leaves_is_cancelled_and_gone_from_the_list(
    start_daemon: Callable[..., Daemon], layout: Path
) -> None:
    daemon = start_daemon()
    async with _stalled(layout, 803) as stalled:
        response: http.client.HTTPResponse = await anyio.to_thread.run_sync(
            lambda: daemon.client().request(
                "POST", "/images/create", {"fromImage": stalled.reference}
            )
        )
        [transfer] = await _running_transfers(daemon)
        response.close()
        await _no_transfers(daemon)

    [cancelled] = daemon.log_events("transfer.cancelled")
    assert cancelled["name"] == stalled.transfer_name
    assert cancelled["bytes"] == transfer["Current"]
    assert cancelled["seconds"] > 0


async def test_a_failed_transfer_logs_how_far_it_got_and_for_how_long(
    start_daemon: Callable[..., Daemon], layout: Path
) -> None:
    """The first answer is cut STALL_AT bytes in, every later one is a 503: the log
    line must say what was fetched, not what the last retry countdown said (nothing)."""
    registry, image = _serving(layout, 804)
    digest = image.layers[0].digest
    blob = f"/v2/{REPO}/blobs/{digest}"

    def cut(request: Request) -> Reply:
        reply = registry.blob_reply(request, digest)
        reply.cut_after, reply.cut_delay = STALL_AT, 0
        return reply

    registry.on("GET", blob, cut, times=1)
    registry.on("GET", blob, registry_error(503, "UNAVAILABLE", "try later"))
    daemon = start_daemon(max_download_attempts=3)
    async with serve_registry(registry) as server:
        messages = await anyio.to_thread.run_sync(daemon.pull, f"{server.host}/{REPO}:v1")

    [error] = errors(messages)
    [failed] = daemon.log_events("transfer.failed")
    assert failed["name"] == f"{server.host}/{REPO}@{digest}"
    assert failed["error"] in error
    assert failed["bytes"] == STALL_AT
    assert failed["seconds"] > 0
    assert len(registry.seen("GET", blob)) == 3
    partial = daemon.root / "partial" / f"sha256-{digest[7:]}"
    assert partial.stat().st_size == STALL_AT  # kept for the next pull, as logged


def test_ps_with_nothing_running_prints_only_its_header(daemon: Daemon) -> None:
    done = daemon.ferryd("ps")

    assert done.returncode == 0, done.stderr
    assert done.stdout.split() == [
        "ACTION",
        "ID",
        "STATUS",
        "PROGRESS",
        "CLIENTS",
        "STARTED",
        "NAME",
    ]


def test_ps_without_a_daemon_says_so_and_exits_1(tmp_path: Path) -> None:
    done = ferryd("-H", f"unix://{tmp_path}/none.sock", "ps")

    assert done.returncode == 1
    assert "cannot connect to the ferryd daemon" in done.stderr
    assert "Traceback" not in done.stderr


# -- the request log --------------------------------------------------------------------


def test_every_request_is_logged_with_the_clients_uid_gid_and_pid(daemon: Daemon) -> None:
    daemon.client().get_json("/images/json", {"all": "1"})

    [entry] = daemon.logged_requests("/images/json")
    assert entry["level"] == "info"
    assert entry["method"] == "GET"
    assert entry["query"] == "all=1"
    assert entry["status"] == 200
    assert 0 <= entry["seconds"] < 10
    assert (entry["uid"], entry["gid"], entry["pid"]) == (os.getuid(), os.getgid(), os.getpid())


def test_the_pid_logged_is_that_of_the_process_on_the_other_end(daemon: Daemon) -> None:
    client = subprocess.Popen(
        [sys.executable, "-m", "ferryd", "-H", daemon.host, "ps"],
        stdout=subprocess.DEVNULL,
        stderr=subprocess.DEVNULL,
    )
    assert client.wait(60) == 0

    [entry] = daemon.logged_requests("/transfers")
    assert entry["pid"] == client.pid
    assert entry["pid"] != os.getpid()


def test_each_request_on_a_kept_alive_connection_is_logged_with_the_client(
    daemon: Daemon,
) -> None:
    """The docker CLI keeps its connection open: the credentials taken when it was
    made belong to every request that comes over it."""
    sock = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
    sock.connect(str(daemon.socket))
    connection = http.client.HTTPConnection("localhost")
    connection.sock = sock
    for path in ("/version", "/info"):
        connection.request("GET", path)
        with connection.getresponse() as response:
            assert response.status == 200
            response.read()
    connection.close()

    for path in ("/version", "/info"):
        [entry] = daemon.logged_requests(path)
        assert (entry["uid"], entry["pid"]) == (os.getuid(), os.getpid())


def test_refused_requests_are_logged_with_their_status(daemon: Daemon) -> None:
    for path in ("/images/nope:1/json", "/v1.47/no/such/route"):
        with pytest.raises(DaemonError, match="Error response from daemon"):
            daemon.client().request("GET", path)

    [inspect] = daemon.logged_requests("/images/nope:1/json")
    [unknown] = daemon.logged_requests("/v1.47/no/such/route")
    assert (inspect["status"], unknown["status"]) == (404, 404)


def test_request_headers_are_never_logged(daemon: Daemon) -> None:
    secret = base64.urlsafe_b64encode(b'{"password": "do-not-log-me"}').decode()
    headers = {"X-Registry-Auth": secret, "Authorization": "Basic ZG8tbm90OmxvZy1tZQ=="}
    daemon.client().request("GET", "/images/json", headers=headers).read()

    [entry] = daemon.logged_requests("/images/json")
    text = daemon.log_path.read_text()
    assert "do-not-log-me" not in text
    assert secret not in text
    assert "ZG8tbm90OmxvZy1tZQ==" not in text
    assert not {"headers", "x_registry_auth", "authorization"} & set(entry)


def test_every_log_line_is_one_json_object(start_daemon: Callable[..., Daemon]) -> None:
    daemon = start_daemon()
    daemon.client().get_json("/info")
    daemon.stop()

    for line in daemon.log_path.read_text().splitlines():
        assert isinstance(json.loads(line), dict), line


# -- secrets ----------------------------------------------------------------------------


def test_passwords_and_auth_headers_never_reach_the_log_or_an_answer(
    tls_registry: Registry,
    start_daemon: Callable[..., Daemon],
    layout: Path,
    ca: trustme.CA,
) -> None:
    daemon = start_daemon(insecure_registries=[], log_level="debug")
    daemon.trust(tls_registry.host, ca)
    build_image(layout, layers=[LayerSpec(size=3000, seed=805)])
    seed(tls_registry, layout, "latest", "private/secret:v1")
    reference = f"{tls_registry.host}/private/secret:v1"
    # As the docker CLI sends it: URL-safe base64 of the login, with the server.
    login = {"username": USER, "password": PASSWORD, "serveraddress": tls_registry.host}
    header = base64.urlsafe_b64encode(json.dumps(login).encode()).decode()
    wrong = base64.urlsafe_b64encode(
        json.dumps({**login, "password": PASSWORD + "-wrong"}).encode()
    ).decode()

    answers: list[Any] = [daemon.pull(reference, auth=header)]
    answers.append(daemon.pull(reference, auth=wrong))
    answers.append(daemon.pull(f"{tls_registry.host}/private/missing:v1", auth=header))
    answers.append(daemon.client().get_json("/info"))
    answers.append(daemon.client().get_json(f"/images/{reference}/json"))
    answers.append(daemon.client().get_json("/images/json"))
    answers.append(
        list(
            daemon.client().stream("GET", "/events", {"since": "0", "until": f"{time.time():.9f}"})
        )
    )
    daemon.stop()

    assert errors(answers[0]) == []
    assert errors(answers[1]) != []  # the wrong login was tried, and refused
    basic = base64.b64encode(f"{USER}:{PASSWORD}".encode()).decode()
    log, answered = daemon.log_path.read_text(), json.dumps(answers)
    assert daemon.log_events("api.request")  # the log is there to be searched
    for secret in (PASSWORD, header, wrong, basic, f"Basic {basic}"):
        assert secret not in log
        assert secret not in answered
