"""Issue 6: the benchmark runs (quick size, 1 round) and its correctness checks hold. No timing is asserted."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path
from typing import Any

import pytest

pytestmark = pytest.mark.integration

ROOT = Path(__file__).resolve().parents[2]


def quick_bench(tmp_path: Path, names: set[str]) -> dict[str, Any]:
    """`bench/run.py --quick --rounds 1` on these scenarios: each one's result, every one without an error and
    with its correctness checks held."""
    out = tmp_path / "bench.json"
    argv = [sys.executable, str(ROOT / "bench" / "run.py"), "--quick", "--rounds", "1"]
    run = subprocess.run(
        [*argv, "--scenario", ",".join(sorted(names)), "--json", str(out), "--workdir", str(tmp_path)],
        capture_output=True,
        text=True,
        timeout=540,
    )
    assert run.returncode == 0, run.stdout[-3000:] + run.stderr[-3000:]
    scenarios: dict[str, Any] = json.loads(out.read_text())["scenarios"]
    assert set(scenarios) == names
    for result in scenarios.values():
        assert "error" not in result, result
        assert result["checks_pass"], result
    return scenarios


@pytest.mark.timeout(600)
def test_quick_bench_runs_and_every_url_is_a_hit_with_the_origin_asked_once_per_url_and_node(tmp_path: Path) -> None:
    """S1 (edgewarm and its baselines), S3 (shield) and S4 (latency) at smoke size: all HIT, origin counts exact."""
    scenarios = quick_bench(tmp_path, {"S1", "S3", "S4"})

    s1 = {row["contender"]: row for row in scenarios["S1"]["rows"]}
    assert set(s1) == {"edgewarm", "bare loop", "xargs -P 64 curl", "wrk"}
    for row in s1.values():
        assert row["all_hit"], row
        # 2 edges straight to the origin: each edge fills itself once, so the origin sees each URL twice.
        assert row["checks"] == ["all HIT; origin 2.00/URL (min 2, max 2)"], row
    # Shield first: the origin sees each URL exactly once though 5 caches hold it.
    assert scenarios["S3"]["checks"] == ["all HIT; origin 1.00/URL (min 1, max 1)"]
    assert scenarios["S4"]["checks"] == ["all HIT; origin 1.00/URL (min 1, max 1)"]
    assert len(scenarios["S4"]["client_seconds"]) == 2


@pytest.mark.timeout(600)
def test_quick_api_bench_runs_and_every_accepted_url_is_stored(tmp_path: Path) -> None:
    """S5 (queries) and S6 (acceptance in calls of 100 and on the bulk path) at smoke size: no errors, and every
    URL the API accepted is in the store, on both paths."""
    scenarios = quick_bench(tmp_path, {"S5", "S6"})
    assert scenarios["S5"]["errors"] == 0
    s6 = scenarios["S6"]
    bulk = s6["bulk"]
    assert bulk["call_size"] > 100
    for path in (s6, bulk):
        assert path["accepted"] == path["stored_items"] == 2_000, path
        assert path["refused"] == 0, path
