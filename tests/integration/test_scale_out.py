"""Issue 3: several `edgewarm api` and `edgewarm worker` processes on one real PostgreSQL, a real nginx fleet."""

from __future__ import annotations

import asyncio
import subprocess
import sys
import time
from collections import Counter
from collections.abc import Iterator, Sequence
from contextlib import ExitStack
from pathlib import Path

import asyncpg
import pytest

from edgewarm.client import AsyncClient
from edgewarm.models import ItemOutcome
from edgewarm.store import SCHEMA_VERSION, open_store
from edgewarm.testing import DEFAULT_HOST, Lab
from edgewarm.testing.service import DEMO_SECRET, DEMO_USER, ServiceProcess, free_port, write_config

pytestmark = [pytest.mark.anyio, pytest.mark.integration]

PER_CALL = 100  # JD's urls_per_call


@pytest.fixture
def lab(tmp_path: Path) -> Iterator[Lab]:
    with Lab(tmp_path / "lab", edges=2, shield=True) as lab:
        yield lab


class Fleet:
    """Two API processes and some workers on one store; every process stopped by PID at the end."""

    def __init__(self, tmp_path: Path, store: str, nodes_toml: str, *, workers: int, extra: str = "") -> None:
        # One file for API 1 and every worker (workers ignore `listen`), a second one differing only in `listen`.
        ports = [free_port(), free_port()]
        self.configs = [
            write_config(tmp_path / f"api{i}.toml", store=store, nodes_toml=nodes_toml, port=port, extra=extra)
            for i, port in enumerate(ports, 1)
        ]
        self.apis = [
            ServiceProcess(config, command="api", port=port, log=tmp_path / f"api{i}.log")
            for i, (config, port) in enumerate(zip(self.configs, ports, strict=True), 1)
        ]
        self.workers = [
            ServiceProcess(self.configs[0], command="worker", log=tmp_path / f"worker{i}.log")
            for i in range(1, workers + 1)
        ]
        self._stack = ExitStack()

    def __enter__(self) -> Fleet:
        with ExitStack() as stack:
            for process in [*self.apis, *self.workers]:
                stack.enter_context(process)  # ServiceProcess.__exit__ stops it by PID
            for worker in self.workers:
                worker.wait_for_log("edgewarm running", timeout=30)
            self._stack = stack.pop_all()
        return self

    def __exit__(self, *exc: object) -> None:
        self._stack.close()


def differing_lines(a: Path, b: Path) -> set[str]:
    return set(a.read_text().splitlines()) ^ set(b.read_text().splitlines())


def url_of(path: str) -> str:
    return f"http://{DEFAULT_HOST}{path}"


async def submit(client: AsyncClient, paths: Sequence[str]) -> list[str]:
    """Prefetch `paths` in JD-sized calls, one after the other; the task ids."""
    return [await client.prefetch([url_of(p) for p in paths[i : i + PER_CALL]]) for i in range(0, len(paths), PER_CALL)]


async def wait_all(client: AsyncClient, taskids: Sequence[str], timeout: float) -> list[dict[str, object]]:
    """Poll `lookup` until every task has ended; their summaries."""
    deadline = time.monotonic() + timeout
    while True:
        tasks = (await client.lookup(taskids))["tasks"]
        assert len(tasks) == len(taskids)
        if all(t["status"] != 1 for t in tasks):
            return list(tasks)
        if time.monotonic() > deadline:
            done = sum(t["succeeded"] + t["failed"] for t in tasks)
            raise AssertionError(f"tasks still in progress after {timeout}s ({done} items finished)")
        await asyncio.sleep(0.1)


async def wait_finished_items(client: AsyncClient, taskids: Sequence[str], at_least: int, timeout: float) -> int:
    deadline = time.monotonic() + timeout
    while True:
        done = sum(t["succeeded"] + t["failed"] for t in (await client.lookup(taskids))["tasks"])
        if done >= at_least:
            return int(done)
        if time.monotonic() > deadline:
            raise AssertionError(f"only {done} items finished after {timeout}s, waited for {at_least}")
        await asyncio.sleep(0.02)


def logged_paths(lab: Lab, node_name: str, count: int) -> Counter[str]:
    """How often `node_name` logged each /f/ path, once it has logged at least `count` (log lines trail answers)."""
    node = lab.node(node_name)
    return Counter(r.uri for r in lab.wait_for_requests(node, count, timeout=10) if r.uri.startswith("/f/"))


def client_of(service: ServiceProcess) -> AsyncClient:
    return AsyncClient(service.url, DEMO_USER, DEMO_SECRET, timeout=60)


async def test_two_apis_and_three_workers_warm_5000_urls_once_per_node(
    tmp_path: Path, lab: Lab, postgres_db_url: str
) -> None:
    """5,000 URLs sent to API 1 end with status 0 on API 2; each node fetched each URL exactly once."""
    paths = lab.make_files(5000, 256)
    with Fleet(tmp_path, postgres_db_url, lab.nodes_toml(), workers=3) as fleet:
        assert {line.split(" = ")[0] for line in differing_lines(*fleet.configs)} == {"listen"}
        async with client_of(fleet.apis[0]) as first, client_of(fleet.apis[1]) as second:
            taskids = await submit(first, paths)
            assert len(taskids) == 50
            tasks = await wait_all(second, taskids, timeout=240)
            answers = [await second.query(t) for t in taskids]
            alive = [p.proc is not None and p.proc.poll() is None for p in [*fleet.apis, *fleet.workers]]
    assert answers == [{"taskid": t, "status": 0, "msg": "Succeeded"} for t in taskids]
    assert [(t["succeeded"], t["failed"], t["total"]) for t in tasks] == [(300, 0, 300)] * 50
    assert alive == [True] * 5, "a process died during the run"
    once = Counter(paths)
    for name in ("origin", "edge-1", "edge-2"):
        assert logged_paths(lab, name, len(paths)) == once, name
    # The shield also serves the edges' misses: edgewarm's fetch (the one MISS) and one HIT per edge.
    shield = lab.wait_for_requests(lab.node("shield-1"), 3 * len(paths), timeout=10)
    assert Counter(r.uri for r in shield) == Counter({p: 3 for p in paths})
    assert Counter(r.uri for r in shield if r.cache_status == "MISS") == once


async def test_a_warm_after_a_refresh_by_another_worker_fetches_again(tmp_path: Path, postgres_db_url: str) -> None:
    """Two workers on PostgreSQL: warm, refresh, warm again, 4 rounds. Each warm reaches every node and the
    object is cached everywhere at the end of each round (before, a worker reported the second warm from its
    own memory of the first, within `dedupe_seconds`, though the other worker had purged it since: the nodes
    were left cold with the warm reported succeeded)."""
    with (
        Lab(tmp_path / "lab", edges=2, shield=True, purge_module=True) as lab,
        Fleet(tmp_path, postgres_db_url, lab.nodes_toml(), workers=2) as fleet,
    ):
        lab.write_file("/rw/a.txt", b"a" * 100)
        url = url_of("/rw/a.txt")
        async with client_of(fleet.apis[0]) as client:
            for _ in range(4):
                for submit_one in (client.prefetch, client.refresh, client.prefetch):  # each once the last ended
                    (task,) = await wait_all(client, [await submit_one([url])], timeout=60)
                    assert task["status"] == 0, task
                states = {n.name: lab.fetch(n, "/rw/a.txt", method="HEAD").cache_status for n in lab.cache_nodes()}
                assert set(states.values()) == {"HIT"}, states
        for node in lab.cache_nodes():
            gets = [r for r in lab.requests(node) if r.uri == "/rw/a.txt" and r.method == "GET"]
            assert len(gets) >= 8, (node.name, len(gets))


async def test_a_purge_waits_for_the_warms_another_worker_holds_of_its_object(
    tmp_path: Path, postgres_db_url: str
) -> None:
    """A refresh's purge on a node is sent only once the warms of the same object another worker holds leased
    there have ended: written back, or their lease ran out (a dead worker's). Before, only the purging worker's
    own warms were waited for: nginx answers a purge of a key it is still fetching "not cached" and then stores
    the old object the fetch brings (QA: 1 URL in 14 left stale with 3 workers). The other worker is this test,
    holding the warms through the store as a worker does, so that which worker takes what is certain."""
    with (
        Lab(tmp_path / "lab", edges=1, shield=False, purge_module=True) as lab,
        Fleet(tmp_path, postgres_db_url, lab.nodes_toml(), workers=0) as fleet,
    ):
        (edge,) = lab.cache_nodes()
        for name in ("a", "b"):
            lab.write_file(f"/rw/{name}.txt", name.encode() * 100)
        a, b = url_of("/rw/a.txt"), url_of("/rw/b.txt")
        async with client_of(fleet.apis[0]) as client, open_store(postgres_db_url) as other:
            warms = [await client.prefetch([a]), await client.prefetch([b])]
            (held,) = await other.claim_due_items("other-worker", 1, time.time(), 60.0)  # sent until it says
            (dying,) = await other.claim_due_items("other-worker", 1, time.time(), 3.0)  # lease never renewed
            dying_until = time.time() + 3.0
            assert (held.url, dying.url) == (a, b)
            refreshes = [await client.refresh([a]), await client.refresh([b])]
            with ServiceProcess(fleet.configs[0], command="worker", log=tmp_path / "worker.log") as worker:
                worker.wait_for_log("edgewarm running", timeout=30)
                (after_lease,) = await wait_all(client, refreshes[1:], timeout=60)
                await asyncio.sleep(1.0)  # the worker's claims and polls go on meanwhile
                (while_held,) = (await client.lookup(refreshes[:1]))["tasks"]
                purges_while_held = [r for r in lab.requests(edge) if r.method == "PURGE" and r.uri == "/rw/a.txt"]
                outcome = ItemOutcome(held.item_id, True, 1, http_status=200, cache_state="MISS", bytes=100)
                assert await other.record_outcomes("other-worker", [outcome], time.time()) == 1
                (after_written,) = await wait_all(client, refreshes[:1], timeout=30)
                await wait_all(client, warms, timeout=30)  # the dying lease's warm is the worker's now
    assert after_lease["status"] == 0, after_lease
    assert while_held["status"] == 1, "the purge of a was sent while another worker's warm of it was under way"
    assert purges_while_held == []
    assert after_written["status"] == 0, after_written
    purges = {r.uri: r.time for r in lab.requests(edge) if r.method == "PURGE"}
    assert set(purges) == {"/rw/a.txt", "/rw/b.txt"}
    assert purges["/rw/b.txt"] >= dying_until - 0.5, "b was purged before the other worker's lease of its warm ended"


async def test_refreshes_meeting_other_workers_warms_in_flight_leave_no_old_object(
    tmp_path: Path, postgres_db_url: str
) -> None:
    """Three workers warm 14 objects the origin sends slowly (4 s); 1 s in, the objects change and are
    refreshed, one task each. Whichever worker takes a purge, it follows every warm of its object under way:
    no node ends with an old object (before, 8 and 9 of the 14 were old on every node in two runs)."""
    paths = [f"/slow/race-{i}.bin" for i in range(14)]
    with (
        Lab(tmp_path / "lab", edges=2, shield=True, purge_module=True) as lab,
        Fleet(tmp_path, postgres_db_url, lab.nodes_toml(), workers=3) as fleet,
    ):
        for path in paths:
            lab.write_file(path, b"O" * 32_000)  # 4 s at the origin's /slow/ rate
        async with client_of(fleet.apis[0]) as client:
            warms = [await client.prefetch([url_of(p)]) for p in paths]
            await asyncio.sleep(1.0)  # the shield's GETs of the old objects are under way
            for path in paths:
                lab.write_file(path, b"N" * 32_000)
            refreshes = [await client.refresh([url_of(p)]) for p in paths]
            ended = await wait_all(client, refreshes + warms, timeout=120)
        old = [(n.name, p) for p in paths for n in lab.cache_nodes() if lab.fetch(n, p, timeout=30).body[:1] == b"O"]
    assert {t["status"] for t in ended} == {0}, ended
    assert old == []


async def test_a_worker_killed_mid_task_loses_nothing_and_counts_nothing_twice(
    tmp_path: Path, lab: Lab, postgres_db_url: str
) -> None:
    """SIGKILL one of three workers at ~20 %: its leased items run again after 3 s; every count is exact."""
    lease = 3.0
    urls, nodes = 2000, 3
    started = time.time()  # the lab is the module's: its logs hold earlier tests' requests of the same paths
    paths = lab.make_files(urls, 256)
    extra = f"[engine]\nlease_seconds = {lease}\n"
    with Fleet(tmp_path, postgres_db_url, lab.nodes_toml(), workers=3, extra=extra) as fleet:
        async with client_of(fleet.apis[0]) as first, client_of(fleet.apis[1]) as second:
            taskids = await submit(first, paths)
            done_before = await wait_finished_items(second, taskids, urls * nodes // 5, timeout=120)
            fleet.workers[0].kill()
            killed_at = time.time()
            assert done_before < urls * nodes * 0.9, "the kill came too late to test anything"
            await wait_all(second, taskids, timeout=180)
            views = [await second.task(t, limit=0) for t in taskids]
    for view in views:
        assert view["status"] == 0, view
        # `succeeded` is the task's counter, bumped once per applied outcome; `counts` are the items' states.
        assert view["succeeded"] == view["counts"]["succeeded"] == view["total"] == PER_CALL * nodes
        assert view["failed"] == 0 and view["progress"] == 1.0
    assert sum(v["counts"]["succeeded"] for v in views) == urls * nodes
    for name in ("shield-1", "edge-1", "edge-2"):
        assert set(logged_paths(lab, name, urls)) == set(paths), name
    rerun = sent_again(lab, urls, since=started)
    assert rerun, "the killed worker had no request out: nothing was sent again"
    # The dead worker renewed its leases to `lease` s ahead every lease/3 s: they expired about 2-3 s after the
    # kill, and only then were its items sent again (1 s of slack for a renewal late on a busy machine).
    assert min(rerun) >= killed_at + lease * 2 / 3 - 1.0, (min(rerun) - killed_at, len(rerun))


def sent_again(lab: Lab, count: int, since: float) -> list[float]:
    """When each /f/ path a node logged more than once (since `since`) was last sent there: the items a dead
    worker had out (sent, their outcomes never written), sent again by another. (Their attempts do not show it:
    the dead worker had not recorded the attempt it began, and an item it only held claimed costs none.) The
    shield logs each edge's fill besides the warm: a path is sent again there when it logged more than that
    (the kill may come while the worker has only shield items out)."""
    again = []
    for node in [*lab.edges, *([lab.shield] if lab.shield else [])]:
        expected = 1 if node is not lab.shield else 1 + len(lab.edges)
        last: dict[str, list[float]] = {}
        for request in lab.wait_for_requests(node, count, timeout=10):
            if request.uri.startswith("/f/") and request.time >= since:
                last.setdefault(request.uri, []).append(request.time)
        again += [max(times) for times in last.values() if len(times) > expected]
    return again


def edgewarm_cli(*args: str) -> subprocess.CompletedProcess[str]:
    exe = Path(sys.executable).with_name("edgewarm")
    return subprocess.run([str(exe), *args], capture_output=True, text=True, timeout=60, check=False)


def exit_code_and_log(service: ServiceProcess, timeout: float = 30) -> tuple[int, str]:
    service.start()
    assert service.proc is not None
    try:
        code = service.proc.wait(timeout)
    finally:
        service.kill()
    return code, service.log.read_text(errors="replace")


async def test_db_upgrade_creates_the_schema_and_an_outdated_one_stops_the_service(
    tmp_path: Path, postgres_db_url: str
) -> None:
    """`edgewarm db upgrade` creates the schema, then says it has nothing to do; api and worker refuse a lower
    version, naming the command."""
    node = f'[[nodes]]\nname = "edge-1"\nurl = "http://127.0.0.1:{free_port()}"\n'
    config = write_config(tmp_path / "edgewarm.toml", store=postgres_db_url, nodes_toml=node, port=free_port())
    done = edgewarm_cli("db", "upgrade", "--config", str(config))
    assert done.returncode == 0, done.stderr
    assert done.stdout.strip().startswith(f"created the schema (version {SCHEMA_VERSION}) in postgresql://")
    again = edgewarm_cli("db", "upgrade", "--config", str(config))
    assert again.stdout.strip() == f"the schema is at version {SCHEMA_VERSION} already: nothing to do", again
    conn = await asyncpg.connect(postgres_db_url)
    try:
        tables = {r[0] for r in await conn.fetch("SELECT tablename FROM pg_tables WHERE schemaname = 'public'")}
        assert {"meta", "tasks", "items", "usage"} <= tables
        assert await conn.fetchval("SELECT value FROM meta WHERE key = 'schema_version'") == str(SCHEMA_VERSION)
        assert SCHEMA_VERSION >= 2, "a lower version than 1 would be 0, which means 'no schema yet'"
        await conn.execute("UPDATE meta SET value = $1 WHERE key = 'schema_version'", str(SCHEMA_VERSION - 1))
    finally:
        await conn.close()
    for command in ("api", "worker"):
        # No port given: start() does not wait for /healthz, the process is expected to exit.
        service = ServiceProcess(config, command=command, log=tmp_path / f"{command}.log")
        code, log = exit_code_and_log(service)
        assert code != 0, (command, log)
        assert "edgewarm db upgrade" in log, (command, log)
        assert f"schema version {SCHEMA_VERSION - 1}" in log, (command, log)
