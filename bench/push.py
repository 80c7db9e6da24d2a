"""Push benchmark: ferryd against `skopeo copy oci:… docker://…`, each to a new registry.

    .venv/bin/python bench/push.py [--rounds N] [--quick] [--profile]

`make bench` (bench/pull.py) runs this after its pull rounds, in the same run and the
same report; run alone, it measures pushes only (results-push.md / results-push.json).

1. A daemon pulls the multi-layer benchmark image from the seed registry once (not
   timed), so its store holds the layers compressed, as pulled: a push sends them as
   they are, with no recompression.
2. One warm-up push of each tool (not counted), then N rounds that alternate
   (A B, B A, ...):
   - **ferryd**: `POST /images/{name}/tag` to `HOST/bench/push-ferryd-N:latest`, then
     `POST /images/HOST/bench/push-ferryd-N/push?tag=latest`; the clock runs from the
     push request to the end of its progress stream.
   - **skopeo**: `skopeo copy --preserve-digests --dest-tls-verify=false
     oci:LAYOUT:latest docker://HOST/bench/push-skopeo-N:latest`, from the OCI layout
     the image was built in (`--preserve-digests`: skopeo fails rather than convert or
     recompress anything).
   HOST is a new docker-registry for every run, so no blob can be skipped or mounted.
   `make bench` also runs these rounds with the 24-layer image behind the latency proxy
   (bench/latency.py), counting the connections each tool opened.
3. After every run it checks that the upload was a full one: no mount request in the
   registry's access log, a completed upload (`PUT …?digest=`, 201) of every blob, each
   blob in the registry's storage with its original size, and the manifest stored under
   the tag has the image's original digest. For ferryd also: every layer reported
   "Pushed" (none "Mounted from" or "Layer already exists"), and the digest in the
   stream is the original one.
"""

from __future__ import annotations

import contextlib
import os
import shutil
import statistics
import sys
import time
from collections.abc import Iterator
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any
from urllib.parse import parse_qs

sys.path.insert(0, str(Path(__file__).resolve().parent.parent / "tests"))

from common import (
    BenchFailed,
    Built,
    Run,
    ab_rows,
    build_all,
    fresh_daemon,
    fresh_dir,
    image_specs,
    log,
    log_run,
    measure_daemon,
    mib,
    parse_args,
    profiled,
    ratio_line,
    run_json,
    run_skopeo_timed,
    summarize_profile,
    timed_start,
    write_results,
)
from latency import LatencyProxy

from support.daemon import Daemon, errors
from support.digests import sha256
from support.images import blob_path, registry_manifest, seed
from support.registry import AccessLogEntry, Registry, start_registry

TAG = "latest"
_NOT_FULL = ("Mounted from", "Layer already exists")


@dataclass
class PushResults:
    runs: list[Run]  # the counted rounds
    pull_seconds: float  # the pull that filled the daemon's store (not counted)
    startup_seconds: float  # the daemon's start-up (not counted)
    profile_text: str = ""
    warmups: list[Run] = field(default_factory=list)
    delay: float | None = None  # latency added each way (a proxy in front of the registry)


# -- checks --------------------------------------------------------------------------


def registry_blob(registry: Registry, digest: str) -> Path:
    """Where distribution's filesystem driver keeps a blob's bytes."""
    algorithm, _, hex_ = digest.partition(":")
    return registry.storage / "docker/registry/v2/blobs" / algorithm / hex_[:2] / hex_ / "data"


def check_full_upload(
    registry: Registry, repository: str, image: Built, what: str
) -> dict[str, Any]:
    """Prove that every blob travelled whole to `registry`, and that the manifest under
    the tag has the image's original digest. Returns the evidence; raises if not."""
    entries = registry.access_log()
    mounts = [e for e in entries if e.method == "POST" and "mount=" in e.query]
    if mounts:
        raise BenchFailed(f"{what}: the registry saw mount requests: {mounts}")
    completed: set[str] = set()
    for entry in entries:
        if entry.method == "PUT" and entry.status == 201 and "/blobs/uploads/" in entry.path:
            completed.update(parse_qs(entry.query).get("digest", []))
    missing = [d for d in image.blobs if d not in completed]
    if missing:
        raise BenchFailed(f"{what}: no completed upload of {missing} in the access log")
    stored = 0
    for digest in image.blobs:
        path = registry_blob(registry, digest)
        expected = image.blob_size(digest)
        size = path.stat().st_size if path.is_file() else -1
        if size != expected:
            raise BenchFailed(f"{what}: {digest} stored with {size} bytes, not {expected}")
        stored += size
    raw, _ = registry_manifest(registry, f"{repository}:{TAG}")
    digest = sha256(raw)
    if digest != image.manifest_digest:
        raise BenchFailed(
            f"{what}: the registry's manifest is {digest}, not the original {image.manifest_digest}"
        )
    patches = sum(1 for e in entries if e.method == "PATCH" and "/blobs/uploads/" in e.path)
    return {
        "max_open_uploads": _max_open_uploads(entries),
        "blobs_uploaded": len(image.blobs),
        "bytes_stored": stored,
        "patch_requests": patches,
        "mounts": 0,
        "manifest_digest": digest,
    }


def _max_open_uploads(entries: list[AccessLogEntry]) -> int:
    """The most upload sessions opened (POST) and not yet completed (PUT) at one point
    of the access log: 1 when blobs go one at a time."""
    open_, most = 0, 0
    for entry in entries:
        if "/blobs/uploads/" not in entry.path:
            continue
        if entry.method == "POST" and entry.status == 202:
            open_ += 1
            most = max(most, open_)
        elif entry.method == "PUT" and entry.status == 201:
            open_ -= 1
    return most


def check_ferryd_stream(messages: list[dict[str, Any]], image: Built, daemon: Daemon) -> int:
    """The stream ended well, every layer was "Pushed", and the digest is the original."""
    failed = errors(messages)
    if failed:
        raise BenchFailed(f"ferryd push failed: {failed}\n{daemon.log_tail()}")
    statuses = [str(m.get("status", "")) for m in messages]
    shortcuts = [s for s in statuses if s.startswith(_NOT_FULL)]
    if shortcuts:
        raise BenchFailed(f"ferryd push did not upload every layer: {shortcuts}")
    pushed = {m.get("id") for m in messages if m.get("status") == "Pushed"}
    if len(pushed) != len(image.layer_sizes):
        raise BenchFailed(
            f"ferryd push: {len(pushed)} layers reported Pushed, not {len(image.layer_sizes)}"
        )
    digests = [m["aux"].get("Digest") for m in messages if "aux" in m]
    if digests != [image.manifest_digest]:
        raise BenchFailed(f"ferryd pushed {digests}, not the original {image.manifest_digest}")
    return len(pushed)


# -- the daemon that pushes ----------------------------------------------------------


def source_reference(seed_registry: Registry, image: Built) -> str:
    return f"{seed_registry.host}/{image.name}:latest"


def start_daemon(
    seed_registry: Registry, image: Built, workdir: Path
) -> tuple[Daemon, float, float]:
    """A daemon with `image` pulled into a fresh root, restarted after the pull:
    (daemon, its start-up s, pull s)."""
    daemon, startup = fresh_daemon(workdir)
    try:
        started = time.perf_counter()
        messages = daemon.pull(source_reference(seed_registry, image))
        pull_seconds = time.perf_counter() - started
        failed = errors(messages)
        if failed:
            raise BenchFailed(f"ferryd pull of {image.name} failed: {failed}")
        # The layers are in the store as they came: compressed, with their own digests.
        for digest in image.blobs[1:]:
            path = blob_path(daemon.root, digest)
            if not path.is_file() or path.stat().st_size != image.blob_size(digest):
                raise BenchFailed(f"{digest} is not in the daemon's store as pulled")
        # A new process on the same root: its memory is then the pushes' alone.
        daemon.stop()
        startup = timed_start(daemon)
    except BaseException:
        daemon.stop()
        raise
    return daemon, startup, pull_seconds


def tag(daemon: Daemon, source: str, target: str) -> None:
    """`POST /images/{source}/tag?repo=TARGET&tag=latest`, which answers 201."""
    response = daemon.client().request(
        "POST", f"/images/{source}/tag", {"repo": target, "tag": TAG}
    )
    with response:
        response.read()
    if response.status != 201:
        raise BenchFailed(f"tagging {source} as {target}:{TAG} answered {response.status}")


@contextlib.contextmanager
def _through(
    registry: Registry, delay: float | None, stats: Path
) -> Iterator[tuple[str, LatencyProxy | None]]:
    """The address a push goes to: the registry's own, or (with `delay`) a latency proxy
    in front of it; and the proxy, to count the connections the client opened."""
    if delay is None:
        yield registry.host, None
        return
    with LatencyProxy(registry.host, delay, stats) as proxy:
        yield proxy.host, proxy


def _connections(proxy: LatencyProxy | None) -> dict[str, int]:
    return {} if proxy is None else {"connections": proxy.connections()}


def ferryd_push(
    daemon: Daemon,
    source: str,
    image: Built,
    workdir: Path,
    number: int,
    *,
    profile_to: Path | None = None,
    delay: float | None = None,
) -> Run:
    """Tag the pulled image into a new registry and push it; time the push request."""
    registry = start_registry(workdir / f"registry-ferryd-{number}")
    repository = f"bench/push-ferryd-{number}"
    assert daemon.process is not None
    pid = daemon.process.pid
    try:
        with _through(registry, delay, workdir / f"proxy-ferryd-{number}") as (host, proxy):
            target = f"{host}/{repository}"
            tag(daemon, source, target)
            with profiled(pid, profile_to), measure_daemon(pid, registry) as usage:
                client = daemon.client()
                messages = list(client.stream("POST", f"/images/{target}/push", {"tag": TAG}))
            connections = _connections(proxy)
        pushed = check_ferryd_stream(messages, image, daemon)
        evidence = check_full_upload(registry, repository, image, "ferryd push")
    finally:
        _discard(registry)
    return usage.run(
        "ferryd",
        image,
        target=f"{target}:{TAG}",
        layers_pushed=pushed,
        cpu_clock=usage.cpu_clock,
        **evidence,
        **connections,
    )


def skopeo_push(image: Built, workdir: Path, number: int, *, delay: float | None = None) -> Run:
    """`skopeo copy --preserve-digests oci:LAYOUT:latest docker://NEW/REPO:latest`."""
    registry = start_registry(workdir / f"registry-skopeo-{number}")
    repository = f"bench/push-skopeo-{number}"
    try:
        with _through(registry, delay, workdir / f"proxy-skopeo-{number}") as (host, proxy):
            target = f"{host}/{repository}:{TAG}"
            args = ["copy", "--quiet", "--preserve-digests", *registry.skopeo_flags("dest-")]
            args += [f"oci:{image.layout}:latest", f"docker://{target}"]
            timed = run_skopeo_timed(registry, args, f"skopeo copy of {image.name} to {target}")
            connections = _connections(proxy)
        evidence = check_full_upload(registry, repository, image, "skopeo copy")
    finally:
        _discard(registry)
    return timed.run("skopeo", image, target=target, **evidence, **connections)


def _discard(registry: Registry) -> None:
    """Stop a per-run registry and delete it; the next run must not pay for its
    writeback."""
    registry.stop()
    shutil.rmtree(registry.config_path.parent, ignore_errors=True)
    os.sync()


# -- the rounds ----------------------------------------------------------------------


def measure(
    seed_registry: Registry,
    image: Built,
    scratch: Path,
    rounds: int,
    *,
    profile: bool = False,
    delay: float | None = None,
) -> PushResults:
    """A daemon that has pulled `image`; one warm-up of each; `rounds` A/B rounds; with
    `delay`, every push goes through a proxy adding that latency each way."""
    daemon, startup, pull_seconds = start_daemon(seed_registry, image, scratch / "ferryd")
    source = source_reference(seed_registry, image)
    log(f"push: daemon started in {startup:.2f}s, image pulled in {pull_seconds:.2f}s")
    try:
        number = 0

        def one(tool: str) -> Run:
            nonlocal number
            number += 1
            if tool == "ferryd":
                return ferryd_push(daemon, source, image, scratch, number, delay=delay)
            return skopeo_push(image, scratch, number, delay=delay)

        # Warm-up: one of each, not counted (first-run page cache, lazy imports).
        warmups = [one("ferryd"), one("skopeo")]
        runs: list[Run] = []
        for round_ in range(rounds):
            order = ("ferryd", "skopeo") if round_ % 2 == 0 else ("skopeo", "ferryd")
            for tool in order:
                run = one(tool)
                runs.append(run)
                behind = "" if delay is None else f", +{delay * 1000:.0f} ms each way"
                log_run(f"push round {round_ + 1}/{rounds}{behind}", run)
        profile_text = ""
        if profile:
            spy_out = scratch / f"py-spy-push-{image.name.replace('/', '-')}.txt"
            run = ferryd_push(daemon, source, image, scratch, number + 1, profile_to=spy_out)
            log_run("push, profiled (not counted)", run)
            profile_text = summarize_profile(spy_out) if spy_out.exists() else "(no profile)"
    finally:
        daemon.stop()
        shutil.rmtree(scratch / "ferryd", ignore_errors=True)
    return PushResults(runs, pull_seconds, startup, profile_text, warmups, delay)


# -- reporting -----------------------------------------------------------------------


def report(image: Built, results: PushResults, rounds: int) -> str:
    a = [r for r in results.runs if r.tool == "ferryd"]
    b = [r for r in results.runs if r.tool == "skopeo"]

    def checked(runs: list[Run]) -> str:
        first = runs[0].extra
        return (
            f"{first['blobs_uploaded']} of {len(image.blobs)} blobs, "
            f"{mib(first['bytes_stored'])} stored, "
            f"{sum(r.extra['mounts'] for r in runs)} mounts"
        )

    digest = image.manifest_digest
    kept = all(r.extra["manifest_digest"] == digest for r in results.runs)
    behind = ""
    connections: list[str] = []
    if results.delay is not None:
        behind = f", through a proxy adding {results.delay * 1000:.0f} ms each way"
        connections = [
            "| TCP connections opened through the proxy (median) "
            f"| {statistics.median(r.extra['connections'] for r in a):.0f} "
            f"| {statistics.median(r.extra['connections'] for r in b):.0f} |"
        ]
    return "\n".join(
        [
            f"Push: the same image ({image.about}, {mib(image.layer_bytes)} compressed), "
            f"{rounds} alternating rounds, each run to a new docker-registry on 127.0.0.1 "
            f"(plain HTTP{behind}) and a new repository, so no layer can be skipped or mounted. "
            "ferryd pushes the image it pulled (layers stored compressed, sent as they "
            "are); skopeo copies the OCI layout with `--preserve-digests`. The clock runs "
            "from the push request to the end of the progress stream (ferryd) or of the "
            "process (skopeo).",
            "",
            "| | ferryd push (socket API) | skopeo copy oci: → docker:// |",
            "|---|---|---|",
            *ab_rows(a, b),
            f"| full upload, every run (access log + registry storage) | {checked(a)}; "
            f'{min(r.extra["layers_pushed"] for r in a)} layers "Pushed" | {checked(b)} |',
            *connections,
            f"| upload sessions open at once (max, access log) "
            f"| {max(r.extra['max_open_uploads'] for r in a)} "
            f"| {max(r.extra['max_open_uploads'] for r in b)} |",
            f"| RSS idle before the push (median) "
            f"| {statistics.median(r.idle_rss_kib for r in a) / 1024:.0f} MiB | - |",
            f"| manifest digest kept, every run | {'yes' if kept else 'NO'} "
            f"(`{digest[:19]}…`) | {'yes' if kept else 'NO'} |",
            f"| not counted: daemon start-up / the pull that filled its store "
            f"| {results.startup_seconds:.2f} s / {results.pull_seconds:.2f} s | - |",
            "",
            ratio_line(a, b),
        ]
    )


def results_json(image: Built, results: PushResults, rounds: int) -> dict[str, Any]:
    a = [r.seconds for r in results.runs if r.tool == "ferryd"]
    b = [r.seconds for r in results.runs if r.tool == "skopeo"]
    return {
        "rounds": rounds,
        "latency_seconds_each_way": results.delay,
        "image": asdict(image) | {"layout": str(image.layout)},
        "manifest_digest": image.manifest_digest,
        "runs": run_json(results.runs),
        "warmups": run_json(results.warmups),
        "ratio_of_medians": statistics.median(a) / statistics.median(b),
        "daemon_startup_seconds": results.startup_seconds,
        "pull_seconds": results.pull_seconds,
    }


# -- main (push only) ----------------------------------------------------------------


def main() -> int:
    args = parse_args(
        __doc__, images="small image", profile_help="py-spy the daemon during an extra push"
    )
    rounds: int = args.rounds
    began = time.perf_counter()
    out: Path = args.out
    scratch = fresh_dir(out / f"run-push{args.suffix}")
    [image] = build_all((image_specs(args.quick).multi,), out / "images")
    seed_registry = start_registry(scratch / "registry")
    try:
        seed(seed_registry, image.layout, "latest", f"{image.name}:latest")
        results = measure(seed_registry, image, scratch / "push", rounds, profile=args.profile)
    except BenchFailed as exc:
        print(f"FAILED: {exc}", file=sys.stderr)
        return 1
    finally:
        seed_registry.stop()
        shutil.rmtree(scratch / "registry" / "storage", ignore_errors=True)

    total = time.perf_counter() - began
    table = report(image, results, rounds) + f"\n\n(bench/push.py: {total:.0f} s in all)"
    print()
    print(table)
    if results.profile_text:
        print("\npy-spy, push:\n" + results.profile_text)
    data = results_json(image, results, rounds) | {"total_seconds": total}
    write_results(out, f"results-push{args.suffix}", table, data)
    return 0


if __name__ == "__main__":
    sys.exit(main())
