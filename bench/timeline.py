"""S1's run as bench/warm.py makes it, told over time: warms per second and how idle the machine was.

    .venv/bin/python bench/timeline.py                 # 20,000 x 4 KiB on 2 edges, `edgewarm serve`
    .venv/bin/python bench/timeline.py --split         # `edgewarm api` + `edgewarm worker` on one SQLite file
    .venv/bin/python bench/timeline.py --urls 200 --size 8388608   # S2's workload

Submits through /api/prefetch in calls of 100 and waits for every task, as S1 does; meanwhile samples
/proc/stat every 0.1 s. Then reads the store: each item's `updated_at` (its outcome's batch) and each
task's `created_at`, and prints per quarter second the warms recorded, the tasks created and the share of
the 2 cores idle (and in iowait). Shows where a run loses time: the submissions' phase against the rest, the
start and the tail, idle CPU while edgewarm is the bottleneck.
"""

from __future__ import annotations

import argparse
import asyncio
import collections
import shutil
import sqlite3
import sys
import tempfile
import threading
import time
from pathlib import Path

if __package__ in (None, ""):
    sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from bench.common import Deadline, check_run, cpu_seconds, fresh_lab, start_service, submit_all, url_of, wait_tasks
from edgewarm.testing.service import ServiceProcess

BIN = 0.25  # seconds per line


class CpuSampler(threading.Thread):
    """/proc/stat every 0.1 s: (time, idle share, iowait share) of all CPUs; at most 6,000 samples."""

    def __init__(self) -> None:
        super().__init__(daemon=True)
        self.samples: list[tuple[float, float, float]] = []
        self._done = threading.Event()

    @staticmethod
    def _read() -> tuple[int, int, int]:
        with open("/proc/stat") as f:
            ticks = [int(x) for x in f.readline().split()[1:]]
        return ticks[3], ticks[4], sum(ticks)

    def run(self) -> None:
        before = self._read()
        while not self._done.wait(0.1) and len(self.samples) < 6000:
            now = self._read()
            total = max(1, now[2] - before[2])
            self.samples.append((time.time(), (now[0] - before[0]) / total, (now[1] - before[1]) / total))
            before = now

    def stop(self) -> None:
        self._done.set()
        self.join(5)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--urls", type=int, default=20_000)
    parser.add_argument("--size", type=int, default=4096, help="bytes per object (S2: 8388608 with --urls 200)")
    parser.add_argument("--split", action="store_true", help="the API and the engine in two processes")
    args = parser.parse_args(argv)
    deadline = Deadline(600, "timeline")
    with fresh_lab(edges=2, shield=False) as lab:
        paths = lab.make_files(args.urls, args.size)
        folder = Path(tempfile.mkdtemp(prefix="edgewarm-timeline-"))
        extra = "[engine]\npoll_interval = 0.05\n" if args.split else ""  # the worker learns of work by polling
        service = start_service(folder, lab.nodes_toml(), command="api" if args.split else "serve", extra=extra)
        worker = None
        sampler = CpuSampler()
        try:
            if args.split:
                worker = ServiceProcess(service.config, command="worker").start()
                worker.wait_for_log("edgewarm running", 30)
            assert service.proc is not None
            pids = [service.proc.pid] + ([worker.proc.pid] if worker is not None and worker.proc else [])
            cpu_before = sum(cpu_seconds(pid)[0] for pid in pids)
            sampler.start()

            async def run() -> float:
                taskids, started, _ = await submit_all(service, [url_of(p) for p in paths])
                await wait_tasks(service, taskids, deadline)
                return started

            started = asyncio.run(run())
            cpu = sum(cpu_seconds(pid)[0] for pid in pids) - cpu_before
        finally:
            try:
                if worker is not None:
                    worker.stop()
            finally:
                service.stop()  # by PID, whatever happened before
                sampler.stop()
        checked = check_run(lab, lab.edges, paths, deadline)
        db = sqlite3.connect(folder / "edgewarm.db")
        try:
            updated = [r[0] for r in db.execute("SELECT updated_at FROM items")]
            created = [r[0] for r in db.execute("SELECT created_at FROM tasks")]
            finished = max(r[0] for r in db.execute("SELECT finished_at FROM tasks"))
        finally:
            db.close()
        shutil.rmtree(folder, ignore_errors=True)
    warms = len(updated)
    took = finished - started
    print(
        f"{warms} warms in {took:.2f} s ({warms / took:,.0f}/s), submitted by {max(created) - started:.2f} s; "
        f"edgewarm CPU {cpu / warms * 1e6:.0f} us/warm; {checked.text()}"
    )
    done = collections.Counter(int((u - started) / BIN) for u in updated)
    made = collections.Counter(int((c - started) / BIN) for c in created)
    for b in range(int(took / BIN) + 1):
        inside = [s for s in sampler.samples if started + b * BIN <= s[0] < started + (b + 1) * BIN]
        idle = sum(s[1] for s in inside) / max(1, len(inside))
        iowait = sum(s[2] for s in inside) / max(1, len(inside))
        print(
            f"{b * BIN:5.2f} s  {done.get(b, 0) / BIN:7,.0f} warms/s  {made.get(b, 0):3d} tasks created  "
            f"idle {idle:4.0%}  iowait {iowait:4.0%}"
        )
    return 0 if checked.all_hit else 1


if __name__ == "__main__":
    sys.exit(main())
