"""Stores: one interface (`TaskStore`), picked by URL scheme; drivers are imported lazily.

- `sqlite:///ABSOLUTE/PATH` (embedded default, as a file URL reads: `sqlite:///var/lib/edgewarm/edgewarm.db` is
  /var/lib/edgewarm/edgewarm.db), or `sqlite:RELATIVE/PATH` (to the working directory)
- `postgresql://user@host:5432/db`
- `memory://` (SQLite in memory: the same rules, nothing on disk; for tests)
"""

from __future__ import annotations

import asyncio
import contextlib
import os
import re
from collections.abc import AsyncIterator
from urllib.parse import quote

from ..errors import StoreError
from ..urls import ascii_digits, password_masked
from .base import SCHEMA_VERSION, UPGRADE_COMMAND, Opening, TaskStore, no_schema

__all__ = [
    "SCHEMA_VERSION",
    "UPGRADE_COMMAND",
    "Opening",
    "TaskStore",
    "database_check",
    "existing_store",
    "make_folder_of",
    "open_store",
    "redacted",
    "sqlite_path",
    "sqlite_uri",
    "store_cautions",
]


STORE_URL_FORMS = "sqlite:///ABSOLUTE/PATH (or sqlite:relative/path), postgresql://… or memory://"


def redacted(url: str) -> str:
    """The store URL (or whatever was given as one: a libpq `host=… password=…` string, say) without its
    passwords, for logs and messages: the user information's (`user:PASSWORD@`, password_masked: read up to the
    last `@`) and the value of any setting whose name holds "pass" (`?password=`, `sslpassword=`)."""
    if "://" not in url:
        return _PASSWORD_KEYWORD.sub(r"\1***", url)
    return _PASSWORD_PARAMETER.sub(r"\1***", password_masked(url))


# A setting named like a password: in a URL's query, its value up to the next `&` that starts another parameter
# (an unencoded `#` or `&` in a password is hidden with it); in a libpq keyword string, up to a space, or quoted
# (with \' inside).
_PASSWORD_PARAMETER = re.compile(r"(?i)(\b[\w.]*pass[\w.]*=)((?:[^&]|&(?![\w.]+=))*)")
_PASSWORD_KEYWORD = re.compile(r"(?i)(\b[\w.]*pass[\w.]*\s*=\s*)('(?:[^'\\]|\\.)*'?|\S*)")


def sqlite_path(url: str) -> str | None:
    """The database path of a `sqlite:` or `memory:` URL, else None (StoreError: a sqlite URL without a path, or
    with a host)."""
    if url.startswith("memory:"):
        return ":memory:"
    if not url.startswith("sqlite:"):
        return None
    rest = url.removeprefix("sqlite:").replace("%20", " ")
    if rest.startswith("///"):
        path = "/" + rest.lstrip("/")  # an absolute path; sqlite:////abs/path.db (four slashes) is the same path
    elif rest.startswith("//") or not rest:
        path = ""
    else:
        path = rest
    if path in ("", "/"):
        raise StoreError(f"{redacted(url)!r}: write sqlite:///absolute/path.db, or sqlite:relative/path.db")
    if "?" in path or "#" in path:
        raise StoreError(
            f"{redacted(url)!r}: a sqlite URL names a file and takes no query (?) or fragment (#): edgewarm sets "
            "SQLite's options itself; a file whose name holds ? or # cannot be named here"
        )
    return path


def sqlite_uri(path: str, query: str) -> str:
    """A `file:` URI for SQLite's URI filenames (to pass options such as `mode=ro`) naming exactly `path`:
    its characters that such a URI reads otherwise (%, ?, #) are percent-encoded."""
    return f"file:{quote(path)}?{query}"


def store_cautions(url: str) -> list[str]:
    """What is unsafe about who may read the SQLite database at `url` (it holds every user's URLs, and callback
    URLs with their tokens), or that it keeps nothing (`memory://`): each in a sentence, as
    config.file_cautions. edgewarm makes the file 0600; one an operator made keeps its mode, and is warned
    about."""
    path = sqlite_path(url)
    if path == ":memory:":  # (README listed it beside the others: a newcomer's tasks were gone after a restart)
        return [
            f"store = {url!r} keeps nothing on disk: every task and today's quota counts are lost when the process "
            "stops (for tests; use sqlite:///PATH)"
        ]
    if path is None:
        return []
    try:
        mode = os.stat(path).st_mode
    except OSError:
        return []
    if not mode & 0o004:
        return []
    return [
        f"the SQLite database {path} can be read by every user of this machine (mode {mode & 0o777:o}), every "
        "user's URLs and callback URLs with their tokens: chmod o-r (and its -wal and -shm)"
    ]


def make_folder_of(path: str) -> None:
    """Create the folder a database file (or its lock) goes in; StoreError saying why it cannot be."""
    folder = os.path.dirname(path) or "."
    try:
        os.makedirs(folder, exist_ok=True)
    except OSError as exc:
        raise StoreError(f"cannot make the folder {folder} for {path}: {exc.strerror or exc}") from None
    if not os.path.isdir(folder):
        raise StoreError(f"cannot use {folder} for {path}: not a folder")


def database_check(url: str) -> tuple[StoreError | None, list[str]]:
    """The refusal a service's start on `url` meets for its SQLite file's state, read without opening it: an
    older edgewarm left the database elsewhere (see _moved_database), the file is cut short, or its -wal is
    there without it, its schema is another version's (sqlite.file_refusal); for PostgreSQL, what a connection
    finds (postgres.database_check: it cannot be made, another schema version or another application's
    tables); or None: `check-config` warns of it. And what the start warns of in the database (a PostgreSQL
    database's encoding); store_cautions has the rest."""
    if url.startswith(("postgresql:", "postgres:")):
        from .postgres import database_check as postgres_check  # type: ignore[import-not-found,unused-ignore]

        found: tuple[StoreError | None, list[str]] = asyncio.run(postgres_check(url))
        return found
    path = sqlite_path(url)
    if path is None or path == ":memory:":
        return None, []
    from .sqlite import file_refusal  # here: sqlite's module imports this one

    return _moved_database(url, path) or file_refusal(path), []


def _moved_database(url: str, path: str) -> StoreError | None:
    """The refusal to start on a new, empty database where an older edgewarm read `sqlite:///PATH` as a path
    relative to the working directory and left its database there: its tasks would look lost."""
    if not url.startswith("sqlite:///") or os.path.exists(path):
        return None
    old = os.path.abspath(path.lstrip("/"))
    if old == path or not os.path.exists(old):
        return None
    return StoreError(
        f"{url!r} is {path}, which does not exist, but {old} does: an older edgewarm read this URL relative to "
        f"the working directory. Move {old} (and its -wal, -shm files) to {path}, or write store = "
        f'"sqlite:{os.path.relpath(old)}" to keep using it where it is'
    )


@contextlib.asynccontextmanager
async def existing_store(url: str) -> AsyncIterator[TaskStore]:
    """The store a service made at `url`, opened for an operator's command (`edgewarm admin`): not made here (a
    SQLite file that is not there is refused, not created), and refused unless its schema is this edgewarm's, as
    a service would refuse it, saying what to do."""
    unopened = open_store(url, opening=Opening.EXISTING)  # refuses a database an older edgewarm left elsewhere
    _made_already(url)
    async with unopened as store:
        yield store


def _made_already(url: str) -> None:
    """StoreError unless the store at `url` may have been made by a service: a SQLite file that is there."""
    path = sqlite_path(url)
    if path == ":memory:":
        raise StoreError(f"{url!r} is the service's own memory: no other process can reach it")
    if path is not None and not os.path.exists(path):
        raise StoreError(f"the SQLite database {path} does not exist: no service has run on it (a typo?)")
    if path is not None and os.path.getsize(path) == 0:  # opened, SQLite would make it a database
        raise no_schema(path)


def open_store(url: str, *, opening: Opening = Opening.SERVICE) -> TaskStore:
    """A store for `url`, not yet opened: use it as `async with open_store(url) as store:`; `opening`: what for
    (base.Opening: a service's, by default)."""
    path = sqlite_path(url)
    if path is not None:
        from .sqlite import SQLiteStore

        if (moved := _moved_database(url, path)) is not None:
            raise moved
        return SQLiteStore(path, opening=opening)
    if url.startswith(("postgresql:", "postgres:")):
        try:
            from .postgres import PostgresStore  # type: ignore[import-not-found,unused-ignore]
        except ImportError as exc:  # pragma: no cover - the driver is a dependency
            raise StoreError(f"the PostgreSQL back-end is unavailable: {exc}") from exc
        store: TaskStore = PostgresStore(url, opening=opening)
        return store
    raise StoreError(f"unknown store URL {redacted(url)!r}: use {STORE_URL_FORMS}")


POOL_SIZE = "pool_size"  # the store URL's own parameter (not the server's): connections each process opens at most
POOL_SIZES = range(2, 1001)


def pool_size_of(url: str) -> tuple[str, int | None]:
    """`url` without its `pool_size` parameter, and its value (None: not given); StoreError when it is not a
    number in POOL_SIZES. The driver would send an unknown parameter to the server as a setting."""
    base, mark, query = url.partition("?")
    pairs = query.split("&") if mark else []
    given = [pair.partition("=")[2] for pair in pairs if pair.partition("=")[0] == POOL_SIZE]
    if not given:
        return url, None
    if len(given) > 1 or not ascii_digits(given[0]) or int(given[0]) not in POOL_SIZES:
        raise StoreError(
            f"the store URL's {POOL_SIZE} must be given once, a number from {POOL_SIZES.start} to "
            f"{POOL_SIZES.stop - 1} (the connections each edgewarm process opens at most)"
        )
    kept = [pair for pair in pairs if pair.partition("=")[0] != POOL_SIZE]
    return base + ("?" + "&".join(kept) if kept else ""), int(given[0])
