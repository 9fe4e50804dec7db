"""Issue #7, part 3c: crashes on PostgreSQL. `edgewarm api` and `edgewarm worker` processes share one
database and warm a real nginx fleet.

- Workers are SIGKILLed during a task and started again: items they held come back when their lease expires,
  and the task ends with status 0, each item counted once.
- PostgreSQL itself is restarted during a task under `edgewarm serve`: meanwhile submissions get status -1
  with a message and /readyz says 503; once it is back, the task ends with status 0, each item counted once.
"""

from __future__ import annotations

import asyncio
import re
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import httpx
import pytest

from edgewarm.client import Client
from edgewarm.testing import Lab
from edgewarm.testing.postgres import PostgresCluster, PostgresUnavailable
from edgewarm.testing.service import DEMO_SECRET, DEMO_USER, ServiceProcess, free_port, write_config

from .support import LONG, real_signature, wait_until

pytestmark = pytest.mark.integration


@pytest.fixture
def lab(tmp_path: Path) -> Iterator[Lab]:
    with Lab(tmp_path / "lab", edges=1, shield=True) as lab:
        yield lab


async def pg_counts(url: str) -> dict[str, dict[str, Any]]:
    """Per task: total, counters, and items by state, from the database."""
    import asyncpg

    conn = await asyncpg.connect(url)
    try:
        tasks = {
            r["id"]: {"total": r["total"], "succeeded": r["succeeded"], "failed": r["failed"], "status": r["status"]}
            for r in await conn.fetch("SELECT id, total, succeeded, failed, status FROM tasks")
        }
        for r in await conn.fetch("SELECT task_id, state, COUNT(*) AS n FROM items GROUP BY task_id, state"):
            tasks[r["task_id"]].setdefault("states", {})[r["state"]] = r["n"]
        return tasks
    finally:
        await conn.close()


def assert_counted_once(url: str, taskid: str, total: int) -> None:
    task = asyncio.run(pg_counts(url))[taskid]
    assert task == {"total": total, "succeeded": total, "failed": 0, "status": 0, "states": {"succeeded": total}}


def wait_running(process: ServiceProcess, times: int, timeout: float = 30.0) -> None:
    """Until the process's log says "edgewarm running" `times` times (a worker has no port to probe)."""
    deadline = time.monotonic() + timeout
    while process.log.read_text(errors="replace").count("edgewarm running") < times:
        assert process.proc is not None and process.proc.poll() is None, process.log_tail()
        assert time.monotonic() < deadline, f"{process.command} not running after {timeout}s: {process.log_tail()}"
        time.sleep(0.05)


def finished(client: Client, taskid: str) -> int:
    view = client.task(taskid, limit=0)
    return int(view["succeeded"]) + int(view["failed"])


def wait_progress(client: Client, taskid: str, target: int, total: int, timeout: float = 120.0) -> int:
    deadline = time.monotonic() + timeout
    while (done := finished(client, taskid)) < target:
        assert time.monotonic() < deadline, f"stuck at {done} of {total}"
        time.sleep(0.02)
    return done


def test_sigkill_of_workers_on_postgresql_counts_every_item_once(
    tmp_path: Path, lab: Lab, postgres_cluster: PostgresCluster, capsys: pytest.CaptureFixture[str]
) -> None:
    """Two workers on PostgreSQL, SIGKILLed in turn during one task and restarted: status 0, counted once."""
    # Enough work, at a pace slow enough, that a worker's restart (a second or two on a loaded machine) comes
    # before the other has finished the task alone.
    urls, kills = (20_000, 10) if LONG else (2_000, 2)
    total = urls * 2
    url = asyncio.run(postgres_cluster.create_database())
    paths = lab.make_files(urls, 256)
    port = free_port()
    extra = (
        f"[limits]\nurls_per_call = {urls}\n[api]\nmax_body_bytes = {16 << 20}\n"
        "[engine]\nconcurrency = 4\nper_node_concurrency = 2\nlease_seconds = 2.0\n"
    )
    config = write_config(tmp_path / "edgewarm.toml", store=url, nodes_toml=lab.nodes_toml(), port=port, extra=extra)
    api = ServiceProcess(config, command="api", port=port).start()
    workers = [ServiceProcess(config, command="worker", log=tmp_path / f"worker-{i}.log").start() for i in (0, 1)]
    starts = [1, 1]
    at_kill = []
    started = time.monotonic()
    try:
        for worker in workers:
            wait_running(worker, 1)
        with Client(api.url, DEMO_USER, DEMO_SECRET, timeout=120) as client:
            taskid = client.prefetch([f"http://www.example.test{p}" for p in paths])
            for k in range(kills):
                # The kills in the task's first half: the second half leaves room for a slow restart.
                at_kill.append(wait_progress(client, taskid, total * (k + 1) // (2 * kills + 2), total))
                victim = k % 2
                workers[victim].kill()
                workers[victim] = ServiceProcess(config, command="worker", log=tmp_path / f"worker-{victim}.log")
                workers[victim].start()
                starts[victim] += 1
                wait_running(workers[victim], starts[victim])
            view = client.wait(taskid, timeout=300)
        took = time.monotonic() - started
    finally:
        for process in (*workers, api):
            process.stop()
    assert all(done < total for done in at_kill), at_kill
    assert view["status"] == 0, view
    assert_counted_once(url, taskid, total)
    asyncio.run(postgres_cluster.drop_database(url.rsplit("/", 1)[1]))
    with capsys.disabled():
        print(
            f"\n[reliability] PostgreSQL: {kills} worker SIGKILLs during {urls} URLs ({total} items), done at "
            f"{at_kill}; task ended after {took:.1f}s"
        )


def test_postgresql_restarted_during_a_task(tmp_path: Path, lab: Lab, capsys: pytest.CaptureFixture[str]) -> None:
    """PostgreSQL down 2 s mid-task: -1 and /readyz 503 meanwhile; then status 0, each item counted once."""
    try:
        cluster = PostgresCluster()
    except PostgresUnavailable as exc:
        pytest.skip(str(exc))
    urls = 1_000
    total = urls * 2
    paths = lab.make_files(urls, 256)
    again = r'"message":"listening for work on [^"]* again"'  # the line "… failed" has "listening for work on" too
    with cluster:
        url = asyncio.run(cluster.create_database())
        port = free_port()
        extra = (
            f"[limits]\nurls_per_call = {urls}\n[api]\nmax_body_bytes = {16 << 20}\n"
            "[engine]\nconcurrency = 8\nper_node_concurrency = 4\nlease_seconds = 3.0\n"
        )
        config = write_config(
            tmp_path / "edgewarm.toml", store=url, nodes_toml=lab.nodes_toml(), port=port, extra=extra
        )
        service = ServiceProcess(config, port=port).start()
        sig = real_signature(DEMO_USER, DEMO_SECRET)
        try:
            with (
                Client(service.url, DEMO_USER, DEMO_SECRET, timeout=120) as client,
                httpx.Client(base_url=service.url, timeout=30) as http,
            ):
                taskid = client.prefetch([f"http://www.example.test{p}" for p in paths])
                before_stop = wait_progress(client, taskid, total // 4, total)
                cluster._stop_server()  # fast shutdown; the data folder stays
                down = time.monotonic()
                body = {"username": DEMO_USER, "signature": sig, "publish_urls": ["http://www.example.test/x"]}
                refused = http.post("/api/prefetch", json=body)
                assert refused.status_code == 200
                assert refused.json()["status"] == -1 and refused.json()["msg"], refused.text
                assert http.get("/readyz").status_code == 503
                assert http.get("/healthz").status_code == 200
                time.sleep(max(0.0, 2.0 - (time.monotonic() - down)))
                assert cluster._start_server(), "PostgreSQL did not come back on its port"
                back = time.monotonic()
                view = client.wait(taskid, timeout=180)
                recovered = time.monotonic() - back
                assert http.get("/readyz").status_code == 200
                assert http.post("/api/prefetch", json=body).json()["status"] == 0
                # Its own loop listens again, on a backoff of its own (0.5, 1.5, 3.5, 7.5 s): not by the task's end.
                wait_until(
                    lambda: re.search(again, service.log.read_text(errors="replace")) is not None,
                    40,
                    "the store's listener to listen again",
                )
        finally:
            stopped = service.stop()
        assert stopped == 0, service.log_tail()
        log = service.log.read_text(errors="replace")
        assert re.search(again, log), log  # its recovery is told
        # asyncpg's pool warns at each retry of its connections: one line each, without a traceback.
        pool_lines = [line for line in log.splitlines() if '"logger":"asyncpg.pool"' in line]
        assert not [line for line in pool_lines if '"exception"' in line], pool_lines
        assert before_stop < total
        assert view["status"] == 0, view
        assert_counted_once(url, taskid, total)
    with capsys.disabled():
        print(
            f"\n[reliability] PostgreSQL down 2 s at {before_stop}/{total} items; ended {recovered:.1f}s after restart"
        )
