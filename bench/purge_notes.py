"""The engine's note of its purges (`Engine._note_purge`: the last PURGES_KEPT (URL, node) purged, oldest first)
kept in a dict against an OrderedDict, in turns in one process: the time of a note once the notes are full.

    .venv/bin/python bench/purge_notes.py [--calls 200000] [--rounds 3]

A dict's oldest item is found by stepping over the slots of the items deleted before it (until the dict is
rebuilt), an OrderedDict's at once. Loopback-free, bounded by --calls and --rounds."""

from __future__ import annotations

import argparse
import time
from collections import OrderedDict

from edgewarm.engine.scheduler import PURGES_KEPT, PURGES_KEPT_SECONDS


def note_dict(purged: dict[tuple[str, str], tuple[float, bool]], key: tuple[str, str], now: float) -> None:
    purged.pop(key, None)
    purged[key] = (now, False)
    while len(purged) > PURGES_KEPT or now - next(iter(purged.values()))[0] > PURGES_KEPT_SECONDS:
        del purged[next(iter(purged))]


def note_ordered(purged: OrderedDict[tuple[str, str], tuple[float, bool]], key: tuple[str, str], now: float) -> None:
    purged.pop(key, None)
    purged[key] = (now, False)
    while len(purged) > PURGES_KEPT or now - next(iter(purged.values()))[0] > PURGES_KEPT_SECONDS:
        purged.popitem(last=False)


def per_call(kind: str, calls: int) -> float:
    """µs per note over `calls` notes of distinct URLs, once PURGES_KEPT are held (the first ones not timed)."""
    keys = [(f"http://www.example.test/{i}", "varnish-1") for i in range(PURGES_KEPT + calls)]
    now = time.monotonic()
    if kind == "dict":
        plain: dict[tuple[str, str], tuple[float, bool]] = {}
        for key in keys[:PURGES_KEPT]:
            note_dict(plain, key, now)
        started = time.perf_counter()
        for key in keys[PURGES_KEPT:]:
            note_dict(plain, key, now)
    else:
        ordered: OrderedDict[tuple[str, str], tuple[float, bool]] = OrderedDict()
        for key in keys[:PURGES_KEPT]:
            note_ordered(ordered, key, now)
        started = time.perf_counter()
        for key in keys[PURGES_KEPT:]:
            note_ordered(ordered, key, now)
    return (time.perf_counter() - started) / calls * 1e6


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--calls", type=int, default=200_000)
    parser.add_argument("--rounds", type=int, default=3)
    args = parser.parse_args()
    for round_ in range(1, args.rounds + 1):
        plain, ordered = per_call("dict", args.calls), per_call("ordered", args.calls)
        print(f"round {round_}: dict {plain:.2f} µs a note, OrderedDict {ordered:.2f} µs: ratio {plain / ordered:.1f}")


if __name__ == "__main__":
    main()
