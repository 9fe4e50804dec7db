"""The end-of-watch summary: a table on a wide console, two plain lines per task on a narrow one."""

from __future__ import annotations

import io
import re
import time
from datetime import UTC, datetime
from typing import Any

import pytest
from rich.console import Console

import edgewarm.cli.failures
import edgewarm.cli.watch
from edgewarm.cli.watch import (
    FAILURES_SHOWN,
    TABLE_WIDTH,
    TASK_BARS,
    NodePace,
    _elapsed,
    follow,
    riding_out,
    summarize,
)
from edgewarm.client import ClientError
from edgewarm.views import progress

TASK = "148555aa-eee7-48cb-97bd-42fd052e3c84"
VIEW: dict[str, Any] = {
    "counts": {"succeeded": 300, "failed": 0},
    "kind": "prefetch",
    "status": 0,
    "msg": "Succeeded",
    "reason": None,
    "total": 300,
    "duration_seconds": 0.196,
}


def shown(width: int) -> str:
    out = Console(width=width, file=io.StringIO())
    assert summarize(None, {TASK: VIEW}, out) == 0  # type: ignore[arg-type]  # no failures: no client call
    text = out.file.getvalue()  # type: ignore[attr-defined]
    assert isinstance(text, str)
    return text


def test_a_narrow_console_gets_the_whole_task_id_on_one_line() -> None:
    lines = shown(80).splitlines()
    assert lines[0] == f"{TASK}  prefetch  0 Succeeded"
    assert lines[1] == "  300 items: 300 succeeded, 0 failed, 0.196s"
    assert "┃" not in "".join(lines)


def test_a_wide_console_gets_the_table() -> None:
    text = shown(TABLE_WIDTH)
    assert "┃ taskid" in text and TASK in text and "0 Succeeded" in text


def test_a_tasks_rate_is_per_its_own_time() -> None:
    """An ended task's rate is its items per its own duration (300 in 0.196 s: about 1,531/s), not per the
    time since `watch` began (it showed 862/s for a task that had ended before); a running one's, per the time
    since it was created."""
    assert round(300 / _elapsed(VIEW)) == 1531
    created = datetime.fromtimestamp(datetime.now(UTC).timestamp() - 10, UTC).isoformat()
    assert 9.5 < _elapsed({"duration_seconds": None, "created_at": created}) < 12


def test_progress_is_1_only_when_every_item_is_done() -> None:
    """19,999 of 20,000 items is 0.9999, not 1.0 (rounding made a task in progress show 1.0)."""
    assert (progress(19_999, 20_000), progress(20_000, 20_000), progress(1, 3)) == (0.9999, 1.0, 0.3333)
    assert progress(209_999, 210_000) < 1.0


class PagedClient:
    """The native view's item pages of one task of `total` items, failed from `failed_from` on."""

    def __init__(self, total: int, failed_from: int) -> None:
        self.total, self.failed_from = total, failed_from
        self.calls: list[tuple[int, int, str | None]] = []

    def task(self, taskid: str, *, offset: int = 0, limit: int = 1000, state: str | None = None) -> dict[str, Any]:
        self.calls.append((offset, limit, state))
        items = [item(n, "failed" if n >= self.failed_from else "succeeded") for n in range(self.total)]
        return {"items": [i for i in items if state in (None, i["state"])][offset : offset + limit]}


def item(n: int, state: str) -> dict[str, Any]:
    return {
        "node": "edge-1",
        "url": f"http://a.test/{n}",
        "state": state,
        "http_status": 404,
        "attempts": 1,
        "error": "HTTP 404 (not retried: the origin refused it)",
    }


def test_failures_after_the_first_page_are_shown() -> None:
    """30,000 items, the last 3 failed: the summary asks for the failed ones (before: only the first 10,000
    items were looked at, and no failure was shown; then every page was read, 26 MB for 120,000 items)."""
    view = {**VIEW, "status": 2, "msg": "Failed", "total": 30_000, "counts": {"succeeded": 29_997, "failed": 3}}
    client = PagedClient(30_000, 29_997)
    out = Console(width=200, file=io.StringIO())
    assert summarize(client, {TASK: view}, out) == 1  # type: ignore[arg-type]
    text = out.file.getvalue()  # type: ignore[attr-defined]
    assert "http://a.test/29999" in text and "first failures" in text, text
    assert client.calls == [(0, FAILURES_SHOWN, "failed")]
    # Not a terminal (a pipe): a line per failure, whole (in a table, the error was folded over 3 lines, and
    # grep did not find it).
    (line,) = [line for line in text.splitlines() if "29999" in line]
    assert line == "148555aa  edge-1  http://a.test/29999  404  1  HTTP 404 (not retried: the origin refused it)"


class MarkupClient(PagedClient):
    """Failed items whose URL and error hold what rich reads as its markup."""

    def task(self, taskid: str, *, offset: int = 0, limit: int = 1000, state: str | None = None) -> dict[str, Any]:
        items = super().task(taskid, offset=offset, limit=limit, state=state)["items"]
        urls = ["http://a.test/a[/]b", "http://a.test/[bold]x.js"]
        return {"items": [{**i, "url": u, "error": f"[red]{u}"} for i, u in zip(items, urls, strict=False)]}


def test_a_terminal_s_summary_shows_urls_and_errors_as_written() -> None:
    """rich reads a table cell's str as markup: a failed URL with `[/]` ended the summary with a traceback, and
    one with `[bold]` was shown without it, another URL (a reviewer's). The task table's cells too."""
    view = {**VIEW, "status": 2, "msg": "Failed", "reason": "[/]", "total": 2, "counts": {"succeeded": 0, "failed": 2}}
    out = Console(width=200, file=io.StringIO(), force_terminal=True, color_system=None)
    assert summarize(MarkupClient(2, 0), {TASK: view}, out) == 1  # type: ignore[arg-type]
    text = out.file.getvalue()  # type: ignore[attr-defined]
    assert "http://a.test/a[/]b" in text and "[red]http://a.test/[bold]x.js" in text, text
    assert "2 Failed ([/])" in text, text


def test_an_unknown_task_is_not_summed_up_as_all_succeeded() -> None:
    out = Console(width=200, file=io.StringIO())
    assert summarize(None, {TASK: VIEW}, out, unknown=["0" * 32]) == 1  # type: ignore[arg-type]
    text = out.file.getvalue()  # type: ignore[attr-defined]
    assert text.splitlines()[-1] == "1 of the tasks not found; the others all succeeded", text


def running_view(taskid: str, done: int) -> dict[str, Any]:
    counts = {"waiting": 0, "pending": 10 - done, "running": 0, "succeeded": done, "failed": 0}
    return {
        **VIEW,
        "taskid": taskid,
        "status": 0 if done == 10 else 1,
        "msg": "Succeeded" if done == 10 else "In Progress",
        "total": 10,
        "counts": counts,
        "nodes": {"edge-1": {k: v // 2 for k, v in counts.items()}, "edge-2": {k: v // 2 for k, v in counts.items()}},
        "duration_seconds": 0.5 if done == 10 else None,
        "created_at": datetime.now(UTC).isoformat(),
    }


class RestartingClient:
    """Tasks that end at their second look; the server does not answer `gone` looks in between (a restart)."""

    def __init__(self, taskids: list[str], gone: int) -> None:
        self.looks = dict.fromkeys(taskids, 0)
        self.gone = gone

    def task(self, taskid: str, *, limit: int = 1000, **_: Any) -> dict[str, Any]:
        self.looks[taskid] += 1
        if self.looks[taskid] > 1 and self.gone:
            self.gone -= 1
            if self.gone % 2:  # a proxy's answer while the service behind it restarts, or none at all
                raise ClientError(-1, "HTTP 502 for /v1/tasks/…, not edgewarm's answer", 502)
            raise ClientError(-1, "no answer from http://127.0.0.1:1: ConnectError: refused")
        return running_view(taskid, 10 if self.looks[taskid] > 1 else 5)


class RestartedClient:
    """The server restarting when `watch` begins: its first `gone` looks get no answer (or a proxy's 502)."""

    def __init__(self, gone: int) -> None:
        self.gone = gone

    def task(self, taskid: str, *, limit: int = 1000, **_: Any) -> dict[str, Any]:
        if self.gone:
            self.gone -= 1
            raise ClientError(-1, "HTTP 502 for /v1/tasks/…, not edgewarm's answer", 502)
        return running_view(taskid, 10)


def test_watch_begun_while_the_server_restarts_waits_for_it(monkeypatch: pytest.MonkeyPatch) -> None:
    """`watch` run just after a restart ended at once (exit 1, "HTTP 502 … not edgewarm's answer") though
    README says it asks again for `--patience`: only the looks after its first did. Its first does too now."""
    monkeypatch.setattr(time, "sleep", lambda seconds: None)
    taskid = "00000000-eee7-48cb-97bd-42fd052e3c84"
    out = Console(width=200, file=io.StringIO())
    assert follow(RestartedClient(gone=3), [taskid], interval=0.01, console=out) == 0  # type: ignore[arg-type]
    with pytest.raises(ClientError):  # and not for ever
        follow(RestartedClient(gone=1), [taskid], interval=0.01, patience=0, console=out)  # type: ignore[arg-type]


def test_a_certificate_refused_is_not_asked_again(monkeypatch: pytest.MonkeyPatch) -> None:
    """A certificate refused is no restart: `watch` asked again for the whole --patience (60 s), then failed."""
    looks = []

    def ask() -> dict[str, Any]:
        looks.append(1)
        raise ClientError(-1, "https://proxy.test refused: its certificate did not verify", lasting=True)

    monkeypatch.setattr(time, "sleep", lambda seconds: None)
    with pytest.raises(ClientError, match="certificate"):
        riding_out(ask, 0.01, 60)
    assert len(looks) == 1


def test_a_task_named_twice_is_followed_once(monkeypatch: pytest.MonkeyPatch) -> None:
    """`watch A A` had a second bar for A that stayed at 0/?, and the nodes' bars said "(2 tasks)"."""
    monkeypatch.setattr(time, "sleep", lambda seconds: None)
    taskid = "00000000-eee7-48cb-97bd-42fd052e3c84"
    out = Console(width=200, file=io.StringIO(), force_terminal=True, force_interactive=False)  # bars: last frame
    assert follow(RestartedClient(gone=0), [taskid, taskid], interval=0.01, console=out) == 0  # type: ignore[arg-type]
    text = out.file.getvalue()  # type: ignore[attr-defined]
    assert "(2 tasks)" not in text and "0/?" not in text and "node edge-1 " in text, text


def test_many_tasks_share_one_bar_and_a_restart_of_the_server_is_waited_for(monkeypatch: pytest.MonkeyPatch) -> None:
    """20 tasks had 20 bars: the nodes' bars, below them, were out of view all along (the QA pass: none of 65
    frames showed them). More than TASK_BARS tasks share one bar now. A server that did not answer a look (a
    restart) ended `watch` (and `submit --wait`) at once; it is asked again now, for `patience` at most."""
    monkeypatch.setattr(time, "sleep", lambda seconds: None)
    taskids = [f"{n:08d}-eee7-48cb-97bd-42fd052e3c84" for n in range(TASK_BARS + 12)]
    out = Console(width=200, file=io.StringIO(), force_terminal=True, force_interactive=False)  # bars: last frame
    assert follow(RestartingClient(taskids, gone=3), taskids, interval=0.01, console=out) == 0  # type: ignore[arg-type]
    text = out.file.getvalue()  # type: ignore[attr-defined]
    assert f"{len(taskids)} tasks" in text, text
    assert f"node edge-1 ({len(taskids)} tasks)" in text and f"node edge-2 ({len(taskids)} tasks)" in text, text
    assert "task 00000000" not in text, text
    with pytest.raises(ClientError):  # and not for ever
        follow(RestartingClient(taskids[:1], gone=1), taskids[:1], interval=0.01, patience=0, console=out)  # type: ignore[arg-type]


def test_a_nodes_rate_is_over_its_own_active_time() -> None:
    """A shield that did 30 items in 0.1 s of a 26 s task showed 1/s (its items over the task's time): now its
    items over the looks from before its first outcome to its last (to a look's precision), kept once it is done;
    none ("-") while it has not moved, or when it was done before `watch` began."""
    now = [0.0]
    edge, done_before = NodePace(lambda: now[0]), NodePace(lambda: now[0])
    looks = [(0.0, 0), (10.0, 0), (10.5, 30), (11.0, 40), (26.0, 40)]  # waits 10 s for its shield, then 40 in 1 s
    rates = []
    for now[0], done in looks:
        rates.append(edge.seen(done))
    assert rates == ["-", "-", "60", "40", "40"]
    assert done_before.seen(30) == "-"
    now[0] = 30.5
    assert done_before.seen(30) == "-"


class SteppingClient:
    """A task of 10 items, 2 more done at each look."""

    def __init__(self) -> None:
        self.looks = 0

    def task(self, taskid: str, *, limit: int = 1000, **_: Any) -> dict[str, Any]:
        self.looks += 1
        return running_view(taskid, min(10, 2 * self.looks))


def test_into_a_pipe_or_a_file_progress_comes_as_lines(monkeypatch: pytest.MonkeyPatch) -> None:
    """rich draws no bars where the output is no terminal (cron, CI, `| tee`): nothing was written until the end
    (an ops tester's 25 s of silence). A line every PIPED_LINE_SECONDS there, with each node's count."""
    monkeypatch.setattr(time, "sleep", lambda seconds: None)
    monkeypatch.setattr(edgewarm.cli.watch, "PIPED_LINE_SECONDS", 0.0)
    taskid = "00000000-eee7-48cb-97bd-42fd052e3c84"
    out = Console(width=200, file=io.StringIO())
    assert not out.is_terminal
    assert follow(SteppingClient(), [taskid], interval=0.01, console=out) == 0  # type: ignore[arg-type]
    lines = [line for line in out.file.getvalue().splitlines() if "items done" in line]  # type: ignore[attr-defined]
    assert [re.sub(r"^\d\d:\d\d:\d\d ", "", line) for line in lines] == [
        f"task 00000000: {done} of 10 items done; edge-1 {done // 2}/5, edge-2 {done // 2}/5" for done in (2, 4, 6, 8)
    ], lines
    assert "10/10" not in out.file.getvalue()  # type: ignore[attr-defined]  # the bars' last frame (a tester's)


class NoSuchTask:
    def task(self, taskid: str, **_: Any) -> dict[str, Any]:
        raise ClientError(1, f"task not found: {taskid}", 404)


def test_tasks_none_of_which_is_found_are_said_once(capsys: pytest.CaptureFixture[str]) -> None:
    """`watch UNKNOWN` said "task …: not found", then "Error: JD code 1: task not found: …" (a tester's)."""
    with pytest.raises(ClientError, match=r"task not found: 00000000-0000-0000-0000-000000000000$"):
        follow(NoSuchTask(), ["0" * 32], interval=0.01, console=Console(file=io.StringIO()))  # type: ignore[arg-type]
    assert capsys.readouterr().err == ""


class PagedFailures:
    """A task's failed items as /v1/tasks/{taskid}?state=failed pages them; `fail_meanwhile` items fail between
    the first and the second page, ahead of the first page's place (as items of a running task do)."""

    def __init__(self, failed: int, fail_meanwhile: int = 0) -> None:
        self.items = [{"url": f"http://a.test/{i}", "node": "edge-1"} for i in range(failed)]
        self.meanwhile = [{"url": f"http://a.test/new-{i}", "node": "edge-1"} for i in range(fail_meanwhile)]
        self.calls: list[tuple[int, int]] = []

    def task(self, taskid: str, *, offset: int = 0, limit: int = 1000, state: str | None = None) -> dict[str, Any]:
        assert state == "failed"
        self.calls.append((offset, limit))
        if len(self.calls) == 2:
            self.items[:0] = self.meanwhile
        return {"items": self.items[offset : offset + limit]}


@pytest.mark.parametrize(("failed", "calls"), [(0, 1), (3, 2), (4, 3), (5, 3)])
def test_failed_items_reads_every_page_and_stops(monkeypatch: pytest.MonkeyPatch, failed: int, calls: int) -> None:
    """Pages of PAGE items until one comes short (a full last page: one more call, empty), never past the
    task's items."""
    monkeypatch.setattr(edgewarm.cli.failures, "PAGE", 2)
    client = PagedFailures(failed)
    got = list(edgewarm.cli.failures.failed_items(client, TASK, total=failed))  # type: ignore[arg-type]
    assert [i["url"] for i in got] == [i["url"] for i in client.items]
    assert len(client.calls) == calls and [c[0] for c in client.calls] == [2 * n for n in range(calls)]


def test_failed_items_of_a_running_task_lists_every_item_failed_before_it_began(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    """Items that fail between two pages come in ahead of the place read: the ones failed before are all
    listed (one read twice, which `list_failures` keeps once), the new one is not (its failures so far)."""
    monkeypatch.setattr(edgewarm.cli.failures, "PAGE", 2)
    client = PagedFailures(4, fail_meanwhile=1)
    before = [i["url"] for i in client.items]
    got = [i["url"] for i in edgewarm.cli.failures.failed_items(client, TASK, total=10)]  # type: ignore[arg-type]
    assert set(got) == set(before) and len(got) == len(before) + 1, got
