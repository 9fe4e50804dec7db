"""Load the TOML config contract (PRODUCT.md) into frozen, validated models.

Nothing here reads the environment at import time; `config_path_from(environ)` takes it as an argument.
"""

from __future__ import annotations

import enum
import ipaddress
import json
import os
import re
import ssl
import tomllib
from collections.abc import Iterable, Mapping
from datetime import date, time
from pathlib import Path
from typing import Annotated, Any, Literal
from urllib.parse import parse_qs, urlsplit, urlunsplit

from pydantic import BaseModel, ConfigDict, Field, ValidationError, ValidationInfo, field_validator, model_validator

from . import __version__
from .auth import DEFAULT_TIMEZONE, known_timezone
from .errors import ConfigError, StoreError
from .models import Tier
from .store import STORE_URL_FORMS, pool_size_of, redacted, sqlite_path
from .urls import ascii_digits, has_user_info, idna_form, password_masked, reads_as_ip

_DOMAIN_LABEL = re.compile(r"^(?!-)[a-z0-9-]{1,63}(?<!-)$")
PositiveInt = Annotated[int, Field(gt=0)]
WEEK = 7 * 86_400.0
# Durations in seconds: finite and at most a week (a larger one overflowed the timers that take it).
Seconds = Annotated[float, Field(gt=0, le=WEEK, allow_inf_nan=False)]
SecondsOrOff = Annotated[float, Field(ge=0, le=WEEK, allow_inf_nan=False)]
# Widths: beyond this, a node's lane would start that many workers.
Width = Annotated[int, Field(gt=0, le=65_536)]


class _Model(BaseModel):
    model_config = ConfigDict(extra="forbid", frozen=True, strict=True)


class Limits(_Model):
    """JD's limits; each may be overridden per user."""

    urls_per_call: PositiveInt = 100
    dirs_per_call: PositiveInt = 5
    urls_per_day: PositiveInt = 2000
    dirs_per_day: PositiveInt = 50


def _ascii_form(pattern: str) -> str:
    """For a name of non-ASCII letters, where to write its ASCII form (IDNA), as URLs give it; else ''."""
    if pattern.isascii():
        return ""
    return f": write a name of non-ASCII letters in its ASCII form {idna_form(pattern)}"


def _check_domain(pattern: str) -> str:
    pattern = pattern.strip().lower().rstrip(".")
    bare = pattern[2:] if pattern.startswith("*.") else pattern
    labels = bare.split(".")
    if "*" in bare or len(labels) < 1 or not all(_DOMAIN_LABEL.match(label) for label in labels):
        raise ValueError(f"{pattern!r} is not a domain name or a '*.domain' wildcard{_ascii_form(pattern)}")
    if reads_as_ip(bare):
        raise ValueError(f"{pattern!r} is an IP address: URLs must name a domain (the API refuses IP hosts)")
    return pattern


class User(_Model):
    name: Annotated[str, Field(min_length=1, max_length=128)]
    secret: Annotated[str, Field(min_length=1, repr=False)]
    # The key of the user's webhooks' signatures; unset, the API secret (which a receiver could call the API with).
    webhook_secret: Annotated[str | None, Field(min_length=1, repr=False)] = None
    domains: tuple[str, ...] = ()
    urls_per_call: PositiveInt | None = None
    dirs_per_call: PositiveInt | None = None
    urls_per_day: PositiveInt | None = None
    dirs_per_day: PositiveInt | None = None

    @field_validator("name")
    @classmethod
    def _name(cls, value: str) -> str:
        # The API strips the name it is sent, and control characters cannot be stored on PostgreSQL (NUL) or
        # sent in a form or header as written: such a user could never call.
        if value != value.strip():
            raise ValueError(f"{value!r} begins or ends with a space: callers' names are read without them")
        if not value.isprintable():
            raise ValueError(f"{value!r} holds a control character (or a space other than ' ')")
        return value

    @field_validator("domains", mode="before")
    @classmethod
    def _domains(cls, value: Any) -> Any:
        if isinstance(value, list):
            return tuple(_check_domain(v) if isinstance(v, str) else v for v in value)
        return value

    def webhook_key(self) -> str:
        """What the user's webhooks are signed with: `webhook_secret`, else the API secret."""
        return self.webhook_secret or self.secret

    def limits(self, defaults: Limits) -> Limits:
        """The defaults with this user's own overrides applied."""
        own = {
            key: getattr(self, key)
            for key in ("urls_per_call", "dirs_per_call", "urls_per_day", "dirs_per_day")
            if getattr(self, key) is not None
        }
        return defaults.model_copy(update=own)

    def owns(self, host: str) -> bool:
        """True when `host` (lower-case, no port) is one of the user's domains or under a `*.` wildcard."""
        return domain_owned(host, self.domains)


def domain_owned(host: str, domains: Iterable[str]) -> bool:
    """True when `host` (lower-case, no port) is one of `domains` or under one's `*.` wildcard (the API's check,
    and `submit`'s before its first call, with the domains /v1/quota states)."""
    for pattern in domains:
        if pattern.startswith("*."):
            if host.endswith(pattern[1:]) and len(host) > len(pattern) - 1:
                return True
        elif host == pattern:
            return True
    return False


class NodeKind(enum.StrEnum):
    NGINX = "nginx"
    VARNISH = "varnish"
    ATS = "ats"
    SQUID = "squid"
    GENERIC = "generic"


class Node(_Model):
    name: Annotated[str, Field(min_length=1, max_length=64, pattern=r"^[A-Za-z0-9_.:-]+$")]
    url: str
    tier: Tier = Tier.EDGE
    kind: NodeKind = NodeKind.NGINX
    concurrency: Width | None = None  # per-node cap; [engine].per_node_concurrency when unset
    tls_verify: bool = True  # https nodes: check the certificate against the URL's host (sent as SNI)
    # Refresh. `purge_method = ""` declares that the node cannot purge. nginx needs the cache-purge module for
    # PURGE, or `purge_method = "GET"` with a bypass header its config honours (`proxy_cache_bypass`).
    purge_method: Annotated[str, Field(pattern=r"^[A-Z]*$")] = "PURGE"
    purge_headers: dict[str, str] = {}
    # A directory: "ban" sends `BAN /` with `ban_header: <path prefix>` (Varnish); "urls" purges each URL
    # under the prefix that edgewarm has warmed or refreshed; "none" refuses. Default: by kind.
    dir_purge: Literal["ban", "urls", "none"] | None = None
    ban_header: str = "X-Ban-Prefix"
    # Back after a hold (it could not be reached: a restart?), the node's warms of the tasks still running that
    # ended before are done again: its cache may have restarted empty. Default: by kind (`rewarms_after_down`).
    rewarm_after_down: bool | None = None

    @property
    def dir_purge_mode(self) -> str:
        if self.dir_purge is not None:
            return self.dir_purge
        return "ban" if self.kind is NodeKind.VARNISH else "urls"

    @property
    def rewarms_after_down(self) -> bool:
        """Whether a restart of this node loses its cache: Varnish (its storage does not outlive the process),
        Squid (Debian's default keeps memory only) and ATS (what it stored in the minute before, its directory
        written to disk about once a minute: a tester's ATS restarted 11 s after a task held 1 of its 11 warms),
        unless `rewarm_after_down` says otherwise."""
        if self.rewarm_after_down is not None:
            return self.rewarm_after_down
        return self.kind in (NodeKind.VARNISH, NodeKind.SQUID, NodeKind.ATS)

    @field_validator("purge_headers")
    @classmethod
    def _purge_headers(cls, value: dict[str, str]) -> dict[str, str]:
        for name, text in value.items():
            _check_header(name, text)
        return value

    @field_validator("ban_header")
    @classmethod
    def _ban_header(cls, value: str) -> str:
        return _check_header(value, "")

    @field_validator("url")
    @classmethod
    def _url(cls, value: str) -> str:
        shown = _shown_node_url(value)  # messages reach logs: a credential given in the URL by mistake is masked
        if any(c.isspace() or not c.isprintable() for c in value):
            raise ValueError(f"{shown}: spaces and control characters are not allowed")
        parts = urlsplit(value)
        if parts.scheme not in ("http", "https"):
            raise ValueError(f"{shown}: the scheme must be http or https")
        if not parts.hostname:
            raise ValueError(f"{shown}: no host")
        if "[" in parts.netloc or "]" in parts.netloc:
            _bracketed(parts.netloc, shown)
        try:
            parts.hostname.encode("idna")  # what resolving the name asks of it
        except UnicodeError as exc:
            reason = str(exc).rsplit("UnicodeError: ", 1)[-1].rstrip(")")
            raise ValueError(f"{shown}: the host is not a valid name ({reason})") from None
        try:
            _ = parts.port
        except ValueError as exc:
            raise ValueError(f"{shown}: bad port") from exc
        if parts.path not in ("", "/") or parts.query or parts.fragment or has_user_info(parts):
            raise ValueError(f"{shown}: give only scheme, host and port (no path, query or user)")
        return f"{parts.scheme}://{parts.netloc}"


_BRACKETED_HOST = re.compile(r"\[([^\[\]]*)\](?::[0-9]*)?")  # [address] or [address]:port, the whole netloc


def _bracketed(netloc: str, shown: str) -> None:
    """Refuse a node's host in brackets that is not an IPv6 address alone: a zone id (`[fe80::1%25eth0]`), text
    after the bracket (`[::1]x`), an IPv4 address: taken by the config, each failed every request as "internal
    error: ValueError" (the HTTP client's), retried 90 s (an IPv6 tester's)."""
    shape = _BRACKETED_HOST.fullmatch(netloc)
    inside = shape.group(1) if shape else ""
    if "%" in inside:
        raise ValueError(f"{shown}: an IPv6 zone id (%25…) is not taken: give the node a global address or a name")
    try:
        ipaddress.IPv6Address(inside)
    except ValueError:
        shape = None
    if shape is None:
        raise ValueError(f"{shown}: an IPv6 address goes alone in brackets, its port after them: http://[::1]:8080")


def _cache_address(url: str) -> str:
    """A node URL as the cache it reaches: its scheme, host (lower case, no final dot, `localhost` as
    127.0.0.1) and port (the scheme's default when none): `http://127.0.0.1` and `http://localhost:80` are one
    (check-config said nothing of them: a newcomer's)."""
    parts = urlsplit(url)
    host = (parts.hostname or "").rstrip(".")
    port = parts.port or (443 if parts.scheme == "https" else 80)
    return f"{parts.scheme}://{'127.0.0.1' if host == 'localhost' else host}:{port}"


def _shown_node_url(value: str) -> str:
    """A node URL for a message, quoted, its password and its query masked."""
    try:
        parts = urlsplit(password_masked(value))
        return repr(urlunsplit(parts._replace(query="***" if parts.query else "")))
    except ValueError:
        return "(a URL that does not parse)"


class Engine(_Model):
    """How the warming engine works; the defaults suit a small fleet."""

    concurrency: Width = 256  # fetches in flight in one process, all nodes together
    per_node_concurrency: Width = 64
    max_attempts: Annotated[int, Field(gt=0, le=100)] = 4
    backoff_base: Seconds = 0.5  # seconds; attempt n waits base * 2**(n-1), with full jitter
    backoff_max: Seconds = 30.0
    # Items of a node held down (its connections failed in a row) wait this long for it without spending
    # attempts; 0: each answer "held down" counts as a failed attempt (README, How a warm works).
    node_down_wait: SecondsOrOff = 120.0
    connect_timeout: Seconds = 5.0
    read_timeout: Seconds = 30.0  # longest silence while reading a response
    # Longest one request may take, connection to the body's last byte: a body that never ends (a live stream,
    # an origin trickling just under read_timeout) is cut there, and its task does end.
    fetch_timeout: Seconds = 1800.0
    lease_seconds: Seconds = 60.0
    batch_size: PositiveInt = 500  # outcomes written per transaction at most
    flush_interval: Seconds = 0.05  # seconds an outcome may wait for its batch
    poll_interval: Seconds = 0.5  # idle workers look for due items at least this often
    grace_seconds: SecondsOrOff = 10.0  # on shutdown, in-flight fetches get this long
    verify: bool = False  # after a MISS, fetch again and require a HIT
    # A (URL, node) warmed by this process less than this long ago is not fetched again; 0 turns it off.
    dedupe_seconds: SecondsOrOff = 60.0
    user_agent: str = f"edgewarm/{__version__}"
    # What a typical viewer sends, so that the variant they will ask for is the one warmed; "" sends none.
    accept_encoding: str = "gzip, deflate, br, zstd"
    # Make the HTTP requests in a child process, on a second core beside the scheduling. Off by default: on 2
    # cores shared with the caches it made many small objects 35-40 % faster, large ones as fast to 15 % slower
    # (docs/benchmarks.md, "Session 31"; before, on another machine, small ones no faster: "Session 2").
    fetch_process: bool = False

    @field_validator("user_agent", "accept_encoding")
    @classmethod
    def _header_values(cls, value: str, info: ValidationInfo) -> str:
        _check_header({"user_agent": "User-Agent"}.get(info.field_name or "", "Accept-Encoding"), value)
        return value

    def cautions(self) -> list[str]:
        """Settings that are valid but keep a feature from working, each in a sentence (logged when the engine
        starts and on a reload)."""
        found = []
        if self.connect_timeout >= self.read_timeout:
            found.append(
                f"[engine] connect_timeout ({self.connect_timeout:g} s) is not below read_timeout "
                f"({self.read_timeout:g} s): a node that drops connection attempts cannot be told from one that "
                "connects and keeps silent, so it is not held down (README, How a warm works)"
            )
        if self.fetch_timeout <= self.read_timeout:
            found.append(
                f"[engine] fetch_timeout ({self.fetch_timeout:g} s) is not above read_timeout ({self.read_timeout:g} "
                "s): a request is cut before a silence of read_timeout could end it"
            )
        return found


# [engine] keys the fetcher takes when it opens (its connection limit, timeouts, headers, process): a reload
# (SIGHUP) that changes one of them opens a new fetcher for the next requests (runtime.py).
FETCHER_KEYS = (
    "concurrency",
    "connect_timeout",
    "read_timeout",
    "fetch_timeout",
    "user_agent",
    "accept_encoding",
    "fetch_process",
)
# Of those, the keys that choose the variant of an object a warm fills (a cache that varies on them keeps one
# per value): a warm of before a reload that changes one is not the warm asked for after it (no dedupe).
VARIANT_KEYS = ("user_agent", "accept_encoding")


class Api(_Model):
    language: Literal["en", "zh"] = "en"
    timezone: str = DEFAULT_TIMEZONE
    signature_window_days: Annotated[int, Field(ge=0, le=7)] = 1
    max_body_bytes: PositiveInt = 1_048_576
    max_url_length: PositiveInt = 4096
    request_timeout: Seconds = 60.0  # a request's head and body must arrive within it (taken at start)

    @field_validator("timezone")
    @classmethod
    def _timezone(cls, value: str) -> str:
        if not known_timezone(value):
            raise ValueError(f"unknown time zone {value!r}")
        return value


class Webhooks(_Model):
    """Callbacks when a task ends: only to these hosts, retried with backoff."""

    allowed_hosts: tuple[str, ...] = ()
    max_attempts: Annotated[int, Field(gt=0, le=20)] = 5  # attempt n waits backoff_base * 2**(n-1)
    backoff_base: Seconds = 2.0
    timeout: Seconds = 10.0

    @field_validator("allowed_hosts", mode="before")
    @classmethod
    def _hosts(cls, value: Any) -> Any:
        if not isinstance(value, list):
            return value
        for host in value:
            if isinstance(host, str) and not _is_host(host.lower()):
                raise ValueError(f"{host!r} is not a host name or an IP address (no scheme, port or path)")
        return tuple(v.lower() if isinstance(v, str) else v for v in value)


class Retention(_Model):
    """Finished tasks older than `days` are removed, `batch` tasks at a time, every `interval_seconds`."""

    days: Annotated[float, Field(gt=0, le=36_500, allow_inf_nan=False)] = 7.0
    # A second at least: 0.001 kept an idle service at a quarter of a core (a tester's).
    interval_seconds: Annotated[float, Field(ge=1, le=WEEK, allow_inf_nan=False)] = 3600.0
    batch: Annotated[int, Field(ge=1, le=100_000)] = 200  # tasks a transaction: a bounded one


_TOKEN = re.compile(r"^[!#$%&'*+.^_`|~0-9A-Za-z-]+$")  # an HTTP field name (RFC 9110 5.1)


def _check_header(name: str, value: str) -> str:
    """A header edgewarm sends as configured: a field name, and a value without control characters (CR or LF
    would end the header there). Returns the name."""
    if not _TOKEN.match(name):
        raise ValueError(f"{name!r} is not an HTTP header name")
    if any((not c.isprintable() and c != "\t") or c in "\r\n" for c in value):
        raise ValueError(f"the value of header {name} holds a control character (CR, LF, NUL, …)")
    return name


def _is_host(text: str) -> bool:
    """A host name (its labels) or an IP address in its usual form, as a URL's host reads without brackets; not
    a name that URL parsers read as an address (`0x7f000001`, `127.1`: one allowed was posted to 127.0.0.1,
    and a callback to the other failed at every attempt: a re-tester's)."""
    try:
        ipaddress.ip_address(text)
        return True
    except ValueError:
        name = text.rstrip(".")
        return bool(text) and all(_DOMAIN_LABEL.match(label) for label in name.split(".")) and not reads_as_ip(name)


def _bad_postgresql_url(url: str) -> str | None:
    """What is wrong with a PostgreSQL URL's user information or ports (each host's in `h1:5432,h2:5433`, and
    `?port=5432,5433`), or None: the driver would fail at the first connection, after check-config said OK."""
    try:
        pool_size_of(url)
    except StoreError as exc:
        return str(exc)
    parts = urlsplit(url)
    if parts.netloc.count("@") > 1:  # the driver takes what follows the first for the host
        return "an @ in the user name or password must be percent-encoded: %40"
    if "@" in parts.path:  # `user:12345/pw@host/db`: the password's / ended the address (host "user", port 12345)
        return (
            "an @ after the first / (a password with / in it must be percent-encoded: %2F; and ?, # or @: %3F, "
            "%23, %40)"
        )
    hosts = parts.netloc.rpartition("@")[2]
    ports = [host.rpartition("]")[2].partition(":")[2] for host in hosts.split(",")]
    ports += [p for value in parse_qs(parts.query).get("port", []) for p in value.split(",")]
    if any(port and not (ascii_digits(port) and 0 < int(port) < 65536) for port in ports):
        # Not the port shown: a password with an unencoded / ends the user information early, and what follows
        # its first : reads as the port.
        return (
            "a port is not a number from 1 to 65535 (a password with /, ?, # or @ in it must be percent-encoded: "
            "%2F, %3F, %23, %40)"
        )
    return None


def _check_listen(value: str) -> str:
    """HOST:PORT, an IPv6 address in brackets (`::1:8080` was taken and logged as such, `[::1:8080` and
    `[127.0.0.1]:8080` too; `[::ffff:127.0.0.1]` passed and then could not be listened on: an IPv6 tester's)."""
    host, sep, port = value.rpartition(":")
    if not sep or not ascii_digits(port) or not host:
        raise ValueError(f"{value!r} is not HOST:PORT")
    if not 0 < int(port) < 65536:
        raise ValueError(f"{value!r}: port {int(port)} is out of range (1-65535)")
    bracketed = host.startswith("[") and host.endswith("]")
    try:
        address = ipaddress.ip_address(host[1:-1] if bracketed else host)
    except ValueError:
        if bracketed or not re.match(r"^[A-Za-z0-9.-]+$", host):
            raise ValueError(f"{value!r}: bad host (an IPv6 address goes in brackets: [::1]:8080)") from None
        return value
    if isinstance(address, ipaddress.IPv4Address):
        if bracketed:
            raise ValueError(f"{value!r}: an IPv4 address goes without brackets: {address}:{port}")
    elif not bracketed:
        raise ValueError(f"{value!r}: an IPv6 address goes in brackets: [{host}]:{port}")
    elif address.scope_id:
        raise ValueError(f"{value!r}: an IPv6 zone id is not taken: give the address alone")
    elif address.ipv4_mapped is not None:
        raise ValueError(
            f"{value!r}: an IPv4 address in IPv6 form is not listened on: give {address.ipv4_mapped}:{port}"
        )
    return value


class Config(_Model):
    listen: str = "127.0.0.1:8080"
    store: str = "sqlite:///var/lib/edgewarm/edgewarm.db"
    log_level: Literal["debug", "info", "warning", "error"] = "info"
    log_format: Literal["json", "text"] = "json"
    metrics_listen: str | None = None  # HOST:PORT for /metrics of an `edgewarm worker` (the API serves its own)
    limits: Limits = Limits()
    engine: Engine = Engine()
    api: Api = Api()
    webhooks: Webhooks = Webhooks()
    retention: Retention = Retention()
    users: tuple[User, ...] = ()
    nodes: tuple[Node, ...] = ()

    @field_validator("listen", "metrics_listen")
    @classmethod
    def _listen(cls, value: str | None) -> str | None:
        return None if value is None else _check_listen(value)

    @field_validator("store")
    @classmethod
    def _store(cls, value: str) -> str:
        scheme = value.split(":", 1)[0]
        if scheme not in ("sqlite", "postgresql", "postgres", "memory"):
            raise ValueError(f"{redacted(value)!r}: use {STORE_URL_FORMS}")
        try:
            sqlite_path(value)  # a sqlite URL names a file: refused here as `serve` would refuse it
        except StoreError as exc:
            raise ValueError(str(exc)) from None
        if scheme.startswith("postgres") and (bad := _bad_postgresql_url(value)) is not None:
            raise ValueError(f"{redacted(value)!r}: {bad}")
        return value

    @model_validator(mode="after")
    def _unique(self) -> Config:
        for what, names in (("users", [u.name for u in self.users]), ("nodes", [n.name for n in self.nodes])):
            seen: dict[str, int] = {}
            for index, name in enumerate(names):
                if name in seen:  # counted from 1, as an operator finds them in the file (a re-tester's)
                    raise ConfigError(
                        f"{what}[{index}].name",
                        f"duplicate name {name!r} (the [[{what}]] tables number {seen[name] + 1} and {index + 1})",
                    )
                seen[name] = index
        return self

    @property
    def listen_host(self) -> str:
        return self.listen.rpartition(":")[0].strip("[]")

    @property
    def listen_port(self) -> int:
        return int(self.listen.rpartition(":")[2])

    def user(self, name: str) -> User | None:
        for user in self.users:
            if user.name == name:
                return user
        return None

    def cautions(self) -> list[str]:
        """Settings that are valid but keep a feature from working, each in a sentence (`check-config` prints
        them; a service logs them at start and on a reload)."""
        found = self.engine.cautions()
        if not self.nodes:
            found.append(
                "no [[nodes]]: submissions will be refused until nodes are configured (a running service's reload "
                "refuses such a file: a file cut off looks like it)"
            )
        if not self.users:
            found.append(
                "no [[users]]: every call will be refused (JD code 20) until users are configured (a running "
                "service's reload refuses such a file: a file cut off looks like it)"
            )
        found += [
            f"user {u.name!r} has no domains: every URL it submits is refused" for u in self.users if not u.domains
        ]
        found += [
            f"user {u.name!r}: domain {domain!r} is every site under the top-level domain {domain[2:]!r} (a typo for "
            f"*.example.{domain[2:]}?)"
            for u in self.users
            for domain in u.domains
            if domain.startswith("*.") and "." not in domain[2:]
        ]
        by_url = _holders((_cache_address(node.url), node.name) for node in self.nodes)
        found += [
            f"nodes {' and '.join(names)} have one URL: each warm and purge goes to it {len(names)} times"
            for names in by_url.values()
            if len(names) > 1
        ]
        found += [
            f"node {n.name!r}: tls_verify = false: its certificate is not checked, so anyone on the way can answer "
            "as the node (and be taken for it)"
            if n.url.lower().startswith("https:")
            else f"node {n.name!r}: tls_verify = false does nothing on an http:// node"
            for n in self.nodes
            if not n.tls_verify
        ]
        found += [
            f'node {n.name!r}: dir_purge = "ban" sends BAN, which only Varnish takes (its kind is {n.kind.value})'
            for n in self.nodes
            if n.dir_purge == "ban" and n.kind not in (NodeKind.VARNISH, NodeKind.GENERIC)
        ]
        found += [
            f'node {n.name!r}: purge_method = "GET" without purge_headers is a plain GET, answered from the cache: '
            "every purge there fails; give the header its proxy_cache_bypass honours"
            for n in self.nodes
            if n.purge_method == "GET" and not n.purge_headers
        ]
        found += [
            f'node {n.name!r}: purge_method = "GET" on ATS: it answers from its cache a request with no-cache '
            "(proxy.config.http.cache.ignore_client_no_cache is 1 by default), and such a purge fails: use PURGE"
            for n in self.nodes
            if n.purge_method == "GET" and n.purge_headers and n.kind is NodeKind.ATS
        ]
        found += [
            f"user {u.name!r} has a secret of {len(u.secret)} characters: one that short can be guessed; use "
            f"{SECRET_LENGTH} or more (openssl rand -hex 16)"
            for u in self.users
            if len(u.secret) < SECRET_LENGTH
        ]
        found += [
            f"user {u.name!r} has README's example secret as its {key}, which anyone may read and sign with: make "
            "one of your own (openssl rand -hex 16)"
            for u in self.users
            for key, secret in (("secret", u.secret), ("webhook_secret", u.webhook_secret))
            if secret == EXAMPLE_SECRET
        ]
        by_secret = _holders((user.secret, repr(user.name)) for user in self.users)
        found += [
            f"users {' and '.join(names)} have one secret: each can act as the other"
            for names in by_secret.values()
            if len(names) > 1
        ]
        shared = _shared_domains(self.users)
        found += [
            f"users {_some(names)} {'both' if len(names) == 2 else 'all'} own {pattern}{by}: each may warm and "
            "refresh the others' URLs there (a directory refresh of one purges the others'), and sees their "
            "refreshes of them wait; give each user domains of its own"
            for pattern, names, by in shared[:SHARED_SHOWN]
        ]
        if len(shared) > SHARED_SHOWN:
            found.append(f"and {len(shared) - SHARED_SHOWN} more domains with several owners")
        for user in self.users:
            if user.webhook_secret is None:
                continue
            if len(user.webhook_secret) < SECRET_LENGTH:
                found.append(
                    f"user {user.name!r} has a webhook_secret of {len(user.webhook_secret)} characters: one that "
                    f"short can be guessed, and webhooks forged; use {SECRET_LENGTH} or more (openssl rand -hex 16)"
                )
            if owners := by_secret.get(user.webhook_secret):
                found.append(
                    f"user {user.name!r} has a webhook_secret that is the API secret of {' and '.join(owners)}: "
                    "its webhooks' receivers could call the API with it"
                )
        by_hook_secret = _holders((u.webhook_secret, repr(u.name)) for u in self.users if u.webhook_secret is not None)
        found += [
            f"users {' and '.join(names)} have one webhook_secret: each one's receivers could forge the other's "
            "webhooks"
            for names in by_hook_secret.values()
            if len(names) > 1
        ]
        return found

    def shields(self) -> tuple[Node, ...]:
        return tuple(n for n in self.nodes if n.tier is Tier.SHIELD)

    def node(self, name: str) -> Node | None:
        for node in self.nodes:
            if node.name == name:
                return node
        return None


SHARED_SHOWN = 10  # domains with several owners cautioned one by one; the others counted in a line
SHOWN_NAMES = 5  # owners named in such a caution; the others counted


def _shared_domains(users: Iterable[User]) -> list[tuple[str, list[str], str]]:
    """The domains (names or wildcards) that several users own, themselves or by a wildcard above (a tenant's
    name or wildcard under another's: a tester's `*.img.example.test` beside `a.img.example.test` said OK, though
    each could refresh the other's URLs): each with its owners and " (by …)" naming the wildcards above that
    brought some. Found through each pattern's parent wildcards (a name `a.b.c` is under `*.b.c` and `*.c`), one
    line a domain, not a pair of users (2,000 users of one domain were 2 million lines: a re-tester's)."""
    owners: dict[str, list[str]] = {}
    for user in users:
        for pattern in dict.fromkeys(user.domains):
            owners.setdefault(pattern, []).append(user.name)
    shared = []
    for pattern, names in owners.items():
        labels = pattern.removeprefix("*.").split(".")
        above = [p for i in range(1, len(labels)) if (p := f"*.{'.'.join(labels[i:])}") in owners]
        holders = list(dict.fromkeys([*names, *(name for p in above for name in owners[p])]))
        if len(holders) > 1:
            shared.append((pattern, holders, f" (by {', '.join(above)})" if above else ""))
    return shared


def _some(names: list[str]) -> str:
    """`'a' and 'b'`, `'a', 'b', 'c' and 'd'`, or the first few and how many more."""
    quoted = [repr(name) for name in names[:SHOWN_NAMES]]
    if len(names) > SHOWN_NAMES:
        return f"{', '.join(quoted)} and {len(names) - SHOWN_NAMES} more"
    return f"{', '.join(quoted[:-1])} and {quoted[-1]}"


def _holders(pairs: Iterable[tuple[str, str]]) -> dict[str, list[str]]:
    """Each value of (value, name) `pairs` with the names that hold it, in their order: two nodes of one URL, two
    users of one secret."""
    held: dict[str, list[str]] = {}
    for value, name in pairs:
        held.setdefault(value, []).append(name)
    return held


def _key_path(loc: tuple[int | str, ...]) -> str:
    out = ""
    for part in loc:
        out += f"[{part}]" if isinstance(part, int) else (f".{part}" if out else str(part))
    return out


def _first_date_or_time(value: Any, loc: tuple[int | str, ...] = ()) -> tuple[int | str, ...] | None:
    """Where the document holds a TOML date or time (no key takes one; JSON has none), or None."""
    if isinstance(value, date | time):  # a datetime is a date
        return loc
    children = value.items() if isinstance(value, Mapping) else enumerate(value) if isinstance(value, list) else ()
    for key, child in children:
        if (found := _first_date_or_time(child, (*loc, key))) is not None:
            return found
    return None


def _table_named(data: Mapping[str, Any], loc: tuple[int | str, ...]) -> str:
    """Which [[nodes]] or [[users]] table an error's `loc` is in, counted from 1 and by its name, as an operator
    finds it in the file (`nodes[3]` counts from 0: a reload tester's count landed on the wrong node); or ""."""
    if len(loc) < 2 or not isinstance(loc[0], str) or not isinstance(loc[1], int):
        return ""
    tables = data.get(loc[0])
    if not isinstance(tables, list) or not 0 <= loc[1] < len(tables):
        return ""
    name = tables[loc[1]].get("name") if isinstance(tables[loc[1]], Mapping) else None
    named = f", name {name!r}" if isinstance(name, str) else ""
    return f" (the [[{loc[0]}]] table number {loc[1] + 1}{named})"


def _problem(error: Any, data: Mapping[str, Any]) -> tuple[str, str]:
    """One validation error as (key path, message in the config's words)."""
    loc = tuple(p for p in error["loc"] if not (isinstance(p, str) and p.startswith("function-")))
    message = str(error["msg"])
    if error["type"] == "extra_forbidden":
        message = "unknown key"
    elif error["type"] == "missing":
        message = "required key is missing"
    elif error["type"] in ("list_type", "tuple_type") and isinstance(error.get("input"), dict):
        name = _key_path(loc)
        message = f"must be an array of tables: write each entry as [[{name}]], not [{name}]"
    return _key_path(loc), message.removeprefix("Value error, ") + _table_named(data, loc)


def parse_config(data: Mapping[str, Any]) -> Config:
    """Validate a decoded TOML document; raise ConfigError naming the first wrong key.

    Strictly, as JSON: a number or a boolean written as a string ("100", "yes") is refused, not converted,
    while arrays and the names of enumerations read as they do in TOML."""
    if (where := _first_date_or_time(data)) is not None:
        raise ConfigError(_key_path(where), "a date or time is not a value any key takes")
    try:
        return Config.model_validate_json(json.dumps(dict(data)), strict=True)
    except ConfigError:
        raise
    except ValidationError as exc:
        (key, message), *more = (_problem(error, data) for error in exc.errors())
        # Every problem at once, the first in `key`: fixing one to find the next is a slow loop.
        message += "".join(f"\n{k}: {m}" if k else f"\n{m}" for k, m in more)
        raise ConfigError(key, message) from None
    except ValueError as exc:  # a ConfigError raised inside a validator arrives wrapped
        raise ConfigError("", str(exc)) from None


SECRET_LENGTH = 16  # characters of a user's secret below which it is cautioned
# The secret of README's example user (and of the demo's): published, so anyone may sign with it (cautioned).
EXAMPLE_SECRET = "e7a31b1c5ea0efa9aa2f29c6559f7d61"


def file_cautions(path: str | Path) -> list[str]:
    """What is unsafe about how the config file at `path` may be read or changed (it holds the users' secrets):
    each in a sentence, as Config.cautions."""
    try:
        found_stat = Path(path).stat()
    except OSError:
        return []
    mode, found = found_stat.st_mode, []
    if mode & 0o022:
        found.append(f"{path} can be changed by other users of this machine (mode {mode & 0o777:o}): chmod go-w")
    if found_stat.st_uid not in (0, os.getuid()):
        found.append(f"{path} is owned by another user (uid {found_stat.st_uid}), who can change it")
    for folder, folder_mode in _open_folders(Path(path)):
        found.append(
            f"{path} is in a folder every user of this machine can write to ({folder}, mode {folder_mode & 0o777:o}),"
            " where the file can be replaced: move it, or chmod o-w the folder"
        )
    if mode & 0o004:
        found.append(
            f"{path} can be read by every user of this machine (mode {mode & 0o777:o}), secrets and all: chmod o-r"
        )
    return found


def _folders_read(path: Path) -> list[Path]:
    """The folders whose entries opening `path` reads, as the kernel walks it: each holding a name of the path
    (a folder under one anyone can write to can be renamed away and another put in its place) or of a symbolic
    link on the way, the links' own (a re-tester's chain through a link in an open folder); real paths, once
    each. Bounded as the kernel bounds links (40)."""
    folders: dict[Path, None] = {}
    current = Path("/")
    names = list(path.absolute().parts[1:])
    links = 0
    while names:
        name = names.pop(0)
        if name in ("", "."):
            continue
        if name == "..":  # the real parent: `open/../safe` reads no name of `open`
            current = current.parent
            continue
        folders[current] = None
        entry = current / name
        if entry.is_symlink() and links < 40:
            links += 1
            target = Path(os.readlink(entry))
            if target.is_absolute():
                current = Path("/")
            names[:0] = [part for part in target.parts if part != "/"]
        else:
            current = entry
    return list(folders)


CaFiles = tuple[tuple[str, tuple[int, int, int] | None], ...]  # ca_files(): each path, its inode, size, time


def ca_files() -> CaFiles:
    """The CA file and folder a TLS client made now reads (SSL_CERT_FILE and SSL_CERT_DIR, or the system's), with
    their inode, size and change time: what tells that they changed since a client was made (the fetcher's, the
    webhooks')."""
    paths = ssl.get_default_verify_paths()
    found: list[tuple[str, tuple[int, int, int] | None]] = []
    for path in (paths.cafile, paths.capath):
        if path:
            try:
                st = os.stat(path)
            except OSError:
                found.append((path, None))
            else:
                found.append((path, (st.st_ino, st.st_size, st.st_mtime_ns)))
    return tuple(found)


def ca_file_cautions() -> list[str]:
    """What is wrong with the CA file or folder edgewarm's environment names (SSL_CERT_FILE, SSL_CERT_DIR): one
    missing, a folder, or holding no certificate was read as no CA at all, said nowhere, and every https node
    failed "unable to get local issuer certificate" (a TLS tester's)."""
    found = []
    if file := os.environ.get("SSL_CERT_FILE"):
        try:
            with open(file, "rb"):
                pass
            ssl.create_default_context(cafile=file)  # as a client reads it (markers around no certificate: refused)
            problem = None
        except ssl.SSLError:
            problem = "which holds no certificate (PEM) a TLS client can read"
        except OSError as exc:
            problem = f"which cannot be read ({exc.strerror})"
        if problem is not None:
            found.append(
                f"SSL_CERT_FILE names {file}, {problem}: https nodes' and receivers' certificates are checked against "
                "none of its CAs"
            )
    if (folder := os.environ.get("SSL_CERT_DIR")) and not os.path.isdir(folder):
        found.append(f"SSL_CERT_DIR names {folder}, which is no folder: none of its CAs are read")
    return found


def _open_folders(path: Path) -> list[tuple[Path, int]]:
    """The folders every user can write to (without the sticky bit, as /tmp has) that opening `path` reads
    (_folders_read), with their modes."""
    found = []
    for folder in _folders_read(path):
        try:
            folder_mode = folder.stat().st_mode
        except OSError:
            continue
        if folder_mode & 0o002 and not folder_mode & 0o1000:
            found.append((folder, folder_mode))
    return found


def load_config(path: str | Path) -> Config:
    """Read and validate the TOML file at `path`."""
    try:
        raw = Path(path).read_bytes()
    except OSError as exc:
        raise ConfigError("", f"cannot read config {path}: {exc.strerror}") from None
    try:
        data = tomllib.loads(raw.decode("utf-8-sig"))  # a byte order mark, as Windows editors write, is no error
    except (tomllib.TOMLDecodeError, UnicodeDecodeError) as exc:
        raise ConfigError("", f"{path} is not valid TOML: {exc}") from None
    if not data:  # every key has a default, but no one means to run on them all: an editor's half-written file?
        raise ConfigError("", f"{path} has no settings at all (empty, or comments only): is it being written?")
    return parse_config(data)


def reload_refusal(running: Config, fresh: Config) -> str | None:
    """Why a reload to `fresh` is refused, or None. One that would drop every user or every node is refused: a
    file cut off or being written looks like that, and taking it would lock every caller out and fail every
    waiting item of the nodes it lacks (a service meant to run without them is stopped instead)."""
    parts = (("users", running.users, fresh.users), ("nodes", running.nodes, fresh.nodes))
    gone = [(what, len(old)) for what, old, new in parts if old and not new]
    if not gone:
        return None
    lacks = " and no ".join(what for what, _ in gone)
    has = " and ".join(f"{count} {what}" for what, count in gone)
    return f"the new config has no {lacks} (the running one has {has}): a file cut off or being written?"


def restart_only_changes(started: Config, fresh: Config) -> list[str]:
    """The settings that differ between the config a process started with and `fresh` but are taken at start
    only (a reload leaves the started ones in use)."""
    values = {
        "listen": (started.listen, fresh.listen),
        "store": (started.store, fresh.store),
        "metrics_listen": (started.metrics_listen, fresh.metrics_listen),
        "log_level": (started.log_level, fresh.log_level),
        "log_format": (started.log_format, fresh.log_format),
    }
    for section, field in _RESTART_ONLY_FIELDS:
        values[f"[{section}] {field}"] = (
            getattr(getattr(started, section), field),
            getattr(getattr(fresh, section), field),
        )
    return [name for name, (old, new) in values.items() if old != new]


# The sections' settings taken at start only: a reload's line names them apart (restart_only_changes), not as
# changed (a tester read "changed: [api] (request_timeout 60.0 -> 30.0)" as in force).
_RESTART_ONLY_FIELDS = (("api", "request_timeout"),)


# A node's settings a reload's log shows with their values; the others (`url`, `purge_headers`: they may hold a
# token) by name only, as every user setting (a secret, a customer's domains).
_NODE_VALUES_SHOWN = ("tier", "kind", "tls_verify", "purge_method", "dir_purge", "ban_header", "rewarm_after_down")


def _shown_value(value: object) -> str:
    """A setting's value in a reload's line: an empty string as '' (`purge_method PURGE -> ` read as cut off), one
    with spaces around it quoted too (`user_agent ' '`)."""
    return f"'{value}'" if isinstance(value, str) and (value == "" or value.strip() != value) else str(value)


def reload_changes(running: Config, fresh: Config) -> str:
    """What a reload from `running` to `fresh` adds and changes, in a line (nodes and users removed have lines
    of their own): `nodes added: edge-2b; users added: robert; changed: user alice (secret), node edge-1
    (concurrency 4 -> 2)`, or "" when neither. A user's changed settings are named, never shown."""
    parts: list[str] = []
    for what, old, new in (("nodes", running.nodes, fresh.nodes), ("users", running.users, fresh.users)):
        before = {x.name for x in old}
        if added := [x.name for x in new if x.name not in before]:
            parts.append(f"{what} added: {', '.join(added)}")
    changed: list[str] = []
    for user in fresh.users:
        if (was := running.user(user.name)) is not None and (fields := _changed_fields(was, user)):
            changed.append(f"user {user.name} ({', '.join(fields)})")
    for node in fresh.nodes:
        if (old_node := running.node(node.name)) is None:
            continue
        notes = []
        widths = (
            old_node.concurrency or running.engine.per_node_concurrency,
            node.concurrency or fresh.engine.per_node_concurrency,
        )
        if widths[0] != widths[1]:
            notes.append(f"concurrency {widths[0]} -> {widths[1]}")
        for field in _changed_fields(old_node, node):
            if field != "concurrency":
                shown = field in _NODE_VALUES_SHOWN
                old_value, new_value = (_shown_value(getattr(n, field)) for n in (old_node, node))
                notes.append(f"{field} {old_value} -> {new_value}" if shown else field)
        if notes:
            changed.append(f"node {node.name} ({', '.join(notes)})")
    for section in _SECTIONS:  # no secret in them: their values are shown
        old_section, new_section = getattr(running, section), getattr(fresh, section)
        notes = [
            f"{field} {_shown_value(getattr(old_section, field))} -> {_shown_value(getattr(new_section, field))}"
            for field in _changed_fields(old_section, new_section)
            if (section, field) not in _RESTART_ONLY_FIELDS
        ]
        if notes:
            changed.append(f"[{section}] ({', '.join(notes)})")
    if changed:
        parts.append(f"changed: {', '.join(changed)}")
    return "; ".join(parts)


_SECTIONS = ("limits", "engine", "api", "webhooks", "retention")  # reload_changes names their changed settings


def _changed_fields(old: _Model, new: _Model) -> list[str]:
    """The fields of a model (a user, a node, a section) whose values differ between `old` and `new`."""
    return [field for field in type(new).model_fields if getattr(old, field) != getattr(new, field)]


def config_path_from(environ: Mapping[str, str] = os.environ) -> str | None:
    return environ.get("EDGEWARM_CONFIG")
