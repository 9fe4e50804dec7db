"""Operator commands: they act on the store the config names, whoever's the task, without a user's credentials
(whoever can read the config file can reach the store anyway)."""

from __future__ import annotations

import asyncio
import json
import shlex
import time
from dataclasses import dataclass
from typing import TYPE_CHECKING

import click
from click.core import ParameterSource

from ..errors import EdgewarmError, RequestRefused
from ..logs import item_count
from ..models import Canceller, Task, TaskFilter, TaskPlace, TaskStatus
from .main import main
from .server import config_option, load_or_fail, said

if TYPE_CHECKING:
    from ..store import TaskStore

PAGE = 1000  # running tasks read at a time for --user
MOST_TASKS = 10_000_000  # a bound on the pages read: no store holds more running tasks of one user


@main.group()
def admin() -> None:
    """Operator commands on the store (the config's), for any user's tasks."""


@dataclass(frozen=True, slots=True)
class Cancelled:
    """What `admin cancel` did to one task: the task after it (None: not found), and whether this cancel was its
    first (the store says so: not a cancel of another caller at the same time, nor the task's end meanwhile)."""

    task_id: str
    after: Task | None
    ours: bool = False

    def __str__(self) -> str:
        after = self.after
        if after is None:
            return f"{self.task_id}: not found"
        of = f"{self.task_id} (user {after.username})"
        if not self.ours:
            if after.status is TaskStatus.IN_PROGRESS:  # cancelled before, its items under way not all back
                by = "its user" if after.cancelled_by is Canceller.USER else "the operator"
                return f"{of}: cancelled already, by {by}; {_under_way(after)}"
            return f"{of}: ended already, status {int(after.status)}" + (f" ({after.reason})" if after.reason else "")
        if after.status is TaskStatus.IN_PROGRESS:
            return f"{of}: cancelled; {_under_way(after)}"
        counts = f"{after.succeeded} succeeded, {after.failed} failed"
        return f"{of}: cancelled; ended, status {int(after.status)} ({counts})"


def _under_way(task: Task) -> str:
    left = task.total - task.succeeded - task.failed
    return f"it ends when its {item_count(left)} claimed or under way come{'s' * (left == 1)} back"


@admin.command("cancel")
@config_option
@click.argument("taskids", nargs=-1)
@click.option(
    "--user",
    "usernames",
    multiple=True,
    help="also cancel every task of this user that is still running (a user removed from the config: their "
    "tasks run on until then); may be given several times",
)
def cancel(config_path: str, taskids: tuple[str, ...], usernames: tuple[str, ...]) -> None:
    """Cancel TASKIDS (and with --user, a user's running tasks), whoever's they are, as the user's own cancel
    does: their items waiting in the store end failed ("cancelled"), those under way finish, and each task
    ends failed, reason "cancelled", cancelled_by "operator". Services learn it within a second. Exits 1 when
    a task id is not found."""
    from ..models import normalize_task_id
    from ..store import existing_store

    if not taskids and not usernames:
        raise click.UsageError("give the task ids to cancel, or --user NAME")
    ids: list[str] = []
    for raw in taskids:
        task_id = normalize_task_id(raw)
        if task_id is None:
            raise click.BadParameter(f"{raw!r} is not a task id (36 or 32 characters)", param_hint="TASKIDS")
        if task_id not in ids:
            ids.append(task_id)
    config = load_or_fail(config_path)

    async def go() -> tuple[list[str], list[Cancelled]]:
        async with existing_store(config.store) as store:
            idle: list[str] = []
            for username in usernames:
                running = await _running(store, username)
                ids.extend(task_id for task_id in running if task_id not in ids)
                idle += [] if running else [username]
            return idle, [await _cancel(store, task_id) for task_id in ids]

    try:
        idle, done = asyncio.run(go())
    except EdgewarmError as exc:
        raise click.ClickException(said(exc, config_path)) from None
    for username in idle:
        # A typo reads as an idle user otherwise (a user removed from the config is still theirs to cancel).
        unknown = "" if config.user(username) is not None else " (no such user in the config)"
        click.echo(f"user {username} has no task running{unknown}")
    for result in done:
        click.echo(str(result))
    if any(result.after is None for result in done):
        raise SystemExit(1)


@admin.command("tasks")
@config_option
@click.option("--user", "username", required=True, help="whose tasks (a user removed from the config too)")
@click.option("--status", type=click.Choice(["0", "1", "2"]), help="0 succeeded, 1 in progress, 2 failed")
@click.option("--limit", default=50, show_default=True, type=click.IntRange(1, 1000), help="at most this many tasks")
@click.option("--after", help="the tasks after a page: its cursor, as the last listing printed it (stable)")
@click.option("--json", "as_json", is_flag=True, help='print JSON instead of a table ({"tasks": [...], "next": ...})')
def tasks(config_path: str, username: str, status: str | None, limit: int, after: str | None, as_json: bool) -> None:
    """List a user's tasks, newest first, as the user's own `edgewarm tasks` does: read from the store, also
    those of a user removed from the config (whose tasks run on, while their calls are refused). A page with more
    after it ends by saying how to list them (`--after CURSOR`; in JSON, `next`)."""
    from ..store import existing_store
    from ..views import place_token, read_place, task_summary
    from .tools import tasks_table
    from .watch import output_console

    config = load_or_fail(config_path)
    username = username.strip()  # as the API reads a name
    try:
        place = read_place(after) if after else None
    except RequestRefused as exc:
        raise click.BadParameter(exc.message.removeprefix("after: "), param_hint="--after") from None
    # One more than asked: whether a next page has any (the newest 1,000 were all it could list: a session's note).
    where = TaskFilter(status=None if status is None else TaskStatus(int(status)), after=place, limit=limit + 1)

    async def go() -> list[Task]:
        async with existing_store(config.store) as store:
            return await store.list_tasks(username, where)

    try:
        listed = asyncio.run(go())
    except EdgewarmError as exc:
        raise click.ClickException(said(exc, config_path)) from None
    found = [task_summary(task, config.api.language) for task in listed[:limit]]
    cursor = place_token(TaskPlace.of(listed[limit - 1])) if len(listed) > limit else None
    if as_json:
        click.echo(json.dumps({"tasks": found, "next": cursor}, ensure_ascii=False))
    elif not found:
        unknown = "" if config.user(username) is not None else " (no such user in the config)"
        where_said = " after this cursor" if after else f"{' of this status' if status else ''}{unknown}"
        click.echo(f"user {username} has no tasks{where_said}", err=True)
    else:
        output_console().print(tasks_table(found))
        if cursor is not None:
            by_flag = click.get_current_context().get_parameter_source("config_path") is ParameterSource.COMMANDLINE
            given = {"--config": config_path if by_flag else None, "--user": username, "--status": status}
            again = "".join(f" {flag} {shlex.quote(value)}" for flag, value in given.items() if value is not None)
            click.echo(f"more: edgewarm admin tasks{again} --limit {limit} --after {cursor}", err=True)


async def _running(store: TaskStore, username: str) -> list[str]:
    """The ids of the user's running tasks, oldest first (all read before any is cancelled). Each page goes on
    after the last one's last task, not by an offset: tasks that end or are submitted meanwhile would move the
    pages (a task read twice, another not at all)."""
    found: list[str] = []
    after: TaskPlace | None = None
    for _ in range(0, MOST_TASKS, PAGE):
        where = TaskFilter(status=TaskStatus.IN_PROGRESS, after=after, limit=PAGE)
        page = await store.list_tasks(username, where)
        found.extend(task.id for task in page)
        if len(page) < PAGE:
            break
        after = TaskPlace.of(page[-1])
    return found[::-1]


async def _cancel(store: TaskStore, task_id: str) -> Cancelled:
    found = await store.cancel_task(task_id, None, time.time())  # a task ended already is left as it is
    return Cancelled(task_id, None) if found is None else Cancelled(task_id, found.task, found.first)
