"""https nodes that misbehave: the faults of test_faults.py over TLS, and the ones only TLS has.

Each case runs three ways: through pyreqwest (rustls) to the node given by IP address and by name, and
through aiohttp (OpenSSL) for a URL with a `'` in its query, which pyreqwest would rewrite (engine/fetcher.py).
The node is a FaultServer speaking TLS with a self-signed certificate for the site (`tls_verify = false`,
unless a test checks the certificate); the engine runs in process on a memory:// store. What must hold is
what holds over plain HTTP: retried what is worth retrying, each failure saying what happened, the node's
status kept on a short body, and every wait bounded, including a handshake that never ends.
"""

from __future__ import annotations

import functools
import socket
import time
from collections.abc import Callable
from pathlib import Path

import pytest

from edgewarm.models import Item, ItemState, Task, TaskStatus
from edgewarm.testing import DEFAULT_HOST, Lab
from edgewarm.testing.faults import Action, Behaviour, Close, FaultServer, Reset, Respond, ShortBody, Stall, sequence

from .support import engine_rig

pytestmark = pytest.mark.anyio

SITE = DEFAULT_HOST  # the name the session's certificate is for (tests/conftest.py)
BODY = b"x" * 4096
# How the node is written in the config, and the URL's path: who sends it.
WAYS = pytest.mark.parametrize(
    ("address", "path"),
    [("127.0.0.1", "/a.bin"), ("localhost", "/a.bin"), ("127.0.0.1", "/a.bin?v='1'")],
    ids=["pyreqwest-by-ip", "pyreqwest-by-name", "aiohttp"],
)
TlsNode = Callable[[Action | Behaviour], FaultServer]


@pytest.fixture
def tls_node(certificate: tuple[Path, Path]) -> TlsNode:
    """A FaultServer speaking TLS with the site's certificate."""
    return functools.partial(FaultServer, tls=certificate)


def node_at(url: str, address: str, **extra: object) -> list[dict[str, object]]:
    return [{"name": "node-1", "url": url.replace("127.0.0.1", address), "tls_verify": False, **extra}]


async def warm_one(
    url: str, address: str, path: str, engine: dict[str, object] | None = None, **node: object
) -> tuple[Task, Item, float]:
    """Warm the site's `path` on the node at `url` (written with `address`); the ended task, its item, and the
    seconds it took."""
    async with engine_rig(node_at(url, address, **node), engine) as rig:
        started = time.monotonic()
        task, items = await rig.wait(await rig.submit([f"https://{SITE}{path}"]), 30.0)
        return task, items[0], time.monotonic() - started


@WAYS
async def test_500_then_200_succeeds_with_the_sites_name_as_sni_and_host(
    tls_node: TlsNode, address: str, path: str
) -> None:
    """500, then 200: succeeded on the second attempt; both requests asked the node for the site (SNI, Host)."""
    with tls_node(sequence(Respond(500), Respond(200, body=BODY))) as node:
        task, item, _ = await warm_one(node.url, address, path)
    assert task.status is TaskStatus.SUCCEEDED and item.state is ItemState.SUCCEEDED
    assert (item.attempts, item.http_status, item.bytes, item.error) == (2, 200, len(BODY), None)
    assert [(r.method, r.sni, r.header("Host")) for r in node.requests] == [("GET", SITE, SITE)] * 2


@WAYS
async def test_a_reset_is_retried_then_succeeds(tls_node: TlsNode, address: str, path: str) -> None:
    """A connection reset instead of the first answer is retried; the item then succeeds."""
    with tls_node(sequence(Reset(), Respond(200, body=BODY))) as node:
        task, item, _ = await warm_one(node.url, address, path)
    assert task.status is TaskStatus.SUCCEEDED
    assert item.state is ItemState.SUCCEEDED and 1 <= item.attempts <= 2


@WAYS
async def test_a_close_without_an_answer_fails_clearly(tls_node: TlsNode, address: str, path: str) -> None:
    """Closed (no TLS close_notify) before any answer, every time: failed after 3 attempts, in the same words
    whichever client sent it."""
    with tls_node(Close()) as node:
        task, item, took = await warm_one(node.url, address, path)
    assert task.status is TaskStatus.FAILED
    assert item.attempts == 3 and item.http_status is None
    assert item.error is not None and item.error.startswith("node-1 disconnected before answering: ")
    assert took < 10


@WAYS
async def test_a_short_body_keeps_the_nodes_status_and_names_the_shortfall(
    tls_node: TlsNode, address: str, path: str
) -> None:
    """Content-Length 1000, 10 bytes, then the connection cut without close_notify: never a success, the
    error says 'short body: 10 of 1000 bytes' and the node's 200 is kept."""
    with tls_node(ShortBody(declared=1000, sent=10)) as node:
        task, item, _ = await warm_one(node.url, address, path)
    assert task.status is TaskStatus.FAILED
    assert (item.state, item.attempts, item.http_status) == (ItemState.FAILED, 3, 200)
    assert item.error is not None and item.error.startswith("short body: 10 of 1000 bytes")


@WAYS
async def test_a_stall_mid_body_times_out_after_read_timeout(tls_node: TlsNode, address: str, path: str) -> None:
    """Head, 1 kB, then 30 s of silence: each attempt times out after read_timeout (0.3 s); failed in time."""
    with tls_node(Stall(declared=100_000, sent=1000, hold=30.0)) as node:
        task, item, took = await warm_one(node.url, address, path, {"read_timeout": 0.3, "max_attempts": 2})
    assert task.status is TaskStatus.FAILED
    assert item.error == "timeout talking to node-1: silent for read_timeout (0.3 s); gave up after 2 attempts"
    assert 0.6 <= took < 5.0
    assert len(node.requests) == 2


@WAYS
async def test_a_handshake_that_never_ends_times_out_at_connect_timeout(address: str, path: str) -> None:
    """A node that takes the TCP connection and never answers the TLS handshake (a listening socket nobody
    accepts on): each attempt ends at connect_timeout (0.5 s), the item fails as a timeout, in bounded time."""
    with socket.socket() as silent:
        silent.bind(("127.0.0.1", 0))
        silent.listen(64)  # the kernel completes the TCP handshake; nothing ever reads the ClientHello
        url = f"https://127.0.0.1:{silent.getsockname()[1]}"
        task, item, took = await warm_one(url, address, path, {"connect_timeout": 0.5, "read_timeout": 5.0})
    assert task.status is TaskStatus.FAILED
    assert item.attempts == 3 and item.http_status is None
    assert (
        item.error
        == "timeout talking to node-1: no connection within connect_timeout (0.5 s); gave up after 3 attempts"
    )
    assert 1.5 <= took < 10


@WAYS
async def test_a_plain_http_port_given_as_https_fails_clearly(tmp_path: Path, address: str, path: str) -> None:
    """A real nginx's plain-HTTP port in an https URL (a misconfigured node): it answers the ClientHello with
    a 400 of its own, which no TLS client reads: 'cannot connect', naming the node, the URL and the TLS
    failure, after 3 attempts."""
    with Lab(tmp_path, edges=0, shield=False) as lab:
        url = lab.origin.url.replace("http://", "https://")
        task, item, took = await warm_one(url, address, path)
    assert task.status is TaskStatus.FAILED
    assert item.attempts == 3 and item.http_status is None
    assert item.error is not None
    assert item.error.startswith(f"cannot connect to node-1 ({url.replace('127.0.0.1', address)}): ")
    assert "wrong version number" in item.error
    assert took < 10


@WAYS
async def test_a_certificate_the_node_cannot_prove_is_refused(tls_node: TlsNode, address: str, path: str) -> None:
    """`tls_verify` on (the default) and a self-signed certificate: the node never gets a request, the error
    says it was the certificate, and the item fails on its first attempt (the next would fail the same way)."""
    with tls_node(Respond(200, body=BODY)) as node:
        task, item, _ = await warm_one(node.url, address, path, tls_verify=True)
    assert task.status is TaskStatus.FAILED
    assert item.http_status is None and item.attempts == 1
    assert item.error is not None and item.error.startswith("cannot connect to node-1")
    assert "certificate verify failed: " in item.error and "self-signed certificate" in item.error
    assert item.error.endswith(" (not retried: it would fail the same way)")
    assert node.requests == []
