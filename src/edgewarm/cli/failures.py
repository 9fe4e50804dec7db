"""`edgewarm failed`: every failed URL of some tasks, one a line, to send again (`| edgewarm submit -f -`)."""

from __future__ import annotations

from collections.abc import Iterator, Sequence
from typing import Any

import click

from ..client import Client, ClientError
from ..errors import JdCode
from ..logs import counted
from ..models import distinct_task_ids, normalize_task_id

PAGE = 10_000  # the most items /v1/tasks/{taskid} answers in one call


def failed_items(client: Client, taskid: str, total: int) -> Iterator[dict[str, Any]]:
    """Every failed item of a task of `total` items, page by page (`state=failed`; at most `total` items: the
    pages are bounded). A failed item stays failed, so of a running task every item failed before the first page
    is read (an item failing meanwhile, ahead of the place read, moves the others on: one is read twice, which
    the caller keeps once); the ones failing meanwhile may not be: its failures so far."""
    for offset in range(0, total + 1, PAGE):
        items = client.task(taskid, offset=offset, limit=PAGE, state="failed")["items"]
        yield from items
        if len(items) < PAGE:
            return


def failures_hint(taskids: Sequence[str]) -> str:
    """The command that lists every failed URL of these tasks (a summary shows the first few)."""
    shown = " ".join(taskids) if len(taskids) <= 3 else "TASKID... (the failed tasks above)"
    return f"every failed URL, to send again: edgewarm failed {shown}"


def list_failures(client: Client, taskids: Sequence[str], why: bool) -> int:
    """Print each failed URL of the tasks once, in the tasks' order (or, with `why`, each failed item: task,
    node, action, URL, HTTP status, attempts, error, tab-separated); say the count on stderr, and which tasks run yet
    (their failures so far) or were not found. 0, or 1 when a task was not found."""
    seen: set[tuple[str, ...]] = set()
    directories: set[str] = set()  # printed URLs that are directories (of directory refreshes)
    items = 0
    unknown: list[str] = []
    asked = distinct_task_ids(taskids)
    for taskid in asked:
        try:
            if normalize_task_id(taskid) is None:  # `.` or `` is no id: its path was another route's
                raise ClientError(JdCode.FAILURE, "not a task id", 404)
            view = client.task(taskid, limit=0)
        except ClientError as exc:
            if not exc.task_not_found:
                raise
            unknown.append(taskid)
            click.echo(f"task {taskid}: not found", err=True)
            continue
        if view["status"] == 1:
            click.echo(f"task {taskid}: still in progress; its failures so far", err=True)
        for item in failed_items(client, view["taskid"], view["total"]):
            key = (view["taskid"], item["node"], item["action"], item["url"]) if why else (item["url"],)
            if key in seen:
                continue
            seen.add(key)
            items += 1
            if item["action"] == "purge_dir":
                directories.add(item["url"])
            if not why:
                click.echo(item["url"])
                continue
            status = str(item["http_status"] or "-")
            error = " ".join((item["error"] or "").split())  # one line, one field: no tab or line break in it
            fields = (view["taskid"], item["node"], item["action"], item["url"], status, str(item["attempts"]), error)
            click.echo("\t".join(fields))
    urls = len({key[-1] for key in seen})
    found = len(asked) - len(unknown)
    what = f"{counted(items, 'failed item')} ({counted(urls, 'URL')})" if why else counted(urls, "failed URL")
    click.echo(f"{what} in {counted(found, 'task')}", err=True)
    if directories and len(directories) < urls:  # piped to `submit`, a directory's index page would be warmed
        shown = ", ".join(sorted(directories)[:5]) + (", …" if len(directories) > 5 else "")
        click.echo(
            f"{counted(len(directories), 'of them is a directory', 'of them are directories')}, of directory "
            f"refreshes ({shown}): `edgewarm refresh --dir -f -` sends those (list those tasks apart)",
            err=True,
        )
    return 1 if unknown else 0
