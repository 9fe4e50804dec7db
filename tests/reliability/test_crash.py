"""Issue #7, part 3b: crashes and a full disk, with `edgewarm serve` as a process on SQLite.

- SIGKILL of the service again and again during one big task, restarting it each time on the same store: the
  task ends with status 0, its counters equal its total, and each item is counted once (the task's counters
  equal the number of items in each final state, read straight from the database file).
- The store's disk fills up (a 2 MB tmpfs): submissions are refused with JD status -1 and a message, the
  process keeps serving, outcomes wait in memory; once space is freed everything goes on, and
  `PRAGMA integrity_check` says ok.
"""

from __future__ import annotations

import asyncio
import contextlib
import errno
import os
import shutil
import signal
import socket
import subprocess
import sys
import time
from collections.abc import Iterator
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import httpx
import pytest

from edgewarm.client import Client
from edgewarm.testing import Lab
from edgewarm.testing.faults import FaultServer, Respond, always
from edgewarm.testing.service import DEMO_SECRET, DEMO_USER, ServiceProcess, free_port, write_config

from .support import (
    PlainCalls,
    consistency,
    integrity,
    long_only,
    node_toml,
    real_signature,
    start_service,
    wait_until,
)

pytestmark = pytest.mark.integration


def progress(client: Client, taskid: str) -> int:
    """Items finished, as the task's own counters say."""
    view = client.task(taskid, limit=0)
    return int(view["succeeded"]) + int(view["failed"])


@pytest.mark.parametrize(
    ("urls", "kills"),
    [
        pytest.param(2_000, 2, id="2000-urls-2-kills"),
        pytest.param(20_000, 10, id="20000-urls-10-kills", marks=long_only),
    ],
)
def test_sigkill_again_and_again_then_each_item_is_counted_once(
    tmp_path: Path, urls: int, kills: int, capsys: pytest.CaptureFixture[str]
) -> None:
    """SIGKILLed and restarted on one SQLite file mid-task: status 0, counters equal the items, each counted once."""
    with Lab(tmp_path / "lab", edges=1, shield=True) as lab:
        paths = lab.make_files(urls, 256)
        total = urls * 2
        extra = (
            f"[limits]\nurls_per_call = {urls}\n[api]\nmax_body_bytes = {16 << 20}\n"
            "[engine]\nconcurrency = 16\nper_node_concurrency = 8\n"
        )
        service = start_service(tmp_path / "svc", lab.nodes_toml(), extra=extra)
        db = tmp_path / "svc" / "edgewarm.db"
        # Evenly spaced, the last one well before the end.
        targets = [total * (k + 1) // (kills + 2) for k in range(kills)]
        at_kill: list[int] = []
        restarts: list[float] = []
        started = time.monotonic()
        try:
            with Client(service.url, DEMO_USER, DEMO_SECRET, timeout=120) as client:
                taskid = client.prefetch([f"http://www.example.test{p}" for p in paths])
            for target in targets:
                with Client(service.url, DEMO_USER, DEMO_SECRET) as client:
                    deadline = time.monotonic() + 120
                    while (done := progress(client, taskid)) < target:
                        assert time.monotonic() < deadline, f"stuck at {done} of {total}"
                        time.sleep(0.02)
                service.kill()
                at_kill.append(done)
                restart = time.monotonic()
                service = ServiceProcess(service.config, port=service.port).start(30)
                restarts.append(time.monotonic() - restart)
            with Client(service.url, DEMO_USER, DEMO_SECRET) as client:
                view = client.wait(taskid, timeout=300)
            took = time.monotonic() - started
        finally:
            stopped = service.stop()
        assert stopped == 0, service.log_tail()
        assert all(done < total for done in at_kill), f"a kill came after the end: {at_kill}"
        assert len(set(at_kill)) == kills
        assert view["status"] == 0, view
        assert view["total"] == total and view["succeeded"] == total and view["failed"] == 0
        assert view["counts"] == {"waiting": 0, "pending": 0, "running": 0, "succeeded": total, "failed": 0}
        found = consistency(db)
        assert found.problems() == []
        assert found.tasks[taskid]["states"] == {"succeeded": total}
        assert integrity(db) == "ok"
        edge = {r.uri for r in lab.requests(lab.edges[0])}
        assert set(paths) <= edge
    with capsys.disabled():
        print(
            f"\n[reliability] SIGKILL x{kills} during {urls} URLs ({total} items): done at kills {at_kill}; "
            f"restart to healthy max {max(restarts):.2f}s; task ended after {took:.1f}s "
            f"({total / took:.0f} items/s overall)"
        )


# -- a full disk --------------------------------------------------------------------------------------------------


@contextlib.contextmanager
def tiny_tmpfs(folder: Path, size: str = "2m") -> Iterator[Path]:
    """A tmpfs of `size` mounted on `folder` (root only), unmounted afterwards."""
    if os.geteuid() != 0:
        pytest.skip("mounting a tmpfs needs root")
    folder.mkdir(parents=True, exist_ok=True)
    mounted = subprocess.run(
        ["mount", "-t", "tmpfs", "-o", f"size={size}", "tmpfs", str(folder)], capture_output=True, timeout=30
    )
    if mounted.returncode != 0:
        pytest.skip(f"cannot mount a tmpfs: {mounted.stderr.decode(errors='replace').strip()}")
    try:
        yield folder
    finally:
        for _ in range(50):
            if subprocess.run(["umount", str(folder)], capture_output=True, timeout=30).returncode == 0:
                break
            time.sleep(0.1)
        else:
            subprocess.run(["umount", "-l", str(folder)], capture_output=True, timeout=30)
            raise AssertionError(f"{folder} stayed busy: unmounted lazily")


def fill(folder: Path) -> Path:
    """Write a file until the file system is full; the file."""
    filler = folder / "filler"
    chunk = b"\0" * 65536
    with open(filler, "wb", buffering=0) as out:
        try:
            while True:
                out.write(chunk)
        except OSError as exc:
            assert exc.errno == errno.ENOSPC, exc
    with open(filler, "ab", buffering=0) as out, contextlib.suppress(OSError):  # the last few bytes too
        while True:
            out.write(b"\0")
    return filler


def test_a_full_disk_refuses_submissions_clearly_and_recovers(tmp_path: Path) -> None:
    """A full disk: submissions get -1 with a message, the service goes on after space is freed, integrity ok."""
    with tiny_tmpfs(tmp_path / "disk") as disk, FaultServer(Respond(200, body=b"x" * 100)) as node:
        store = f"sqlite:///{disk}/edgewarm.db"
        extra = "[engine]\nbackoff_base = 0.05\nbackoff_max = 0.2\n"
        service = start_service(tmp_path / "svc", node_toml("n", node.url), extra=extra, store=store)
        try:
            with httpx.Client(base_url=service.url, timeout=60) as http:
                calls = PlainCalls(http, DEMO_USER, DEMO_SECRET)
                submit, wait, sig = calls.submit, calls.wait, calls.signature
                before = submit(50, "before")
                assert wait(before["taskid"])["status"] == 0

                # Outcomes in flight when the disk fills: the node holds its answers for a second.
                node.set_behaviour(Respond(200, body=b"x" * 100, delay=1.0))
                held = submit(20, "held")
                assert held["status"] == 0
                wait_until(lambda: len(node.requests) >= 50 + 20, 10, "the held requests arrived")
                filler = fill(disk)

                refused = [submit(100, f"full-{k}") for k in range(10)]
                for answer in refused:
                    assert answer["status"] == -1, answer
                    assert isinstance(answer["msg"], str) and "store" in answer["msg"], answer
                query = {"username": DEMO_USER, "signature": sig, "taskid": before["taskid"]}
                assert http.post("/api/prefetchQuery", json=query).json()["data"]["status"] == 0
                assert http.get("/healthz").status_code == 200
                time.sleep(1.5)  # the held answers come back and cannot be written
                stuck = wait(held["taskid"], timeout=0)
                assert stuck["status"] == 1 and stuck["succeeded"] == 0, stuck
                wait_until(
                    lambda: "writing outcomes (kept, and tried again) failed" in service.log.read_text(), 10, "logged"
                )

                filler.unlink()
                node.set_behaviour(Respond(200, body=b"x" * 100))
                assert wait(held["taskid"])["status"] == 0
                after = submit(50, "after")
                assert after["status"] == 0, after
                view = wait(after["taskid"])
                assert view["status"] == 0 and view["succeeded"] == 50
        finally:
            stopped = service.stop()
        log = service.log.read_text()
        assert stopped == 0, log[-3000:]
        assert "database or disk is full" in log
        assert integrity(disk / "edgewarm.db") == "ok"
        found = consistency(disk / "edgewarm.db")
        assert found.problems() == []
        assert sorted(t["total"] for t in found.tasks.values()) == [20, 50, 50]
        assert all(t["status"] == 0 for t in found.tasks.values())


def test_writing_outcomes_on_a_full_disk_reports_the_full_disk(tmp_path: Path) -> None:
    """record_outcomes on a full disk raises StoreError saying the disk is full, not a masking rollback error."""
    import asyncio
    import uuid

    from edgewarm.errors import StoreError
    from edgewarm.models import ItemAction, ItemOutcome, NewItem, NewTask, QuotaCharge, TaskKind
    from edgewarm.store import open_store

    async def scenario(disk: Path) -> str:
        async with open_store(f"sqlite:///{disk}/edgewarm.db") as store:
            items = tuple(NewItem(i, f"http://www.example.test/{i}", "n", ItemAction.WARM, 0) for i in range(200))
            quota = QuotaCharge("20240310", 200, 0, 10**9, 10**9)
            await store.create_task(NewTask(str(uuid.uuid4()), "u", TaskKind.PREFETCH, 1.0, items, quota))
            claims = await store.claim_due_items("w", 200, 2.0, 60)
            filler = fill(disk)
            try:
                outcomes = [ItemOutcome(c.item_id, True, 1, 200, "MISS", 10, "e" * 2000) for c in claims]
                await store.record_outcomes("w", outcomes, 3.0)
            except StoreError as exc:
                return str(exc)
            finally:
                filler.unlink()
            return "no error"

    with tiny_tmpfs(tmp_path / "disk") as disk:
        message = asyncio.run(scenario(disk))
    assert "full" in message, message


_STORE_OUT_OF_FILES = """
import asyncio, os, sys
from edgewarm.errors import StoreError
from edgewarm.models import TaskFilter
from edgewarm.store import open_store

async def main() -> None:
    async with open_store(f"sqlite:///{sys.argv[1]}/edgewarm.db") as store:
        held = []
        try:
            while True:  # every file this process may open, taken
                held.append(os.open("/dev/null", os.O_RDONLY))
        except OSError:
            pass
        try:
            await store.list_tasks("u", TaskFilter())  # a long read: it opens a connection of its own
            print("no error")
        except StoreError as exc:
            print(exc)
        finally:
            for fd in held:
                os.close(fd)

asyncio.run(main())
"""


def test_a_store_out_of_open_files_says_so(tmp_path: Path) -> None:
    """SQLite cannot open a file because the process has none left: the store's error names that cause and what
    to do (before: "sqlite: unable to open database file", told to callers as the store being unavailable)."""
    run = subprocess.run(
        [sys.executable, "-c", _STORE_OUT_OF_FILES, str(tmp_path)], capture_output=True, text=True, timeout=60
    )
    assert run.returncode == 0, run.stderr[-2000:]
    message = run.stdout.strip()
    assert message.startswith("sqlite: unable to open database file: this process has run out of open files ("), message
    assert "ulimit -n" in message


def test_a_started_service_used_as_a_context_manager_leaves_no_process(tmp_path: Path) -> None:
    """ServiceProcess.start() and then `with service:` runs one process, and none is left running after."""
    with FaultServer() as node:
        service = start_service(tmp_path, node_toml("n", node.url))
        assert service.proc is not None
        first = service.proc.pid
        with service as same:
            assert same.proc is not None and same.proc.pid == first, "a second process was started"
        assert service.proc.poll() is not None
    assert not Path(f"/proc/{first}").exists()


def test_a_grace_below_a_second_bounds_the_stop_with_a_long_poll_open(tmp_path: Path) -> None:
    """`grace_seconds = 0.5`, a node that answers in 30 s and a client long-polling the task: SIGTERM ends the
    service within seconds, cleanly (before, any grace below 1 s let the API wait for every open request: the
    long poll's 30 s)."""
    with FaultServer(always(Respond(200, delay=30))) as node:
        service = start_service(tmp_path, node_toml("n", node.url), extra="[engine]\ngrace_seconds = 0.5\n")
        with service, Client(service.url, DEMO_USER, DEMO_SECRET, timeout=60) as client:
            taskid = client.prefetch(["http://www.example.test/slow"])
            with ThreadPoolExecutor(1) as pool:
                polling = pool.submit(client.wait, taskid, timeout=30)
                wait_until(lambda: len(node.requests) == 1, 10, "the warm reached the node")
                started = time.monotonic()
                code = service.stop(timeout=25)
                took = time.monotonic() - started
                with contextlib.suppress(Exception):
                    polling.result(timeout=35)
    assert code == 0 and took < 10, (code, took)


def test_a_long_poll_open_at_a_stop_is_answered_at_once_with_the_task_as_it_is(tmp_path: Path) -> None:
    """SIGTERM while a client long-polls a task whose node is down (nothing in flight): the poll is answered at
    once with the task as it is (status 1) and the stop does not wait for it (before: after the whole grace,
    10 s, the poll got HTTP 500 "Internal Server Error" as plain text, and the log a traceback at error)."""
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))  # connections refused: the item waits for its node, the task stays open
        nodes = '[[nodes]]\nname = "dead"\nurl = "http://{}:{}"\n'.format(*sock.getsockname())
        service = start_service(tmp_path, nodes)
        with service, Client(service.url, DEMO_USER, DEMO_SECRET) as client:
            taskid = client.prefetch(["http://www.example.test/polled"])
            with ThreadPoolExecutor(1) as pool:
                polling = pool.submit(client._send, client._wait_once(taskid, 30, 30))
                time.sleep(1.0)  # the poll is in
                started = time.monotonic()
                code = service.stop(timeout=25)
                took = time.monotonic() - started
                view = polling.result(timeout=35)
            errors = [line for line in service.log.read_text().splitlines() if '"level":"error"' in line]
    assert code == 0 and took < 5, (code, took)
    assert (view["taskid"], view["status"]) == (taskid, 1), view
    assert errors == []


def test_a_workers_metrics_count_the_queue(tmp_path: Path) -> None:
    """`edgewarm worker` (no API of its own) serves /metrics on `metrics_listen`: its queue depth is the store's
    (before, always 0: only the API's /metrics asked the store)."""
    metrics_port = free_port()
    with FaultServer(always(Respond(200, delay=30))) as node:
        api = start_service(
            tmp_path,
            node_toml("n", node.url),
            command="api",
            extra=f'metrics_listen = "127.0.0.1:{metrics_port}"\n[engine]\ngrace_seconds = 0.5\n',
        )
        worker = ServiceProcess(api.config, command="worker", log=tmp_path / "worker.log")
        with api, worker.start(), Client(api.url, DEMO_USER, DEMO_SECRET) as client:
            worker.wait_for_log("edgewarm running")
            client.prefetch([f"http://www.example.test/q/{i}" for i in range(50)])

            def depth() -> float | None:
                with contextlib.suppress(httpx.HTTPError):
                    text = httpx.get(f"http://127.0.0.1:{metrics_port}/metrics", timeout=2).text
                    for line in text.splitlines():
                        if line.startswith("edgewarm_queue_depth "):
                            return float(line.split()[1])
                return None

            wait_until(lambda: depth() == 50, 15, "the worker's /metrics counted the 50 queued items")
            assert httpx.get(f"http://127.0.0.1:{metrics_port}/", timeout=2).status_code == 404  # /metrics only


def test_a_database_removed_under_the_service_refuses_submissions_and_readiness(tmp_path: Path) -> None:
    """The store's folder deleted while `serve` runs (an operator's mistake, a cleanup job): submissions
    are refused (JD -1), /readyz answers 503 naming the file, and the log says so (before: task ids were
    returned and their tasks "succeeded" in the removed file, all lost at the next start, nothing logged)."""
    data = tmp_path / "data"
    with FaultServer(Respond(200)) as node:
        service = start_service(tmp_path, node_toml("n", node.url), store=f"sqlite:///{data}/edgewarm.db")
        with service, Client(service.url, DEMO_USER, DEMO_SECRET) as client:
            assert client.wait(client.prefetch(["http://www.example.test/before"]), timeout=30)["status"] == 0
            for path in sorted(data.iterdir()):
                path.unlink()
            data.rmdir()
            sig = real_signature(DEMO_USER, DEMO_SECRET)
            body = {"username": DEMO_USER, "signature": sig, "publish_urls": ["http://www.example.test/after"]}
            answer = httpx.post(f"{service.url}/api/prefetch", json=body, timeout=10).json()
            assert answer["status"] == -1, answer
            ready = httpx.get(f"{service.url}/readyz", timeout=10)
            assert ready.status_code == 503 and "was removed or replaced" in ready.json()["error"], ready.text
            time.sleep(3)  # the engine claims every poll_interval (0.5 s): 6 failed claims
            log = service.log.read_text()
    assert f"the SQLite database {data}/edgewarm.db was removed or replaced" in log
    # Said once, not at every poll (before: about 3 lines a second, for as long as the file stays gone).
    assert log.count('"message":"claiming items failed: ') == 1, log


def test_a_database_moved_away_and_back_under_the_service_goes_on_by_itself(tmp_path: Path) -> None:
    """The store's folder renamed while `serve` runs, then renamed back: refused meanwhile (the message says
    the file moved back needs no restart), then submissions are taken and warmed again, no restart."""
    data, aside = tmp_path / "data", tmp_path / "aside"
    with FaultServer(Respond(200)) as node:
        service = start_service(tmp_path, node_toml("n", node.url), store=f"sqlite:///{data}/edgewarm.db")
        with service, Client(service.url, DEMO_USER, DEMO_SECRET) as client:
            assert client.wait(client.prefetch(["http://www.example.test/before"]), timeout=30)["status"] == 0
            data.rename(aside)
            ready = httpx.get(f"{service.url}/readyz", timeout=10)
            assert ready.status_code == 503, ready.text
            assert "the same file moved back: edgewarm goes on by itself" in ready.json()["error"], ready.text
            wait_until(lambda: "claiming items failed" in service.log.read_text(), 10, "a failed claim logged")
            aside.rename(data)
            wait_until(lambda: httpx.get(f"{service.url}/readyz", timeout=10).status_code == 200, 10, "ready again")
            assert client.wait(client.prefetch(["http://www.example.test/after"]), timeout=30)["status"] == 0
            wait_until(lambda: "claiming items works again" in service.log.read_text(), 10, "claims work again")


_KILLED_AFTER_A_TASK = """
import asyncio, os, sys, uuid
from edgewarm.models import NewItem, NewTask, QuotaCharge, TaskKind
from edgewarm.store import open_store

async def main() -> None:
    store = open_store("sqlite:///" + sys.argv[1])
    await store.__aenter__()
    items = (NewItem(0, "http://www.example.test/a", "edge-1"),)
    quota = QuotaCharge("20261129", 1, 0, 1000, 1000)
    task = NewTask(str(uuid.uuid4()), "u", TaskKind.PREFETCH, 1.0, items, quota)
    print((await store.create_task(task)).id, flush=True)
    os._exit(0)  # no close, no checkpoint: what the store wrote is in its -wal only

asyncio.run(main())
"""


def test_a_database_file_moved_or_copied_without_its_wal_is_refused_not_taken_as_new(tmp_path: Path) -> None:
    """A store killed before SQLite's first checkpoint has its content in `-wal`; its file alone, copied or
    moved elsewhere, was opened as a new database (every task "not found", quotas reset, waiting items never
    run). It is refused, saying where the content is, and nothing is written beside it; with its -wal it opens
    with the task there."""
    from edgewarm.errors import StoreError

    first = tmp_path / "first"
    first.mkdir()
    taskid = killed_after_a_task(first / "e.db")
    assert (first / "e.db-wal").stat().st_size > 0
    moved = tmp_path / "moved"
    moved.mkdir()
    shutil.copy(first / "e.db", moved / "e.db")
    with pytest.raises(StoreError) as refused:
        found_in(moved / "e.db", taskid)
    assert str(refused.value).startswith(f"the SQLite database {moved}/e.db is in WAL mode but holds no table")
    assert sorted(p.name for p in moved.iterdir()) == ["e.db"]
    shutil.copy(first / "e.db-wal", moved / "e.db-wal")
    assert found_in(moved / "e.db", taskid)


def killed_after_a_task(path: Path) -> str:
    """The id of a task written to a new SQLite store at `path` by a process killed at once after (its content
    in the -wal only)."""
    made = subprocess.run(
        [sys.executable, "-c", _KILLED_AFTER_A_TASK, str(path)], capture_output=True, text=True, timeout=60
    )
    assert made.returncode == 0, made.stderr[-2000:]
    return made.stdout.strip()


def found_in(path: Path, taskid: str) -> bool:
    """Whether the SQLite store at `path` holds the task `taskid` (StoreError when it is refused)."""
    from edgewarm.store import open_store

    async def find() -> bool:
        async with open_store(f"sqlite:///{path}") as store:
            return await store.get_task(taskid) is not None

    return asyncio.run(find())


def test_a_database_file_cut_short_is_refused_at_the_open_not_found_damaged_mid_run(tmp_path: Path) -> None:
    """A store file cut by less than its size (a copy that did not finish) opened, and worked until a statement
    read a missing page. It is refused at the open, saying so; whole, the same file opens with its tasks."""
    from edgewarm.errors import StoreDamaged
    from edgewarm.store import open_store

    whole = tmp_path / "whole.db"
    ids = asyncio.run(tasks_of_100_urls(whole, 30))
    assert not (tmp_path / "whole.db-wal").exists()  # closed: everything in the file, as a copy would take it
    data = whole.read_bytes()
    cut = tmp_path / "cut.db"
    cut.write_bytes(data[: len(data) - 4096 - 100])  # short of a page and some

    async def find(path: Path) -> int:
        async with open_store(f"sqlite:///{path}") as store:
            return sum([await store.get_task(i) is not None for i in ids])

    with pytest.raises(StoreDamaged) as refused:
        asyncio.run(find(cut))
    assert str(refused.value).startswith(f"the SQLite database {cut} is cut short: {len(data) - 4196} bytes where")
    assert f"says {len(data)} (" in str(refused.value)
    assert cut.stat().st_size == len(data) - 4196  # nothing written to it
    assert asyncio.run(find(whole)) == 30


def test_a_wal_left_without_its_database_file_is_refused_not_joined_by_a_new_store(tmp_path: Path) -> None:
    """A store's file removed (or moved) with its -wal left behind: the next start made a new, empty store
    beside that -wal without a word (a crash tester's). Refused, naming both; with the file back, it opens with
    its task."""
    from edgewarm.errors import StoreError

    taskid = killed_after_a_task(tmp_path / "e.db")
    (tmp_path / "e.db").rename(tmp_path / "aside.db")
    with pytest.raises(StoreError) as refused:
        found_in(tmp_path / "e.db", taskid)
    assert str(refused.value).startswith(f"the SQLite database {tmp_path}/e.db is missing (or empty) but its ")
    assert not (tmp_path / "e.db").exists()
    (tmp_path / "aside.db").rename(tmp_path / "e.db")
    assert found_in(tmp_path / "e.db", taskid)


async def tasks_of_100_urls(path: Path, count: int) -> list[str]:
    """`count` tasks of 100 URLs each in the SQLite file at `path` (made if need be): their ids."""
    import uuid

    from edgewarm.models import NewItem, NewTask, QuotaCharge, TaskKind
    from edgewarm.store import open_store

    async with open_store(f"sqlite:///{path}") as store:
        ids = []
        for t in range(count):
            items = tuple(NewItem(i, f"http://www.example.test/{t}/{i}", "edge-1") for i in range(100))
            quota = QuotaCharge("20261129", 100, 0, 10**9, 10**9)
            task = NewTask(str(uuid.uuid4()), "u", TaskKind.PREFETCH, 1.0, items, quota)
            ids.append((await store.create_task(task)).id)
        return ids


def test_a_damaged_database_file_is_named_and_said_to_be_damaged(tmp_path: Path) -> None:
    """Pages of the file overwritten (a disk fault): reading them fails with the file named and what to do, not
    SQLite's bare "database disk image is malformed" (told to clients as "unavailable", to be retried)."""

    from edgewarm.errors import StoreError
    from edgewarm.store import open_store

    path = tmp_path / "e.db"

    async def read(ids: list[str]) -> None:
        async with open_store(f"sqlite:///{path}") as store:
            for taskid in ids:
                await store.list_items(taskid)

    ids = asyncio.run(tasks_of_100_urls(path, 30))
    pages = path.stat().st_size // 4096
    with path.open("r+b") as f:
        for page in range(pages // 2, pages):  # the second half: items, not the schema on page 1
            f.seek(page * 4096)
            f.write(b"\xa5" * 4096)
    with pytest.raises(StoreError) as damaged:
        asyncio.run(read(ids))
    assert str(damaged.value).startswith(f"sqlite: the database {path} is damaged (database disk image is malformed)")


@pytest.mark.parametrize("table", ["items", "tasks"])
def test_a_damaged_database_file_makes_the_store_not_ready_and_every_read_says_so(tmp_path: Path, table: str) -> None:
    """Once a statement found the file damaged, queue_depth (what /readyz asks) says so: the count it makes
    may still work (it reads an index), and /readyz said ready while submissions and queries failed. The
    point reads of a task (prefetchQuery's) raised SQLite's own DatabaseError, not the store's error."""
    import sqlite3

    from edgewarm.errors import StoreDamaged, StoreError
    from edgewarm.store import open_store

    path = tmp_path / "e.db"

    async def use(ids: list[str]) -> tuple[int, list[str], str]:
        async with open_store(f"sqlite:///{path}") as store:
            before = await store.queue_depth()  # an index: not damaged
            failures = []
            for taskid in ids:
                for read in (store.get_task, store.list_items):
                    try:
                        await read(taskid)
                    except StoreError as exc:
                        failures.append(str(exc))
                    except sqlite3.Error as exc:  # what the point read of a task did
                        failures.append(f"raw {exc!r}")
            with pytest.raises(StoreDamaged) as not_ready:
                await store.queue_depth()
            return before, failures, str(not_ready.value)

    ids = asyncio.run(tasks_of_100_urls(path, 30))
    with contextlib.closing(sqlite3.connect(path)) as db:  # the table's pages, not its indexes'
        pages = [p for (p,) in db.execute("SELECT pageno FROM dbstat WHERE name = ? ORDER BY pageno", (table,))]
    with path.open("r+b") as f:
        for page in pages[len(pages) // 2 :]:
            f.seek((page - 1) * 4096)
            f.write(b"\xa5" * 4096)
    before, failures, not_ready = asyncio.run(use(ids))
    assert before == 3000
    assert failures and all(f.startswith(f"sqlite: the database {path} is damaged") for f in failures), failures
    assert not_ready.startswith(f"sqlite: the database {path} is damaged")


def test_sighup_while_starting_or_stopping_is_no_crash(tmp_path: Path) -> None:
    """A SIGHUP (`systemctl reload`) 0.1-0.6 s after `serve` starts killed it without a word (the default action,
    before the reload handler was installed); SIGHUPs every 50 ms during a stop made a clean stop exit -1.
    Now one during the start is a reload once the service runs, and those during the stop are ignored."""
    port = free_port()
    config = write_config(
        tmp_path / "edgewarm.toml",
        store=f"sqlite:///{tmp_path}/edgewarm.db",
        nodes_toml='[[nodes]]\nname = "edge-1"\nurl = "http://127.0.0.1:9"\n',
        port=port,
    )
    service = ServiceProcess(config).start()  # no port: returns at once, not when healthy
    started = time.monotonic()
    assert service.proc is not None
    try:
        for at in (0.1, 0.3, 0.6):
            time.sleep(max(0.0, started + at - time.monotonic()))
            service.proc.send_signal(signal.SIGHUP)
        service.port = port
        service._wait_healthy(30)
        service.wait_for_log("SIGHUP: config reloaded", timeout=10)
        service.proc.send_signal(signal.SIGTERM)
        for _ in range(200):  # 10 s at most
            if service.proc.poll() is not None:
                break
            with contextlib.suppress(ProcessLookupError):
                service.proc.send_signal(signal.SIGHUP)
            time.sleep(0.05)
        code = service.proc.wait(timeout=10)
    finally:
        service.stop()
    assert code == 0, service.log_tail()
    assert "Traceback" not in service.log_text()
