"""`make bench` stays runnable: one quick round of some of its scenarios, the TLS one
among them, against its own docker-registries, and the report it writes."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import pytest

from support.registry import have_registry_tools

ROOT = Path(__file__).resolve().parent.parent


@pytest.mark.registry
@pytest.mark.skipif(not have_registry_tools(), reason="needs docker-registry and skopeo")
def test_a_quick_round_of_the_benchmark_pulls_over_http_and_tls_and_writes_its_report(
    tmp_path: Path,
) -> None:
    command = [sys.executable, "bench/pull.py", "--quick", "--rounds", "1", "--no-push"]
    ran = subprocess.run(
        [*command, "--only", "small,tls", "--out", str(tmp_path)],
        cwd=ROOT,
        capture_output=True,
        text=True,
        timeout=600,
        check=False,
    )

    assert ran.returncode == 0, ran.stderr[-3000:]
    results = json.loads((tmp_path / "results-only-quick.json").read_text())
    scenarios = {s["key"]: s for s in results["scenarios"]}
    assert {key: s["tls"] for key, s in scenarios.items()} == {
        "small": False,
        "multi-tls": True,
        "small-tls": True,
    }
    for scenario in scenarios.values():
        assert sorted(run["tool"] for run in scenario["runs"]) == ["ferryd", "skopeo"]
    for summary in results["summary"]:
        assert summary["quiet"]["runs"] in (0, 1), summary
        if summary["tool"] == "ferryd":  # the transfer floor and the bound, measured
            assert summary["transfer_cpu_seconds"] > 0, summary
            assert summary["least_seconds"] > 0, summary
    targets = {check["target"]: check for check in results["targets"]}
    assert "pull wall ≤ 1.0× skopeo: 24 layers (4 MiB), over TLS" in targets
    assert "(CPU − floor) / layers ≤ 3 ms: 24 layers (4 MiB)" in targets
    report = (tmp_path / "results-only-quick.md").read_text()
    assert "24 layers (4 MiB), over TLS" in report
    assert "| target | this run | |" in report
    assert "quiet runs: ferryd / skopeo, CPU / floor" in report


def test_the_report_gives_medians_of_the_quiet_runs_beside_those_of_all_runs(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    monkeypatch.syspath_prepend(str(ROOT / "bench"))
    from common import Run
    from report import Scenario, _quiet_cell, _quiet_json

    def run(tool: str, seconds: float, others: float | None) -> Run:
        others_cpu = None if others is None else others * seconds
        return Run(
            tool,
            "bench/multi",
            seconds,
            10**8,
            seconds * 1.5,
            80_000,
            floor_cpu_seconds=seconds,
            others_cpu_seconds=others_cpu,
        )

    ferryd = [
        run("ferryd", 1.4, 0.01),
        run("ferryd", 2.7, 0.25),
        run("ferryd", 1.6, 0.0),
        run("ferryd", 2.3, 0.19),
    ]
    skopeo = [run("skopeo", 1.0, 0.02), run("skopeo", 1.2, 0.06), run("skopeo", 1.0, None)]
    scenario = Scenario("multi", [], runs=[*ferryd, *skopeo])

    assert _quiet_cell(scenario, ferryd, skopeo) == "1.50, 1.50 (2 of 4 and 2 of 3)"
    assert _quiet_json(ferryd) == {
        "runs": 2,
        "wall_seconds": 1.5,
        "cpu_seconds": 2.25,
        "cpu_over_floor": 1.5,
    }
    noisy = [run("ferryd", 2.0, 0.3)]
    assert _quiet_cell(scenario, noisy, skopeo) == "-"
    assert _quiet_json(noisy)["wall_seconds"] is None


def test_the_least_wall_time_spreads_floor_transfer_and_registry_over_the_cores(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    monkeypatch.syspath_prepend(str(ROOT / "bench"))
    monkeypatch.setattr("os.cpu_count", lambda: 2)
    from common import Run
    from report import _bound

    def run(tool: str, seconds: float, transfer: float | None) -> Run:
        return Run(
            tool,
            "bench/multi",
            seconds,
            10**8,
            2.0,
            80_000,
            registry_cpu_seconds=0.2,
            floor_cpu_seconds=1.5 if tool == "ferryd" else None,
            transfer_cpu_seconds=transfer,
        )

    ferryd, skopeo = run("ferryd", 1.2, 0.1), run("skopeo", 0.9, None)

    assert ferryd.least_seconds == pytest.approx((1.5 + 0.1 + 0.2) / 2)
    assert skopeo.least_seconds is None
    assert run("ferryd", 1.2, None).least_seconds is None
    [line] = _bound([ferryd], [skopeo])
    assert "0.90 s" in line
    assert "**1.33×**" in line
    assert "1.00×" in line
    assert _bound([run("ferryd", 1.2, None)], [skopeo]) == []


def test_the_targets_are_checked_against_the_run(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.syspath_prepend(str(ROOT / "bench"))
    from common import Built, Run
    from push import PushResults
    from report import Scenario
    from targets import as_json, checks, render

    def image(name: str, layers: int) -> Built:
        return Built(name, "made up", Path("."), [], 10**8, 2 * 10**8, [10**6] * layers)

    def run(tool: str, seconds: float, mode: str = "pull", **fields: object) -> Run:
        made = Run(tool, "bench/x", seconds, 10**8, 1.3, 90 << 10, **fields)  # type: ignore[arg-type]
        made.extra["mode"] = mode
        return made

    multi, small = image("bench/multi", 5), image("bench/small", 24)
    requests = {"total": 7, "manifests": 1, "blob_gets": 6, "max_gets_per_blob": 1}
    big = Scenario(
        "multi",
        [multi],
        runs=[
            run("ferryd", 1.2, floor_cpu_seconds=1.0, loop_lag_seconds=0.012, requests=requests),
            run("skopeo", 1.0),
        ],
    )
    few = Scenario(
        "small",
        [small],
        runs=[run("ferryd", 0.2, floor_cpu_seconds=1.3 - 0.048), run("skopeo", 0.25)],
    )
    fresh = Scenario(
        "uptodate-small",
        [small],
        up_to_date=True,
        runs=[run("ferryd", 0.03, "loopback, 1st pull", requests={"total": 1, "manifests": 1})],
    )
    pushed = PushResults([run("ferryd", 0.5), run("skopeo", 1.0)], 1.0, 0.5)

    found = {
        check.target: (check.measured, check.met) for check in checks([big, few, fresh], [pushed])
    }

    assert found == {
        "pull wall ≤ 1.0× skopeo: 5 layers (95 MiB)": ("1.20×", False),
        "pull wall ≤ 1.0× skopeo: 24 layers (95 MiB)": ("0.80×", True),
        "CPU ≤ 1.3× the floor: 5 layers (95 MiB)": ("1.30×", True),
        "(CPU − floor) / layers ≤ 3 ms: 24 layers (95 MiB)": ("2.0 ms", True),
        "one manifest request: up to date (24 layers), loopback, 1st pull": ("1 at most", True),
        "in ≤ 20 ms: up to date (24 layers), loopback, 1st pull": ("30 ms", False),
        "each blob fetched once, in every pull": ("1 GET of a blob at most (1 run)", True),
        "push wall ≤ 0.6× skopeo: bench/x": ("0.50×", True),
        "peak RSS ≤ 100 MiB, every run": ("90 MiB", True),
        "event-loop lag ≤ 20 ms, every pull": ("not measured", False),
    }
    assert render(checks([big], [])).startswith("Targets: 4 of 5 met in this run")
    assert as_json(checks([], [])) == []


def test_a_target_reads_as_what_decided_it_and_none_is_met_unmeasured(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    monkeypatch.syspath_prepend(str(ROOT / "bench"))
    from common import Built, Run
    from report import Scenario
    from targets import checks

    multi = Built("bench/multi", "made up", Path("."), [], 10**8, 2 * 10**8, [10**6] * 5)

    def run(tool: str, seconds: float, **fields: object) -> Run:
        made = Run(tool, "bench/multi", seconds, 10**8, 1.0, 90 << 10, **fields)  # type: ignore[arg-type]
        made.extra["mode"] = "pull"
        return made

    no_floor = Scenario("multi", [multi], runs=[run("ferryd", 1.004), run("skopeo", 1.0)])
    fresh = Scenario(
        "uptodate-multi",
        [multi],
        up_to_date=True,
        runs=[run("ferryd", 0.01, requests={"total": 1, "manifests": 1, "max_gets_per_blob": 0})],
    )

    found = {c.target: (c.measured, c.met) for c in checks([no_floor, fresh], [])}

    # Just over the limit: not shown as the limit itself.
    assert found["pull wall ≤ 1.0× skopeo: 5 layers (95 MiB)"] == ("1.0040×", False)
    # A scenario that ran without its floor is a target not met, not one left out.
    assert found["CPU ≤ 1.3× the floor: 5 layers (95 MiB)"] == ("not measured", False)
    # Pulls that fetched nothing prove nothing about fetching each blob once.
    assert "each blob fetched once, in every pull" not in found


def test_the_cpu_clock_counts_threads_that_ended_and_leaves_the_process_where_it_was(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    monkeypatch.syspath_prepend(str(ROOT / "bench"))
    from cpuclock import CpuClock, ticks_seconds

    # A thread of the child burns CPU and ends between the two readings.
    burn = (
        "import sys, threading\n"
        "sys.stdin.readline()\n"
        "worker = threading.Thread(target=lambda: sum(range(5_000_000)))\n"
        "worker.start(); worker.join()\n"
        "print('done', flush=True)\n"
        "sys.stdin.readline()\n"
    )
    with subprocess.Popen(
        [sys.executable, "-c", burn], stdin=subprocess.PIPE, stdout=subprocess.PIPE, text=True
    ) as child:
        assert child.stdin is not None
        assert child.stdout is not None
        home = Path(f"/proc/{child.pid}/cgroup").read_text()
        with CpuClock(child.pid) as clock:
            before, ticks_before = clock.seconds(), ticks_seconds(child.pid)
            child.stdin.write("go\n")
            child.stdin.flush()
            done = child.stdout.readline()
            spent, ticked = clock.seconds() - before, ticks_seconds(child.pid) - ticks_before
        moved_back = Path(f"/proc/{child.pid}/cgroup").read_text() == home
        child.stdin.write("\n")
    assert done == "done\n"
    assert moved_back
    assert not list(Path("/sys/fs/cgroup").glob(f"**/ferryd-bench-{child.pid}"))
    assert clock.source in ("cgroup v1", "cgroup v2", "ticks")
    assert spent > 0.02  # ~0.1 s of sum(); the thread has ended
    assert abs(spent - ticked) < 0.03  # the same CPU, whichever way it is read
