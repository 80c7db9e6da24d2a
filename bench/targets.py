"""The targets ferryd's pulls and pushes are held to, checked against one run of the
benchmark: a table at the end of the report (each target, what this run measured, met
or not) and a list in results.json.

Only what the run measured is checked: a scenario left out (`--only`, `--no-push`) is
no target missed. Each check takes the same medians (maxima for memory, loop lag and
requests) as the report's tables.
"""

from __future__ import annotations

import statistics
from collections.abc import Iterator
from dataclasses import asdict, dataclass
from typing import Any

from push import PushResults
from report import FERRYD, IN_TURN, ONCE, SKOPEO, Scenario, median_wall

WALL_VS_SKOPEO = 1.0  # a pull's wall time, ferryd / skopeo
CPU_OVER_FLOOR = 1.3  # a big-layer pull's CPU, times the floor
CPU_PER_LAYER = 0.003  # s of CPU per layer beyond the floor, small layers
UP_TO_DATE_SECONDS = 0.020  # an up-to-date pull on loopback
PUSH_VS_SKOPEO = 0.6  # a push's wall time, ferryd / skopeo
PEAK_RSS_MIB = 100
LOOP_LAG_SECONDS = 0.020

BIG_LAYERS = ("multi", "multi-latency", "multi-tls", "memory")
SMALL_LAYERS = ("small", "small-latency", "small-tls")


@dataclass(frozen=True)
class Check:
    target: str
    measured: str
    met: bool


def checks(scenarios: list[Scenario], pushes: list[PushResults]) -> list[Check]:
    """Every target this run measured, in the order of the report."""
    pulls = [s for s in scenarios if not s.up_to_date and s.key != "memory"]
    return [
        *_pull_walls(pulls),
        *_cpu_over_floor(scenarios),
        *_cpu_per_layer(scenarios),
        *_up_to_date(scenarios),
        *_at_once(pulls),
        *_fetched_once(scenarios),
        *_push_walls(pushes),
        *_memory_and_lag(scenarios, pushes),
    ]


def render(found: list[Check]) -> str:
    met = sum(check.met for check in found)
    rows = [
        f"| {check.target} | {check.measured} | {'met' if check.met else '**not met**'} |"
        for check in found
    ]
    return "\n".join(
        [
            f"Targets: {met} of {len(found)} met in this run (medians; maxima for memory, "
            "loop lag and requests).",
            "",
            "| target | this run | |",
            "|---|---|---|",
            *rows,
        ]
    )


def as_json(found: list[Check]) -> list[dict[str, Any]]:
    return [asdict(check) for check in found]


# -- the checks ----------------------------------------------------------------------


def _shown(value: float, limit: float, digits: int = 2) -> str:
    """`value` rounded, with two digits more where rounding would show the limit itself
    for a value on either side of it (1.004 is "1.0040", not a "1.00" that failed)."""
    text = f"{value:.{digits}f}"
    return f"{value:.{digits + 2}f}" if float(text) == limit and value != limit else text


def _unmeasured(target: str) -> Check:
    """A target whose scenario ran without the figure it needs: not met."""
    return Check(target, "not measured", False)


def _named(scenario: Scenario, mode: str) -> str:
    return scenario.short if mode == "pull" else f"{scenario.short}, {mode}"


def _pull_walls(pulls: list[Scenario]) -> Iterator[Check]:
    for scenario in pulls:
        for mode in scenario.modes():
            a, b = scenario.of(FERRYD, mode), scenario.of(SKOPEO, mode)
            if a and b:
                ratio = median_wall(a) / median_wall(b)
                yield Check(
                    f"pull wall ≤ {WALL_VS_SKOPEO:.1f}× skopeo: {_named(scenario, mode)}",
                    f"{_shown(ratio, WALL_VS_SKOPEO)}×",
                    ratio <= WALL_VS_SKOPEO,
                )


def _median_check(
    target: str, values: list[float], limit: float, unit: str, digits: int = 2
) -> Check:
    """The median of the runs' `values` against `limit`; none: not measured."""
    if not values:
        return _unmeasured(target)
    value = statistics.median(values)
    return Check(target, f"{_shown(value, limit, digits)}{unit}", value <= limit)


def _cpu_over_floor(scenarios: list[Scenario]) -> Iterator[Check]:
    for scenario in scenarios:
        if scenario.key in BIG_LAYERS:
            over = [r.over_floor for r in scenario.of(FERRYD) if r.over_floor is not None]
            target = f"CPU ≤ {CPU_OVER_FLOOR:.1f}× the floor: {scenario.short}"
            yield _median_check(target, over, CPU_OVER_FLOOR, "×")


def _cpu_per_layer(scenarios: list[Scenario]) -> Iterator[Check]:
    limit = CPU_PER_LAYER * 1000
    for scenario in scenarios:
        if scenario.key in SMALL_LAYERS:
            layers = len(scenario.images[0].layer_sizes)
            beyond = [
                (r.cpu_seconds - r.floor_cpu_seconds) / layers * 1000
                for r in scenario.of(FERRYD)
                if r.floor_cpu_seconds
            ]
            target = f"(CPU − floor) / layers ≤ {limit:.0f} ms: {scenario.short}"
            yield _median_check(target, beyond, limit, " ms", 1)


def _up_to_date(scenarios: list[Scenario]) -> Iterator[Check]:
    limit = UP_TO_DATE_SECONDS * 1000
    for scenario in scenarios:
        if not scenario.up_to_date:
            continue
        for mode in scenario.modes():
            runs = scenario.of(FERRYD, mode)
            if not runs:
                continue
            most = max((r.requests or {}).get("total", 0) for r in runs)
            manifests = min((r.requests or {}).get("manifests", 0) for r in runs)
            what = f"{scenario.short}, {mode}"
            yield Check(f"one manifest request: {what}", f"{most} at most", most == manifests == 1)
            if mode.startswith("loopback"):
                wall = median_wall(runs) * 1000
                yield Check(
                    f"in ≤ {limit:.0f} ms: {what}", f"{_shown(wall, limit, 0)} ms", wall <= limit
                )


def _at_once(pulls: list[Scenario]) -> Iterator[Check]:
    for scenario in pulls:
        together, in_turn = scenario.of(FERRYD, ONCE), scenario.of(FERRYD, IN_TURN)
        if together and in_turn:
            a, b = median_wall(together), median_wall(in_turn)
            yield Check(
                f"at once no slower than in turn: {scenario.short}",
                f"{a:.3f} s against {b:.3f} s",
                a <= b,
            )


def _fetched_once(scenarios: list[Scenario]) -> Iterator[Check]:
    """Over the runs that fetched blobs at all (an up-to-date pull fetches none)."""
    gets = [
        r.requests["max_gets_per_blob"]
        for s in scenarios
        for r in s.of(FERRYD)
        if r.requests and r.requests.get("blob_gets")
    ]
    if gets:
        most, runs = max(gets), len(gets)
        yield Check(
            "each blob fetched once, in every pull",
            f"{most} GET{'' if most == 1 else 's'} of a blob at most "
            f"({runs} run{'' if runs == 1 else 's'})",
            most <= 1,
        )


def _push_walls(pushes: list[PushResults]) -> Iterator[Check]:
    for results in pushes:
        a = [r for r in results.runs if r.tool == FERRYD]
        b = [r for r in results.runs if r.tool == SKOPEO]
        if a and b:
            ratio = median_wall(a) / median_wall(b)
            behind = "" if results.delay is None else f", +{results.delay * 1000:.0f} ms each way"
            yield Check(
                f"push wall ≤ {PUSH_VS_SKOPEO:.1f}× skopeo: {a[0].image}{behind}",
                f"{_shown(ratio, PUSH_VS_SKOPEO)}×",
                ratio <= PUSH_VS_SKOPEO,
            )


def _memory_and_lag(scenarios: list[Scenario], pushes: list[PushResults]) -> Iterator[Check]:
    pulls = [r for s in scenarios for r in s.of(FERRYD)]
    runs = pulls + [r for results in pushes for r in results.runs if r.tool == FERRYD]
    if not runs:
        return
    peak = max(r.hwm_kib or r.peak_rss_kib for r in runs) / 1024
    yield Check(
        f"peak RSS ≤ {PEAK_RSS_MIB} MiB, every run",
        f"{_shown(peak, PEAK_RSS_MIB, 0)} MiB",
        peak <= PEAK_RSS_MIB,
    )
    if not pulls:
        return
    target = f"event-loop lag ≤ {LOOP_LAG_SECONDS * 1000:.0f} ms, every pull"
    lags = [r.loop_lag_seconds for r in pulls if r.loop_lag_seconds is not None]
    if len(lags) < len(pulls):
        yield _unmeasured(target)
        return
    lag, limit = max(lags) * 1000, LOOP_LAG_SECONDS * 1000
    yield Check(target, f"{_shown(lag, limit, 0)} ms", lag <= limit)
