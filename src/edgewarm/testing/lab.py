"""A real caching fleet on loopback, for tests, demos and benchmarks.

``Lab`` starts an origin (nginx serving a folder for any ``Host``), an optional shield and some edges (nginx
``proxy_cache``) and optional Varnish, Squid and Apache Traffic Server (ATS) nodes, each in the foreground in
its own folder on a free ``127.0.0.1`` port, and stops every process it started by PID::

    with Lab(tmp_path, edges=2, shield=True, varnish=1, purge_module=True) as lab:
        lab.write_file("/a/b.bin", b"x" * 1024)
        first = lab.fetch(lab.edges[0], "/a/b.bin")       # Host: www.example.test
        assert first.cache_status == "MISS"
        assert lab.fetch(lab.edges[0], "/a/b.bin").cache_status == "HIT"

Topology: edges -> shield -> origin (edges -> origin when ``shield=False``); Varnish, Squid and ATS nodes
(tier "edge", named ``varnish-1``, ``squid-1``, ``ats-1``...) use the shield when there is one, else the
origin. Every cache keys on ``$scheme$host$request_uri`` (Varnish, Squid, ATS: URL + Host), sends the client's
``Host`` upstream, caches 200/301/302 for an hour and nothing else (Squid and ATS keep no 302: it has no
explicit lifetime), drops its parent's ``X-Cache-Status`` and tells its own cache state: nginx in
``X-Cache-Status`` (``MISS``, ``HIT``, ``EXPIRED``, ...), Varnish and ATS in ``X-Cache`` (``HIT``/``MISS``),
Squid in ``X-Cache`` (``MISS from squid-1``, ``HIT from squid-1``; :attr:`LabResponse.cache_status` gives the
first word).

With ``tls=True`` the nginx caches (shield and edges) also listen for https on a port of their own
(:attr:`LabNode.tls_port`, :attr:`LabNode.tls_url`) with a self-signed certificate for ``DEFAULT_HOST``
that openssl makes in the lab's folder, and an edge passes an https request on to the shield over https (so
the shield's https key is the one filled); ``nodes_toml(https=True)`` and ``fetch(..., https=True)`` use
those ports.

Squid and ATS cache although the origin sends no cache headers: Squid by ``refresh_pattern . 60 100% 60
override-lastmod`` and ``store_miss deny`` for other statuses; ATS by ``proxy.config.http.cache.
required_headers 0``, a heuristic lifetime of exactly 3600 s, and a ``Cache-Control: no-store`` that
``header_rewrite`` adds to other statuses (ATS would keep a 410 by heuristic). Squid caches in memory only
(32 MB); ATS in a 64 MB file in the node's cache folder, with a 16 MB RAM cache. Squid forwards to its parent
as an accelerator (``http_port ... accel vhost``, ``cache_peer ... originserver``); ATS has no remap rule and
sends everything to its parent through ``parent.config``, so that its cache key keeps the client's Host.

Origin paths with a fixed meaning (everything else is a file under ``Lab.docroot``; a missing one is a 404):

- ``/status/CODE/...`` answers CODE, for CODE in :data:`STATUS_CODES` (301 and 302 redirect to ``/``).
- ``/nocache/...`` serves the file with ``Cache-Control: no-store``: caches answer ``MISS`` every time.
- ``/max-age-0/...`` with ``Cache-Control: public, max-age=0`` and ``/expired/...`` with an ``Expires`` of 1970:
  nginx does not store them either (the lab's Varnish does: its VCL gives every 200 an hour; ATS does not,
  Squid revalidates them and says HIT).
- ``/max-age-2/...`` with ``Cache-Control: public, max-age=2``: stored, and expired 2 s later.
- ``/slow/...`` serves the file at :data:`SLOW_RATE` bytes/s, for timeout tests.
- ``/vary/...`` serves the file gzipped to a request that accepts gzip, with ``Vary: Accept-Encoding`` (as
  most origins do): nginx caches keep one copy per ``Accept-Encoding`` value asked with.

Purge, as verified against the packages of Debian 12 (nginx 1.22.1, libnginx-mod-http-cache-purge 2.3,
Varnish 7.1, Squid 5.7, Traffic Server 9.2):

- nginx: a ``GET`` with ``X-Lab-Refetch: 1`` bypasses the cache (``proxy_cache_bypass``; ``X-Cache-Status:
  BYPASS``) and stores the answer anew: a purge by refetch (``purge_method = "GET"``), with or without the module.
- nginx with ``purge_module=True``: ``PURGE /path`` with the object's ``Host`` removes that one key and
  answers 200, or 404 when the key is not cached; only 127.0.0.1 may purge (others get 403). Debian ships
  FRiCKLE's ngx_cache_purge 2.3, which knows neither the trailing ``*`` wildcard nor ``purge_all`` (those
  are in the nginx-modules fork, 2.4+): ``PURGE /dir/*`` looks up the literal key ``.../dir/*`` and answers
  404, and ``proxy_cache_purge PURGE purge_all ...`` is a configuration error. A prefix purge on nginx has
  to enumerate the URLs (or wipe the cache folder).
- Varnish: ``PURGE /path`` removes every variant of URL + Host (200 ``Purged``); ``BAN /`` with
  ``X-Ban-Prefix: /dir/`` bans every object of that Host whose URL starts with the prefix, taken literally
  (200 ``Banned``), using the lurker-friendly ``obj.http.x-url``/``obj.http.x-host`` pattern. Only
  loopback clients may purge or ban (others get 405).
- Squid: ``PURGE /path`` with the object's ``Host`` removes URL + Host (200), 404 when not cached; enabled by
  ``acl purge method PURGE`` with ``http_access allow purge localhost`` then ``http_access deny purge``
  (others get 403). No prefix purge.
- ATS: ``PURGE /path`` with the object's ``Host`` removes URL + Host (200), 404 when not cached; allowed by an
  ``ip_allow.yaml`` rule with ``methods: ALL`` for 127.0.0.1 and one denying ``PURGE`` to ``0/0`` (others get
  403 ``Access Denied``), as Debian's own ``ip_allow.yaml`` has it. No prefix purge.

Access logs: :meth:`Lab.requests` parses a node's log (nginx ``access_log``; for Varnish a ``varnishncsa``
process the lab runs beside ``varnishd``; Squid's ``logformat``; ATS's ``logging.yaml``). A log line is
written just after the response is sent, so a test that reads the log right after a response should use
:meth:`Lab.wait_for_requests`; ATS writes its log in batches, about a second or two late.

Processes run with ``daemon off;`` / ``varnishd -F`` / ``squid -N`` / ``traffic_server`` (which has no daemon
mode of its own; the lab runs it without ``traffic_manager`` and its crash-log helper) in their own session
(process group), so ``stop()`` sends SIGTERM to each PID, waits up to ``stop_timeout`` and then SIGKILLs the
whole group (nginx workers, Varnish's child). Squid refuses to run as root: as root, the lab starts it in a
user namespace (``unshare --map-user``) where it runs as an ordinary user mapped to root outside, so it can use
the lab's private folders. ATS runs from a ``runroot.yaml`` whose every folder is inside the node's folder.
Nothing is written outside ``root`` (and ``cache_root``), nothing under ``/var``, except Squid's shared memory
segments, named after the lab folder and the node in ``/dev/shm``: Squid removes them when it exits, and
``stop()`` removes what a killed Squid left.
"""

from __future__ import annotations

import atexit
import contextlib
import http.client
import os
import re
import shutil
import signal
import socket
import ssl
import subprocess
import tempfile
import time
from collections.abc import Mapping
from dataclasses import dataclass
from pathlib import Path
from types import TracebackType
from typing import Literal, Self

from .procs import group_members

__all__ = [
    "DEFAULT_HOST",
    "SLOW_RATE",
    "STATUS_CODES",
    "Lab",
    "LabError",
    "LabNode",
    "LabRequest",
    "LabResponse",
    "process_group_members",
]

DEFAULT_HOST = "www.example.test"
"""The ``Host`` that :meth:`Lab.fetch` sends unless told otherwise (the origin answers for any host)."""

STATUS_CODES = (301, 302, 400, 403, 404, 408, 410, 429, 500, 502, 503, 504)
"""Codes the origin answers under ``/status/CODE/``."""

SLOW_RATE = 8192
"""Bytes per second the origin sends under ``/slow/``."""

READY_PATH = "/.lab/ready"
"""Answered by every node itself (never proxied, never logged), naming the node in ``X-Lab-Node``."""

NGINX = "/usr/sbin/nginx"
VARNISHD = "/usr/sbin/varnishd"
VARNISHNCSA = "/usr/bin/varnishncsa"
SQUID = "/usr/sbin/squid"
TRAFFIC_SERVER = "/usr/bin/traffic_server"
UNSHARE = "/usr/bin/unshare"
_ATS_PLUGINS = Path("/usr/lib/trafficserver/modules")
_ATS_BODY_FACTORY = Path("/etc/trafficserver/body_factory")
_SHM = Path("/dev/shm")
_NOBODY = 65534  # who Squid is inside its user namespace: any uid but 0 will do
_PURGE_MODULE = "ngx_http_cache_purge_module.so"
_PURGE_MODULE_DIRS = (Path("/usr/lib/nginx/modules"), Path("/usr/share/nginx/modules"))
_PURGE_MODULE_CONF = Path("/usr/share/nginx/modules-available/mod-http-cache-purge.conf")

Tier = Literal["origin", "shield", "edge"]
Kind = Literal["nginx", "varnish", "squid", "ats"]


class LabError(RuntimeError):
    """A lab process could not be started or stopped; the message carries the end of its log."""


@dataclass(frozen=True)
class LabNode:
    """One server of the lab. ``url`` is where to connect; the ``Host`` header picks the site. ``tls_port``:
    where the same server speaks https (nginx caches of a lab started with ``tls=True``), else None."""

    name: str
    port: int
    url: str
    tier: Tier
    kind: Kind
    access_log: Path
    folder: Path
    tls_port: int | None = None

    @property
    def tls_url(self) -> str | None:
        return None if self.tls_port is None else f"https://127.0.0.1:{self.tls_port}"


@dataclass(frozen=True)
class LabRequest:
    """One line of a node's access log. ``cache_status`` is None where the node did not use a cache.

    Squid's and ATS's result codes are shortened: ``TCP_MISS`` is ``MISS``, ``TCP_HIT`` and ``TCP_MEM_HIT`` are
    ``HIT``, other ``TCP_`` codes lose the prefix (``TCP_DENIED`` is ``DENIED``).
    """

    time: float
    method: str
    host: str
    uri: str
    status: int
    cache_status: str | None
    bytes: int


@dataclass(frozen=True)
class LabResponse:
    """What :meth:`Lab.fetch` read: status, headers (lower-case names) and the whole body."""

    status: int
    headers: Mapping[str, str]
    body: bytes

    @property
    def cache_status(self) -> str | None:
        """The node's own word on its cache: nginx ``X-Cache-Status``, else ``X-Cache`` (Varnish, ATS, Squid).

        Squid's ``HIT from squid-1`` gives ``HIT``: the word before `` from ``.
        """
        value = self.headers.get("x-cache-status") or self.headers.get("x-cache")
        return None if value is None else value.split(" from ", 1)[0].strip()


@dataclass
class _Proc:
    name: str
    popen: subprocess.Popen[bytes]
    log: Path


class Lab:
    """An origin, a shield, edges and Varnish, Squid and ATS nodes on loopback; a context manager that stops them.

    ``root`` holds one folder per node (config, logs, pid file, temp files) and the origin's ``docroot``;
    caches go under ``cache_root`` when given (benchmarks pass a folder in ``/dev/shm``; the lab removes its
    own cache folders there on stop), else under ``root``. ``workers`` is nginx's ``worker_processes``.
    ``tls``: the nginx caches (shield and edges) listen for https too, on a port of their own, with a
    self-signed certificate for ``DEFAULT_HOST`` (openssl makes it); the cache key holds the scheme.
    ``varnish_backend``: a loopback port the Varnish nodes fetch from instead of the shield or the origin (a
    ``FaultServer``, say).
    """

    def __init__(
        self,
        root: Path,
        *,
        edges: int = 2,
        shield: bool = True,
        varnish: int = 0,
        squid: int = 0,
        trafficserver: int = 0,
        purge_module: bool = False,
        cache_root: Path | None = None,
        workers: int = 1,
        varnish_storage: str = "malloc,64m",
        start_timeout: float = 15.0,
        stop_timeout: float = 10.0,
        tls: bool = False,
        varnish_backend: int | None = None,
    ) -> None:
        if min(edges, varnish, squid, trafficserver) < 0 or workers < 1:
            raise ValueError("edges, varnish, squid and trafficserver must be >= 0 and workers >= 1")
        self._edge_count = edges
        self._with_shield = shield
        self._varnish_count = varnish
        self._squid_count = squid
        self._ats_count = trafficserver
        self._purge_module = purge_module
        self._workers = workers
        self._varnish_storage = varnish_storage
        self._start_timeout = start_timeout
        self._stop_timeout = stop_timeout
        self._cache_root = cache_root
        self._tls = tls
        self._varnish_backend = varnish_backend
        root.mkdir(parents=True, exist_ok=True)
        self.root = Path(tempfile.mkdtemp(prefix="lab-", dir=root))
        self.docroot = self.root / "docroot"
        self.docroot.mkdir()
        self._procs: list[_Proc] = []
        self._squid_services: list[str] = []
        self._cache_dirs: list[Path] = []
        self._started = False
        self.origin: LabNode
        self.shield: LabNode | None = None
        self.edges: list[LabNode] = []
        self.varnishes: list[LabNode] = []
        self.squids: list[LabNode] = []
        self.trafficservers: list[LabNode] = []

    # -- lifecycle -------------------------------------------------------------------------------------

    def __enter__(self) -> Self:
        self.start()
        return self

    def __exit__(
        self, exc_type: type[BaseException] | None, exc: BaseException | None, tb: TracebackType | None
    ) -> None:
        self.stop()

    def start(self) -> None:
        """Start every node and wait until each answers; retries on a port taken meanwhile (3 tries)."""
        if self._started:
            raise LabError("lab already started")
        if self._purge_module:
            _purge_module_path()  # fail before starting anything
        atexit.register(self.stop)
        self._started = True
        for attempt in range(3):
            try:
                self._start_once(attempt)
                return
            except _PortTaken:
                self._stop_processes()
            except BaseException:
                self.stop()
                raise
        self.stop()
        raise LabError("could not find free loopback ports in 3 tries")

    def stop(self) -> None:
        """Stop each process by PID: SIGTERM, then SIGKILL to its group after ``stop_timeout``. Idempotent."""
        atexit.unregister(self.stop)
        self._stop_processes()
        self._remove_squid_segments()
        if self._cache_root is not None:  # under root they stay for inspection, like the logs
            for folder in self._cache_dirs:
                shutil.rmtree(folder, ignore_errors=True)
        self._cache_dirs.clear()

    @property
    def pids(self) -> dict[str, int]:
        """PID of every running process by name (``varnish-1`` and its log reader ``varnish-1-ncsa``)."""
        return {proc.name: proc.popen.pid for proc in self._procs}

    # -- nodes -----------------------------------------------------------------------------------------

    def cache_nodes(self) -> list[LabNode]:
        """The cache nodes in warming order: the shield first, then the edges, Varnish, Squid and ATS nodes."""
        shields = [self.shield] if self.shield is not None else []
        return [*shields, *self.edges, *self.varnishes, *self.squids, *self.trafficservers]

    def nodes(self) -> list[LabNode]:
        """The origin, then :meth:`cache_nodes`."""
        return [self.origin, *self.cache_nodes()]

    def node(self, name: str) -> LabNode:
        """The node called ``name`` (``origin``, ``shield-1``, ``edge-2``, ``varnish-1``, ``ats-1``...)."""
        for node in self.nodes():
            if node.name == name:
                return node
        raise KeyError(name)

    def kill(self, name: str) -> None:
        """SIGKILL node ``name`` (its process group), as a crash would, and wait for it: connections to it are
        refused until :meth:`restart`."""
        for proc in [p for p in self._procs if p.name == name]:
            with contextlib.suppress(ProcessLookupError, PermissionError):
                os.killpg(proc.popen.pid, signal.SIGKILL)
            proc.popen.wait(timeout=self._stop_timeout)
            self._procs.remove(proc)

    def restart(self, name: str) -> None:
        """Start node ``name`` again (after :meth:`kill`) on its port, with its config; wait until it answers. An
        nginx node keeps its cache and its access log; a Varnish node comes back empty (its storage is in
        memory), with a fresh access log: what the killed instance logged is added to ``access_log`` with the
        suffix ``.before`` (its log reader is stopped and started again with it)."""
        node = self.node(name)
        if node.kind not in ("nginx", "varnish") or any(p.name == name for p in self._procs):
            raise LabError(f"{name}: only an nginx or Varnish node that was killed can be restarted")
        deadline = time.monotonic() + self._start_timeout
        if node.kind == "nginx":
            self._spawn_nginx(node)
            self._wait_ready(node, deadline)
            return
        self.kill(f"{name}-ncsa")
        if node.access_log.exists():  # varnishncsa -w would write over it
            with node.access_log.with_name(f"{node.access_log.name}.before").open("ab") as before:
                before.write(node.access_log.read_bytes())
            node.access_log.unlink()
        self._spawn_varnish(node, self._varnish_backend or (self.shield or self.origin).port)
        self._wait_ready(node, deadline)
        self._spawn_varnishncsa(node, deadline)

    def nodes_toml(self, *, https: bool = False) -> str:
        """The ``[[nodes]]`` tables of an edgewarm config listing :meth:`cache_nodes`; with ``https``, each node
        that has a ``tls_url`` is given by it (``tls_verify = false``: the lab's certificate is self-signed)."""
        tables = []
        for n in self.cache_nodes():
            url, extra = (n.tls_url, "tls_verify = false\n") if https and n.tls_url else (n.url, "")
            tables.append(f'[[nodes]]\nname = "{n.name}"\nurl = "{url}"\ntier = "{n.tier}"\nkind = "{n.kind}"\n{extra}')
        return "\n".join(tables)

    # -- content ---------------------------------------------------------------------------------------

    def write_file(self, path: str, data: bytes) -> None:
        """Make the origin serve ``data`` at ``path`` (e.g. ``/a/b.bin``), replacing the file atomically."""
        target = self._docroot_path(path)
        target.parent.mkdir(parents=True, exist_ok=True)
        partial = target.with_name(f".{target.name}.part")
        partial.write_bytes(data)
        os.replace(partial, target)

    def delete_file(self, path: str) -> None:
        """Remove ``path`` from the origin (it answers 404 from then on)."""
        self._docroot_path(path).unlink()

    def make_files(self, count: int, size: int, prefix: str = "/f/") -> list[str]:
        """Write ``count`` files of ``size`` bytes under ``prefix`` and return their paths.

        Each body starts with its own path so that a mixed-up response shows. 20,000 small files take
        1-2 s on a local disk (less with ``root`` on tmpfs), mostly the kernel creating them.
        """
        if not prefix.startswith("/") or not prefix.endswith("/"):
            raise ValueError("prefix must start and end with '/'")
        folder = self._docroot_path(prefix + "x").parent
        folder.mkdir(parents=True, exist_ok=True)
        filler = os.urandom(min(size, 1 << 16))
        filler = (filler * (size // len(filler) + 1))[:size] if filler else b""
        paths = []
        base = f"{folder}/"
        for i in range(count):
            name = f"{i:06d}.bin"
            path = prefix + name
            head = path.encode() + b"\n"
            _write_all(base + name, (head + filler[len(head) :])[:size])
            paths.append(path)
        return paths

    def _docroot_path(self, path: str) -> Path:
        if not path.startswith("/") or "?" in path or "#" in path or {".", ".."} & set(path.split("/")):
            raise ValueError(f"not an absolute, normalized URL path: {path!r}")
        return self.docroot / path.lstrip("/")

    # -- HTTP and logs ---------------------------------------------------------------------------------

    def fetch(
        self,
        node: LabNode,
        path: str,
        *,
        host: str = DEFAULT_HOST,
        method: str = "GET",
        headers: Mapping[str, str] | None = None,
        timeout: float = 10.0,
        https: bool = False,
    ) -> LabResponse:
        """Send one request to ``node`` with ``Host: host`` and read the whole answer (stdlib, blocking); with
        ``https``, to its ``tls_url`` (the certificate is not checked)."""
        conn: http.client.HTTPConnection
        if https:
            if node.tls_port is None:
                raise LabError(f"{node.name} has no https port (start the lab with tls=True)")
            insecure = ssl.create_default_context()
            insecure.check_hostname = False
            insecure.verify_mode = ssl.CERT_NONE
            conn = http.client.HTTPSConnection("127.0.0.1", node.tls_port, timeout=timeout, context=insecure)
        else:
            conn = http.client.HTTPConnection("127.0.0.1", node.port, timeout=timeout)
        try:
            conn.request(method, path, headers={"Host": host, **(headers or {})})
            resp = conn.getresponse()
            body = resp.read()
            return LabResponse(resp.status, {k.lower(): v for k, v in resp.getheaders()}, body)
        finally:
            conn.close()

    def requests(self, node: LabNode) -> list[LabRequest]:
        """Every request ``node`` logged so far, oldest first."""
        try:
            text = node.access_log.read_text(encoding="utf-8", errors="replace")
        except FileNotFoundError:
            return []
        parsed = (_parse_log_line(line) for line in text.splitlines())
        return [r for r in parsed if r is not None and r.uri != READY_PATH]

    def wait_for_requests(
        self, node: LabNode, count: int, *, uri: str | None = None, timeout: float = 5.0
    ) -> list[LabRequest]:
        """:meth:`requests` (only those for ``uri`` if given) once there are ``count`` of them.

        Raises :class:`LabError` after ``timeout`` seconds.
        """
        deadline = time.monotonic() + timeout
        while True:
            found = [r for r in self.requests(node) if uri is None or r.uri == uri]
            if len(found) >= count:
                return found
            if time.monotonic() > deadline:
                raise LabError(f"{node.name} logged {len(found)} requests, not {count}, in {timeout}s")
            time.sleep(0.01)

    # -- starting --------------------------------------------------------------------------------------

    def _start_once(self, attempt: int) -> None:
        names = ["origin"]
        names += ["shield-1"] if self._with_shield else []
        names += [f"edge-{i}" for i in range(1, self._edge_count + 1)]
        names += [f"varnish-{i}" for i in range(1, self._varnish_count + 1)]
        names += [f"squid-{i}" for i in range(1, self._squid_count + 1)]
        names += [f"ats-{i}" for i in range(1, self._ats_count + 1)]
        # Every port is fixed before any config is written: the configs point at each other.
        tls_names = [f"{n}-tls" for n in names if self._tls and n.startswith(("shield-", "edge-"))]
        ports = dict(zip(names + tls_names, _free_ports(len(names) + len(tls_names)), strict=True))
        if tls_names and not (self.root / "tls" / "cert.pem").exists():
            self_signed(self.root / "tls", DEFAULT_HOST)

        self.origin = self._node(ports, "origin", "origin", "nginx", attempt)
        self.shield = self._node(ports, "shield-1", "shield", "nginx", attempt) if self._with_shield else None
        self.edges = [self._node(ports, n, "edge", "nginx", attempt) for n in names if n.startswith("edge-")]
        self.varnishes = [self._node(ports, n, "edge", "varnish", attempt) for n in names if n.startswith("varnish-")]
        self.squids = [self._node(ports, n, "edge", "squid", attempt) for n in names if n.startswith("squid-")]
        self.trafficservers = [self._node(ports, n, "edge", "ats", attempt) for n in names if n.startswith("ats-")]
        parent = self.shield or self.origin

        self._spawn_nginx(self.origin, self._origin_conf(self.origin))
        if self.shield is not None:
            self._spawn_nginx(self.shield, self._cache_conf(self.shield, self.origin))
        for edge in self.edges:
            self._spawn_nginx(edge, self._cache_conf(edge, parent))
        for node in self.varnishes:
            self._spawn_varnish(node, self._varnish_backend or parent.port)
        for node in self.squids:
            self._spawn_squid(node, parent)
        for node in self.trafficservers:
            self._spawn_trafficserver(node, parent)

        deadline = time.monotonic() + self._start_timeout
        for node in self.nodes():
            self._wait_ready(node, deadline)
        for node in self.varnishes:
            self._spawn_varnishncsa(node, deadline)

    def _node(self, ports: dict[str, int], name: str, tier: Tier, kind: Kind, attempt: int) -> LabNode:
        folder = self.root / (name if attempt == 0 else f"{name}.{attempt}")
        folder.mkdir()
        port = ports[name]
        tls_port = ports.get(f"{name}-tls")
        return LabNode(name, port, f"http://127.0.0.1:{port}", tier, kind, folder / "access.log", folder, tls_port)

    def _cache_dir(self, node: LabNode) -> Path:
        if self._cache_root is None:
            folder = node.folder / "cache"
            folder.mkdir()
        else:
            self._cache_root.mkdir(parents=True, exist_ok=True)
            folder = Path(tempfile.mkdtemp(prefix=f"{node.name}-", dir=self._cache_root))
        self._cache_dirs.append(folder)
        return folder

    def _spawn(self, name: str, argv: list[str], folder: Path) -> _Proc:
        log = folder / "stderr.log"
        with log.open("ab") as out:
            popen = subprocess.Popen(
                argv,
                stdin=subprocess.DEVNULL,
                stdout=out,
                stderr=subprocess.STDOUT,
                cwd=folder,
                start_new_session=True,  # own process group: stop() can reach workers and children
            )
        proc = _Proc(name, popen, log)
        self._procs.append(proc)
        return proc

    def _spawn_nginx(self, node: LabNode, conf: str | None = None) -> None:
        """Start nginx `node` with `conf` written first, or with the config it was given before."""
        path = node.folder / "nginx.conf"
        if conf is not None:
            path.write_text(conf)
        self._spawn(
            node.name,
            [NGINX, "-p", f"{node.folder}/", "-c", str(path), "-e", str(node.folder / "error.log")],
            node.folder,
        )

    def _spawn_varnish(self, node: LabNode, backend_port: int) -> None:
        vcl = node.folder / "lab.vcl"
        vcl.write_text(_VCL.replace("@BACKEND_PORT@", str(backend_port)).replace("@NAME@", node.name))
        workdir = node.folder / "varnishd"
        argv = [VARNISHD, "-F", "-n", str(workdir), "-a", f"127.0.0.1:{node.port}", "-f", str(vcl)]
        # -j none: no jail, so the unprivileged Varnish users need no access to our private temp folder.
        argv += ["-s", self._varnish_storage, "-j", "none", "-T", "127.0.0.1:0"]
        self._spawn(node.name, argv, node.folder)

    def _spawn_squid(self, node: LabNode, parent: LabNode) -> None:
        conf = node.folder / "squid.conf"
        conf.write_text(_squid_conf(node, parent))
        service = _squid_service(node)
        self._squid_services.append(service)
        argv = [SQUID, "-N", "-n", service, "-f", str(conf)]
        if os.geteuid() == 0:
            # Squid will not run as root and would switch to its own user, who cannot enter our 0700 folders.
            # In a user namespace it is an ordinary user inside and still root outside, the folders' owner.
            argv = [UNSHARE, f"--map-user={_NOBODY}", f"--map-group={_NOBODY}", *argv]
        self._spawn(node.name, argv, node.folder)

    def _spawn_trafficserver(self, node: LabNode, parent: LabNode) -> None:
        cache = self._cache_dir(node)
        etc = node.folder / "etc"
        etc.mkdir()
        for name, text in _ats_files(node, parent, cache).items():
            (etc / name).write_text(text)
        runroot = node.folder / "runroot.yaml"
        runroot.write_text(_ats_runroot(node, cache))
        self._spawn(node.name, [TRAFFIC_SERVER, f"--run-root={runroot}"], node.folder)

    def _remove_squid_segments(self) -> None:
        """Squid's shared memory in /dev/shm, which it removes itself unless it was killed."""
        for service in self._squid_services:
            for segment in _SHM.glob(f"{service}-*.shm"):
                segment.unlink(missing_ok=True)
        self._squid_services.clear()

    def _spawn_varnishncsa(self, node: LabNode, deadline: float) -> None:
        fmt = r"%{%s}t.%{usec_frac}t\t%m\t%{Host}i\t%U%q\t%s\t%{Varnish:handling}x\t%b"
        argv = [VARNISHNCSA, "-n", str(node.folder / "varnishd"), "-F", fmt, "-w", str(node.access_log)]
        proc = self._spawn(f"{node.name}-ncsa", argv, node.folder)
        # varnishncsa only reports requests it saw once attached: a ready probe that shows up in the log
        # proves it is attached (requests() hides the probe lines).
        while True:
            _probe(node)
            if _log_mentions(node.access_log, READY_PATH):
                return
            if proc.popen.poll() is not None:
                raise LabError(f"varnishncsa for {node.name} exited: {_tail(proc.log)}")
            if time.monotonic() > deadline:
                raise LabError(f"varnishncsa for {node.name} logged nothing in time: {_tail(proc.log)}")
            time.sleep(0.05)

    def _wait_ready(self, node: LabNode, deadline: float) -> None:
        proc = next(p for p in self._procs if p.name == node.name)
        # ATS writes to diags.log, and keeps running when it cannot listen: its log tells.
        logs = (proc.log, node.folder / "error.log", node.folder / "diags.log")
        while True:
            if proc.popen.poll() is not None:
                text = "".join(_tail(log) for log in logs)
                if "already in use" in text:
                    raise _PortTaken(node.name)
                raise LabError(f"{node.name} exited with {proc.popen.returncode}: {text}")
            answer = _probe(node)
            if answer == node.name:
                return
            if answer is not None:  # somebody else answers on our port
                raise _PortTaken(node.name)
            if node.kind == "ats" and _log_mentions(logs[2], "Address already in use"):
                raise _PortTaken(node.name)
            if time.monotonic() > deadline:
                raise LabError(f"{node.name} not ready in {self._start_timeout}s: {_tail(proc.log)}")
            time.sleep(0.02)

    # -- stopping --------------------------------------------------------------------------------------

    def _stop_processes(self) -> None:
        procs = list(reversed(self._procs))
        for proc in procs:
            if proc.popen.poll() is None:
                with contextlib.suppress(ProcessLookupError):
                    os.kill(proc.popen.pid, signal.SIGTERM)
        deadline = time.monotonic() + self._stop_timeout
        for proc in procs:
            with contextlib.suppress(subprocess.TimeoutExpired):  # SIGKILL follows
                proc.popen.wait(timeout=max(0.0, deadline - time.monotonic()))
        for proc in procs:
            # The leader's own group (start_new_session): also catches workers left by a killed master.
            with contextlib.suppress(ProcessLookupError, PermissionError):
                os.killpg(proc.popen.pid, signal.SIGKILL)
            try:
                proc.popen.wait(timeout=self._stop_timeout)
            except subprocess.TimeoutExpired as exc:
                raise LabError(f"{proc.name} (pid {proc.popen.pid}) survived SIGKILL") from exc
        self._procs.clear()

    # -- configuration ---------------------------------------------------------------------------------

    def _main_conf(self, node: LabNode, http_block: str) -> str:
        folder = node.folder
        user = "user root root;\n" if os.geteuid() == 0 else ""  # workers must write our 0700 temp folders
        purge = self._purge_module and node.tier != "origin"
        module = f"load_module {_purge_module_path()};\n" if purge else ""
        mime = "include /etc/nginx/mime.types;" if Path("/etc/nginx/mime.types").exists() else ""
        return f"""{module}daemon off;
master_process on;
{user}worker_processes {self._workers};
pid {folder}/nginx.pid;
lock_file {folder}/nginx.lock;
error_log {folder}/error.log warn;
events {{ worker_connections 4096; }}
http {{
    {mime}
    default_type application/octet-stream;
    log_format lab escape=default
        '$msec\t$request_method\t$host\t$request_uri\t$status\t$upstream_cache_status\t$body_bytes_sent';
    access_log {node.access_log} lab;
    client_body_temp_path {folder}/client_body_temp;
    proxy_temp_path {folder}/proxy_temp;
    fastcgi_temp_path {folder}/fastcgi_temp;
    uwsgi_temp_path {folder}/uwsgi_temp;
    scgi_temp_path {folder}/scgi_temp;
    sendfile on;
    tcp_nopush on;
    keepalive_requests 100000;
    keepalive_timeout 60s;
{http_block}
}}
"""

    def _tls_listen(self, node: LabNode) -> str:
        if node.tls_port is None:
            return ""
        folder = self.root / "tls"
        return f"""        listen 127.0.0.1:{node.tls_port} ssl default_server;
        ssl_certificate {folder}/cert.pem;
        ssl_certificate_key {folder}/key.pem;"""

    def _ready_location(self, node: LabNode) -> str:
        return f"""        location = {READY_PATH} {{
            access_log off;
            add_header X-Lab-Node {node.name} always;
            return 204;
        }}"""

    def _origin_conf(self, node: LabNode) -> str:
        statuses = "\n".join(_status_location(code) for code in STATUS_CODES)
        block = f"""    server {{
        listen 127.0.0.1:{node.port} default_server;
        server_name _;
        root {self.docroot};
        open_file_cache off;  # a changed file shows at once
        absolute_redirect off;
{self._ready_location(node)}
{statuses}
        location @lab_408 {{ return 200 "Request Timeout\\n"; }}
        location ^~ /nocache/ {{ add_header Cache-Control "no-store" always; }}
        location ^~ /surrogate-no-store/ {{ add_header Surrogate-Control "no-store" always; }}
        location ^~ /max-age-0/ {{ add_header Cache-Control "public, max-age=0" always; }}
        location ^~ /max-age-2/ {{ add_header Cache-Control "public, max-age=2" always; }}
        location ^~ /expired/ {{ add_header Expires "Thu, 01 Jan 1970 00:00:00 GMT" always; }}
        location ^~ /slow/ {{ limit_rate {SLOW_RATE}; }}
        location ^~ /vary/ {{ gzip on; gzip_vary on; gzip_types *; gzip_min_length 1; gzip_proxied any; }}
        location / {{ }}
    }}"""
        return self._main_conf(node, block)

    def _cache_conf(self, node: LabNode, upstream: LabNode) -> str:
        cache = self._cache_dir(node)
        purge = _NGINX_PURGE if self._purge_module else ""
        if upstream.tls_port is None:
            parents, proxy_pass = _upstream("parent", upstream.port), "proxy_pass http://parent;"
        else:  # an https request goes on to the parent over https: the parent's cache key holds the scheme too
            parents = _upstream("parent_http", upstream.port) + _upstream("parent_https", upstream.tls_port)
            proxy_pass = "proxy_pass $scheme://parent_$scheme;\n            proxy_ssl_server_name on;"
            proxy_pass += "\n            proxy_ssl_name $host;"
        block = f"""    proxy_cache_path {cache} levels=1:2 keys_zone=lab:32m inactive=1d use_temp_path=off;
{parents}
    server {{
        listen 127.0.0.1:{node.port} default_server;
        server_name _;
{self._tls_listen(node)}
{self._ready_location(node)}
{purge}
        location / {{
            {proxy_pass}
            proxy_http_version 1.1;
            proxy_set_header Connection "";
            proxy_set_header Host $host;
            proxy_cache lab;
            proxy_cache_key $scheme$host$request_uri;
            proxy_cache_valid 200 301 302 1h;
            proxy_cache_lock on;
            proxy_cache_lock_timeout 60s;
            proxy_cache_bypass $http_x_lab_refetch;  # purge_method = "GET" with this header: refetched, stored anew
            proxy_hide_header X-Cache-Status;  # each node reports its own cache, not its parent's
            add_header X-Cache-Status $upstream_cache_status always;
        }}
    }}"""
        return self._main_conf(node, block)


# The cache-purge module's "same location" form (proxy_cache_purge PURGE from ...; beside proxy_cache) makes
# Debian 12's 2.3 build segfault the worker on every PURGE (FRiCKLE/ngx_cache_purge#68: nginx >= 1.11.6
# changed a struct the module copies). Its separate-location form works, so PURGE is routed to one, keyed
# on the original $request_uri exactly as proxy_cache_key is.
_NGINX_PURGE = """        if ($request_method = PURGE) {
            rewrite ^ /.lab/purge last;
        }
        location = /.lab/purge {
            internal;
            allow 127.0.0.1;
            deny all;
            proxy_cache_purge lab $scheme$host$request_uri;
        }"""


class _PortTaken(Exception):
    """A port picked as free was taken before our server bound it."""


_VCL = r"""vcl 4.1;

# Lab node @NAME@: caches 200/301/302 for 1h, keys on URL + Host (the built-in vcl_hash), PURGE and BAN
# (X-Ban-Prefix) from loopback, X-Cache: HIT|MISS.

backend parent {
    .host = "127.0.0.1";
    .port = "@BACKEND_PORT@";
}

acl purgers {
    "127.0.0.1";
    "::1";
}

sub vcl_recv {
    if (req.url == "/.lab/ready") {
        return (synth(204, "Ready"));
    }
    if (req.method == "PURGE") {
        if (client.ip !~ purgers) {
            return (synth(405, "Not allowed"));
        }
        return (purge);
    }
    if (req.method == "BAN") {
        if (client.ip !~ purgers) {
            return (synth(405, "Not allowed"));
        }
        if (!req.http.X-Ban-Prefix) {
            return (synth(400, "X-Ban-Prefix required"));
        }
        # The prefix is literal: escape regex metacharacters before it becomes a regex.
        ban("obj.http.x-host == " + req.http.host + " && obj.http.x-url ~ ^" +
            regsuball(req.http.X-Ban-Prefix, {"([\\^$.|?*+()\[\]{}])"}, {"\\\1"}));
        return (synth(200, "Banned"));
    }
}

sub vcl_backend_response {
    # For bans by the ban lurker, which sees only the object.
    set beresp.http.x-url = bereq.url;
    set beresp.http.x-host = bereq.http.host;
    # Each node reports its own cache, not its parent's.
    unset beresp.http.X-Cache-Status;
    if (beresp.status == 200 || beresp.status == 301 || beresp.status == 302) {
        set beresp.ttl = 1h;
    } else {
        set beresp.ttl = 0s;
        set beresp.uncacheable = true;
        return (deliver);
    }
    # Falls through to the built-in rules: Cache-Control no-store/private still makes it uncacheable.
}

sub vcl_deliver {
    if (obj.hits > 0) {
        set resp.http.X-Cache = "HIT";
    } else {
        set resp.http.X-Cache = "MISS";
    }
    unset resp.http.x-url;
    unset resp.http.x-host;
}

sub vcl_synth {
    if (req.url == "/.lab/ready") {
        set resp.http.X-Lab-Node = "@NAME@";
    }
}
"""


def _squid_service(node: LabNode) -> str:
    """Squid's ``-n`` name, alphanumeric: it names the shared memory segments, so it must be unique."""
    return re.sub(r"[^A-Za-z0-9]", "", f"{node.folder.parent.name}{node.folder.name}")


def _squid_conf(node: LabNode, parent: LabNode) -> str:
    folder = node.folder
    # The log format's separators are tabs (Squid copies text between %codes as it is); %<sH is the body
    # bytes sent, like nginx's $body_bytes_sent (%<st would count the headers too).
    return f"""# Lab node {node.name}: an accelerator for 127.0.0.1:{parent.port}, keyed on URL + Host (vhost).
http_port 127.0.0.1:{node.port} accel vhost
cache_peer 127.0.0.1 parent {parent.port} 0 no-query no-digest originserver name=parent
never_direct allow all
visible_hostname {node.name}
pid_filename {folder}/squid.pid
cache_log {folder}/error.log
coredump_dir {folder}
netdb_filename none
pinger_enable off
shutdown_lifetime 0 seconds
dns_nameservers 127.0.0.1
udp_incoming_address 127.0.0.1
cache_mem 32 MB
maximum_object_size 8 MB
maximum_object_size_in_memory 8 MB
memory_cache_shared off

acl lab_ready urlpath_regex ^/\\.lab/ready$
acl purge method PURGE
acl lab_cacheable http_status 200 301 302
http_access deny lab_ready
http_access allow purge localhost
http_access deny purge
http_access allow all

# The origin sends no cache headers: an hour for whatever Squid may store, and it stores only these statuses.
refresh_pattern . 60 100% 60 override-lastmod
store_miss deny !lab_cacheable

# Each node reports its own cache, not its parent's; the ready probe is denied (403) naming the node.
reply_header_access X-Cache-Status deny all
reply_header_add X-Lab-Node "{node.name}" lab_ready
logformat lab %ts.%03tu\t%rm\t%{{Host}}>h\t%>rp\t%>Hs\t%Ss\t%<sH
access_log stdio:{node.access_log} logformat=lab !lab_ready
"""


def _ats_runroot(node: LabNode, cache: Path) -> str:
    folder = node.folder
    return f"""prefix: {folder}
exec_prefix: /usr
bindir: /usr/bin
sbindir: /usr/bin
sysconfdir: {folder}/etc
datadir: {folder}
includedir: /usr/include
libdir: /usr/lib/trafficserver
libexecdir: {_ATS_PLUGINS}
localstatedir: {folder}
runtimedir: {folder}
logdir: {folder}
cachedir: {cache}
"""


def _ats_files(node: LabNode, parent: LabNode, cache: Path) -> dict[str, str]:
    """Traffic Server's configuration files, by name; the empty ones only stop it from looking elsewhere."""
    records = f"""CONFIG proxy.config.admin.user_id STRING #-1
CONFIG proxy.config.crash_log_helper STRING NULL
CONFIG proxy.config.http.server_ports STRING {node.port}:ipv4:ip-in=127.0.0.1
CONFIG proxy.config.http.wait_for_cache INT 2
CONFIG proxy.config.exec_thread.autoconfig INT 0
CONFIG proxy.config.exec_thread.limit INT 1
CONFIG proxy.config.task_threads INT 1
CONFIG proxy.config.accept_threads INT 1
CONFIG proxy.config.cache.threads_per_disk INT 2
CONFIG proxy.config.cache.ram_cache.size INT 16777216
CONFIG proxy.config.net.connections_throttle INT 1000
CONFIG proxy.config.http.cache.required_headers INT 0
CONFIG proxy.config.http.cache.heuristic_min_lifetime INT 3600
CONFIG proxy.config.http.cache.heuristic_max_lifetime INT 3600
CONFIG proxy.config.http.cache.when_to_revalidate INT 0
CONFIG proxy.config.http.negative_caching_enabled INT 0
CONFIG proxy.config.http.insert_response_via_str INT 0
CONFIG proxy.config.url_remap.remap_required INT 0
CONFIG proxy.config.http.no_dns_just_forward_to_parent INT 1
CONFIG proxy.config.http.parent_proxy.self_detect INT 0
CONFIG proxy.config.dns.nameservers STRING 127.0.0.1
CONFIG proxy.config.dns.resolv_conf STRING NULL
CONFIG proxy.config.body_factory.template_sets_dir STRING {_ATS_BODY_FACTORY}
CONFIG proxy.config.log.logging_enabled INT 3
CONFIG proxy.config.log.rolling_enabled INT 0
CONFIG proxy.config.log.max_secs_per_buffer INT 1
CONFIG proxy.config.log.periodic_tasks_interval INT 1
"""
    # No remap rule: ATS then keys its cache on the URL the client's Host makes, and parent.config sends
    # every request to the parent as an origin server, Host unchanged. self_detect 0: the parent lives on
    # 127.0.0.1 like ATS itself, which ATS would otherwise take for a loop and mark down.
    parents = f'dest_domain=. parent="127.0.0.1:{parent.port}" go_direct=false parent_is_proxy=false\n'
    # PURGE from loopback only, as Debian's own ip_allow.yaml has it.
    ip_allow = """ip_allow:
  - apply: in
    ip_addrs: 127.0.0.1
    action: allow
    methods: ALL
  - apply: in
    ip_addrs: 0/0
    action: deny
    methods: [PURGE, PUSH, DELETE, TRACE]
"""
    # Separated by tabs (YAML's "\t"); cquup is the path and query the client sent.
    logging = """logging:
  formats:
    - name: lab
      format: "%<cqtq>\\t%<cqhm>\\t%<{Host}cqh>\\t%<cquup>\\t%<pssc>\\t%<crc>\\t%<pscl>"
  filters:
    - name: lab_ready
      action: reject
      condition: cquup MATCH /.lab/ready
  logs:
    - filename: access
      format: lab
      filters: [lab_ready]
      mode: ascii
"""
    # header_rewrite: the ready probe answered by ATS itself (204, naming the node); other statuses than
    # 200/301/302 made uncacheable before ATS decides (it would keep a 410 by heuristic); X-Cache for every
    # answer (hit-fresh is a HIT; a miss, a stale hit being revalidated or a skipped lookup is a MISS).
    rules = f"""cond %{{READ_REQUEST_HDR_HOOK}} [AND]
cond %{{CLIENT-URL:PATH}} =".lab/ready"
set-status 204

cond %{{SEND_RESPONSE_HDR_HOOK}} [AND]
cond %{{CLIENT-URL:PATH}} =".lab/ready"
set-header X-Lab-Node "{node.name}"

cond %{{READ_RESPONSE_HDR_HOOK}} [AND]
cond %{{STATUS}} =200 [NOT,AND]
cond %{{STATUS}} =301 [NOT,AND]
cond %{{STATUS}} =302 [NOT]
set-header Cache-Control "no-store"

cond %{{SEND_RESPONSE_HDR_HOOK}}
rm-header X-Cache-Status
set-header X-Cache "MISS"

cond %{{SEND_RESPONSE_HDR_HOOK}} [AND]
cond %{{CACHE}} ="hit-fresh"
set-header X-Cache "HIT"
"""
    empty = "remap.config cache.config hosting.config volume.config ssl_multicert.config sni.yaml splitdns.config"
    empty += " socks.config strategies.yaml"
    return {
        "records.config": records,
        "storage.config": f"{cache} 64M\n",
        "parent.config": parents,
        "ip_allow.yaml": ip_allow,
        "logging.yaml": logging,
        "lab.hrw": rules,
        "plugin.config": f"header_rewrite.so {node.folder / 'etc' / 'lab.hrw'}\n",
        **dict.fromkeys(empty.split(), ""),
    }


def _status_location(code: int) -> str:
    if code in (301, 302):
        return f"        location ^~ /status/{code}/ {{ return {code} /; }}"
    if code == 408:
        # `return 408` makes nginx drop the connection without an answer; error_page can send the code.
        return "        location ^~ /status/408/ { error_page 418 =408 @lab_408; return 418; }"
    return f"        location ^~ /status/{code}/ {{ return {code}; }}"


def _free_ports(count: int) -> list[int]:
    """Distinct free loopback ports: all sockets are held open at once so the kernel cannot repeat one."""
    with contextlib.ExitStack() as stack:
        socks = [stack.enter_context(socket.socket(socket.AF_INET, socket.SOCK_STREAM)) for _ in range(count)]
        for sock in socks:
            sock.bind(("127.0.0.1", 0))
        return [int(sock.getsockname()[1]) for sock in socks]


def _upstream(name: str, port: int) -> str:
    return f"""    upstream {name} {{
        server 127.0.0.1:{port};
        keepalive 64;
        keepalive_requests 100000;
    }}
"""


def self_signed(folder: Path, host: str) -> tuple[Path, Path]:
    """A key and a self-signed certificate for ``host`` in ``folder``, by openssl: (cert.pem, key.pem)."""
    folder.mkdir(parents=True, exist_ok=True)
    names = ["-subj", f"/CN={host}", "-addext", f"subjectAltName=DNS:{host}"]
    files = ["-keyout", str(folder / "key.pem"), "-out", str(folder / "cert.pem")]
    argv = ["openssl", "req", "-x509", "-newkey", "rsa:2048", "-nodes", "-days", "2", *names, *files]
    try:
        subprocess.run(argv, check=True, capture_output=True, timeout=60)
    except (OSError, subprocess.SubprocessError) as exc:
        raise LabError(f"openssl could not make a certificate for {host}: {exc}") from exc
    return folder / "cert.pem", folder / "key.pem"


def _probe(node: LabNode) -> str | None:
    """The ``X-Lab-Node`` of whoever answers on ``node.port``: "" if it sends none, None if nobody answers."""
    conn = http.client.HTTPConnection("127.0.0.1", node.port, timeout=1.0)
    try:
        conn.request("GET", READY_PATH, headers={"Host": "lab.invalid"})
        resp = conn.getresponse()
        resp.read()
        return resp.getheader("X-Lab-Node") or ""
    except (OSError, http.client.HTTPException):
        return None
    finally:
        conn.close()


def _purge_module_path() -> Path:
    """Where Debian's libnginx-mod-http-cache-purge put its module (absolute: nginx runs with our prefix)."""
    candidates = [d / _PURGE_MODULE for d in _PURGE_MODULE_DIRS]
    if _PURGE_MODULE_CONF.exists():
        match = re.search(r"load_module\s+(\S+?);", _PURGE_MODULE_CONF.read_text())
        if match:
            named = Path(match.group(1))
            candidates.insert(0, named if named.is_absolute() else Path("/usr/share/nginx") / named)
    for path in candidates:
        if path.exists():
            return path.resolve()
    raise LabError(f"{_PURGE_MODULE} not found (apt-get install libnginx-mod-http-cache-purge)")


def _parse_log_line(line: str) -> LabRequest | None:
    parts = line.split("\t")
    if len(parts) != 7:
        return None
    stamp, method, host, uri, status, cache, size = parts
    try:
        return LabRequest(
            time=float(stamp),
            method=method,
            host=host,
            uri=uri,
            status=int(status),
            cache_status=_cache_word(cache),
            bytes=0 if size == "-" else int(size),
        )
    except ValueError:
        return None


def _cache_word(logged: str) -> str | None:
    if logged in {"-", ""}:
        return None
    word = logged.upper()
    if not word.startswith("TCP_"):  # nginx's $upstream_cache_status, Varnish's handling
        return word
    word = word.removeprefix("TCP_")  # Squid's and ATS's result codes
    if word.endswith("HIT"):
        return "HIT"
    return "MISS" if word.endswith("MISS") else word


def _write_all(path: str, data: bytes) -> None:
    fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o644)
    try:
        view = memoryview(data)
        while view:
            view = view[os.write(fd, view) :]
    finally:
        os.close(fd)


def _log_mentions(path: Path, text: str) -> bool:
    try:
        return text in path.read_text(errors="replace")
    except FileNotFoundError:
        return False


def _tail(path: Path, limit: int = 2000) -> str:
    try:
        return path.read_text(errors="replace")[-limit:]
    except FileNotFoundError:
        return ""


def process_group_members(pgid: int) -> list[int]:
    """PIDs in process group ``pgid`` (Linux ``/proc``): what is left of a lab process and its children."""
    return group_members(pgid)
