"""The one interface every store back-end implements. The engine and the API see nothing else."""

from __future__ import annotations

import asyncio
import bisect
import contextlib
import enum
import time
from collections.abc import AsyncIterator, Awaitable, Callable, Generator, Mapping, Sequence
from contextlib import AbstractAsyncContextManager
from dataclasses import dataclass
from types import TracebackType
from typing import Protocol, Self, TypeVar

from ..errors import LIST_SECONDS, ListTooLong, RequestRefused, SchemaVersionError
from ..models import (
    WARMED_AGAIN,
    Cancel,
    Claim,
    Item,
    ItemAction,
    ItemOutcome,
    ItemState,
    NewTask,
    Released,
    Task,
    TaskCounts,
    TaskDetail,
    TaskFilter,
)
from ..urls import escape_cases, escapes_upper, stored_target

SCHEMA_VERSION = 9
# Beyond the longest retry, hold or lease: only a wall clock stepped back puts work there (bring_forward).
DUE_SLACK_SECONDS = 60.0
# The tables the first migration creates. Found in a database without edgewarm's schema version, they are
# another application's: creating the schema there would fail half-way or mix the two.
SCHEMA_TABLES = ("meta", "tasks", "items", "usage")
# A claim that skips nodes scans each user's due items in windows of this many (at least its limit), at most
# CLAIM_WINDOWS of them, and the worker's next such claim goes on from where it stopped (ClaimScans): a
# skipped node's backlog is scanned once, not on every claim, and never in one long step.
CLAIM_SCAN = 10_000
CLAIM_WINDOWS = 8
# A worker's scans start from the first due item again after this long: an item another process made due
# with a clock behind this one's (before where the scan goes on) waits no longer than that.
RESCAN_SECONDS = 5.0

ScanPoint = tuple[float, int]  # (due_at, item id): the order in which claims scan due items
FIRST: ScanPoint = (float("-inf"), 0)
# The user of items written before schema version 5 (or by an older process since), which name none: they are
# claimed as one more user's. No user's name is empty (config.User).
UNNAMED = ""
# A claim asks the users with due items for their shares this many times at most (FairClaims): a user that
# gave all it was asked may have more, which the next round takes if the others had less.
FAIR_ROUNDS = 4


# STAGE_GATE, the rule both stores keep for a URL's stages (tiers, then steps: a shield's purge and warm, then
# the edges'): an item is released once every earlier item of its URL on an earlier tier (a node with no item
# at its stage) and on its own node has ended; another node of its tier holds it back in nothing (an edge that
# is down, its purge waiting for it, kept the other edges purged and cold). A waiting item fails, unsent,
# when an earlier item failed on its own node (its purge, say), at once; or on a node that has no item at its
# stage, i.e. of an earlier tier (a shield: the edges would fill from it), and then every waiting item of the
# URL fails. Another node's failure in its own tier stops nothing else (one edge that cannot purge leaves the
# other edges purged and warmed again). A failed warm stops no later purge: a shield purged and not warmed again
# (its origin answered 404, say) holds nothing the edges could refill from, so they are purged (their warms are
# not attempted).
NOT_ATTEMPTED = "not attempted: this URL failed first on "
MAX_STAGES = 16  # bounds the passes over a URL's stages (2 tiers x 2 steps at most today)

# PURGE_FIRST, the rule both stores keep across tasks (stages order a URL's items only within its task): a warm
# of (URL, node) is not worked while a purge of that object on that node (the URL in any spelling that is one
# object to the node; a directory's purge at or over it, as the engine's purge reaches it) of an earlier task
# (a smaller item id: ids grow with submissions) is open: waiting, pending or running. A claim hands such warms
# back unsent, no attempt spent, due DEFER_SECONDS later (a cap: they are not claimed again and again while a
# long directory purge runs), saying why in their error, and marks each with the purge it waits for
# (`waits_for`): once that purge ends (its outcome, a cancel, a failed stage), they are due at once. Never the
# other way: a purge waits only for warms under way (the engine's), and a later purge holds back no earlier
# warm, so the two never wait for each other.
DEFER_SECONDS = 60.0
# A claim that handed warms back claims again in their place, this many times at most: a long run of blocked
# warms costs a claim a bounded amount of work, and each is looked at once per DEFER_SECONDS.
DEFER_ROUNDS = 4
OPEN_STATES = "('waiting', 'pending', 'running')"
# Items one retention transaction removes at most, beyond its first task's: 200 tasks of 30,000 items each (a
# bulk user's calls of 10,000 URLs on 3 nodes) were one transaction, and submissions waited 10 s behind it on
# SQLite (a tester's).
RETENTION_ITEMS = 50_000
PURGE_KEY_CHARS = 1024  # of a purge's key (purge_key): PostgreSQL's index holds at most 2,704 bytes a key


class ListTurns:
    """Task lists (a `url` keyword is looked for in every URL of the tasks read: up to LIST_SECONDS) read one of a
    user's at a time in this process, and at most `slots` at once of all users': a user's many lists at once held
    every other user's call (on PostgreSQL each took one of the pool's connections: a tester's 300 lists kept
    another user's quota waiting 36 s; on SQLite, the list threads). Each within its `seconds` (LIST_SECONDS) of
    its call, the wait for its turn counted: one whose turn did not come in time is refused unread (ListTooLong,
    waited)."""

    def __init__(self, slots: int | None = None) -> None:
        self._users: dict[str, asyncio.Lock] = {}  # the configured users who listed: bounded
        self._slots = None if slots is None else asyncio.Semaphore(slots)

    @contextlib.asynccontextmanager
    async def turn(self, username: str, seconds: float = LIST_SECONDS) -> AsyncIterator[float]:
        """Hold a turn of `username`'s; yields its deadline (time.monotonic()) for the list's read."""
        deadline = time.monotonic() + seconds
        mine = self._users.setdefault(username, asyncio.Lock())
        async with contextlib.AsyncExitStack() as held:
            others = False  # whether it waits behind the other users' lists (its own before it are read)
            try:
                async with asyncio.timeout(seconds):
                    await held.enter_async_context(mine)
                    if self._slots is not None:
                        others = True
                        await held.enter_async_context(self._slots)
            except TimeoutError:
                raise ListTooLong(seconds, waited=True, behind_others=others) from None
            yield deadline


def list_stopped(deadline: float, read_from: float, seconds: float = LIST_SECONDS) -> ListTooLong:
    """The refusal of a list whose read, begun at `read_from`, was stopped at its `deadline`: it says how long it
    waited for its turn when that took half its time or more (a re-tester's lists of 0.05 s each were told only
    to narrow themselves)."""
    return ListTooLong(seconds, waiting=read_from - (deadline - seconds))


@dataclass(frozen=True, slots=True)
class OpenPurge:
    """An open purge item that may hold back later tasks' warms (PURGE_FIRST)."""

    item_id: int
    task_id: str
    node: str
    url: str
    action: ItemAction
    user: str | None = None  # its task's (None: written before schema version 5)


def purge_key(url: str, action: ItemAction) -> str | None:
    """What a purge item is found by (the stores keep it with a purge, None with a warm): the object it purges as
    its node holds it, whatever its URL's spelling (`_object_of`: the host's case, a final dot, a default port,
    the scheme and the escapes' case do not count), its first PURGE_KEY_CHARS characters (an index key holds that
    much; the purges found are checked whole, `blocking_purges`)."""
    key = None if action is ItemAction.WARM else _object_of(url)
    return None if key is None else key[:PURGE_KEY_CHARS]


def purge_keys(claims: Sequence[Claim]) -> list[tuple[str, str]]:
    """(node, purge key) of the claimed warms: where the stores look for open file purges of them (their index
    holds the open purges by action, node and purge key). A warm whose escapes hold letters is looked for by its
    key in each case of them (upper: the key now; lower, and as written): an open purge an earlier edgewarm
    stored keeps its key as its URL was written (a re-tester's `%c3%a9`, open across the upgrade, held back no
    warm of `%C3%A9`). (One written in mixed case is found by a warm written so.)"""
    keys: set[tuple[str, str]] = set()
    for claim in claims:
        if claim.action is ItemAction.WARM and (written := _node_key(claim.url)) is not None:
            keys.update((claim.node, key[:PURGE_KEY_CHARS]) for key in escape_cases(written))
    return sorted(keys)


def warm_nodes(claims: Sequence[Claim]) -> list[str]:
    """The nodes of the claimed warms: where the stores look for open directory purges."""
    return sorted({claim.node for claim in claims if claim.action is ItemAction.WARM})


def blocking_purges(claims: Sequence[Claim], purges: Sequence[OpenPurge]) -> dict[int, OpenPurge]:
    """Of `claims`, the warms an open purge among `purges` holds back (PURGE_FIRST): item id -> the earliest.
    Each purge's object is read once, and a warm's purges are found by its object and the directories over it
    (each cut of its key after a '/'): not by every open purge of its node for every warm (1,000 open directory
    purges made a prefetch of 20,000 URLs 3 times slower: a re-tester's)."""
    files: dict[tuple[str, str], list[OpenPurge]] = {}  # by (node, object)
    dirs: dict[tuple[str, str], list[OpenPurge]] = {}  # by (node, the directory's object, ending in '/')
    other_dirs: list[tuple[OpenPurge, str]] = []  # a directory's object not ending in '/' (not one the API takes)
    for purge in purges:
        key = _object_of(purge.url)
        if key is None:
            continue
        if purge.action is ItemAction.PURGE:
            files.setdefault((purge.node, key), []).append(purge)
        elif key.endswith("/"):
            dirs.setdefault((purge.node, key), []).append(purge)
        else:
            other_dirs.append((purge, key))
    nodes = {purge.node for purge in purges}
    blocked: dict[int, OpenPurge] = {}
    for claim in claims:
        if claim.action is not ItemAction.WARM or claim.node not in nodes:  # the usual claim: no purge open
            continue
        key = _object_of(claim.url)
        if key is None:
            continue
        found = list(files.get((claim.node, key), ()))
        if dirs or other_dirs:
            cut = key.find("/")
            while cut >= 0:
                found += dirs.get((claim.node, key[: cut + 1]), ())
                cut = key.find("/", cut + 1)
            found += [p for p, dir_key in other_dirs if p.node == claim.node and key.startswith(dir_key)]
        earlier = [p for p in found if p.item_id < claim.item_id and p.task_id != claim.task_id]
        if earlier:
            blocked[claim.item_id] = min(earlier, key=lambda p: p.item_id)
    return blocked


def _object_of(url: str) -> str | None:
    """The object `url`'s warms and purges are ordered by: what a node holds it under (TargetUrl.node_key) with
    its escapes in upper case, as a purge reaches each case of them (`urls.escape_cases`: a purge of `%c3%a9`
    held back no warm of `%C3%A9`, then removed what it had warmed: a tester's); None for a URL the API would
    refuse, written into the store past it: its item fails without a request (engine), and holds nothing back (a
    planted CRLF URL stopped the engine's claims here)."""
    key = _node_key(url)
    return None if key is None else escapes_upper(key)


def _node_key(url: str) -> str | None:
    """TargetUrl.node_key of `url`; None for a URL the API would refuse (`_object_of`)."""
    try:
        return stored_target(url).node_key
    except RequestRefused:
        return None


def hand_backs(claims: Sequence[Claim], blocked: dict[int, OpenPurge]) -> list[tuple[int, str, int]]:
    """The warms `blocked` holds back (blocking_purges) as the stores hand them back: (warm, its note, the purge it
    waits for). A warm done again keeps saying so (its claim's `rewarm` is read from it: a re-tester's warms done
    again after a move, held back, were counted as items finished twice)."""
    by_id = {claim.item_id: claim for claim in claims}

    def note(item: int, purge: OpenPurge) -> str:
        said = waits_note(purge, by_id[item].user)
        return f"{WARMED_AGAIN} {said}" if by_id[item].rewarm else said

    return [(item, note(item, purge), purge.item_id) for item, purge in blocked.items()]


@dataclass(frozen=True, slots=True)
class ClaimShares:
    """A claim's ask: lease up to `want` due items, shared among the users with items due (answered with them)."""

    want: int


@dataclass(frozen=True, slots=True)
class HandBack:
    """A claim's ask: hand back the warms among `claims` (just leased) that an earlier task's open purge holds
    back (answered with those handed back)."""

    claims: list[Claim]


def purge_first_plan(limit: int) -> Generator[ClaimShares | HandBack, list[Claim], list[Claim]]:
    """A claim of `limit` items as both stores make it (run by `run_plan` or `run_plan_async`): the users' shares,
    less the warms an earlier task's open purge holds back (PURGE_FIRST), others claimed in their place,
    DEFER_ROUNDS times at most."""
    claims = found = yield ClaimShares(limit)
    for round_ in range(1, DEFER_ROUNDS + 1):
        held = {claim.item_id for claim in (yield HandBack(found))}
        if not held:
            break
        claims = [claim for claim in claims if claim.item_id not in held]
        if round_ == DEFER_ROUNDS or len(claims) >= limit:
            break
        found = yield ClaimShares(limit - len(claims))
        claims += found
    return claims


def waits_note(purge: OpenPurge, user: str) -> str:
    """A warm's error while it waits for an earlier task's purge (its item's `error` while pending), seen by the
    warm's `user`: another user's task is not named (its id answers as an unknown one would)."""
    what = "directory refresh" if purge.action is ItemAction.PURGE_DIR else "refresh"
    whose = f"the {what} of task {purge.task_id}" if purge.user == user else f"another user's {what}"
    return (
        f"waits for {whose} on {purge.node}, submitted before: warmed once that purge has ended (else the purge "
        "would remove the copy warmed)"
    )


# Retention removes an ended task only once its webhook, if any, has been delivered or has failed for good.
NO_WEBHOOK_DUE = "(webhook_state IS NULL OR webhook_state <> 'pending')"


def starting_with(prefix: str) -> tuple[str, str]:
    """The strings that start with `prefix` (not empty), in code point (byte) order: [prefix, the next one)."""
    return prefix, prefix[:-1] + chr(ord(prefix[-1]) + 1)


def known_search(prefix: str) -> tuple[str, str, int, str]:
    """known_urls' search for `prefix` (scheme://authority/path…, not empty): the range of URLs lower-cased
    (A-Z only: URLs are ASCII) that start with it in any case, in code point (byte) order (a range of the index
    items_url), and its path, whose case counts (a cache keys `/A/` and `/a/` apart), with the 1-based place
    where it starts in a URL. A path with a letter in an escape is looked for in any case (an empty path from
    place 1: `%c3` is `%C3` to the origin, and `%C3%bc` cannot be guessed; the caller keeps those under it)."""
    cut = prefix.find("/", prefix.find("://") + 3)
    cut = len(prefix) if cut < 0 else cut
    path = prefix[cut:]
    if len(escape_cases(path)) > 1:
        return *starting_with(prefix.lower()), 1, ""
    return *starting_with(prefix.lower()), cut + 1, path


SkipFor = Mapping[str, Sequence[str]]  # user -> nodes a claim leaves out for that user's items (claim_due_items)


# rewarm_node works through each running task this many URL positions (seq) at a time, each step its own
# transaction: a task of 300,000 URLs in one held SQLite's calls 2-5 s (a tester's submissions waited that long)
# and PostgreSQL's task rows 12 s.
REWARM_STEP = 1_000


@dataclass(frozen=True, slots=True)
class Redone:
    """What `rewarm_node` made due again: how many items, and the URLs of the purges among them."""

    count: int
    purged: frozenset[str] = frozenset()


def redone(rows: Sequence[tuple[str, str]]) -> Redone:
    """A step's Redone from the (url, action) of the items it made due again."""
    return Redone(len(rows), frozenset(url for url, action in rows if action != ItemAction.WARM))


async def rewarm_in_steps(
    running: Sequence[tuple[str, int | None]], step: Callable[[str, int, int], Awaitable[Redone | None]]
) -> Redone:
    """`rewarm_node` over the running tasks (id, largest URL position): `step(task, first position, position
    after the last)` for each REWARM_STEP positions of each, added up; None, the task ended (or was cancelled)
    meanwhile: its other steps are left out."""
    count, purged = 0, set[str]()
    for task_id, last in running:
        for start in range(0, (last or 0) + 1, REWARM_STEP):
            done = await step(task_id, start, start + REWARM_STEP)
            if done is None:
                break
            count += done.count
            purged |= done.purged
    return Redone(count, frozenset(purged))


def skipped_for(user: str, skip_nodes: Sequence[str], skip_for: SkipFor | None) -> list[str]:
    """The nodes a claim leaves out for `user`'s items: `skip_nodes`, and those `skip_for` names for the user."""
    own = skip_for.get(user) if skip_for else None
    return [*skip_nodes, *own] if own else list(skip_nodes)


def claim_scan(limit: int, skip_nodes: Sequence[str]) -> int:
    """How many due items one window of a claim of `limit` scans (claim_due_items)."""
    return max(limit, CLAIM_SCAN) if skip_nodes else limit


@dataclass(frozen=True, slots=True)
class Window:
    """One window of a claim: the items leased, how many due items it scanned, the last of them; and the first
    item it found to lease, when it found all it wanted (the due items scanned before it were the skipped
    nodes' own)."""

    claims: list[Claim]
    scanned: int
    last: ScanPoint | None
    first: ScanPoint | None = None


Asked = TypeVar("Asked")
Answer = TypeVar("Answer")
Result = TypeVar("Result")
# A claim's steps as a generator: it yields what it asks the database for and is sent the answers, so that one
# rule serves a store whose steps are calls on its own thread (SQLite: the whole claim in one) and one whose
# steps are awaited (PostgreSQL).
Plan = Generator[Asked, Answer, list[Claim]]
WindowAsk = tuple[int, ScanPoint]  # (want, after): a window of a claim that skips nodes
UserAsk = tuple[str, int]  # (user, want): a user's share of a claim


def run_plan(plan: Generator[Asked, Answer, Result], step: Callable[[Asked], Answer]) -> Result:
    """Run `plan`, answering each ask with `step`."""
    try:
        asked = next(plan)
        while True:
            asked = plan.send(step(asked))
    except StopIteration as done:
        result: Result = done.value
        return result


async def run_plan_async(plan: Generator[Asked, Answer, Result], step: Callable[[Asked], Awaitable[Answer]]) -> Result:
    """Run `plan`, answering each ask with `await step(ask)`."""
    try:
        asked = next(plan)
        while True:
            asked = plan.send(await step(asked))
    except StopIteration as done:
        result: Result = done.value
        return result


@dataclass(frozen=True, slots=True)
class _Passed:
    skipped: frozenset[str]
    after: ScanPoint
    since: float


class ClaimScans:
    """Where each worker's claims that skip nodes go on scanning each user's due items (a scan: one worker's
    of one user's items, named by the caller).

    A window whose claimable items were all leased is passed: the due items up to its last were then the skipped
    nodes' own or leased, and an item made due later (a submission, a retry) is due after it (a lease another worker
    hands back is due at its task's creation: found at the next rescan, RESCAN_SECONDS). So are the due items before
    the first one a window found, when it found all it wanted (the skipped nodes' backlog in front of a user's
    items: else every claim read it again, for every user). A later claim that skips those nodes, or more, starts
    after them; one that skips fewer starts from the first due item (the nodes no longer skipped have items there)."""

    def __init__(self, clock: Callable[[], float] = time.monotonic) -> None:
        self._clock = clock
        self._passed: dict[str, _Passed] = {}

    def plan(self, scan: str, limit: int, skip_nodes: Sequence[str], scans: int = 1) -> Plan[WindowAsk, Window]:
        """Claim up to `limit`, window after window (each asked as (want, after), answered with the Window
        leased): CLAIM_WINDOWS at most, shared among the `scans` (users) of one claim (one each at least), so
        that a claim scans about as much however many users have a skipped node's backlog; each user's next
        claim goes on from where this one stopped. Run by `run_plan` or `run_plan_async`."""
        skipped = frozenset(skip_nodes)
        passed = self._passed.get(scan)
        if passed is not None and (not passed.skipped <= skipped or self._clock() - passed.since > RESCAN_SECONDS):
            passed = None
        since, after = (passed.since, passed.after) if passed is not None else (self._clock(), FIRST)
        claims: list[Claim] = []
        for _ in range(max(1, CLAIM_WINDOWS // scans)):
            want = limit - len(claims)
            found = yield want, after
            claims.extend(found.claims)
            if len(found.claims) < want and found.last is not None:
                after = found.last
                self._passed[scan] = _Passed(skipped, after, since)
            elif found.first is not None and (before := (found.first[0], found.first[1] - 1)) > after:
                self._passed[scan] = _Passed(skipped, before, since)
            if len(claims) >= limit or found.scanned < claim_scan(want, skip_nodes):
                break
        return claims


class FairClaims:
    """Claims shared evenly among the users with due items: each user's items in due order, and each user asked
    for an even share of what is left of the claim, round after round, until the claim is full or every user
    gave all it had (a user with fewer due items leaves its share to the others). So a user's large task, or
    one whose nodes answer slowly, no longer holds back the tasks other users submit after it.

    Users take turns at coming first: a claim begins with the user after the last one it served before (when
    the users outnumber the claim's limit, the ones left out are first next time)."""

    def __init__(self) -> None:
        self._served = ""  # the last user served: the next claim begins with the one after (in name order)

    def plan(self, users: Sequence[str], limit: int) -> Plan[UserAsk, list[Claim]]:
        """Up to `limit` claims from `users`, each asked as (user, want), answered with up to `want` of that
        user's due items, leased. Run by `run_plan` or `run_plan_async`."""
        ordered = sorted(users)
        start = bisect.bisect_right(ordered, self._served)
        active = ordered[start:] + ordered[:start]
        claims: list[Claim] = []
        for _ in range(FAIR_ROUNDS):
            if not active or len(claims) >= limit:
                break
            share = -(-(limit - len(claims)) // len(active))  # rounded up: the claim fills in one round
            more = []  # the users that gave all they were asked: they may have more
            for user in active:
                want = min(share, limit - len(claims))
                if want <= 0:
                    break
                found = yield user, want
                claims.extend(found)
                if found:
                    self._served = user
                if len(found) == want:
                    more.append(user)
            active = more
        return claims


class Opening(enum.Enum):
    """What a store is opened for, which decides what its schema version must be (`schema_to_make`)."""

    SERVICE = "service"  # a service's: an empty database is given the schema; another version is refused
    AS_IS = "as is"  # `edgewarm db upgrade`'s: this version or an older one, upgraded by `upgrade()`
    EXISTING = "existing"  # an operator's command (`edgewarm admin`): a service's store of this version only


def schema_to_make(opening: Opening, version: int, database: str) -> bool:
    """Whether a store opened for `opening`, whose schema is at `version` (0: none), is to be given the schema
    now; raises the refusal, saying what to do, when the version will not do (a newer one never does)."""
    if opening is Opening.AS_IS and version <= SCHEMA_VERSION:
        return False
    if version == 0 and opening is Opening.SERVICE:
        return True
    if version == 0:
        raise no_schema(database)
    if version != SCHEMA_VERSION:
        raise wrong_version(database, version)
    return False


def new_store(database: str) -> str:
    """The log's line when a service made the schema in an empty database: a `store` mistyped starts empty, and
    every task id was then "not found" without a word of why (an operator's)."""
    return (
        f"made a new, empty store in {database} (schema version {SCHEMA_VERSION}): no task of before is in it; "
        "if one was meant to be, check `store`"
    )


# What to run, as the store's errors say it; the CLI puts the config file it was given in FILE's place.
UPGRADE_COMMAND = "edgewarm db upgrade --config FILE"


def wrong_version(database: str, version: int) -> SchemaVersionError:
    """The refusal to work on a database of another schema version, with what to do about it."""
    if version > SCHEMA_VERSION:
        return SchemaVersionError(
            f"database {database} has schema version {version}, newer than this edgewarm's ({SCHEMA_VERSION}): "
            "it was upgraded by a newer edgewarm; run that version (or a later one)"
        )
    return SchemaVersionError(
        f"database {database} has schema version {version}, this edgewarm needs {SCHEMA_VERSION}: "
        f"run `{UPGRADE_COMMAND}`"
    )


def no_schema(database: str) -> SchemaVersionError:
    """The refusal to work on a database without edgewarm's schema (where it is not to be made)."""
    return SchemaVersionError(
        f"database {database} has no edgewarm schema: run `{UPGRADE_COMMAND}` (which says so if the "
        "database is another application's)"
    )


def tables_in_the_way(database: str, found: Sequence[str]) -> SchemaVersionError:
    """The refusal to create edgewarm's schema in `database`, which already has tables of those names; all of
    edgewarm's: its own store, whose version is not told (a tester's `meta` row removed was told to give edgewarm
    a database of its own, as if another application's)."""
    names = ", ".join(sorted(found))
    if set(SCHEMA_TABLES) <= set(found):
        return SchemaVersionError(
            f"database {database} has edgewarm's tables ({names}) but no schema version in its table meta (the "
            "row 'schema_version' missing, or the table made anew): damaged; restore it from a backup"
        )
    return SchemaVersionError(
        f"database {database} has no edgewarm schema but already has tables named {names}: give edgewarm a "
        "database of its own (or, on PostgreSQL, a schema of its own through search_path)"
    )


class TaskStore(Protocol):
    """Durable tasks and items.

    Rules every back-end keeps (the contract suite in tests/ checks them):
    - `create_task` is atomic: quota charged, task and all items written, or nothing at all.
    - An item leased to a worker is recorded only by that worker while its lease holds, so it is never
      counted twice; an expired lease makes the item claimable again.
    - An item runs only after every lower stage of its URL ended; what a failure stops is STAGE_GATE's rule.
    - A warm runs only once no earlier task's purge of its object on its node is open (PURGE_FIRST).
    """

    async def __aenter__(self) -> Self: ...

    async def __aexit__(
        self, exc_type: type[BaseException] | None, exc: BaseException | None, tb: TracebackType | None
    ) -> None: ...

    async def schema_version(self) -> int:
        """The schema's version (0: none)."""
        ...

    async def upgrade(self) -> int:
        """Create or migrate the schema to SCHEMA_VERSION; return the version found before (0: no schema)."""
        ...

    async def create_task(self, task: NewTask) -> Task:
        """Charge the quota and write the task with its items in one transaction (QuotaExceeded if over)."""
        ...

    async def get_task(self, task_id: str, username: str | None = None) -> Task | None:
        """The task, or None when unknown or (with `username`) owned by someone else."""
        ...

    async def task_counts(self, task_id: str) -> TaskCounts: ...

    async def node_counts(self, task_id: str) -> dict[str, TaskCounts]:
        """The task's item counts per node."""
        ...

    async def list_tasks(self, username: str, where: TaskFilter) -> list[Task]:
        """The user's tasks, newest first, then by id (byte by byte); `where.after`: those listed after a place."""
        ...

    async def get_tasks(self, username: str, task_ids: Sequence[str]) -> list[Task]:
        """Those of `task_ids` that exist and belong to `username`."""
        ...

    async def cancel_task(self, task_id: str, username: str | None, now: float) -> Cancel | None:
        """Fail the task's waiting and pending items with "cancelled"; running ones finish. The task ends as
        failed with reason "cancelled" (at once when nothing runs), cancelled by its user (`username`) or, with
        None, the operator, whoever's it is. The first cancel of a running task says who, and is told it was the
        first; a task ended already is left as it is. None when not found or not the user's."""
        ...

    async def cancelled_tasks(self, task_ids: Sequence[str]) -> set[str]:
        """Those of `task_ids` that were cancelled (the engine sends none of their items it still holds)."""
        ...

    async def list_items(self, task_id: str, *, offset: int = 0, limit: int = 1000) -> list[Item]: ...

    async def task_detail(
        self, task_id: str, *, offset: int = 0, limit: int = 1000, state: ItemState | None = None
    ) -> TaskDetail | None:
        """The task, its counts per node and a page of its items (those in `state`, if given), read at one
        moment (None: unknown)."""
        ...

    async def usage(self, username: str, day: str) -> tuple[int, int]:
        """(URLs, directories) charged to `username` on `day`."""
        ...

    async def claim_due_items(
        self,
        worker: str,
        limit: int,
        now: float,
        lease_seconds: float,
        skip_nodes: Sequence[str] = (),
        skip_for: SkipFor | None = None,
    ) -> list[Claim]:
        """Lease up to `limit` due items (pending, or running with an expired lease) to `worker`, shared
        evenly among the users whose items they are (`FairClaims`), each user's in due order, none of
        `skip_nodes` (nodes the worker has enough of in hand), nor of the nodes `skip_for` names for a user
        among that user's (nodes the worker holds enough of that user's items for). Each claim names its user.
        Only the users with items due are asked. Skipping, each user's due items are scanned a window at a time
        (`ClaimScans`): a long backlog of the skipped nodes is passed in steps, once, and the other nodes' items
        behind it are found. The warms an earlier task's open purge holds back are handed back, not returned
        (PURGE_FIRST), and others claimed in their place (DEFER_ROUNDS)."""
        ...

    async def put_off_node(self, node: str, until: float, note: str) -> int:
        """Make the pending items of `node` due before `until` due at `until`, with `note` as their error (why
        they wait: the node is held down). Leased items are left alone. A large backlog is put off in steps
        between which the store answers other calls. Returns how many were put off."""
        ...

    async def bring_node_forward(self, node: str, now: float) -> int:
        """Make the pending items of `node` due after `now` (put off while it was held down, or waiting for a
        retry) due at `now`: a reload moved or removed the node, or cut node_down_wait. Returns how many."""
        ...

    async def rewarm_node(
        self, node: str, ended_before: float, now: float, note: str, attempts_below: int, *, purges: bool = False
    ) -> Redone:
        """Make the warms of `node` that succeeded before `ended_before` with fewer than `attempts_below` attempts,
        in tasks still running (not cancelled), pending and due at `now` again, with `note` as their error (why:
        the node came back after a hold, maybe empty; or was moved to another address); with `purges`, the
        purges of the refresh tasks too (not a prefetch's: its warm of the URL may be under way); their tasks'
        succeeded counters go down by as many. Each warm again is one more attempt of the item's: a node that
        keeps restarting has each item warmed again a bounded number of times. In steps (REWARM_STEP) between
        which the store answers other calls; a task that ends meanwhile is left alone from then on. Returns how
        many, and the URLs of the purges among them."""
        ...

    async def renew_leases(self, worker: str, item_ids: Sequence[int], until: float) -> set[int]:
        """Lease to `until` those of `item_ids` that `worker` holds leased and running; returns their ids (the
        others are no longer its: taken over after their leases ran out, or ended by a cancel)."""
        ...

    async def bring_forward(self, now: float, beyond: float) -> int:
        """Make due at `now` the pending or leased items due later than `beyond` (a time no retry, hold or lease
        reaches: what a wall clock stepped back left far in the future). Returns how many."""
        ...

    async def bring_webhooks_forward(self, now: float, beyond: float) -> int:
        """Make due at `now` the pending webhooks due later than `beyond` (a time no retry or lease of a delivery
        reaches: a wall clock stepped back left them there). Returns how many."""
        ...

    async def others_warms(self, worker: str, nodes: Sequence[str], now: float) -> dict[int, tuple[str, str]]:
        """The warms of `nodes` leased to workers other than `worker` whose leases hold at `now` (being sent, or
        claimed to be): item id -> (node, URL). A purge of what they fetch waits for them (Engine._follow_others)."""
        ...

    async def begin_attempt(self, worker: str, item_id: int, attempts: int) -> bool:
        """Record that `worker` begins attempt number `attempts` of an item it holds (a retaken one: if this
        worker dies too, the attempt is counted). False when the worker no longer holds the item."""
        ...

    async def release_leases(self, worker: str, item_ids: Sequence[int], now: float) -> Released:
        """Give leased items back untouched (graceful shutdown), due again at their task's creation (no later
        than `now`): claims take a user's items by (due_at, id), and due at `now` a user's oldest task went
        behind the ones they submitted after it. Those of a task cancelled meanwhile fail, "cancelled", unsent
        (the tasks that ends are in the answer)."""
        ...

    async def release_all_leases(self, now: float) -> Released:
        """Make every leased item due again, at its task's creation as release_leases (those of tasks cancelled
        meanwhile fail, as release_leases). Only for
        a process that knows it is the sole engine, at its start: those that were under way stay leased, to be
        claimed as retaken (their next attempt recorded before it is sent: an item that kills its engine ends
        after max_attempts), as those of a worker whose lease ran out."""
        ...

    async def record_outcomes(self, worker: str, outcomes: Sequence[ItemOutcome], now: float) -> int:
        """Apply outcomes of items still leased to `worker`; release next stages, and the warms that waited for a
        purge that ended (PURGE_FIRST); finish tasks.

        Returns how many outcomes were applied (the others had lost their lease).
        """
        ...

    async def claim_due_webhooks(self, now: float, limit: int, lease_seconds: float) -> list[Task]:
        """Lease up to `limit` ended tasks whose webhook is due (a lease keeps other deliverers off)."""
        ...

    async def record_webhook(
        self, task_id: str, *, delivered: bool, error: str | None, retry_at: float | None, now: float
    ) -> None:
        """One delivery attempt: delivered, to be retried at `retry_at`, or failed for good (retry_at None)."""
        ...

    async def release_webhooks(self, leases: Sequence[tuple[str, float]], due_at: float) -> int:
        """Make due at `due_at` the webhooks claimed and not sent, given as (task id, the lease's end its claim
        set): a stop hands them back, to be sent at the next start or by another process at once; so does a
        process that has no room for them now. A webhook whose lease ended and was claimed again meanwhile, or
        recorded, is left alone. Returns how many."""
        ...

    async def delete_finished_before(self, cutoff: float, limit: int) -> int:
        """Remove up to `limit` tasks that ended before `cutoff`, with their items, but those whose webhook is
        still to be delivered (NO_WEBHOOK_DUE), and beyond the first no more than RETENTION_ITEMS items in all
        (one transaction); return how many (fewer than `limit` does not mean none is left)."""
        ...

    async def delete_usage_before(self, day: str, limit: int) -> int:
        """Remove up to `limit` rows of the daily quota counters (`usage`) of days before `day` (YYYYMMDD, as
        QuotaCharge.day); return how many."""
        ...

    async def known_urls(self, prefix: str, limit: int) -> list[str]:
        """Distinct URLs of any task's warms and file purges (a directory's purge is no sign of an object cached
        there) that start with `prefix`, ignoring case (a directory refresh on a node without prefix purge
        purges each of them; it keeps those whose cache key is under the directory's: the host in any case, the
        path as it is but its escapes' case). In the order of the URLs lower-cased (A-Z only), then as they are,
        each in code point (byte) order: past `limit`, every store gives the same ones (SQLite gave them in its
        index's order, PostgreSQL in its hash's)."""
        ...

    async def queue_depth(self) -> int:
        """Items pending or running (due or not). StoreError when the store does not answer, or takes no writes:
        its last write was refused (a full disk, a read-only file or database) and a probe write tried now (of
        256 KiB: a small one may fit where others do not) is refused too (/readyz, edgewarm_store_up)."""
        ...

    async def next_due_at(self) -> float | None:
        """When the earliest pending or leased item falls due, if any."""
        ...

    def listen_for_work(self, callback: Callable[[], None]) -> AbstractAsyncContextManager[None]:
        """While the returned context is open, call `callback` soon after another process made work due.

        Another process: a task submitted, a stage released, a retry scheduled or leases handed back there.
        Best effort and optional: a back-end without a notification channel calls nothing, and the engine's
        polling stays the safety net. `callback` runs on the event loop and must not block.
        """
        ...
