"""How `submit` and `refresh` say where a sending stopped, and when a call without an answer may have made a task."""

from __future__ import annotations

import asyncio
import json
import time
from pathlib import Path
from typing import Any

import click
import httpx
import pytest

from edgewarm.cli.entries import ARGUMENT, Entry, FileRefused, checked, read_entries
from edgewarm.cli.failures import list_failures
from edgewarm.cli.tools import Stop, _where, plan_calls, read_credentials
from edgewarm.client import IN_FLIGHT, AsyncClient, Client, ClientError, _jd, _json, _native, _transport_error
from edgewarm.errors import OUTCOME_UNKNOWN_SAID
from edgewarm.testing.faults import FaultServer, Respond, always

# Two arguments, then lines 1, 3 and 4 of urls.txt (line 2 a comment, say).
CALLS = [
    [Entry("a1", ARGUMENT, 1), Entry("a2", ARGUMENT, 2)],
    [Entry("b1", "urls.txt", 1), Entry("b2", "urls.txt", 3)],
    [Entry("c1", "urls.txt", 4)],
]


def test_a_refused_call_made_no_task_and_the_entries_from_it_on_are_named() -> None:
    assert _where(CALLS, 1, Stop.REFUSED) == (
        "1 of 3 calls made tasks (ids above): arguments 1-2; call 2 was refused; no task made: urls.txt lines 1-4, "
        "from b1 on"
    )


def test_a_url_file_that_cannot_be_read_is_a_usage_error(tmp_path: Path) -> None:
    """Exit status 2, as a client config named but missing (before: 1, the status of a task that failed)."""
    for named, why in ((tmp_path / "missing.txt", "No such file or directory"), (tmp_path, "Is a directory")):
        with pytest.raises(FileRefused) as refused:
            read_entries([], str(named))
        assert refused.value.exit_code == 2 and refused.value.message == f"cannot read {named}: {why}"


def test_the_first_entry_not_sent_is_named_shortened() -> None:
    """A URL of 2,000,000 characters refused (413) was quoted whole in the hint: 2 MB of stderr (a tester's)."""
    huge = "http://a.test/" + "x" * 2_000_000
    said = _where([[Entry("http://a.test/1", ARGUMENT, 1)], [Entry(huge, ARGUMENT, 2)]], 1, Stop.REFUSED)
    assert said.endswith(f"no task made: argument 2, from {huge[:200]}… on") and len(said) < 400, said[:300]


def test_a_call_without_an_answer_may_have_made_its_task_and_the_rest_were_not_sent() -> None:
    """Before: "call 2 was refused: the entries from #3 on were not sent", though the server had made its task."""
    assert _where(CALLS, 1, Stop.UNDER_WAY) == (
        "1 of 3 calls made tasks (ids above): arguments 1-2; call 2 (urls.txt lines 1-3) may have made one: "
        "`edgewarm tasks` lists it; not sent: urls.txt line 4, from c1 on"
    )
    assert _where(CALLS, 0, Stop.UNDER_WAY).startswith("no call made a task; call 1 (arguments 1-2) may have made")
    assert _where(CALLS, 2, Stop.UNDER_WAY).endswith(
        "call 3 (urls.txt line 4) may have made one: `edgewarm tasks` lists it"
    )
    assert _where(CALLS, 3, Stop.UNDER_WAY) == "3 of 3 calls made tasks (ids above): argument 1 to urls.txt line 4"


def test_an_interrupt_whose_call_made_its_task_names_the_rest_as_not_sent() -> None:
    """The call cut by Ctrl-C found to have made its task (its id printed): no call "may have made one"."""
    assert _where(CALLS, 2, Stop.CUT) == (
        "2 of 3 calls made tasks (ids above): argument 1 to urls.txt line 3; not sent: urls.txt line 4, from c1 on"
    )


def test_entries_are_named_by_the_line_they_were_given_on(tmp_path: Path) -> None:
    """Before: `#N`, the N-th entry, which is not the file's line N once blank lines and comments are left out
    (a user looking for "#3" in this file found a comment there)."""
    listed = tmp_path / "urls.txt"
    listed.write_text("# release 7\nhttp://a.test/1\n\nhttp://a.test/%zz\nhttp://a.test/3\n")
    entries = read_entries(["http://a.test/0"], str(listed))
    assert [(str(e), e.text) for e in entries] == [
        ("argument 1", "http://a.test/0"),
        (f"{listed} line 2", "http://a.test/1"),
        (f"{listed} line 4", "http://a.test/%zz"),
        (f"{listed} line 5", "http://a.test/3"),
    ]
    with pytest.raises(click.ClickException) as refused:
        checked(entries)
    said = f"1 of the entries cannot be sent, nothing was: {listed} line 4: illegal URL 'http://a.test/%zz'"
    assert refused.value.message.startswith(said), refused.value.message


def test_urls_joined_by_a_comma_on_one_line_are_refused_before_any_call(tmp_path: Path) -> None:
    """The server refuses such an entry, but the CLI's own check let it through: the calls before its line made
    their tasks, charged to the quota, and the rest was not sent (a tester's 250 lines: 200 sent)."""
    listed = tmp_path / "urls.txt"
    listed.write_text("http://a.test/1\nhttp://a.test/x.bin?c=1,http://a.test/y.bin\n")
    with pytest.raises(click.ClickException) as refused:
        checked(read_entries([], str(listed)))
    said = f"1 of the entries cannot be sent, nothing was: {listed} line 2: illegal URL "
    assert refused.value.message.startswith(said), refused.value.message
    assert "several URLs in one entry, joined by commas" in refused.value.message


def test_a_space_or_a_cr_in_a_line_is_told_for_a_line_not_for_an_api_call(tmp_path: Path) -> None:
    """A CLI tester's: a tab in a line, or a file of CR-only line ends, said "separate a list's URLs by ','" (then
    refused as "joined by commas"), a comment after a URL "write '%' as '%25', as curl --data-urlencode does"."""
    listed = tmp_path / "urls.txt"
    listed.write_bytes(
        b"http://a.test/1\thttp://a.test/2\nhttp://a.test/3 # warm it\nhttp://a.test/4\rhttp://a.test/5\n"
    )
    with pytest.raises(click.ClickException) as refused:
        checked(read_entries([], str(listed)))
    spaced = "a space or tab inside it: one URL an entry, a space in a URL written %20 (a comment is a line of its own"
    for line, text, why in (
        (1, "http://a.test/1\thttp://a.test/2", spaced),
        (2, "http://a.test/3 # warm it", spaced),
        (3, "http://a.test/4\rhttp://a.test/5", "a CR inside the line (a file of CR-only line ends"),
    ):
        assert f"{listed} line {line}: illegal URL {text!r}: {why}" in refused.value.message, refused.value.message
    assert "form" not in refused.value.message and "','" not in refused.value.message


@pytest.mark.parametrize(
    ("error", "maybe"),
    [
        (httpx.ConnectError("refused"), False),
        (httpx.ConnectTimeout("no connection"), False),
        (httpx.ReadTimeout("timed out"), True),
        (httpx.RemoteProtocolError("closed without an answer"), True),
        (httpx.ReadError("reset"), True),
    ],
)
def test_a_call_may_have_made_its_task_unless_no_connection_was_made(error: httpx.HTTPError, maybe: bool) -> None:
    assert _transport_error(error, "http://127.0.0.1:1").maybe_done is maybe


class _Silent:
    """A client whose server never answers: each call fails as httpx's read timeout does."""

    def __init__(self) -> None:
        self.calls = 0

    def quota(self) -> dict[str, object]:
        self.calls += 1
        raise _transport_error(httpx.ReadTimeout("timed out"), "http://127.0.0.1:1")


def test_a_server_that_does_not_answer_the_quota_ends_the_sending_before_any_call() -> None:
    """Before: the quota's call waited out the client's timeout (30 s), then the first submission waited as long
    again before saying the server did not answer."""
    silent = _Silent()
    with pytest.raises(click.ClickException) as refused:
        plan_calls(silent, [Entry("http://a.test/1", ARGUMENT, 1)], None)  # type: ignore[arg-type]
    assert silent.calls == 1
    assert refused.value.message.startswith("no answer from http://127.0.0.1:1: ReadTimeout")
    assert refused.value.message.endswith("(nothing was sent)")


@pytest.mark.parametrize(
    ("status", "says", "maybe_done"),
    [
        (502, "a proxy in front got no answer from edgewarm", True),
        (504, "a proxy in front gave up waiting for edgewarm (its timeout, nginx's proxy_read_timeout", True),
        (503, "a proxy in front has no edgewarm to ask", False),
        (413, "the body is larger than a proxy in front takes (nginx's client_max_body_size", False),
        (404, "is the server address edgewarm's own (with the path a proxy in front serves it under", False),
    ],
)
def test_a_proxys_answer_says_what_the_proxy_means(status: int, says: str, maybe_done: bool) -> None:
    """Behind nginx, every answer not edgewarm's said "is the server address the service's own, without a
    path?" (wrong behind a path prefix, and beside the point for a 502 of a restart, a 504 or a 413), and a
    submission answered by a proxy's 504 was told "no task made" though edgewarm had made it (a tester's resend
    made it twice). A 502 or 504 may have been done: the CLI says "may have made one"."""
    request = httpx.Request("POST", "https://proxy.test/cdn/api/prefetch")
    response = httpx.Response(status, html="<html><body>nginx</body></html>", request=request)
    with pytest.raises(ClientError) as refused:
        _json(response)
    assert f"HTTP {status} for /cdn/api/prefetch, not edgewarm's answer: {says}" in refused.value.message
    assert refused.value.maybe_done is maybe_done


@pytest.mark.parametrize(
    ("status", "body", "proxys"),
    [
        (504, {"message": "The upstream server is timing out"}, True),  # a gateway's JSON (a re-tester's)
        (502, {"error": "Bad Gateway"}, True),  # edgewarm never answers 502 or 504
        (503, {"message": "no healthy upstream"}, True),
        (503, {"code": -1, "error": "the store is unavailable"}, False),  # edgewarm's own
        (413, {"message": "Request Entity Too Large"}, True),
        (413, {"error": "request body too large: over [api] max_body_bytes (65536 bytes)"}, False),  # edgewarm's
    ],
)
def test_a_gateways_answer_in_json_is_a_proxys_too(status: int, body: dict[str, object], proxys: bool) -> None:
    """A gateway answering 504 in JSON (`{"message": …}`) was taken for edgewarm's answer: the CLI printed the
    body and "no task made" while the task existed (a re-tester's). Told by what edgewarm itself answers."""
    request = httpx.Request("POST", "https://proxy.test/cdn/api/prefetch")
    response = httpx.Response(status, json=body, request=request)
    if not proxys:
        assert _json(response) == body
        return
    with pytest.raises(ClientError) as refused:
        _json(response)
    assert "not edgewarm's answer:" in refused.value.message and "a proxy in front" in refused.value.message
    assert refused.value.maybe_done is (status in (502, 504))


def test_a_certificate_refused_says_so_and_what_to_do() -> None:
    """A proxy with a self-signed certificate: "no answer from …: ConnectError: [SSL: CERTIFICATE_VERIFY_FAILED]"
    (it answered; its certificate was refused) and nothing said what to do."""
    exc = httpx.ConnectError(
        "[SSL: CERTIFICATE_VERIFY_FAILED] certificate verify failed: self-signed certificate (_ssl.c:1006)"
    )
    refused = _transport_error(exc, "https://proxy.test/cdn")
    assert refused.lasting and refused.http_status is None  # `watch` does not ask again for --patience
    said = refused.message
    assert said == (
        "https://proxy.test/cdn refused: its certificate did not verify (self-signed certificate (_ssl.c:1006)): "
        "signed by a CA of your own? Name its certificate (PEM) in SSL_CERT_FILE"
    ), said
    # A name the certificate lacks: no CA would help (a TLS tester was told of SSL_CERT_FILE).
    mismatch = httpx.ConnectError(
        "[SSL: CERTIFICATE_VERIFY_FAILED] certificate verify failed: Hostname mismatch, certificate is not valid for "
        "'vm'. (_ssl.c:1006)"
    )
    assert _transport_error(mismatch, "https://vm:8443/cdn").message == (
        "https://vm:8443/cdn refused: its certificate did not verify (Hostname mismatch, certificate is not valid for "
        "'vm'. (_ssl.c:1006)): give the server address by a name its certificate has"
    )


@pytest.mark.parametrize(
    ("method", "path", "body", "why"),
    [
        ("POST", "/api/prefetch", {"status": 0, "msg": "ok"}, "it has no taskid (str)"),
        ("POST", "/api/prefetch", {"status": "abc"}, "its status is 'abc', no JD code"),
        ("POST", "/api/prefetchQuery", {"status": 0, "msg": "ok"}, "it has no data (dict)"),
        ("GET", "/v1/tasks/x/wait", {"status": 0, "msg": "ok"}, "it has no taskid, total, counts, nodes, items"),
        ("GET", "/v1/tasks", {"ok": True}, "it has no tasks"),
    ],
)
def test_an_answer_in_json_without_what_edgewarm_answers_is_a_client_error(
    method: str, path: str, body: dict[str, object], why: str
) -> None:
    """A fake's `{"status":0,"msg":"ok"}`: KeyError 'taskid' (a traceback from the CLI, its note of what was
    sent lost), ValueError for a status that is no number, and `wait()` returned it as a task's view (a
    tester's). A ClientError; a submission's "may have been done"."""
    with Client("http://edgewarm.test", "u", "s") as client:
        calls = {
            "/api/prefetch": client._prefetch(["http://a.test/1"], False, None, None),
            "/api/prefetchQuery": client._query("x", False),
            "/v1/tasks/x/wait": client._wait_once("x", 1, 1),
            "/v1/tasks": client._tasks({}),
        }
    response = httpx.Response(200, json=body, request=httpx.Request(method, f"http://edgewarm.test{path}"))
    with pytest.raises(ClientError) as refused:
        calls[path].parse(response)
    assert refused.value.message.startswith(f"HTTP 200 for {path}, not edgewarm's answer: {why} ("), refused.value
    assert refused.value.maybe_done is (method == "POST")


def test_many_entries_that_cannot_be_sent_are_counted_once() -> None:
    """ "250 of the entries cannot be sent (and 247 more)" read as 497 entries (a tester's)."""
    entries = [Entry(f"http://a.test/%zz{n}", "urls.txt", n + 1) for n in range(250)]
    with pytest.raises(click.ClickException) as refused:
        checked(entries)
    assert refused.value.message.startswith(
        "250 of the entries cannot be sent, nothing was, the first 3: urls.txt line 1"
    )
    assert "more" not in refused.value.message


def test_calls_are_split_by_count_and_by_the_body_size_the_server_takes() -> None:
    """Each call within `size` entries and, given, `max_body_bytes` less BODY_ROOM (a quarter of a small limit),
    counting an entry as JSON escapes it to ASCII (a non-ASCII letter as 6 bytes) and its ", "; an entry too long
    for any call refuses the whole list, nothing sent (it went alone, after the calls before it: a re-tester's)."""
    from edgewarm.cli.tools import BODY_ROOM, in_calls

    def entries(*texts: str) -> list[Entry]:
        return [Entry(text, ARGUMENT, n) for n, text in enumerate(texts, 1)]

    def shape(calls: list[list[Entry]]) -> list[int]:
        return [len(call) for call in calls]

    ten = entries(*(f"http://a.test/{n:06}" for n in range(10)))  # 20 characters: 24 bytes, quotes and ", "
    assert shape(in_calls(ten, 4, None)) == [4, 4, 2]
    assert shape(in_calls(ten, 100, 96)) == [3, 3, 3, 1]  # 72 bytes for the list, 24 for the rest
    assert shape(in_calls(ten, 2, 96)) == [2, 2, 2, 2, 2]
    assert shape(in_calls(ten, 100, 8192)) == [10]  # a tester's 8,192: a URL a call, before
    assert shape(in_calls(ten, 100, BODY_ROOM * 4 + 3 * 24)) == [10]
    assert shape(in_calls(ten * 200, 5000, 40_000)) == [(40_000 - BODY_ROOM) // 24, 2000 - (40_000 - BODY_ROOM) // 24]
    escaped = entries(*("http://a.test/ü" for _ in range(3)))  # 15 characters, the ü as \u00fc: 24 bytes
    assert shape(in_calls(escaped, 100, 64)) == [2, 1]
    long = entries("http://a.test/b", "http://a.test/" + "x" * 100)
    with pytest.raises(click.ClickException) as refused:
        in_calls(long, 100, 64)
    assert refused.value.message == (
        "1 of the entries cannot be sent, nothing was: longer than a call may be (the server takes 64 bytes a call, "
        "48 of them for the entries): argument 2: 118 bytes"
    )
    assert in_calls([], 100, 1000) == []


@pytest.mark.parametrize(
    ("address", "said"),
    [
        ("127.0.0.1:8080", "the server address 127.0.0.1:8080 is not an http(s) URL"),
        ("localhost:8080", "the server address localhost:8080 is not an http(s) URL"),
        ("http://u:pw@127.0.0.1:x/", "the server address http://u:***@127.0.0.1:x/ is not a URL"),
        ("http://u:p/w@127.0.0.1:1", "the server address http://u:***@127.0.0.1:1 is not a URL"),
        ("ftp://127.0.0.1/", "the server address ftp://127.0.0.1/ is not an http(s) URL"),
    ],
)
def test_the_client_refuses_a_server_address_that_is_no_http_url_when_made(address: str, said: str) -> None:
    """A newcomer's `Client("127.0.0.1:8080", …)` raised at its first call "no answer from 127.0.0.1:8080:
    UnsupportedProtocol", as if the server were down; now a ValueError at once, saying what to give (the CLI's
    words, from the one check)."""
    from edgewarm.client import AsyncClient

    for kind in (Client, AsyncClient):
        with pytest.raises(ValueError) as refused:
            kind(address, "u", "s")
        assert str(refused.value) == f"{said}: give http(s)://host[:port]"


def test_an_unknown_time_zone_is_refused_when_the_client_is_made() -> None:
    """Every call raised ZoneInfoNotFoundError, a KeyError (a developer's `timezone="Nope/Zone"`)."""
    with pytest.raises(ValueError) as refused:
        Client("http://127.0.0.1:8080", "u", "s", timezone="Nope/Zone")
    assert str(refused.value) == "unknown time zone 'Nope/Zone': give an IANA name, as Asia/Shanghai"


@pytest.mark.parametrize("timeout", [0, -1, float("nan"), float("inf"), "30"])
def test_a_timeout_that_is_no_number_of_seconds_is_refused_when_the_client_is_made(timeout: object) -> None:
    """A CLI tester's `Client(…, timeout=0)`: every call failed as if the server were down ("Operation now in
    progress"); -1 failed at the first call with httpx's ValueError."""
    for make in (Client, AsyncClient):
        with pytest.raises(ValueError, match=r"^timeout: .* is no number of seconds over 0$"):
            make("http://127.0.0.1:8080", "u", "s", timeout=timeout)
    with Client("http://127.0.0.1:8080", "u", "s", timeout=0.5) as client:
        assert client._http.timeout == httpx.Timeout(0.5)


def test_a_space_or_tab_around_the_server_address_is_left_out() -> None:
    """A re-tester's " http://…" passed the check (urlsplit strips it), then every call was "no answer"; a tab
    in EDGEWARM_SERVER was httpx's InvalidURL traceback."""
    with Client(" \thttp://127.0.0.1:8080/ \n", "u", "s") as client:
        assert client.base_url == "http://127.0.0.1:8080"


@pytest.mark.parametrize("method", ["quota", "cancel"])
def test_quota_and_cancel_take_no_json_that_is_not_edgewarms_answer(method: str) -> None:
    """A proxy's `200 {"ok": true}`: quota returned it (KeyError later), `edgewarm cancel` died with a KeyError
    traceback (a developer's); the other calls raised ClientError already."""
    transport = httpx.MockTransport(lambda request: httpx.Response(200, json={"ok": True}))
    with Client("http://127.0.0.1:8080", "u", "s") as client:
        client._http = httpx.Client(base_url=client.base_url, transport=transport)
        with pytest.raises(ClientError) as refused:
            client.quota() if method == "quota" else client.cancel("00000000-0000-4000-8000-000000000000")
    assert "not edgewarm's answer" in refused.value.message, refused.value.message
    assert refused.value.maybe_done is (method == "cancel")


@pytest.mark.parametrize("timeout", [float("nan"), -1.0])
def test_wait_takes_a_number_of_seconds_from_0(timeout: float) -> None:
    """`wait(timeout=nan)` waited for ever (every comparison with NaN is false: a developer's)."""
    with Client("http://127.0.0.1:8080", "u", "s") as client, pytest.raises(ValueError):
        client.wait("00000000-0000-4000-8000-000000000000", timeout=timeout)


def test_an_https_address_of_a_plain_http_server_is_lasting_and_says_so() -> None:
    """`https://` given for a plain HTTP server: -1 with `lasting` false, so a retry loop keyed on it spun for
    ever (a developer's)."""
    import socket
    import threading

    with socket.socket() as listener:
        listener.bind(("127.0.0.1", 0))
        listener.listen(1)
        port = listener.getsockname()[1]

        def answer() -> None:
            conn, _ = listener.accept()
            with conn:
                conn.recv(4096)
                conn.sendall(b"HTTP/1.1 400 Bad Request\r\ncontent-length: 0\r\nconnection: close\r\n\r\n")

        server = threading.Thread(target=answer, daemon=True)
        server.start()
        with Client(f"https://127.0.0.1:{port}", "u", "s", timeout=5) as client, pytest.raises(ClientError) as refused:
            client.quota()
        server.join(5)
    assert refused.value.lasting and not refused.value.maybe_done, refused.value.message
    assert "answered no TLS: it serves plain HTTP? Give http://" in refused.value.message


def test_a_look_for_the_call_cut_waits_its_own_bound_not_the_clients_timeout() -> None:
    """After Ctrl-C, `submit` looked for the task of the call cut "for 5 s", each of its calls waiting the
    client's 30 s on a frozen server: silent for 34 s (a tester's). Within `timeout_of`, a call waits that."""
    import socket

    with socket.socket() as silent:
        silent.bind(("127.0.0.1", 0))
        silent.listen(8)  # connections taken, never answered
        with Client(f"http://127.0.0.1:{silent.getsockname()[1]}", "u", "s", timeout=30) as client:
            began = time.monotonic()
            with client.timeout_of(0.3), pytest.raises(ClientError):
                client.tasks(limit=1)
            assert time.monotonic() - began < 10
            assert client._http.timeout.read == 30  # as it was, after


def test_a_signature_of_another_day_than_the_servers_says_where_the_clients_day_comes_from() -> None:
    """A server in UTC, the CLI on its default day (Asia/Shanghai's): "signature incorrect: … (days in UTC)"
    did not say that the client config's `timezone` is what to set (an operator's)."""
    from edgewarm.cli.tools import fail
    from edgewarm.errors import JdCode

    said = "signature incorrect: it is the signature of 20261202; this server takes those of 20261201 (days in UTC)"
    refused = fail(ClientError(JdCode.SIGNATURE_INCORRECT, said))
    assert refused.message == (
        f'JD code 7: {said} (this client signs the day of its time zone: set timezone = "UTC" in its client config, '
        "or EDGEWARM_TIMEZONE=UTC)"
    )
    assert (
        fail(ClientError(JdCode.SIGNATURE_INCORRECT, "signature incorrect")).message == "JD code 7: signature incorrect"
    )


def test_the_cli_takes_its_signatures_time_zone_from_edgewarm_timezone(
    monkeypatch: pytest.MonkeyPatch, tmp_path: Path
) -> None:
    """The time zone of the day a CLI call signs was the client config's alone: a user of EDGEWARM_USERNAME and
    EDGEWARM_SECRET had to make a file for it (a re-tester's). EDGEWARM_TIMEZONE gives it, before the file's."""
    from edgewarm.cli.tools import read_credentials

    config = tmp_path / "client.toml"
    config.write_text('timezone = "Asia/Tokyo"\n')
    assert read_credentials(None, "u", "s", str(config)).timezone == "Asia/Tokyo"
    monkeypatch.setenv("EDGEWARM_TIMEZONE", "UTC")
    assert read_credentials(None, "u", "s", str(config)).timezone == "UTC"
    monkeypatch.setenv("EDGEWARM_TIMEZONE", "Mars/Olympus")
    with pytest.raises(FileRefused, match="EDGEWARM_TIMEZONE: unknown time zone 'Mars/Olympus'"):
        read_credentials(None, "u", "s", str(config))


def test_missing_credentials_name_the_client_config_read(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """A CLI tester's `quota --client-config empty.toml`: "give --username and --secret (…, or a client config)",
    though one was named and read."""
    monkeypatch.delenv("EDGEWARM_TIMEZONE", raising=False)
    empty = tmp_path / "empty.toml"
    empty.write_text("")
    with pytest.raises(click.UsageError) as refused:
        read_credentials(None, None, None, str(empty))
    assert refused.value.message == (
        f"give --username and --secret (or EDGEWARM_USERNAME/EDGEWARM_SECRET; client config {empty} has no username "
        "and secret)"
    )
    with pytest.raises(click.UsageError, match=f"client config {empty} has no secret\\)$"):
        read_credentials(None, "u", None, str(empty))


class _Tasks:
    """A client's task views, as the server answers them (`failed` reads nothing else)."""

    def __init__(self, failed: dict[str, list[tuple[str, str]]]) -> None:
        self.failed = failed

    def task(self, taskid: str, *, offset: int = 0, limit: int = 1000, state: str | None = None) -> dict[str, Any]:
        items = [{"url": url, "node": "edge-1", "action": action} for url, action in self.failed[taskid]]
        view = {"taskid": taskid, "status": 2, "total": len(items)}
        return {**view, "items": items[offset : offset + limit] if state == "failed" else []}


def test_failed_says_which_urls_are_directories_when_both_are_listed(capsys: pytest.CaptureFixture[str]) -> None:
    """A CLI tester's: a directory refresh's task beside a prefetch's put the directory among the URLs, and
    `| edgewarm submit -f -` warmed its index page. Said on stderr when both kinds are listed."""
    a, b = "00000000-0000-4000-8000-00000000000a", "00000000-0000-4000-8000-00000000000b"
    client = _Tasks({a: [("http://a.test/x.js", "warm")], b: [("http://a.test/img/", "purge_dir")]})
    assert list_failures(client, [a, b], why=False) == 0  # type: ignore[arg-type]
    out, err = capsys.readouterr()
    assert out.splitlines() == ["http://a.test/x.js", "http://a.test/img/"]
    assert err.splitlines() == [
        "2 failed URLs in 2 tasks",
        "1 of them is a directory, of directory refreshes (http://a.test/img/): `edgewarm refresh --dir -f -` sends "
        "those (list those tasks apart)",
    ]
    assert list_failures(client, [b], why=False) == 0  # type: ignore[arg-type]
    assert capsys.readouterr().err == "1 failed URL in 1 task\n"  # directories alone: what refresh --dir takes


@pytest.mark.anyio
async def test_an_async_clients_calls_past_its_room_wait_their_turn_and_do_not_fail() -> None:
    """A tester's 3,000 calls of one AsyncClient at once: most failed "PoolTimeout: no connection free within
    the call's timeout" while the server idled (httpx's pool made each waiting call's turn dearer, the client at
    98 % CPU). They wait outside it now, at most IN_FLIGHT sent at once, each call timed from its sending."""
    quota = {
        "day": "20260101",
        "timezone": "Asia/Shanghai",
        "urls": {},
        "dirs": {},
        "urls_per_call": 1,
        "dirs_per_call": 1,
    }
    answer = Respond(200, body=json.dumps(quota).encode(), headers=(("Content-Type", "application/json"),), delay=0.3)
    with FaultServer(always(answer)) as server:
        async with AsyncClient(server.url, "u", "s", timeout=1.0) as client:  # 4 turns of 0.3 s: past 1 s
            answers = await asyncio.gather(*(client.quota() for _ in range(4 * IN_FLIGHT)))
    assert answers == [quota] * (4 * IN_FLIGHT)


def test_the_servers_answer_that_a_task_may_have_been_made_is_maybe_done() -> None:
    """An integrator's PostgreSQL stopped under a submission: the server answered "the store did not confirm the
    task, which may have been made" (JD: HTTP 200, status -1; native: 503, code -1), the client said maybe_done
    False, and the task existed: a retry with a new key (as README says for False) makes a second one."""
    said = f"internal error: {OUTCOME_UNKNOWN_SAID}: send the call again with the same idempotency key"
    for path, status, body in (
        ("/api/prefetch", 200, {"status": -1, "msg": said}),
        ("/v1/tasks/x/cancel", 503, {"code": -1, "error": said}),
    ):
        response = httpx.Response(status, json=body, request=httpx.Request("POST", f"http://e.test{path}"))
        with pytest.raises(ClientError) as refused:
            (_jd if path.startswith("/api") else _native)(response)
        assert (refused.value.code, refused.value.maybe_done) == (-1, True), path
    unavailable = httpx.Response(
        200,
        json={"status": -1, "msg": "internal error: the store is unavailable"},
        request=httpx.Request("POST", "http://e.test/api/prefetch"),
    )
    with pytest.raises(ClientError) as refused:
        _jd(unavailable)
    assert refused.value.maybe_done is False  # nothing was done


def test_an_answer_nested_beyond_the_parsers_depth_is_no_edgewarm_answer() -> None:
    """An integrator's fake proxy: 100,000 `[` then 100,000 `]` raised a bare RecursionError."""
    nested = b"[" * 100_000 + b"]" * 100_000
    response = httpx.Response(200, content=nested, request=httpx.Request("POST", "http://e.test/api/prefetch"))
    with pytest.raises(ClientError, match="not edgewarm's answer") as refused:
        _json(response)
    assert refused.value.maybe_done is False  # HTTP 200: not one of the statuses a proxy answers for a call done
