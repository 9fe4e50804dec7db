"""The processes of this machine, read from Linux's /proc: what the testing helpers check and stop by PID."""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path
from typing import NamedTuple


class ProcessStat(NamedTuple):
    pid: int
    ppid: int
    pgrp: int


def processes() -> Iterator[ProcessStat]:
    """Every process that can still be read (one that ends meanwhile is skipped)."""
    for entry in Path("/proc").iterdir():
        if not entry.name.isdigit():
            continue
        try:
            stat = (entry / "stat").read_text()
        except OSError:
            continue
        # pid (comm) state ppid pgrp ...: comm may hold spaces and parentheses, so split after the last ')'.
        fields = stat.rsplit(")", 1)[-1].split()
        if len(fields) > 2:
            yield ProcessStat(int(entry.name), int(fields[1]), int(fields[2]))


def group_members(pgid: int) -> list[int]:
    """PIDs in process group `pgid`."""
    return sorted(p.pid for p in processes() if p.pgrp == pgid)


def children(parent: int) -> list[int]:
    """PIDs whose parent is `parent`."""
    return sorted(p.pid for p in processes() if p.ppid == parent)
