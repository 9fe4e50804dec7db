"""S6's acceptance alone: URLs submitted to `edgewarm api` (a fresh SQLite file each run), sources in turns.

    .venv/bin/python bench/accept.py --urls 100000                        # calls of 100 from 8 clients
    .venv/bin/python bench/accept.py --urls 100000 --src old=/tmp/old/src --src new=/tmp/new/src

`--src NAME=DIR` runs the service from another source folder (`git archive REV src | tar -x -C DIR`); without
it, one contender runs from this checkout. Each round runs every contender once, in a rotating order, and
prints URLs/s and the service's CPU per URL (all threads, and its main thread).
"""

from __future__ import annotations

import argparse
import os
import shutil
import sys
import tempfile
from pathlib import Path

if __package__ in (None, ""):
    sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from bench.api import _accept
from bench.common import in_turns, use_source


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--urls", type=int, default=100_000)
    parser.add_argument("--call-size", type=int, default=100)
    parser.add_argument("--clients", type=int, default=8)
    parser.add_argument("--rounds", type=int, default=3)
    parser.add_argument("--src", action="append", default=[], help="NAME=DIR: PYTHONPATH of that contender")
    args = parser.parse_args(argv)
    sources = dict(s.split("=", 1) for s in args.src) or {"this": os.environ.get("PYTHONPATH", "")}
    names = list(sources)
    for round_no in range(args.rounds):
        for name in in_turns(names, round_no):
            use_source(sources[name] or None)
            folder = Path(tempfile.mkdtemp(prefix="accept-"))
            try:
                run = _accept(folder, args.urls, args.call_size, args.clients, budget=300.0)
            finally:
                shutil.rmtree(folder, ignore_errors=True)
            if run.refused or run.stored_items != run.accepted:
                print(f"round {round_no + 1} {name}: {run.refused} calls refused, {run.stored_items} items stored")
                return 1
            per_url = 1e6 / run.accepted
            print(
                f"round {round_no + 1} {name:8} {run.rate:8,.0f} URLs/s  CPU {run.cpu_seconds * per_url:5.1f} us/URL "
                f"(main thread {run.cpu_main_seconds * per_url:5.1f})"
            )
    return 0


if __name__ == "__main__":
    sys.exit(main())
