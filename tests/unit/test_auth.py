"""The JD daily signature: md5(yyyymmdd + username + secret), checked over a day window."""

from __future__ import annotations

import hashlib
from datetime import UTC, date, datetime, timedelta

import pytest

from edgewarm.auth import accepted_days, sign, signed_day, today, verify

USER = "jcloud_00"
SECRET = "e7a31b1c5ea0efa9aa2f29c6559f7d61"
# 17:30 UTC on the 22nd is already 01:30 on the 23rd in Shanghai (UTC+8).
NEAR_MIDNIGHT = datetime(2016, 10, 22, 17, 30, tzinfo=UTC)


def test_sign_matches_product_example() -> None:
    """sign() gives PRODUCT.md's MD5 for jcloud_00 on 2016-10-23."""
    assert sign(USER, SECRET, date(2016, 10, 23)) == "a35685491fd80a80b40a718c3a5c5c56"


def test_seed_sample_signature_is_not_accepted() -> None:
    """The seed's printed sample (d847267f…) is not the signature of its own example day."""
    now = datetime(2016, 10, 23, 4, 0, tzinfo=UTC)
    assert not verify(USER, SECRET, "d847267f", now)
    assert not verify(USER, SECRET, "d847267f" + "0" * 24, now)
    assert verify(USER, SECRET, "a35685491fd80a80b40a718c3a5c5c56", now)


def test_today_uses_shanghai_by_default() -> None:
    """At 17:30 UTC on the 22nd the Shanghai date is already the 23rd."""
    assert today(NEAR_MIDNIGHT) == date(2016, 10, 23)
    assert today(NEAR_MIDNIGHT, "UTC") == date(2016, 10, 22)


@pytest.mark.parametrize(
    ("day", "accepted"),
    [
        (date(2016, 10, 21), False),
        (date(2016, 10, 22), True),
        (date(2016, 10, 23), True),
        (date(2016, 10, 24), True),
        (date(2016, 10, 25), False),
    ],
)
def test_window_is_yesterday_today_tomorrow_in_shanghai(day: date, accepted: bool) -> None:
    """Signatures for the Shanghai yesterday, today and tomorrow pass; two days off are refused."""
    assert verify(USER, SECRET, sign(USER, SECRET, day), NEAR_MIDNIGHT) is accepted


def test_window_follows_the_configured_timezone() -> None:
    """In UTC the same instant is the 22nd, so the 24th is two days off and refused."""
    assert verify(USER, SECRET, sign(USER, SECRET, date(2016, 10, 21)), NEAR_MIDNIGHT, "UTC")
    assert not verify(USER, SECRET, sign(USER, SECRET, date(2016, 10, 24)), NEAR_MIDNIGHT, "UTC")


def test_accepted_days_lists_the_window() -> None:
    """accepted_days gives the days around the local date, in order."""
    center = date(2016, 10, 23)
    assert accepted_days(NEAR_MIDNIGHT) == [center - timedelta(days=1), center, center + timedelta(days=1)]
    assert accepted_days(NEAR_MIDNIGHT, window_days=2)[0] == date(2016, 10, 21)


def test_upper_case_hex_is_accepted() -> None:
    """The hex digest is compared case-insensitively (and surrounding blanks ignored)."""
    signature = sign(USER, SECRET, date(2016, 10, 23)).upper()
    assert verify(USER, SECRET, signature, NEAR_MIDNIGHT)
    assert verify(USER, SECRET, f" {signature} ", NEAR_MIDNIGHT)


def test_wrong_secret_is_refused() -> None:
    """A signature made with another secret does not verify."""
    signature = sign(USER, "not-the-secret", date(2016, 10, 23))
    assert not verify(USER, SECRET, signature, NEAR_MIDNIGHT)


def test_wrong_username_is_refused() -> None:
    """A signature is bound to its username."""
    signature = sign("jcloud_01", SECRET, date(2016, 10, 23))
    assert not verify(USER, SECRET, signature, NEAR_MIDNIGHT)


def test_a_name_of_non_ascii_letters_may_be_signed_over_its_utf8_or_its_gbk_bytes() -> None:
    """A Java or .NET client on a Chinese system (and a GBK form's sender) hashes the text in GBK: accepted as
    UTF-8's is, on the accepted days only; an ASCII name has one signature a day."""
    name = "京东用户"
    gbk = hashlib.md5(f"20161023{name}{SECRET}".encode("gbk")).hexdigest()
    utf8 = hashlib.md5(f"20161023{name}{SECRET}".encode()).hexdigest()
    assert gbk != utf8 and gbk == sign(name, SECRET, date(2016, 10, 23), "gb18030")
    assert verify(name, SECRET, gbk, NEAR_MIDNIGHT) and verify(name, SECRET, utf8, NEAR_MIDNIGHT)
    assert not verify(name, "other", gbk, NEAR_MIDNIGHT)
    late = hashlib.md5(f"20161015{name}{SECRET}".encode("gbk")).hexdigest()
    assert not verify(name, SECRET, late, NEAR_MIDNIGHT)
    assert signed_day(name, SECRET, late, NEAR_MIDNIGHT) == date(2016, 10, 15)


def test_empty_and_garbage_signatures_are_refused() -> None:
    """An empty or non-hex signature never verifies."""
    assert not verify(USER, SECRET, "", NEAR_MIDNIGHT)
    assert not verify(USER, SECRET, "zz" * 16, NEAR_MIDNIGHT)


def test_window_days_zero_accepts_only_today() -> None:
    """With window_days=0 only the local date's signature passes."""
    assert accepted_days(NEAR_MIDNIGHT, window_days=0) == [date(2016, 10, 23)]
    assert verify(USER, SECRET, sign(USER, SECRET, date(2016, 10, 23)), NEAR_MIDNIGHT, window_days=0)
    assert not verify(USER, SECRET, sign(USER, SECRET, date(2016, 10, 22)), NEAR_MIDNIGHT, window_days=0)
    assert not verify(USER, SECRET, sign(USER, SECRET, date(2016, 10, 24)), NEAR_MIDNIGHT, window_days=0)
