"""One measured run of each tool: ferryd's pulls through a daemon's socket, skopeo's
copies into OCI layouts; one image, several at once, or several one after another.

A run is a list of batches done one after another; the pulls of a batch run at once
(threads for ferryd, one per client; processes for skopeo). `[[a]]` is one pull,
`[[a, b, c, d]]` four at once, `[[a], [b], [c], [d]]` the same four in turn.

An index (a multi-platform image) is pulled whole: every platform (ferryd's
`all-platforms=1`, `skopeo copy --all`), and checked whole: the index kept, each
platform's manifest, config and layers there.
"""

from __future__ import annotations

import os
import shutil
import threading
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from common import (
    AccessLog,
    BenchFailed,
    Built,
    Run,
    Usage,
    count_requests,
    daemon_for,
    fresh_daemon,
    loop_lag,
    measure_daemon,
    profiled,
    run_skopeos_timed,
    timed_start,
)
from floor import floor_pass
from latency import LatencyProxy
from transfer import transfer_pass

from ferryd.cli.client import DaemonError
from support.daemon import Daemon, errors
from support.images import blob_path, layout_descriptor
from support.registry import Registry

Batches = Sequence[Sequence[Built]]
UP_TO_DATE = "Status: Image is up to date for "
DOWNLOADED = "Status: Downloaded newer image for "


@dataclass
class Target:
    """Where the clients pull from: the registry, or the latency proxy in front of it."""

    registry: Registry
    host: str
    proxy: LatencyProxy | None = None

    @property
    def latency(self) -> bool:
        return self.proxy is not None

    @property
    def proxy_pid(self) -> int | None:
        """The latency proxy's process, whose CPU is measured with each run."""
        return None if self.proxy is None else self.proxy.pid

    def connections(self) -> int | None:
        """How many connections the latency proxy has accepted so far (None: no proxy)."""
        return None if self.proxy is None else self.proxy.connections()


@dataclass
class Bench:
    """What every run needs: the seed registry, its access log, the floors, a scratch
    directory."""

    registry: Registry
    access: AccessLog
    floor: dict[str, float]  # digest: floor CPU seconds (floor.py)
    scratch: Path
    transfers: dict[tuple[str, frozenset[str]], float] = field(default_factory=dict)

    def direct(self) -> Target:
        return Target(self.registry, self.registry.host)

    def transfer(self, registry: Registry, images: Sequence[Built], into: Path) -> float:
        """The transfer CPU of these images' blobs from `registry` (transfer.py),
        measured after the first run that fetched them and reused by the next: it only
        bounds the least wall time, and measuring it again took seconds a run."""
        key = (registry.url, frozenset(d for image in images for d in image.blobs))
        if key not in self.transfers:
            self.transfers[key] = transfer_pass(registry, images, into)
        return self.transfers[key]


def reference(target: Target, image: Built) -> str:
    return f"{target.host}/{image.name}:latest"


def unique_layers(batches: Batches) -> dict[str, int]:
    """Every distinct layer of the batches' images: digest: compressed size."""
    out: dict[str, int] = {}
    for batch in batches:
        for image in batch:
            out.update(zip(image.layer_digests, image.layer_sizes, strict=True))
    return out


def _label(batches: Batches) -> str:
    names = [image.name for batch in batches for image in batch]
    return names[0] if len(set(names)) == 1 else f"{len(set(names))} images"


def _opened(target: Target, before: int | None) -> int | None:
    """Connections opened through the proxy since `before`."""
    after = target.connections()
    return None if after is None or before is None else after - before


def _make_run(tool: str, batches: Batches, usage: Usage, **fields: Any) -> Run:
    extra = fields.pop("extra", {})
    return usage.as_run(
        tool,
        _label(batches),
        fields.pop("bytes", sum(unique_layers(batches).values())),
        proxy_cpu_seconds=usage.proxy_cpu_seconds,
        others_cpu_seconds=usage.others_cpu_seconds,
        extra={"pulls": sum(len(b) for b in batches), "at_once": max(map(len, batches)), **extra},
        **fields,
    )


# -- ferryd --------------------------------------------------------------------------


def _pull(daemon: Daemon, reference: str, params: dict[str, str]) -> list[dict[str, Any]]:
    """The whole progress stream of one pull, with ferryd's own query `params` (an
    index's `all-platforms=1`) if any; a refusal before it began as its error."""
    if not params:
        return daemon.pull(reference)
    query = {"fromImage": reference, **params}
    try:
        return list(daemon.client().stream("POST", "/images/create", query))
    except DaemonError as exc:
        return [{"error": str(exc).removeprefix("Error response from daemon: ")}]


def _pull_at_once(
    daemon: Daemon, pulls: list[tuple[str, dict[str, str]]]
) -> list[list[dict[str, Any]]]:
    """Each pull (reference, query parameters) by its own client (a thread), all let go
    together: the progress stream of each."""
    if len(pulls) == 1:
        return [_pull(daemon, *pulls[0])]
    results: list[list[dict[str, Any]]] = [[] for _ in pulls]
    start = threading.Barrier(len(pulls))

    def client(index: int) -> None:
        start.wait()
        try:
            results[index] = _pull(daemon, *pulls[index])
        except Exception as exc:  # the stream's end, as the checks read it
            results[index] = [{"error": f"client: {exc!r}"}]

    threads = [threading.Thread(target=client, args=(i,)) for i in range(len(pulls))]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()
    return results


def _check_stream(messages: list[dict[str, Any]], what: str, daemon: Daemon) -> str:
    """The stream's final status ("Downloaded newer image" or "Image is up to date")."""
    failed = errors(messages)
    if failed:
        raise BenchFailed(f"{what} failed: {failed}\n{daemon.log_tail()}")
    ends = [m["status"] for m in messages if str(m.get("status", "")).startswith("Status: ")]
    if not ends:
        raise BenchFailed(f"{what} ended early: {messages[-3:]}")
    return "up to date" if ends[-1].startswith(UP_TO_DATE) else "downloaded"


def _pulls(target: Target, batch: Sequence[Built]) -> list[tuple[str, dict[str, str]]]:
    return [(reference(target, image), image.pull_params()) for image in batch]


def _check_index(daemon: Daemon, target: Target, image: Built, what: str) -> None:
    """That the daemon kept `image`'s index whole: its blob and every platform's
    manifest and config in the store, and `GET /images/{name}/json` naming the index
    (`Descriptor`) with every platform available (`Manifests`)."""
    missing = [
        d
        for d in (*image.manifest_digests, *image.config_digests)
        if not blob_path(daemon.root, d).is_file()
    ]
    if missing:
        raise BenchFailed(f"{what}: index blobs missing from the store: {missing}")
    shown = daemon.inspect(reference(target, image))
    digest = (shown.get("Descriptor") or {}).get("digest")
    if digest != image.index_digest:
        raise BenchFailed(f"{what}: inspect names {digest}, not the index {image.index_digest}")
    available = {
        m["ID"] for m in shown.get("Manifests") or () if m.get("Kind") == "image" and m["Available"]
    }
    wanted = {p["manifest"] for p in image.platforms}
    if available != wanted:
        raise BenchFailed(
            f"{what}: inspect shows {len(available & wanted)} of the index's "
            f"{len(wanted)} platforms available (Manifests: {sorted(available)})"
        )


def ferryd_run(
    bench: Bench,
    target: Target,
    batches: Batches,
    workdir: Path,
    *,
    new_root: bool = True,
    keep_root: bool = False,
    up_to_date: bool = False,
    before: Batches = (),
    profile_to: Path | None = None,
    floors: bool = True,
) -> Run:
    """A new daemon (on a new root in `workdir`, or with `new_root=False` on the one
    there), the batches pulled through its socket, the clock running from the first
    request to the end of the last progress stream; then the daemon stopped and, unless
    `keep_root`, its root deleted. `up_to_date`: every pull must find the image there.
    `before`: pulls the same daemon does first, not measured (its event-loop lag, the
    largest since it started, includes theirs). `floors=False`: a run that only fills a
    root, whose floor and transfer nobody reads (each takes seconds on the 5-layer image).

    Measured: wall, the daemon's CPU (user+sys) and memory, its largest event-loop lag
    (GET /metrics), the registry's requests (its access log) and CPU; then, the daemon
    stopped, the floor (floor.py) and the transfer floor (transfer.py) of its blobs.
    """
    if new_root:
        daemon, startup = fresh_daemon(workdir, target.registry)
    else:
        daemon = daemon_for(workdir, target.registry)
        startup = timed_start(daemon)
    what = f"ferryd pull of {_label(batches)}"
    try:
        assert daemon.process is not None
        pid = daemon.process.pid
        for batch in before:
            for messages in _pull_at_once(daemon, _pulls(target, batch)):
                _check_stream(messages, f"{what} (before the measured one)", daemon)
        bench.access.mark()
        connections = target.connections()
        streams: list[list[dict[str, Any]]] = []
        with profiled(pid, profile_to), measure_daemon(pid, target.registry, target.proxy_pid) as u:
            for batch in batches:
                streams += _pull_at_once(daemon, _pulls(target, batch))
        connections = _opened(target, connections)
        lag = loop_lag(daemon)
        requests = count_requests(bench.access.since_mark())
        ends = [_check_stream(messages, what, daemon) for messages in streams]
        missing = [d for d in unique_layers(batches) if not blob_path(daemon.root, d).is_file()]
        if missing:
            raise BenchFailed(f"{what}: blobs missing from the store: {missing}")
        for image in {i.name: i for batch in batches for i in batch if i.platforms}.values():
            _check_index(daemon, target, image, what)
    finally:
        daemon.stop()
    if up_to_date and any(end != "up to date" for end in ends):
        raise BenchFailed(f"{what}: not up to date: {ends}")
    measured = floors and not up_to_date
    run = _make_run(
        "ferryd",
        batches,
        u,
        bytes=0 if up_to_date else sum(unique_layers(batches).values()),
        # After the daemon stopped: nothing else of ours runs while these are measured.
        floor_cpu_seconds=floor_pass(_all_images(batches)) if measured else 0.0,
        transfer_cpu_seconds=bench.transfer(
            target.registry, _all_images(batches), workdir / "transfer"
        )
        if measured
        else None,
        loop_lag_seconds=lag,
        requests=requests,
        connections=connections,
        extra={
            "startup_seconds": startup,
            "rss_samples": u.rss_samples,
            "ends": ends,
            "cpu_clock": u.cpu_clock,
        },
    )
    if not keep_root:
        shutil.rmtree(workdir, ignore_errors=True)
        os.sync()  # the next run must not pay for this one's writeback
    return run


def _all_images(batches: Batches) -> list[Built]:
    return [image for batch in batches for image in batch]


def prepare_ferryd_root(
    bench: Bench, target: Target, images: Sequence[Built], workdir: Path
) -> None:
    """A new root in `workdir` that holds `images` pulled from `target` (the image's
    name says where it came from), by a daemon now stopped."""
    ferryd_run(bench, target, [list(images)], workdir, keep_root=True, floors=False)


# -- skopeo --------------------------------------------------------------------------


def skopeo_run(
    bench: Bench,
    target: Target,
    batches: Batches,
    dest_dir: Path,
    *,
    keep: bool = False,
    up_to_date: bool = False,
) -> Run:
    """`skopeo copy docker://… oci:DEST:latest` (`--all` for an index), one process per
    pull and a directory each (`dest_dir`/N; skopeo has no shared store), a batch's
    processes at once.
    With `keep`, the directories are kept (and may already hold the images:
    `up_to_date`, which counts no bytes as transferred)."""
    total = Usage()
    dest_dir.mkdir(parents=True, exist_ok=True)
    bench.access.mark()
    connections = target.connections()
    number = 0
    dests: list[tuple[Path, Built]] = []
    for batch in batches:
        commands = []
        for image in batch:
            dest = dest_dir / str(number)
            number += 1
            dests.append((dest, image))
            if not keep:
                shutil.rmtree(dest, ignore_errors=True)
            args = ["copy", "--quiet", *target.registry.skopeo_flags("src-")]
            if image.platforms:
                args.append("--all")  # every platform of the index, and the index
            commands.append([*args, f"docker://{reference(target, image)}", f"oci:{dest}:latest"])
        usage = run_skopeos_timed(
            target.registry, commands, f"skopeo copy of {_label([batch])}", target.proxy_pid
        )
        total.seconds += usage.seconds
        total.cpu_seconds += usage.cpu_seconds
        total.peak_rss_kib = max(total.peak_rss_kib, usage.peak_rss_kib)
        total.registry_cpu_seconds += usage.registry_cpu_seconds
        total.machine_cpu_seconds += usage.machine_cpu_seconds
        total.bench_cpu_seconds += usage.bench_cpu_seconds
        if usage.proxy_cpu_seconds is not None:
            total.proxy_cpu_seconds = (total.proxy_cpu_seconds or 0.0) + usage.proxy_cpu_seconds
    connections = _opened(target, connections)
    requests = count_requests(bench.access.since_mark())
    for dest, image in dests:
        wanted = [*image.blobs, *image.manifest_digests]
        missing = [d for d in wanted if not blob_path(dest, d).is_file()]
        if missing:
            raise BenchFailed(f"skopeo copy of {image.name}: blobs missing: {missing}")
        if image.index_digest is not None:
            tagged = layout_descriptor(dest, "latest")["digest"]
            if tagged != image.index_digest:
                raise BenchFailed(
                    f"skopeo copy of {image.name}: latest is {tagged}, "
                    f"not the index {image.index_digest}"
                )
    if not keep:
        shutil.rmtree(dest_dir, ignore_errors=True)
        os.sync()
    bytes_ = 0 if up_to_date else sum(unique_layers(batches).values())
    return _make_run(
        "skopeo", batches, total, requests=requests, bytes=bytes_, connections=connections
    )
