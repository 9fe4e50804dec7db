"""Crashes and a full disk on PostgreSQL, with `edgewarm api`, `worker` and `serve` as processes (docs/reliability.md,
bug 12: tried by hand in session 15, now in the suite).

- `edgewarm api` is SIGKILLed (and started again on its port) while six callers send prefetch calls of 100 URLs,
  two workers warming a real nginx fleet meanwhile: every call answered with a task id has that task with all
  its items in the database; a call cut by the kill made a whole task or none; a call with an idempotency key,
  retried, made one task and was answered with it; the day's quota equals the URLs of the tasks made (a call
  that made no task charged nothing); every task ends status 0 with its counters equal to its items by state;
  the workers never stopped.
- PostgreSQL's data files on a tmpfs that fills up (its WAL elsewhere, so that the server itself keeps running)
  under `edgewarm serve`: submissions get JD status -1 naming the store, /readyz says 503, nothing is charged
  for them, outcomes in flight wait; once the filler is removed the service goes on by itself, /readyz says 200,
  and every task accepted, before and during the fill, ends status 0 with its counters exact.
"""

from __future__ import annotations

import asyncio
import contextlib
import errno
import os
import shutil
import subprocess
import threading
import time
from collections import Counter
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any
from urllib.parse import parse_qs, urlsplit

import httpx
import pytest

from edgewarm.testing import Lab
from edgewarm.testing.faults import FaultServer, Respond
from edgewarm.testing.postgres import PostgresCluster, PostgresUnavailable
from edgewarm.testing.service import DEMO_SECRET, DEMO_USER, ServiceProcess, free_port, write_config

from .support import PlainCalls, node_toml, real_signature, wait_until

pytestmark = pytest.mark.integration

PER_CALL = 100  # JD's urls_per_call


# -- the database, read straight ---------------------------------------------------------------------------


@dataclass
class Stored:
    """What the database holds: per task its row, items by state and the calls its URLs name; the quota charged."""

    tasks: dict[str, dict[str, Any]]
    usage_urls: int

    def problems(self) -> list[str]:
        """Every task whose counters disagree with its items, or whose items are not its total."""
        out = []
        for taskid, t in self.tasks.items():
            states: Counter[str] = t["states"]
            if t["total"] != sum(states.values()):
                out.append(f"{taskid}: total {t['total']} but {sum(states.values())} items")
            if t["succeeded"] != states["succeeded"] or t["failed"] != states["failed"]:
                out.append(f"{taskid}: counters {t['succeeded']}/{t['failed']} but items {dict(states)}")
        return out


async def stored(url: str) -> Stored:
    import asyncpg

    conn = await asyncpg.connect(url, timeout=30)
    try:
        snapshot = conn.transaction(isolation="repeatable_read", readonly=True)  # one view for all the reads
        await snapshot.start()
        tasks: dict[str, dict[str, Any]] = {
            r["id"]: {
                "total": r["total"],
                "succeeded": r["succeeded"],
                "failed": r["failed"],
                "status": r["status"],
                "key": r["idempotency_key"],
                "states": Counter(),
                "calls": Counter(),
                "urls": 0,
            }
            for r in await conn.fetch("SELECT id, total, succeeded, failed, status, idempotency_key FROM tasks")
        }
        for r in await conn.fetch("SELECT task_id, state, COUNT(*) AS n FROM items GROUP BY task_id, state"):
            tasks[r["task_id"]]["states"][r["state"]] += r["n"]
        # Each call's URLs carry its number in their query (`?c=17`): which calls made each task, and how many URLs.
        for r in await conn.fetch("SELECT task_id, url FROM items"):
            tasks[r["task_id"]]["calls"][parse_qs(urlsplit(r["url"]).query).get("c", ["?"])[0]] += 1
        for r in await conn.fetch("SELECT task_id, COUNT(DISTINCT url) AS n FROM items GROUP BY task_id"):
            tasks[r["task_id"]]["urls"] = r["n"]
        usage = await conn.fetchval("SELECT COALESCE(SUM(urls), 0) FROM usage")
        await snapshot.rollback()
        return Stored(tasks, int(usage))
    finally:
        await conn.close()


def wait_all_ended(url: str, timeout: float) -> Stored:
    """The database once no task is in progress, or at once when a task's counters or items disagree (a task
    half made never ends: the caller's assertions say what is wrong); AssertionError after `timeout`."""
    deadline = time.monotonic() + timeout
    while True:
        found = asyncio.run(stored(url))
        if found.problems() or all(t["status"] != 1 for t in found.tasks.values()):
            return found
        if time.monotonic() > deadline:
            open_ = [t for t in found.tasks.values() if t["status"] == 1]
            left = sum(t["total"] - t["succeeded"] - t["failed"] for t in open_)
            raise AssertionError(f"{len(open_)} tasks still in progress after {timeout}s ({left} items left)")
        time.sleep(0.5)


# -- test 1: SIGKILL of `edgewarm api` ---------------------------------------------------------------------------


@dataclass
class Calls:
    """The callers' record, shared by their threads."""

    total: int
    answered: dict[int, str] = field(default_factory=dict)  # call -> task id answered
    cut: set[int] = field(default_factory=set)  # sent, no answer (the API died under it), not retried
    retried: set[int] = field(default_factory=set)  # keyed calls cut and sent again
    refused: dict[int, object] = field(default_factory=dict)  # an answer other than status 0
    lock: threading.Lock = field(default_factory=threading.Lock)
    next_call: int = 0
    stopped: bool = False  # the test is over (it failed): callers stop

    def take(self) -> int | None:
        with self.lock:
            if self.stopped or self.next_call >= self.total:
                return None
            self.next_call += 1
            return self.next_call - 1

    @property
    def done(self) -> int:
        with self.lock:
            return len(self.answered) + len(self.cut) + len(self.refused)


def caller(base_url: str, paths: list[str], calls: Calls, deadline: float) -> None:
    """Send calls until there are none left: even calls carry an idempotency key and are retried when cut, as a
    client would; odd ones are given up when cut. A refused connection sent nothing: tried again (bounded)."""
    sig = real_signature(DEMO_USER, DEMO_SECRET)
    with httpx.Client(base_url=base_url, timeout=60) as http:
        while (call := calls.take()) is not None:
            body: dict[str, object] = {
                "username": DEMO_USER,
                "signature": sig,
                "publish_urls": [f"http://www.example.test{p}?c={call}" for p in paths],
            }
            keyed = call % 2 == 0
            if keyed:
                body["idempotency_key"] = f"pgcrash-{call}"
            while not calls.stopped:
                assert time.monotonic() < deadline, f"call {call} unanswered at the deadline"
                try:
                    answer = http.post("/api/prefetch", json=body).json()
                except httpx.ConnectError:  # the API is restarting: nothing was sent
                    time.sleep(0.05)
                    continue
                except (httpx.TransportError, ValueError):  # sent, and cut (or half an answer)
                    if keyed:
                        with calls.lock:
                            calls.retried.add(call)
                        continue
                    with calls.lock:
                        calls.cut.add(call)
                    break
                with calls.lock:
                    if answer.get("status") == 0:
                        calls.answered[call] = answer["taskid"]
                    else:
                        calls.refused[call] = answer
                break


def test_sigkill_of_the_api_on_postgresql_makes_whole_tasks_or_none(
    tmp_path: Path, postgres_cluster: PostgresCluster, capsys: pytest.CaptureFixture[str]
) -> None:
    """`edgewarm api` SIGKILLed 3 times during 200 calls of 100 URLs from 6 callers, two workers warming: every
    answered call's task is whole, a cut call made a whole task or none, keyed retries made one task, quota equals
    the URLs in tasks, every task ends status 0 with counters exact, the workers never stopped."""
    total_calls, callers, kills = 200, 6, 3
    url = asyncio.run(postgres_cluster.create_database())
    with Lab(tmp_path / "lab", edges=1, shield=False) as lab:
        paths = lab.make_files(PER_CALL, 128)
        nodes = len(lab.cache_nodes())
        port = free_port()
        config = write_config(tmp_path / "edgewarm.toml", store=url, nodes_toml=lab.nodes_toml(), port=port)
        workers = [ServiceProcess(config, command="worker", log=tmp_path / f"worker-{i}.log") for i in (0, 1)]
        api = ServiceProcess(config, command="api", port=port, log=tmp_path / "api.log")
        calls = Calls(total_calls)
        at_kill: list[int] = []
        started = time.monotonic()
        try:
            for worker in workers:
                worker.start().wait_for_log("edgewarm running", timeout=30)
            api.start(timeout=30)
            deadline = time.monotonic() + 150
            threads = [
                threading.Thread(target=caller, args=(api.url, paths, calls, deadline), daemon=True)
                for _ in range(callers)
            ]
            for thread in threads:
                thread.start()
            for k in range(kills):
                target = total_calls * (k + 1) // (kills + 1)
                wait_until(lambda: calls.done >= target, 120, f"{target} calls done")  # noqa: B023
                at_kill.append(calls.done)
                api.kill()
                api = ServiceProcess(config, command="api", port=port, log=tmp_path / "api.log")
                api.start(timeout=30)
            for thread in threads:
                thread.join(max(1.0, deadline - time.monotonic()))
            assert not any(thread.is_alive() for thread in threads), "callers still calling at the deadline"
            called = time.monotonic() - started
            found = wait_all_ended(url, timeout=120)
            alive = [p.proc is not None and p.proc.poll() is None for p in workers]
            took = time.monotonic() - started
        finally:
            calls.stopped = True
            for process in (api, *workers):
                process.stop()
    worker_starts = [w.log.read_text(errors="replace").count("edgewarm running") for w in workers]
    asyncio.run(postgres_cluster.drop_database(url.rsplit("/", 1)[1]))

    assert found.problems() == []  # no task half made; counters equal to items by state
    assert calls.refused == {}, calls.refused
    assert len(calls.answered) + len(calls.cut) == total_calls
    by_call: dict[int, list[str]] = {}
    for taskid, task in found.tasks.items():
        # Whole: every URL of its one call, on every node; never a task of fewer items than URLs × nodes.
        assert len(task["calls"]) == 1, (taskid, task["calls"])
        call = int(next(iter(task["calls"])))
        assert task["total"] == PER_CALL * nodes and task["urls"] == PER_CALL, (call, task)
        assert task["key"] == (f"pgcrash-{call}" if call % 2 == 0 else None), (call, task["key"])
        by_call.setdefault(call, []).append(taskid)
    assert all(len(ids) == 1 for ids in by_call.values()), {c: ids for c, ids in by_call.items() if len(ids) > 1}
    # Every answer names the task its call made.
    assert {c: ids[0] for c, ids in by_call.items() if c in calls.answered} == calls.answered
    made_by_cut = sorted(c for c in calls.cut if c in by_call)
    assert set(by_call) <= set(calls.answered) | calls.cut
    # The quota: the URLs of the tasks made, nothing for a call that made none.
    assert found.usage_urls == PER_CALL * len(found.tasks)
    assert [t["status"] for t in found.tasks.values()] == [0] * len(found.tasks)
    assert sum(t["states"]["succeeded"] for t in found.tasks.values()) == PER_CALL * nodes * len(found.tasks)
    assert alive == [True, True] and worker_starts == [1, 1], (alive, worker_starts)
    assert calls.cut or calls.retried, "no call was under way at any kill: the kills tested nothing"
    with capsys.disabled():
        print(
            f"\n[reliability] PostgreSQL: api SIGKILLed {kills}x at {at_kill} of {total_calls} calls; "
            f"{len(calls.answered)} answered, {len(calls.cut)} cut ({len(made_by_cut)} of them made their task), "
            f"{len(calls.retried)} keyed calls retried; calls done at {called:.1f}s; {len(found.tasks)} tasks ended "
            f"status 0 at {took:.1f}s"
        )


# -- test 2: PostgreSQL on a full disk ---------------------------------------------------------------------------


def mount_tmpfs(folder: Path, size: str, uid: int, gid: int) -> None:
    """A tmpfs of `size` on `folder`, its root owned by (uid, gid), mode 0700 (as PostgreSQL wants its data folder)."""
    options = f"size={size},mode=0700,uid={uid},gid={gid}"
    mounted = subprocess.run(
        ["mount", "-t", "tmpfs", "-o", options, "tmpfs", str(folder)], capture_output=True, timeout=30
    )
    if mounted.returncode != 0:
        pytest.skip(f"cannot mount a tmpfs: {mounted.stderr.decode(errors='replace').strip()}")


def unmount(folder: Path) -> None:
    for _ in range(50):
        if subprocess.run(["umount", str(folder)], capture_output=True, timeout=30).returncode == 0:
            return
        time.sleep(0.1)
    subprocess.run(["umount", "-l", str(folder)], capture_output=True, timeout=30)
    raise AssertionError(f"{folder} stayed busy: unmounted lazily")


@contextlib.contextmanager
def cluster_on_tmpfs(size: str = "96m") -> Iterator[tuple[PostgresCluster, Path]]:
    """A PostgresCluster whose data files live on a tmpfs of `size`, its WAL (pg_wal, a symlink) beside it on the
    ordinary disk: a full data disk makes writes fail with "could not extend file", while the server runs on (a
    full WAL disk makes PostgreSQL itself PANIC and stop: its own behaviour, not edgewarm's). Yields the cluster
    and the tmpfs. Root only (mount; the server runs as `postgres` or `nobody`)."""
    if os.geteuid() != 0:
        pytest.skip("mounting a tmpfs needs root")
    try:
        cluster = PostgresCluster()
    except PostgresUnavailable as exc:
        pytest.skip(str(exc))
    with cluster:
        cluster._stop_server()  # initdb done: move the data files onto the tmpfs, keep the WAL out of it
        assert cluster.folder is not None
        data = cluster.folder / "data"
        aside = cluster.folder / "initdb"
        wal = cluster.folder / "wal"
        uid, gid = os.stat(data).st_uid, os.stat(data).st_gid
        (data / "pg_wal").rename(wal)
        data.rename(aside)
        data.mkdir(mode=0o700)
        mount_tmpfs(data, size, uid, gid)
        try:
            copied = subprocess.run(["cp", "-a", f"{aside}/.", str(data)], capture_output=True, timeout=120)
            assert copied.returncode == 0, copied.stderr.decode(errors="replace")
            shutil.rmtree(aside)
            (data / "pg_wal").symlink_to(wal)
            os.lchown(data / "pg_wal", uid, gid)
            assert cluster._start_server(), "PostgreSQL did not start again on its port"
            yield cluster, data
        finally:
            cluster._stop_server()
            unmount(data)


def fill(folder: Path) -> Path:
    """Write a file until the file system is full; the file."""
    filler = folder / "filler"
    chunk = b"\0" * 65536
    with open(filler, "wb", buffering=0) as out:
        try:
            for _ in range(1 << 20):  # 64 GiB at most: a tmpfs of megabytes is full long before
                out.write(chunk)
        except OSError as exc:
            assert exc.errno == errno.ENOSPC, exc
        else:
            raise AssertionError(f"{folder} never filled up")
    with open(filler, "ab", buffering=0) as out, contextlib.suppress(OSError):  # the last few bytes too
        for _ in range(1 << 16):
            out.write(b"\0")
    return filler


def test_postgresql_on_a_full_disk_refuses_submissions_clearly_and_recovers(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    """PostgreSQL's data disk full under `edgewarm serve`: -1 naming the store, /readyz 503, nothing charged;
    space freed: /readyz 200 by itself, every accepted task ends status 0 with counters exact."""
    body = b"x" * 100
    with cluster_on_tmpfs() as (cluster, disk), FaultServer(Respond(200, body=body)) as node:
        url = asyncio.run(cluster.create_database())
        port = free_port()
        extra = (
            "[limits]\nurls_per_call = 1000\n[engine]\nbackoff_base = 0.05\nbackoff_max = 0.2\npoll_interval = 0.2\n"
        )
        config = write_config(
            tmp_path / "edgewarm.toml", store=url, nodes_toml=node_toml("n", node.url), port=port, extra=extra
        )
        service = ServiceProcess(config, port=port).start(timeout=30)
        try:
            with httpx.Client(base_url=service.url, timeout=60) as http:
                calls = PlainCalls(http, DEMO_USER, DEMO_SECRET)
                submit, wait, sig = calls.submit, calls.wait, calls.signature
                before = submit(200, "before")
                assert before["status"] == 0, before
                assert wait(before["taskid"])["status"] == 0

                # Outcomes in flight when the disk fills: the node holds its answers for a second.
                node.set_behaviour(Respond(200, body=body, delay=1.0))
                held = submit(300, "held")
                assert held["status"] == 0, held
                wait_until(lambda: len(node.requests) >= 200 + 20, 20, "the held requests arrived")
                filler = fill(disk)

                refused = [submit(1000, f"full-{k}") for k in range(5)]
                for answer in refused:
                    assert answer["status"] == -1, answer
                    assert isinstance(answer["msg"], str) and "store" in answer["msg"], answer
                ready = http.get("/readyz")
                assert ready.status_code == 503, ready.text
                assert "No space left on device" in ready.json()["error"], ready.text
                assert http.get("/healthz").status_code == 200
                query = {"username": DEMO_USER, "signature": sig, "taskid": before["taskid"]}
                assert http.post("/api/prefetchQuery", json=query).json()["data"]["status"] == 0  # reads work
                time.sleep(1.5)  # the held answers come back and cannot all be written
                full_view = wait(held["taskid"], timeout=0)

                filler.unlink()
                node.set_behaviour(Respond(200, body=body))
                wait_until(lambda: http.get("/readyz").status_code == 200, 30, "/readyz 200 after space was freed")
                assert wait(held["taskid"], timeout=60)["status"] == 0
                after = submit(50, "after")
                assert after["status"] == 0, after
                assert wait(after["taskid"])["status"] == 0
        finally:
            stopped = service.stop()
        found = asyncio.run(stored(url))
        log = service.log.read_text(errors="replace")
    assert stopped == 0, log[-3000:]
    # The held outcomes met the full disk, were kept and written once space was back.
    assert "writing outcomes (kept, and tried again) failed" in log, log[-3000:]
    assert "No space left on device" in log, log[-3000:]
    assert found.problems() == []
    assert sorted(t["total"] for t in found.tasks.values()) == [50, 200, 300]
    assert all(t["status"] == 0 and t["failed"] == 0 for t in found.tasks.values()), found.tasks
    assert found.usage_urls == 550  # the refused calls charged nothing
    # Each URL accepted was sent once: none lost, none sent again after the store came back.
    sent = Counter(r.target for r in node.requests)
    assert sum(sent.values()) == 550 and set(sent.values()) == {1}, sent.most_common(3)
    with capsys.disabled():
        print(
            f"\n[reliability] PostgreSQL data disk full: {len(refused)} submissions refused (-1), /readyz 503; "
            f"the held task at {full_view['succeeded']}/300 while full; all 3 tasks status 0 after space was freed"
        )
