"""Process-wide settings for edgewarm's long-running processes (the service and its fetch process)."""

from __future__ import annotations

import gc


def tune_runtime() -> None:
    """Fewer garbage-collector pauses, and uvloop as the event loop. Call once, before the loop starts.

    The engine allocates a little for every fetch; with the default thresholds full collections took a
    quarter of its CPU on S1. Start-up objects are frozen out of the collector, and collections are rarer
    (docs/benchmarks.md: 280 -> 241 us of CPU per warm). uvloop was measured faster for the engine's many
    small fetches (docs/benchmarks.md).
    """
    gc.collect()
    gc.freeze()
    gc.set_threshold(100_000, 50, 1000)
    try:
        import uvloop

        uvloop.install()
    except ImportError:  # pragma: no cover - uvloop is a dependency on Linux
        pass
