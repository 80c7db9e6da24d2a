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
    report = (tmp_path / "results-only-quick.md").read_text()
    assert "24 layers (4 MiB), over TLS" in report
