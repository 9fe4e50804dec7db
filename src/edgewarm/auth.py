"""JD's daily signature: md5(yyyymmdd + username + secret), lower-case hex. Pure functions, no I/O.

Written once; the server verifies with it and the client signs with it.
"""

from __future__ import annotations

import functools
import hashlib
import hmac
from datetime import date, datetime, timedelta
from zoneinfo import ZoneInfo, ZoneInfoNotFoundError

DEFAULT_TIMEZONE = "Asia/Shanghai"


def known_timezone(name: str) -> bool:
    """Whether `name` is an IANA time zone this machine knows."""
    try:
        ZoneInfo(name)
    except (ZoneInfoNotFoundError, ValueError, OSError):  # OSError: a folder of zones, such as "America"
        return False
    return True


@functools.lru_cache(maxsize=4096)  # three days per user verify every call: the same few values all day
def sign(username: str, secret: str, day: date, encoding: str = "utf-8") -> str:
    """The signature a caller sends on `day` (the caller's local date), hashing the text in `encoding`."""
    material = f"{day:%Y%m%d}{username}{secret}".encode(encoding)
    return hashlib.md5(material, usedforsecurity=False).hexdigest()


def _signatures(username: str, secret: str, day: date) -> list[bytes]:
    """The signatures a caller may send on `day`: the text hashed in UTF-8, or for a name or secret of non-ASCII
    letters in GBK too (GB18030, which it is part of), the default of a Java or .NET client on a Chinese system
    and of GBK forms. The same bytes either way when both are ASCII."""
    encodings = ("utf-8",) if username.isascii() and secret.isascii() else ("utf-8", "gb18030")
    return [sign(username, secret, day, encoding).encode() for encoding in encodings]


def today(now: datetime, timezone: str = DEFAULT_TIMEZONE) -> date:
    """The calendar date at `now` (an aware datetime) in `timezone`."""
    return now.astimezone(ZoneInfo(timezone)).date()


def accepted_days(now: datetime, timezone: str = DEFAULT_TIMEZONE, window_days: int = 1) -> list[date]:
    """Yesterday, today and tomorrow (for window_days=1): JD names no time zone, so callers drift."""
    center = today(now, timezone)
    return [center + timedelta(days=offset) for offset in range(-window_days, window_days + 1)]


def verify(
    username: str,
    secret: str,
    signature: str,
    now: datetime,
    timezone: str = DEFAULT_TIMEZONE,
    window_days: int = 1,
) -> bool:
    """True when `signature` is valid for a day in the window. Every candidate is compared in constant time."""
    given = signature.strip().lower().encode()
    matched = False
    for day in accepted_days(now, timezone, window_days):
        for candidate in _signatures(username, secret, day):
            # No short-circuit: the time taken does not tell which day (if any) matched.
            matched |= hmac.compare_digest(given, candidate)
    return matched


SIGNED_DAY_SEARCH = 7  # days beyond the accepted ones a refused signature is looked up in (signed_day)


def signed_day(
    username: str, secret: str, signature: str, now: datetime, timezone: str = DEFAULT_TIMEZONE, window_days: int = 1
) -> date | None:
    """The day, outside the accepted ones but within SIGNED_DAY_SEARCH of them, whose signature `signature` is
    (a caller whose clock or time zone is off by days), or None: the refusal can then say which day it was."""
    given = signature.strip().lower().encode()
    for day in accepted_days(now, timezone, window_days + SIGNED_DAY_SEARCH):
        if any(hmac.compare_digest(given, candidate) for candidate in _signatures(username, secret, day)):
            return day
    return None
