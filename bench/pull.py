"""Pull benchmark: ferryd against `skopeo copy`, from a local docker-registry.

    .venv/bin/python bench/pull.py [--rounds N] [--quick] [--profile]

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

Only public tools: python, skopeo, docker-registry and /proc. Results are printed as
markdown and written to bench/out/results.md and results.json. Exit status 1 when a
pull fails.  `--profile` also runs py-spy (if installed) on the daemon during one
extra pull of the big layer and prints where the time went.
"""

from __future__ import annotations

import argparse
import collections
import json
import os
import shutil
import signal
import statistics
import subprocess
import sys
import threading
import time
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

HERE = Path(__file__).resolve().parent
REPO = HERE.parent
sys.path.insert(0, str(REPO / "tests"))

from support.daemon import Daemon, errors  # noqa: E402
from support.images import LayerSpec, blob_path, build_image, seed  # noqa: E402
from support.registry import (  # noqa: E402
    SKOPEO_BIN,
    Registry,
    have_registry_tools,
    skopeo_env,
    skopeo_workdir,
    start_registry,
)

MiB = 1 << 20
CACHE_VERSION = 1  # bump when the way images are built changes
SAMPLE_INTERVAL = 0.020  # seconds between two VmRSS samples
TICKS = os.sysconf("SC_CLK_TCK")
DAEMON_SETTINGS: dict[str, Any] = {"log_level": "warning"}


# -- the images ----------------------------------------------------------------------


@dataclass(frozen=True)
class ImageSpec:
    name: str  # the repository in the registry, and the cache directory
    layers: list[LayerSpec]
    about: str


def image_specs(quick: bool) -> tuple[ImageSpec, ImageSpec]:
    """(the multi-layer image, the one-big-layer image).

    Hex text compresses to ~57% with gzip -6 and ~52% with zstd -3: the compressors
    have real work to do, unlike random bytes (one layer of those stands in for
    already-compressed content: wheels, jars, images).
    """
    if quick:
        multi = ImageSpec(
            "bench/quick-multi",
            [
                LayerSpec(size=48 * MiB, compressible=True, seed=1),
                LayerSpec(size=16 * MiB, compressible=True, compression="zstd", seed=2),
                LayerSpec(size=8 * MiB, seed=3),
            ],
            "3 layers (2 gzip, 1 zstd)",
        )
        big = ImageSpec(
            "bench/quick-big",
            [LayerSpec(size=192 * MiB, compressible=True, seed=10)],
            "1 gzip layer",
        )
        return multi, big
    multi = ImageSpec(
        "bench/multi",
        [
            LayerSpec(size=290 * MiB, compressible=True, seed=1),  # ~165 MiB gzip
            LayerSpec(size=120 * MiB, compressible=True, seed=2),  # ~68 MiB gzip
            LayerSpec(size=48 * MiB, seed=3),  # random: ~48 MiB gzip
            LayerSpec(size=100 * MiB, compressible=True, compression="zstd", seed=4),  # ~52
            LayerSpec(size=80 * MiB, compressible=True, seed=5),  # ~46 MiB gzip
        ],
        "5 layers (4 gzip, 1 zstd)",
    )
    big = ImageSpec(
        "bench/big",
        [LayerSpec(size=1800 * MiB, compressible=True, seed=10)],  # ~1.0 GiB gzip
        "1 gzip layer",
    )
    return multi, big


@dataclass
class Built:
    name: str
    about: str
    layout: Path
    blobs: list[str]  # digests of config and layers
    layer_bytes: int  # compressed, as transferred
    uncompressed_bytes: int
    layer_sizes: list[int]

    @property
    def transfer_bytes(self) -> int:
        return self.layer_bytes


def _cache_key(spec: ImageSpec) -> str:
    return json.dumps(
        {"version": CACHE_VERSION, "layers": [asdict(layer) for layer in spec.layers]},
        sort_keys=True,
    )


def build_cached(spec: ImageSpec, images_dir: Path) -> Built:
    """The image's OCI layout, built unless the cache already holds this very spec."""
    directory = images_dir / spec.name.replace("/", "-")
    stamp = directory / "built.json"
    key = _cache_key(spec)
    if stamp.exists():
        info = json.loads(stamp.read_text())
        layout = directory / "layout"
        if info.get("key") == key and all(blob_path(layout, d).exists() for d in info["blobs"]):
            return Built(spec.name, spec.about, layout, **info["built"])
    shutil.rmtree(directory, ignore_errors=True)
    layout = directory / "layout"
    started = time.perf_counter()
    log(f"building {spec.name} ({spec.about}) in {layout} ...")
    image = build_image(layout, layers=spec.layers)
    built = {
        "blobs": [image.config_digest, *(layer.digest for layer in image.layers)],
        "layer_bytes": sum(layer.size for layer in image.layers),
        "uncompressed_bytes": sum(layer.uncompressed_size for layer in image.layers),
        "layer_sizes": [layer.size for layer in image.layers],
    }
    stamp.write_text(json.dumps({"key": key, "blobs": built["blobs"], "built": built}, indent=1))
    log(f"built {spec.name}: {mib(built['layer_bytes'])} in {time.perf_counter() - started:.0f}s")
    return Built(spec.name, spec.about, layout, **built)


def build_all(specs: tuple[ImageSpec, ...], images_dir: Path) -> list[Built]:
    """Build what is missing, one process per image, so both cores compress."""
    if all(_is_cached(spec, images_dir) for spec in specs):
        return [build_cached(spec, images_dir) for spec in specs]
    from concurrent.futures import ProcessPoolExecutor

    with ProcessPoolExecutor(max_workers=min(len(specs), os.cpu_count() or 1)) as pool:
        return list(pool.map(build_cached, specs, [images_dir] * len(specs)))


def _is_cached(spec: ImageSpec, images_dir: Path) -> bool:
    stamp = images_dir / spec.name.replace("/", "-") / "built.json"
    return stamp.exists() and json.loads(stamp.read_text()).get("key") == _cache_key(spec)


# -- /proc ---------------------------------------------------------------------------


def cpu_seconds(pid: int) -> float:
    """user + sys CPU seconds of every thread of `pid` so far."""
    stat = Path(f"/proc/{pid}/stat").read_text()
    fields = stat[stat.rindex(")") + 2 :].split()
    # After the command: state is field 3, utime 14 and stime 15 (1-based, man proc).
    return (int(fields[11]) + int(fields[12])) / TICKS


def memory_kib(pid: int) -> dict[str, int]:
    out = {}
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        key, _, value = line.partition(":")
        if key in ("VmRSS", "VmHWM", "Threads"):
            out[key] = int(value.split()[0])
    return out


class RssSampler:
    """Samples VmRSS of `pid` every 20 ms in a thread until stopped."""

    def __init__(self, pid: int) -> None:
        self.pid = pid
        self.peak_kib = 0
        self.samples = 0
        self.max_threads = 0
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, daemon=True)

    def __enter__(self) -> RssSampler:
        self._thread.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self._stop.set()
        self._thread.join()

    def _run(self) -> None:
        while True:
            try:
                values = memory_kib(self.pid)
            except (FileNotFoundError, ProcessLookupError):
                return
            self.peak_kib = max(self.peak_kib, values.get("VmRSS", 0))
            self.max_threads = max(self.max_threads, values.get("Threads", 0))
            self.samples += 1
            if self._stop.wait(SAMPLE_INTERVAL):
                return


# -- one run of each -----------------------------------------------------------------


@dataclass
class Run:
    tool: str
    image: str
    seconds: float
    bytes: int
    cpu_seconds: float  # of the puller (daemon or skopeo) during the run
    peak_rss_kib: int  # sampled (ferryd) or ru_maxrss (skopeo)
    hwm_kib: int = 0  # VmHWM at the end (ferryd)
    idle_rss_kib: int = 0  # VmRSS before the pull (ferryd)
    registry_cpu_seconds: float = 0.0
    threads: int = 0
    extra: dict[str, Any] = field(default_factory=dict)

    @property
    def mb_s(self) -> float:
        return self.bytes / 1e6 / self.seconds

    @property
    def cores(self) -> float:
        return self.cpu_seconds / self.seconds


class PullFailed(Exception):
    pass


def reference(registry: Registry, image: Built) -> str:
    return f"{registry.host}/{image.name}:latest"


def ferryd_pull(registry: Registry, image: Built, workdir: Path, *, profile: bool = False) -> Run:
    """A fresh daemon on a fresh root; time the pull request, not the start-up."""
    shutil.rmtree(workdir, ignore_errors=True)
    workdir.mkdir(parents=True)
    daemon = Daemon(workdir, settings=dict(DAEMON_SETTINGS))
    started = time.perf_counter()
    daemon.start()
    startup = time.perf_counter() - started
    spy: subprocess.Popen[bytes] | None = None
    try:
        assert daemon.process is not None
        pid = daemon.process.pid
        idle = memory_kib(pid)["VmRSS"]
        if profile:
            spy = start_py_spy(pid, workdir.parent / f"py-spy-{image.name.replace('/', '-')}.txt")
        registry_pid = registry.pid or 0
        registry_cpu = cpu_seconds(registry_pid)
        cpu = cpu_seconds(pid)
        with RssSampler(pid) as sampler:
            started = time.perf_counter()
            messages = daemon.pull(reference(registry, image))
            seconds = time.perf_counter() - started
        cpu = cpu_seconds(pid) - cpu
        registry_cpu = cpu_seconds(registry_pid) - registry_cpu
        hwm = memory_kib(pid)["VmHWM"]
        failed = errors(messages)
        if failed:
            raise PullFailed(f"ferryd pull of {image.name} failed: {failed}\n{daemon.log_tail()}")
        if not any(m.get("status", "").startswith("Status: ") for m in messages):
            raise PullFailed(f"ferryd pull of {image.name} ended early: {messages[-3:]}")
        missing = [d for d in image.blobs[1:] if not blob_path(daemon.root, d).is_file()]
        if missing:
            raise PullFailed(f"ferryd pull of {image.name}: blobs missing from store: {missing}")
    finally:
        if spy is not None:
            spy.send_signal(signal.SIGINT)
            spy.wait(30)
        daemon.stop()
    run = Run(
        "ferryd",
        image.name,
        seconds,
        image.transfer_bytes,
        cpu,
        sampler.peak_kib,
        hwm_kib=hwm,
        idle_rss_kib=idle,
        registry_cpu_seconds=registry_cpu,
        threads=sampler.max_threads,
        extra={"rss_samples": sampler.samples, "startup_seconds": startup},
    )
    shutil.rmtree(workdir, ignore_errors=True)
    os.sync()  # the next run must not pay for this one's writeback
    return run


def skopeo_pull(registry: Registry, image: Built, dest: Path) -> Run:
    """`skopeo copy docker://… oci:DEST:latest` into a fresh directory."""
    shutil.rmtree(dest, ignore_errors=True)
    workdir = skopeo_workdir(registry)
    env = skopeo_env(workdir)
    command = [
        SKOPEO_BIN,
        f"--policy={workdir / 'policy.json'}",
        f"--registries.d={workdir / 'registries.d'}",
        f"--tmpdir={env['TMPDIR']}",
        "copy",
        "--quiet",
        *registry.skopeo_flags("src-"),  # --src-tls-verify=false --src-no-creds
        f"docker://{reference(registry, image)}",
        f"oci:{dest}:latest",
    ]
    registry_cpu = cpu_seconds(registry.pid or 0)
    started = time.perf_counter()
    process = subprocess.Popen(
        command, env=env, stdin=subprocess.DEVNULL, stdout=subprocess.PIPE, stderr=subprocess.PIPE
    )
    _, status, usage = os.wait4(process.pid, 0)
    seconds = time.perf_counter() - started
    registry_cpu = cpu_seconds(registry.pid or 0) - registry_cpu
    process.returncode = os.waitstatus_to_exitcode(status)
    stderr = process.stderr.read().decode(errors="replace") if process.stderr else ""
    if process.returncode != 0:
        raise PullFailed(f"skopeo copy of {image.name} failed ({process.returncode}): {stderr}")
    missing = [d for d in image.blobs if not blob_path(dest, d).is_file()]
    if missing:
        raise PullFailed(f"skopeo copy of {image.name}: blobs missing: {missing}")
    shutil.rmtree(dest, ignore_errors=True)
    os.sync()
    return Run(
        "skopeo",
        image.name,
        seconds,
        image.transfer_bytes,
        usage.ru_utime + usage.ru_stime,
        usage.ru_maxrss,
        registry_cpu_seconds=registry_cpu,
    )


# -- py-spy --------------------------------------------------------------------------


def py_spy_bin() -> str | None:
    local = Path(sys.executable).parent / "py-spy"
    return str(local) if local.exists() else shutil.which("py-spy")


def start_py_spy(pid: int, output: Path) -> subprocess.Popen[bytes]:
    binary = py_spy_bin()
    assert binary is not None
    log(f"py-spy record --pid {pid} -> {output}")
    command = [binary, "record", "--pid", str(pid), "--threads", "--rate", "200"]
    command += ["--format", "raw", "--output", str(output), "--nonblocking"]
    spy = subprocess.Popen(command, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    time.sleep(0.5)  # let it attach before the pull starts
    return spy


def summarize_profile(path: Path, top: int = 15) -> str:
    """Self time by function and time by thread, from py-spy's collapsed stacks."""
    own: collections.Counter[str] = collections.Counter()
    threads: collections.Counter[str] = collections.Counter()
    total = 0
    for line in path.read_text().splitlines():
        stack, _, count_text = line.rpartition(" ")
        if not count_text.isdigit():
            continue
        count = int(count_text)
        frames = stack.split(";")
        total += count
        threads[frames[0]] += count
        own[frames[-1]] += count
    if not total:
        return "(no samples)"
    lines = [f"{total} samples; by thread:"]
    lines += [f"  {100 * n / total:5.1f}%  {name}" for name, n in threads.most_common(8)]
    lines.append("self time by function:")
    lines += [f"  {100 * n / total:5.1f}%  {name}" for name, n in own.most_common(top)]
    return "\n".join(lines)


# -- reporting -----------------------------------------------------------------------


def log(text: str) -> None:
    print(f"[{time.strftime('%H:%M:%S')}] {text}", file=sys.stderr, flush=True)


def mib(n: float) -> str:
    return f"{n / MiB:.0f} MiB"


def spread(values: list[float], fmt: str = "{:.2f}") -> str:
    return " / ".join(fmt.format(v) for v in (min(values), statistics.median(values), max(values)))


def report(
    multi: Built, big: Built, runs: list[Run], mem: Run, rounds: int, build_note: str
) -> str:
    a = [r for r in runs if r.tool == "ferryd"]
    b = [r for r in runs if r.tool == "skopeo"]
    med_a = statistics.median(r.seconds for r in a)
    med_b = statistics.median(r.seconds for r in b)
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
        f"| wall s, min / median / max | {spread([r.seconds for r in a])} "
        f"| {spread([r.seconds for r in b])} |",
        f"| MB/s, min / median / max | {spread([r.mb_s for r in a], '{:.0f}')} "
        f"| {spread([r.mb_s for r in b], '{:.0f}')} |",
        f"| CPU per wall s (median) | {statistics.median(r.cores for r in a):.2f} "
        f"| {statistics.median(r.cores for r in b):.2f} |",
        f"| registry CPU per wall s (median) "
        f"| {statistics.median(r.registry_cpu_seconds / r.seconds for r in a):.2f} "
        f"| {statistics.median(r.registry_cpu_seconds / r.seconds for r in b):.2f} |",
        f"| peak RSS (max over runs) | {max(r.peak_rss_kib for r in a) / 1024:.0f} MiB "
        f"| {max(r.peak_rss_kib for r in b) / 1024:.0f} MiB |",
        "| decompresses + DiffID check | yes | no (copies blobs as they are) |",
        f"| not counted: daemon start-up (median) "
        f"| {statistics.median(r.extra['startup_seconds'] for r in a):.2f} s | - |",
        "",
        f"Ratio of medians, ferryd / skopeo wall time: **{med_a / med_b:.2f}** "
        f"(ferryd {'faster' if med_a < med_b else 'slower'}).",
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
    if build_note:
        out += ["", build_note]
    return "\n".join(out)


# -- main ----------------------------------------------------------------------------


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--rounds", type=int, default=None, help="A/B rounds (default 5; 2 quick)")
    parser.add_argument("--quick", action="store_true", help="small images, for a smoke test")
    parser.add_argument(
        "--profile", action="store_true", help="py-spy the daemon during an extra big pull"
    )
    parser.add_argument("--out", type=Path, default=HERE / "out", help="cache and scratch dir")
    args = parser.parse_args()
    rounds = args.rounds if args.rounds is not None else (2 if args.quick else 5)
    if rounds < 1:
        parser.error("--rounds must be at least 1")
    if not have_registry_tools():
        print("docker-registry and skopeo are needed: make system-deps", file=sys.stderr)
        return 2
    if args.profile and py_spy_bin() is None:
        print("--profile needs py-spy: .venv/bin/pip install py-spy", file=sys.stderr)
        return 2

    began = time.perf_counter()
    out: Path = args.out.resolve()
    scratch = out / ("run-quick" if args.quick else "run")
    shutil.rmtree(scratch, ignore_errors=True)
    scratch.mkdir(parents=True)

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
                log(
                    f"round {round_ + 1}/{rounds} {tool:6}: {run.seconds:6.2f}s "
                    f"{run.mb_s:5.0f} MB/s  cpu {run.cores:.2f}  rss {run.peak_rss_kib // 1024} MiB"
                )

        mem = ferryd_pull(registry, big, scratch / "ferryd")
        log(
            f"big layer: {mem.seconds:.2f}s {mem.mb_s:.0f} MB/s cpu {mem.cores:.2f} "
            f"peak rss {mem.peak_rss_kib // 1024} MiB hwm {mem.hwm_kib // 1024} MiB"
        )
        profile_text = ""
        if args.profile:
            ferryd_pull(registry, big, scratch / "ferryd", profile=True)
            spy_out = scratch / f"py-spy-{big.name.replace('/', '-')}.txt"
            profile_text = summarize_profile(spy_out) if spy_out.exists() else "(no profile)"
    except PullFailed as exc:
        print(f"FAILED: {exc}", file=sys.stderr)
        return 1
    finally:
        registry.stop()

    total = time.perf_counter() - began
    note = f"(`make bench`{' --quick' if args.quick else ''}: {total:.0f} s in all)"
    table = report(multi, big, runs, mem, rounds, note)
    print()
    print(table)
    if profile_text:
        print("\npy-spy, big-layer pull:\n" + profile_text)
    suffix = "-quick" if args.quick else ""
    (out / f"results{suffix}.md").write_text(table + "\n")
    (out / f"results{suffix}.json").write_text(
        json.dumps(
            {
                "rounds": rounds,
                "multi": asdict(multi) | {"layout": str(multi.layout)},
                "big": asdict(big) | {"layout": str(big.layout)},
                "runs": [asdict(r) | {"mb_s": r.mb_s, "cores": r.cores} for r in [*runs, mem]],
                "total_seconds": total,
            },
            indent=1,
        )
        + "\n"
    )
    shutil.rmtree(scratch / "registry" / "storage", ignore_errors=True)
    return 0


if __name__ == "__main__":
    sys.exit(main())
