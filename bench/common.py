"""What the pull and push benchmarks share: the command line, the images, the daemon,
/proc measurement, runs, reporting.

Not run by itself: `bench/pull.py` (what `make bench` runs) and `bench/push.py` import it.
"""

from __future__ import annotations

import argparse
import collections
import json
import os
import re
import shutil
import signal
import statistics
import subprocess
import sys
import threading
import time
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

from cpuclock import TICKS, CpuClock, ticks_seconds

HERE = Path(__file__).resolve().parent
REPO = HERE.parent
if str(REPO / "tests") not in sys.path:
    sys.path.insert(0, str(REPO / "tests"))

from support.daemon import Daemon  # noqa: E402
from support.images import (  # noqa: E402
    LayerSpec,
    PlatformSpec,
    blob_path,
    build_image,
    build_index,
    layout_descriptor,
)
from support.registry import (  # noqa: E402
    SKOPEO_BIN,
    Registry,
    have_registry_tools,
    skopeo_env,
    skopeo_workdir,
)

MiB = 1 << 20
# A/B rounds of each scenario: 4 (an even number: each tool goes first as often) keeps
# `make bench` under 10 minutes on these 2-core machines; 5 took 629 s on a slow one,
# besides the floors at the start.
ROUNDS = 4
CACHE_VERSION = 1  # bump when the way images are built changes
SAMPLE_INTERVAL = 0.020  # seconds between two VmRSS samples
NOISE_MIN_SECONDS = 0.2  # shorter runs get no noise figure: a tick is 10 ms
# A run in which other processes and the hypervisor's steal took less than this (CPU
# per wall second) is quiet. On a shared machine steal makes runs bimodal (the 5-layer
# pull: 1.40-1.59 s in quiet runs, 1.85-2.71 s with 0.08-0.25 CPU/s taken), and three
# runs of five hit decide a median: the report gives the quiet runs' medians beside.
QUIET_OTHERS_CORES = 0.05
DAEMON_SETTINGS: dict[str, Any] = {"log_level": "warning"}


class BenchFailed(Exception):
    """A pull or push failed, or did not do what the benchmark must measure."""


# -- the command line ----------------------------------------------------------------


def parse_args(
    doc: str,
    *,
    images: str,
    profile_help: str,
    flags: dict[str, str] | None = None,
    scenarios: tuple[str, ...] = (),
) -> argparse.Namespace:
    """The options both benchmarks take: --rounds, --quick, --profile, `flags` (more
    on/off options, name: help), --out, and `--only` one of `scenarios` (if any);
    described by the first paragraph of `doc`.

    Checked: `rounds` is set (default `ROUNDS`, 1 with --quick) and at least 1, `out` resolved,
    `suffix` is "-quick" or "", `only` a set of scenarios (every one by default). Exits 2
    on a bad option or when a tool is missing.
    """
    parser = argparse.ArgumentParser(description=doc.split("\n\n")[0])
    parser.add_argument("--rounds", type=int, default=None, help="A/B rounds (default 4; 1 quick)")
    parser.add_argument("--quick", action="store_true", help=f"{images}, for a smoke test")
    parser.add_argument("--profile", action="store_true", help=profile_help)
    for flag, help_text in (flags or {}).items():
        parser.add_argument(flag, action="store_true", help=help_text)
    parser.add_argument("--out", type=Path, default=HERE / "out", help="cache and scratch dir")
    if scenarios:
        parser.add_argument(
            "--only",
            default=",".join(scenarios),
            help=f"comma-separated scenarios to run (default: all): {','.join(scenarios)}",
        )
    args = parser.parse_args()
    args.only = set(getattr(args, "only", "").split(",")) - {""}
    unknown = args.only - set(scenarios)
    if unknown:
        parser.error(f"--only: unknown scenarios {sorted(unknown)}")
    if args.rounds is None:
        args.rounds = 1 if args.quick else ROUNDS
    if args.rounds < 1:
        parser.error("--rounds must be at least 1")
    if not have_registry_tools():
        print("docker-registry and skopeo are needed: make system-deps", file=sys.stderr)
        raise SystemExit(2)
    if args.profile and py_spy_bin() is None:
        print("--profile needs py-spy: .venv/bin/pip install py-spy", file=sys.stderr)
        raise SystemExit(2)
    args.out = args.out.resolve()
    args.suffix = "-quick" if args.quick else ""
    return args


def fresh_dir(path: Path) -> Path:
    """`path`, emptied (or made)."""
    shutil.rmtree(path, ignore_errors=True)
    path.mkdir(parents=True)
    return path


# -- the images ----------------------------------------------------------------------


@dataclass(frozen=True)
class ImageSpec:
    name: str  # the repository in the registry, and the cache directory
    layers: list[LayerSpec]  # a single image's (none for an index)
    about: str
    platforms: tuple[PlatformSpec, ...] = ()  # an index (multi-platform image) of these


@dataclass(frozen=True)
class ImageSpecs:
    multi: ImageSpec  # 5 big layers
    big: ImageSpec  # one ~1 GiB layer
    small: ImageSpec  # 24 small layers, like an app image
    shared: tuple[ImageSpec, ...]  # 4 images on one base layer
    platforms: ImageSpec  # an index of 3 platforms on one base layer

    def all(self) -> tuple[ImageSpec, ...]:
        return (self.multi, self.big, self.small, *self.shared, self.platforms)


# Raw sizes of the 24-layer image, largest first (KiB): a base, a few dependency layers,
# then ever smaller ones (configuration, a launcher, metadata), as app images go.
SMALL_LAYERS_KIB: tuple[int, ...] = (5920, 4608, 3584, 2560, 2048, 1792, 1536, 1280, 1024)
SMALL_LAYERS_KIB += (896, 768, 640, 512, 384, 320, 256, 192, 128, 96, 64, 32, 16, 8, 4)
SHARED_IMAGES = 4
# The index's platforms: (os, architecture, variant), each on the same base layer.
INDEX_PLATFORMS: tuple[tuple[str, str, str | None], ...] = (
    ("linux", "amd64", None),
    ("linux", "arm64", "v8"),
    ("linux", "arm", "v7"),
)


def image_specs(quick: bool) -> ImageSpecs:
    """The benchmark's images (small ones with `quick`).

    Hex text compresses to ~57% with gzip -6 and ~52% with zstd -3: the compressors
    have real work to do, unlike random bytes (layers of those stand in for
    already-compressed content: wheels, jars, images).
    """
    scale = 4 if quick else 1
    prefix = "bench/quick-" if quick else "bench/"
    small = ImageSpec(
        f"{prefix}small",
        [
            LayerSpec(size=kib * 1024 // scale, compressible=True, seed=100 + i)
            for i, kib in enumerate(SMALL_LAYERS_KIB)
        ],
        f"{len(SMALL_LAYERS_KIB)} small gzip layers",
    )
    base = LayerSpec(size=64 * MiB // scale, compressible=True, seed=200)  # ~36 MiB gzip
    shared = tuple(
        ImageSpec(
            f"{prefix}app-{n}",
            [
                base,
                LayerSpec(size=16 * MiB // scale, compressible=True, seed=200 + 2 * n),
                LayerSpec(size=4 * MiB // scale, seed=201 + 2 * n),  # random
            ],
            "3 gzip layers, the first shared",
        )
        for n in range(1, SHARED_IMAGES + 1)
    )
    platforms = index_spec(f"{prefix}platforms", scale)
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
        return ImageSpecs(multi, big, small, shared, platforms)
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
    return ImageSpecs(multi, big, small, shared, platforms)


def index_spec(name: str, scale: int) -> ImageSpec:
    """An OCI index of `INDEX_PLATFORMS`, each image 3 gzip layers: one base layer
    shared by every platform (32 MiB of hex text raw, ~18 MiB gzip), then 8 MiB of hex
    text and 2 MiB of random bytes of its own; all of it divided by `scale`."""
    base = LayerSpec(size=32 * MiB // scale, compressible=True, seed=300)
    return ImageSpec(
        name,
        [],
        f"index of {len(INDEX_PLATFORMS)} platforms, 3 gzip layers each, the first shared",
        tuple(
            PlatformSpec(
                [
                    base,
                    LayerSpec(size=8 * MiB // scale, compressible=True, seed=301 + 2 * n),
                    LayerSpec(size=2 * MiB // scale, seed=302 + 2 * n),  # random
                ],
                os=os_,
                architecture=architecture,
                variant=variant,
            )
            for n, (os_, architecture, variant) in enumerate(INDEX_PLATFORMS)
        ),
    )


@dataclass
class Built:
    """An image as built: one image, or an index (`platforms`) of several."""

    name: str
    about: str
    layout: Path
    blobs: list[str]  # digests of the config(s), then of the (distinct) layers
    layer_bytes: int  # compressed, as transferred; each distinct layer once
    uncompressed_bytes: int  # each distinct layer once
    layer_sizes: list[int]  # of each distinct layer, in the order of `layer_digests`
    configs: int = 1  # how many of `blobs` are configs: one per platform
    index_digest: str | None = None  # an index's own digest (tag "latest" of the layout)
    # An index's images, in its order: {"platform": "linux/arm64/v8", "manifest":
    # digest, "config": digest, "layers": [digest, ...]}.
    platforms: list[dict[str, Any]] = field(default_factory=list)

    @property
    def transfer_bytes(self) -> int:
        return self.layer_bytes

    @property
    def manifest_digest(self) -> str:
        """The digest of the image's manifest (an index's own), as built (tag "latest"
        of the layout)."""
        return str(layout_descriptor(self.layout, "latest")["digest"])

    @property
    def config_digests(self) -> list[str]:
        return self.blobs[: self.configs]

    @property
    def layer_digests(self) -> list[str]:
        """Every distinct layer, each once."""
        return self.blobs[self.configs :]

    @property
    def manifest_digests(self) -> list[str]:
        """An index's blob and its images' manifests (none for a single image: its
        manifest is not a blob the checks look for)."""
        if self.index_digest is None:
            return []
        return [self.index_digest, *(p["manifest"] for p in self.platforms)]

    @property
    def shared_layers(self) -> list[str]:
        """The layers several platforms of an index have (none for a single image)."""
        seen = collections.Counter(d for p in self.platforms for d in set(p["layers"]))
        return [d for d in self.layer_digests if seen[d] > 1]

    @property
    def per_platform_bytes(self) -> int:
        """The layers' bytes if every platform fetched its own (a single image's
        `layer_bytes`)."""
        if not self.platforms:
            return self.layer_bytes
        size = dict(zip(self.layer_digests, self.layer_sizes, strict=True))
        return sum(size[d] for p in self.platforms for d in p["layers"])

    def pull_params(self) -> dict[str, str]:
        """ferryd's query parameters for a pull of this image: every platform of an
        index (its `all-platforms=1`)."""
        return {"all-platforms": "1"} if self.index_digest is not None else {}

    def blob_names(self) -> dict[str, str]:
        """A name for each blob in the report: "the config", "layer 2"; an index's
        "the shared layer 1", "linux/arm64/v8 layer 2", …"""
        if not self.platforms:
            names = {self.blobs[0]: "the config"}
            return names | {d: f"layer {i + 1}" for i, d in enumerate(self.layer_digests)}
        names = {}
        shared = set(self.shared_layers)
        for p in self.platforms:
            names[p["config"]] = f"the {p['platform']} config"
            for i, digest in enumerate(p["layers"]):
                if digest in shared:
                    names.setdefault(digest, f"the shared layer {i + 1}")
                else:
                    names[digest] = f"{p['platform']} layer {i + 1}"
        return names

    def blob_size(self, digest: str) -> int:
        return blob_path(self.layout, digest).stat().st_size


def _cache_key(spec: ImageSpec) -> str:
    key: dict[str, Any] = {"version": CACHE_VERSION, "layers": [asdict(x) for x in spec.layers]}
    if spec.platforms:
        key["platforms"] = [asdict(platform) for platform in spec.platforms]
    return json.dumps(key, sort_keys=True)


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
    built = _build_index(spec, layout) if spec.platforms else _build_image(spec, layout)
    stamp.write_text(json.dumps({"key": key, "blobs": built["blobs"], "built": built}, indent=1))
    log(f"built {spec.name}: {mib(built['layer_bytes'])} in {time.perf_counter() - started:.0f}s")
    return Built(spec.name, spec.about, layout, **built)


def _build_image(spec: ImageSpec, layout: Path) -> dict[str, Any]:
    """One image's layout: `Built`'s fields."""
    image = build_image(layout, layers=spec.layers)
    return {
        "blobs": [image.config_digest, *(layer.digest for layer in image.layers)],
        "layer_bytes": sum(layer.size for layer in image.layers),
        "uncompressed_bytes": sum(layer.uncompressed_size for layer in image.layers),
        "layer_sizes": [layer.size for layer in image.layers],
    }


def _build_index(spec: ImageSpec, layout: Path) -> dict[str, Any]:
    """An index's layout (the tests' `build_index`: a layer two platforms share is
    written once): `Built`'s fields, each distinct layer once."""
    index = build_index(layout, list(spec.platforms))
    layers = {layer.digest: layer for image in index.images for layer in image.layers}
    return {
        "blobs": [*(image.config_digest for image in index.images), *layers],
        "layer_bytes": sum(layer.size for layer in layers.values()),
        "uncompressed_bytes": sum(layer.uncompressed_size for layer in layers.values()),
        "layer_sizes": [layer.size for layer in layers.values()],
        "configs": len(index.images),
        "index_digest": index.digest,
        "platforms": [
            {
                "platform": "/".join(
                    [image.platform["os"], image.platform["architecture"]]
                    + ([image.platform["variant"]] if "variant" in image.platform else [])
                ),
                "manifest": image.manifest_digest,
                "config": image.config_digest,
                "layers": [layer.digest for layer in image.layers],
            }
            for image in index.images
        ],
    }


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


# -- the daemon ----------------------------------------------------------------------


def fresh_daemon(workdir: Path, registry: Registry | None = None) -> tuple[Daemon, float]:
    """A daemon started on a fresh root in `workdir`: (the daemon, its start-up s). It
    verifies `registry`, if that speaks TLS (see `daemon_for`)."""
    daemon = daemon_for(fresh_dir(workdir), registry)
    return daemon, timed_start(daemon)


def daemon_for(workdir: Path, registry: Registry | None) -> Daemon:
    """A daemon in `workdir`, not started. A registry that speaks TLS is verified, as
    real registries are and as skopeo verifies it here: its CA in the daemon's certs.d,
    and loopback no longer insecure (it would be taken unverified)."""
    settings = dict(DAEMON_SETTINGS)
    if registry is not None and registry.ca_cert_pem is not None:
        certs = workdir / "certs.d" / registry.host
        certs.mkdir(parents=True, exist_ok=True)
        (certs / "ca.crt").write_bytes(registry.ca_cert_pem)
        settings["insecure_registries"] = []
    return Daemon(workdir, settings=settings)


def timed_start(daemon: Daemon) -> float:
    """Start `daemon`; the seconds until it answered."""
    started = time.perf_counter()
    daemon.start()
    return time.perf_counter() - started


# -- /proc ---------------------------------------------------------------------------


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


@dataclass
class Usage:
    """What the puller or pusher (the daemon, or skopeo) used during one run."""

    seconds: float = 0.0  # wall
    cpu_seconds: float = 0.0  # user + sys, every thread (every process, for skopeos)
    peak_rss_kib: int = 0  # sampled (daemon) or ru_maxrss (skopeo; summed when several)
    registry_cpu_seconds: float = 0.0
    idle_rss_kib: int = 0  # VmRSS before (daemon)
    hwm_kib: int = 0  # VmHWM at the end (daemon)
    threads: int = 0  # the most seen (daemon)
    rss_samples: int = 0  # (daemon)
    proxy_cpu_seconds: float | None = None  # the latency proxy's, when one is in the way
    machine_cpu_seconds: float = 0.0  # the whole machine's busy CPU seconds (/proc/stat)
    bench_cpu_seconds: float = 0.0  # this process's (reading streams, sampling RSS)
    cpu_clock: str = "rusage"  # how cpu_seconds was read: cgroup v1/v2, ticks (daemon)

    @property
    def others_cpu_seconds(self) -> float:
        """CPU seconds of everything else on the machine meanwhile (other users' work,
        steal): the machine's busy time less the puller's, the registry's, the proxy's
        and the benchmark's own. Noise: the higher, the less the run says."""
        ours = self.cpu_seconds + self.registry_cpu_seconds + (self.proxy_cpu_seconds or 0.0)
        return max(0.0, self.machine_cpu_seconds - ours - self.bench_cpu_seconds)

    def run(self, tool: str, image: Built, **extra: Any) -> Run:
        return self.as_run(tool, image.name, image.transfer_bytes, extra=extra)

    def as_run(self, tool: str, image: str, bytes_: int, **fields: Any) -> Run:
        """A `Run` of what was measured; `fields` are the Run's other fields."""
        return Run(
            tool,
            image,
            self.seconds,
            bytes_,
            self.cpu_seconds,
            self.peak_rss_kib,
            hwm_kib=self.hwm_kib,
            idle_rss_kib=self.idle_rss_kib,
            registry_cpu_seconds=self.registry_cpu_seconds,
            threads=self.threads,
            **fields,
        )


@contextmanager
def measured(registry: Registry, proxy_pid: int | None = None) -> Iterator[Usage]:
    """Wall seconds of the body, and the CPU seconds `registry` (and the latency proxy
    `proxy_pid`) spent meanwhile (from /proc/PID/stat), in the `Usage` once the body is
    done."""
    usage = Usage()
    registry_cpu = ticks_seconds(registry.pid or 0)
    proxy_cpu = ticks_seconds(proxy_pid) if proxy_pid else 0.0
    machine, own = machine_busy_seconds(), _own_cpu_seconds()
    started = time.perf_counter()
    yield usage
    usage.seconds = time.perf_counter() - started
    usage.machine_cpu_seconds = machine_busy_seconds() - machine
    usage.bench_cpu_seconds = _own_cpu_seconds() - own
    usage.registry_cpu_seconds = ticks_seconds(registry.pid or 0) - registry_cpu
    if proxy_pid:
        usage.proxy_cpu_seconds = ticks_seconds(proxy_pid) - proxy_cpu


def machine_busy_seconds() -> float:
    """CPU seconds the whole machine has been busy (user, nice, system, irq, softirq)
    or had its CPUs taken by the hypervisor (steal), every CPU, from /proc/stat."""
    fields = [int(v) for v in Path("/proc/stat").read_text().split("\n", 1)[0].split()[1:9]]
    user, nice, system, _idle, _iowait, irq, softirq, steal = fields
    return (user + nice + system + irq + softirq + steal) / TICKS


def _own_cpu_seconds() -> float:
    """user + sys of this process (the benchmark's threads), not of its children."""
    times = os.times()
    return times.user + times.system


@contextmanager
def measure_daemon(pid: int, registry: Registry, proxy_pid: int | None = None) -> Iterator[Usage]:
    """`measured`, and the daemon `pid`'s part: its CPU seconds, its VmRSS before and
    sampled in a thread while the body runs, its VmHWM at the end."""
    idle = memory_kib(pid)["VmRSS"]
    with CpuClock(pid) as clock:
        cpu = clock.seconds()
        with RssSampler(pid) as sampler, measured(registry, proxy_pid) as usage:
            yield usage
        usage.cpu_seconds = clock.seconds() - cpu
        usage.cpu_clock = clock.source
    usage.idle_rss_kib = idle
    usage.peak_rss_kib = sampler.peak_kib
    usage.rss_samples = sampler.samples
    usage.threads = sampler.max_threads
    usage.hwm_kib = memory_kib(pid)["VmHWM"]


# -- the daemon's own figures --------------------------------------------------------

LOOP_LAG_METRIC = "ferryd_event_loop_lag_max_seconds"
_METRIC_LINE = re.compile(r"^(?P<name>[a-zA-Z_:][\w:]*)(?:\{[^}]*\})?\s+(?P<value>\S+)")


def metric_value(text: str, name: str) -> float | None:
    """The value of `name` in Prometheus text (the largest, if labelled several times)."""
    values = []
    for line in text.splitlines():
        m = _METRIC_LINE.match(line)
        if m is not None and m["name"] == name:
            try:
                values.append(float(m["value"]))
            except ValueError:
                continue
    return max(values) if values else None


def loop_lag(daemon: Daemon) -> float | None:
    """The daemon's largest event-loop lag since it started, from `GET /metrics`
    (`ferryd_event_loop_lag_max_seconds`); None where it has no such metric."""
    try:
        response = daemon.client().request("GET", "/metrics")
        with response:
            body = response.read().decode(errors="replace")
    except Exception:  # an older daemon, or none: the figure is "n/a", never a failure
        return None
    if response.status != 200:
        return None
    return metric_value(body, LOOP_LAG_METRIC)


# -- the registry's access log -------------------------------------------------------

# distribution 2.8 logs each request in Apache's combined format (gorilla/handlers):
#   127.0.0.1 - - [28/Nov/2026:04:27:07 +0000] "GET /v2/ HTTP/1.1" 200 2 "" "curl/7.88.1"
_ACCESS_LINE = re.compile(
    r'^\S+ \S+ \S+ \[[^\]]*\] "(?P<method>[A-Z]+) (?P<uri>\S+) [^"]*" (?P<status>\d{3}) '
)
_BLOB = re.compile(r"^/v2/.+/blobs/(?P<digest>[a-z0-9]+:[a-f0-9]+)$")


@dataclass(frozen=True)
class Request:
    method: str
    path: str
    status: int


class AccessLog:
    """The registry's access log from a mark on: what one run asked for."""

    def __init__(self, registry: Registry) -> None:
        self.path = registry.log_path
        self.offset = 0

    def mark(self) -> None:
        self.offset = self.path.stat().st_size

    def since_mark(self) -> list[Request]:
        with self.path.open("rb") as fh:
            fh.seek(self.offset)
            text = fh.read().decode(errors="replace")
        out = []
        for line in text.splitlines():
            m = _ACCESS_LINE.match(line)
            if m is not None:
                out.append(Request(m["method"], m["uri"].partition("?")[0], int(m["status"])))
        return out


def count_requests(requests: list[Request]) -> dict[str, Any]:
    """What a run asked the registry: in all, manifests (GET and HEAD), blob GETs and
    HEADs, pings (`/v2/`), and the GETs of each blob (the most, and every blob fetched
    more than once)."""
    gets: collections.Counter[str] = collections.Counter()
    counts = {"total": len(requests), "manifests": 0, "blob_gets": 0, "blob_heads": 0}
    counts["pings"] = 0
    for r in requests:
        blob = _BLOB.match(r.path)
        if r.path.rstrip("/") == "/v2":
            counts["pings"] += 1
        elif "/manifests/" in r.path and r.method in ("GET", "HEAD"):
            counts["manifests"] += 1
        elif blob is not None and r.method == "GET":
            counts["blob_gets"] += 1
            gets[blob["digest"]] += 1
        elif blob is not None and r.method == "HEAD":
            counts["blob_heads"] += 1
    return counts | {
        "max_gets_per_blob": max(gets.values(), default=0),
        "blobs_fetched_more_than_once": {d: n for d, n in gets.items() if n > 1},
        "blob_gets_by_digest": dict(gets),
    }


# -- one run -------------------------------------------------------------------------


@dataclass
class Run:
    tool: str
    image: str
    seconds: float
    bytes: int
    cpu_seconds: float  # of the puller/pusher (daemon or skopeo) during the run
    peak_rss_kib: int  # sampled (ferryd) or ru_maxrss (skopeo)
    hwm_kib: int = 0  # VmHWM at the end (ferryd)
    idle_rss_kib: int = 0  # VmRSS before the pull (ferryd)
    registry_cpu_seconds: float = 0.0
    threads: int = 0
    floor_cpu_seconds: float | None = None  # see floor.py (ferryd pulls)
    transfer_cpu_seconds: float | None = None  # see transfer.py (ferryd pulls)
    loop_lag_seconds: float | None = None  # the daemon's largest, from GET /metrics
    requests: dict[str, Any] | None = None  # count_requests() of the registry's log
    proxy_cpu_seconds: float | None = None
    connections: int | None = None  # TCP connections opened through the latency proxy
    others_cpu_seconds: float | None = None  # Usage.others_cpu_seconds: the noise
    extra: dict[str, Any] = field(default_factory=dict)

    @property
    def mb_s(self) -> float:
        return self.bytes / 1e6 / self.seconds

    @property
    def cores(self) -> float:
        return self.cpu_seconds / self.seconds

    @property
    def registry_cores(self) -> float:
        return self.registry_cpu_seconds / self.seconds

    @property
    def others_cores(self) -> float | None:
        """Other processes' CPU seconds per wall second during the run; None for a run
        too short to tell (/proc/stat counts in ticks of 10 ms)."""
        if self.others_cpu_seconds is None or self.seconds < NOISE_MIN_SECONDS:
            return None
        return min(self.others_cpu_seconds / self.seconds, float(os.cpu_count() or 1))

    @property
    def quiet(self) -> bool:
        """Whether the rest of the machine left this run alone (a run too short to tell
        counts as quiet)."""
        others = self.others_cores
        return others is None or others < QUIET_OTHERS_CORES

    @property
    def least_seconds(self) -> float | None:
        """The least wall time a verifying pull of these blobs can take on this machine's
        cores: the floor, the transfer and the registry's CPU, all of it spread evenly
        over every core (a bound: no pipeline overlaps perfectly)."""
        if not self.floor_cpu_seconds or self.transfer_cpu_seconds is None:
            return None
        work = self.floor_cpu_seconds + self.transfer_cpu_seconds + self.registry_cpu_seconds
        return work / (os.cpu_count() or 1)

    @property
    def over_floor(self) -> float | None:
        """CPU seconds per floor second: 1.0 is the least a pull can spend."""
        if not self.floor_cpu_seconds:
            return None
        return self.cpu_seconds / self.floor_cpu_seconds


def run_json(runs: list[Run]) -> list[dict[str, Any]]:
    return [
        asdict(r)
        | {
            "mb_s": r.mb_s,
            "cores": r.cores,
            "cpu_over_floor": r.over_floor,
            "least_seconds": r.least_seconds,
        }
        for r in runs
    ]


# -- skopeo --------------------------------------------------------------------------


def run_skopeo_timed(
    registry: Registry, args: list[str], what: str, proxy_pid: int | None = None
) -> Usage:
    """Run `skopeo ARGS` hermetically (per-registry policy, config and temp dir) and time
    it; its CPU time and peak RSS come from wait4, the registry's CPU from /proc."""
    return run_skopeos_timed(registry, [args], what, proxy_pid)


def run_skopeos_timed(
    registry: Registry, commands: list[list[str]], what: str, proxy_pid: int | None = None
) -> Usage:
    """Run one skopeo per `commands` entry, all at once, and time them until the last
    ends: CPU seconds and peak RSS (ru_maxrss) summed over the processes, from wait4."""
    workdir = skopeo_workdir(registry)
    env = skopeo_env(workdir)
    base = [
        SKOPEO_BIN,
        f"--policy={workdir / 'policy.json'}",
        f"--registries.d={workdir / 'registries.d'}",
        f"--tmpdir={env['TMPDIR']}",
    ]
    processes: list[subprocess.Popen[bytes]] = []
    failures = []
    with measured(registry, proxy_pid) as usage:
        processes += [
            subprocess.Popen(
                [*base, *args],
                env=env,
                stdin=subprocess.DEVNULL,
                stdout=subprocess.DEVNULL,
                stderr=subprocess.PIPE,
            )
            for args in commands
        ]
        for process in processes:
            _, status, rusage = os.wait4(process.pid, 0)
            process.returncode = os.waitstatus_to_exitcode(status)
            usage.cpu_seconds += rusage.ru_utime + rusage.ru_stime
            usage.peak_rss_kib += rusage.ru_maxrss
    for process in processes:
        stderr = process.stderr.read().decode(errors="replace") if process.stderr else ""
        if process.stderr:
            process.stderr.close()
        if process.returncode != 0:
            failures.append(f"({process.returncode}): {stderr}")
    if failures:
        raise BenchFailed(f"{what} failed " + "; ".join(failures))
    return usage


# -- py-spy --------------------------------------------------------------------------


def py_spy_bin() -> str | None:
    local = Path(sys.executable).parent / "py-spy"
    return str(local) if local.exists() else shutil.which("py-spy")


@contextmanager
def profiled(pid: int, output: Path | None) -> Iterator[None]:
    """`py-spy record` on `pid` into `output` while the body runs; nothing if None."""
    if output is None:
        yield
        return
    binary = py_spy_bin()
    assert binary is not None
    log(f"py-spy record --pid {pid} -> {output}")
    command = [binary, "record", "--pid", str(pid), "--threads", "--rate", "200"]
    command += ["--format", "raw", "--output", str(output), "--nonblocking"]
    spy = subprocess.Popen(command, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    try:
        time.sleep(0.5)  # let it attach before the pull starts
        yield
    finally:
        spy.send_signal(signal.SIGINT)
        spy.wait(30)


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


def log_run(label: str, run: Run) -> None:
    log(
        f"{label} {run.tool:6}: {run.seconds:6.2f}s {run.mb_s:5.0f} MB/s  "
        f"cpu {run.cores:.2f}  rss {run.peak_rss_kib // 1024} MiB"
    )


def mib(n: float) -> str:
    return f"{n / MiB:.0f} MiB"


def spread(values: list[float], fmt: str = "{:.2f}") -> str:
    return " / ".join(fmt.format(v) for v in (min(values), statistics.median(values), max(values)))


def ab_rows(a: list[Run], b: list[Run]) -> list[str]:
    """The table rows both benchmarks share: wall time, MB/s, CPU, registry CPU, RSS."""
    return [
        f"| wall s, min / median / max | {spread([r.seconds for r in a])} "
        f"| {spread([r.seconds for r in b])} |",
        f"| MB/s, min / median / max | {spread([r.mb_s for r in a], '{:.0f}')} "
        f"| {spread([r.mb_s for r in b], '{:.0f}')} |",
        f"| CPU per wall s (median) | {statistics.median(r.cores for r in a):.2f} "
        f"| {statistics.median(r.cores for r in b):.2f} |",
        f"| registry CPU per wall s (median) "
        f"| {statistics.median(r.registry_cores for r in a):.2f} "
        f"| {statistics.median(r.registry_cores for r in b):.2f} |",
        f"| peak RSS (max over runs) | {max(r.peak_rss_kib for r in a) / 1024:.0f} MiB "
        f"| {max(r.peak_rss_kib for r in b) / 1024:.0f} MiB |",
    ]


def write_results(out: Path, name: str, table: str, data: dict[str, Any]) -> None:
    """The table as `name`.md and the raw figures as `name`.json in `out`."""
    (out / f"{name}.md").write_text(table + "\n")
    (out / f"{name}.json").write_text(json.dumps(data, indent=1) + "\n")


def ratio_line(a: list[Run], b: list[Run]) -> str:
    med_a = statistics.median(r.seconds for r in a)
    med_b = statistics.median(r.seconds for r in b)
    return (
        f"Ratio of medians, ferryd / skopeo wall time: **{med_a / med_b:.2f}** "
        f"(ferryd {'faster' if med_a < med_b else 'slower'})."
    )
