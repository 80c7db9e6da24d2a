"""The pull benchmark's report: one summary table of every scenario, then a table per
scenario, as markdown; and the same figures as JSON."""

from __future__ import annotations

import os
import statistics
from collections.abc import Callable
from dataclasses import asdict, dataclass, field
from typing import Any

from common import QUIET_OTHERS_CORES, SAMPLE_INTERVAL, Built, Run, mib, run_json
from floor import floor_of
from runners import unique_layers

FERRYD, SKOPEO = "ferryd", "skopeo"
ONCE, IN_TURN = "at once", "one after another"


@dataclass
class Scenario:
    key: str
    images: list[Built]  # what each run pulls (the same one several times: clients)
    runs: list[Run] = field(default_factory=list)
    latency: bool = False
    tls: bool = False  # from a registry that speaks HTTPS (a certificate of its own CA)
    up_to_date: bool = False

    def of(self, tool: str, mode: str | None = None) -> list[Run]:
        return [r for r in self.runs if r.tool == tool and mode in (None, r.extra.get("mode"))]

    def modes(self) -> list[str]:
        return list(dict.fromkeys(r.extra.get("mode", "pull") for r in self.runs))

    @property
    def shared_layers(self) -> list[str]:
        """The layers that several of the scenario's distinct images, or several
        platforms of one index, have: each must be fetched once by a ferryd run."""
        images = list({image.name: image for image in self.images}.values())
        seen: dict[str, int] = {}
        for image in images:
            for digest in image.layer_digests:
                seen[digest] = seen.get(digest, 0) + 1
        shared = [d for d, n in seen.items() if n > 1]
        return shared + [d for i in images for d in i.shared_layers if d not in shared]

    @property
    def short(self) -> str:
        """The scenario in a few words, for the summary."""
        first = self.images[0]
        layers = f"{len(first.layer_sizes)} layers"
        if self.key == "shared":
            return f"{len(self.images)} images, one base layer shared"
        if first.platforms:
            return f"index of {len(first.platforms)} platforms, one base layer shared"
        if self.key == "same":
            return f"{len(self.images)} clients, same image ({layers})"
        if self.up_to_date:
            return f"up to date ({layers})"
        return f"{layers} ({mib(first.layer_bytes)}){self._how}"

    @property
    def _how(self) -> str:
        return ", +25 ms each way" if self.latency else ", over TLS" if self.tls else ""

    @property
    def title(self) -> str:
        first = self.images[0]
        base = _image_title(first)
        if self.key == "shared":
            unique = unique_layers([self.images])
            size = sum(image.layer_bytes for image in self.images)
            return (
                f"{len(self.images)} images sharing their base layer ({first.about}; "
                f"{len(unique)} distinct layers, {mib(sum(unique.values()))} of {mib(size)})"
            )
        if first.platforms:
            return (
                f"an index of {len(first.platforms)} platforms "
                f"({', '.join(p['platform'] for p in first.platforms)}) sharing their base "
                f"layer, pulled whole ({len(first.layer_digests)} distinct layers, "
                f"{mib(first.layer_bytes)} of {mib(first.per_platform_bytes)}; "
                f"{mib(first.uncompressed_bytes)} uncompressed)"
            )
        if self.key == "same":
            return f"{len(self.images)} clients, one image: {base}"
        if self.up_to_date:
            return f"up to date: {base}, already in the store"
        if self.latency:
            return f"{base}, 25 ms each way"
        if self.tls:
            return f"{base}, from a registry over TLS"
        return base


def _image_title(image: Built) -> str:
    return f"{image.about}, {mib(image.layer_bytes)} ({mib(image.uncompressed_bytes)} uncompressed)"


# -- figures -------------------------------------------------------------------------


def _median(runs: list[Run], value: Callable[[Run], float | None]) -> float | None:
    values = [v for v in map(value, runs) if v is not None]
    return statistics.median(values) if values else None


def _max(runs: list[Run], value: Callable[[Run], float | None]) -> float | None:
    values = [v for v in map(value, runs) if v is not None]
    return max(values) if values else None


def _fmt(value: float | None, pattern: str = "{:.2f}", missing: str = "-") -> str:
    return missing if value is None else pattern.format(value)


def _secs(value: float | None) -> str:
    """Seconds: 2 decimals, 3 under 0.1 s (an up-to-date pull on loopback)."""
    if value is None:
        return "-"
    return f"{value:.3f}" if value < 0.1 else f"{value:.2f}"


def _lag(runs: list[Run]) -> str:
    """The largest event-loop lag of any of the runs, or n/a."""
    return _fmt(_max(runs, lambda r: r.loop_lag_seconds), "{:.3f} s", "n/a")


def _hwm(runs: list[Run]) -> str:
    return f"{max(r.hwm_kib or r.peak_rss_kib for r in runs) / 1024:.0f} MiB"


def _requests(run: Run) -> str:
    q = run.requests or {}
    text = (
        f"{q.get('total', 0)}: {q.get('manifests', 0)} manifest, {q.get('blob_gets', 0)} "
        f"blob GET, {q.get('pings', 0)} /v2/"
    )
    if run.connections is not None:
        text += f"; {run.connections} connections"
    return text


def _median_run(runs: list[Run]) -> Run:
    return sorted(runs, key=lambda r: r.seconds)[(len(runs) - 1) // 2]


def _fetched_once(scenario: Scenario) -> str:
    """ "yes", or which blobs some ferryd run fetched more than once, and how often."""
    names = {}
    for image in scenario.images:
        names.update(image.blob_names())
    worst: dict[str, int] = {}
    for run in scenario.of(FERRYD):
        for digest, n in (run.requests or {}).get("blobs_fetched_more_than_once", {}).items():
            worst[digest] = max(n, worst.get(digest, 0))
    if not worst:
        return "yes"
    ranked = sorted(worst.items(), key=lambda item: -item[1])
    listed = ", ".join(f"{names.get(d, d[:19])} ({d[7:19]}…) {n} times" for d, n in ranked[:4])
    more = f", and {len(ranked) - 4} blobs more" if len(ranked) > 4 else ""
    return f"**NO**: {listed}{more}"


def _shared_gets(runs: list[Run], scenario: Scenario) -> tuple[int, int] | None:
    """The fewest and the most GETs of one of the scenario's shared layers in one of
    `runs` (the target for ferryd: 1 and 1); None without shared layers."""
    shared = scenario.shared_layers
    if not shared or not runs:
        return None
    counts = [
        (r.requests or {}).get("blob_gets_by_digest", {}).get(d, 0) for r in runs for d in shared
    ]
    return min(counts), max(counts)


def _shared_gets_text(runs: list[Run], scenario: Scenario) -> str:
    gets = _shared_gets(runs, scenario)
    if gets is None:
        return "-"
    return str(gets[0]) if gets[0] == gets[1] else f"{gets[0]} to {gets[1]}"


# -- markdown ------------------------------------------------------------------------


def _summary(scenarios: list[Scenario]) -> list[str]:
    lines = [
        "| pull | | ferryd wall s | skopeo wall s | ferryd / skopeo | least wall s "
        "| ferryd CPU s | floor CPU s | transfer CPU s | CPU / floor "
        "| quiet runs: ferryd / skopeo, CPU / floor "
        "| ferryd peak RSS | loop lag max | registry requests (ferryd, median run) |",
        "|---|---|---|---|---|---|---|---|---|---|---|---|---|---|",
    ]
    for scenario in scenarios:
        for mode in scenario.modes():
            a, b = scenario.of(FERRYD, mode), scenario.of(SKOPEO, mode)
            wall_a = _median(a, lambda r: r.seconds)
            wall_b = _median(b, lambda r: r.seconds)
            ratio = "-"
            if wall_a and wall_b and not scenario.up_to_date:
                ratio = f"**{wall_a / wall_b:.2f}**"
            skopeo = _secs(wall_b)
            if scenario.up_to_date and b:
                skopeo = f"({skopeo}, for reference)"
            floor = _median(a, lambda r: r.floor_cpu_seconds)
            lines.append(
                f"| {scenario.short} | {mode} | {_secs(wall_a)} | {skopeo} | {ratio} "
                f"| {_secs(_median(a, lambda r: r.least_seconds))} "
                f"| {_fmt(_median(a, lambda r: r.cpu_seconds))} | {_fmt(floor)} "
                f"| {_fmt(_median(a, lambda r: r.transfer_cpu_seconds))} "
                f"| {_fmt(_median(a, lambda r: r.over_floor), '{:.2f}')} "
                f"| {_quiet_cell(scenario, a, b)} | {_hwm(a)} "
                f"| {_lag(a)} | {_requests(_median_run(a))} |"
            )
    return lines


def _quiet(runs: list[Run]) -> list[Run]:
    return [r for r in runs if r.quiet]


def _quiet_cell(scenario: Scenario, ferryd: list[Run], skopeo: list[Run]) -> str:
    """ferryd / skopeo and ferryd's CPU / floor over the quiet runs only, with how many
    of each tool's runs were quiet; "-" where a tool had none (or for up-to-date pulls)."""
    calm_a, calm_b = _quiet(ferryd), _quiet(skopeo)
    if scenario.up_to_date or not calm_a or not calm_b:
        return "-"
    ratio = median_wall(calm_a) / median_wall(calm_b)
    over = _fmt(_median(calm_a, lambda r: r.over_floor))
    return (
        f"{ratio:.2f}, {over} ({len(calm_a)} of {len(ferryd)} and {len(calm_b)} of {len(skopeo)})"
    )


def _detail(scenario: Scenario) -> list[str]:
    columns = [(tool, mode) for mode in scenario.modes() for tool in (FERRYD, SKOPEO)]
    columns = [(tool, mode) for tool, mode in columns if scenario.of(tool, mode)]
    groups = [scenario.of(tool, mode) for tool, mode in columns]
    headers = [f"{tool} {mode}" if len(scenario.modes()) > 1 else tool for tool, mode in columns]

    def row(label: str, cell: Callable[[list[Run]], str]) -> str:
        return f"| {label} | " + " | ".join(cell(runs) for runs in groups) + " |"

    def ferryd_only(cell: Callable[[list[Run]], str]) -> Callable[[list[Run]], str]:
        return lambda runs: cell(runs) if runs[0].tool == FERRYD else "-"

    lines = [
        f"**{scenario.title}** ({len(groups[0])} run{'s' if len(groups[0]) > 1 else ''} each)",
        "",
        "| | " + " | ".join(headers) + " |",
        "|---" * (len(columns) + 1) + "|",
        row(
            "wall s, min / median / max",
            lambda runs: " / ".join(
                _secs(f([r.seconds for r in runs])) for f in (min, statistics.median, max)
            ),
        ),
        row(
            f"wall s, median of the quiet runs (noise < {QUIET_OTHERS_CORES} CPU/s)",
            lambda runs: (
                f"{_secs(median_wall(_quiet(runs)))} ({len(_quiet(runs))} of {len(runs)})"
                if _quiet(runs)
                else "- (none)"
            ),
        ),
    ]
    if not scenario.up_to_date:
        lines.append(
            row("MB/s (median)", lambda runs: f"{statistics.median(r.mb_s for r in runs):.0f}")
        )
    lines += [
        row(
            "CPU s, user+sys (median)",
            lambda runs: f"{statistics.median(r.cpu_seconds for r in runs):.2f}",
        ),
        row(
            "CPU per wall s (median)",
            lambda runs: f"{statistics.median(r.cores for r in runs):.2f}",
        ),
    ]
    if not scenario.up_to_date:
        lines.append(
            row(
                "floor CPU s / CPU over floor (median)",
                ferryd_only(
                    lambda runs: (
                        f"{_fmt(_median(runs, lambda r: r.floor_cpu_seconds))} / "
                        f"{_fmt(_median(runs, lambda r: r.over_floor))}"
                    )
                ),
            )
        )
        lines.append(
            row(
                "transfer CPU s / least wall s, (floor + transfer + registry) / "
                f"{os.cpu_count()} cores (median)",
                ferryd_only(
                    lambda runs: (
                        f"{_fmt(_median(runs, lambda r: r.transfer_cpu_seconds))} / "
                        f"{_secs(_median(runs, lambda r: r.least_seconds))}"
                    )
                ),
            )
        )
    lines += [
        row("peak RSS (VmHWM; skopeo: ru_maxrss, summed at once)", _hwm),
        row("event-loop lag, largest", ferryd_only(_lag)),
        row("registry requests (median run)", lambda runs: _requests(_median_run(runs))),
        row(
            "most GETs of one blob (any run)",
            lambda runs: f"{max((r.requests or {}).get('max_gets_per_blob', 0) for r in runs)}",
        ),
    ]
    if scenario.shared_layers:
        lines.append(
            row(
                "GETs of the shared base layer in a run (every run)",
                lambda runs: _shared_gets_text(runs, scenario),
            )
        )
    lines += [
        row(
            "other processes' CPU per wall s, median (noise)",
            lambda runs: _fmt(_median(runs, lambda r: r.others_cores)),
        ),
        row(
            "registry CPU s (median)",
            lambda runs: f"{statistics.median(r.registry_cpu_seconds for r in runs):.2f}",
        ),
    ]
    if scenario.latency or any(r.proxy_cpu_seconds is not None for r in scenario.runs):
        lines += [
            row(
                "TCP connections opened through the proxy (median)",
                lambda runs: _fmt(_median(runs, lambda r: r.connections), "{:.0f}"),
            ),
            row("latency proxy CPU s (median)", lambda runs: _fmt(_median(runs, _proxy_cpu))),
        ]
    lines.append(
        row(
            "not counted: daemon start-up (median)",
            ferryd_only(
                lambda runs: f"{_fmt(_median(runs, lambda r: r.extra.get('startup_seconds')))} s"
            ),
        )
    )
    lines += ["", *_conclusions(scenario)]
    return lines


def _proxy_cpu(run: Run) -> float | None:
    return run.proxy_cpu_seconds


def median_wall(runs: list[Run]) -> float:
    return statistics.median(r.seconds for r in runs)


def _versus(ferryd: list[Run], skopeo: list[Run]) -> str:
    """The conclusion's line comparing the tools' median wall times (unended)."""
    ratio = median_wall(ferryd) / median_wall(skopeo)
    return (
        f"- ferryd / skopeo, medians of wall time: **{ratio:.2f}** "
        f"(ferryd {'faster' if ratio < 1 else 'slower'})"
    )


def _conclusions(scenario: Scenario) -> list[str]:
    out = []
    if scenario.key in ("shared", "same"):
        for tool in (FERRYD, SKOPEO):
            once, turn = scenario.of(tool, ONCE), scenario.of(tool, IN_TURN)
            if once and turn:
                a, b = median_wall(once), median_wall(turn)
                out.append(
                    f"- {tool}: at once / one after another, medians: "
                    f"**{a / b:.2f}** ({a:.2f} s vs {b:.2f} s)."
                )
        once_a, once_b = scenario.of(FERRYD, ONCE), scenario.of(SKOPEO, ONCE)
        if once_a and once_b:
            ratio = median_wall(once_a) / median_wall(once_b)
            out.append(
                f"- at once, ferryd / skopeo: **{ratio:.2f}**. skopeo "
                "has no shared store: each copy goes to its own directory and fetches "
                "every blob itself."
            )
        out.append(
            f"- every blob fetched once in every ferryd run (access log): "
            f"{_fetched_once(scenario)}."
        )
    elif scenario.up_to_date:
        for mode in scenario.modes():
            runs = scenario.of(FERRYD, mode)
            manifests = max((r.requests or {}).get("manifests", 0) for r in runs)
            blobs = max((r.requests or {}).get("blob_gets", 0) for r in runs)
            total = max((r.requests or {}).get("total", 0) for r in runs)
            met = "met" if total == 1 and manifests == 1 else "**not met**"
            out.append(
                f"- {mode}: ferryd asked the registry at most {total} "
                f"request{'s' if total != 1 else ''} in a run "
                f"({manifests} for manifests, {blobs} blob GETs); target, one manifest "
                f"request: {met}."
            )
        out.append(
            "- each ferryd run is a new daemon on a root that holds the image; the "
            "measured pull is its first (1st pull) or comes after the same pull, not "
            "measured (2nd pull; the loop lag is then the largest of both). skopeo, for "
            "reference, copies into an OCI layout that holds the image."
        )
    elif scenario.key == "memory":
        pass
    elif scenario.images[0].platforms:
        index = scenario.images[0]
        a, b = scenario.of(FERRYD), scenario.of(SKOPEO)
        if a and b:
            out.append(
                _versus(a, b) + f"; both fetch every platform and keep the index "
                f"({(index.index_digest or '')[:19]}…)."
            )
        gets = _shared_gets(a, scenario)
        if gets is not None:
            met = "met" if gets == (1, 1) else "**not met**"
            out.append(
                f"- the base layer all {len(index.platforms)} platforms share, GETs per run: "
                f"ferryd {_shared_gets_text(a, scenario)}, skopeo "
                f"{_shared_gets_text(b, scenario)} (target for ferryd: once in every run, "
                f"{met})."
            )
        out.append(
            f"- every blob fetched once in every ferryd run (access log): "
            f"{_fetched_once(scenario)}; the index kept, every platform available "
            "(checked after every run: the store's blobs, `GET /images/{name}/json`)."
        )
    else:
        a, b = scenario.of(FERRYD), scenario.of(SKOPEO)
        if a and b:
            out.append(_versus(a, b) + ".")
            if not scenario.latency:  # behind latency, round trips decide, not CPU
                out += _bound(a, b)
    return out


def _bound(ferryd: list[Run], skopeo: list[Run]) -> list[str]:
    """The conclusion's line placing both tools' wall times against the least a
    verifying pull can take here (none without the floors)."""
    least = _median(ferryd, lambda r: r.least_seconds)
    if not least:
        return []
    return [
        f"- the least wall time a verifying pull can take on {os.cpu_count()} cores "
        f"(median): {least:.2f} s; ferryd takes **{median_wall(ferryd) / least:.2f}×** it, "
        f"skopeo, which verifies less, {median_wall(skopeo) / least:.2f}×."
    ]


def _memory(scenario: Scenario) -> list[str]:
    mem = scenario.runs[0]
    big = scenario.images[0]
    return [
        f"**Memory: ferryd pulling {big.about} of {mib(big.layer_bytes)} "
        f"({mib(big.uncompressed_bytes)} uncompressed)**, VmRSS sampled every "
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
        f"| floor CPU s / CPU over floor | {_fmt(mem.floor_cpu_seconds)} / "
        f"{_fmt(mem.over_floor)} |",
        f"| transfer CPU s / least wall s | {_fmt(mem.transfer_cpu_seconds)} / "
        f"{_secs(mem.least_seconds)} |",
        f"| event-loop lag, largest | {_lag([mem])} |",
        f"| registry CPU per wall s | {mem.registry_cores:.2f} |",
        f"| other processes' CPU per wall s (noise) | {_fmt(mem.others_cores)} |",
        f"| daemon threads (max seen) | {mem.threads} |",
    ]


def _noise(scenarios: list[Scenario]) -> str:
    runs = [r for s in scenarios for r in s.runs]
    others = _median(runs, lambda r: r.others_cores)
    most = _max(runs, lambda r: r.others_cores)
    return (
        f"Noise: other processes on the machine (other users, steal) took {_fmt(others)} "
        f"CPU per wall second during a run (median of all runs; {_fmt(most)} at most), of "
        f"{os.cpu_count()} CPUs. Each run's figure is in its scenario's table and in "
        "results.json."
    )


def _images(built: list[Built], floor: dict[str, float]) -> list[str]:
    lines = [
        "| image | layers | compressed | uncompressed | floor CPU s |",
        "|---|---|---|---|---|",
    ]
    lines += [
        f"| {image.name} | {image.about} | {mib(image.layer_bytes)} "
        f"| {mib(image.uncompressed_bytes)} | {floor_of(floor, image.blobs):.3f} |"
        for image in built
    ]
    return lines


def render(
    scenarios: list[Scenario],
    built: list[Built],
    floor: dict[str, float],
    rounds: int,
    delay: float,
) -> str:
    """The whole pull report, markdown."""
    out = [
        f"Pulls from docker-registry on 127.0.0.1 (plain HTTP), {rounds} rounds alternating "
        f"ferryd and skopeo, {os.cpu_count()} CPUs, medians. ferryd: a new daemon per run, "
        "the clock from the first request to the end of the last progress stream; skopeo: "
        "`skopeo copy docker://… oci:DIR:latest`. MB/s = distinct compressed MB (10^6 bytes) "
        "per wall second. CPU s = user+sys of the daemon (to the µs, from a cgroup of its "
        "own for the run where the machine lets the bench make one, else in 10 ms ticks; "
        "`cpu_clock` in results.json says which) and of every skopeo process. "
        "Floor = CPU s that sha256 of each blob, inflating each layer and "
        "sha256 of the result take in one thread (bench/floor.py): what verifying cannot "
        "avoid, measured right after each ferryd run (the images table: the best of the "
        "passes made at the start). Transfer = CPU s of fetching the same blobs from the "
        "same registry, 3 at a time, into fsynced files, and nothing more "
        "(bench/transfer.py): what any client pays. Least wall s = (floor + transfer + the "
        "registry's CPU s) / the cores: no verifying pull here can end sooner. TLS: a "
        "second docker-registry with a certificate of a CA made for the run (TLS 1.3; "
        "both verify it: ferryd with the CA in its certs.d, skopeo with --src-cert-dir). "
        "Latency: "
        f"bench/latency.py, {delay * 1000:.0f} ms each way per chunk, a "
        "handshake's round trip more for a new connection. Peak RSS: ferryd's VmHWM. Loop "
        "lag: the daemon's `ferryd_event_loop_lag_max_seconds` (GET /metrics), n/a where "
        "it has none.",
        "",
        *_images(built, floor),
        "",
        *_summary([s for s in scenarios if s.key != "memory"]),
        "",
        _noise(scenarios),
    ]
    for scenario in scenarios:
        out += ["", *(_memory(scenario) if scenario.key == "memory" else _detail(scenario))]
    return "\n".join(out)


def results_json(
    scenarios: list[Scenario],
    built: list[Built],
    floor: dict[str, float],
    rounds: int,
    delay: float,
) -> dict[str, Any]:
    return {
        "rounds": rounds,
        "cpus": os.cpu_count(),
        "latency_seconds_each_way": delay,
        "images": [
            asdict(image)
            | {"layout": str(image.layout), "floor_cpu_seconds": floor_of(floor, image.blobs)}
            for image in built
        ],
        "summary": [
            _summary_json(s, mode, tool)
            for s in scenarios
            for mode in s.modes()
            for tool in (FERRYD, SKOPEO)
            if s.of(tool, mode)
        ],
        "scenarios": [
            {
                "key": s.key,
                "title": s.title,
                "images": [image.name for image in s.images],
                "latency": s.latency,
                "tls": s.tls,
                "up_to_date": s.up_to_date,
                "runs": run_json(s.runs),
            }
            for s in scenarios
        ],
    }


def _summary_json(scenario: Scenario, mode: str, tool: str) -> dict[str, Any]:
    """Medians of one tool's runs in one mode of a scenario (maxima for memory and lag)."""
    runs = scenario.of(tool, mode)
    median_run = _median_run(runs)
    return {
        "scenario": scenario.key,
        "mode": mode,
        "tool": tool,
        "runs": len(runs),
        "wall_seconds": _median(runs, lambda r: r.seconds),
        "cpu_seconds": _median(runs, lambda r: r.cpu_seconds),
        "floor_cpu_seconds": _median(runs, lambda r: r.floor_cpu_seconds),
        "cpu_over_floor": _median(runs, lambda r: r.over_floor),
        "transfer_cpu_seconds": _median(runs, lambda r: r.transfer_cpu_seconds),
        "least_seconds": _median(runs, lambda r: r.least_seconds),
        "peak_rss_kib": max(r.hwm_kib or r.peak_rss_kib for r in runs),
        "loop_lag_max_seconds": _max(runs, lambda r: r.loop_lag_seconds),
        "requests": {
            k: v for k, v in (median_run.requests or {}).items() if k != "blob_gets_by_digest"
        },
        "max_gets_per_blob": _max(runs, lambda r: (r.requests or {}).get("max_gets_per_blob")),
        "shared_layer_gets": _shared_gets_json(runs, scenario),
        "connections": _median(runs, lambda r: r.connections),
        "others_cores": _median(runs, lambda r: r.others_cores),
        "quiet": _quiet_json(runs),
    }


def _quiet_json(runs: list[Run]) -> dict[str, Any]:
    """The medians of the runs the rest of the machine left alone (`Run.quiet`)."""
    calm = _quiet(runs)
    return {
        "runs": len(calm),
        "wall_seconds": median_wall(calm) if calm else None,
        "cpu_seconds": _median(calm, lambda r: r.cpu_seconds),
        "cpu_over_floor": _median(calm, lambda r: r.over_floor),
    }


def _shared_gets_json(runs: list[Run], scenario: Scenario) -> dict[str, int] | None:
    """The fewest and the most GETs of a shared layer in one run (None: no shared layer)."""
    gets = _shared_gets(runs, scenario)
    return None if gets is None else {"min": gets[0], "max": gets[1]}
