"""A throwaway PostgreSQL server on loopback, for tests, benchmarks and the demo.

``PostgresCluster`` runs ``initdb`` in a fresh temporary folder, starts one ``postgres`` in the foreground on a
free ``127.0.0.1`` port (trust authentication, ``fsync=off``: the data is thrown away), waits until it accepts
connections, and stops it by PID::

    with PostgresCluster() as cluster:
        url = cluster.url()                        # postgresql://USER@127.0.0.1:PORT/postgres
        db_url = await cluster.create_database()   # a fresh empty database, e.g. one per test

PostgreSQL refuses to run as root: under root the server runs as the system user ``postgres`` when there is
one, else ``nobody`` (through ``Popen(user=...)``, so the PID we signal is the server's own, with no
``runuser`` in between). ``stop()`` sends SIGINT (fast shutdown), waits ``stop_timeout``, then SIGKILLs the
server and its backends (found by parent PID: each backend has a session of its own), and removes the folder.
"""

from __future__ import annotations

import atexit
import contextlib
import glob
import os
import pwd
import re
import shutil
import signal
import subprocess
import tempfile
import time
import uuid
from collections.abc import Mapping
from dataclasses import dataclass
from pathlib import Path
from types import TracebackType
from typing import Any, Self

from .procs import children
from .service import free_port

__all__ = ["PostgresCluster", "PostgresClusterError", "PostgresUnavailable", "find_bin_dir"]

BIN_DIRS = "/usr/lib/postgresql/*/bin"
_DATABASE_NAME = re.compile(r"[a-z_][a-z0-9_]{0,62}")


class PostgresClusterError(RuntimeError):
    """The throwaway server could not be set up, started or stopped; the message carries its log."""


class PostgresUnavailable(PostgresClusterError):
    """The PostgreSQL server binaries (``initdb``, ``postgres``, ``pg_isready``) are not installed."""


def find_bin_dir(pattern: str = BIN_DIRS) -> Path | None:
    """The newest ``/usr/lib/postgresql/VERSION/bin`` that has the server binaries, else None."""

    def version(path: Path) -> tuple[int, ...]:
        digits = path.parent.name.split(".")
        return tuple(int(d) for d in digits if d.isdigit())

    candidates = sorted((Path(p) for p in glob.glob(pattern)), key=version, reverse=True)
    for folder in candidates:
        if all((folder / name).is_file() for name in ("initdb", "postgres", "pg_isready")):
            return folder
    return None


@dataclass(frozen=True, slots=True)
class _RunAs:
    name: str
    uid: int
    gid: int

    @property
    def popen_args(self) -> dict[str, Any]:
        """Extra ``Popen`` arguments: switch user only when we are root (and then drop root's groups)."""
        if os.geteuid() != 0:
            return {}
        return {"user": self.uid, "group": self.gid, "extra_groups": []}


def _run_as() -> _RunAs:
    if os.geteuid() != 0:
        entry = pwd.getpwuid(os.geteuid())
        return _RunAs(entry.pw_name, entry.pw_uid, entry.pw_gid)
    for name in ("postgres", "nobody"):
        with contextlib.suppress(KeyError):
            entry = pwd.getpwnam(name)
            return _RunAs(entry.pw_name, entry.pw_uid, entry.pw_gid)
    raise PostgresClusterError("running as root, and neither a `postgres` nor a `nobody` user exists")


class PostgresCluster:
    """One throwaway PostgreSQL server. Use as a context manager, or ``start()`` / ``stop()``."""

    def __init__(
        self,
        bin_dir: Path | str | None = None,
        *,
        start_timeout: float = 30.0,
        stop_timeout: float = 10.0,
        settings: Mapping[str, str] | None = None,
    ) -> None:
        found = Path(bin_dir) if bin_dir is not None else find_bin_dir()
        if found is None or not (found / "postgres").is_file():
            where = bin_dir if bin_dir is not None else BIN_DIRS
            raise PostgresUnavailable(f"no PostgreSQL server binaries in {where} (apt-get install postgresql)")
        self.bin_dir = found
        self._start_timeout = start_timeout
        self._stop_timeout = stop_timeout
        # Durability is pointless for a throwaway server; these make every commit cheap.
        self._settings = {"fsync": "off", "synchronous_commit": "off", "full_page_writes": "off"}
        self._settings.update(settings or {})
        self._user = _run_as()
        self.port = 0
        self.folder: Path | None = None
        self._proc: subprocess.Popen[bytes] | None = None

    # -- lifecycle --------------------------------------------------------------------------------

    def __enter__(self) -> Self:
        return self.start()

    def __exit__(
        self, exc_type: type[BaseException] | None, exc: BaseException | None, tb: TracebackType | None
    ) -> None:
        self.stop()

    def start(self) -> Self:
        """initdb, start the server, wait until it accepts connections (3 tries if a port is taken)."""
        if self._proc is not None:
            raise PostgresClusterError("the cluster is already running")
        atexit.register(self.stop)
        try:
            self.folder = Path(tempfile.mkdtemp(prefix="edgewarm-pg-"))
            if os.geteuid() == 0:
                os.chown(self.folder, self._user.uid, self._user.gid)
            self._initdb()
            for _ in range(3):
                self.port = free_port()
                if self._start_server():
                    return self
            raise PostgresClusterError("could not find a free loopback port in 3 tries")
        except BaseException:
            self.stop()
            raise

    def stop(self) -> None:
        """SIGINT to the server, SIGKILL to its process group after ``stop_timeout``; remove the folder.

        Idempotent.
        """
        atexit.unregister(self.stop)
        self._stop_server()
        if self.folder is not None:
            shutil.rmtree(self.folder, ignore_errors=True)
            self.folder = None

    @property
    def pid(self) -> int | None:
        """The server's PID while it runs."""
        return self._proc.pid if self._proc is not None else None

    @property
    def user(self) -> str:
        """The database superuser: the system user the server runs as."""
        return self._user.name

    def url(self, database: str = "postgres") -> str:
        """A connection URL for `database` (trust authentication: no password)."""
        if self._proc is None:
            raise PostgresClusterError("the cluster is not running")
        return f"postgresql://{self._user.name}@127.0.0.1:{self.port}/{database}"

    # -- databases --------------------------------------------------------------------------------

    async def create_database(self, name: str | None = None) -> str:
        """Create an empty database (a unique name by default); its URL."""
        name = name or f"t_{uuid.uuid4().hex}"
        await self._admin(f'CREATE DATABASE "{_checked(name)}"')
        return self.url(name)

    async def drop_database(self, name: str) -> None:
        """Drop a database, disconnecting whoever is still connected to it."""
        await self._admin(f'DROP DATABASE IF EXISTS "{_checked(name)}" WITH (FORCE)')

    async def _admin(self, statement: str) -> None:
        import asyncpg

        conn = await asyncpg.connect(self.url(), timeout=self._start_timeout)
        try:
            await conn.execute(statement)
        finally:
            await conn.close()

    # -- processes --------------------------------------------------------------------------------

    @property
    def _data(self) -> Path:
        assert self.folder is not None
        return self.folder / "data"

    @property
    def _log(self) -> Path:
        assert self.folder is not None
        return self.folder / "postgres.log"

    def _env(self) -> dict[str, str]:
        assert self.folder is not None
        return {"PATH": os.environ.get("PATH", "/usr/bin:/bin"), "HOME": str(self.folder), "LC_ALL": "C"}

    def _initdb(self) -> None:
        argv = [str(self.bin_dir / "initdb"), "-D", str(self._data), "--auth=trust", "-E", "UTF8", "--locale=C"]
        argv += ["--no-sync", "--no-instructions"]
        try:
            done = subprocess.run(
                argv,
                stdin=subprocess.DEVNULL,
                capture_output=True,
                cwd=self.folder,
                env=self._env(),
                timeout=120,
                check=False,
                **self._user.popen_args,
            )
        except (OSError, subprocess.SubprocessError) as exc:
            raise PostgresClusterError(f"initdb could not run: {exc}") from exc
        if done.returncode != 0:
            output = (done.stdout + done.stderr).decode(errors="replace")[-2000:]
            raise PostgresClusterError(f"initdb failed ({done.returncode}): {output}")

    def _start_server(self) -> bool:
        """Start the server on `self.port`; False when the port turned out to be taken."""
        assert self.folder is not None
        argv = [str(self.bin_dir / "postgres"), "-D", str(self._data), "-k", str(self.folder), "-p", str(self.port)]
        argv += ["-c", "listen_addresses=127.0.0.1"]
        for key, value in self._settings.items():
            argv += ["-c", f"{key}={value}"]
        with self._log.open("ab") as out:
            self._proc = subprocess.Popen(
                argv,
                stdin=subprocess.DEVNULL,
                stdout=out,
                stderr=subprocess.STDOUT,
                cwd=self.folder,
                env=self._env(),
                start_new_session=True,  # its own process group: stop() reaches the backends too
                **self._user.popen_args,
            )
        deadline = time.monotonic() + self._start_timeout
        while True:
            if self._proc.poll() is not None:
                log = self._tail()
                self._proc = None
                if "already in use" in log:
                    return False
                raise PostgresClusterError(f"postgres exited at start: {log}")
            if self._ready():
                return True
            if time.monotonic() > deadline:
                raise PostgresClusterError(f"postgres not ready in {self._start_timeout}s: {self._tail()}")
            time.sleep(0.05)

    def _ready(self) -> bool:
        argv = [str(self.bin_dir / "pg_isready"), "-q", "-h", "127.0.0.1", "-p", str(self.port), "-t", "1"]
        argv += ["-d", "postgres", "-U", self._user.name]
        try:
            return subprocess.run(argv, stdin=subprocess.DEVNULL, capture_output=True, timeout=5).returncode == 0
        except subprocess.TimeoutExpired:
            return False

    def _stop_server(self) -> None:
        proc, self._proc = self._proc, None
        if proc is None:
            return
        if proc.poll() is None:
            with contextlib.suppress(ProcessLookupError):
                os.kill(proc.pid, signal.SIGINT)  # "fast" shutdown: abort sessions, exit cleanly
            with contextlib.suppress(subprocess.TimeoutExpired):  # SIGKILL follows
                proc.wait(timeout=self._stop_timeout)
                return
        # Backends call setsid, so they are not in the postmaster's group: find them by parent PID.
        backends = children(proc.pid)
        with contextlib.suppress(ProcessLookupError, PermissionError):
            os.killpg(proc.pid, signal.SIGKILL)
        for pid in backends:
            with contextlib.suppress(ProcessLookupError, PermissionError):
                os.kill(pid, signal.SIGKILL)
        try:
            proc.wait(timeout=self._stop_timeout)
        except subprocess.TimeoutExpired as exc:
            raise PostgresClusterError(f"postgres (pid {proc.pid}) survived SIGKILL") from exc

    def _tail(self, limit: int = 2000) -> str:
        try:
            return self._log.read_text(errors="replace")[-limit:]
        except OSError:
            return "(no log)"


def _checked(name: str) -> str:
    """A database name safe to put between double quotes (they cannot be parameters)."""
    if not _DATABASE_NAME.fullmatch(name):
        raise ValueError(f"not a plain database name: {name!r}")
    return name
