"""Pull and push benchmark: ferryd against `skopeo copy`, with local docker-registries.

    .venv/bin/python bench/pull.py [--rounds N] [--quick] [--profile] [--no-push]

1. Builds (once; cached in bench/out/images/) a multi-layer image (gzip layers of
   hex-text and random content, one zstd layer) and an image with one ~1 GiB gzip
   layer, and seeds both into a fresh docker-registry on 127.0.0.1 (plain HTTP).
2. Times, alternating, N rounds of (A) a ferryd pull through the daemon's socket into
   a fresh root (a fresh daemon per run; its start-up is not timed: the clock runs
   from the request to the end of the progress stream) and (B) `skopeo copy
   docker://… oci:DIR:TAG` into a fresh directory.
3. Pulls the 1 GiB layer with ferryd while sampling the daemon's VmRSS every 20 ms.
4. Reports the daemon's user+sys CPU seconds per wall second during the pulls (from
   /proc/PID/stat): above 1.0, more than one core was busy.
5. Unless --no-push: times N alternating rounds of pushing the multi-layer image, by
   ferryd (from its store, as pulled) and by `skopeo copy oci:… docker://…`, each to
   a new registry (see bench/push.py, which also runs alone).

Only public tools: python, skopeo, docker-registry and /proc. Results are printed as
markdown and written to bench/out/results.md and results.json. Exit status 1 when a
pull or push fails.  `--profile` also runs py-spy (if installed) on the daemon during
one extra pull of the big layer and one extra push, and prints where the time went.
"""

from __future__ import annotations

import os
import shutil
import statistics
import sys
import time
from dataclasses import asdict
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent.parent / "tests"))

import push as push_bench
from common import (
    SAMPLE_INTERVAL,
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
    write_results,
)

from support.daemon import errors
from support.images import blob_path, seed
from support.registry import Registry, start_registry

# -- one run of each -----------------------------------------------------------------


def reference(registry: Registry, image: Built) -> str:
    return f"{registry.host}/{image.name}:latest"


def ferryd_pull(
    registry: Registry, image: Built, workdir: Path, *, profile_to: Path | None = None
) -> Run:
    """A fresh daemon on a fresh root; time the pull request, not the start-up."""
    daemon, startup = fresh_daemon(workdir)
    try:
        assert daemon.process is not None
        pid = daemon.process.pid
        with profiled(pid, profile_to), measure_daemon(pid, registry) as usage:
            messages = daemon.pull(reference(registry, image))
        failed = errors(messages)
        if failed:
            raise BenchFailed(f"ferryd pull of {image.name} failed: {failed}\n{daemon.log_tail()}")
        if not any(m.get("status", "").startswith("Status: ") for m in messages):
            raise BenchFailed(f"ferryd pull of {image.name} ended early: {messages[-3:]}")
        missing = [d for d in image.blobs[1:] if not blob_path(daemon.root, d).is_file()]
        if missing:
            raise BenchFailed(f"ferryd pull of {image.name}: blobs missing from store: {missing}")
    finally:
        daemon.stop()
    run = usage.run("ferryd", image, rss_samples=usage.rss_samples, startup_seconds=startup)
    shutil.rmtree(workdir, ignore_errors=True)
    os.sync()  # the next run must not pay for this one's writeback
    return run


def skopeo_pull(registry: Registry, image: Built, dest: Path) -> Run:
    """`skopeo copy docker://… oci:DEST:latest` into a fresh directory."""
    shutil.rmtree(dest, ignore_errors=True)
    args = ["copy", "--quiet", *registry.skopeo_flags("src-")]  # --src-tls-verify=false ...
    args += [f"docker://{reference(registry, image)}", f"oci:{dest}:latest"]
    timed = run_skopeo_timed(registry, args, f"skopeo copy of {image.name}")
    missing = [d for d in image.blobs if not blob_path(dest, d).is_file()]
    if missing:
        raise BenchFailed(f"skopeo copy of {image.name}: blobs missing: {missing}")
    shutil.rmtree(dest, ignore_errors=True)
    os.sync()
    return timed.run("skopeo", image)


# -- reporting -----------------------------------------------------------------------


def report(multi: Built, big: Built, runs: list[Run], mem: Run, rounds: int) -> str:
    a = [r for r in runs if r.tool == "ferryd"]
    b = [r for r in runs if r.tool == "skopeo"]
    nproc = os.cpu_count()
    out = [
        f"Image: {multi.about}, {mib(multi.layer_bytes)} compressed "
        f"({mib(multi.uncompressed_bytes)} uncompressed; layers "
        + ", ".join(mib(s) for s in multi.layer_sizes)
        + f"), from docker-registry on 127.0.0.1 (plain HTTP), {rounds} alternating rounds, "
        f"{nproc} CPUs. MB/s = compressed MB (10^6 bytes) per wall second; CPU = user+sys "
        "seconds of the puller per wall second (>1.0: more than one core busy).",
        "",
        "| | ferryd (socket API) | skopeo copy → oci: |",
        "|---|---|---|",
        *ab_rows(a, b),
        "| decompresses + DiffID check | yes | no (copies blobs as they are) |",
        f"| not counted: daemon start-up (median) "
        f"| {statistics.median(r.extra['startup_seconds'] for r in a):.2f} s | - |",
        "",
        ratio_line(a, b),
        "",
        f"Memory: ferryd pulling {big.about} of {mib(big.layer_bytes)} "
        f"({mib(big.uncompressed_bytes)} uncompressed), VmRSS sampled every "
        f"{SAMPLE_INTERVAL * 1000:.0f} ms ({mem.extra.get('rss_samples', 0)} samples):",
        "",
        "| | ferryd |",
        "|---|---|",
        f"| wall s / MB/s | {mem.seconds:.2f} / {mem.mb_s:.0f} |",
        f"| RSS idle before the pull | {mem.idle_rss_kib / 1024:.0f} MiB |",
        f"| peak RSS during the pull (target < 150 MiB) | {mem.peak_rss_kib / 1024:.0f} MiB "
        f"({'ok' if mem.peak_rss_kib < 150 * 1024 else 'OVER'}) |",
        f"| VmHWM at the end | {mem.hwm_kib / 1024:.0f} MiB |",
        f"| daemon CPU s (user+sys) / wall s | {mem.cpu_seconds:.2f} / {mem.seconds:.2f} "
        f"= **{mem.cores:.2f}** |",
        f"| registry CPU per wall s | {mem.registry_cpu_seconds / mem.seconds:.2f} |",
        f"| daemon threads (max seen) | {mem.threads} |",
    ]
    return "\n".join(out)


# -- main ----------------------------------------------------------------------------


def main() -> int:
    args = parse_args(
        __doc__,
        images="small images",
        profile_help="py-spy the daemon during an extra big pull (and an extra push)",
        flags={"--no-push": "measure pulls only"},
    )
    rounds: int = args.rounds
    began = time.perf_counter()
    out: Path = args.out
    scratch = fresh_dir(out / f"run{args.suffix}")

    started = time.perf_counter()
    multi, big = build_all(image_specs(args.quick), out / "images")
    build_seconds = time.perf_counter() - started
    registry = start_registry(scratch / "registry")
    try:
        started = time.perf_counter()
        for image in (multi, big):
            seed(registry, image.layout, "latest", f"{image.name}:latest")
        log(f"images ready in {build_seconds:.0f}s, seeded in {time.perf_counter() - started:.0f}s")

        # Warm-up: one of each, not counted (first-run page cache, lazy imports).
        ferryd_pull(registry, multi, scratch / "ferryd")
        skopeo_pull(registry, multi, scratch / "skopeo")
        runs: list[Run] = []
        for round_ in range(rounds):
            order = ("ferryd", "skopeo") if round_ % 2 == 0 else ("skopeo", "ferryd")
            for tool in order:
                if tool == "ferryd":
                    run = ferryd_pull(registry, multi, scratch / "ferryd")
                else:
                    run = skopeo_pull(registry, multi, scratch / "skopeo")
                runs.append(run)
                log_run(f"round {round_ + 1}/{rounds}", run)

        mem = ferryd_pull(registry, big, scratch / "ferryd")
        log(
            f"big layer: {mem.seconds:.2f}s {mem.mb_s:.0f} MB/s cpu {mem.cores:.2f} "
            f"peak rss {mem.peak_rss_kib // 1024} MiB hwm {mem.hwm_kib // 1024} MiB"
        )
        profile_text = ""
        if args.profile:
            spy_out = scratch / f"py-spy-{big.name.replace('/', '-')}.txt"
            ferryd_pull(registry, big, scratch / "ferryd", profile_to=spy_out)
            profile_text = summarize_profile(spy_out) if spy_out.exists() else "(no profile)"
        pushes = None
        if not args.no_push:
            pushes = push_bench.measure(
                registry, multi, scratch / "push", rounds, profile=args.profile
            )
    except BenchFailed as exc:
        print(f"FAILED: {exc}", file=sys.stderr)
        return 1
    finally:
        registry.stop()

    total = time.perf_counter() - began
    note = f"(`make bench`{' --quick' if args.quick else ''}: {total:.0f} s in all)"
    table = report(multi, big, runs, mem, rounds)
    if pushes is not None:
        table += "\n\n" + push_bench.report(multi, pushes, rounds)
    table += "\n\n" + note
    print()
    print(table)
    if profile_text:
        print("\npy-spy, big-layer pull:\n" + profile_text)
    if pushes is not None and pushes.profile_text:
        print("\npy-spy, push:\n" + pushes.profile_text)
    data = {
        "rounds": rounds,
        "multi": asdict(multi) | {"layout": str(multi.layout)},
        "big": asdict(big) | {"layout": str(big.layout)},
        "runs": run_json([*runs, mem]),
        "push": None if pushes is None else push_bench.results_json(multi, pushes, rounds),
        "total_seconds": total,
    }
    write_results(out, f"results{args.suffix}", table, data)
    shutil.rmtree(scratch / "registry" / "storage", ignore_errors=True)
    return 0


if __name__ == "__main__":
    sys.exit(main())
