"""User tools: submit, refresh, watch, query, tasks, cancel, failed, quota, sign.

The server address and credentials come from flags, else environment variables (EDGEWARM_SERVER,
EDGEWARM_USERNAME, EDGEWARM_SECRET), else a client config file (EDGEWARM_CLIENT_CONFIG, default
~/.config/edgewarm/client.toml, with keys `server`, `username`, `secret`).
"""

from __future__ import annotations

import enum
import json
import os
import re
import shlex
import time
import tomllib
from collections.abc import Callable
from dataclasses import dataclass
from datetime import datetime
from pathlib import Path
from typing import TYPE_CHECKING, Any, NoReturn, TypeVar

import click
from rich.console import Console

from .. import auth
from ..client import Client, ClientError
from ..config import file_cautions
from ..errors import JdCode
from ..models import distinct_task_ids, normalize_task_id
from ..urls import password_masked, shortened
from .entries import Entry, FileRefused, NothingToSend, checked, first_few, owned, read_entries, span
from .failures import list_failures
from .main import STDOUT_CLOSED, Terminated, main, stdout_closed
from .watch import GONE, PATIENCE, cells, follow, output_console, status_text

if TYPE_CHECKING:
    from rich.table import Table

F = TypeVar("F", bound=Callable[..., Any])
DEFAULT_SERVER = "http://127.0.0.1:8080"
DEFAULT_CLIENT_CONFIG = "~/.config/edgewarm/client.toml"
POSITIVE = click.IntRange(min=1)


USER_OPTIONS = (
    click.option("--username", "-u", envvar="EDGEWARM_USERNAME", show_envvar=True, help="JD username"),
    click.option(
        "--secret",
        envvar="EDGEWARM_SECRET",
        show_envvar=True,
        help="the user's secret key (prefer the variable or the client config: flags show in `ps`)",
    ),
    click.option(
        "--client-config",
        envvar="EDGEWARM_CLIENT_CONFIG",
        show_envvar=True,
        default=DEFAULT_CLIENT_CONFIG,
        show_default=True,
        type=click.Path(dir_okay=False),
        help="TOML file with server, username, secret (and timezone: the day signed in; or EDGEWARM_TIMEZONE)",
    ),
)


PATIENCE_OPTION = click.option(
    "--patience",
    default=PATIENCE,
    show_default=True,
    type=click.FloatRange(min=0),
    help="seconds to keep asking a server that stops answering while following (a restart)",
)
SERVER_OPTION = click.option(
    "--server", envvar="EDGEWARM_SERVER", show_envvar=True, help=f"[default: {DEFAULT_SERVER}]"
)


def user_options(fn: F) -> F:
    for option in reversed(USER_OPTIONS):
        fn = option(fn)
    return fn


def connection_options(fn: F) -> F:
    """--server, then USER_OPTIONS."""
    return SERVER_OPTION(user_options(fn))


def check_timezone(ctx: click.Context, param: click.Parameter, value: str | None) -> str | None:
    """--timezone: a usage error naming the value when it is not a known IANA time zone."""
    if value is not None and not auth.known_timezone(value):
        raise click.BadParameter(f"unknown time zone {value!r}", ctx, param)
    return value


def make_client(server: str | None, username: str | None, secret: str | None, client_config: str) -> Client:
    found = read_credentials(server, username, secret, client_config)
    try:  # httpx raised InvalidURL with a traceback (a port that is no number, a bracket left open)
        return Client(found.server, found.username, found.secret, timezone=found.timezone)
    except ValueError as exc:
        raise FileRefused(str(exc)) from None


@dataclass(frozen=True)
class Credentials:
    server: str
    username: str
    secret: str
    timezone: str


def read_credentials(server: str | None, username: str | None, secret: str | None, client_config: str) -> Credentials:
    """The flags (or their variables) first, then the client config file; a usage error without a user."""
    path = Path(client_config).expanduser()
    stored: dict[str, Any] = {}
    if client_config != DEFAULT_CLIENT_CONFIG and not path.exists():  # named, so meant: say it is not there
        raise FileRefused(f"client config {path}: no such file")
    if path.exists():
        try:
            stored = tomllib.loads(path.read_text(encoding="utf-8-sig"))  # a byte order mark is no error
        except (OSError, tomllib.TOMLDecodeError, UnicodeDecodeError) as exc:
            raise FileRefused(f"client config {path}: {exc}") from None
        unknown = set(stored) - {"server", "username", "secret", "timezone"}
        if unknown:
            raise FileRefused(f"client config {path}: unknown key {sorted(unknown)[0]!r}")
        for key, value in stored.items():
            if not isinstance(value, str):
                raise FileRefused(f"client config {path}: {key} must be a string")
        if "secret" in stored:
            for caution in file_cautions(path):
                click.echo(f"warning: client config {caution}", err=True)
    server = server or stored.get("server") or DEFAULT_SERVER
    if username and not secret and "secret" in stored and stored.get("username", username) != username:
        # Its secret is its user's: signed for another name, every call was "signature incorrect", unexplained.
        raise click.UsageError(
            f"user {username} (--username or EDGEWARM_USERNAME): the secret of client config {path} is "
            f"{stored['username']}'s; give --secret (or EDGEWARM_SECRET) for this user"
        )
    username = username or stored.get("username")
    secret = secret or stored.get("secret")
    given = os.environ.get("EDGEWARM_TIMEZONE")  # the day signed in, without a client config
    timezone = given or str(stored.get("timezone", auth.DEFAULT_TIMEZONE))
    if not auth.known_timezone(timezone):
        where = "EDGEWARM_TIMEZONE" if given else f"client config {path}"
        raise FileRefused(f"{where}: unknown time zone {timezone!r}")
    if not username or not secret:
        lacking = " and ".join(key for key, value in (("username", username), ("secret", secret)) if not value)
        # One named (or the default one there) was read: said, not "or a client config" (a CLI tester's).
        read = f"; client config {path} has no {lacking}" if path.exists() else ", or a client config"
        raise click.UsageError(f"give --username and --secret (or EDGEWARM_USERNAME/EDGEWARM_SECRET{read})")
    return Credentials(str(server), str(username), str(secret), timezone)


def plan_calls(
    client: Client, entries: list[Entry], per_call: int | None, directories: bool = False
) -> list[list[Entry]]:
    """The calls that send `entries` (checked and made distinct first: entries.py), in the user's per-call limit
    as the server states it (JD's default when it cannot say), and each within the body size it takes (long
    URLs: fewer a call); a --per-call over that limit, or more entries than the day's quota has left, is refused
    before any call. A server that does not answer the quota's call at all ends it there (the first call would
    wait as long again for nothing)."""
    entries = checked(entries, directories)
    kind, what = ("dirs", "directories") if directories else ("urls", "URLs")
    try:
        quota = client.quota()
        limit, left, day = int(quota[f"{kind}_per_call"]), int(quota[kind]["left"]), int(quota[kind]["limit"])
    except (ClientError, KeyError, TypeError, ValueError) as exc:
        if isinstance(exc, ClientError) and exc.http_status in GONE:  # no answer (not reached, silent: frozen), or
            # a proxy's 502-504 or the service's 503: the checks before any call cannot be made (they were skipped)
            raise click.ClickException(f"{exc.message} (nothing was sent)") from None
        # An answer without the quota (a proxy's, an older server's): JD's limits; the calls say why, if they fail.
        quota, limit, left, day = None, (5 if directories else 100), len(entries), 0
    if per_call is not None and quota and per_call > limit:
        raise click.UsageError(f"--per-call {per_call} is over your limit of {limit} {what} per call")
    if quota and len(entries) > left:
        asked = f"{len(entries)} {what}" if len(entries) > 1 else f"1 {'directory' if directories else 'URL'}"
        raise click.ClickException(
            f"{asked}, but {left} of today's {day} are left (the day {quota.get('day')} in "
            f"{quota.get('timezone')}): nothing was sent"
        )
    domains = quota.get("domains") if quota else None  # an older server's answer has none
    if isinstance(domains, list):
        owned(entries, [str(d) for d in domains])
    most = quota.get("max_body_bytes") if quota else None
    return in_calls(entries, per_call or limit, most if isinstance(most, int) else None)


BODY_ROOM = 8192  # bytes of a call's body kept for its other fields (credentials, a callback URL of 4,096 at most)


def in_calls(entries: list[Entry], size: int, max_body_bytes: int | None) -> list[list[Entry]]:
    """`entries` in calls of `size` at most, each list's JSON within `max_body_bytes` (less BODY_ROOM, or a quarter
    of a smaller limit) when given: a call of 5,000 URLs of 230 characters was over 1 MB, refused mid-run (413).
    Each entry's length as JSON escapes it to ASCII, the most the client sends for it. The whole list is refused,
    nothing sent, when an entry is too long for a call of its own (the calls before it were sent, then the 413:
    a re-tester's)."""
    calls: list[list[Entry]] = []
    # A quarter of a small limit for the other fields (8,192 bytes of a limit of 8,192 sent a URL a call).
    room = None if max_body_bytes is None else max(max_body_bytes - min(BODY_ROOM, max_body_bytes // 4), 1)
    costs = [len(json.dumps(entry.text)) + 2 for entry in entries]  # and its ", " (httpx before 0.28 writes it)
    if room is not None and (bad := [f"{e}: {c} bytes" for e, c in zip(entries, costs, strict=True) if c > room]):
        raise click.ClickException(
            f"{len(bad)} of the entries cannot be sent, nothing was: longer than a call may be (the server takes "
            f"{max_body_bytes} bytes a call, {room} of them for the entries){first_few(bad)}"
        )
    used = 0
    for entry, cost in zip(entries, costs, strict=True):
        if not calls or len(calls[-1]) >= size or (room is not None and used + cost > room):
            calls.append([])
            used = 0
        calls[-1].append(entry)
        used += cost
    return calls


def send_in_calls(
    client: Client, calls: list[list[Entry]], send: Callable[[list[str]], str], wait: bool, patience: float
) -> None:
    """One task per call, each id printed as soon as its call made it (a pipe, or a process killed later,
    has it). A call refused, one without an answer, Ctrl-C or SIGTERM stops the sending, saying which entries
    made tasks, which may have (the call under way), and from which on none was sent. With `wait`, follow the
    tasks and exit 1 if any failed."""
    taskids: list[str] = []
    started = time.time()
    try:
        for chunk in calls:
            started = time.time()
            taskids.append(send([entry.text for entry in chunk]))
            try:
                click.echo(taskids[-1])
            except OSError as exc:  # `… | head -1`, `> /dev/full`: no more calls; the ids made said here
                closed = isinstance(exc, BrokenPipeError)
                if closed:
                    stdout_closed()
                why = "was closed (its reader ended)" if closed else f"could not be written ({exc.strerror})"
                said = _where(calls, len(taskids), Stop.CUT, printed=False)
                click.echo(
                    f"Error: the output {why}, so no more calls were made; the tasks made: {' '.join(taskids)} (the "
                    f"last not printed) ({said})",
                    err=True,
                )
                raise SystemExit(STDOUT_CLOSED if closed else 1) from None
    except ClientError as exc:
        call = calls[len(taskids)]
        if len(calls) == 1 and not exc.maybe_done:
            raise fail(exc, call) from None
        if not exc.maybe_done:
            stop = Stop.REFUSED
        else:
            stop = Stop.CUT if _found_made(client, calls[len(taskids)], started, taskids) else Stop.UNDER_WAY
        raise click.ClickException(f"{fail(exc, call).message} ({_where(calls, len(taskids), stop)})") from None
    except (KeyboardInterrupt, Terminated) as stop:  # SIGTERM is Terminated while a command runs (main.py)
        client.after_an_interrupt()
        # The call cut had most likely made its task (the calls are nearly all of a submit's time): looked for.
        if len(taskids) < len(calls):
            click.echo(
                f"interrupted: looking for the task of the call cut ({FIND_SECONDS:g} s at most; again to stop)",
                err=True,
            )
        cut = len(taskids) == len(calls) or _found_made(client, calls[len(taskids)], started, taskids)
        click.echo(f"interrupted: {_where(calls, len(taskids), Stop.CUT if cut else Stop.UNDER_WAY)}", err=True)
        raise SystemExit(130 if isinstance(stop, KeyboardInterrupt) else 143) from None
    if wait:  # the task ids alone on stdout (for `watch $(…)`, say): the progress and the summary on stderr
        follow_to_the_end(client, taskids, patience=patience, console=output_console(stderr=True))


FIND_SECONDS = 5.0  # the task a call cut by an interrupt may have made is looked for this long (_found_made)
CLOCK_SLACK_SECONDS = 5.0  # a task of the call is one created at most this long before it began (clocks differ)


def _found_made(client: Client, chunk: list[Entry], started: float, taskids: list[str]) -> bool:
    """Whether the task the call of `chunk` (begun at `started`, time.time()) made after all was found among
    the user's newest ones (its first URL the call's): its id then printed and added to `taskids`. Looked for
    for FIND_SECONDS at most (the server may still be writing it); another interrupt ends the look. The ids
    printed before held every task made but this one's (a tester's Ctrl-C left 4 times of 4 a task no id named)."""
    deadline = time.monotonic() + FIND_SECONDS
    try:
        with client.timeout_of(FIND_SECONDS):  # each call too: 30 s of a frozen server's made the look 34 s
            return _look_for_it(client, chunk, started, taskids, deadline)
    except (KeyboardInterrupt, Terminated):
        client.after_an_interrupt()
        return False


def _look_for_it(client: Client, chunk: list[Entry], started: float, taskids: list[str], deadline: float) -> bool:
    """_found_made's look, until `deadline` (time.monotonic())."""
    while True:
        try:
            listed = client.tasks(since=f"{started - CLOCK_SLACK_SECONDS:.3f}", limit=20)["tasks"]
            for summary in listed:
                if summary["taskid"] in taskids:
                    continue
                items = client.task(summary["taskid"], limit=1)["items"]
                if items and items[0]["url"] == chunk[0].text:
                    taskids.append(summary["taskid"])
                    click.echo(summary["taskid"])
                    return True
        except (ClientError, KeyError, TypeError):
            pass
        if time.monotonic() > deadline:
            return False
        time.sleep(0.5)


class Stop(enum.Enum):
    """How a sending of calls stopped after the calls that made tasks."""

    REFUSED = "refused"  # the next call was answered with a refusal
    UNDER_WAY = "under way"  # the next call had no answer: it may have made a task
    CUT = "cut"  # an interrupt between calls (or the call cut was found to have made its task): the next not sent


def _where(calls: list[list[Entry]], made: int, stop: Stop, *, printed: bool = True) -> str:
    """Where a sending stopped: the calls that made tasks, the one that may have (UNDER_WAY: no answer came)
    or was refused, and the first entry that made none (where it was given, and itself). Entries are named by
    where they were given (entries.span): with duplicates left out, a call's span may hold lines it did not send.
    `printed`: the tasks' ids were printed above (not when the output was closed)."""
    flat = [entry for chunk in calls for entry in chunk]
    done = sum(len(chunk) for chunk in calls[:made])
    above = " (ids above)" if printed else ""
    told = [f"{made} of {len(calls)} calls made tasks{above}: {span(flat[0], flat[done - 1])}" if made
            else "no call made a task"]  # fmt: skip
    if made == len(calls):
        return told[0]
    if stop is Stop.UNDER_WAY:
        end = done + len(calls[made])
        told.append(f"call {made + 1} ({span(flat[done], flat[end - 1])}) may have made one: `edgewarm tasks` lists it")
        done = end
    elif stop is Stop.REFUSED:
        told.append(f"call {made + 1} was refused")
    if done < len(flat):
        fate = "no task made" if stop is Stop.REFUSED else "not sent"
        told.append(f"{fate}: {span(flat[done], flat[-1])}, from {shortened(flat[done].text)} on")
    return "; ".join(told)


def follow_to_the_end(
    client: Client, taskids: list[str], *, interval: float = 0.5, patience: float, console: Console | None = None
) -> NoReturn:
    """Follow the tasks until they end; exit 0 if all succeeded, 1 if not; a failed call is one error line. An
    interrupt says the tasks go on (a tester's user took "interrupted" for them cancelled)."""
    try:
        raise SystemExit(follow(client, taskids, interval=interval, patience=patience, console=console))
    except ClientError as exc:
        raise fail(exc) from None
    except (KeyboardInterrupt, Terminated) as stop:
        client.after_an_interrupt()
        again = (
            f"`edgewarm watch {' '.join(taskids)}`"
            if len(taskids) <= 3
            else f"`edgewarm watch` with the {len(taskids)} ids"
        )
        click.echo(
            f"interrupted: the tasks go on in the service ({again} follows them again, `edgewarm cancel TASKID...` "
            "stops them)",
            err=True,
        )
        raise SystemExit(130 if isinstance(stop, KeyboardInterrupt) else 143) from None


def fail(exc: ClientError, call: list[Entry] | None = None) -> click.ClickException:
    """`exc` said as the CLI's error; `call`: the entries of the call refused, when it sent some."""
    if exc.http_status == 413 and call is not None and len(call) == 1:  # fewer per call cannot help
        return click.ClickException(
            f"{exc.message} (HTTP 413): the call held one entry alone, of {len(call[0].text)} characters: the "
            "server, or a proxy in front, takes no call that large"
        )
    if exc.http_status == 413:  # not a JD refusal: the call was larger than the server takes
        return click.ClickException(f"{exc.message} (HTTP 413): send fewer URLs per call (--per-call)")
    if exc.code == JdCode.INTERNAL:  # no answer, none of edgewarm's, or its internal error: said as it is
        return click.ClickException(exc.message)
    if exc.code == JdCode.SIGNATURE_INCORRECT and (zone := _SERVER_DAYS.search(exc.message)) is not None:
        # The server signs another day than this client: said, but not where this client's day comes from (an
        # operator's server in UTC, the client on its default, Asia/Shanghai).
        hint = (
            f' (this client signs the day of its time zone: set timezone = "{zone.group(1)}" in its client config, '
            f"or EDGEWARM_TIMEZONE={zone.group(1)})"
        )
        return click.ClickException(f"JD code {exc.code}: {exc.message}{hint}")
    return click.ClickException(f"JD code {exc.code}: {exc.message}")


_SERVER_DAYS = re.compile(r"\(days in ([^)]+)\)")


def _entries_to_send(args: tuple[str, ...], file: str | None) -> list[Entry]:
    """`read_entries`; the command ends there, exit 0, when `--file -` read none (said on stderr)."""
    try:
        return read_entries(args, file)
    except NothingToSend as nothing:
        click.echo(str(nothing), err=True)
        raise SystemExit(0) from None


@main.command()
@click.argument("urls", nargs=-1)
@click.option("--file", "-f", type=str, help="read URLs from this file, one per line (- for stdin)")
@click.option("--per-call", default=None, type=POSITIVE, help="URLs per API call [default: your limit, from /v1/quota]")
@click.option("--refresh-first", is_flag=True, help="purge each URL on a node before warming it there")
@click.option("--callback-url", help="POST the task summary here when it ends (host must be allowed)")
@click.option("--wait", "wait_", is_flag=True, help="follow the tasks until they end; exit 1 if any failed")
@PATIENCE_OPTION
@connection_options
def submit(
    urls: tuple[str, ...],
    file: str | None,
    per_call: int | None,
    refresh_first: bool,
    callback_url: str | None,
    wait_: bool,
    patience: float,
    server: str | None,
    username: str | None,
    secret: str | None,
    client_config: str,
) -> None:
    """Prefetch (warm) URLs: split into calls of --per-call, print one task id per line."""
    entries = _entries_to_send(urls, file)
    with make_client(server, username, secret, client_config) as client:
        send_in_calls(
            client,
            plan_calls(client, entries, per_call),
            lambda chunk: client.prefetch(chunk, refresh=refresh_first, callback_url=callback_url),
            wait_,
            patience,
        )


@main.command()
@click.argument("entries", nargs=-1)
@click.option("--file", "-f", type=str, help="read URLs or directories from this file (- for stdin)")
@click.option("--dir", "directories", is_flag=True, help="entries are directories (ending with '/')")
@click.option("--per-call", default=None, type=POSITIVE, help="entries per call [default: your limit, from /v1/quota]")
@click.option("--wait", "wait_", is_flag=True, help="follow the tasks until they end; exit 1 if any failed")
@PATIENCE_OPTION
@connection_options
def refresh(
    entries: tuple[str, ...],
    file: str | None,
    directories: bool,
    per_call: int | None,
    wait_: bool,
    patience: float,
    server: str | None,
    username: str | None,
    secret: str | None,
    client_config: str,
) -> None:
    """Refresh (purge) files or directories on every node; print one task id per line."""
    items = _entries_to_send(entries, file)
    with make_client(server, username, secret, client_config) as client:
        calls = plan_calls(client, items, per_call, directories)
        send_in_calls(client, calls, lambda chunk: client.refresh(chunk, directories=directories), wait_, patience)


@main.command()
@click.argument("taskids", nargs=-1, required=True)
@click.option(
    "--interval",
    default=0.5,
    show_default=True,
    type=click.FloatRange(min=0, min_open=True),
    help="seconds between updates of the bars (into a pipe or a file: a line every 10 s, or this if longer)",
)
@PATIENCE_OPTION
@connection_options
def watch(
    taskids: tuple[str, ...],
    interval: float,
    patience: float,
    server: str | None,
    username: str | None,
    secret: str | None,
    client_config: str,
) -> None:
    """Live progress per task and per node, then a summary; exit 0 if all succeeded, 1 if not."""
    with make_client(server, username, secret, client_config) as client:
        follow_to_the_end(client, list(taskids), interval=interval, patience=patience)


@main.command()
@click.argument("taskid")
@connection_options
def query(taskid: str, server: str | None, username: str | None, secret: str | None, client_config: str) -> None:
    """Print JD's answer for a task (prefetchQuery, or refreshQuery for a refresh task)."""
    with make_client(server, username, secret, client_config) as client:
        try:
            data = client.query(taskid)
        except ClientError as exc:
            if exc.code != 1:
                raise fail(exc) from None
            try:
                data = client.query(taskid, refresh=True)
            except ClientError as again:
                raise fail(again) from None
        # As the wire has it: compact, UTF-8 (a tester compared bytes and found spaces after ':' and ',').
        click.echo(json.dumps({"status": 0, "data": data}, ensure_ascii=False, separators=(",", ":")))


@main.command()
@click.option("--status", type=click.Choice(["0", "1", "2"]), help="0 succeeded, 1 in progress, 2 failed")
@click.option("--kind", type=click.Choice(["prefetch", "refresh"]))
@click.option(
    "--since",
    help="created at or after: ISO 8601 (UTC without a zone; a date alone is the service's day, its [api] timezone) "
    "or epoch seconds",
)
@click.option("--until", help="created before (as --since)")
@click.option("--url", help="only tasks with a URL containing this")
@click.option("--limit", default=50, show_default=True, type=click.IntRange(1, 1000), help="at most this many tasks")
@click.option("--after", help="the tasks after a page: its cursor, as the last listing printed it (stable)")
@click.option(
    "--offset", default=0, show_default=True, type=click.IntRange(min=0), help="skip this many tasks (not with --after)"
)
@click.option("--json", "as_json", is_flag=True, help="print JSON instead of a table")
@connection_options
def tasks(
    status: str | None,
    kind: str | None,
    since: str | None,
    until: str | None,
    url: str | None,
    limit: int,
    after: str | None,
    offset: int,
    as_json: bool,
    server: str | None,
    username: str | None,
    secret: str | None,
    client_config: str,
) -> None:
    """List your tasks, newest first. A page with more after it ends by saying how to list them (`--after CURSOR`:
    each task once while tasks are submitted or deleted between the calls, where --offset would list one twice
    or skip one)."""
    with make_client(server, username, secret, client_config) as client:
        try:
            found = client.tasks(
                status=status, kind=kind, since=since, until=until, url=url, limit=limit, after=after, offset=offset
            )
        except ClientError as exc:
            raise fail(exc) from None
    if as_json:
        click.echo(json.dumps(found, ensure_ascii=False))
        return
    if not found["tasks"]:
        where = " after this cursor" if after else " from this offset" if offset else " match"
        click.echo(f"no tasks{where} (edgewarm tasks --help)", err=True)
        return
    output_console().print(tasks_table(found["tasks"]))
    if found.get("next"):  # an older server's answer has none
        given = {"--status": status, "--kind": kind, "--since": since, "--until": until, "--url": url}
        # Whom it was asked of, when said by flags (the variables hold for the next command too): a newcomer's
        # copy of it without its --client-config read the default one. Never the secret.
        source = click.get_current_context().get_parameter_source
        asked = (
            ("--server", "server", server),
            ("-u", "username", username),
            ("--client-config", "client_config", client_config),
        )
        given |= {flag: value for flag, name, value in asked if source(name) is click.core.ParameterSource.COMMANDLINE}
        if (address := given.get("--server")) is not None:  # its password shown (a reviewer's)
            given["--server"] = password_masked(address)
        again = "".join(f" {flag} {shlex.quote(value)}" for flag, value in given.items() if value is not None)
        click.echo(f"more: edgewarm tasks{again} --limit {limit} --after {found['next']}", err=True)


def tasks_table(summaries: list[dict[str, Any]]) -> Table:
    """Tasks' summaries (as `GET /v1/tasks` lists them) as a table: the id whole on any width (it is what `watch`
    and `cancel` take); the other columns fold."""
    from rich.table import Column, Table

    table = Table(Column("taskid", min_width=36, no_wrap=True))
    for name in ("kind", "status", "created", "total", "succeeded", "failed", "duration"):
        table.add_column(name, overflow="fold")
    for t in summaries:
        table.add_row(
            *cells(
                t["taskid"],
                t["kind"],
                status_text(t),
                t["created_at"],
                str(t["total"]),
                str(t["succeeded"]),
                str(t["failed"]),
                "" if t["duration_seconds"] is None else f"{t['duration_seconds']}s",
            )
        )
    return table


@main.command()
@click.argument("taskids", nargs=-1, required=True)
@connection_options
def cancel(
    taskids: tuple[str, ...], server: str | None, username: str | None, secret: str | None, client_config: str
) -> None:
    """Cancel tasks: their pending items stop and each ends as failed ("cancelled"). A line per task; exit 1 when
    one was not cancelled (not found, ended already: said on its line), the others cancelled all the same."""
    missed = 0
    with make_client(server, username, secret, client_config) as client:
        for taskid in distinct_task_ids(taskids):
            try:
                if normalize_task_id(taskid) is None:  # `.` or `` is no id: its path was another route's
                    raise ClientError(JdCode.FAILURE, "task not found", 404)
                view = client.cancel(taskid)
            except ClientError as exc:
                if not (exc.task_not_found or exc.http_status == 409):  # the call failed: the next would too
                    raise fail(exc) from None
                missed += 1
                click.echo(f"{taskid}: not cancelled: {exc.message}")
                continue
            click.echo(f"{view['taskid']}: {view['msg']} ({view['reason']})")
    raise SystemExit(1 if missed else 0)


@main.command()
@click.argument("taskids", nargs=-1, required=True)
@click.option(
    "--why",
    is_flag=True,
    help="a line per failed item: task, node, action, URL, HTTP status, attempts, error (tab-separated)",
)
@connection_options
def failed(
    taskids: tuple[str, ...],
    why: bool,
    server: str | None,
    username: str | None,
    secret: str | None,
    client_config: str,
) -> None:
    """Every failed URL of the tasks, one a line, each once, to send again (`edgewarm failed TASKID | edgewarm
    submit -f -`); the count on stderr. Exit 1 when a task was not found (said; the others listed)."""
    with make_client(server, username, secret, client_config) as client:
        try:
            raise SystemExit(list_failures(client, taskids, why))
        except ClientError as exc:
            raise fail(exc) from None


@main.command()
@connection_options
def quota(server: str | None, username: str | None, secret: str | None, client_config: str) -> None:
    """Today's quota: used and left."""
    with make_client(server, username, secret, client_config) as client:
        try:
            click.echo(json.dumps(client.quota()))
        except ClientError as exc:
            raise fail(exc) from None


@main.command()
@user_options
@click.option("--date", "day", help="yyyymmdd [default: today in --timezone]")
@click.option(
    "--timezone",
    callback=check_timezone,
    help=f"the signature's day [default: the client config's, or {auth.DEFAULT_TIMEZONE}]",
)
def sign(username: str | None, secret: str | None, client_config: str, day: str | None, timezone: str | None) -> None:
    """Print the JD signature md5(yyyymmdd + username + secret), for curl users."""
    found = read_credentials(None, username, secret, client_config)
    username, secret, timezone = found.username, found.secret, timezone or found.timezone
    if day is None:
        on = auth.today(datetime.now().astimezone(), timezone)
    else:
        try:
            on = datetime.strptime(day, "%Y%m%d").date()
        except ValueError:
            raise click.BadParameter("use yyyymmdd", param_hint="--date") from None
    click.echo(auth.sign(username, secret, on))
