"""Pull and push benchmark: ferryd against `skopeo copy`, with local docker-registries.

    .venv/bin/python bench/pull.py [--rounds N] [--quick] [--profile] [--no-push]
                                   [--only SCENARIO,...]

Builds (once; cached in bench/out/images/) the benchmark's images, seeds them into a
new docker-registry on 127.0.0.1 (plain HTTP), and measures, alternating ferryd and
skopeo run by run (A B, B A, ...), each ferryd run in a new daemon:

- multi, small: a pull of the 5-layer image and of the 24-small-layer image;
- latency: the same two pulls through bench/latency.py, a TCP proxy that delays every
  chunk by 25 ms each way (and a new connection's first bytes by a handshake's round
  trip);
- shared: 4 images that share their base layer pulled at once, against the same 4
  pulls one after another (skopeo: 4 copies into 4 directories, at once and in turn);
  every blob must be fetched once (the registry's access log);
- platforms: an OCI index of 3 platforms on one base layer, pulled whole (ferryd's
  `all-platforms=1`, `skopeo copy --all`); ferryd must fetch the shared layer once and
  keep the index;
- same: 8 clients pulling the 24-layer image at once, against 8 pulls in turn;
- tls: the same two pulls from a second docker-registry that speaks HTTPS (a
  certificate of a CA made for the run), as every registry on a network does; both
  clients verify it (ferryd with the CA in its certs.d);
- uptodate: pulling an image the store already has, directly and through the proxy;
  the registry's requests are counted (the target: one manifest request);
- memory: the 1 GiB layer, VmRSS sampled every 20 ms;
- push (unless --no-push): bench/push.py's rounds: the 5-layer image, then the 24-layer
  image through the latency proxy.

For every ferryd run: wall seconds, the daemon's CPU seconds (user+sys, /proc), the
floor (floor.py: the CPU seconds that hashing and inflating the same blobs take in one
thread, measured right after the run), peak RSS (VmHWM), the largest event-loop lag (`GET /metrics`,
`ferryd_event_loop_lag_max_seconds`; "n/a" where the daemon has none), and the
registry's requests. Only public tools: python, skopeo, docker-registry and /proc.
Printed as markdown and written to bench/out/results.md and results.json. Exit status 1
when a pull or push fails or does not do what is measured.
"""

from __future__ import annotations

import functools
import os
import shutil
import sys
import time
from collections.abc import Callable
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent.parent / "tests"))

import push as push_bench
import report
import targets
import trustme
from common import (
    AccessLog,
    BenchFailed,
    Built,
    Run,
    build_all,
    fresh_dir,
    image_specs,
    log,
    log_run,
    parse_args,
    summarize_profile,
    write_results,
)
from floor import floors
from latency import LatencyProxy
from report import Scenario
from runners import Bench, Target, ferryd_run, prepare_ferryd_root, skopeo_run

from support.images import seed
from support.registry import start_registry

LATENCY = 0.025  # seconds each way
CLIENTS = 8  # pulling the same image at once
# Rounds of the runs whose every round costs much and whose figure is far from its
# target, or a few ms: the up-to-date pulls (12 new daemons a round, ~1 s of start-up
# each) and the push behind latency (skopeo's takes ~14 s; ferryd's is ~0.12x it).
FEW_ROUNDS = 3
SCENARIOS = (
    "multi",
    "small",
    "latency",
    "tls",
    "shared",
    "platforms",
    "same",
    "uptodate",
    "memory",
    "push",
)


def alternate(rounds: int, steps: list[tuple[str, Callable[[], Run]]], what: str) -> list[Run]:
    """`rounds` rounds of `steps` (mode, run), in order in even rounds and reversed in
    odd ones; each run's mode in `extra["mode"]`."""
    runs = []
    for round_ in range(rounds):
        for mode, step in steps if round_ % 2 == 0 else steps[::-1]:
            run = step()
            run.extra["mode"] = mode
            run.extra["round"] = round_ + 1
            runs.append(run)
            log_run(f"{what} {round_ + 1}/{rounds} {mode:17}", run)
    return runs


def ab_pull(
    bench: Bench, target: Target, image: Built, rounds: int, key: str, mode: str = "pull"
) -> Scenario:
    """ferryd and skopeo pulling `image` (every platform of an index), alternating."""
    scratch = bench.scratch
    runs = alternate(
        rounds,
        [
            (mode, lambda: ferryd_run(bench, target, [[image]], scratch / "ferryd")),
            (mode, lambda: skopeo_run(bench, target, [[image]], scratch / "skopeo")),
        ],
        key,
    )
    tls = target.registry.url.startswith("https://")
    return Scenario(key, [image], runs, latency=target.latency, tls=tls)


def at_once(bench: Bench, images: list[Built], rounds: int, key: str) -> Scenario:
    """`images` (several, or one several times) pulled at once and one after another,
    by each tool: ferryd into one new daemon, skopeo into a directory per copy."""
    scratch = bench.scratch
    target = bench.direct()
    together, in_turn = [images], [[image] for image in images]
    runs = alternate(
        rounds,
        [
            ("at once", lambda: ferryd_run(bench, target, together, scratch / "ferryd")),
            ("at once", lambda: skopeo_run(bench, target, together, scratch / "skopeo")),
            ("one after another", lambda: ferryd_run(bench, target, in_turn, scratch / "ferryd")),
            ("one after another", lambda: skopeo_run(bench, target, in_turn, scratch / "skopeo")),
        ],
        key,
    )
    return Scenario(key, images, runs)


def up_to_date(
    bench: Bench, targets: list[Target], image: Built, rounds: int, key: str
) -> Scenario:
    """Pulls of `image` into a store that has it, from each target: ferryd in a new
    daemon each time on a root that pulled it from that target before, as the daemon's
    first pull and as its second (after the same up-to-date pull, not measured);
    skopeo (for reference: it has no store, only the directory it copies into) into an
    OCI layout that it copied into before."""
    steps: list[tuple[str, Callable[[], Run]]] = []
    prepared: list[Path] = []
    for number, target in enumerate(targets):
        where = "+25 ms" if target.latency else "loopback"
        root = bench.scratch / f"ferryd-has-{number}"
        layouts = bench.scratch / f"skopeo-has-{number}"
        prepared += [root, layouts]
        prepare_ferryd_root(bench, target, [image], root)
        skopeo_run(bench, target, [[image]], layouts, keep=True)

        def ferryd(target: Target = target, root: Path = root, second: bool = False) -> Run:
            return ferryd_run(
                bench,
                target,
                [[image]],
                root,
                new_root=False,
                keep_root=True,
                up_to_date=True,
                before=[[image]] if second else (),
            )

        def skopeo(target: Target = target, layouts: Path = layouts) -> Run:
            return skopeo_run(bench, target, [[image]], layouts, keep=True, up_to_date=True)

        steps += [
            (f"{where}, 1st pull", ferryd),
            (f"{where}, 1st pull", skopeo),
            (f"{where}, 2nd pull", functools.partial(ferryd, second=True)),
        ]
    try:
        runs = alternate(rounds, steps, "up-to-date")
    finally:
        for path in prepared:
            shutil.rmtree(path, ignore_errors=True)
    return Scenario(key, [image], runs, up_to_date=True)


def over_tls(
    scratch: Path, floor: dict[str, float], images: dict[str, Built], rounds: int
) -> list[Scenario]:
    """Each of `images` (by scenario key) pulled from a registry of their own that
    speaks only HTTPS."""
    registry = start_registry(scratch / "registry-tls", tls=trustme.CA())
    try:
        for image in images.values():
            seed(registry, image.layout, "latest", f"{image.name}:latest")
        bench = Bench(registry, AccessLog(registry), floor, scratch)
        return [ab_pull(bench, bench.direct(), image, rounds, key) for key, image in images.items()]
    finally:
        registry.stop()
        shutil.rmtree(scratch / "registry-tls" / "storage", ignore_errors=True)


def main() -> int:
    args = parse_args(
        __doc__,
        images="small images",
        profile_help="py-spy the daemon during an extra big pull (and an extra push)",
        flags={"--no-push": "measure pulls only"},
        scenarios=SCENARIOS,
    )
    only: set[str] = args.only - ({"push"} if args.no_push else set())
    rounds: int = args.rounds
    few = min(rounds, FEW_ROUNDS)
    began = time.perf_counter()
    out: Path = args.out
    name = f"results{args.suffix}" if only == set(SCENARIOS) else f"results-only{args.suffix}"
    scratch = fresh_dir(out / f"run{args.suffix}")

    started = time.perf_counter()
    specs = image_specs(args.quick)
    built = build_all(specs.all(), out / "images")
    multi, big, small, *shared, platforms = built
    floor = floors(built)
    log(f"images ready in {time.perf_counter() - started:.0f}s")
    registry = start_registry(scratch / "registry")
    bench = Bench(registry, AccessLog(registry), floor, scratch)
    scenarios: list[Scenario] = []
    pushes = slow_pushes = None
    profile_text = ""
    try:
        started = time.perf_counter()
        for image in built:
            seed(registry, image.layout, "latest", f"{image.name}:latest")
        log(f"seeded in {time.perf_counter() - started:.0f}s")
        direct = bench.direct()

        # Warm-up: one of each, not counted (first-run page cache, lazy imports).
        ferryd_run(bench, direct, [[multi]], scratch / "ferryd", floors=False)
        skopeo_run(bench, direct, [[multi]], scratch / "skopeo")

        if "multi" in only:
            scenarios.append(ab_pull(bench, direct, multi, rounds, "multi"))
        if "small" in only:
            scenarios.append(ab_pull(bench, direct, small, rounds, "small"))
        if "shared" in only:
            scenarios.append(at_once(bench, shared, rounds, "shared"))
        if "platforms" in only:
            scenarios.append(
                ab_pull(bench, direct, platforms, rounds, "platforms", "all platforms")
            )
        if "same" in only:
            scenarios.append(at_once(bench, [small] * CLIENTS, rounds, "same"))
        if only & {"latency", "uptodate"}:
            with LatencyProxy(registry.host, LATENCY, scratch / "proxy-connections") as proxy:
                slow = Target(registry, proxy.host, proxy)
                if "latency" in only:
                    scenarios.append(ab_pull(bench, slow, multi, rounds, "multi-latency"))
                    scenarios.append(ab_pull(bench, slow, small, rounds, "small-latency"))
                if "uptodate" in only:
                    for image, key in ((multi, "uptodate-multi"), (small, "uptodate-small")):
                        scenarios.append(up_to_date(bench, [direct, slow], image, few, key))
        if "tls" in only:
            scenarios += over_tls(scratch, floor, {"multi-tls": multi, "small-tls": small}, rounds)
        if "memory" in only:
            mem = ferryd_run(bench, direct, [[big]], scratch / "ferryd")
            mem.extra["mode"] = "pull"
            log_run("memory", mem)
            scenarios.append(Scenario("memory", [big], [mem]))
            if args.profile:
                spy_out = scratch / f"py-spy-{big.name.replace('/', '-')}.txt"
                ferryd_run(bench, direct, [[big]], scratch / "ferryd", profile_to=spy_out)
                profile_text = summarize_profile(spy_out) if spy_out.exists() else "(no profile)"
        if "push" in only:
            pushes = push_bench.measure(
                registry, multi, scratch / "push", rounds, profile=args.profile
            )
            # Where connections count: 24 layers, each 4 requests, behind a round trip.
            slow_pushes = push_bench.measure(
                registry, small, scratch / "push-latency", few, delay=LATENCY
            )
    except BenchFailed as exc:
        print(f"FAILED: {exc}", file=sys.stderr)
        return 1
    finally:
        registry.stop()

    total = time.perf_counter() - began
    command = "make bench" if len(sys.argv) == 1 else " ".join(["bench/pull.py", *sys.argv[1:]])
    table = report.render(scenarios, built, floor, rounds, LATENCY)
    if pushes is not None:
        table += "\n\n" + push_bench.report(multi, pushes, rounds)
    if slow_pushes is not None:
        table += "\n\n" + push_bench.report(small, slow_pushes, few)
    checked = targets.checks(scenarios, [p for p in (pushes, slow_pushes) if p is not None])
    table += "\n\n" + targets.render(checked)
    load = " / ".join(f"{v:.1f}" for v in os.getloadavg())
    table += f"\n\n(`{command}`: {total:.0f} s in all; load average at the end {load})"
    print()
    print(table)
    if profile_text:
        print("\npy-spy, big-layer pull:\n" + profile_text)
    if pushes is not None and pushes.profile_text:
        print("\npy-spy, push:\n" + pushes.profile_text)
    data = report.results_json(scenarios, built, floor, rounds, LATENCY) | {
        "push": None if pushes is None else push_bench.results_json(multi, pushes, rounds),
        "push_latency": None
        if slow_pushes is None
        else push_bench.results_json(small, slow_pushes, few),
        "targets": targets.as_json(checked),
        "total_seconds": total,
    }
    write_results(out, name, table, data)
    shutil.rmtree(scratch / "registry" / "storage", ignore_errors=True)
    return 0


if __name__ == "__main__":
    sys.exit(main())
