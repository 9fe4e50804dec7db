"""Webhooks, idempotency keys and the config reload, against a running service."""

from __future__ import annotations

import asyncio
import contextlib
import json
import os
import signal
import socket
import threading
import time
from collections.abc import Iterator
from datetime import datetime
from pathlib import Path

import httpx
import pytest
from prometheus_client.parser import text_string_to_metric_families

from edgewarm import __version__
from edgewarm.client import Client, ClientError
from edgewarm.testing import DEFAULT_HOST, Lab
from edgewarm.testing.faults import FaultServer, Respond, always
from edgewarm.testing.lab import self_signed
from edgewarm.testing.service import DEMO_SECRET, DEMO_USER, ServiceProcess, start_service
from edgewarm.webhooks import SIGNATURE_HEADER, sign_webhook, verify_webhook

from .support import Receiver

pytestmark = pytest.mark.integration


@pytest.fixture
def receiver() -> Iterator[Receiver]:
    with Receiver(fail_first=1) as receiver:
        yield receiver


def test_a_webhook_arrives_signed_after_a_retry(client: Client, lab: Lab, receiver: Receiver) -> None:
    """The task's summary is POSTed when it ends, signed with HMAC-SHA256 of the body; a 500 is retried. Each POST
    carries its time, signed with the rest: a receiver refuses one replayed later (before: no time in it, so a
    captured POST verified for ever)."""
    (path,) = lab.make_files(1, 32, prefix="/hook/")
    taskid = client.prefetch([f"http://{DEFAULT_HOST}{path}"], callback_url=receiver.url)
    receiver.wait_for(2)
    for body, headers in receiver.calls[:2]:
        assert verify_webhook(body, DEMO_SECRET, headers[SIGNATURE_HEADER])
        assert not verify_webhook(body, "another secret", headers[SIGNATURE_HEADER])
        sent = datetime.fromisoformat(json.loads(body)["sent_at"]).timestamp()
        assert abs(sent - time.time()) < 60
        assert verify_webhook(body, DEMO_SECRET, headers[SIGNATURE_HEADER], max_age=300)
        assert not verify_webhook(body, DEMO_SECRET, headers[SIGNATURE_HEADER], max_age=300, now=sent + 301)
        older = body.replace(json.loads(body)["sent_at"].encode(), b"2026-01-01T00:00:00.000+00:00")
        assert not verify_webhook(older, DEMO_SECRET, headers[SIGNATURE_HEADER], max_age=300, now=sent)
    assert receiver.calls[0][0] != receiver.calls[1][0]  # each attempt its own time
    undated = b'{"taskid": "x"}'  # signed, but with no time to check: refused when one is asked for
    assert verify_webhook(undated, DEMO_SECRET, sign_webhook(undated, DEMO_SECRET))
    assert not verify_webhook(undated, DEMO_SECRET, sign_webhook(undated, DEMO_SECRET), max_age=300)
    summary = json.loads(receiver.calls[1][0])
    assert (summary["taskid"], summary["status"], summary["succeeded"], summary["total"]) == (taskid, 0, 3, 3)
    assert summary["username"] == DEMO_USER


def test_a_webhook_is_signed_with_the_users_webhook_secret_when_given(lab: Lab, tmp_path: Path) -> None:
    """A user with `webhook_secret` has webhooks signed with it, not with the API secret (a receiver had to hold
    the key that calls the API as the user); a user without one, with the API secret, as before."""
    hook_secret = "receivers-only-0123456789abcdef"
    hooked = f'[[users]]\nname = "hooked"\nsecret = "hooked-api-secret-0123456789"\nwebhook_secret = "{hook_secret}"\n'
    hooked += 'domains = ["www.example.test"]\n\n'
    (path,) = lab.make_files(1, 32, prefix="/hook-key/")
    extra = '[webhooks]\nallowed_hosts = ["127.0.0.1"]\n'
    with Receiver() as receiver, start_service(tmp_path, hooked + lab.nodes_toml(), extra=extra) as service:
        for name, secret in (("hooked", "hooked-api-secret-0123456789"), (DEMO_USER, DEMO_SECRET)):
            with Client(service.url, name, secret) as client:
                client.prefetch([f"http://{DEFAULT_HOST}{path}"], callback_url=receiver.url)
        receiver.wait_for(2)
        log = service.log_text()
    signed = {json.loads(body)["username"]: (body, headers[SIGNATURE_HEADER]) for body, headers in receiver.calls}
    assert verify_webhook(signed["hooked"][0], hook_secret, signed["hooked"][1])
    assert not verify_webhook(signed["hooked"][0], "hooked-api-secret-0123456789", signed["hooked"][1])
    assert verify_webhook(signed[DEMO_USER][0], DEMO_SECRET, signed[DEMO_USER][1])
    assert hook_secret not in log


def test_a_callback_to_a_host_not_allowed_is_refused(client: Client, lab: Lab) -> None:
    """callback_url on a host not listed in [webhooks] allowed_hosts: code 17, and no task."""
    with pytest.raises(ClientError) as refused:
        client.prefetch([f"http://{DEFAULT_HOST}/x"], callback_url="http://evil.test/hook")
    assert refused.value.code == 17 and "allowed_hosts" in refused.value.message


def test_an_idempotency_key_makes_a_retried_submit_return_the_first_task(client: Client, lab: Lab) -> None:
    """The same key twice: one task id, the quota charged once; the header form works as well."""
    (path,) = lab.make_files(1, 32, prefix="/idem/")
    before = client.quota()["urls"]["used"]
    first = client.prefetch([f"http://{DEFAULT_HOST}{path}"], idempotency_key="launch-42")
    again = client.prefetch([f"http://{DEFAULT_HOST}{path}"], idempotency_key="launch-42")
    assert first == again
    body = {"username": DEMO_USER, "signature": client.signature(), "publish_urls": [f"http://{DEFAULT_HOST}{path}"]}
    by_header = httpx.post(f"{client.base_url}/api/prefetch", json=body, headers={"Idempotency-Key": "launch-42"})
    assert by_header.json()["taskid"] == first
    assert client.quota()["urls"]["used"] == before + 1


def test_sighup_reloads_users_without_dropping_work(service: ServiceProcess, lab: Lab) -> None:
    """A user added to the config file is accepted after SIGHUP; a broken file is refused and the old one kept."""
    original = service.config.read_text()
    try:
        with Client(service.url, "newcomer", "s3cret") as newcomer:
            with pytest.raises(ClientError) as unknown:
                newcomer.quota()
            assert unknown.value.code == 20
            service.config.write_text(
                original.replace(
                    "[[users]]",
                    '[[users]]\nname = "newcomer"\nsecret = "s3cret"\ndomains = ["www.example.test"]\n\n[[users]]',
                    1,
                )
            )
            assert service.proc is not None
            os.kill(service.proc.pid, signal.SIGHUP)
            deadline = time.monotonic() + 10
            while time.monotonic() < deadline:
                try:
                    newcomer.quota()
                    break
                except ClientError:
                    time.sleep(0.1)
            assert newcomer.quota()["urls"]["limit"] == 2000
            taken_at = reload_metrics(service)["edgewarm_config_last_reload_success_timestamp_seconds"]
            assert reload_metrics(service)["edgewarm_config_last_reload_successful"] == 1
            service.config.write_text("this is = not [valid toml")
            os.kill(service.proc.pid, signal.SIGHUP)
            deadline = time.monotonic() + 10
            while "keeping the running config" not in service.log_text() and time.monotonic() < deadline:
                time.sleep(0.05)
            assert "keeping the running config" in service.log_text()
            assert newcomer.quota()["urls"]["limit"] == 2000
            # What an editor or a config tool leaves for a moment: empty, or cut off before the nodes.
            cut = original[: original.index("[[nodes]]")]
            for text, said in (
                ("", "has no settings at all"),
                (cut, "the new config has no nodes (the running one has"),
            ):
                service.config.write_text(text)
                os.kill(service.proc.pid, signal.SIGHUP)
                deadline = time.monotonic() + 10
                while said not in service.log_text() and time.monotonic() < deadline:
                    time.sleep(0.05)
                assert said in service.log_text()
                assert newcomer.quota()["urls"]["limit"] == 2000
                # Seen in /metrics too (a reload tester's: only the log told a refused reload).
                assert reload_metrics(service) == {
                    "edgewarm_config_last_reload_successful": 0,
                    "edgewarm_config_last_reload_success_timestamp_seconds": taken_at,
                }
            # Settings taken at start: said when they differ from the start's, and no longer once put back
            # (before: compared with the last reload's, so the warning came for the file put back, not twice).
            moved = original.replace(f'listen = "127.0.0.1:{service.port}"', 'listen = "127.0.0.1:1"', 1)
            assert moved != original
            warned = "SIGHUP: listen change only on restart (the values at start stay in use)"
            counts = []
            for text in (moved, moved, original):
                reloads = service.log.read_text().count("config reloaded")
                service.config.write_text(text)
                os.kill(service.proc.pid, signal.SIGHUP)
                deadline = time.monotonic() + 10
                while service.log.read_text().count("config reloaded") == reloads and time.monotonic() < deadline:
                    time.sleep(0.05)
                counts.append(service.log.read_text().count(warned))
            assert counts == [1, 2, 2], service.log_tail()
            taken_again = reload_metrics(service)
            assert taken_again["edgewarm_config_last_reload_successful"] == 1
            assert taken_again["edgewarm_config_last_reload_success_timestamp_seconds"] > taken_at
    finally:
        service.config.write_text(original)
        if service.proc is not None:
            os.kill(service.proc.pid, signal.SIGHUP)


def reload_metrics(service: ServiceProcess) -> dict[str, float]:
    """The service's /metrics of its config's reloads."""
    text = httpx.get(f"{service.url}/metrics", timeout=10).text
    return {
        sample.name: sample.value
        for family in text_string_to_metric_families(text)
        for sample in family.samples
        if sample.name.startswith("edgewarm_config_last_reload")
    }


@pytest.mark.parametrize("fetch_process", [False, True], ids=["in-process", "fetch-process"])
def test_sighup_gives_the_fetcher_its_new_settings_without_a_restart(tmp_path: Path, fetch_process: bool) -> None:
    """`user_agent` changed and SIGHUP: the next warms carry the new one (from a new fetcher, or a new fetch
    process), the service's PID unchanged; the warms before it carried the old one."""
    with FaultServer(always(Respond(200, body=b"x" * 100))) as node:
        extra = f"[engine]\nfetch_process = {str(fetch_process).lower()}\n"
        nodes = f'[[nodes]]\nname = "rec"\nurl = "{node.url}"\n'
        with start_service(tmp_path, nodes, extra=extra) as service:
            assert service.proc is not None
            pid = service.proc.pid
            with Client(service.url, DEMO_USER, DEMO_SECRET) as client:
                first = client.prefetch(["http://www.example.test/before"])
                assert client.wait(first, timeout=30)["status"] == 0
                original = service.config.read_text()
                service.config.write_text(original.replace("[engine]\n", '[engine]\nuser_agent = "reloaded/1"\n', 1))
                os.kill(pid, signal.SIGHUP)
                deadline = time.monotonic() + 15
                while "to new requests" not in service.log_text() and time.monotonic() < deadline:
                    time.sleep(0.05)
                assert "[engine] user_agent applies to new requests" in service.log_text()
                second = client.prefetch(["http://www.example.test/after"])
                assert client.wait(second, timeout=30)["status"] == 0
            assert service.proc.pid == pid and service.proc.poll() is None
        agents = {r.target: r.header("User-Agent") for r in node.requests}
    assert agents == {"/before": f"edgewarm/{__version__}", "/after": "reloaded/1"}


@pytest.mark.parametrize("fetch_process", [False, True], ids=["in-process", "fetch-process"])
def test_sighup_after_the_ca_file_changed_gives_the_fetcher_the_new_cas(
    tmp_path: Path, fetch_process: bool, certificate: tuple[Path, Path], monkeypatch: pytest.MonkeyPatch
) -> None:
    """A TLS tester's: the node's CA added to SSL_CERT_FILE and SIGHUP, the config unchanged: nothing was read
    again until a restart (or a reload changing a fetcher's setting). A new fetcher (or fetch process) takes it."""
    cas = tmp_path / "cas.pem"
    cas.write_bytes(self_signed(tmp_path / "other", "other.test")[0].read_bytes())
    monkeypatch.setenv("SSL_CERT_FILE", str(cas))
    with FaultServer(always(Respond(200, body=b"x" * 100)), tls=certificate) as node:
        extra = f"[engine]\nfetch_process = {str(fetch_process).lower()}\n"
        nodes = f'[[nodes]]\nname = "tls"\nurl = "{node.url}"\n'
        with start_service(tmp_path, nodes, extra=extra) as service:
            assert service.proc is not None
            with Client(service.url, DEMO_USER, DEMO_SECRET) as client:
                first = client.wait(client.prefetch(["https://www.example.test/before"]), timeout=30)
                assert first["status"] == 2, first
                cas.write_bytes(certificate[0].read_bytes())
                os.kill(service.proc.pid, signal.SIGHUP)
                service.wait_for_log("SIGHUP: the CA files apply to new requests", 15)
                second = client.wait(client.prefetch(["https://www.example.test/after"]), timeout=30)
                assert second["status"] == 0, second
                reloads = service.log_text().count("config reloaded")
                os.kill(service.proc.pid, signal.SIGHUP)  # nothing changed since: no new fetcher
                deadline = time.monotonic() + 15
                while service.log_text().count("config reloaded") == reloads and time.monotonic() < deadline:
                    time.sleep(0.05)
                assert service.log_text().count("config reloaded") == reloads + 1
            assert service.log_text().count("the CA files apply") == 1


@pytest.mark.parametrize("fetch_process", [False, True], ids=["in-process", "fetch-process"])
def test_a_node_held_down_is_in_metrics_and_stays_held_across_a_fetcher_swap(
    tmp_path: Path, fetch_process: bool
) -> None:
    """A node that refuses connections is held down: /metrics says so (the live node beside it is not). A
    reload that replaces the fetcher (or the fetch process) keeps what was learnt: the next item for the dead
    node is not sent but answered "held down" at once (a fresh record would try it twice, refused each time)."""
    with FaultServer(always(Respond(200, body=b"ok"))) as live, socket.socket() as dead:
        dead.bind(("127.0.0.1", 0))  # bound, not listening: connections are refused
        nodes = '[[nodes]]\nname = "dead"\nurl = "http://{}:{}"\n\n'.format(*dead.getsockname())
        nodes += f'[[nodes]]\nname = "live"\nurl = "{live.url}"\n'
        extra = f"[engine]\nfetch_process = {str(fetch_process).lower()}\nmax_attempts = 2\nbackoff_base = 0.01\n"
        extra += "node_down_wait = 0\n"  # its items fail at once, not waiting for it
        with start_service(tmp_path, nodes, extra=extra) as service:
            assert service.proc is not None
            with Client(service.url, DEMO_USER, DEMO_SECRET) as client:
                first = client.prefetch([f"http://www.example.test/held/{i}" for i in range(10)])
                assert client.wait(first, timeout=30)["status"] == 2
                held = held_down_gauge(service.url)
                assert held == {"dead": 1.0, "live": 0.0}, held
                original = service.config.read_text()
                service.config.write_text(original.replace("[engine]\n", '[engine]\nuser_agent = "reloaded/1"\n', 1))
                os.kill(service.proc.pid, signal.SIGHUP)
                service.wait_for_log("[engine] user_agent applies to new requests", 15)
                second = client.prefetch(["http://www.example.test/held/after"])
                assert client.wait(second, timeout=30)["status"] == 2
                items = {i["node"]: i for i in client.task(second)["items"]}
            assert held_down_gauge(service.url)["dead"] == 1.0
            # The fetch process's own figures beside the service's (the new child's, after the swap).
            text = httpx.get(f"{service.url}/metrics", timeout=10).text
            found = {s.name: s.value for f in text_string_to_metric_families(text) for s in f.samples}
            assert found["process_open_fds"] > 0
            if fetch_process:
                assert (
                    found["edgewarm_fetch_process_open_fds"] > 0
                    and found["edgewarm_fetch_process_cpu_seconds_total"] > 0
                )
            else:
                assert not [name for name in found if name.startswith("edgewarm_fetch_process_")], found
    assert items["live"]["state"] == "succeeded"
    assert items["dead"]["error"].startswith("not tried: dead is held down after "), items["dead"]


def test_a_node_held_down_that_comes_back_is_shown_up_again_without_new_work(tmp_path: Path) -> None:
    """The node refused connections and was held down; its task ended. Once it listens again, the engine asks
    it after the cooldown by itself (HEAD /), and /metrics says it is up within seconds, with no item of it
    due (the gauge stayed 1 until the next task's traffic came)."""

    async def serve(sock: socket.socket, ready: threading.Event, done: threading.Event) -> None:
        async def answer(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
            with contextlib.suppress(ConnectionError, asyncio.IncompleteReadError):
                await reader.readuntil(b"\r\n\r\n")
                writer.write(b"HTTP/1.1 404 Not Found\r\nContent-Length: 0\r\nConnection: close\r\n\r\n")
                await writer.drain()
            writer.close()

        server = await asyncio.start_server(answer, sock=sock)
        ready.set()
        async with server:
            await asyncio.to_thread(done.wait, 60)

    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))  # bound, not listening: connections are refused
        nodes = '[[nodes]]\nname = "back"\nurl = "http://{}:{}"\n'.format(*sock.getsockname())
        extra = "[engine]\nmax_attempts = 1\nnode_down_wait = 0\n"
        with start_service(tmp_path, nodes, extra=extra) as service:
            with Client(service.url, DEMO_USER, DEMO_SECRET) as client:
                taskid = client.prefetch([f"http://www.example.test/back/{i}" for i in range(10)])
                assert client.wait(taskid, timeout=30)["status"] == 2
            assert held_down_gauge(service.url) == {"back": 1.0}
            ready, done = threading.Event(), threading.Event()
            thread = threading.Thread(target=asyncio.run, args=(serve(sock, ready, done),), daemon=True)
            thread.start()
            try:
                assert ready.wait(10)
                deadline = time.monotonic() + 20
                while held_down_gauge(service.url) != {"back": 0.0} and time.monotonic() < deadline:
                    time.sleep(0.2)
                assert held_down_gauge(service.url) == {"back": 0.0}
                assert "node back answers again: no longer held down" in service.log_text()
            finally:
                done.set()
                thread.join(10)


def test_an_https_node_held_down_is_asked_again_without_its_certificate_refused(
    tmp_path: Path, certificate: tuple[Path, Path], monkeypatch: pytest.MonkeyPatch
) -> None:
    """A TLS tester's: the node's certificate names the sites (www.example.test), not its address; the HEAD / of
    a node held down, checked against its address, logged "verifying back's certificate failed" at each return
    (and started its minute of certificate lines, which then hid a real refusal)."""
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))  # bound, not listening: connections are refused
        port = sock.getsockname()[1]
        nodes = f'[[nodes]]\nname = "back"\nurl = "https://127.0.0.1:{port}"\n'
        extra = "[engine]\nmax_attempts = 1\nnode_down_wait = 0\n"
        monkeypatch.setenv("SSL_CERT_FILE", str(certificate[0]))  # the sites' certificate trusted
        with start_service(tmp_path, nodes, extra=extra) as service:
            with Client(service.url, DEMO_USER, DEMO_SECRET) as client:
                taskid = client.prefetch([f"https://www.example.test/back/{i}" for i in range(10)])
                assert client.wait(taskid, timeout=30)["status"] == 2
            assert held_down_gauge(service.url) == {"back": 1.0}
            sock.close()
            with FaultServer(always(Respond(404)), tls=certificate, port=port):
                deadline = time.monotonic() + 20
                while held_down_gauge(service.url) != {"back": 0.0} and time.monotonic() < deadline:
                    time.sleep(0.2)
                assert held_down_gauge(service.url) == {"back": 0.0}
                with Client(service.url, DEMO_USER, DEMO_SECRET) as client:  # the sites' certificate: taken
                    ended = client.wait(client.prefetch(["https://www.example.test/back/ok"]), timeout=30)
                    warmed = client.task(ended["taskid"])
    assert "node back answers again: no longer held down" in service.log_text()
    assert "certificate" not in service.log_text(), service.log_tail()
    assert warmed["status"] == 2 and warmed["items"][0]["http_status"] == 404, warmed  # answered, through TLS


def held_down_gauge(url: str) -> dict[str, float]:
    text = httpx.get(f"{url}/metrics", timeout=10).text
    return {
        s.labels["node"]: s.value
        for family in text_string_to_metric_families(text)
        for s in family.samples
        if s.name == "edgewarm_node_held_down"
    }


def test_a_fetcher_swap_in_the_middle_of_a_task_loses_and_repeats_nothing(tmp_path: Path) -> None:
    """SIGHUP with a new user_agent while 200 slow warms (50 ms each, 8 at a time) run: both tasks succeed,
    every URL reached the node exactly once, the first ones with the old user agent and the rest with the new."""
    with FaultServer(always(Respond(200, body=b"x" * 100, delay=0.05))) as node:
        nodes = f'[[nodes]]\nname = "rec"\nurl = "{node.url}"\nconcurrency = 8\n'
        with start_service(tmp_path, nodes, extra="[engine]\n") as service:
            assert service.proc is not None
            urls = [f"http://www.example.test/n/{i}" for i in range(200)]
            with Client(service.url, DEMO_USER, DEMO_SECRET) as client:
                taskids = [client.prefetch(urls[:100]), client.prefetch(urls[100:])]
                deadline = time.monotonic() + 15
                while len(node.requests) < 20 and time.monotonic() < deadline:
                    time.sleep(0.01)
                original = service.config.read_text()
                service.config.write_text(original.replace("[engine]\n", '[engine]\nuser_agent = "swapped/1"\n', 1))
                os.kill(service.proc.pid, signal.SIGHUP)
                views = [client.wait(taskid, timeout=60) for taskid in taskids]
            assert [(v["status"], v["succeeded"], v["failed"]) for v in views] == [(0, 100, 0)] * 2
        targets = [r.target for r in node.requests]
        agents = [r.header("User-Agent") for r in node.requests]
    assert sorted(targets) == sorted(u.removeprefix("http://www.example.test") for u in urls)
    assert agents[:20] == [f"edgewarm/{__version__}"] * 20 and agents[-1] == "swapped/1"
    assert set(agents) == {f"edgewarm/{__version__}", "swapped/1"}


def test_a_reload_that_removes_a_node_says_so(tmp_path: Path) -> None:
    """A node removed (or renamed) by a reload fails its open items: the log's warning names it (before, only
    "config reloaded (1 users, 1 nodes)"); so is a user removed, whose open tasks keep running; the reload's line
    names the nodes and users added."""
    with FaultServer(always(Respond(200, body=b"ok"))) as one, FaultServer(always(Respond(200, body=b"ok"))) as two:
        kept = f'[[nodes]]\nname = "kept"\nurl = "{one.url}"\n'
        with start_service(tmp_path, kept + f'\n[[nodes]]\nname = "gone"\nurl = "{two.url}"\n') as service:
            assert service.proc is not None
            text = service.config.read_text().replace('name = "gone"', 'name = "renamed"')
            service.config.write_text(text.replace(f'name = "{DEMO_USER}"', 'name = "renamed-user"', 1))
            os.kill(service.proc.pid, signal.SIGHUP)
            deadline = time.monotonic() + 10
            while "users no longer configured" not in service.log_text() and time.monotonic() < deadline:
                time.sleep(0.05)
            log = service.log_text()
    assert "SIGHUP: nodes no longer configured, their open items fail: gone" in log, log
    # the added ones too, in the reload's own line (before, only the removals were named)
    assert "SIGHUP: config reloaded (1 user, 2 nodes): nodes added: renamed; users added: renamed-user" in log, log
    assert (
        f"SIGHUP: users no longer configured (their open tasks keep running, their webhooks are not sent): {DEMO_USER}"
        in log
    )
