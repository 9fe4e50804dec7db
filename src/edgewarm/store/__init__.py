"""Stores: one interface (`TaskStore`), picked by URL scheme; drivers are imported lazily.

- `sqlite:///PATH` (embedded default; `sqlite:///relative.db` or `sqlite:////abs/path.db`)
- `postgresql://user@host:5432/db`
- `memory://` (SQLite in memory: the same rules, nothing on disk; for tests)
"""

from __future__ import annotations

from urllib.parse import urlsplit, urlunsplit

from ..errors import StoreError
from .base import SCHEMA_VERSION, TaskStore

__all__ = ["SCHEMA_VERSION", "TaskStore", "open_store", "redacted", "sqlite_path"]


def redacted(url: str) -> str:
    """The store URL without its password, for logs and messages."""
    parts = urlsplit(url)
    if parts.password is None:
        return url
    netloc = parts.netloc.replace(f":{parts.password}@", ":***@", 1)
    return urlunsplit(parts._replace(netloc=netloc))


def sqlite_path(url: str) -> str | None:
    """The database path of a `sqlite:` or `memory:` URL, else None."""
    if url.startswith("memory:"):
        return ":memory:"
    if url.startswith("sqlite:///"):
        return url.removeprefix("sqlite:///").replace("%20", " ") or None
    if url.startswith("sqlite://"):
        raise StoreError(f"{url!r}: write sqlite:///relative/path.db or sqlite:////absolute/path.db")
    return None


def open_store(url: str, *, auto_upgrade: bool = True) -> TaskStore:
    """A store for `url`, not yet opened: use it as `async with open_store(url) as store:`."""
    path = sqlite_path(url)
    if path is not None:
        from .sqlite import SQLiteStore

        return SQLiteStore(path, auto_upgrade=auto_upgrade)
    if url.startswith(("postgresql:", "postgres:")):
        try:
            from .postgres import PostgresStore  # type: ignore[import-not-found,unused-ignore]
        except ImportError as exc:  # pragma: no cover - the driver is a dependency
            raise StoreError(f"the PostgreSQL back-end is unavailable: {exc}") from exc
        store: TaskStore = PostgresStore(url, auto_upgrade=auto_upgrade)
        return store
    raise StoreError(f"unknown store URL {url!r}: use sqlite:///PATH, postgresql://… or memory://")
