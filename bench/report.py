"""Render a results file of `bench/run.py` as the Markdown tables of docs/benchmarks.md.

.venv/bin/python bench/report.py bench/results/latest.json
"""

from __future__ import annotations

import json
import statistics
import sys
from pathlib import Path
from typing import Any


def med(values: list[float] | None) -> float:
    values = [v for v in (values or []) if v is not None]
    return statistics.median(values) if values else float("nan")


def spread(values: list[float] | None, fmt: str = "{:,.0f}") -> str:
    values = [v for v in (values or []) if v is not None]
    if not values:
        return "-"
    return f"{fmt.format(min(values))}-{fmt.format(max(values))}"


def cell(values: list[float] | None, fmt: str = "{:,.0f}") -> str:
    if not values:
        return "-"
    return f"{fmt.format(med(values))} ({spread(values, fmt)})"


def compare_table(r: dict[str, Any], bytes_rate: bool) -> list[str]:
    rows = {row["contender"]: row for row in r["rows"]}
    bare = med((rows.get("bare loop") or rows["bare aiohttp loop"])["warms_per_s"])  # its name up to session 4
    lines = [
        "| contender | seconds | warms/s | MB/s | edgewarm ÷ this | peak RSS MB | CPU µs/warm | checks |",
        "|---|---:|---:|---:|---:|---:|---:|---|",
    ]
    for name, row in rows.items():
        ratio = med(rows["edgewarm"]["warms_per_s"]) / med(row["warms_per_s"])
        checks = "all HIT; " + row["checks"][0].split("; ", 1)[1] if row["all_hit"] else "; ".join(row["checks"])
        lines.append(
            f"| {name} | {cell(row['seconds'], '{:.2f}')} | {cell(row['warms_per_s'])} | "
            f"{cell(row['mb_per_s'], '{:,.1f}')} | {ratio:.2f} | {cell(row['rss_peak_mb'])} | "
            f"{cell(row.get('cpu_us_per_warm'))} | {checks} |"
        )
    _ = bare, bytes_rate
    return lines


def main() -> int:
    data = json.loads(Path(sys.argv[1]).read_text())
    m = data["machine"]
    print(f"- date {m['date']}, commit {m['commit']}, {m['nproc']} x {m['cpu']}, load at start {m['load_avg'][0]:.2f}")
    s = data["scenarios"]
    for name in ("S1", "S2"):
        if name in s and "rows" in s[name]:
            print(f"\n#### {name}: {s[name]['workload']}\n")
            print("\n".join(compare_table(s[name], name == "S2")))
            print(f"\nedgewarm ÷ bare loop = {s[name]['edgewarm_vs_bare']:.2f} (target {s[name]['target']})")
            if "fetch_process_vs_bare" in s[name]:  # since session 31
                print(f"edgewarm with `fetch_process = true` ÷ bare loop = {s[name]['fetch_process_vs_bare']:.2f}")
            for row in s[name]["rows"]:
                if row["notes"]:
                    print(f"- {row['contender']}: {'; '.join(row['notes'])}")
    if "S3" in s and "error" not in s["S3"]:
        r = s["S3"]
        print(f"\n#### S3: {r['workload']}\n")
        print(f"seconds {cell(r['seconds'], '{:.2f}')}, warms/s {cell(r['warms_per_s'])}; {r['checks']}")
    if "S4" in s and "error" not in s["S4"]:
        r = s["S4"]
        print(f"\n#### S4: {r['workload']}\n")
        client, server = spread(r["client_seconds"], "{:.3f}"), spread(r["server_seconds"], "{:.3f}")
        print(f"client (submit → wait returns) median {r['median_client']:.3f} s ({client});")
        print(f"server (finished_at − created_at) median {r['median_server']:.3f} s ({server})")
        print(f"{r['checks']}")
    if "S5" in s and "error" not in s["S5"]:
        r = s["S5"]
        print(f"\n#### S5: {r['workload']}\n")
        print("| wrk -c | edgewarm req/s | const app req/s | ratio |")
        print("|---:|---:|---:|---:|")
        for c, ew in r["edgewarm_rps"].items():
            base = r["baseline_rps"][c]
            print(f"| {c} | {cell(ew)} | {cell(base)} | {med(ew) / med(base):.2f} |")
        h = r["half_peak"]
        print(
            f"\npeak ratio {r['ratio']:.2f}; half peak: -c{h['connections']} {h['rps']:,.0f} req/s, "
            f"p50 {h['p50_ms']:.2f} ms, p99 {h['p99_ms']:.2f} ms; errors {r['errors']}"
        )
    if "S6" in s and "error" not in s["S6"]:
        r = s["S6"]
        print(f"\n#### S6: {r['workload']}\n")
        accepted = r.get("accepted", r.get("accepted_urls", 0))  # results files before session 3 say accepted_urls
        print(
            f"accepted {accepted:,} URLs in {r['seconds']:.1f} s = {r['urls_per_s']:,.0f} URLs/s; "
            f"RSS {r['rss_start_mb']:.0f} → peak {r['rss_peak_mb']:.0f} MB; CPU {r.get('cpu_seconds', 0):.1f} s "
            f"(main {r.get('cpu_main_seconds', 0):.1f} s); "
            f"stored {r['stored_tasks']:,} tasks / {r['stored_items']:,} items"
        )
        if "bulk" in r:
            b = r["bulk"]
            print(
                f"- bulk, calls of {b['call_size']:,} from {b['clients']} clients: {b['accepted']:,} URLs in "
                f"{b['seconds']:.1f} s = {b['urls_per_s']:,.0f} URLs/s; RSS peak {b['rss_peak_mb']:.0f} MB; "
                f"CPU {b['cpu_seconds']:.1f} s (main {b['cpu_main_seconds']:.1f} s)"
            )
        for q in r["query_latency"].values():
            print(f"- query, {q['items']:,} items: p50 {q['p50_ms']:.2f} ms, p99 {q['p99_ms']:.2f} ms")
        print(f"- ratio {r['latency_ratio']:.2f}; {r['met_detail']}")
    for name, r in s.items():
        if "error" in r:
            print(f"\n{name}: ERROR {r['error']}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
