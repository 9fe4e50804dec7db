"""The one rule for the addresses edgewarm listens on (`listen`, a worker's `metrics_listen`): their family, and
IPv6 sockets for IPv6 alone, as nginx and uvicorn bind `[::]` (the API was IPv6 alone on `[::]` and the metrics
both: an IPv6 tester's)."""

from __future__ import annotations

import ipaddress
import socket


def family_of(host: str) -> socket.AddressFamily:
    """The address family to listen on `host`: an address's; a name's IPv4 when it has an address of it (as
    before: `localhost` is 127.0.0.1 to the clients that ask it so), else IPv6 (a name of IPv6 alone was
    listened on as IPv4, and failed). OSError when a name does not resolve."""
    try:
        return socket.AF_INET6 if ipaddress.ip_address(host).version == 6 else socket.AF_INET
    except ValueError:
        families = {info[0] for info in socket.getaddrinfo(host, None, type=socket.SOCK_STREAM)}
        return socket.AF_INET if socket.AF_INET in families or not families else socket.AF_INET6


def ipv6_alone(sock: socket.socket) -> None:
    """An IPv6 socket takes IPv6 connections alone (IPV6_V6ONLY), whatever the system's default."""
    if sock.family == socket.AF_INET6:
        sock.setsockopt(socket.IPPROTO_IPV6, socket.IPV6_V6ONLY, 1)
