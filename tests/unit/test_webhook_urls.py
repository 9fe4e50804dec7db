"""Callback URLs a submission may give: plain http(s) to an allowed host, nothing that carries credentials."""

from __future__ import annotations

import pytest

from edgewarm.errors import JdCode, RequestRefused
from edgewarm.webhooks import check_callback_url

ALLOWED = ("hooks.example.test",)


@pytest.mark.parametrize(
    "url",
    [
        "http://user:pw@hooks.example.test/done",
        "http://:pw@hooks.example.test/done",  # an empty user name with a password got through
        "http://@hooks.example.test/done",
        "ftp://hooks.example.test/done",
        "http://hooks.example.test:0/done",
    ],
)
def test_a_callback_url_with_user_information_or_not_plain_http_is_refused(url: str) -> None:
    with pytest.raises(RequestRefused) as refused:
        check_callback_url(url, ALLOWED)
    assert refused.value.code is JdCode.ILLEGAL_URL and "plain http(s) URL" in refused.value.message


@pytest.mark.parametrize(
    "url", ["http://hooks.example.test/a b", "http://hooks.example.test/\x00", "http://hooks.example.test/é"]
)
def test_a_callback_url_with_spaces_controls_or_non_ascii_is_refused(url: str) -> None:
    with pytest.raises(RequestRefused) as refused:
        check_callback_url(url, ALLOWED)
    assert refused.value.code is JdCode.ILLEGAL_URL and "must be percent-encoded" in refused.value.message


def test_a_plain_callback_url_to_an_allowed_host_is_kept_as_given() -> None:
    url = "https://hooks.example.test:8443/done?token=abc"
    assert check_callback_url(url, ALLOWED) == url
    with pytest.raises(RequestRefused, match="is not allowed"):
        check_callback_url("http://evil.test/done", ALLOWED)
