"""ProcessFetcher: the engine's requests made by a child process, against real nginx and Varnish nodes."""

from __future__ import annotations

import asyncio
import contextlib
import json
import logging
import os
import signal
import socket
import sys
from collections.abc import Iterator
from pathlib import Path

import pytest

from edgewarm.client import Client
from edgewarm.config import Engine as Settings
from edgewarm.config import Node, NodeKind
from edgewarm.engine import Fetcher, FetchResult, NodeHealth, ProcessFetcher, fetch_process, open_fetcher
from edgewarm.engine.fetcher import sent_unchanged
from edgewarm.engine.node_health import COOLDOWN, FAILURES_IN_A_ROW
from edgewarm.nodes import CacheState
from edgewarm.testing import DEFAULT_HOST, Lab
from edgewarm.testing.faults import Action, FaultServer, RawRequest, Reset, Respond
from edgewarm.testing.service import DEMO_SECRET, DEMO_USER, free_port, start_service
from edgewarm.urls import parse_url

pytestmark = pytest.mark.integration


@pytest.fixture(scope="module")
def lab(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Lab]:
    with Lab(tmp_path_factory.mktemp("lab"), edges=1, shield=False, varnish=1, purge_module=True) as lab:
        yield lab


def nodes_of(lab: Lab) -> list[Node]:
    return [Node(name=n.name, url=n.url, kind=NodeKind(n.kind)) for n in lab.cache_nodes()]


def command_line(pid: int) -> str:
    return Path(f"/proc/{pid}/cmdline").read_text().replace("\0", " ")


def alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    state = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()[0]
    return state != "Z"


def test_the_child_answers_as_the_fetcher_does(lab: Lab) -> None:
    """Same requests through Fetcher and ProcessFetcher: same status, bytes and cache state (MISS, then HIT),
    headers passed through (a PURGE), and a node nobody listens on answers a network error."""
    lab.write_file("/fp/a.bin", b"a" * 5000)
    target = parse_url(f"http://{DEFAULT_HOST}/fp/a.bin")
    dead = Node(name="dead", url=f"http://127.0.0.1:{free_port()}")

    async def go() -> None:
        async with ProcessFetcher(Settings()) as remote, Fetcher(Settings()) as local:
            assert remote.pid is not None and remote.pid != os.getpid()
            # `ps` tells whose it is (it showed `python3 -c from edgewarm…` alone: a tester's)
            assert f"--fetch-process-of={os.getpid()}" in command_line(remote.pid)
            for node in nodes_of(lab):
                first = await remote.request("GET", node, target)
                assert (first.status, first.bytes, first.cache_state) == (200, 5000, CacheState.MISS), node
                again = await remote.request("GET", node, target)
                same = await local.request("GET", node, target)
                assert again == same and again.cache_state is CacheState.HIT
            failed = await remote.request("GET", dead, target)
            assert failed.status is None and failed.network_error and "cannot connect to dead" in (failed.error or "")
            nginx = nodes_of(lab)[0]
            purged = await remote.request("PURGE", nginx, target, {"X-Reason": "test"})
            assert purged.status == 200
            after = await remote.request("GET", nginx, target)
            assert after.cache_state is CacheState.MISS

    asyncio.run(go())


def test_an_answer_that_asks_not_to_be_stored_says_so_through_either_client(lab: Lab) -> None:
    """A MISS with `Cache-Control: no-store` (the lab's /nocache/) carries why it will not be stored, from the
    child as from the Fetcher; a cacheable MISS carries nothing."""
    lab.write_file("/nocache/fp.bin", b"n" * 100)
    lab.write_file("/fp/ok.bin", b"o" * 100)
    node = nodes_of(lab)[0]

    async def go() -> None:
        async with ProcessFetcher(Settings()) as remote, Fetcher(Settings()) as local:
            for client in (remote, local):
                refused = await client.request("GET", node, parse_url(f"http://{DEFAULT_HOST}/nocache/fp.bin"))
                assert (refused.cache_state, refused.not_stored) == (CacheState.MISS, "Cache-Control: no-store")
            fine = await remote.request("GET", node, parse_url(f"http://{DEFAULT_HOST}/fp/ok.bin"))
            assert (fine.cache_state, fine.not_stored) == (CacheState.MISS, None)

    asyncio.run(go())


def test_many_requests_at_once_each_get_their_own_answer(lab: Lab) -> None:
    """500 different URLs in flight together (batched both ways): every answer belongs to its request."""
    for i in range(500):
        lab.write_file(f"/fp/many/{i}.bin", b"m" * (100 + i))
    node = nodes_of(lab)[0]

    async def go() -> list[int]:
        async with ProcessFetcher(Settings()) as remote:
            targets = [parse_url(f"http://{DEFAULT_HOST}/fp/many/{i}.bin") for i in range(500)]
            results = await asyncio.gather(*(remote.request("GET", node, t) for t in targets))
            assert all(r.status == 200 for r in results)
            return [r.bytes for r in results]

    assert asyncio.run(go()) == [100 + i for i in range(500)]


def test_a_killed_child_fails_its_requests_and_the_next_request_starts_another(lab: Lab) -> None:
    """SIGKILL of the child while requests wait on a slow node: they answer a network error at once (the
    engine retries those items); a later request is served by a new child; closing stops it."""
    lab.write_file("/slow/fp/big.bin", b"s" * 16_384)  # served slowly by the lab's origin
    slow = parse_url(f"http://{DEFAULT_HOST}/slow/fp/big.bin")
    quick = parse_url(f"http://{DEFAULT_HOST}/fp/a.bin")
    lab.write_file("/fp/a.bin", b"a" * 10)
    node = nodes_of(lab)[0]

    async def go() -> tuple[int, int]:
        async with ProcessFetcher(Settings()) as remote:
            first = remote.pid
            assert first is not None
            waiting = [asyncio.create_task(remote.request("GET", node, slow)) for _ in range(3)]
            await asyncio.sleep(0.3)
            os.kill(first, signal.SIGKILL)
            results = await asyncio.wait_for(asyncio.gather(*waiting), 10)
            assert all(r.status is None and "fetch process exited" in (r.error or "") for r in results), results
            await asyncio.sleep(fetch_process.RESTART_INTERVAL)
            result = await remote.request("GET", node, quick)
            assert result.status == 200
            second = remote.pid
            assert second is not None and second != first
        return first, second

    first, second = asyncio.run(go())
    assert not alive(first) and not alive(second)


@pytest.mark.parametrize("signum", [signal.SIGTERM, signal.SIGHUP])
def test_a_stop_or_hang_up_sent_to_the_process_group_leaves_the_child_to_its_engine(lab: Lab, signum: int) -> None:
    """A service manager's stop (SIGTERM) or a terminal's hang-up (SIGHUP) reaches the child too: it goes on,
    and its requests in flight end with their answers (before, it died at once: "the fetch process exited
    (code -15)"), until the engine stops it."""
    lab.write_file("/slow/fp/sig.bin", b"s" * 8_192)  # served slowly by the lab's origin: about a second
    lab.write_file("/fp/ready.bin", b"r")
    slow = parse_url(f"http://{DEFAULT_HOST}/slow/fp/sig.bin")
    node = nodes_of(lab)[0]

    async def go() -> int:
        async with ProcessFetcher(Settings()) as remote:
            ready = await remote.request("GET", node, parse_url(f"http://{DEFAULT_HOST}/fp/ready.bin"))
            assert ready.status == 200  # the child is up (it ignores the signals once it runs)
            pid = remote.pid
            assert pid is not None
            waiting = asyncio.create_task(remote.request("GET", node, slow))
            await asyncio.sleep(0.3)
            os.kill(pid, signum)
            result = await asyncio.wait_for(waiting, 20)
            assert (result.status, result.bytes, result.error) == (200, 8_192, None), result
            assert remote.pid == pid and alive(pid)  # the same child answered: none was started again
        return pid

    assert not alive(asyncio.run(go()))


def test_the_child_exits_when_its_engine_dies(lab: Lab, tmp_path: Path) -> None:
    """A parent killed with SIGKILL cannot close the child: the child sees its stdin end and exits."""
    script = tmp_path / "parent.py"
    script.write_text(
        "import asyncio, sys\n"
        "from edgewarm.config import Engine\n"
        "from edgewarm.engine import ProcessFetcher\n"
        "async def main():\n"
        "    async with ProcessFetcher(Engine()) as f:\n"
        "        print(f.pid, flush=True)\n"
        "        await asyncio.sleep(60)\n"
        "asyncio.run(main())\n"
    )

    async def go() -> int:
        proc = await asyncio.create_subprocess_exec(sys.executable, str(script), stdout=asyncio.subprocess.PIPE)
        assert proc.stdout is not None
        child = int((await asyncio.wait_for(proc.stdout.readline(), 30)).decode())
        assert alive(child)
        proc.kill()
        await proc.wait()
        for _ in range(100):  # bounded: 10 s
            if not alive(child):
                break
            await asyncio.sleep(0.1)
        return child

    assert not alive(asyncio.run(go()))


def test_the_setting_chooses_the_fetcher() -> None:
    """[engine] fetch_process: off by default, the child when on."""
    assert isinstance(open_fetcher(Settings(fetch_process=True), NodeHealth()), ProcessFetcher)
    assert isinstance(open_fetcher(Settings(), NodeHealth()), Fetcher)


def test_the_child_reads_the_cache_header_the_nodes_kind_trusts() -> None:
    """The node's kind crosses to the child: a Squid answer carrying its parent's X-Cache-Status is read from its
    own X-Cache (MISS), an nginx answer from X-Cache-Status (HIT), as the in-process Fetcher reads them."""
    answer = b"HTTP/1.1 200 OK\r\nContent-Length: 2\r\nX-Cache-Status: HIT\r\nX-Cache: MISS from squid-1\r\n\r\nok"

    async def serve(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        while (await reader.readuntil(b"\r\n\r\n")) and not writer.is_closing():
            writer.write(answer)
            await writer.drain()

    async def go() -> None:
        server = await asyncio.start_server(serve, "127.0.0.1", 0)
        port = server.sockets[0].getsockname()[1]
        target = parse_url(f"http://{DEFAULT_HOST}/kind.bin")
        squid = Node(name="squid-1", url=f"http://127.0.0.1:{port}", kind=NodeKind.SQUID)
        nginx = Node(name="edge-1", url=f"http://127.0.0.1:{port}", kind=NodeKind.NGINX)
        try:
            async with ProcessFetcher(Settings()) as remote, Fetcher(Settings()) as local:
                for node, expected in ((squid, CacheState.MISS), (nginx, CacheState.HIT)):
                    got = await remote.request("GET", node, target)
                    assert (got.status, got.cache_state) == (200, expected), node.kind
                    assert got == await local.request("GET", node, target)
        finally:
            server.close()
            with contextlib.suppress(Exception):
                await asyncio.wait_for(server.wait_closed(), 5)

    asyncio.run(go())


def test_a_certificate_refusal_crosses_from_the_child_as_final(certificate: tuple[Path, Path]) -> None:
    """An https node whose certificate does not verify: the child's answer is the in-process Fetcher's, its
    `final` mark included (the engine then does not retry the item)."""
    target = parse_url(f"https://{DEFAULT_HOST}/cert.bin")

    async def go() -> None:
        with FaultServer(Respond(200, body=b"ok"), tls=certificate) as server:
            node = Node(name="tls", url=server.url)
            async with ProcessFetcher(Settings()) as remote, Fetcher(Settings()) as local:
                got = await remote.request("GET", node, target)
                assert got.final and got.status is None and "certificate verify failed" in (got.error or "")
                assert got == await local.request("GET", node, target)

    asyncio.run(go())


def test_a_request_sent_again_after_its_connection_was_cut_says_so_through_either_client() -> None:
    """A node that resets the first request: it is sent again at once and answered, and the answer says it was
    (`resent`: the node may have restarted, and the engine shares none of its warms from before), from the child
    as from the in-process Fetcher; the parent's NodeHealth names the node once."""
    target = parse_url(f"http://{DEFAULT_HOST}/cut.bin")

    def first_reset(request: RawRequest, count: int) -> Action:
        return Reset() if count == 1 else Respond(200, body=b"ok")

    async def go() -> None:
        for make in (ProcessFetcher, Fetcher):
            with FaultServer(first_reset) as server:
                health = NodeHealth()
                async with make(Settings(), health) as fetcher:
                    got = await fetcher.request("GET", Node(name="cut", url=server.url), target)
                assert (got.status, got.error, got.resent) == (200, None, True), (make, got)
                assert (health.were_cut(), health.were_cut()) == ({"cut"}, set())
                assert len(server.requests) == 2

    asyncio.run(go())


def test_a_retry_after_crosses_from_either_client_and_the_child() -> None:
    """A 429 with `Retry-After: 7`: each client (pyreqwest, and aiohttp for a URL pyreqwest would rewrite) and
    the fetch process answer it alike, `retry_after` 7 s (the retry waits that long, up to backoff_max)."""
    plain, rewritten = "/wait.bin", "/wait.bin?q='a"
    assert sent_unchanged(plain) and not sent_unchanged(rewritten)

    async def go() -> None:
        with FaultServer(Respond(429, body=b"slow down", headers=(("Retry-After", "7"),))) as server:
            node = Node(name="busy", url=server.url)
            async with ProcessFetcher(Settings()) as remote, Fetcher(Settings()) as local:
                for path in (plain, rewritten):
                    target = parse_url(f"http://{DEFAULT_HOST}{path}")
                    got = await remote.request("GET", node, target)
                    assert (got.status, got.retry_after) == (429, 7.0), (path, got)
                    assert got == await local.request("GET", node, target)

    asyncio.run(go())


def test_nodes_are_held_down_by_the_parent_and_never_by_the_child() -> None:
    """With `[engine] fetch_process` the engine's side holds a dead node down (the runtime's NodeHealth, which
    /metrics reads and a reload keeps): after 5 refused connections the next request is not sent. The child
    sends whatever it is given: without a NodeHealth, every request is tried (a child holding down too would
    stretch the parent's probe into another cooldown)."""
    target = parse_url(f"http://{DEFAULT_HOST}/down.bin")
    node = Node(name="dead", url=f"http://127.0.0.1:{free_port()}")  # nothing listens: refused

    async def go(health: NodeHealth | None) -> list[str]:
        async with ProcessFetcher(Settings(), health) as remote:
            return [(await remote.request("GET", node, target)).error or "" for _ in range(7)]

    held = asyncio.run(go(NodeHealth()))
    assert all(e.startswith("cannot connect to dead") for e in held[:5]), held
    assert all(e.startswith("not tried: dead is held down after 5 connections") for e in held[5:]), held
    sent = asyncio.run(go(None))
    assert all(e.startswith("cannot connect to dead") for e in sent), sent


def test_a_child_that_dies_with_the_probe_out_tells_nothing_of_the_node() -> None:
    """A node held down; after its cooldown the request let through goes to a node that hangs, and the child
    is killed meanwhile: the node stays held down (before, the child's death counted as an answer: "node …
    answers again", its failures forgotten), and the next request is let through as the probe."""
    target = parse_url(f"http://{DEFAULT_HOST}/hang.bin")
    with socket.socket() as silent:
        silent.bind(("127.0.0.1", 0))
        silent.listen(64)  # accepts connections and never answers: requests hang until read_timeout
        node = Node(name="hangs", url="http://{}:{}".format(*silent.getsockname()))
        clock = [1000.0]
        health = NodeHealth(lambda: clock[0])
        for _ in range(FAILURES_IN_A_ROW):
            health.observe(node, False, "cannot connect")
        clock[0] += COOLDOWN

        async def go() -> bool:
            async with ProcessFetcher(Settings(read_timeout=30), health) as remote:
                probe = asyncio.create_task(remote.request("GET", node, target))
                await asyncio.sleep(0.5)
                assert remote.pid is not None
                os.kill(remote.pid, signal.SIGKILL)
                result = await asyncio.wait_for(probe, 10)
                assert result.untold and "fetch process exited" in (result.error or ""), result
            return health.is_down(node)

        assert asyncio.run(go()) is True
        assert health.held_down(node) is None  # the next request is the probe


@pytest.mark.parametrize("fetch_process", [False, True], ids=["in-process", "fetch-process"])
def test_the_fetchers_log_lines_are_the_services_json_lines_from_the_child_too(
    tmp_path: Path, certificate: tuple[Path, Path], fetch_process: bool
) -> None:
    """A node's certificate refused is said by the fetcher that made the request; with `fetch_process` that is
    the child, whose lines must be the service's JSON lines (they were Python's bare fallback text: no time,
    no level, no logger, unreadable to a log shipper reading JSON)."""
    with FaultServer(Respond(200, body=b"ok"), tls=certificate) as server:
        nodes = f'[[nodes]]\nname = "tls"\nurl = "{server.url}"\n'
        extra = f"[engine]\nfetch_process = {str(fetch_process).lower()}\n"
        with start_service(tmp_path, nodes, extra=extra) as service:
            with Client(service.url, DEMO_USER, DEMO_SECRET) as client:
                task = client.prefetch([f"http://{DEFAULT_HOST}/cert.bin"])
                assert client.wait(task, timeout=30)["status"] == 2
            service.wait_for_log("certificate failed", 15)
            lines = service.log_text().splitlines()
    said = [line for line in lines if "verifying tls's certificate failed" in line]
    assert len(said) == 1, lines
    entry = json.loads(said[0])
    assert (entry["level"], entry["logger"]) == ("error", "edgewarm.engine"), entry
    assert "self-signed certificate" in entry["message"], entry


def test_a_stopped_child_is_killed_and_its_requests_come_back_for_a_retry(
    lab: Lab, monkeypatch: pytest.MonkeyPatch, caplog: pytest.LogCaptureFixture
) -> None:
    """A child stopped (SIGSTOP) or hung held its requests, and so every lane, for ever: the service looked
    healthy and said nothing (a tester's: 115 s, until SIGCONT). Silent for SILENT_LIMIT (its heartbeat
    missing) while requests wait on it, it is killed, said in the log; its requests answer untold (retried,
    the node not blamed); the next request gets a new child."""
    monkeypatch.setattr(fetch_process, "SILENT_LIMIT", 2.0)
    lab.write_file("/fp/stop.bin", b"s" * 100)
    target = parse_url(f"http://{DEFAULT_HOST}/fp/stop.bin")
    node = nodes_of(lab)[0]

    async def go() -> tuple[int, float]:
        async with ProcessFetcher(Settings(), NodeHealth()) as remote:
            assert (await remote.request("GET", node, target)).status == 200
            stopped = remote.pid
            assert stopped is not None
            os.kill(stopped, signal.SIGSTOP)
            try:
                began = asyncio.get_running_loop().time()
                held = await asyncio.wait_for(remote.request("GET", node, target), 15)
                took = asyncio.get_running_loop().time() - began
            finally:
                with contextlib.suppress(ProcessLookupError):
                    os.kill(stopped, signal.SIGCONT)
            assert held.status is None and held.untold, held
            again = await remote.request("GET", node, target)
            assert again.status == 200 and remote.pid not in (None, stopped)
            assert remote.health is not None and not remote.health.is_down(node)
            return stopped, took

    with caplog.at_level(logging.ERROR, logger="edgewarm.engine"):
        stopped, took = asyncio.run(go())
    assert 2.0 <= took < 6, took
    assert not alive(stopped)
    said = [r.getMessage() for r in caplog.records if "has written nothing in" in r.getMessage()]
    assert len(said) == 1 and said[0].startswith(f"the fetch process (pid {stopped}) has written nothing in "), said
    assert not [r for r in caplog.records if "exited with code" in r.getMessage()]  # one line of it, not two


def test_requests_made_while_the_child_restarts_wait_for_it(lab: Lab) -> None:
    """A child that died within RESTART_INTERVAL of its start is started again when that has passed; requests
    made meanwhile failed at once, "not running (restarting)", each spending an attempt and counted as the
    node's network error (a tester's crash loop: a task of 6,000 items failed in 5 s): they wait for it."""
    lab.write_file("/fp/restart.bin", b"r" * 10)
    target = parse_url(f"http://{DEFAULT_HOST}/fp/restart.bin")
    node = nodes_of(lab)[0]

    async def go() -> list[FetchResult]:
        async with ProcessFetcher(Settings(), NodeHealth()) as remote:
            first = remote.pid
            assert first is not None
            os.kill(first, signal.SIGKILL)  # at once: within RESTART_INTERVAL of its start
            for _ in range(500):  # its end seen by the parent (5 s at most)
                if remote.pid is None:
                    break
                await asyncio.sleep(0.01)
            return await asyncio.gather(*(remote.request("GET", node, target) for _ in range(5)))

    results = asyncio.run(go())
    assert [(r.status, r.bytes, r.error) for r in results] == [(200, 10, None)] * 5, results


def test_a_stop_ends_a_stopped_child_before_its_last_line(tmp_path: Path) -> None:
    """SIGTERM while the child is stopped: it was killed 5 s after "edgewarm stopped cleanly", unsaid (a
    supervisor reading the last line took the process for gone). The kill is said, before the last line."""
    with FaultServer(Respond(200, body=b"ok")) as node:
        nodes = f'[[nodes]]\nname = "n"\nurl = "{node.url}"\n'
        service = start_service(tmp_path, nodes, extra="[engine]\nfetch_process = true\n")
        try:
            assert service.proc is not None
            children = Path(f"/proc/{service.proc.pid}/task/{service.proc.pid}/children").read_text().split()
            (child,) = (int(pid) for pid in children)
            os.kill(child, signal.SIGSTOP)
            assert service.stop(timeout=30) == 0
        finally:
            service.kill()
    lines = [json.loads(line)["message"] for line in service.log.read_text().splitlines() if line.startswith("{")]
    killed = f"the fetch process (pid {child}) did not end within 5 s of its stop (stopped, or hung?): killed"
    assert killed in lines and lines[-1] == "edgewarm stopped cleanly", lines[-5:]
    assert lines.index(killed) < len(lines) - 1
    assert not alive(child)


def test_a_child_that_cannot_be_started_answers_its_requests_and_says_why_once(
    lab: Lab, caplog: pytest.LogCaptureFixture
) -> None:
    """A restart refused by the engine's own open-files limit (no pipe to be had) raised out of each request:
    an "unexpected error" traceback an item, "internal error: OSError" on it (a tester's). The request answers
    that the fetch process could not be started, untold (its node not blamed); the log says it once, and that
    it works again."""
    lab.write_file("/fp/nostart.bin", b"n" * 10)
    target = parse_url(f"http://{DEFAULT_HOST}/fp/nostart.bin")
    node = nodes_of(lab)[0]

    async def go() -> tuple[list[FetchResult], FetchResult]:
        async with ProcessFetcher(Settings(), NodeHealth()) as remote:
            started = remote._start
            first = remote.pid
            assert first is not None

            async def refused() -> None:
                raise OSError(-1, "Unknown error -1")

            remote._start = refused  # type: ignore[method-assign]
            os.kill(first, signal.SIGKILL)
            for _ in range(500):  # its end seen by the parent (5 s at most)
                if remote.pid is None:
                    break
                await asyncio.sleep(0.01)
            failed = [await remote.request("GET", node, target) for _ in range(3)]
            remote._start = started  # type: ignore[method-assign]
            return failed, await remote.request("GET", node, target)

    with caplog.at_level(logging.INFO, logger="edgewarm.engine"):
        failed, again = asyncio.run(go())
    assert all(r.status is None and r.untold for r in failed), failed
    assert all((r.error or "").startswith("the fetch process could not be started") for r in failed), failed
    assert again.status == 200, again
    said = [r.getMessage() for r in caplog.records if r.getMessage().startswith("starting the fetch process")]
    assert said[0] == "starting the fetch process failed: [Errno -1] Unknown error -1", said
    assert said[-1].startswith("starting the fetch process works again, after "), said  # (and its own respawn)


def test_a_child_that_dies_idle_is_started_again_without_waiting_for_a_request(lab: Lab) -> None:
    """A child killed while no request waited was started again at the next request only: its metrics went
    missing meanwhile (a tester's), and that request waited for the start. Another runs within a few seconds."""

    async def go() -> tuple[int, int | None]:
        async with ProcessFetcher(Settings(), NodeHealth()) as remote:
            first = remote.pid
            assert first is not None
            os.kill(first, signal.SIGKILL)
            for _ in range(1000):  # 10 s at most
                if remote.pid not in (None, first):
                    break
                await asyncio.sleep(0.01)
            return first, remote.pid

    first, second = asyncio.run(go())
    assert second is not None and second != first
    assert not alive(second)  # and closed with it
