"""S1's workload for edgewarm configured several ways, beside the bare loop, in turns (rotating order).

    .venv/bin/python bench/ab.py --rounds 3 'child=[engine]\\nfetch_process = true' \\
        'inproc=[engine]\\nfetch_process = false'

Each argument is NAME=TOML (added to edgewarm's config; `\\n` for a new line); `--src NAME=DIR` runs that
variant's service from another source folder (another commit: `git archive REV src | tar -x -C DIR`).
Every run: 20,000 x 4 KiB on 2 nginx edges, a fresh lab (cold caches), submitted through /api/prefetch in calls
of 100 and timed to the last task's end, as S1 does (bench/warm.py); every URL is checked to be a HIT on every
node afterwards. Prints warms/s and CPU per warm of each run, then medians and the median of the per-round ratios
to the bare loop. `--https`: the nodes are given by their https ports (`Lab(tls=True)`), the URLs are https,
the HIT check asks over https, and the bare loop (plain HTTP) sits out; with `--by-name` the nodes' URLs name
localhost instead of 127.0.0.1.
"""

from __future__ import annotations

import argparse
import os
import shutil
import statistics
import sys
import tempfile
from pathlib import Path

if __package__ in (None, ""):
    sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from bench import warm
from bench.common import Deadline, bare_loop, check_run, fresh_lab, in_turns, url_of, use_source


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--rounds", type=int, default=3)
    parser.add_argument("--urls", type=int, default=20_000)
    parser.add_argument("--size", type=int, default=4096, help="bytes per object (S2: 8388608 with --urls 200)")
    parser.add_argument("--src", action="append", default=[], help="NAME=DIR: PYTHONPATH of that variant's service")
    parser.add_argument("--https", action="store_true", help="warm through the nodes' https ports")
    parser.add_argument("--by-name", action="store_true", help="with --https: the nodes given as localhost")
    parser.add_argument("variants", nargs="+", help="NAME=TOML")
    args = parser.parse_args(argv)
    variants = dict(v.split("=", 1) for v in args.variants)
    sources = dict(s.split("=", 1) for s in args.src)
    own_path = os.environ.get("PYTHONPATH")
    deadline = Deadline(3000, "ab")
    rates: dict[str, list[float]] = {name: [] for name in [*variants, *([] if args.https else ["bare"])]}
    names = list(rates)
    items = args.urls * 2
    for round_no in range(args.rounds):
        for who in in_turns(names, round_no):
            with fresh_lab(edges=2, shield=False, tls=args.https) as lab:
                paths = lab.make_files(args.urls, args.size, prefix="/f/")
                folder = Path(tempfile.mkdtemp(prefix="ab-"))
                try:
                    if who == "bare":
                        use_source(own_path)  # not the source of the variant that ran before it
                        result = bare_loop(lab.edges, paths, folder, deadline)
                        rate, cpu = result.rps, result.cpu_seconds
                    else:
                        use_source(sources.get(who, own_path))
                        engine = variants[who].replace("\\n", "\n")
                        urls = [url_of(p, https=args.https) for p in paths]
                        nodes = lab.nodes_toml(https=args.https)
                        if args.by_name:
                            nodes = nodes.replace("://127.0.0.1:", "://localhost:")
                        run = warm.run_edgewarm(lab, nodes, urls, folder, deadline, engine=engine)
                        rate, cpu = items / run.seconds, run.cpu_seconds
                    checked = check_run(lab, lab.edges, paths, deadline, https=args.https)
                finally:
                    shutil.rmtree(folder, ignore_errors=True)
            if not checked.all_hit:
                print(f"round {round_no + 1} {who}: {checked.text()}")
                return 1
            rates[who].append(rate)
            mbps = rate * args.size / 1e6
            per_warm = cpu / items * 1e6
            print(f"round {round_no + 1} {who:10} {rate:7.0f} warms/s {mbps:7.1f} MB/s  CPU {per_warm:4.0f} us/warm")
    for name, values in rates.items():
        line = f"{name:10} median {statistics.median(values):7.0f} warms/s"
        if "bare" in rates:
            ratios = [a / b for a, b in zip(values, rates["bare"], strict=True)]
            line += f"  ratio to bare {statistics.median(ratios):.2f}"
        print(line)
    return 0


if __name__ == "__main__":
    sys.exit(main())
