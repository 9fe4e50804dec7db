"""Issue #7, part 4: a bounded load on loopback. `edgewarm serve` warms a real nginx fleet (shield + 2 edges)
while an asyncio client submits 10-URL tasks and asks prefetchQuery about them, all at once, for a fixed time.

Measured and printed: requests per second, p50/p99 latency of submissions and of prefetchQuery, items warmed
per second. Held: every submission accepted, every query answered, zero lost or duplicated tasks (each accepted
id is found with its 10 x 3 items, the store holds exactly the accepted tasks), every task ends with status 0.
"""

from __future__ import annotations

import asyncio
import json
import random
import statistics
import time
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import httpx
import pytest

from edgewarm.testing import Lab
from edgewarm.testing.postgres import PostgresCluster
from edgewarm.testing.service import DEMO_SECRET, DEMO_USER, ServiceProcess

from .support import consistency, real_signature, scale, start_service

pytestmark = pytest.mark.integration

DURATION = scale(5.0, 30.0)
SUBMITTERS = 4
QUERIERS = 12
URLS_PER_TASK = 10
NODES = 3
POOL = 3000


@pytest.fixture(scope="module")
def lab(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Lab]:
    with Lab(tmp_path_factory.mktemp("lab"), edges=2, shield=True) as lab:
        lab.make_files(POOL, 1024)
        yield lab


@dataclass
class Load:
    submit_ms: list[float] = field(default_factory=list)
    query_ms: list[float] = field(default_factory=list)
    accepted: list[str] = field(default_factory=list)
    refused: list[Any] = field(default_factory=list)
    wrong_answers: list[Any] = field(default_factory=list)
    seconds: float = 0.0

    def figures(self) -> dict[str, float]:
        def pct(values: list[float], p: int) -> float:
            return round(statistics.quantiles(values, n=100)[p - 1], 2) if len(values) >= 2 else float("nan")

        calls = len(self.submit_ms) + len(self.query_ms)
        return {
            "seconds": round(self.seconds, 1),
            "requests_per_s": round(calls / self.seconds, 1),
            "submits_per_s": round(len(self.submit_ms) / self.seconds, 1),
            "queries_per_s": round(len(self.query_ms) / self.seconds, 1),
            "submit_p50_ms": pct(self.submit_ms, 50),
            "submit_p99_ms": pct(self.submit_ms, 99),
            "query_p50_ms": pct(self.query_ms, 50),
            "query_p99_ms": pct(self.query_ms, 99),
        }


async def run_load(base_url: str, duration: float, paths: list[str]) -> Load:
    """Submitters and queriers on one connection pool until `duration` has passed; every loop is bounded."""
    sig = real_signature(DEMO_USER, DEMO_SECRET)
    load = Load()
    rng = random.Random(7)
    limits = httpx.Limits(max_connections=SUBMITTERS + QUERIERS, max_keepalive_connections=SUBMITTERS + QUERIERS)
    async with httpx.AsyncClient(base_url=base_url, timeout=30, limits=limits) as http:
        end = time.monotonic() + duration

        async def submitter() -> None:
            while time.monotonic() < end:
                urls = [f"http://www.example.test{p}" for p in rng.sample(paths, URLS_PER_TASK)]
                body = {"username": DEMO_USER, "signature": sig, "publish_urls": urls}
                started = time.perf_counter()
                response = await http.post("/api/prefetch", json=body)
                load.submit_ms.append((time.perf_counter() - started) * 1000)
                answer = response.json()
                if response.status_code == 200 and answer.get("status") == 0:
                    load.accepted.append(answer["taskid"])
                else:
                    load.refused.append((response.status_code, answer))

        async def querier() -> None:
            while time.monotonic() < end:
                if not load.accepted:
                    await asyncio.sleep(0.005)
                    continue
                taskid = rng.choice(load.accepted)
                body = {"username": DEMO_USER, "signature": sig, "taskid": taskid}
                started = time.perf_counter()
                response = await http.post("/api/prefetchQuery", json=body)
                load.query_ms.append((time.perf_counter() - started) * 1000)
                answer = response.json()
                if answer.get("status") != 0 or answer["data"]["taskid"] != taskid:
                    load.wrong_answers.append(answer)

        started = time.monotonic()
        workers = [submitter() for _ in range(SUBMITTERS)] + [querier() for _ in range(QUERIERS)]
        await asyncio.wait_for(asyncio.gather(*workers), timeout=duration + 60)
        load.seconds = time.monotonic() - started
    return load


def finish_and_check(service: ServiceProcess, load: Load, timeout: float = 180) -> tuple[float, list[dict[str, Any]]]:
    """Wait (bounded) until every accepted task has ended; their summaries, and the seconds it took."""
    sig = real_signature(DEMO_USER, DEMO_SECRET)
    headers = {"X-Edgewarm-Username": DEMO_USER, "X-Edgewarm-Signature": sig}
    started = time.monotonic()
    with httpx.Client(base_url=service.url, timeout=60, headers=headers) as http:
        while True:
            found: list[dict[str, Any]] = []
            for start in range(0, len(load.accepted), 1000):
                chunk = load.accepted[start : start + 1000]
                found += http.post("/v1/tasks/lookup", json={"taskids": chunk}).json()["tasks"]
            if all(t["status"] != 1 for t in found) or time.monotonic() - started > timeout:
                return time.monotonic() - started, found
            time.sleep(0.2)


def check(load: Load, found: list[dict[str, Any]]) -> None:
    assert load.refused == [] and load.wrong_answers == []
    assert len(load.accepted) == len(set(load.accepted)), "a task id was given twice"
    assert [t["taskid"] for t in found] == load.accepted, "an accepted task was lost"
    for task in found:
        assert task["total"] == URLS_PER_TASK * NODES, task
        assert (task["status"], task["succeeded"], task["failed"]) == (0, task["total"], 0), task


def report(name: str, load: Load, drain: float, capsys: pytest.CaptureFixture[str], tmp_path: Path) -> None:
    items = len(load.accepted) * URLS_PER_TASK * NODES
    figures = {
        "store": name,
        **load.figures(),
        "tasks": len(load.accepted),
        "items": items,
        "drain_after_load_s": round(drain, 1),
        "items_per_s": round(items / (load.seconds + drain), 1),
    }
    (tmp_path / f"load-{name}.json").write_text(json.dumps(figures))
    with capsys.disabled():
        print(f"\n[reliability] load on {name}: {json.dumps(figures)}")


def test_load_on_sqlite_loses_and_duplicates_nothing(
    tmp_path: Path, lab: Lab, capsys: pytest.CaptureFixture[str]
) -> None:
    """Submissions and prefetchQuery at once while warming runs, on SQLite: all answered, none lost or doubled."""
    paths = sorted(str(p.relative_to(lab.docroot)) for p in (lab.docroot / "f").iterdir())
    paths = ["/" + p for p in paths]
    with start_service(tmp_path / "svc", lab.nodes_toml()) as service:
        load = asyncio.run(run_load(service.url, DURATION, paths))
        drain, found = finish_and_check(service, load)
    check(load, found)
    db = consistency(tmp_path / "svc" / "edgewarm.db")
    assert set(db.tasks) == set(load.accepted), "the store holds a task nobody was given"
    assert db.problems() == []
    assert len(load.query_ms) >= 50 and len(load.accepted) >= 10  # it did run
    report("sqlite", load, drain, capsys, tmp_path)


def test_load_on_postgresql_loses_and_duplicates_nothing(
    tmp_path: Path, lab: Lab, postgres_cluster: PostgresCluster, capsys: pytest.CaptureFixture[str]
) -> None:
    """The same load on PostgreSQL (`edgewarm serve`): all answered, none lost or doubled."""
    url = asyncio.run(postgres_cluster.create_database())
    paths = ["/" + str(p.relative_to(lab.docroot)) for p in sorted((lab.docroot / "f").iterdir())]
    try:
        with start_service(tmp_path / "svc", lab.nodes_toml(), store=url) as service:
            load = asyncio.run(run_load(service.url, DURATION, paths))
            drain, found = finish_and_check(service, load)
        check(load, found)
        assert set(asyncio.run(pg_task_ids(url))) == set(load.accepted), "the store holds a task nobody was given"
        assert len(load.query_ms) >= 50 and len(load.accepted) >= 10  # it did run
        report("postgresql", load, drain, capsys, tmp_path)
    finally:
        asyncio.run(postgres_cluster.drop_database(url.rsplit("/", 1)[1]))


async def pg_task_ids(url: str) -> list[str]:
    import asyncpg

    conn = await asyncpg.connect(url)
    try:
        return [r[0] for r in await conn.fetch("SELECT id FROM tasks")]
    finally:
        await conn.close()
