"""`edgewarm watch`: live progress per task and per node, a summary table, an exit status."""

from __future__ import annotations

import functools
import os
import sys
import time
from collections.abc import Callable, Mapping, Sequence
from datetime import datetime
from typing import Any

import click
from rich.console import Console
from rich.progress import BarColumn, MofNCompleteColumn, Progress, TaskID, TextColumn, TimeRemainingColumn
from rich.table import Table
from rich.text import Text

from ..client import Client, ClientError
from ..models import distinct_task_ids
from .failures import failures_hint

FAILURES_SHOWN = 5
TASK_BARS = 8  # more tasks than this are followed in one bar: the nodes' bars stay in view below it
PATIENCE = 60.0  # seconds a server that does not answer (a restart) is waited for, by default (--patience)
GONE = (None, 502, 503, 504)  # no answer, or a proxy's (or the store's) while the service restarts
PIPED_WIDTH = 200  # tables into a pipe: wide enough for a row (a URL, say) on one line
PIPED_LINE_SECONDS = 10.0  # into a pipe or a file (no live bars there): a line of progress this often


def output_console(stderr: bool = False) -> Console:
    """The console for tables on stdout (or stderr): into a pipe, rich would fold them at 80 columns ("Fai" /
    "led", a URL over three lines that grep then misses): one row per line there, unless COLUMNS says how
    wide."""
    piped = not (sys.stderr if stderr else sys.stdout).isatty() and "COLUMNS" not in os.environ
    return _Console(stderr=stderr, width=PIPED_WIDTH if piped else None)


class _Console(Console):
    def on_broken_pipe(self) -> None:
        """Its reader went away: ended as any command's output is (main.py), not with rich's exit 1."""
        raise BrokenPipeError


def riding_out(ask: Callable[[], dict[str, Any]], interval: float, patience: float) -> dict[str, Any]:
    """`ask()`, asked again while the server does not answer (a restart loses no task), for `patience` seconds
    at most; said once on stderr."""
    deadline = time.monotonic() + patience
    told = False
    while True:
        try:
            return ask()
        except ClientError as exc:
            if exc.lasting or exc.http_status not in GONE or time.monotonic() > deadline:
                raise
            if not told:
                click.echo(f"{exc.message}: asking again for up to {patience:g} s", err=True)  # one line, unfolded
                told = True
            time.sleep(max(interval, 0.5))


class NodePace:
    """A node's rate as `watch` sees it: its items done over the time they took, from the last look before its
    first outcome seen to the look at which its count last grew, to a look's precision (before, its items over
    the whole task's time: a shield that did 30 items in 0.1 s of a 26 s task showed 1/s, and edges waiting for
    it showed low rates too). A node whose count has not moved while watched (all its items done before, or none
    yet) shows none: "-"."""

    def __init__(self, clock: Callable[[], float] = time.monotonic) -> None:
        self._clock = clock
        self._since: tuple[int, float] | None = None  # (done, when) at the last look before it moved
        self._last: tuple[int, float] | None = None  # (done, when) at the look its count last grew

    def seen(self, done: int) -> str:
        """Its items done at this look; its rate as a bar shows it."""
        now = self._clock()
        if self._last is None and (self._since is None or done == self._since[0]):
            self._since = (done, now)
        elif self._since is not None and done > (self._last or self._since)[0]:
            self._last = (done, now)
        if self._since is None or self._last is None:
            return "-"
        return f"{(self._last[0] - self._since[0]) / max(self._last[1] - self._since[1], 1e-3):.0f}"


def _done(counts: Mapping[str, int]) -> int:
    return counts["succeeded"] + counts["failed"]


def _total(counts: Mapping[str, int]) -> int:
    return sum(counts.values())


def follow(
    client: Client,
    taskids: list[str],
    *,
    interval: float = 0.5,
    patience: float = PATIENCE,
    console: Console | None = None,
) -> int:
    """Follow `taskids` until all have ended; print a summary; return 0 if all succeeded, else 1 (also when
    one of them is not found: it is named, and the others are followed)."""
    out = console or output_console()
    taskids = distinct_task_ids(taskids)  # one bar a task, and its counts once in the nodes' (`watch A A`)
    views: dict[str, dict[str, Any]] = {}
    unknown = []
    for taskid in taskids:
        try:  # the first look rides out a restart too (`watch` run just after one: it ended at once)
            views[taskid] = riding_out(functools.partial(client.task, taskid, limit=0), interval, patience)
        except ClientError as exc:
            if not exc.task_not_found:
                raise
            unknown.append(taskid)
    taskids = [t for t in taskids if t in views]
    if not taskids:  # said once, by the error (it was said twice: a line per task, then the error)
        raise ClientError(1, f"task not found: {', '.join(unknown)}", 404)
    for taskid in unknown:
        Console(stderr=True).print(f"task {taskid}: not found", markup=False, highlight=False)
    columns = (
        TextColumn("{task.description:<28}"),
        BarColumn(),
        MofNCompleteColumn(),
        TextColumn("[red]{task.fields[failed]} failed"),
        TextColumn("{task.fields[rate]}/s"),
        TimeRemainingColumn(),
    )
    # Into a pipe or a file, lines of counts (below), not the bars: rich drew their last frame there at the end.
    with Progress(*columns, console=out, transient=False, disable=not out.is_terminal) as progress:
        one_bar = len(taskids) > TASK_BARS
        task_bars: dict[str, TaskID] = (
            {"all": progress.add_task(f"{len(taskids)} tasks", total=None, failed=0, rate="-")}
            if one_bar
            else {t: progress.add_task(f"task {t[:8]}", total=None, failed=0, rate="-") for t in taskids}
        )
        node_bars: dict[str, TaskID] = {}
        paces: dict[str, NodePace] = {}
        said_at = time.monotonic()  # into a pipe: the first line after PIPED_LINE_SECONDS
        while True:
            per_node: dict[str, dict[str, int]] = {}
            if one_bar:
                summed = {key: sum(v["counts"][key] for v in views.values()) for key in ("succeeded", "failed")}
                progress.update(
                    task_bars["all"],
                    total=sum(v["total"] for v in views.values()),
                    completed=_done(summed),
                    failed=summed["failed"],
                    rate=f"{_done(summed) / max(_elapsed(v) for v in views.values()):.0f}",
                )
            for taskid, view in views.items():
                counts = view["counts"]
                if not one_bar:
                    progress.update(
                        task_bars[taskid],
                        total=view["total"],
                        completed=_done(counts),
                        failed=counts["failed"],
                        rate=f"{_done(counts) / _elapsed(view):.0f}",
                    )
                for node, c in view["nodes"].items():
                    into = per_node.setdefault(node, dict.fromkeys(c, 0))
                    for key, value in c.items():
                        into[key] += value
            for node, c in per_node.items():
                if node not in node_bars:
                    # Several tasks: each node's bar is theirs together, not the last task bar's above it.
                    of = "" if len(taskids) == 1 else f" ({len(taskids)} tasks)"
                    node_bars[node] = progress.add_task(f"  node {node}{of}", total=None, failed=0, rate="-")
                    paces[node] = NodePace()
                progress.update(
                    node_bars[node],
                    total=_total(c),
                    completed=_done(c),
                    failed=c["failed"],
                    rate=paces[node].seen(_done(c)),
                )
            if all(v["status"] != 1 for v in views.values()):
                break
            if not out.is_terminal and time.monotonic() - said_at >= PIPED_LINE_SECONDS:
                # rich draws no bars there: cron, CI and `| tee` saw nothing until the end (an ops tester's).
                out.print(progress_line(views, per_node), markup=False, highlight=False, soft_wrap=True)
                said_at = time.monotonic()
            time.sleep(interval)
            for taskid in taskids:  # the views read above are the first pass's
                if views[taskid]["status"] == 1:
                    views[taskid] = riding_out(functools.partial(client.task, taskid, limit=0), interval, patience)
    return summarize(client, views, out, unknown)


def progress_line(views: Mapping[str, Mapping[str, Any]], per_node: Mapping[str, Mapping[str, int]]) -> str:
    """The tasks' progress in a line, for a pipe or a file: `12:00:05 2 tasks: 150 of 400 items done (3 failed);
    shield-1 100/100, edge-1 30/150 (3 failed), edge-2 20/150`."""
    done = sum(_done(v["counts"]) for v in views.values())
    failed = sum(v["counts"]["failed"] for v in views.values())
    what = f"task {next(iter(views))[:8]}" if len(views) == 1 else f"{len(views)} tasks"
    nodes = ", ".join(
        f"{node} {_done(c)}/{_total(c)}" + (f" ({c['failed']} failed)" if c["failed"] else "")
        for node, c in per_node.items()
    )
    total = sum(v["total"] for v in views.values())
    head = f"{datetime.now():%H:%M:%S} {what}: {done} of {total} items done" + (f" ({failed} failed)" if failed else "")
    return f"{head}; {nodes}" if nodes else head


def _elapsed(view: dict[str, Any]) -> float:
    """How long the task has been working: from its creation to its end, or to now (a rate is per that)."""
    if view["duration_seconds"] is not None:
        return max(float(view["duration_seconds"]), 1e-3)
    return max(time.time() - datetime.fromisoformat(view["created_at"]).timestamp(), 1e-3)


TABLE_WIDTH = 110  # narrower consoles get one line per task: a table would fold the task ids


def summarize(client: Client, views: dict[str, dict[str, Any]], out: Console, unknown: Sequence[str] = ()) -> int:
    """The table of the tasks and their first failures; 0 when every task succeeded (and none was unknown)."""
    table: Table | None = None
    if out.width >= TABLE_WIDTH:
        table = Table(title="tasks")
        for name in ("taskid", "kind", "status", "items", "succeeded", "failed", "duration"):
            table.add_column(name, overflow="fold")
    for taskid, view in views.items():
        counts = view["counts"]
        row = (
            taskid,
            view["kind"],
            status_text(view),
            str(view["total"]),
            str(counts["succeeded"]),
            str(counts["failed"]),
            f"{view['duration_seconds']}s",
        )
        if table is not None:
            table.add_row(*cells(*row))
        else:
            out.print(f"{row[0]}  {row[1]}  {row[2]}", markup=False, highlight=False)
            out.print(f"  {row[3]} items: {row[4]} succeeded, {row[5]} failed, {row[6]}", markup=False, highlight=False)
    if table is not None:
        out.print(table)
    failures: list[tuple[str, dict[str, Any]]] = []
    for taskid, view in views.items():
        if view["counts"]["failed"] and len(failures) < FAILURES_SHOWN:
            items = client.task(taskid, limit=FAILURES_SHOWN - len(failures), state="failed")["items"]
            failures += [(taskid, i) for i in items]
    if failures and not out.is_terminal:  # a pipe or a file: a line per failure, whole (a table folds its cells)
        out.print("first failures:", markup=False, highlight=False)
        for taskid, item in failures:
            fields = (taskid[:8], item["node"], item["url"], str(item["http_status"] or "-"), str(item["attempts"]))
            out.print("  ".join((*fields, item["error"] or "")), markup=False, highlight=False, soft_wrap=True)
    elif failures:
        shown = Table(title="first failures")
        for name in ("taskid", "node", "url", "http", "attempts", "error"):
            shown.add_column(name, overflow="fold")
        for taskid, item in failures:
            shown.add_row(
                *cells(
                    taskid[:8],
                    item["node"],
                    item["url"],
                    str(item["http_status"] or "-"),
                    str(item["attempts"]),
                    item["error"] or "",
                )
            )
        out.print(shown)
    if failures:
        failed = [taskid for taskid, view in views.items() if view["counts"]["failed"]]
        out.print(failures_hint(failed), markup=False, highlight=False, soft_wrap=True)
    ok = all(v["status"] == 0 for v in views.values())
    if unknown:
        out.print(f"[red]{len(unknown)} of the tasks not found[/]" + ("; the others all succeeded" if ok else ""))
        return 1
    out.print("[green]all succeeded[/]" if ok else "[red]some items failed[/]")
    return 0 if ok else 1


def cells(*texts: str) -> list[Text]:
    """A table row's cells as written: rich reads a str cell as its markup (a URL with `[/]` in it ended the
    summary with a traceback, and one with `[bold]` was shown without it: a reviewer's)."""
    return [Text(text) for text in texts]


def status_text(view: Mapping[str, Any]) -> str:
    """A task's status for a table: its code and word, and why it ended so when it says (`cancelled`)."""
    return f"{view['status']} {view['msg']}" + (f" ({view['reason']})" if view.get("reason") else "")
