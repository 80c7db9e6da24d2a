"""/info, /transfers and `ferryd ps`, the request log, and secrets kept out of both."""

from __future__ import annotations

import base64
import json
import os
import shutil
import subprocess
import sys
import threading
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

import pytest
import trustme

from conftest import PASSWORD, USER
from support.daemon import Daemon, errors
from support.docker_cli import docker
from support.images import LayerSpec, build_image, seed
from support.registry import Registry
from support.throttle import throttled

MB = 1_000_000
needs_docker = pytest.mark.skipif(shutil.which("docker") is None, reason="docker CLI not installed")


def test_info_has_what_docker_info_shows(
    registry: Registry, start_daemon: Callable[..., Daemon], layout: Path
) -> None:
    build_image(layout, layers=[LayerSpec(size=2000, seed=801)])
    seed(registry, layout, "latest", "info/app:v1")
    daemon = start_daemon(registry_mirrors={"docker.io": ["https://mirror.example"]})
    assert errors(daemon.pull(f"{registry.host}/info/app:v1")) == []

    info = daemon.client().get_json("/info")

    assert info["Images"] == 1
    assert info["Containers"] == 0
    assert info["DockerRootDir"] == str(daemon.root)
    assert info["RegistryConfig"]["InsecureRegistryCIDRs"] == ["127.0.0.0/8", "::1/128"]
    assert info["RegistryConfig"]["Mirrors"] == ["https://mirror.example"]
    assert info["ServerVersion"]
    assert info["NCPU"] >= 1
    assert info["MemTotal"] > 0
    assert info["OperatingSystem"]


def test_info_hides_the_proxy_password(start_daemon: Callable[..., Daemon]) -> None:
    daemon = start_daemon(proxy="http://user:hunter2@proxy.example:3128")

    info = daemon.client().get_json("/info")

    assert info["HttpProxy"] == "http://user:xxxxx@proxy.example:3128"
    assert "hunter2" not in json.dumps(info)


def test_ps_shows_a_running_download_and_nothing_once_it_is_done(
    registry: Registry, start_daemon: Callable[..., Daemon], layout: Path
) -> None:
    built = build_image(layout, layers=[LayerSpec(size=6 * MB, seed=802, compression="none")])
    seed(registry, layout, "latest", "ps/app:v1")
    daemon = start_daemon()
    with throttled(registry.host, rate=3 * MB) as proxy:
        reference = f"{proxy.host}/ps/app:v1"
        result: list[list[dict[str, Any]]] = []
        puller = threading.Thread(target=lambda: result.append(daemon.pull(reference)))
        puller.start()
        transfers = _wait_for_transfers(daemon)
        listing = _ferryd(daemon, "ps")
        puller.join(60)

    [transfer] = transfers
    digest = built.layers[0].digest
    assert transfer["Action"] == "download"
    assert transfer["Name"] == f"{proxy.host}/ps/app@{digest}"
    assert transfer["ID"] == digest[7:19]
    assert transfer["Watchers"] == 1
    assert listing.returncode == 0, listing.stderr
    header, row = listing.stdout.splitlines()
    assert header.split() == ["ACTION", "ID", "STATUS", "PROGRESS", "CLIENTS", "STARTED", "NAME"]
    assert row.startswith("download")
    assert digest[7:19] in row
    assert errors(result[0]) == []
    assert daemon.client().get_json("/transfers") == []
    [only_header] = _ferryd(daemon, "ps").stdout.splitlines()
    assert only_header.split() == header.split()


def _wait_for_transfers(daemon: Daemon) -> list[dict[str, Any]]:
    deadline = time.monotonic() + 30
    while not (transfers := daemon.client().get_json("/transfers")):
        assert time.monotonic() < deadline, "no transfer showed up"
        time.sleep(0.01)
    result: list[dict[str, Any]] = transfers
    return result


def test_every_request_is_logged_with_the_clients_uid_and_pid(daemon: Daemon) -> None:
    daemon.client().get_json("/images/json")

    [entry] = [e for e in daemon.log_events("api.request") if e["path"] == "/images/json"]
    assert entry["method"] == "GET"
    assert entry["status"] == 200
    assert entry["seconds"] >= 0
    assert (entry["uid"], entry["gid"], entry["pid"]) == (os.getuid(), os.getgid(), os.getpid())


def test_passwords_and_auth_headers_never_reach_the_log_or_an_answer(
    tls_registry: Registry,
    start_daemon: Callable[..., Daemon],
    layout: Path,
    ca: trustme.CA,
) -> None:
    daemon = start_daemon(insecure_registries=[], log_level="debug")
    certs = daemon.workdir / "certs.d" / tls_registry.host
    certs.mkdir(parents=True)
    ca.cert_pem.write_to_path(str(certs / "ca.crt"))
    build_image(layout, layers=[LayerSpec(size=3000, seed=803)])
    seed(tls_registry, layout, "latest", "private/secret:v1")
    header = base64.urlsafe_b64encode(
        json.dumps({"username": USER, "password": PASSWORD}).encode()
    ).decode()
    reference = f"{tls_registry.host}/private/secret:v1"

    answers = [daemon.pull(reference, auth=header)]
    answers.append(daemon.pull(reference, auth=header.replace("A", "B")))  # wrong login
    answers.append(daemon.client().get_json("/info"))
    answers.append(daemon.client().get_json(f"/images/{reference}/json"))
    daemon.stop()

    basic = base64.b64encode(f"{USER}:{PASSWORD}".encode()).decode()
    texts = [daemon.log_path.read_text(), json.dumps(answers)]
    for secret in (PASSWORD, header, basic, f"Basic {basic}"):
        for text in texts:
            assert secret not in text


def test_a_failed_transfer_logs_how_far_it_got(
    registry: Registry, start_daemon: Callable[..., Daemon], layout: Path
) -> None:
    built = build_image(layout, layers=[LayerSpec(size=2000, seed=804)])
    seed(registry, layout, "latest", "failed/app:v1")
    blob = registry.storage.rglob(f"blobs/sha256/{built.layers[0].digest[7:9]}/*/data")
    [data] = [path for path in blob if built.layers[0].digest[7:] in str(path)]
    data.write_bytes(b"not the layer")  # the registry now serves wrong bytes
    daemon = start_daemon()

    [error] = errors(daemon.pull(f"{registry.host}/failed/app:v1"))

    [failed] = daemon.log_events("transfer.failed")
    assert failed["error"] == error
    assert {"bytes", "seconds"} <= set(failed)


def _ferryd(daemon: Daemon, *args: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [sys.executable, "-m", "ferryd", "-H", daemon.host, *args],
        capture_output=True,
        text=True,
        timeout=60,
    )


# -- the docker CLI -----------------------------------------------------------------------


@needs_docker
def test_docker_version_shows_ferryd_as_the_engine(daemon: Daemon, docker_config: Path) -> None:
    done = docker(daemon, "version", "--format", "{{json .Server}}", config=docker_config)

    server = json.loads(done.stdout)
    assert server["Platform"]["Name"] == "ferryd"
    assert server["Components"][0]["Name"] == "Engine"
    assert server["ApiVersion"] == "1.47"


@needs_docker
def test_docker_info_shows_the_store(
    registry: Registry, daemon: Daemon, layout: Path, docker_config: Path
) -> None:
    build_image(layout, layers=[LayerSpec(size=2000, seed=805)])
    seed(registry, layout, "latest", "dinfo/app:v1")
    assert errors(daemon.pull(f"{registry.host}/dinfo/app:v1")) == []

    done = docker(daemon, "info", config=docker_config)

    assert " Images: 1" in done.stdout
    assert f" Docker Root Dir: {daemon.root}" in done.stdout
    assert " Storage Driver: ferryd" in done.stdout


@needs_docker
def test_docker_events_replays_a_pull_and_a_tag(
    registry: Registry, daemon: Daemon, layout: Path, docker_config: Path
) -> None:
    build_image(layout, layers=[LayerSpec(size=2000, seed=806)])
    seed(registry, layout, "latest", "devents/app:v1")
    reference = f"{registry.host}/devents/app:v1"
    docker(daemon, "pull", reference, config=docker_config)
    docker(daemon, "tag", reference, f"{registry.host}/devents/app:v2", config=docker_config)

    done = docker(
        daemon,
        "events",
        "--since",
        "0",
        "--until",
        str(int(time.time()) + 1),
        "--format",
        "{{json .}}",
        config=docker_config,
    )

    events = [json.loads(line) for line in done.stdout.splitlines()]
    assert [(e["Type"], e["Action"]) for e in events] == [("image", "pull"), ("image", "tag")]
    assert events[0]["Actor"]["ID"] == reference


@needs_docker
def test_docker_events_follows_live(
    registry: Registry, daemon: Daemon, layout: Path, docker_config: Path
) -> None:
    build_image(layout, layers=[LayerSpec(size=2000, seed=807)])
    seed(registry, layout, "latest", "dlive/app:v1")
    watcher = subprocess.Popen(
        ["docker", "-H", daemon.host, "events", "--format", "{{.Action}} {{.Actor.ID}}"],
        stdout=subprocess.PIPE,
        text=True,
        env={"PATH": "/usr/local/bin:/usr/bin:/bin", "DOCKER_CONFIG": str(docker_config)},
    )
    try:
        deadline = time.monotonic() + 20
        while not [e for e in daemon.log_events("api.request") if e["path"].endswith("/events")]:
            # The request is logged when its stream ends; wait for the watcher instead.
            if daemon.client().get_json("/info")["NEventsListener"] == 1:
                break
            assert time.monotonic() < deadline, "docker events never connected"
            time.sleep(0.05)
        assert errors(daemon.pull(f"{registry.host}/dlive/app:v1")) == []
        assert watcher.stdout is not None
        line = watcher.stdout.readline()
    finally:
        watcher.kill()
        watcher.wait()
        if watcher.stdout is not None:
            watcher.stdout.close()

    assert line.strip() == f"pull {registry.host}/dlive/app:v1"
