"""Issue 6: the benchmark runs (quick size, 1 round) and its correctness checks hold. No timing is asserted."""

from __future__ import annotations

import json
import os
import re
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
    # bench/report.py renders the same file as docs/benchmarks.md's tables: a section for each scenario.
    report = subprocess.run(
        [sys.executable, str(ROOT / "bench" / "report.py"), str(out)], capture_output=True, text=True, timeout=60
    )
    assert report.returncode == 0, report.stdout[-3000:] + report.stderr[-3000:]
    for name in names:
        assert f"\n#### {name}: " in report.stdout, report.stdout
    assert "ERROR" not in report.stdout, report.stdout
    return scenarios


@pytest.mark.timeout(600)
def test_quick_bench_runs_and_every_url_is_a_hit_with_the_origin_asked_once_per_url_and_node(tmp_path: Path) -> None:
    """S1 (edgewarm and its baselines), S3 (shield) and S4 (latency) at smoke size: all HIT, origin counts exact."""
    scenarios = quick_bench(tmp_path, {"S1", "S3", "S4"})

    s1 = {row["contender"]: row for row in scenarios["S1"]["rows"]}
    assert set(s1) == {"edgewarm", "edgewarm, fetch process", "bare loop", "xargs -P 64 curl", "wrk"}
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


# The other tools of docs/benchmarks.md, each once at smoke size: its arguments, and {pattern: how many lines of its
# output match it}. A pattern is a line the tool exists to print (a figure), so a tool that stops half-way fails too.
SRC = str(ROOT / "src")  # tools that compare sources (`--src NAME=DIR`) get this checkout's twice
ALL_HIT = r"all HIT; origin 2\.00/URL \(min 2, max 2\)"
ROUND = r"^round 1 {}\s+\d+ warms/s\s+[\d.]+ MB/s  CPU\s+\d+ us/warm$"
TIMELINE = {
    rf"^400 warms in [\d.]+ s \([\d,]+/s\), submitted by [\d.]+ s; edgewarm CPU \d+ us/warm; {ALL_HIT}$": 1,
    r"^ 0\.00 s\s+[\d,]+ warms/s\s+\d+ tasks created  idle\s+\d+%  iowait\s+\d+%$": 1,
}
CLIENT_ROW = r"^  {}\s+\d+\s+[\d.]+\s+[\d.]+  1 passes$"  # in each workload's table, no failure noted


def tool(name: str, args: str, *more: str, expect: dict[str, int]) -> Any:
    """A case: `bench/TOOL args more…` (args split on spaces; `more` as they are)."""
    script = name.split("-")[0]
    return pytest.param([f"{script}.py", *args.split(), *more], expect, id=name)


TOOLS = [
    tool(
        "purge_notes",
        "--calls 2000 --rounds 1",
        expect={r"^round 1: dict [\d.]+ µs a note, OrderedDict [\d.]+ µs: ratio [\d.]+$": 1},
    ),
    tool(
        "store_statements",
        "--urls 1000 --batch 200",
        expect={
            r"^2,000 items claimed and recorded in batches of 200$": 1,
            r"^claim: the users\s+[\d.]+ us/item$": 1,
            r"^claim: select due items\s+[\d.]+ us/item$": 1,
            r"^outcomes: update\s+[\d.]+ us/item$": 1,
            r"^all\s+[\d.]+ us/item$": 1,
        },
    ),
    tool(
        "put_off",
        "--urls 1000 --step 300",
        expect={
            r"^\s+one step: 1,000 items in 1 steps, [\d.]+ s, [\d.]+ µs of the store's thread per item": 1,
            r"^\s+steps of 300: 1,000 items in \d+ steps, [\d.]+ s, [\d.]+ µs of the store's thread per item": 1,
        },
    ),
    tool(
        "engine_overhead",
        "--urls 500 --latency 0.001",
        expect={
            r"^1,000 items: [\d,]+ items/s; CPU [\d.]+ us/item \(event-loop thread [\d.]+\); ceiling [\d,]+ items/s$": 1
        },
    ),
    tool(
        "https_nodes",
        "--requests 200 --concurrency 16 --rounds 1",
        *("--src", f"a={SRC}", "--src", f"b={SRC}"),
        expect={rf"^round 1 {n}\s+[\d,]+ requests/s  CPU\s+[\d.]+ us/request .* failures 0$": 1 for n in "ab"},
    ),
    tool(
        "accept",
        "--urls 500 --rounds 1",
        *("--src", f"a={SRC}", "--src", f"b={SRC}"),
        expect={rf"^round 1 {n}\s+[\d,]+ URLs/s  CPU\s+[\d.]+ us/URL \(main thread\s+[\d.]+\)$": 1 for n in "ab"},
    ),
    tool(
        "diagnose",
        "--urls 200",
        expect={
            r"^fetcher: [\d.]+s, [\d,]+ warms/s, CPU \d+ us/warm$": 1,
            r"^submit: [\d.]+s, [\d,]+ URLs/s, CPU \d+ us/URL$": 1,
            r"^engine: [\d.]+s after healthy, [\d,]+ warms/s, CPU \d+ us/warm \(main thread \d+\); GC ": 1,
            rf"^  {ALL_HIT}$": 2,  # after the fetcher's part and after the engine's
        },
    ),
    tool(
        "fetcher_overhead",
        "--urls 200 --rounds 1",
        expect={
            r"^200 x 4096 bytes on 2 edges, all HIT, 1 rounds in turns$": 1,
            **{
                rf"^{n}\s+[\d,]+/s\s+[\d.]+us  median [\d.]+ us/request$": 1
                for n in ("bare", "direct", "request", "fetcher")
            },
        },
    ),
    tool(
        "ab",
        "--rounds 1 --urls 200",
        *("--src", f"a={SRC}", "a=", r"b=[engine]\nconcurrency = 128"),
        expect={
            **{ROUND.format(n): 1 for n in ("a", "b", "bare")},
            **{rf"^{n}\s+median\s+\d+ warms/s  ratio to bare [\d.]+$": 1 for n in "ab"},
        },
    ),
    tool(
        "ab-https",
        "--https --by-name --rounds 1 --urls 200 a= b=",
        expect={**{ROUND.format(n): 1 for n in "ab"}, **{rf"^{n}\s+median\s+\d+ warms/s$": 1 for n in "ab"}},
    ),
    tool(
        "fairness",
        "--urls 300 --rounds 1",
        *("--src", f"a={SRC}"),
        expect={
            r"^round 1 a: the second user's 1 URLs [\d.]+ s; the first user's 300 URLs [\d.]+ s$": 1,
            r"^a: the second user's task, median [\d.]+ s \([\d.]+-[\d.]+\)$": 1,
        },
    ),
    tool(
        "fairness-refresh",
        "--urls 300 --small 20 --refresh --rounds 1",
        *("--src", f"a={SRC}"),
        expect={r"^round 1 a: the second user's 20 URLs [\d.]+ s; the first user's 300 URLs [\d.]+ s$": 1},
    ),
    tool(
        "fairness-slow",
        "--urls 300 --slow 0.05 --rounds 1",
        *("--src", f"a={SRC}"),
        expect={r"^round 1 a: the second user's 1 URLs [\d.]+ s; the first user's 300 URLs [\d.]+ s$": 1},
    ),
    *(
        tool(
            f"claims-{store}",
            f"--store {store} --users 5 --limit 50 --claims 3 --rounds 1",
            *("--src", f"a={SRC}"),
            expect={
                r"^round 1 a: idle poll [\d.]+ ms, claim of 50 [\d.]+ ms$": 1,
                rf"^a \({store}, 5 users\): idle poll median [\d.]+ ms \([\d.]+-[\d.]+\); claim of 50 [\d.]+ ms": 1,
            },
        )
        for store in ("sqlite", "postgresql")
    ),
    tool("timeline", "--urls 200", expect=TIMELINE),
    tool("timeline-split", "--urls 200 --split", expect=TIMELINE),
    tool(
        "http_clients",
        "--rounds 1 --small 200x4096 --large 10x262144 --concurrency 8 --wrk-seconds 1 --max-seconds 120",
        expect={
            r"^cold fill (small|large): \d+ URLs, [\d.]+s, 0 failed$": 2,
            r"^small: 200 x 4096 bytes$": 1,
            r"^large: 10 x 262144 bytes$": 1,
            # edgewarm's own dependencies (niquests and pycurl are optional: rows only where installed)
            **{CLIENT_ROW.format(re.escape(c)): 2 for c in ("aiohttp", "aiohttp+uvloop", "httpx")},
            **{CLIENT_ROW.format(re.escape(c)): 2 for c in ("pyreqwest", "pyreqwest+uvloop")},
            r"^  wrk \(C, 1 thread\)\s+\d+\s+[\d.]+\s+[\d.]+  C baseline, 1 s run; .* 0 errors$": 2,
        },
    ),
    tool(
        "scale_out",
        "--urls 200 --workers 1,2 --timeout 200",
        expect={
            r"^\| SQLite, `serve` x1 \| 400 \| [\d.]+ \| [\d,]+ \| 1\.00 \| [\d.]+ \| [\d.]+ \|$": 1,
            **{rf"^\| PostgreSQL, `api` x1 \+ `worker` x{w} \| 400 \| [\d.]+ \| [\d,]+ \| ": 1 for w in (1, 2)},
            **{rf"^- PostgreSQL, `api` x1 \+ `worker` x{w}: [\d.]+ busy; ": 1 for w in (1, 2)},
        },
    ),
]


@pytest.mark.timeout(300)
@pytest.mark.parametrize(("argv", "expected"), TOOLS)
def test_bench_tool_runs_at_smoke_size_and_prints_its_figures(
    tmp_path: Path, argv: list[str], expected: dict[str, int]
) -> None:
    """Each bench tool of docs/benchmarks.md besides run.py (above) runs once, exits 0 and prints its figures."""
    env = dict(os.environ)
    if argv[0] != "scale_out.py" and "postgresql" not in argv:
        # What a tool puts in the temp dir lands in this test's (each removes its own). Not for a PostgreSQL
        # (scale_out's, claims'): it runs as another user, who cannot enter pytest's folders (0700).
        env["TMPDIR"] = str(tmp_path)
    run = subprocess.run(
        [sys.executable, str(ROOT / "bench" / argv[0]), *argv[1:]],
        capture_output=True,
        text=True,
        timeout=240,
        cwd=tmp_path,
        env=env,
    )
    assert run.returncode == 0, run.stdout[-3000:] + run.stderr[-3000:]
    for pattern, times in expected.items():
        found = re.findall(pattern, run.stdout, re.MULTILINE)
        assert len(found) == times, f"{pattern!r}: {len(found)} lines, not {times}\n{run.stdout[-3000:]}"
