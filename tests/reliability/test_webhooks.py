"""Webhook delivery against real receivers on loopback: no receiver holds up another, the settings of the
latest reload apply, an error never shows the receiver's token."""

from __future__ import annotations

import asyncio
import contextlib
import logging
import subprocess
import time
import uuid
from collections.abc import AsyncIterator, Awaitable, Callable
from contextlib import asynccontextmanager
from pathlib import Path
from typing import Any

import pytest

from edgewarm import __version__
from edgewarm.client import Client
from edgewarm.config import parse_config
from edgewarm.metrics import Metrics
from edgewarm.models import ItemAction, ItemOutcome, NewItem, NewTask, QuotaCharge, TaskKind
from edgewarm.store import TaskStore, open_store
from edgewarm.testing.faults import Close, FaultServer, Reset, Respond, always
from edgewarm.testing.lab import self_signed
from edgewarm.testing.service import DEMO_SECRET, DEMO_USER, free_port
from edgewarm.webhooks import PER_RECEIVER, PER_USER, WebhookDeliverer, _without_the_url

from .support import OTHER, USER, base_config, node_toml, start_service, wait_until

pytestmark = pytest.mark.anyio


def webhook_config(**webhooks: Any) -> Any:
    return parse_config(base_config(webhooks={"allowed_hosts": ["127.0.0.1"], "backoff_base": 30.0, **webhooks}))


async def ended_task(store: TaskStore, callback_url: str, user: str = USER) -> str:
    """A task of one item that succeeded: its webhook is due."""
    task_id = str(uuid.uuid4())
    item = NewItem(0, "http://www.example.test/w", "edge-1", ItemAction.WARM, 0)
    quota = QuotaCharge("20260101", 1, 0, 10**9, 50)
    await store.create_task(NewTask(task_id, user, TaskKind.PREFETCH, time.time(), (item,), quota, None, callback_url))
    (claim,) = [c for c in await store.claim_due_items("w", 10, time.time(), 60) if c.task_id == task_id]
    await store.record_outcomes("w", [ItemOutcome(claim.item_id, True, 1)], time.time())
    return task_id


async def asked(server: FaultServer, seconds: float) -> None:
    """Until `server` has a request, or `seconds` passed."""
    for _ in range(int(seconds / 0.02)):
        if server.requests:
            return
        await asyncio.sleep(0.02)


@asynccontextmanager
async def delivering(deliverer: WebhookDeliverer) -> AsyncIterator[None]:
    stopping = asyncio.Event()
    runner = asyncio.create_task(deliverer.run(stopping))
    try:
        yield
    finally:
        stopping.set()
        deliverer.wake()
        await asyncio.wait_for(runner, 30)


async def test_a_receiver_that_hangs_holds_up_no_other() -> None:
    """30 webhooks to a receiver that never answers in time (timeout 2 s), then one to a healthy receiver: the
    healthy one is delivered at once (before, deliveries went in batches of 20, each waiting for its slowest:
    the healthy one came after the first batch's 2 s)."""
    with FaultServer(always(Respond(200, delay=10))) as hanging, FaultServer(always(Respond(200))) as healthy:
        config = webhook_config(timeout=2.0)
        async with open_store("memory://") as store:
            for _ in range(30):
                await ended_task(store, f"{hanging.url}/hook")
            await ended_task(store, f"{healthy.url}/hook")
            deliverer = WebhookDeliverer(config, store, Metrics())
            started = time.monotonic()
            async with delivering(deliverer):
                await asked(healthy, 3.0)
                took = time.monotonic() - started
    assert healthy.requests and took < 1.5, took


@pytest.mark.parametrize(
    ("receivers", "each", "user", "cap"),
    [(1, 120, USER, PER_RECEIVER), (1, 1100, OTHER, PER_USER), (10, 12, OTHER, PER_USER)],
    ids=["120-to-one", "1100-to-one", "10-receivers"],
)
async def test_hanging_receivers_hold_up_no_other_receivers_webhook(
    receivers: int, each: int, user: str, cap: int
) -> None:
    """Receivers that hang (timeout 12 s), then a webhook to a healthy receiver (the same user's, or another's):
    it is posted long before the hanging ones end. Testers' findings: with 120 to one receiver, the process's 100
    deliveries all went there (now PER_RECEIVER at most); with 1,100, the 1,000 a process held stopped the
    claims for a timeout (14 s); one user's 10 receivers that hang (10 ports of one host) took all 100 (8 s). Now
    a user has PER_USER at most, and what a process cannot hold is put off a timeout."""
    servers = [FaultServer(always(Respond(200, delay=30))) for _ in range(receivers)]
    with contextlib.ExitStack() as stack, FaultServer(always(Respond(200))) as healthy:
        hanging = [stack.enter_context(server) for server in servers]
        config = webhook_config(timeout=12.0)
        async with open_store("memory://") as store:
            for server in hanging:
                for _ in range(each):
                    await ended_task(store, f"{server.url}/hook")
            await ended_task(store, f"{healthy.url}/hook", user)
            deliverer = WebhookDeliverer(config, store, Metrics())
            async with delivering(deliverer):
                await asked(healthy, 6.0)  # half the timeout the hanging deliveries hold
                posted = sum(len(server.requests) for server in hanging)
    assert healthy.requests, "the healthy receiver's webhook waited for the hanging receivers"
    assert 0 < posted <= cap, posted


async def test_a_reloaded_timeout_applies_to_the_next_delivery() -> None:
    """The deliverer given a config whose [webhooks] timeout is 5 s (it started with 0.5 s): a receiver that
    answers in 1 s gets its webhook delivered (before, the start's timeout held until a restart)."""
    with FaultServer(always(Respond(200, delay=1.0))) as slow:
        async with open_store("memory://") as store:
            task_id = await ended_task(store, f"{slow.url}/hook")
            deliverer = WebhookDeliverer(webhook_config(timeout=0.5), store, Metrics())
            deliverer.config = webhook_config(timeout=5.0)
            async with delivering(deliverer):
                task = await delivered(store, task_id, 4)
    assert task is not None and (task.webhook_state, task.webhook_error) == ("delivered", None)


async def test_the_deliverer_ends_when_told_not_at_its_next_look() -> None:
    """A stop ended the deliverer's loop only when its once-a-second look came (a stopped service exited up to
    a second after "edgewarm stopped cleanly"); now at once."""
    async with open_store("memory://") as store:
        stopping = asyncio.Event()
        runner = asyncio.create_task(WebhookDeliverer(webhook_config(), store, Metrics()).run(stopping))
        await asyncio.sleep(0.1)  # in its wait
        stopping.set()
        await asyncio.wait_for(runner, 0.6)


async def test_a_host_taken_off_allowed_hosts_gets_no_more_webhooks_queued_before() -> None:
    """A reload that takes a host off [webhooks] allowed_hosts (the guard against posting where the operator
    does not want): a task submitted before still had its webhook posted there, and retried. Now it fails at
    once, saying why, and nothing is sent."""
    with FaultServer(always(Respond(200))) as receiver:
        async with open_store("memory://") as store:
            task_id = await ended_task(store, f"{receiver.url}/hook")
            deliverer = WebhookDeliverer(webhook_config(), store, Metrics())
            deliverer.config = webhook_config(allowed_hosts=["hooks.example.test"])  # a SIGHUP
            async with delivering(deliverer):
                task = await delivered(store, task_id, 3)
    assert task is not None and task.webhook_state == "failed", task
    assert task.webhook_error == (
        "callback_url host '127.0.0.1' is no longer allowed ([webhooks] allowed_hosts in the config)"
    )
    assert receiver.requests == []


async def test_a_webhook_given_up_at_once_says_it_is_not_retried(caplog: pytest.LogCaptureFixture) -> None:
    """Its user gone (a reload): "webhook failed (attempt 1, …)" read as the first of several attempts (an
    operator's, who added the user back and waited): the line says none follows."""
    with FaultServer(always(Respond(200))) as receiver:
        async with open_store("memory://") as store:
            task_id = await ended_task(store, f"{receiver.url}/hook")
            deliverer = WebhookDeliverer(webhook_config(), store, Metrics())
            deliverer.config = deliverer.config.model_copy(update={"users": []})  # a SIGHUP without the user
            with caplog.at_level(logging.INFO, logger="edgewarm"):
                async with delivering(deliverer):
                    await delivered(store, task_id, 3)
    said = [r.getMessage() for r in caplog.records if r.getMessage().startswith("webhook ")]
    assert said == [
        f"webhook failed (attempt 1, not retried: no attempt can deliver it, to {receiver.url}/hook): the task's "
        "user is no longer configured"
    ], said
    assert receiver.requests == []


async def test_a_timeout_is_told_as_one_and_an_error_never_shows_the_receivers_token() -> None:
    """A receiver too slow: "no answer within 0.5 s ([webhooks] timeout)" (it was "TimeoutError:"); an error
    text naming the callback URL, as aiohttp writes it or as given, shows it masked (its token was kept in the
    task's view and logged on every attempt)."""
    with FaultServer(always(Respond(200, delay=3.0))) as slow:
        async with open_store("memory://") as store:
            task_id = await ended_task(store, f"{slow.url}/hook?token=SECRET42")
            async with delivering(WebhookDeliverer(webhook_config(timeout=0.5), store, Metrics())):
                task = await delivered(store, task_id, 3)
    assert task is not None and task.webhook_error == "no answer within 0.5 s ([webhooks] timeout)"
    url = "http://127.0.0.1:9/hook?token=SECRET42&x=1"
    told = _without_the_url(f"ClientResponseError: 400, message='Bad status line', url='{url}'", url)
    assert "SECRET42" not in told and "http://127.0.0.1:9/hook?token=***&x=***" in told


Serve = Callable[[asyncio.StreamReader, asyncio.StreamWriter], Awaitable[None]]


@asynccontextmanager
async def tcp_receiver(serve: Serve) -> AsyncIterator[str]:
    """A callback URL on 127.0.0.1 whose connections `serve` answers as it likes (no HTTP server of its own)."""
    server = await asyncio.start_server(serve, "127.0.0.1", 0)
    port = server.sockets[0].getsockname()[1]
    try:
        yield f"http://127.0.0.1:{port}/hook"
    finally:
        server.close()


@asynccontextmanager
async def raw_receiver(answer: bytes) -> AsyncIterator[str]:
    """A receiver that reads a request's head and writes `answer`, then holds the connection open."""

    async def serve(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        await reader.readuntil(b"\r\n\r\n")
        writer.write(answer)
        await writer.drain()
        await asyncio.sleep(10)
        writer.close()

    async with tcp_receiver(serve) as url:
        yield url


async def delivered(store: TaskStore, task_id: str, seconds: float) -> Any:
    """The task once its webhook has been tried once (or after `seconds`)."""
    for _ in range(int(seconds / 0.02)):
        task = await store.get_task(task_id)
        if task is not None and task.webhook_attempts:
            return task
        await asyncio.sleep(0.02)
    return await store.get_task(task_id)


async def test_a_receivers_answer_body_is_not_read_whole() -> None:
    """A receiver answers 200 with a body of 1 GB (it sends 256 KiB, then nothing): delivered at once (before:
    read whole into memory, here until the timeout; an 800 MB answer took the process to 1.8 GB)."""
    head = b"HTTP/1.1 200 OK\r\nContent-Length: 1000000000\r\n\r\n"
    async with raw_receiver(head + b"x" * 262_144) as url, open_store("memory://") as store:
        task_id = await ended_task(store, url)
        async with delivering(WebhookDeliverer(webhook_config(timeout=3.0), store, Metrics())):
            task = await delivered(store, task_id, 2.0)
    assert task is not None and (task.webhook_state, task.webhook_error) == ("delivered", None)


async def test_a_redirect_is_told_as_not_followed_and_the_post_names_edgewarm() -> None:
    """A receiver answering 302: the error says redirects are not followed (it was "HTTP 302"); the POST's
    User-Agent names edgewarm (it was aiohttp's own)."""
    moved = Respond(302, headers=(("Location", "http://127.0.0.1:9/elsewhere"),))
    with FaultServer(always(moved)) as receiver:
        async with open_store("memory://") as store:
            task_id = await ended_task(store, f"{receiver.url}/hook")
            async with delivering(WebhookDeliverer(webhook_config(timeout=3.0), store, Metrics())):
                task = await delivered(store, task_id, 3.0)
        agents = {r.header("User-Agent") for r in receiver.requests}
    assert task is not None
    assert task.webhook_error == "HTTP 302 (redirects are not followed: give the receiver's own URL)"
    assert agents == {f"edgewarm/{__version__} (webhook)"}
    with FaultServer(always(Respond(304, body=b""))) as receiver:  # no redirect: said as it is
        async with open_store("memory://") as store:
            task_id = await ended_task(store, f"{receiver.url}/hook")
            async with delivering(WebhookDeliverer(webhook_config(timeout=3.0), store, Metrics())):
                task = await delivered(store, task_id, 3.0)
    assert task is not None and task.webhook_error == "HTTP 304", task


async def test_a_malformed_answer_is_not_told_as_a_status_the_receiver_never_sent() -> None:
    """Before: "ClientResponseError: 400, message='Bad status line …'", a 400 that aiohttp made up."""
    async with raw_receiver(b"HTTP/1.1 2OO OK\r\n\r\n") as url, open_store("memory://") as store:
        task_id = await ended_task(store, url)
        async with delivering(WebhookDeliverer(webhook_config(timeout=3.0), store, Metrics())):
            task = await delivered(store, task_id, 2.0)
    assert task is not None and task.webhook_error is not None
    assert task.webhook_error == "malformed answer from the receiver: Bad status line: Invalid status code"


async def test_a_delivery_given_up_is_a_warning_and_one_retried_is_information(
    caplog: pytest.LogCaptureFixture,
) -> None:
    """The receiver answers 500: with attempts left, "webhook retried" at info; at the last, "webhook failed" at
    warning (an operator watching warnings learns a receiver gave up; it was at info like every try)."""
    with FaultServer(always(Respond(500))) as broken:
        for max_attempts, verdict, level in ((3, "retried", "INFO"), (1, "failed", "WARNING")):
            caplog.clear()
            async with open_store("memory://") as store:
                task_id = await ended_task(store, f"{broken.url}/hook")
                deliverer = WebhookDeliverer(webhook_config(max_attempts=max_attempts), store, Metrics())
                with caplog.at_level("INFO", logger="edgewarm"):
                    async with delivering(deliverer):
                        assert (await delivered(store, task_id, 5)).webhook_attempts == 1
            told = [(r.levelname, r.getMessage()) for r in caplog.records if r.getMessage().startswith("webhook ")]
            assert told == [(level, f"webhook {verdict} (attempt 1, to {broken.url}/hook): HTTP 500")], told


async def test_a_receivers_ca_added_to_ssl_cert_file_is_trusted_without_a_restart(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """A re-tester's: the receiver's CA added to SSL_CERT_FILE (and SIGHUP): nodes trusted it, webhooks not until
    a restart (aiohttp's context, made at import). The deliverer makes its context again once the file changed."""
    cert, key = tmp_path / "cert.pem", tmp_path / "key.pem"
    await asyncio.to_thread(
        subprocess.run,
        ["openssl", "req", "-x509", "-newkey", "rsa:2048", "-nodes", "-days", "2", "-subj", "/CN=127.0.0.1",
         "-addext", "subjectAltName=IP:127.0.0.1", "-keyout", str(key), "-out", str(cert)],
        check=True, capture_output=True, timeout=60,
    )  # fmt: skip
    cas = tmp_path / "cas.pem"
    cas.write_bytes(self_signed(tmp_path / "other", "other.test")[0].read_bytes())
    monkeypatch.setenv("SSL_CERT_FILE", str(cas))
    with FaultServer(always(Respond(200, body=b"ok")), tls=(cert, key)) as receiver:
        async with open_store("memory://") as store:
            deliverer = WebhookDeliverer(webhook_config(max_attempts=1), store, Metrics())
            async with delivering(deliverer):
                refused = await delivered(store, await ended_task(store, f"{receiver.url}/hook"), 10)
                cas.write_bytes(cert.read_bytes())
                taken = await delivered(store, await ended_task(store, f"{receiver.url}/hook"), 10)
    assert refused.webhook_error is not None and "CERTIFICATE_VERIFY_FAILED" in refused.webhook_error, refused
    assert (taken.webhook_state, taken.webhook_error) == ("delivered", None), taken


async def test_a_receiver_whose_name_does_not_resolve_is_said_so() -> None:
    """A re-tester's: "cannot connect to the receiver hooks.example.test:40959: Unknown error -2" (the resolver's
    code read as an OS error's)."""
    config = parse_config(base_config(webhooks={"allowed_hosts": ["nothing.invalid"], "backoff_base": 30.0}))
    async with open_store("memory://") as store:
        task_id = await ended_task(store, "http://nothing.invalid:40959/hook")  # .invalid never resolves (RFC 2606)
        async with delivering(WebhookDeliverer(config, store, Metrics())):
            task = await delivered(store, task_id, 10)
    assert task.webhook_error is not None
    assert task.webhook_error.startswith(
        "cannot connect to the receiver nothing.invalid:40959: its name does not resolve ("
    ), task.webhook_error
    assert "Unknown error" not in task.webhook_error


async def test_a_receiver_of_an_ipv6_address_is_named_in_brackets() -> None:
    """`cannot connect to the receiver ::1:80` (an IPv6 tester's): `[::1]:80`, as a URL writes it."""
    port = free_port()
    async with open_store("memory://") as store:
        task_id = await ended_task(store, f"http://[::1]:{port}/hook")
        deliverer = WebhookDeliverer(webhook_config(max_attempts=3, allowed_hosts=["::1"]), store, Metrics())
        async with delivering(deliverer):
            task = await delivered(store, task_id, 5)
    assert task.webhook_error is not None
    assert task.webhook_error.startswith(f"cannot connect to the receiver [::1]:{port}: "), task.webhook_error


async def test_a_receiver_that_refuses_connections_is_named_with_the_cause(caplog: pytest.LogCaptureFixture) -> None:
    """A receiver down was "ClientConnectorError: Cannot connect to host 127.0.0.1:9 ssl:default [Connect call
    failed …]" (ssl for an http URL), and the line named neither the receiver nor the user (an ops tester's):
    said as a node's is, the receiver shown with its query masked, the user and attempt as fields."""
    port = free_port()
    async with open_store("memory://") as store:
        task_id = await ended_task(store, f"http://127.0.0.1:{port}/hook?token=t0ken")
        deliverer = WebhookDeliverer(webhook_config(max_attempts=3), store, Metrics())
        with caplog.at_level("INFO", logger="edgewarm"):
            async with delivering(deliverer):
                task = await delivered(store, task_id, 5)
    assert task.webhook_error == f"cannot connect to the receiver 127.0.0.1:{port}: Connection refused"
    (record,) = [r for r in caplog.records if r.getMessage().startswith("webhook ")]
    shown = f"http://127.0.0.1:{port}/hook?token=***"
    assert record.getMessage() == f"webhook retried (attempt 1, to {shown}): {task.webhook_error}"
    assert (record.user, record.attempt) == (USER, 1), record.__dict__  # type: ignore[attr-defined]


@pytest.mark.parametrize(
    ("action", "said"),
    [
        (Close(), "the receiver closed the connection without an answer"),
        (Reset(), "the connection to the receiver failed: Connection reset by peer"),
    ],
)
async def test_a_receiver_that_drops_the_connection_is_said_so(action: Any, said: str) -> None:
    """aiohttp's own words reached the task and the log ("ServerDisconnectedError: Server disconnected",
    "ClientOSError: [Errno 104] Connection reset by peer": a re-tester's)."""
    with FaultServer(always(action)) as broken:
        async with open_store("memory://") as store:
            task_id = await ended_task(store, f"{broken.url}/hook")
            deliverer = WebhookDeliverer(webhook_config(max_attempts=3), store, Metrics())
            async with delivering(deliverer):
                task = await delivered(store, task_id, 5)
    assert task.webhook_error == said


async def test_a_delivery_under_way_when_the_clock_steps_forward_is_posted_once() -> None:
    """The receiver takes 3 s; 0.5 s in, the wall clock jumps an hour ahead: the delivery's lease looks expired
    and the next claim took the webhook again (before: posted twice, 3 s apart). It is posted once."""
    offset = [0.0]
    with FaultServer(always(Respond(200, delay=3.0))) as receiver:
        async with open_store("memory://") as store:
            task_id = await ended_task(store, receiver.url + "/hook")
            deliverer = WebhookDeliverer(
                webhook_config(timeout=5.0), store, Metrics(), clock=lambda: time.time() + offset[0]
            )
            async with delivering(deliverer):
                await asyncio.sleep(0.5)
                offset[0] = 3600.0
                task = await delivered(store, task_id, 6.0)
                await asyncio.sleep(1.5)  # a second POST would have come by now
    assert task is not None and task.webhook_state == "delivered"
    assert len(receiver.requests) == 1


async def test_a_retry_set_while_the_clock_was_ahead_is_due_at_once_when_it_steps_back() -> None:
    """A delivery failed while the wall clock was an hour ahead; its retry is due 30-60 s after that. NTP sets
    the clock right: the engine's step check brings it forward and it is posted at once (before: it waited
    an hour for the clock to catch up). A retry due within its backoff is left as it is."""
    with FaultServer(always(Respond(200))) as receiver:
        async with open_store("memory://") as store:
            ahead = await ended_task(store, receiver.url + "/ahead")
            soon = await ended_task(store, receiver.url + "/soon")
            now = time.time()
            claimed = await store.claim_due_webhooks(now, 10, 30)  # as a deliverer would before it posts
            assert {t.id for t in claimed} == {ahead, soon}
            retry = {ahead: now + 3600 + 45, soon: now + 45}
            for task_id, retry_at in retry.items():
                await store.record_webhook(task_id, delivered=False, error="HTTP 500", retry_at=retry_at, now=now)
            deliverer = WebhookDeliverer(webhook_config(timeout=2.0), store, Metrics())
            async with delivering(deliverer):
                await deliverer.bring_forward()
                for _ in range(250):  # bounded: 5 s
                    task = await store.get_task(ahead)
                    if task is None or task.webhook_state != "pending":
                        break
                    await asyncio.sleep(0.02)
                late = await store.get_task(soon)
    assert task is not None and task.webhook_state == "delivered", task
    assert late is not None and (late.webhook_state, late.webhook_due_at) == ("pending", retry[soon])
    assert [r.path for r in receiver.requests] == ["/ahead"]


async def test_a_callback_url_the_client_cannot_parse_fails_instead_of_staying_pending(
    caplog: pytest.LogCaptureFixture,
) -> None:
    """Tester's finding: `http://[::1]./x?token=U1` (queued before submit refused it) made `_deliver` raise: the
    webhook stayed pending with 0 attempts, claimed again every lease, and "Task exception was never retrieved"
    logged its token. Now the attempt is recorded and given up (no retry can post it), its token not logged."""
    async with open_store("memory://") as store:
        task_id = await ended_task(store, "http://[::1]./x?token=U1")
        deliverer = WebhookDeliverer(webhook_config(allowed_hosts=["::1"]), store, Metrics())
        with caplog.at_level("INFO", logger="edgewarm"):
            async with delivering(deliverer):
                task = await delivered(store, task_id, 3)
    assert task is not None and (task.webhook_state, task.webhook_attempts) == ("failed", 1), task
    assert task.webhook_error == "callback_url cannot be parsed by the webhook client"
    assert "U1" not in caplog.text


def test_a_stop_gives_a_delivery_to_a_hanging_receiver_grace_seconds_not_the_webhook_timeout(tmp_path: Path) -> None:
    """Tester's finding: `[webhooks] timeout = 40`, `grace_seconds = 2`, a webhook under way to a receiver that
    hangs: SIGTERM took 39 s, waiting for the delivery's timeout. Now the delivery is cut short after the grace,
    the log says so, and the service exits cleanly within seconds; the webhook is handed back, due at once for
    the next start (it waited for its lease to end, 3 x the timeout: two minutes here)."""
    extra = '[engine]\ngrace_seconds = 2\n[webhooks]\nallowed_hosts = ["127.0.0.1"]\ntimeout = 40\n'
    with FaultServer(always(Respond(200))) as node, FaultServer(always(Respond(200, delay=60))) as hanging:
        service = start_service(tmp_path, node_toml("n", node.url), extra=extra)
        with service, Client(service.url, DEMO_USER, DEMO_SECRET, timeout=30) as client:
            taskid = client.prefetch(["http://www.example.test/w"], callback_url=f"{hanging.url}/hook?token=T")
            wait_until(lambda: len(hanging.requests) == 1, 15, "the webhook reached the hanging receiver")
            started = time.monotonic()
            code = service.stop(timeout=60)
            took = time.monotonic() - started
    assert code == 0 and took < 20, (code, took)  # bounded well below the 40 s timeout the stop waited before
    said = service.log.read_text()
    assert "1 webhook delivery cut short" in said and "handed back 1 webhook not sent" in said, said

    async def handed_back() -> None:
        async with open_store(f"sqlite:///{tmp_path}/edgewarm.db") as store:
            task = await store.get_task(taskid)
        assert task is not None and task.webhook_state == "pending" and task.webhook_attempts == 0, task
        assert task.webhook_due_at is not None and task.webhook_due_at <= time.time(), task

    asyncio.run(handed_back())


@asynccontextmanager
async def echoing_receiver(banner: bytes = b"") -> AsyncIterator[str]:
    """A server that is no HTTP one: it sends `banner`, then writes back each line it reads (as a line-based
    service answering "unknown command" would)."""

    async def serve(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        writer.write(banner)
        line = await reader.readline()
        writer.write(b"ERROR: unknown command " + line)
        await writer.drain()
        await asyncio.sleep(10)
        writer.close()

    async with tcp_receiver(serve) as url:
        yield url


SSH_BANNER = b"SSH-2.0-OpenSSH_9.6p1 Ubuntu-3ubuntu13.5\r\n" + b"\x00\x00\x01\x14\x0a\x14curve25519-sha256," * 20


@pytest.mark.parametrize("banner", [SSH_BANNER, b""], ids=["ssh-banner", "echo"])
async def test_an_error_from_a_server_that_is_not_http_shows_neither_what_it_sent_nor_the_token(
    banner: bytes, caplog: pytest.LogCaptureFixture
) -> None:
    """Tester's finding: a callback to an SSH port put its banner (438 characters) into the task's
    webhook.error and the log; a server echoing the request line put `token=LEAKME` there, at info level."""
    async with echoing_receiver(banner) as url, open_store("memory://") as store:
        task_id = await ended_task(store, f"{url}?token=LEAKME&n=1")
        with caplog.at_level("INFO", logger="edgewarm"):
            async with delivering(WebhookDeliverer(webhook_config(timeout=3.0), store, Metrics())):
                task = await delivered(store, task_id, 2.0)
    assert task is not None and task.webhook_error == "not an HTTP answer", task
    assert "LEAKME" not in caplog.text and "SSH-2.0" not in caplog.text


async def test_an_error_text_is_bounded_printable_and_masks_the_querys_values_wherever_they_are() -> None:
    """A malformed answer that echoes the token inside what aiohttp quotes back: it was masked there (the URL
    itself was masked, its values elsewhere were not); now what aiohttp quotes is left out altogether."""
    answer = b"HTTP/1.1 2OO token=LEAKME%20x " + b"\x01z" * 300 + b"\r\n\r\n"
    async with raw_receiver(answer) as url, open_store("memory://") as store:
        task_id = await ended_task(store, f"{url}?token=LEAKME%20x&n=1")
        async with delivering(WebhookDeliverer(webhook_config(timeout=3.0), store, Metrics())):
            task = await delivered(store, task_id, 2.0)
    error = task.webhook_error if task is not None else None
    assert error == "malformed answer from the receiver: Bad status line: Invalid status code", error


@pytest.mark.parametrize(
    ("answer", "said"),
    [
        (b"HTTP/1.1 200 OK\r\nBad Header Name: internal-token-ABCDEF\r\n\r\n", "Invalid header token"),
        (b"HTTP/1.1 999999 internal-token-STATUSLINE\r\n\r\n", "Bad status line: Invalid response status"),
        (b"HTTP/1.1 200 internal-token-LONG" + b"z" * 10_000 + b"\r\n\r\n", "Got more than 8190 bytes when reading"),
    ],
)
async def test_a_malformed_answer_is_told_by_its_fault_without_what_the_receiver_sent(answer: bytes, said: str) -> None:
    """aiohttp quotes the line it could not parse; the task's error (the tenant's to read) kept it: a receiver on
    an allowed host told its internal tokens through a callback pointed at it (a security tester's)."""
    async with raw_receiver(answer) as url, open_store("memory://") as store:
        task_id = await ended_task(store, url)
        async with delivering(WebhookDeliverer(webhook_config(timeout=3.0), store, Metrics())):
            task = await delivered(store, task_id, 2.0)
    assert task is not None and task.webhook_error == f"malformed answer from the receiver: {said}", task


async def test_a_callback_spelled_otherwise_than_allowed_hosts_lists_its_host_is_delivered() -> None:
    """allowed_hosts lists `localhost.` (the fully qualified spelling), the callback says `localhost`: the
    deliverer compares hosts as check_callback_url does (before: by spelling, "no longer allowed")."""
    with FaultServer(always(Respond(200))) as receiver:
        async with open_store("memory://") as store:
            task_id = await ended_task(store, f"{receiver.url.replace('127.0.0.1', 'localhost')}/hook")
            config = webhook_config(allowed_hosts=["LOCALHOST."], timeout=3.0)
            async with delivering(WebhookDeliverer(config, store, Metrics())):
                task = await delivered(store, task_id, 3)
    assert task is not None and (task.webhook_state, task.webhook_error) == ("delivered", None), task
