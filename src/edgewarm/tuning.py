"""Process-wide settings for edgewarm's long-running processes (the service and its fetch process)."""

from __future__ import annotations

import errno
import functools
import gc
import os
import resource

# Open files a process needs besides one socket per request in flight and the API's connections: the store's files
# (a PostgreSQL pool's connections), webhook deliveries (100 at most), the fetch process's pipes, the runtime's own.
FILES_OF_THE_PROCESS = 192
API_CONNECTIONS_AT_LEAST = 64  # the API's room when the limit is tight (open_files_room cautions of it)
TIGHT_RESERVE = 16  # under a limit too low for concurrency: requests get half of it less this (requests_room)


def tune_runtime() -> None:
    """Fewer garbage-collector pauses, and uvloop as the event loop. Call once, before the loop starts.

    The engine allocates a little for every fetch; with the default thresholds full collections took a
    quarter of its CPU on S1. Start-up objects are frozen out of the collector, and collections are rarer
    (docs/benchmarks.md: 280 -> 241 us of CPU per warm). uvloop was measured faster for the engine's many
    small fetches (docs/benchmarks.md).
    """
    _standard_files_open()
    gc.collect()
    gc.freeze()
    gc.set_threshold(100_000, 50, 1000)
    try:
        import uvloop

        uvloop.install()
    except ImportError:  # pragma: no cover - uvloop is a dependency on Linux
        pass


def _standard_files_open() -> None:
    """/dev/null on each of the standard files (0, 1, 2) that is closed (`<&-`, `>&-`, a supervisor's): else the
    event loop's own files took their numbers, and uvloop aborted the process at its close (exit 134 after a
    clean stop; the start's error was lost: a deployer's)."""
    for fd in (0, 1, 2):
        try:
            os.fstat(fd)
        except OSError:
            null = os.open(os.devnull, os.O_RDWR)
            if null != fd:
                os.dup2(null, fd)
                os.close(null)


def open_files_room(concurrency: int) -> str | None:
    """Raise this process's soft limit of open files to its hard limit; a caution when even that has no room
    for `concurrency` requests at once (each holds a socket) beside the API's connections and the process's
    own files, saying what the process does then (requests_room, api_connections_room), else None."""
    soft = _raised_open_files()
    if not _tight(soft, concurrency):
        return None
    return (
        f"the open-files limit of this process ({soft}) is below what [engine] concurrency = {concurrency} needs "
        f"(about {_needed(soft, concurrency)}): it sends {requests_room(concurrency)} requests at once at most, "
        f"and takes {api_connections_room(concurrency)} API connections; raise it (ulimit -n, systemd's "
        "LimitNOFILE) or lower concurrency"
    )


def _needed(soft: int, concurrency: int) -> int:
    """The open files `concurrency` requests, the API's connections (a quarter of the limit, 64 at least) and
    the process's own files need."""
    return concurrency + FILES_OF_THE_PROCESS + max(API_CONNECTIONS_AT_LEAST, soft // 4)


def _tight(soft: int, concurrency: int) -> bool:
    """Whether a limit of `soft` open files is too low for `concurrency` requests and the rest (_needed)."""
    return soft != resource.RLIM_INFINITY and concurrency > 0 and soft < _needed(soft, concurrency)


@functools.cache
def requests_room(concurrency: int) -> int:
    """How many requests this process sends at once: `concurrency`, or fewer when its open-files limit (raised
    to its hard limit first) is tight (_tight): half of it, less TIGHT_RESERVE. (Under a limit of 64-256 and
    the default 256, the requests' sockets took every file: the API's connections were dropped unanswered, the
    store failed to open its file, and the warms crawled and failed, a tester's.) Cached: the engine asks it
    for every item."""
    soft = _raised_open_files()
    if not _tight(soft, concurrency):
        return concurrency
    return max(1, min(concurrency, soft // 2 - TIGHT_RESERVE))


@functools.cache
def api_connections_room(concurrency: int) -> int | None:
    """How many connections the API may hold open at once and leave the engine's `concurrency` requests (0: no
    engine in this process) and the process's own files their room, by this process's open-files limit (raised
    to its hard limit first): what the rest leaves, a quarter of the limit when it is tight (and as much at
    least: the room grows with the limit); None: no limit. Past it, a client's idle connections took every
    file: the engine's requests and the store failed with "Too many open files", and nothing was logged (a
    security tester's 1,100 connections under a limit of 1,024). Cached: asked at each connection."""
    soft = _raised_open_files()
    if soft == resource.RLIM_INFINITY:
        return None
    if _tight(soft, concurrency):  # beside requests_room's half
        return max(8, soft // 4)
    return max(API_CONNECTIONS_AT_LEAST, soft - concurrency - FILES_OF_THE_PROCESS)


def _raised_open_files() -> int:
    """This process's soft limit of open files, raised to its hard limit first."""
    soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    if soft != resource.RLIM_INFINITY and (hard == resource.RLIM_INFINITY or soft < hard):
        wanted = 1 << 20 if hard == resource.RLIM_INFINITY else hard
        try:
            resource.setrlimit(resource.RLIMIT_NOFILE, (wanted, hard))
            soft = wanted
        except (ValueError, OSError):  # the kernel's own ceiling (fs.nr_open) may be lower: keep what there is
            pass
    return soft


def out_of_open_files() -> str | None:
    """What to say when this process has run out of open files (at its limit, or unable to open one more): the
    cause behind an "unable to open database file" or a failed connection; else None."""
    soft, _ = resource.getrlimit(resource.RLIMIT_NOFILE)
    try:
        count = len(os.listdir("/proc/self/fd"))
    except OSError as exc:
        if exc.errno not in (errno.EMFILE, errno.ENFILE):
            return None
        count = soft
    if soft == resource.RLIM_INFINITY or count < soft - 8:  # a few short of it: others may hold the rest
        return None
    return f"this process has run out of open files ({count} of its limit {soft}): {OPEN_FILES_REMEDY}"


OPEN_FILES_REMEDY = "raise the limit (ulimit -n, systemd's LimitNOFILE) or lower [engine] concurrency"
