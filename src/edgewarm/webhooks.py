"""Webhooks: when a task that carries a callback URL ends, POST its summary there, signed.

The signature is `X-Edgewarm-Signature: sha256=<hex HMAC-SHA256 of the exact body, keyed with the user's
secret>`; receivers check it with `verify_webhook`. Only hosts listed in `[webhooks] allowed_hosts` may be
called back, checked when the task is submitted.
"""

from __future__ import annotations

import hashlib
import hmac
from urllib.parse import urlsplit

from .errors import JdCode, RequestRefused

SIGNATURE_HEADER = "X-Edgewarm-Signature"


def sign_webhook(body: bytes, secret: str) -> str:
    return "sha256=" + hmac.new(secret.encode(), body, hashlib.sha256).hexdigest()


def verify_webhook(body: bytes, secret: str, header: str) -> bool:
    """For receivers: True when `header` is the signature of `body` with `secret`."""
    return hmac.compare_digest(sign_webhook(body, secret), header.strip())


def check_callback_url(url: str, allowed_hosts: tuple[str, ...]) -> str:
    """The callback URL if its host is allowed, else a refusal (JD code 17, an illegal URL)."""
    try:
        parts = urlsplit(url)
        host = (parts.hostname or "").lower()
        _ = parts.port
    except ValueError:
        raise RequestRefused(JdCode.ILLEGAL_URL, f"callback_url {url!r} is not a URL") from None
    if parts.scheme not in ("http", "https") or not host or parts.username or any(c in url for c in "\r\n \t"):
        raise RequestRefused(JdCode.ILLEGAL_URL, f"callback_url {url!r} must be a plain http(s) URL")
    if host not in allowed_hosts:
        raise RequestRefused(
            JdCode.ILLEGAL_URL, f"callback_url host {host!r} is not allowed ([webhooks] allowed_hosts in the config)"
        )
    return url
