"""Store URLs: what file a `sqlite:` URL names (PRODUCT.md's `sqlite:///var/lib/edgewarm/edgewarm.db` is that
absolute path, whatever the working directory), and the refusal to start on a new database where an older
edgewarm, which read it relative to the working directory, left one."""

from __future__ import annotations

import asyncio
import os
import sqlite3
import subprocess
from contextlib import closing
from pathlib import Path

import pytest

from edgewarm.config import parse_config
from edgewarm.errors import ConfigError, StoreError, described, reason_of
from edgewarm.models import TaskFilter
from edgewarm.runtime import run
from edgewarm.store import database_check, existing_store, open_store, redacted, sqlite_path, store_cautions
from edgewarm.testing.service import free_port

pytestmark = pytest.mark.anyio


@pytest.mark.parametrize(
    ("url", "path"),
    [
        ("sqlite:///var/lib/edgewarm/edgewarm.db", "/var/lib/edgewarm/edgewarm.db"),
        ("sqlite:////var/lib/edgewarm/edgewarm.db", "/var/lib/edgewarm/edgewarm.db"),  # four slashes: the same
        ("sqlite:/srv/edgewarm.db", "/srv/edgewarm.db"),
        ("sqlite:data/edgewarm.db", "data/edgewarm.db"),
        ("sqlite:edgewarm.db", "edgewarm.db"),
        ("sqlite:///srv/my%20data/e.db", "/srv/my data/e.db"),
        ("memory://", ":memory:"),
        ("postgresql://edgewarm@db/edgewarm", None),
    ],
)
def test_a_store_url_names_its_file(url: str, path: str | None) -> None:
    assert sqlite_path(url) == path


def test_the_default_store_does_not_depend_on_the_working_directory(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Started from two folders, a `sqlite:///ABS` store opens the same file (before, each folder got its own
    `var/lib/…` database, and the tasks of the other looked lost)."""
    url = f"sqlite://{tmp_path}/state/edgewarm.db"  # sqlite:///tmp/…: three slashes
    for folder in ("a", "b"):
        (tmp_path / folder).mkdir()
        monkeypatch.chdir(tmp_path / folder)
        assert sqlite_path(url) == f"{tmp_path}/state/edgewarm.db"
    assert not any((tmp_path / "a").iterdir())


async def test_a_database_left_where_an_older_edgewarm_put_it_is_named_not_replaced(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """`sqlite:///srv/x.db` with /srv/x.db missing but ./srv/x.db present (the old relative reading): the store
    refuses to start on a new empty database, naming both files and both ways out; nothing is created."""
    wanted = tmp_path / "abs" / "x.db"
    url = f"sqlite://{wanted}"
    monkeypatch.chdir(tmp_path)
    old = tmp_path / str(wanted).lstrip("/")
    old.parent.mkdir(parents=True)
    sqlite3.connect(old).close()
    with pytest.raises(StoreError) as refused:
        open_store(url)
    message = str(refused.value)
    assert f"{wanted}, which does not exist, but {old} does" in message
    assert f"Move {old}" in message and f'"sqlite:{old.relative_to(tmp_path)}"' in message
    assert not wanted.exists()
    # check-config and an operator's command say it in the same words (`admin cancel` said "does not exist: no
    # service has run on it", a re-tester's)
    assert str(database_check(url)[0]) == message
    with pytest.raises(StoreError) as refused:
        async with existing_store(url):
            pass
    assert str(refused.value) == message
    # The relative URL it suggests opens the old database; once moved, the absolute one opens.
    async with open_store(f"sqlite:{old.relative_to(tmp_path)}") as store:
        assert await store.upgrade() >= 1
    wanted.parent.mkdir()
    old.rename(wanted)
    async with open_store(url) as store:
        assert await store.upgrade() >= 1


@pytest.mark.parametrize("api", [True, False])
async def test_a_service_refusing_a_database_left_elsewhere_makes_no_file(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, api: bool
) -> None:
    """`serve` (and `worker`) refused such a database after making the engine's lock file (and its folder) beside
    the path it was given: an empty `x.db.engine.lock` was left there (a re-tester's)."""
    wanted = tmp_path / "abs" / "x.db"
    monkeypatch.chdir(tmp_path)
    old = tmp_path / str(wanted).lstrip("/")
    old.parent.mkdir(parents=True)
    sqlite3.connect(old).close()
    config = parse_config({"store": f"sqlite://{wanted}", "listen": f"127.0.0.1:{free_port()}"})
    with pytest.raises(StoreError) as refused:
        await run(config, api=api, engine=True)
    assert f"{wanted}, which does not exist, but {old} does" in str(refused.value)
    assert not wanted.parent.exists()


@pytest.mark.parametrize(
    ("url", "shown"),
    [
        ("postgresql://ew:S3cret@db:5432/ew", "postgresql://ew:***@db:5432/ew"),
        ("postgresql://ew@db/ew?password=S3cret&sslmode=require", "postgresql://ew@db/ew?password=***&sslmode=require"),
        ("postgres://db/ew?sslpassword=S3cret", "postgres://db/ew?sslpassword=***"),
        ("postgresql://ew@db/ew", "postgresql://ew@db/ew"),
        ("postgresql://ew:S3cret@[db/ew", "postgresql://ew:***@[db/ew"),
        # Unencoded / ? # in the password: URL parsing ends the user information there, and showed it all.
        ("postgresql://ew:S3cr/etPW@127.0.0.1:22004/db", "postgresql://ew:***@127.0.0.1:22004/db"),
        ("postgresql://ew:a?b#c@db/ew", "postgresql://ew:***@db/ew"),
        ("postgresql://ew:S3cret@db/ew?application_name=a@b", "postgresql://ew:***@b"),  # more hidden, not less
        # libpq's keyword form, which edgewarm refuses (naming what it refuses).
        ("host=127.0.0.1 port=22004 user=ew password=S3cretPW", "host=127.0.0.1 port=22004 user=ew password=***"),
        ("host=db password='S3 cret' sslmode=require", "host=db password=*** sslmode=require"),
        ("sqlite:////var/lib/a:b@c.db", "sqlite:////var/lib/a:b@c.db"),
        # An unencoded # or & in a password given as a parameter, and a quoted one with a quote in it.
        ("postgresql://ew@db/ew?password=SEC#RETi", "postgresql://ew@db/ew?password=***"),
        (
            "postgresql://ew@db/ew?password=SEC&RET&sslmode=require",
            "postgresql://ew@db/ew?password=***&sslmode=require",
        ),
        ("host=db password=SEC&RETf dbname=ew", "host=db password=*** dbname=ew"),
        ("host=db password=SEC#RETg", "host=db password=***"),
        ("host=db password='SEC\\'RETe part' dbname=ew", "host=db password=*** dbname=ew"),
    ],
)
def test_a_store_urls_passwords_are_never_shown(url: str, shown: str) -> None:
    """In the user information or as a query parameter (libpq reads `?password=`): hidden in logs and errors."""
    assert redacted(url) == shown


@pytest.mark.parametrize("url", ["mysql://admin:S3cret@db/x", "postgresql+asyncpg://ew:S3cret@db/ew"])
def test_a_refused_store_url_is_named_without_its_password(url: str) -> None:
    """check-config and a SIGHUP's refusal name the store URL they refuse, without its password."""
    data = {"store": url, "users": [], "nodes": [{"name": "n", "url": "http://127.0.0.1:1"}]}
    with pytest.raises(ConfigError) as refused:
        parse_config(data)
    assert "S3cret" not in str(refused.value) and "***" in str(refused.value)
    with pytest.raises(StoreError) as unknown:
        open_store(url)
    assert "S3cret" not in str(unknown.value)


@pytest.mark.parametrize(
    ("exc", "shown"),
    [
        (TimeoutError(), "TimeoutError (no answer in time)"),
        (ConnectionResetError("reset by peer"), "ConnectionResetError: reset by peer"),
        (OSError(), "OSError"),
    ],
)
def test_an_error_without_words_is_still_named(exc: BaseException, shown: str) -> None:
    """Store errors and warnings read "postgresql: TimeoutError (no answer in time)", not "TimeoutError: "."""
    assert described(exc) == shown
    assert reason_of(exc) == (str(exc) or type(exc).__name__)


async def test_a_sqlite_file_that_is_not_a_database_is_named(tmp_path: Path) -> None:
    """Before: "sqlite: file is not a database", without the file."""
    path = tmp_path / "notes.txt"
    path.write_bytes(b"not a database at all, " * 100)
    with pytest.raises(StoreError) as refused:
        async with open_store(f"sqlite:///{path}"):
            pass
    said = f"the file {path} is no SQLite database (it does not begin as one): is `store` that file?"
    assert str(refused.value) == said
    assert str(database_check(f"sqlite:///{path}")[0]) == said  # check-config's warning (it said OK)


async def test_a_schema_version_that_is_not_a_number_is_named(tmp_path: Path) -> None:
    """Before: a ValueError traceback out of `serve` and `db upgrade`."""
    path = tmp_path / "e.db"
    async with open_store(f"sqlite:///{path}"):
        pass
    with sqlite3.connect(path) as db:
        db.execute("UPDATE meta SET value = 'abc' WHERE key = 'schema_version'")
    db.close()
    with pytest.raises(StoreError) as refused:
        async with open_store(f"sqlite:///{path}"):
            pass
    assert str(refused.value).startswith(f"the SQLite database {path}: its schema_version is 'abc', not a number")


async def test_a_sqlite_file_this_user_cannot_write_is_named(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """Before: the first words were "claiming webhooks failed: … readonly database" (the service runs as a
    user the file is not writable by: tested as root, so the permission check itself is stood in for)."""
    path = tmp_path / "e.db"
    async with open_store(f"sqlite:///{path}"):
        pass
    real = os.access
    monkeypatch.setattr(os, "access", lambda p, mode: False if str(p) == str(path) else real(p, mode))
    with pytest.raises(StoreError) as refused:
        async with open_store(f"sqlite:///{path}"):
            pass
    assert (
        str(refused.value) == f"the SQLite database {path}: its file is not writable by this user (uid {os.getuid()})"
    )


@pytest.mark.parametrize("part", ["-wal", "-shm"])
async def test_a_wal_or_shm_this_user_cannot_write_is_named(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, part: str
) -> None:
    """Left by a process of another user (root's, killed): every write failed with "attempt to write a readonly
    database", `api` said it was ready, and its log said the store "works again" after each read."""
    path = tmp_path / "e.db"
    async with open_store(f"sqlite:///{path}"):
        pass
    (tmp_path / f"e.db{part}").touch()
    real = os.access
    monkeypatch.setattr(os, "access", lambda p, mode: False if str(p) == f"{path}{part}" else real(p, mode))
    with pytest.raises(StoreError) as refused:
        async with open_store(f"sqlite:///{path}"):
            pass
    said = f"the SQLite database {path}: its {part} file is not writable by this user (uid {os.getuid()})"
    assert str(refused.value) == said


async def test_a_sqlite_file_of_two_names_is_refused_by_either(tmp_path: Path) -> None:
    """A hard link: SQLite keeps a -wal beside each name, and two services opened by the two names each took
    its own (a tester: the tasks one service had answered were gone after both stopped). The engine's lock,
    named after the file's real path, did not see it either."""
    path = tmp_path / "e.db"
    async with open_store(f"sqlite:///{path}"):
        pass
    os.link(path, tmp_path / "other.db")
    for name in (path, tmp_path / "other.db"):
        with pytest.raises(StoreError) as refused:
            async with open_store(f"sqlite:///{name}"):
                pass
        assert str(refused.value).startswith(f"the SQLite database {name} has 2 names (hard links): "), refused.value
        assert str(database_check(f"sqlite:///{name}")[0]) == str(refused.value)  # check-config's: it said OK
    os.unlink(tmp_path / "other.db")
    async with open_store(f"sqlite:///{path}"):
        pass


@pytest.mark.parametrize("name", ["p%41.db", "100%.db", "a b%20c.db"])
async def test_a_sqlite_file_whose_name_holds_a_percent_sign_is_the_one_every_connection_opens(
    tmp_path: Path, name: str
) -> None:
    """The read-only connections open the file by a URI, which read `%41` as "A" (an empty database beside
    the real one: "unable to open database file", or every list answered "no such table")."""
    url = f"sqlite:///{tmp_path}/{name}".replace(" ", "%20")
    async with open_store(url) as store:
        assert await store.get_task("unknown") is None  # a point read (its own read-only connection)
        assert await store.list_tasks("alice", TaskFilter()) == []  # a long read (another)
    assert sorted(n for n in os.listdir(tmp_path) if n.endswith(".db")) == [name.replace("%20", " ")]


@pytest.mark.parametrize("url", ["sqlite:///srv/e.db?mode=ro", "sqlite:///srv/e.db#main", "sqlite:e.db?cache=shared"])
def test_a_sqlite_url_with_a_query_or_a_fragment_is_refused_by_the_config(url: str) -> None:
    """Before: `check-config` said OK; `serve` made a file named `e.db?mode=ro` and crashed with a traceback
    ("no such access mode: ro?mode=ro"), or wrote to `e.db#main` while its reads opened an empty `e.db`."""
    data = {"store": url, "users": [], "nodes": []}
    with pytest.raises(ConfigError, match="takes no query"):
        parse_config(data)


async def test_a_sqlite_store_edgewarm_makes_is_for_its_owner_only(tmp_path: Path) -> None:
    """The database file edgewarm makes, and its -wal and -shm, are 0600 whatever the umask (a tester's were 0644
    under the default umask: every user of the machine could read every user's URLs and callback tokens); one
    an operator made keeps its mode, and store_cautions warns when every user can read it."""
    made, theirs = tmp_path / "made.db", tmp_path / "theirs.db"
    sqlite3.connect(theirs).close()
    theirs.chmod(0o644)
    old_umask = os.umask(0o022)
    try:
        for path in (made, theirs):
            async with open_store(f"sqlite://{path}") as store:
                await store.queue_depth()
                modes = {end: os.stat(f"{path}{end}").st_mode & 0o777 for end in ("", "-wal", "-shm")}
                mode = 0o600 if path == made else 0o644
                assert set(modes.values()) == {mode}, modes
    finally:
        os.umask(old_umask)
    assert store_cautions(f"sqlite://{made}") == []
    assert store_cautions("memory://")[0].startswith("store = 'memory://' keeps nothing on disk: every task")
    assert store_cautions(f"sqlite://{theirs}") == [
        f"the SQLite database {theirs} can be read by every user of this machine (mode 644), every user's URLs "
        "and callback URLs with their tokens: chmod o-r (and its -wal and -shm)"
    ]


def test_a_store_on_a_read_only_file_system_is_told_so(tmp_path: Path) -> None:
    """It was told "its file is not writable by this user (uid 0)", pointing at chmod, not at the mount (a
    tester's remount,ro). A real read-only mount where the test may mount one (root)."""
    folder = tmp_path / "ro"
    folder.mkdir()
    mount = ["mount", "-t", "tmpfs", "-o", "ro,size=1m", "tmpfs", str(folder)]
    if os.geteuid() != 0 or subprocess.run(mount, capture_output=True, check=False).returncode != 0:
        pytest.skip("cannot mount a read-only file system here (not root)")

    async def opening() -> None:
        async with open_store(f"sqlite:///{folder}/e.db"):
            pass

    try:
        with pytest.raises(StoreError) as refused:
            asyncio.run(opening())
        assert str(refused.value) == f"the SQLite database {folder}/e.db is on a read-only file system (mounted ro?)"
        assert str(database_check(f"sqlite:///{folder}/e.db")[0]) == str(refused.value)  # check-config said OK
    finally:
        subprocess.run(["umount", str(folder)], check=True)


async def test_check_config_says_what_a_start_would_refuse_the_sqlite_file_for(tmp_path: Path) -> None:
    """A store file cut short, or a -wal without its file: `serve` refuses them, and check-config said OK (a
    re-tester's)."""
    path = tmp_path / "e.db"
    async with open_store(f"sqlite:///{path}") as store:
        assert await store.schema_version() > 0
    assert database_check(f"sqlite:///{path}")[0] is None
    data = path.read_bytes()
    path.write_bytes(data[:-100])
    assert str(database_check(f"sqlite:///{path}")[0]).startswith(f"the SQLite database {path} is cut short: ")
    path.unlink()
    (tmp_path / "e.db-wal").write_bytes(b"x" * 1000)
    assert str(database_check(f"sqlite:///{path}")[0]).startswith(f"the SQLite database {path} is missing (or empty)")


async def test_check_config_says_a_start_could_not_make_the_store_s_folder(tmp_path: Path) -> None:
    """A store under a file, or under a folder this user may not write: check-config said OK, `serve` exited
    "cannot make the folder" (a newcomer's). A folder to make under one that may be written to is fine."""
    (tmp_path / "file").write_text("x")
    under_a_file = tmp_path / "file" / "sub" / "e.db"

    async def opening(path: Path) -> None:
        async with open_store(f"sqlite:///{path}"):
            pass

    with pytest.raises(StoreError) as refused:
        await opening(under_a_file)
    said = str(database_check(f"sqlite:///{under_a_file}")[0])
    assert said.startswith(f"cannot make the folder {under_a_file.parent} for {under_a_file}: Not a directory"), said
    assert str(refused.value).startswith(f"cannot make the folder {under_a_file.parent} for {under_a_file}: ")
    assert database_check(f"sqlite:///{tmp_path}/new/deeper/e.db")[0] is None
    if os.getuid() != 0:  # root may write anywhere
        locked = tmp_path / "locked"
        locked.mkdir(mode=0o500)
        assert "Permission denied" in str(database_check(f"sqlite:///{locked}/sub/e.db")[0])


async def test_a_database_of_another_applications_tables_is_refused_and_check_config_says_so(tmp_path: Path) -> None:
    """A SQLite file holding a table of another application: edgewarm's tables were added beside it (the README
    says a store is made only in an empty database), and check-config said OK (a re-tester's)."""
    path = tmp_path / "other.db"
    with closing(sqlite3.connect(path)) as db:
        db.execute("CREATE TABLE foo (x)")
        db.commit()
    said = f"database {path} has no edgewarm schema but already has tables named foo: give edgewarm a database"
    await refused_so(path, said, "already has tables named foo")
    with closing(sqlite3.connect(path)) as db:
        assert [name for (name,) in db.execute("SELECT name FROM sqlite_master WHERE type = 'table'")] == ["foo"]


async def test_a_store_whose_schema_version_row_is_gone_is_said_damaged_not_anothers(tmp_path: Path) -> None:
    """Its `meta` row removed: "give edgewarm a database of its own", as if the tables were another
    application's (a tester's); said for what it is, by check-config and at the open alike."""
    path = tmp_path / "e.db"
    async with open_store(f"sqlite:///{path}"):
        pass
    with closing(sqlite3.connect(path)) as db:
        db.execute("DELETE FROM meta")
        db.commit()
    said = f"database {path} has edgewarm's tables (items, meta, tasks, usage) but no schema version in its table meta"
    await refused_so(path, said, "restore it from a backup")


async def refused_so(path: Path, said: str, match: str) -> None:
    """check-config's look at the SQLite file at `path` begins with `said`, and its open is refused (`match`)."""
    assert str(database_check(f"sqlite:///{path}")[0]).startswith(said)
    with pytest.raises(StoreError, match=match):
        async with open_store(f"sqlite:///{path}"):
            pass


def test_a_backup_restored_over_a_killed_store_is_refused_not_replayed_into(tmp_path: Path) -> None:
    """A store killed (its -wal left with writes), a backup copied over its file, then a start: SQLite replayed the
    old -wal into the restored file, which started without a word, damaged (a re-tester's). Refused, the file
    and the -wal left as they were, saying what to do."""
    import shutil
    import sys

    path = tmp_path / "e.db"
    url = f"sqlite:///{path}"

    async def made() -> None:
        async with open_store(url):
            pass

    asyncio.run(made())

    def writes(code: str) -> None:  # by a process of its own, as a service's
        head = f"import os, sqlite3\ndb = sqlite3.connect({str(path)!r}, isolation_level=None)\n"
        subprocess.run([sys.executable, "-c", head + code], check=True, timeout=60)

    writes(
        'db.execute("CREATE TABLE filler (x)")\n'
        'db.executemany("INSERT INTO filler VALUES (?)", [(os.urandom(200),) for _ in range(3000)])\n'
        'db.execute("PRAGMA wal_checkpoint(TRUNCATE)")\n'
        "db.close()"
    )
    shutil.copy(path, tmp_path / "backup.db")
    # More writes checkpointed into the file, then a few left in its -wal by a process that dies (SIGKILL's way:
    # no checkpoint at its end).
    writes(
        'db.execute("DELETE FROM filler")\n'
        'db.executemany("INSERT INTO filler VALUES (?)", [(os.urandom(350),) for _ in range(3000)])\n'
        'db.execute("PRAGMA wal_checkpoint(TRUNCATE)")\n'
        'db.execute("PRAGMA wal_autocheckpoint=0")\n'
        'db.executemany("UPDATE filler SET x=? WHERE rowid=?", [(os.urandom(350), r) for r in range(1, 3001, 60)])'
        "\n"
        "os._exit(0)"
    )
    wal = tmp_path / "e.db-wal"
    os.utime(wal, (1_000_000_000, 1_000_000_000))  # as a -wal left before the restore is
    left = wal.read_bytes()
    shutil.copy(tmp_path / "backup.db", path)  # restored over it
    said = str(database_check(url)[0])
    assert said.startswith(f"sqlite: the database {path} reads damaged with its -wal"), said
    assert "its -wal (" in said and "move them away, then restore the file again" in said

    async def started() -> None:
        async with open_store(url):
            pass

    with pytest.raises(StoreError, match="reads damaged with its -wal"):
        asyncio.run(started())
    assert wal.read_bytes() == left and path.read_bytes() == (tmp_path / "backup.db").read_bytes()  # as they were


_TASKS_THEN_KILLED = """
import asyncio, os, sys, uuid
from edgewarm.models import ItemAction, NewItem, NewTask, QuotaCharge, TaskKind
from edgewarm.store import open_store

async def main(url, count, kill):
    opened = open_store(url)
    store = await opened.__aenter__()
    for n in range(count):
        item = NewItem(0, f"http://a.test/{n}", "edge-1", ItemAction.WARM, 0)
        task = NewTask(str(uuid.uuid4()), "u", TaskKind.PREFETCH, 1000.0 + n, (item,), QuotaCharge("d", 1, 0, 99, 9))
        await store.create_task(task)
        print(task.id)
    if kill:
        os._exit(0)  # SIGKILL's way: its writes left in the -wal
    await opened.__aexit__(None, None, None)

asyncio.run(main(sys.argv[1], int(sys.argv[2]), sys.argv[3] == "kill"))
"""


def test_a_backup_restored_over_a_killed_store_whose_wal_reads_whole_is_refused(tmp_path: Path) -> None:
    """An upgrade tester's: a backup copied over a store killed young (its -wal holding every page it wrote) read
    whole with that -wal, as the killed store: the backup's tasks gone, served without a word (an idempotency
    key's retry made a second task). Refused: the file's newest task is not there with the -wal. A -wal of the
    file's own, older than the file's last write (a checkpoint's, then a kill), is let be."""
    import shutil
    import sys

    def tasks(path: Path, count: int, kill: bool) -> list[str]:
        done = subprocess.run(
            [sys.executable, "-c", _TASKS_THEN_KILLED, f"sqlite:///{path}", str(count), "kill" if kill else "close"],
            capture_output=True,
            text=True,
            check=True,
            timeout=60,
        )
        return done.stdout.split()

    backup = tmp_path / "backup" / "e.db"
    backup.parent.mkdir()
    kept = tasks(backup, 3, kill=False)
    path = tmp_path / "e.db"
    tasks(path, 2, kill=True)
    wal = path.with_name("e.db-wal")
    assert wal.stat().st_size > 0
    os.utime(wal, (1_000_000_000, 1_000_000_000))  # written before the file: a checkpoint's write, then a kill
    assert database_check(f"sqlite:///{path}")[0] is None  # its own -wal: let be
    os.utime(backup, (900_000_000, 900_000_000))  # the backup older than the -wal, as it is when taken before
    shutil.copy2(backup, tmp_path / "restored.db")  # its times kept, as `mv` and `cp -p` keep them
    os.replace(tmp_path / "restored.db", path)  # restored over it, the killed store's -wal left beside it
    said = str(database_check(f"sqlite:///{path}")[0])
    assert said.startswith(
        f"sqlite: the database {path} read with its -wal lacks the newest task the file alone holds ({kept[-1]}): "
        "that -wal is another file's; its -wal ("
    ), said


def test_a_file_copied_without_its_wal_is_refused_by_check_config_as_at_a_start(tmp_path: Path) -> None:
    """An upgrade tester's: the file of a young store copied without its -wal (a bare header in WAL mode, its
    content all in the -wal) was OK to `check-config --strict`, and refused by the start."""
    path = tmp_path / "e.db"
    with closing(sqlite3.connect(path)) as db:
        db.execute("PRAGMA journal_mode=wal")
    assert not path.with_name("e.db-wal").exists()
    refused = database_check(f"sqlite:///{path}")[0]
    assert refused is not None and str(refused).startswith(
        f"the SQLite database {path} is in WAL mode but holds no table"
    ), refused
