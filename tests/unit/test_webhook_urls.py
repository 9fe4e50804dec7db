"""Callback URLs a submission may give: plain http(s) to an allowed host, nothing that carries credentials."""

from __future__ import annotations

import pytest

from edgewarm.config import Webhooks as WebhookSettings
from edgewarm.errors import JdCode, RequestRefused
from edgewarm.webhooks import (
    RETRY_DELAY_MAX,
    _retry_delay,
    _without_the_url,
    check_callback_url,
    shown_callback_url,
    verify_webhook,
)

ALLOWED = ("hooks.example.test",)


CREDENTIALS = "must not carry a user name or password (give the receiver a token in the query instead"


@pytest.mark.parametrize(
    ("url", "said"),
    [
        (
            "http://user:pw@hooks.example.test/done?token=t",
            f"'http://user:***@hooks.example.test/done?token=***' {CREDENTIALS}",
        ),
        (
            "http://:pw@hooks.example.test/done",
            f"'http://:***@hooks.example.test/done' {CREDENTIALS}",
        ),  # an empty user name
        ("http://@hooks.example.test/done", f"'http://@hooks.example.test/done' {CREDENTIALS}"),
        ("ftp://hooks.example.test/done", "'ftp://hooks.example.test/done' must be an http or https URL"),
        ("http://hooks.example.test:0/done", "'http://hooks.example.test:0/done' has no host or port to call"),
    ],
)
def test_a_callback_url_with_user_information_or_not_plain_http_is_refused(url: str, said: str) -> None:
    """Each refusal says why (before: "must be a plain http(s) URL" for all, the password said back in it)."""
    with pytest.raises(RequestRefused) as refused:
        check_callback_url(url, ALLOWED)
    assert refused.value.code is JdCode.ILLEGAL_URL and refused.value.message.startswith(f"callback_url {said}")
    assert "pw" not in refused.value.message


@pytest.mark.parametrize(
    "url",
    [
        "http://hooks.example.test/a b",
        "http://hooks.example.test/\x00",
        "http://hooks.example.test/é",
        "http://bob:Hunter2 pw@hooks.example.test/x",  # the password was said back in the refusal
        "http://hooks.example.test/x?token=Hunter2 pw",
    ],
)
def test_a_callback_url_with_spaces_controls_or_non_ascii_is_refused(url: str) -> None:
    with pytest.raises(RequestRefused) as refused:
        check_callback_url(url, ALLOWED)
    assert refused.value.code is JdCode.ILLEGAL_URL and "must be percent-encoded" in refused.value.message
    assert "Hunter2" not in refused.value.message, refused.value.message


@pytest.mark.parametrize(
    "url",
    [
        "http://bob:Hunter2pw@hooks.example.test:99999/x",
        "http://[bob:Hunter2pw@x/",
        "http://h.test:abc/x?token=Hunter2",
    ],
)
def test_a_callback_url_that_does_not_parse_is_refused_without_its_secrets(url: str) -> None:
    with pytest.raises(RequestRefused) as refused:
        check_callback_url(url, ALLOWED)
    assert refused.value.message.endswith(" is not a URL") and "Hunter2" not in refused.value.message


def test_a_plain_callback_url_to_an_allowed_host_is_kept_as_given() -> None:
    url = "https://hooks.example.test:8443/done?token=abc"
    assert check_callback_url(url, ALLOWED) == url
    with pytest.raises(RequestRefused, match="is not allowed"):
        check_callback_url("http://evil.test/done", ALLOWED)


@pytest.mark.parametrize("url", ["http://[::1]./x?token=U1", "http://\\[::1]/x?token=U1", "http://[::1]%2e/x?token=U1"])
def test_a_callback_url_the_webhook_client_cannot_parse_is_refused(url: str) -> None:
    """Tester's finding: accepted at submit (urlsplit read the host `::1`), but yarl, which the delivery uses,
    cannot parse it: the webhook stayed pending for ever. Refused now, its token not said back."""
    with pytest.raises(RequestRefused) as refused:
        check_callback_url(url, ("::1",))
    assert refused.value.code is JdCode.ILLEGAL_URL
    assert "webhook client" in refused.value.message and "U1" not in refused.value.message, refused.value.message


@pytest.mark.parametrize("header", ["sha256=é", "sha256=\u00ff" + "0" * 63, "sha256=\udc80"])
def test_a_signature_header_with_non_ascii_characters_is_refused_not_an_error(header: str) -> None:
    """Tester's finding: verify_webhook raised TypeError (hmac.compare_digest on such a str): a receiver
    answered a forgery 500. It is False."""
    assert verify_webhook(b'{"taskid": "x"}', "secret", header) is False


@pytest.mark.parametrize(
    ("url", "allowed"),
    [
        ("http://[0:0:0:0:0:0:0:1]:8080/hook", ("::1",)),
        ("http://[::1]/hook", ("0:0:0:0:0:0:0:1",)),
        ("http://hooks.example.test/hook", ("hooks.example.test.",)),
        ("http://HOOKS.example.test./hook", ("hooks.example.test",)),
    ],
)
def test_allowed_hosts_match_an_address_in_any_spelling_and_a_name_with_or_without_its_dot(
    url: str, allowed: tuple[str, ...]
) -> None:
    """Tester's finding: allowed_hosts matched by spelling: `[0:0:0:0:0:0:0:1]` was refused with `::1` listed,
    a listed `hooks.example.test.` matched only callbacks spelled with the dot."""
    assert check_callback_url(url, allowed) == url


def test_a_deliverys_wait_before_it_is_tried_again_is_a_day_at_most() -> None:
    """It doubled without end: with 20 attempts of the default base the last waited 6 days (a tester's), the
    task kept by retention all the while."""
    settings = WebhookSettings(max_attempts=20, backoff_base=2.0)
    assert [_retry_delay(settings, n) for n in (1, 2, 3)] == [2.0, 4.0, 8.0]
    assert _retry_delay(settings, 16) == 65_536.0
    assert _retry_delay(settings, 17) == _retry_delay(settings, 19) == RETRY_DELAY_MAX == 86_400.0


@pytest.mark.parametrize("url", ["http://127.0.0.1./hook", "http://127.0.0.1../hook", "http://localhost../hook"])
def test_a_host_with_a_dot_the_webhook_client_cannot_call_is_refused(url: str) -> None:
    """A re-tester's: stripping every final dot made `127.0.0.1.` (which the client refuses: not a canonical
    address) and `localhost..` match allowed hosts; accepted, they failed at every delivery."""
    with pytest.raises(RequestRefused) as refused:
        check_callback_url(url, ("127.0.0.1", "localhost"))
    assert refused.value.code == JdCode.ILLEGAL_URL


def test_a_missing_signature_header_is_false_not_an_error() -> None:
    """A receiver's `headers.get("X-Edgewarm-Signature")` of a POST without one is None: verify_webhook raised
    AttributeError (a 500), a re-tester's."""
    assert verify_webhook(b'{"taskid": "x"}', "secret", None) is False


@pytest.mark.parametrize(
    ("written", "echoed"),
    [
        ("token=SeCrEt%c3%a9xy", "token=SeCrEt%C3%A9xy"),  # the client writes escapes in upper case
        ("token=SeCrEt%e9", "token=SeCrEt%E9"),
        ("token=SeCrEt%ZZ", "token=SeCrEt%25ZZ"),  # and escapes a % that starts none
        ("tok%65n=SeCrEt", "token=SeCrEt"),
    ],
)
def test_a_query_the_receiver_echoes_in_another_spelling_is_masked(written: str, echoed: str) -> None:
    """A re-tester's: values were masked only as written or decoded; a receiver echoing the request line as the
    client sent it put the token into the error and the log."""
    url = f"http://127.0.0.1:9/echo?{written}"
    told = _without_the_url(f"Invalid header token: b'POST /echo?{echoed} HTTP/1.1'", url)
    assert "SeCrEt" not in told and told.startswith("Invalid header token: b'POST /echo?"), told


def test_an_accepted_callback_url_is_shown_with_the_host_it_is_posted_to() -> None:
    """A security tester's: `http://127.0.0.1:8080#@evil.test/` is accepted and posted to 127.0.0.1:8080, and
    the log said "delivered (… to http://127.0.0.1:***@evil.test/)", naming a host never called (the password
    mask read up to the last '@'). A task's URL is shown as the client reads it; a refused one keeps the mask."""
    allowed = ("127.0.0.1",)
    for url, shown in (
        ("http://127.0.0.1:8080#@evil.test/", "http://127.0.0.1:8080#***"),
        ("http://127.0.0.1:8080?@evil.test/", "http://127.0.0.1:8080?***"),
        ("http://127.0.0.1:8080/h?token=t1&n=2", "http://127.0.0.1:8080/h?token=***&n=***"),
    ):
        assert check_callback_url(url, allowed) == url
        assert shown_callback_url(url) == shown
    assert shown_callback_url("http://u:pw@r.test/x") == "http://u:***@r.test/x"  # a stored one of before
    # Refused (its host not allowed): a password typed with an unencoded '/' is hidden whole, as before.
    with pytest.raises(RequestRefused) as refused:
        check_callback_url("ftp://bob:12/pw@127.0.0.1/", allowed)
    assert refused.value.message == "callback_url 'ftp://bob:***@127.0.0.1/' must be an http or https URL"
