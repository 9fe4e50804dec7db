"""edgewarm's benchmark: one command, loopback only, bounded in time (docs/benchmarks.md has the figures).

    .venv/bin/python bench/run.py                          # S1-S6, 3 rounds each (about 11-15 minutes here)
    .venv/bin/python bench/run.py --scenario S1,S4         # some scenarios
    .venv/bin/python bench/run.py --quick --rounds 1       # the smoke size (tests/integration/test_bench_smoke.py)
    .venv/bin/python bench/run.py --profile                # py-spy on edgewarm during S1/S2 round 1

To measure one commit while others edit the tree, run a snapshot of it (children inherit PYTHONPATH; the
run reports the commit named in COMMIT beside the snapshot's src/):

    snap=$(mktemp -d) && c=$(git rev-parse --short HEAD) && echo $c > $snap/COMMIT
    git archive $c src | tar -x -C $snap && PYTHONPATH=$snap/src .venv/bin/python bench/run.py

Each scenario starts its own lab (origin + nginx caches, docroot and caches in /dev/shm) and its own edgewarm
process, runs on cold caches, checks afterwards that every URL is a HIT on every node and counts the origin's
requests, and has a hard deadline. Every process it starts is stopped by PID. The figures (median and spread
over the rounds) and the checks go to stdout and to `--json` (default bench/results/latest.json).

Exit status: 0 when every scenario ran and its correctness checks held, 1 otherwise. Performance targets
that are missed are reported, not failed: the machine this runs on is rarely quiet.
"""

from __future__ import annotations

import argparse
import json
import math
import os
import platform
import shutil
import subprocess
import sys
import tempfile
import time
import traceback
from collections.abc import Callable
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

if __package__ in (None, ""):  # run as a script: make `bench` importable as a package
    sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from bench.api import scenario_s5, scenario_s6
from bench.common import BENCH_DIR, BenchTimeout, Deadline, top_frames
from bench.warm import Options, scenario_s1, scenario_s2, scenario_s3, scenario_s4

Scenario = Callable[[Options, Deadline], dict[str, Any]]

# name: (function, hard deadline in seconds: full, quick)
SCENARIOS: dict[str, tuple[Scenario, float, float]] = {
    "S1": (scenario_s1, 1200, 240),
    "S2": (scenario_s2, 600, 180),
    "S3": (scenario_s3, 300, 120),
    "S4": (scenario_s4, 300, 120),
    "S5": (scenario_s5, 450, 120),
    "S6": (scenario_s6, 900, 180),
}


def machine() -> dict[str, Any]:
    cpu = "?"
    with open("/proc/cpuinfo") as f:
        for line in f:
            if line.startswith("model name"):
                cpu = line.split(":", 1)[1].strip()
                break
    try:
        commit = subprocess.run(
            ["git", "rev-parse", "--short", "HEAD"], capture_output=True, text=True, cwd=BENCH_DIR, timeout=10
        ).stdout.strip()
    except (OSError, subprocess.SubprocessError):
        commit = "?"
    import edgewarm

    source = Path(edgewarm.__file__).resolve().parent.parent
    try:
        dirty = subprocess.run(
            ["git", "status", "--porcelain", "--", "src"], capture_output=True, text=True, cwd=BENCH_DIR, timeout=10
        ).stdout.strip()
    except (OSError, subprocess.SubprocessError):
        dirty = "?"
    stamp = source.parent / "COMMIT"  # a snapshot made as the module docstring shows says what it is
    if source != BENCH_DIR.parent / "src" and stamp.exists():
        commit, dirty = stamp.read_text().strip(), ""
    return {
        "date": datetime.now(UTC).strftime("%Y-%m-%d %H:%M UTC"),
        "edgewarm_source": str(source),
        # Uncommitted changes under src/ of this checkout (they are what runs unless PYTHONPATH names a snapshot).
        "src_dirty": bool(dirty),
        "nproc": os.cpu_count(),
        "cpu": cpu,
        "load_avg": os.getloadavg(),
        "python": platform.python_version(),
        "commit": commit,
    }


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--scenario", default=",".join(SCENARIOS), help="comma-separated: S1,S2,S3,S4,S5,S6")
    parser.add_argument("--quick", action="store_true", help="smoke size: a few hundred URLs, small stores")
    parser.add_argument("--rounds", type=int, default=3, help="runs per contender and scenario (median, spread)")
    parser.add_argument(
        "--workdir", type=Path, default=None, help="edgewarm's SQLite files (default: a temp dir on disk)"
    )
    parser.add_argument("--json", type=Path, default=BENCH_DIR / "results" / "latest.json", help="results file")
    parser.add_argument("--profile", action="store_true", help="py-spy record edgewarm in S1/S2 round 1")
    parser.add_argument("--curl-per-call", type=int, default=100, help="xargs -n: URLs per curl process")
    args = parser.parse_args(argv)

    names = [n.strip().upper() for n in args.scenario.split(",") if n.strip()]
    unknown = [n for n in names if n not in SCENARIOS]
    if unknown:
        parser.error(f"unknown scenario(s) {unknown}: choose from {list(SCENARIOS)}")
    for tool in ("nginx", "wrk", "curl", "xargs"):
        if shutil.which(tool) is None and not Path(f"/usr/sbin/{tool}").exists():
            parser.error(f"{tool} is not installed (apt-get install nginx wrk curl)")

    workdir = Path(tempfile.mkdtemp(prefix="edgewarm-bench-", dir=args.workdir))
    profile_dir = None
    if args.profile:
        profile_dir = args.json.parent / "profiles"
        profile_dir.mkdir(parents=True, exist_ok=True)
    opts = Options(
        rounds=args.rounds,
        quick=args.quick,
        workdir=workdir,
        profile_dir=profile_dir,
        curl_per_call=args.curl_per_call,
        log=lambda *a: print(*a, flush=True),
    )
    info = machine()
    print(
        f"edgewarm bench {info['date']} commit {info['commit']} (src dirty: {info['src_dirty']}; edgewarm from "
        f"{info['edgewarm_source']}) on {info['nproc']} x {info['cpu']}, "
        f"load {info['load_avg'][0]:.2f}; {'quick' if args.quick else 'full'}, {args.rounds} rounds",
        flush=True,
    )
    results: dict[str, Any] = {"machine": info, "quick": args.quick, "rounds": args.rounds, "scenarios": {}}
    ok = True
    try:
        for name in names:
            fn, full_s, quick_s = SCENARIOS[name]
            deadline = Deadline(quick_s if args.quick else full_s, name)
            print(f"\n== {name} (deadline {deadline.seconds:.0f}s)", flush=True)
            started = time.perf_counter()
            try:
                result = fn(opts, deadline)
            except (BenchTimeout, Exception) as exc:  # one scenario's failure must not hide the others
                traceback.print_exc()
                result = {"scenario": name, "error": f"{type(exc).__name__}: {exc}", "checks_pass": False, "met": False}
            result["wall_seconds"] = time.perf_counter() - started
            results["scenarios"][name] = result
            ok &= bool(result.get("checks_pass"))
            print(summary_line(result), flush=True)
    finally:
        shutil.rmtree(workdir, ignore_errors=True)
        if profile_dir is not None:
            results["profiles"] = {p.name: top_frames(p, limit=30) for p in profile_dir.glob("*.raw")}
            results["profiles_inclusive"] = {
                p.name: top_frames(p, limit=40, own=False) for p in profile_dir.glob("*.raw")
            }
        args.json.parent.mkdir(parents=True, exist_ok=True)
        args.json.write_text(json.dumps(results, indent=2, default=_jsonable))
    print(f"\nresults: {args.json}")
    print("every correctness check held" if ok else "SOME CHECKS FAILED OR A SCENARIO DID NOT RUN")
    return 0 if ok else 1


def _jsonable(value: Any) -> Any:
    if isinstance(value, float) and math.isnan(value):
        return None
    return str(value)


def summary_line(r: dict[str, Any]) -> str:
    name = r["scenario"]
    if "error" in r:
        return f"{name}: ERROR {r['error']}"
    met = "target met" if r.get("met") else "TARGET MISSED"
    checks = "checks ok" if r.get("checks_pass") else "CHECKS FAILED"
    if name in ("S1", "S2"):
        return (
            f"{name}: edgewarm / bare loop = {r['edgewarm_vs_bare']:.2f} (target {r['target']}): {met}; {checks}; "
            f"with fetch_process = true {r['fetch_process_vs_bare']:.2f}"
        )
    if name == "S3":
        return f"{name}: origin requests per URL {r['origin_per_url']}: {met}; {checks}"
    if name == "S4":
        return (
            f"{name}: median {r['median_client']:.2f}s submit->wait (server {r['median_server']:.2f}s): {met}; {checks}"
        )
    if name == "S5":
        h = r["half_peak"]
        return (
            f"{name}: peak edgewarm / const app = {r['ratio']:.2f} (at -c64: {r['ratio_at_c64']:.2f}); "
            f"half peak (-c{h['connections']}) p50 {h['p50_ms']:.2f} ms p99 {h['p99_ms']:.2f} ms: {met}; {checks}"
        )
    b = r["bulk"]
    return (
        f"{name}: {r['urls_per_s']:,.0f} URLs/s in calls of 100, {b['urls_per_s']:,.0f} in calls of "
        f"{b['call_size']:,}, RSS peak {max(r['rss_peak_mb'], b['rss_peak_mb']):.0f} MB, latency ratio "
        f"{r['latency_ratio']:.2f}: {met} {r['met_detail']}; {checks}"
    )


if __name__ == "__main__":
    sys.exit(main())
