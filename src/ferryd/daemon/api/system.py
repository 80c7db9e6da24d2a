"""The engine's own routes: /_ping, /version, /info, /events (as dockerd's), /transfers.

`/transfers` is ferryd's: the running downloads and uploads, for `ferryd ps`.
"""

from __future__ import annotations

import contextlib
import os
import platform as host
import socket
import time
from collections.abc import AsyncIterator
from pathlib import Path
from typing import Any

import anyio
import msgspec
from starlette.requests import Request
from starlette.responses import JSONResponse, PlainTextResponse, Response, StreamingResponse

from ferryd import __version__
from ferryd.daemon.api.event_filters import EventFilter, parse_time
from ferryd.daemon.settings import Settings, hide_password
from ferryd.daemon.state import DaemonState
from ferryd.distribution.service import ImageService
from ferryd.errors import InvalidFilterError
from ferryd.oci.platform import host_platform
from ferryd.registry.endpoints import split_insecure

API_VERSION = "1.47"
MIN_API_VERSION = "1.24"


def engine_headers() -> dict[str, str]:
    return {
        "API-Version": API_VERSION,
        "OSType": "linux",
        "Docker-Experimental": "false",
        "Server": f"ferryd/{__version__}",
        "Cache-Control": "no-cache, no-store, must-revalidate",
        "Pragma": "no-cache",
    }


def _state(request: Request) -> DaemonState:
    state: DaemonState = request.app.state.daemon
    return state


def _service(request: Request) -> ImageService:
    service: ImageService = request.app.state.service
    return service


async def ping(request: Request) -> Response:
    return PlainTextResponse("" if request.method == "HEAD" else "OK", headers=engine_headers())


async def version(request: Request) -> Response:
    details = {
        "ApiVersion": API_VERSION,
        "MinAPIVersion": MIN_API_VERSION,
        "Os": "linux",
        "Arch": host_platform().architecture,
        "KernelVersion": host.release(),
    }
    build = {
        "GitCommit": "",
        # docker prints this as "Go version"; ferryd's runtime is Python.
        "GoVersion": f"python{host.python_version()}",
        "BuildTime": "",
        "Experimental": "false",
    }
    return JSONResponse(
        {
            "Platform": {"Name": "ferryd"},
            "Components": [
                {"Name": "Engine", "Version": __version__, "Details": {**details, **build}}
            ],
            "Version": __version__,
            **{key: value for key, value in build.items() if key != "Experimental"},
            **details,
        }
    )


async def info(request: Request) -> Response:
    """`docker info`'s shape: no containers, ferryd's store, registries and limits."""
    state = _state(request)
    settings = state.settings
    service = _service(request)
    images = await anyio.to_thread.run_sync(lambda: len(service.store.images.ids()))
    return JSONResponse(
        {
            "ID": _machine_id(),
            "Containers": 0,
            "ContainersRunning": 0,
            "ContainersPaused": 0,
            "ContainersStopped": 0,
            "Images": images,
            "Driver": "ferryd",
            "DriverStatus": [
                ["Root Dir", settings.root],
                ["Active downloads", str(service.downloads.active)],
                ["Active uploads", str(service.uploads.active)],
            ],
            "Plugins": {"Volume": [], "Network": [], "Authorization": None, "Log": []},
            "MemoryLimit": False,
            "SwapLimit": False,
            "CpuCfsPeriod": False,
            "CpuCfsQuota": False,
            "CPUShares": False,
            "CPUSet": False,
            "PidsLimit": False,
            "IPv4Forwarding": False,
            "Debug": settings.log_level == "debug",
            "NFd": _open_files(),
            "NGoroutines": 0,
            "SystemTime": time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime()),
            "LoggingDriver": "",
            "CgroupDriver": "none",
            "NEventsListener": state.events.watchers,
            "KernelVersion": host.release(),
            "OperatingSystem": _os_name(),
            "OSVersion": "",
            "OSType": "linux",
            "Architecture": host.machine(),
            "IndexServerAddress": "https://index.docker.io/v1/",
            "RegistryConfig": _registry_config(settings),
            "NCPU": os.cpu_count() or 1,
            "MemTotal": _memory_total(),
            "DockerRootDir": settings.root,
            "HttpProxy": hide_password(settings.proxy),
            "HttpsProxy": hide_password(settings.proxy),
            "NoProxy": "",
            "Name": socket.gethostname(),
            "Labels": [],
            "ExperimentalBuild": False,
            "ServerVersion": __version__,
            "Runtimes": {},
            "DefaultRuntime": "",
            "Swarm": {"LocalNodeState": "inactive", "ControlAvailable": False},
            "LiveRestoreEnabled": False,
            "Isolation": "",
            "InitBinary": "",
            "SecurityOptions": [],
            "Warnings": [],
        }
    )


async def events(request: Request) -> Response:
    """`GET /events?since=&until=&filters=`: kept events first, then live ones.

    With `until` in the past the answer ends after the replay; with `until` ahead it
    ends then; without it, it goes on until the client leaves or the daemon stops.
    """
    query = request.query_params
    now = time.time_ns()
    wanted = EventFilter.parse(query.get("filters", ""))
    since = parse_time(query["since"], "since") if query.get("since") else None
    until = parse_time(query["until"], "until") if query.get("until") else None
    if since is not None and until is not None and since > until:
        raise InvalidFilterError(
            f"`since` time ({query['since']}) cannot be after `until` time ({query['until']})"
        )
    hub = _state(request).events

    async def lines() -> AsyncIterator[bytes]:
        with hub.watch() as (kept, live):
            # As dockerd: either bound asks for the kept events (`until` alone: all of
            # them up to it).
            if since is not None or until is not None:
                for event in kept:
                    in_range = (since or 0) <= event.time_nano and (
                        until is None or event.time_nano <= until
                    )
                    if in_range and wanted.matches(event):
                        yield msgspec.json.encode(event.to_docker()) + b"\n"
            if until is not None and until <= now:
                return
            # Until `until` by the wall clock: the loop's timers step in milliseconds
            # (libuv) and may wake a hair before it.
            while True:
                left = (until - time.time_ns()) / 1e9 if until is not None else None
                if left is not None and left <= 0:
                    return
                with anyio.move_on_after(left) as scope:
                    async for event in live:
                        if wanted.matches(event):
                            yield msgspec.json.encode(event.to_docker()) + b"\n"
                if not scope.cancelled_caught:
                    return  # the live stream ended: the daemon is stopping

    return StreamingResponse(lines(), media_type="application/json", headers=engine_headers())


async def transfers(request: Request) -> Response:
    service = _service(request)
    states = [*service.downloads.states(), *service.uploads.states()]
    return JSONResponse(
        [
            {
                "Action": state.action,
                "Name": state.name,
                "ID": state.id,
                "Status": state.status,
                "Current": state.current,
                "Total": state.total,
                "Watchers": state.watchers,
                "Started": round(state.started, 3),
            }
            for state in sorted(states, key=lambda state: state.started)
        ]
    )


async def jobs(request: Request) -> Response:
    """ferryd's own: the pulls and pushes running, from the moment they were asked for,
    with their phase and their layers (for `ferryd ps`)."""
    return JSONResponse(
        [
            {
                "ID": job.id,
                "Action": job.action,
                "Reference": job.reference,
                "Phase": job.phase,
                "RequestID": job.request_id,
                "Started": round(job.started, 3),
                "Layers": [
                    {
                        "ID": layer_id,
                        "Status": layer.status,
                        "Current": layer.current,
                        "Total": layer.total,
                    }
                    for layer_id, layer in job.layers.items()
                ],
            }
            for job in _service(request).jobs.jobs()
        ]
    )


def _registry_config(settings: Settings) -> dict[str, Any]:
    """dockerd's split: insecure networks as CIDRs (the docker CLI parses every one as
    a CIDR and fails on anything else), insecure hosts as index configs not secure."""
    docker_io_mirrors = settings.registry_mirrors.get("docker.io", [])
    networks, hosts = split_insecure(settings.insecure_registries)
    indexes: dict[str, dict[str, Any]] = {
        "docker.io": {
            "Name": "docker.io",
            "Mirrors": docker_io_mirrors,
            "Secure": True,
            "Official": True,
        }
    }
    for name in hosts:
        indexes[name] = {"Name": name, "Mirrors": [], "Secure": False, "Official": False}
    return {
        "InsecureRegistryCIDRs": [str(network) for network in networks],
        "IndexConfigs": indexes,
        "Mirrors": docker_io_mirrors,
    }


def _machine_id() -> str:
    with contextlib.suppress(OSError):
        return Path("/etc/machine-id").read_text().strip()
    return ""


def _os_name() -> str:
    with contextlib.suppress(OSError):
        return host.freedesktop_os_release().get("PRETTY_NAME", "Linux")
    return "Linux"


def _memory_total() -> int:
    with contextlib.suppress(OSError, ValueError):
        return os.sysconf("SC_PAGE_SIZE") * os.sysconf("SC_PHYS_PAGES")
    return 0


def _open_files() -> int:
    with contextlib.suppress(OSError):
        return len(os.listdir("/proc/self/fd"))
    return 0
