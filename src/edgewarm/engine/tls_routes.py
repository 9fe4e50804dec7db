"""Which pyreqwest client sends a site's https URLs to a node, if any (the Fetcher asks aiohttp otherwise).

The connection goes to the node while the URL's host is the SNI and what the certificate is checked against: a
pyreqwest client per (node, site, node address) resolves the site's name to the node's address
(`ClientBuilder.resolve`), at most TLS_CLIENTS of them, the least recently used dropped first. A node given by
IP address has that address. A node given by name is resolved here (pyreqwest's `resolve` takes one address,
so its own resolver cannot be used for the node): every address the name has, in the order the system gives
them, the first one used, the next one when it refuses a connection or does not answer within connect_timeout,
and the name asked again after NAME_TTL seconds (in the background: requests go on to the address known
meanwhile). aiohttp sends what no route covers: a URL whose host is an IP address (no name for SNI), a node
whose name does not resolve, and a node whose TLS only OpenSSL speaks (`use_openssl`: CBC ciphers, say).
"""

from __future__ import annotations

import asyncio
import enum
import ipaddress
import logging
import socket
import time
from collections import OrderedDict
from collections.abc import Callable
from dataclasses import dataclass, field
from datetime import timedelta
from urllib.parse import urlsplit

import pyreqwest.client

from ..config import Node

log = logging.getLogger("edgewarm.engine")

# pyreqwest clients kept for https nodes, one per (node, site, address), each with its own idle connections: kept
# ROUTE_IDLE_SECONDS after their last request, so that URLs of many sites do not hold thousands of idle sockets
# (each site's pool its own); a client dropped closes its idle ones. A busy site's connections stay in use.
TLS_CLIENTS = 64
ROUTE_IDLE_SECONDS = 2.0
# Seconds a node name's addresses are used before the name is asked again (aiohttp's own DNS cache: 10 s).
NAME_TTL = 10.0


@dataclass(frozen=True, slots=True)
class Route:
    """A pyreqwest client that sends a site's https URLs to the node at `ip`, and the URL prefix to use."""

    client: pyreqwest.client.Client
    prefix: str  # "https://{site}:{node port}": pyreqwest connects to the URL's port; Host is sent as given
    ip: str
    named: bool  # the node is given by name: another of its addresses may answer when this one does not


class Unresolved(enum.Enum):
    NAME = "the node's name is being resolved"


UNRESOLVED = Unresolved.NAME


@dataclass(slots=True)
class _Name:
    """What a node's name resolved to, and which address is used now."""

    addresses: list[str] = field(default_factory=list)
    current: int = 0
    expires: float = 0.0  # monotonic
    asking: asyncio.Task[None] | None = None


class TlsRoutes:
    """The pyreqwest routes to https nodes; `close()` when done."""

    def __init__(self, builder: Callable[[], pyreqwest.client.ClientBuilder]) -> None:
        self._builder = builder  # a new builder for each client, with the Fetcher's settings
        # (node url, tls_verify, site, node address) -> route, or None: aiohttp sends those
        self._routes: OrderedDict[tuple[str, bool, str, str], Route | None] = OrderedDict()
        self._nodes: dict[str, tuple[str, int, str | None] | None] = {}  # node url -> (host, port, ip) | None
        self._names: dict[str, _Name] = {}  # node url -> its name's addresses
        self._openssl: set[str] = set()  # node urls that aiohttp reached when pyreqwest could not

    def route(self, node: Node, host: str) -> Route | Unresolved | None:
        """The route for `host`'s URLs to `node`; None when aiohttp must send them; UNRESOLVED when the node's
        name is being resolved for the first time (`await resolve(node)`, then ask again)."""
        if node.url in self._openssl:
            return None
        if node.url not in self._nodes:  # the node's URL is looked at once, not on every request
            self._nodes[node.url] = _where(node)
        where = self._nodes[node.url]
        if where is None:
            return None
        name, port, ip = where
        named = ip is None
        if ip is None:
            found = self._address(node.url, name, port)
            if found is None or found is UNRESOLVED:
                return found  # None: the name does not resolve, aiohttp tries it (and says so)
            ip = found
        key = (node.url, node.tls_verify, host, ip)
        if key in self._routes:
            self._routes.move_to_end(key)
            return self._routes[key]
        route = self._routes[key] = self._new_route(host, ip, port, node.tls_verify, named)
        if len(self._routes) > TLS_CLIENTS:
            self._routes.popitem(last=False)  # requests still using its client keep it until they end
        return route

    async def resolve(self, node: Node) -> None:
        """Wait until the first resolution of `node`'s name has ended."""
        state = self._names.get(node.url)
        if state is not None and state.asking is not None:
            await asyncio.shield(state.asking)

    def unreachable(self, node: Node, route: Route) -> None:
        """pyreqwest could not connect to `route.ip` (refused, or no answer in time): a named node's next
        address is used next (after the last one, the name is asked again)."""
        state = self._names.get(node.url)
        if not route.named or state is None or not state.addresses:
            return
        if state.addresses[state.current] == route.ip:  # not moved on already by another request
            state.current += 1
            if state.current == len(state.addresses):
                state.current, state.expires = 0, 0.0

    def use_openssl(self, node: Node) -> None:
        """aiohttp reached `node` when pyreqwest could not (TLS that rustls does not speak): aiohttp from now on."""
        self._openssl.add(node.url)

    def uses_openssl(self, node: Node) -> bool:
        return node.url in self._openssl

    async def close(self) -> None:
        asking = [s.asking for s in self._names.values() if s.asking is not None]
        for task in asking:
            task.cancel()
        await asyncio.gather(*asking, return_exceptions=True)
        routes, self._routes = [r for r in self._routes.values() if r is not None], OrderedDict()
        for route in routes:
            await route.client.close()

    # -- inside -----------------------------------------------------------------------------------

    def _new_route(self, host: str, ip: str, port: int, tls_verify: bool, named: bool) -> Route | None:
        if _ip_address(host) is not None:
            return None  # a URL without a name for SNI
        builder = self._builder().resolve(host, ip, port).danger_accept_invalid_certs(not tls_verify)
        builder = builder.pool_idle_timeout(timedelta(seconds=ROUTE_IDLE_SECONDS))
        return Route(builder.build(), f"https://{host}:{port}", ip, named)

    def _address(self, url: str, name: str, port: int) -> str | Unresolved | None:
        """The address of `name` to use now (its resolution is renewed in the background when due)."""
        state = self._names.get(url)
        if state is None:
            state = self._names[url] = _Name()
        if state.expires <= time.monotonic() and state.asking is None:
            state.asking = asyncio.create_task(self._resolve(state, name, port), name=f"edgewarm-resolve-{name}")
        if state.addresses:
            return state.addresses[state.current]
        return UNRESOLVED if state.asking is not None else None

    async def _resolve(self, state: _Name, name: str, port: int) -> None:
        try:
            found = await asyncio.get_running_loop().getaddrinfo(name, port, type=socket.SOCK_STREAM)
        except (OSError, UnicodeError) as exc:  # keep what was known; else aiohttp sends, and says what failed
            log.warning("cannot resolve node name %s: %s", name, exc)
            found = []
        finally:
            state.asking = None
        addresses = [a for a in dict.fromkeys(str(info[4][0]) for info in found) if _routable(a)]
        state.expires = time.monotonic() + NAME_TTL
        if addresses and addresses != state.addresses:
            keep = state.addresses[state.current] if state.addresses else None
            state.addresses = addresses
            state.current = addresses.index(keep) if keep in addresses else 0


def _where(node: Node) -> tuple[str, int, str | None] | None:
    """(host, port, IP address or None for a name) of an https node; None for a node pyreqwest cannot route."""
    address = urlsplit(node.url)
    host = address.hostname
    if address.scheme != "https" or not host:
        return None
    ip = _ip_address(host)
    if ip is not None and not _routable(ip):
        return None
    return host, address.port or 443, ip


def _routable(address: str) -> bool:
    """Whether pyreqwest's `resolve` takes `address`: an IP address without an IPv6 scope (`fe80::1%eth0`)."""
    return "%" not in address and _ip_address(address) is not None


def _ip_address(host: str) -> str | None:
    """`host` (as a URL writes it: an IPv6 address in brackets) as an IP address, or None for a name."""
    try:
        return str(ipaddress.ip_address(host.strip("[]")))
    except ValueError:
        return None
