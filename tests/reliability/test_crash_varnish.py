"""Crashes on a fleet with a Varnish node (docs/reliability.md, "Not covered": the crash tests used nginx only).

Every test runs `edgewarm serve` as a process on a SQLite file against a real lab: an nginx shield (`shield-1`,
with the cache-purge module) in front of the origin, and two edges that fill from it, nginx (`edge-1`) and
Varnish 7 (`varnish-1`). What is proven:

- SIGKILL of `serve` twice during a prefetch of 1,500 URLs (4,500 items), restarted each time on the same
  file: the task ends with status 0 (JD prefetchQuery and the native view), each item is counted once (the
  task's counters equal its items by final state, read from the database), every URL is then a HIT on every
  node, Varnish included, and the origin was asked for each URL once: every node fills through the shield,
  which is warmed first, so a second request for a URL at the origin can only come from a shield warm that a
  kill cut short (allowed once more per cut: a 499, or fewer body bytes than the object, in the shield's log).
- SIGKILL of `serve` twice during a refresh (`"refresh": true`) of 400 URLs whose content changed at the
  origin after they were warmed: after the restarts the task ends with status 0, counted once, every node
  (Varnish included) serves the NEW body from its cache, and the origin was asked for each URL once during the
  refresh (a purge run again after its URL's warm would have asked it twice).
- `varnish-1` itself SIGKILLed for 3 s during a prefetch of 1,500 URLs and started again (empty): the task
  ends with status 0, each item counted once, every Varnish item was answered 200 by one of the two Varnish
  instances (none reported warmed without a request answered), **every URL is a HIT on the restarted
  Varnish**: what the first instance had warmed is warmed again once the node is back (`rewarm_after_down`,
  on by default for Varnish: README, "What it had warmed before it went down"; before session 22 it was lost,
  310-480 URLs here), the origin was asked for each URL once (and for `/` by the engine's probes of the node
  held down), the engine logged the node held down and its warms done again, and the service's log has no
  error and no traceback.
"""

from __future__ import annotations

import contextlib
import re
import time
from collections import Counter
from collections.abc import Iterator
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pytest

from edgewarm.client import Client
from edgewarm.testing import DEFAULT_HOST, Lab, LabNode, LabRequest
from edgewarm.testing.service import DEMO_SECRET, DEMO_USER, ServiceProcess

from .support import consistency, integrity, start_service, wait_until

pytestmark = pytest.mark.integration

# Narrow lanes, as in test_crash.py: slow enough for the kills to land mid-task on this machine.
ENGINE = "[engine]\nconcurrency = 16\nper_node_concurrency = 8\n"
LIMITS = f"[limits]\nurls_per_call = 2000\n[api]\nmax_body_bytes = {16 << 20}\n"
NODES = ("shield-1", "edge-1", "varnish-1")


def url_of(path: str) -> str:
    return f"http://{DEFAULT_HOST}{path}"


def new_body(path: str) -> bytes:
    """What the origin serves at `path` once changed (make_files wrote 256 bytes starting with the path)."""
    return f"{path} version 2\n".encode() * 8


@contextlib.contextmanager
def varnish_fleet(tmp_path: Path) -> Iterator[Lab]:
    """shield-1 (nginx, purges) <- edge-1 (nginx) and varnish-1 (Varnish); origin behind the shield."""
    with Lab(tmp_path / "lab", edges=1, shield=True, varnish=1, purge_module=True) as lab:
        assert [n.name for n in lab.cache_nodes()] == list(NODES)
        yield lab


@dataclass
class Serve:
    """`edgewarm serve` on a SQLite file, killed and started again on the same file and port as a test asks."""

    service: ServiceProcess
    db: Path

    @classmethod
    def start(cls, folder: Path, lab: Lab) -> Serve:
        return cls(start_service(folder, lab.nodes_toml(), extra=LIMITS + ENGINE), folder / "edgewarm.db")

    def client(self, timeout: float = 120.0) -> Client:
        return Client(self.service.url, DEMO_USER, DEMO_SECRET, timeout=timeout)

    def submit(self, paths: list[str], *, refresh: bool = False) -> str:
        with self.client() as client:
            return client.prefetch([url_of(p) for p in paths], refresh=refresh)

    def progress(self, taskid: str) -> int:
        """Items finished, as the task's own counters say."""
        with self.client() as client:
            view = client.task(taskid, limit=0)
        return int(view["succeeded"]) + int(view["failed"])

    def kill_at(self, taskid: str, targets: list[int], timeout: float = 120.0) -> list[int]:
        """SIGKILL once the task has finished each of `targets` items, restarting on the same file each time;
        the items finished at each kill."""
        at_kill = []
        for target in targets:
            deadline = time.monotonic() + timeout
            while (done := self.progress(taskid)) < target:
                assert time.monotonic() < deadline, f"stuck at {done} items before the kill at {target}"
                time.sleep(0.02)
            self.service.kill()
            at_kill.append(done)
            self.service = ServiceProcess(self.service.config, port=self.service.port)  # stopped by the caller
            self.service.start(30)
        return at_kill

    def finish(self, taskid: str, timeout: float = 180.0) -> dict[str, Any]:
        """The native view of the task once it has ended; JD's prefetchQuery must say the same status."""
        with self.client() as client:
            view = client.wait(taskid, timeout=timeout)
            jd = client.query(taskid)
        assert (jd["taskid"], jd["status"]) == (taskid, view["status"]), (jd, view["status"])
        return view

    def stop(self) -> int | None:
        return self.service.stop()

    def log(self) -> str:
        return self.service.log.read_text(errors="replace")


def counted_once(db: Path, taskid: str, total: int) -> None:
    """The task's counters equal its items by final state (read from the file), and every item succeeded."""
    found = consistency(db)
    assert found.problems() == [], found.problems()
    task = found.tasks[taskid]
    assert (task["total"], task["succeeded"], task["failed"], task["status"]) == (total, total, 0, 0), task
    assert task["states"] == {"succeeded": total}, task
    assert integrity(db) == "ok"


def ended_well(view: dict[str, Any], total: int) -> None:
    assert view["status"] == 0, view
    assert (view["total"], view["succeeded"], view["failed"]) == (total, total, 0), view
    assert view["counts"] == {"waiting": 0, "pending": 0, "running": 0, "succeeded": total, "failed": 0}, view


def look(lab: Lab, node: LabNode, paths: list[str]) -> dict[str, tuple[str | None, bytes]]:
    """One GET of each path on `node`: its cache state (Varnish: its own X-Cache) and body, by path."""
    seen = {}
    for path in paths:
        answer = lab.fetch(node, path, timeout=30)
        assert answer.status == 200, (node.name, path, answer.status)
        if node.kind == "varnish":  # one transaction id is a MISS, two a HIT (README): both must agree
            assert (len(answer.headers["x-varnish"].split()) == 2) == (answer.cache_status == "HIT"), answer.headers
        seen[path] = (answer.cache_status, answer.body)
    return seen


def look_everywhere(lab: Lab, paths: list[str]) -> dict[str, dict[str, tuple[str | None, bytes]]]:
    """`look` on every cache node, by node: the shield first and alone (an edge's MISS would refill it and hide
    a shield that had lost the object), then the edges side by side."""
    shield, *edges = lab.cache_nodes()
    seen = {shield.name: look(lab, shield, paths)}
    with ThreadPoolExecutor(len(edges)) as pool:
        for node, states in zip(edges, pool.map(lambda n: look(lab, n, paths), edges), strict=True):
            seen[node.name] = states
    return seen


def origin_counts(lab: Lab, expected: int, since: int = 0) -> Counter[str]:
    """GETs of each URI in the origin's log from line `since` on, once at least `expected` are logged."""
    lab.wait_for_requests(lab.origin, since + expected, timeout=30)
    return Counter(r.uri for r in lab.requests(lab.origin)[since:])


def cut_on(lab: Lab, node: LabNode, sizes: dict[str, int], since: int = 0) -> Counter[str]:
    """Answers of `node` that their client cut short: nginx logs 499 when it closed before the head, and the
    head's status with fewer body bytes than the object's size when it closed during the body."""
    cut = (r for r in lab.requests(node)[since:] if r.status == 499 or r.bytes < sizes.get(r.uri, 0))
    return Counter(r.uri for r in cut if r.method == "GET")


def origin_asked_once(counts: Counter[str], paths: list[str], cut: Counter[str]) -> None:
    """Each path asked at the origin once, and at most once more per answer of the shield that a kill cut short
    (nginx then abandons its fetch unstored: seen here, `200 MISS` with 0 of 256 bytes sent, and the origin
    asked again when the warm is sent again); no other URI. Every node fills through the shield, which is
    warmed first: any other second request at the origin means the shield was not warmed before its edges
    asked it, or lost or bypassed its copy."""
    assert set(counts) == set(paths), sorted(set(counts) ^ set(paths))[:10]
    over = {p: (n, cut[p]) for p, n in counts.items() if n > 1 + cut[p]}
    assert over == {}, f"asked again at the origin (count, cuts on the shield): {dict(list(over.items())[:10])}"


def no_trouble_in(log: str) -> None:
    bad = [line for line in log.splitlines() if '"level":"error"' in line or "Traceback" in line]
    assert bad == [], bad[:5]


# -- SIGKILL of `serve` during a prefetch -------------------------------------------------------------------


def test_sigkill_during_a_prefetch_through_varnish_counts_each_item_once_and_leaves_every_node_warm(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    urls, kills = 1_500, 2
    total = urls * len(NODES)
    with varnish_fleet(tmp_path) as lab:
        paths = lab.make_files(urls, 256)
        serve = Serve.start(tmp_path / "svc", lab)
        started = time.monotonic()
        try:
            taskid = serve.submit(paths)
            at_kill = serve.kill_at(taskid, [total * (k + 1) // (kills + 2) for k in range(kills)])
            view = serve.finish(taskid)
            took = time.monotonic() - started
        finally:
            stopped = serve.stop()
        assert stopped == 0, serve.service.log_tail()
        assert all(done < total for done in at_kill) and len(set(at_kill)) == kills, at_kill
        ended_well(view, total)
        assert {name: c["succeeded"] for name, c in view["nodes"].items()} == dict.fromkeys(NODES, urls), view["nodes"]
        counted_once(serve.db, taskid, total)
        assert "took back" in serve.log(), "no restart found items left running: the kills landed between claims"

        origin = origin_counts(lab, urls)
        cut = cut_on(lab, lab.node("shield-1"), dict.fromkeys(paths, 256))
        seen = look_everywhere(lab, paths)
    origin_asked_once(origin, paths, cut)
    cold = {(node, p): state for node, states in seen.items() for p, (state, _) in states.items() if state != "HIT"}
    assert cold == {}, f"{len(cold)} not HIT, e.g. {dict(list(cold.items())[:10])}"
    with capsys.disabled():
        print(
            f"\n[varnish crash] SIGKILL x{kills} during {urls} URLs ({total} items): done at kills {at_kill}; "
            f"ended after {took:.1f}s; shield requests cut by a kill: {sum(cut.values())}"
        )


# -- SIGKILL of `serve` during a refresh ----------------------------------------------------------------------


def test_sigkill_during_a_refresh_leaves_only_the_new_body_on_every_node_varnish_included(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    urls, kills = 400, 2
    with varnish_fleet(tmp_path) as lab:
        paths = lab.make_files(urls, 256, prefix="/r/")
        serve = Serve.start(tmp_path / "svc", lab)
        try:
            warmed = serve.submit(paths)
            ended_well(serve.finish(warmed), urls * len(NODES))
            old = lab.fetch(lab.node("varnish-1"), paths[0])
            assert old.cache_status == "HIT" and old.body.startswith(paths[0].encode()), old
            for path in paths:  # the origin changes every object after it was warmed
                lab.write_file(path, new_body(path))
            origin_before = len(lab.wait_for_requests(lab.origin, urls, timeout=30))
            shield_before = len(lab.requests(lab.node("shield-1")))
            total = urls * len(NODES) * 2  # a purge and a warm per URL and node
            taskid = serve.submit(paths, refresh=True)
            at_kill = serve.kill_at(taskid, [total * (k + 1) // (kills + 2) for k in range(kills)])
            view = serve.finish(taskid)
        finally:
            stopped = serve.stop()
        assert stopped == 0, serve.service.log_tail()
        assert all(done < total for done in at_kill) and len(set(at_kill)) == kills, at_kill
        ended_well(view, total)
        assert "took back" in serve.log(), "no restart found items left running: the kills landed between claims"
        found = consistency(serve.db)
        assert found.problems() == [], found.problems()
        assert found.tasks[taskid]["states"] == {"succeeded": total}, found.tasks[taskid]
        assert found.tasks[warmed]["states"] == {"succeeded": urls * len(NODES)}, found.tasks[warmed]

        origin = origin_counts(lab, urls, since=origin_before)
        cut = cut_on(lab, lab.node("shield-1"), {p: len(new_body(p)) for p in paths}, since=shield_before)
        seen = look_everywhere(lab, paths)
    origin_asked_once(origin, paths, cut)
    stale = {
        (node, p): (state, body[:40])
        for node, states in seen.items()
        for p, (state, body) in states.items()
        if (state, body) != ("HIT", new_body(p))
    }
    assert stale == {}, f"{len(stale)} not the new body from cache, e.g. {dict(list(stale.items())[:6])}"
    with capsys.disabled():
        print(
            f"\n[varnish crash] SIGKILL x{kills} during a refresh of {urls} URLs ({total} items): done at kills "
            f"{at_kill}; shield requests cut by a kill: {sum(cut.values())}"
        )


# -- the Varnish node killed during a prefetch -----------------------------------------------------------------


def answered(requests: list[LabRequest]) -> set[str]:
    return {r.uri for r in requests if r.method == "GET" and r.status == 200}


def test_a_varnish_node_killed_and_started_again_during_a_prefetch_loses_no_item(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    urls = 1_500
    total = urls * len(NODES)
    with varnish_fleet(tmp_path) as lab:
        varnish = lab.node("varnish-1")
        paths = lab.make_files(urls, 256)
        serve = Serve.start(tmp_path / "svc", lab)
        try:
            taskid = serve.submit(paths)

            def varnish_done() -> int:
                with serve.client() as client:
                    counts = client.task(taskid, limit=0)["nodes"]["varnish-1"]
                return int(counts["succeeded"]) + int(counts["failed"])

            wait_until(lambda: varnish_done() >= urls // 5, 120, "a fifth of varnish-1's items done")
            lab.kill("varnish-1")
            done_at_kill = varnish_done()
            time.sleep(3.0)  # down for 3 s; its log reader writes the killed instance's last lines meanwhile
            lab.restart("varnish-1")  # empty, with a fresh log (the killed instance's set aside)
            first_log = varnish.access_log.with_name(f"{varnish.access_log.name}.before")
            back = time.monotonic()
            view = serve.finish(taskid)
            took = time.monotonic() - back
        finally:
            stopped = serve.stop()
        log = serve.log()
        assert stopped == 0, log[-3000:]
        assert done_at_kill < urls, f"the kill came after varnish-1's last item ({done_at_kill})"
        ended_well(view, total)
        counted_once(serve.db, taskid, total)
        no_trouble_in(log)
        assert '"message":"node varnish-1 held down for' in log, "the engine never found varnish-1 down"
        said = r'"message":"node varnish-1: (\d+) warms of the tasks still running are done again: it is back after'
        rewarmed = re.search(said, log)

        first = answered(_read_log(lab, varnish, first_log))
        with contextlib.suppress(AssertionError):  # varnishncsa writes a line just after its answer
            # The restarted one warms every URL again (asserted below): wait for its lines of them all.
            wait_until(lambda: answered(lab.requests(varnish)) >= set(paths), 10, "varnish-1's last lines")
        second = answered(lab.requests(varnish))
        origin = origin_counts(lab, urls)
        # The engine asks a node held down `HEAD /` when its cooldown ends (README): Varnish and the shield pass
        # it on. Nothing else but the task's URLs may reach the origin.
        probes = origin.pop("/", 0)
        looked = look(lab, varnish, paths)
    # Every Varnish item that succeeded was answered 200 by one instance or the other: none is lost.
    assert set(paths) <= first | second, sorted(set(paths) - first - second)[:10]
    assert second, "nothing was sent to the restarted varnish-1"
    cold = {p: state for p, (state, _) in looked.items() if state != "HIT"}
    assert cold == {}, f"{len(cold)} of the {urls} URLs not HIT on the restarted varnish-1, e.g. {list(cold)[:10]}"
    assert set(paths) <= second, "a URL the first instance had warmed was not warmed again"
    assert rewarmed, "the engine's log does not say it warmed again what varnish-1 had warmed"
    assert origin == Counter(dict.fromkeys(paths, 1)), {p: n for p, n in origin.items() if n != 1}
    with capsys.disabled():
        print(
            f"\n[varnish crash] varnish-1 SIGKILLed for 3 s during {urls} URLs: {done_at_kill} of its items done at "
            f"the kill, {rewarmed.group(1)} warmed again, {len(second)} sent to it after the restart; the task "
            f"ended {took:.1f}s after the restart; `HEAD /` probes seen at the origin: {probes}"
        )


def _read_log(lab: Lab, node: LabNode, path: Path) -> list[LabRequest]:
    """The requests in a log set aside (Lab.requests reads the node's current log only)."""
    aside = LabNode(node.name, node.port, node.url, node.tier, node.kind, path, node.folder)
    return lab.requests(aside)
