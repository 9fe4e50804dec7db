"""The lab fleet (edgewarm.testing.lab) against real nginx and Varnish processes on loopback."""

from __future__ import annotations

import http.client
import os
import re
import signal
import socket
from collections.abc import Iterator
from pathlib import Path

import pytest

import edgewarm.testing.lab as lab_module
from edgewarm.testing import DEFAULT_HOST, Lab, LabError, LabNode, process_group_members
from edgewarm.testing.lab import READY_PATH

pytestmark = pytest.mark.integration


@pytest.fixture(scope="module")
def lab(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Lab]:
    with Lab(tmp_path_factory.mktemp("lab"), edges=2, shield=True, varnish=1, purge_module=True) as lab:
        yield lab


def _get(node: LabNode, path: str, host: str = DEFAULT_HOST) -> tuple[int, str | None, bytes]:
    """A plain stdlib GET through ``node`` with ``Host`` set, as edgewarm sends it."""
    conn = http.client.HTTPConnection("127.0.0.1", node.port, timeout=10)
    try:
        conn.request("GET", path, headers={"Host": host})
        resp = conn.getresponse()
        body = resp.read()
        return resp.status, resp.getheader("X-Cache-Status") or resp.getheader("X-Cache"), body
    finally:
        conn.close()


def _request_from(node: LabNode, method: str, path: str, source: str) -> int:
    """Send ``method path`` to ``node`` from the loopback address ``source``; the status."""
    conn = http.client.HTTPConnection("127.0.0.1", node.port, timeout=10, source_address=(source, 0))
    try:
        conn.request(method, path, headers={"Host": DEFAULT_HOST})
        resp = conn.getresponse()
        resp.read()
        return resp.status
    finally:
        conn.close()


def test_cache_nodes_come_shield_first_then_edges_then_varnish(lab: Lab) -> None:
    """cache_nodes() lists the shield, then the edges, then the Varnish nodes, each with its own port."""
    nodes = lab.cache_nodes()
    assert [(n.name, n.tier, n.kind) for n in nodes] == [
        ("shield-1", "shield", "nginx"),
        ("edge-1", "edge", "nginx"),
        ("edge-2", "edge", "nginx"),
        ("varnish-1", "edge", "varnish"),
    ]
    ports = {n.port for n in lab.nodes()}
    assert len(ports) == 5
    assert all(n.url == f"http://127.0.0.1:{n.port}" for n in lab.nodes())


def test_edge_misses_then_hits_and_the_origin_is_asked_once(lab: Lab) -> None:
    """A GET through edge-1 is a MISS filled via the shield, the next one a HIT; the origin sees one GET."""
    lab.write_file("/hit/one.bin", b"a" * 5000)
    edge = lab.edges[0]

    assert _get(edge, "/hit/one.bin") == (200, "MISS", b"a" * 5000)
    assert _get(edge, "/hit/one.bin") == (200, "HIT", b"a" * 5000)

    edge_log = lab.wait_for_requests(edge, 2, uri="/hit/one.bin")
    assert [(r.method, r.host, r.status, r.cache_status, r.bytes) for r in edge_log] == [
        ("GET", DEFAULT_HOST, 200, "MISS", 5000),
        ("GET", DEFAULT_HOST, 200, "HIT", 5000),
    ]
    assert lab.shield is not None
    shield_log = lab.wait_for_requests(lab.shield, 1, uri="/hit/one.bin")
    assert [(r.cache_status, r.host) for r in shield_log] == [("MISS", DEFAULT_HOST)]
    origin_log = lab.wait_for_requests(lab.origin, 1, uri="/hit/one.bin")
    assert [(r.status, r.host, r.cache_status) for r in origin_log] == [(200, DEFAULT_HOST, None)]


def test_second_edge_fills_from_the_shield_not_the_origin(lab: Lab) -> None:
    """Once the shield holds a URL, edge-2 misses but gets it from the shield: the origin is not asked again."""
    lab.write_file("/hit/two.bin", b"b" * 100)
    _get(lab.edges[0], "/hit/two.bin")
    assert _get(lab.edges[1], "/hit/two.bin") == (200, "MISS", b"b" * 100)

    assert len(lab.wait_for_requests(lab.origin, 1, uri="/hit/two.bin")) == 1


def test_cache_key_includes_the_host(lab: Lab) -> None:
    """The same path under another Host is a separate cache entry (a MISS), on nginx and on Varnish."""
    lab.write_file("/hosts/x.bin", b"x")
    for node in (lab.edges[0], lab.varnishes[0]):
        assert _get(node, "/hosts/x.bin", host="a.example.test")[1] == "MISS"
        assert _get(node, "/hosts/x.bin", host="a.example.test")[1] == "HIT"
        assert _get(node, "/hosts/x.bin", host="b.example.test")[1] == "MISS"


def test_varnish_misses_then_hits_and_logs_both(lab: Lab) -> None:
    """Varnish answers X-Cache MISS then HIT, and its varnishncsa log shows both with the Host."""
    lab.write_file("/v/one.bin", b"v" * 300)
    varnish = lab.varnishes[0]

    assert _get(varnish, "/v/one.bin?q=1") == (200, "MISS", b"v" * 300)
    assert _get(varnish, "/v/one.bin?q=1") == (200, "HIT", b"v" * 300)

    log = lab.wait_for_requests(varnish, 2, uri="/v/one.bin?q=1")
    assert [(r.host, r.status, r.cache_status, r.bytes) for r in log] == [
        (DEFAULT_HOST, 200, "MISS", 300),
        (DEFAULT_HOST, 200, "HIT", 300),
    ]


def test_a_killed_node_restarts_nginx_with_its_cache_and_varnish_empty_with_a_fresh_log(tmp_path: Path) -> None:
    """Lab.restart after Lab.kill: connections are refused meanwhile; nginx comes back with its cache (a HIT),
    Varnish empty (a MISS) with a fresh access log, the killed instance's lines kept beside it. Only a killed
    node restarts."""
    with Lab(tmp_path, edges=1, varnish=1) as lab:
        lab.write_file("/r/a.bin", b"r" * 100)
        edge, varnish = lab.edges[0], lab.varnishes[0]
        assert [_get(node, "/r/a.bin")[1] for node in (edge, varnish)] == ["MISS", "MISS"]
        lab.wait_for_requests(varnish, 1, uri="/r/a.bin")
        with pytest.raises(LabError, match="killed"):
            lab.restart(varnish.name)
        for node in (edge, varnish):
            lab.kill(node.name)
            with pytest.raises(ConnectionError):  # refused, or reset by a process going down
                _get(node, "/r/a.bin")
            lab.restart(node.name)

        assert _get(edge, "/r/a.bin") == (200, "HIT", b"r" * 100)
        assert _get(varnish, "/r/a.bin") == (200, "MISS", b"r" * 100)
        assert [r.cache_status for r in lab.wait_for_requests(varnish, 1, uri="/r/a.bin")] == ["MISS"]
        before = varnish.access_log.with_name(f"{varnish.access_log.name}.before").read_text()
        assert "/r/a.bin" in before


def test_origin_answers_status_paths_and_404_for_missing_files(lab: Lab) -> None:
    """/status/500/... is a 500 and /status/429/... a 429 through every node; a missing file is a 404."""
    for node in lab.nodes():
        assert lab.fetch(node, "/status/500/any").status == 500
        assert lab.fetch(node, "/status/429/any").status == 429
        assert lab.fetch(node, "/status/408/any").status == 408
        assert lab.fetch(node, "/no/such/file.bin").status == 404


def test_errors_and_no_store_are_never_cached(lab: Lab) -> None:
    """A 500, a 404 and a Cache-Control: no-store answer stay MISS on every cache node."""
    lab.write_file("/nocache/n.bin", b"n")
    for node in lab.cache_nodes():
        for path in ("/status/500/e", "/missing.bin", "/nocache/n.bin"):
            assert [lab.fetch(node, path).cache_status for _ in range(2)] == ["MISS", "MISS"], (node, path)


def test_changed_file_shows_at_the_origin_at_once(lab: Lab) -> None:
    """write_file replaces a file and the origin serves the new body on the next request."""
    lab.write_file("/change.bin", b"old")
    assert lab.fetch(lab.origin, "/change.bin").body == b"old"
    lab.write_file("/change.bin", b"new!")
    assert lab.fetch(lab.origin, "/change.bin").body == b"new!"
    lab.delete_file("/change.bin")
    assert lab.fetch(lab.origin, "/change.bin").status == 404


def test_nginx_purge_removes_exactly_one_key(lab: Lab) -> None:
    """PURGE on an nginx edge drops that URL for that Host only (200), and answers 404 when not cached."""
    edge = lab.edges[0]
    for path in ("/p/a.bin", "/p/b.bin"):
        lab.write_file(path, b"p")
        _get(edge, path)
        assert _get(edge, path)[1] == "HIT"

    assert lab.fetch(edge, "/p/a.bin", host="other.example.test", method="PURGE").status == 404
    assert lab.fetch(edge, "/p/a.bin", method="PURGE").status == 200
    assert lab.fetch(edge, "/p/a.bin", method="PURGE").status == 404

    assert _get(edge, "/p/a.bin")[1] == "MISS"
    assert _get(edge, "/p/b.bin")[1] == "HIT"
    assert [r.status for r in lab.requests(edge) if r.method == "PURGE"] == [404, 200, 404]


def test_nginx_purge_has_no_wildcard(lab: Lab) -> None:
    """Debian 12's cache-purge 2.3 takes a trailing * literally: PURGE /dir/* is a 404 and purges nothing."""
    edge = lab.edges[0]
    lab.write_file("/w/a.bin", b"w")
    _get(edge, "/w/a.bin")

    assert lab.fetch(edge, "/w/*", method="PURGE").status == 404
    assert _get(edge, "/w/a.bin")[1] == "HIT"


def test_varnish_purge_removes_one_url(lab: Lab) -> None:
    """PURGE on Varnish drops that URL (200) and leaves the others cached."""
    varnish = lab.varnishes[0]
    for path in ("/vp/a.bin", "/vp/b.bin"):
        lab.write_file(path, b"v")
        _get(varnish, path)

    assert lab.fetch(varnish, "/vp/a.bin", method="PURGE").status == 200

    assert _get(varnish, "/vp/a.bin")[1] == "MISS"
    assert _get(varnish, "/vp/b.bin")[1] == "HIT"


def test_varnish_ban_removes_a_literal_prefix_of_one_host(lab: Lab) -> None:
    """BAN with X-Ban-Prefix drops that Host's URLs under the prefix, with '.' taken literally."""
    varnish = lab.varnishes[0]
    paths = ["/vb/x.y/a.bin", "/vb/xzy/a.bin", "/vb/other.bin"]
    for path in paths:
        lab.write_file(path, b"b")
        _get(varnish, path)
        _get(varnish, path, host="keep.example.test")

    ban = lab.fetch(varnish, "/", method="BAN", headers={"X-Ban-Prefix": "/vb/x.y/"})
    assert ban.status == 200
    assert lab.fetch(varnish, "/", method="BAN").status == 400  # no prefix

    assert [_get(varnish, p)[1] for p in paths] == ["MISS", "HIT", "HIT"]
    assert [_get(varnish, p, host="keep.example.test")[1] for p in paths] == ["HIT", "HIT", "HIT"]


def test_purge_is_refused_to_other_addresses(lab: Lab) -> None:
    """PURGE and BAN from 127.0.0.2 are refused (nginx 403, Varnish 405) and the object stays cached."""
    lab.write_file("/deny/a.bin", b"d")
    edge, varnish = lab.edges[0], lab.varnishes[0]
    for node in (edge, varnish):
        _get(node, "/deny/a.bin")

    assert _request_from(edge, "PURGE", "/deny/a.bin", "127.0.0.2") == 403
    assert _request_from(varnish, "PURGE", "/deny/a.bin", "127.0.0.2") == 405
    assert _request_from(varnish, "BAN", "/", "127.0.0.2") == 405
    assert _request_from(edge, "GET", "/deny/a.bin", "127.0.0.2") == 200
    assert [_get(node, "/deny/a.bin")[1] for node in (edge, varnish)] == ["HIT", "HIT"]


def test_make_files_writes_distinct_bodies_of_the_asked_size(lab: Lab) -> None:
    """make_files returns the paths it wrote; each body has the size asked and starts with its own path."""
    paths = lab.make_files(50, 1000, prefix="/many/")

    assert len(set(paths)) == 50
    assert all(p.startswith("/many/") for p in paths)
    bodies = [lab.fetch(lab.origin, p).body for p in paths[:3]]
    assert [len(b) for b in bodies] == [1000, 1000, 1000]
    assert [b.startswith(p.encode()) for b, p in zip(bodies, paths, strict=False)] == [True, True, True]


def test_nodes_toml_lists_cache_nodes_in_order(lab: Lab) -> None:
    """nodes_toml() gives one [[nodes]] table per cache node with its name, url and tier."""
    text = lab.nodes_toml()

    assert text.count("[[nodes]]") == 4
    assert text.index('name = "shield-1"') < text.index('name = "edge-1"') < text.index('name = "varnish-1"')
    assert f'url = "{lab.edges[1].url}"' in text


def test_stop_ends_every_process_and_its_children(tmp_path: Path) -> None:
    """After stop() no lab PID is alive, nor any worker or child in their process groups; stop is idempotent."""
    lab = Lab(tmp_path, edges=1, shield=True, varnish=1, workers=2, cache_root=tmp_path / "shm")
    with lab:
        pids = lab.pids
        assert set(pids) == {"origin", "shield-1", "edge-1", "varnish-1", "varnish-1-ncsa"}
        assert all(len(process_group_members(pid)) >= 2 for name, pid in pids.items() if "ncsa" not in name)
        assert list((tmp_path / "shm").iterdir())

    for pid in pids.values():
        assert process_group_members(pid) == []
        with pytest.raises(ProcessLookupError):
            os.kill(pid, 0)
    assert lab.pids == {}
    assert list((tmp_path / "shm").iterdir()) == []  # caches under cache_root are removed
    lab.stop()


def test_start_failure_names_the_node_and_leaves_nothing_running(tmp_path: Path) -> None:
    """A node that cannot start makes start() raise with its log, after stopping what did start."""
    lab = Lab(tmp_path, edges=1, shield=False, varnish=1, varnish_storage="nonsense,1m")
    with pytest.raises(LabError, match="varnish-1") as info:
        lab.start()
    assert "nonsense" in str(info.value)
    assert lab.pids == {}


# -- Squid and Apache Traffic Server ---------------------------------------------------------------------


@pytest.fixture(scope="module")
def others_lab(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Lab]:
    with Lab(tmp_path_factory.mktemp("others"), edges=0, shield=True, squid=1, trafficserver=1) as lab:
        yield lab


OTHER_NODES = pytest.mark.parametrize("name", ["squid-1", "ats-1"])


def test_squid_and_ats_nodes_follow_the_shield(others_lab: Lab) -> None:
    """squid-1 and ats-1 come after the shield, as edges of their own kinds, and nodes_toml() says so."""
    assert [(n.name, n.tier, n.kind) for n in others_lab.cache_nodes()] == [
        ("shield-1", "shield", "nginx"),
        ("squid-1", "edge", "squid"),
        ("ats-1", "edge", "ats"),
    ]
    text = others_lab.nodes_toml()
    assert f'name = "squid-1"\nurl = "{others_lab.squids[0].url}"\ntier = "edge"\nkind = "squid"\n' in text
    assert f'name = "ats-1"\nurl = "{others_lab.trafficservers[0].url}"\ntier = "edge"\nkind = "ats"\n' in text


@OTHER_NODES
def test_ready_probe_is_answered_by_the_node_itself(others_lab: Lab, name: str) -> None:
    """The ready path names the node in X-Lab-Node, never reaches the shield, and stays out of requests()."""
    node = others_lab.node(name)
    answer = others_lab.fetch(node, READY_PATH, host="lab.invalid")
    assert answer.headers.get("x-lab-node") == name
    marker = f"/ready-marker/{name}.bin"
    others_lab.fetch(node, marker)  # a 404 logged after the probe: then the log has caught up
    assert others_lab.shield is not None
    for logged in (node, others_lab.shield):
        others_lab.wait_for_requests(logged, 1, uri=marker, timeout=10)
        assert READY_PATH not in logged.access_log.read_text(), logged.name


@OTHER_NODES
def test_squid_and_ats_miss_then_hit_per_host_and_log_both(others_lab: Lab, name: str) -> None:
    """A MISS then a HIT (cache_status "MISS"/"HIT"), another Host is its own entry; the log shows both GETs
    with Host, status, cache status and body size; the shield is asked once per Host."""
    node, path = others_lab.node(name), f"/{name}/one.bin?q=1"
    others_lab.write_file(f"/{name}/one.bin", b"s" * 4000)

    first, second = others_lab.fetch(node, path), others_lab.fetch(node, path)
    assert (first.status, first.cache_status, first.body) == (200, "MISS", b"s" * 4000)
    assert (second.status, second.cache_status, second.body) == (200, "HIT", b"s" * 4000)
    assert others_lab.fetch(node, path, host="b.example.test").cache_status == "MISS"

    log = others_lab.wait_for_requests(node, 3, uri=path, timeout=10)
    assert [(r.method, r.host, r.status, r.cache_status, r.bytes) for r in log] == [
        ("GET", DEFAULT_HOST, 200, "MISS", 4000),
        ("GET", DEFAULT_HOST, 200, "HIT", 4000),
        ("GET", "b.example.test", 200, "MISS", 4000),
    ]
    assert others_lab.shield is not None
    shield_log = others_lab.wait_for_requests(others_lab.shield, 2, uri=path)
    assert sorted(r.host for r in shield_log) == ["b.example.test", DEFAULT_HOST]


@OTHER_NODES
def test_squid_and_ats_never_cache_errors_or_no_store(others_lab: Lab, name: str) -> None:
    """A 500, a 404, a 410 and a Cache-Control: no-store answer stay MISS; a 200 of the same node is a HIT."""
    node = others_lab.node(name)
    others_lab.write_file(f"/nocache/{name}.bin", b"n")
    for path in ("/status/500/e", "/status/410/e", "/missing.bin", f"/nocache/{name}.bin"):
        assert [others_lab.fetch(node, path).cache_status for _ in range(2)] == ["MISS", "MISS"], path
    others_lab.write_file(f"/cached/{name}.bin", b"c")
    assert [others_lab.fetch(node, f"/cached/{name}.bin").cache_status for _ in range(2)] == ["MISS", "HIT"]


@OTHER_NODES
def test_squid_and_ats_purge_one_url_of_one_host_from_loopback_only(others_lab: Lab, name: str) -> None:
    """PURGE from 127.0.0.1 removes that URL for that Host (200, then 404); from 127.0.0.2 it is a 403."""
    node = others_lab.node(name)
    paths = [f"/purge/{name}/a.bin", f"/purge/{name}/b.bin"]
    for path in paths:
        others_lab.write_file(path, b"p")
        others_lab.fetch(node, path)
        assert others_lab.fetch(node, path).cache_status == "HIT"

    assert _request_from(node, "PURGE", paths[0], "127.0.0.2") == 403
    assert others_lab.fetch(node, paths[0]).cache_status == "HIT"
    assert others_lab.fetch(node, paths[0], host="other.example.test", method="PURGE").status == 404
    assert others_lab.fetch(node, paths[0], method="PURGE").status == 200
    assert others_lab.fetch(node, paths[0], method="PURGE").status == 404

    assert [others_lab.fetch(node, p).cache_status for p in paths] == ["MISS", "HIT"]
    log = others_lab.wait_for_requests(node, 2, uri=paths[1], timeout=10)
    assert log[-1].cache_status == "HIT"
    assert [r.status for r in others_lab.requests(node) if r.method == "PURGE"] == [403, 404, 200, 404]


@pytest.mark.parametrize("kind", ["squid", "ats"])
def test_a_port_taken_meanwhile_is_detected_and_retried(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, kind: str
) -> None:
    """When the port picked for Squid or ATS is taken by a silent listener, start() retries on other ports."""
    taken = socket.socket()
    taken.bind(("127.0.0.1", 0))
    taken.listen()
    real_free_ports = lab_module._free_ports
    picks: list[list[int]] = []

    def first_pick_taken(count: int) -> list[int]:
        ports = real_free_ports(count)
        if not picks:
            ports[-1] = taken.getsockname()[1]  # the Squid or ATS node comes last
        picks.append(ports)
        return ports

    monkeypatch.setattr(lab_module, "_free_ports", first_pick_taken)
    lab = Lab(
        tmp_path, edges=0, shield=False, squid=int(kind == "squid"), trafficserver=int(kind == "ats"), start_timeout=20
    )
    with taken, lab:
        (node,) = lab.cache_nodes()
        assert len(picks) == 2 and node.port == picks[1][-1] != taken.getsockname()[1]
        assert lab.fetch(node, READY_PATH, host="lab.invalid").headers.get("x-lab-node") == node.name


def test_stop_ends_squid_and_ats_and_removes_what_a_killed_squid_left(tmp_path: Path) -> None:
    """After stop() no Squid or ATS process is left; the segments a SIGKILLed Squid left in /dev/shm are
    removed, and so is ATS's cache under cache_root."""
    lab = Lab(tmp_path, edges=0, shield=False, squid=1, trafficserver=1, cache_root=tmp_path / "shm")
    with lab:
        pids = lab.pids
        assert set(pids) == {"origin", "squid-1", "ats-1"}
        assert [p.name.startswith("ats-1-") for p in (tmp_path / "shm").iterdir()] == [True]
        segments = list(Path("/dev/shm").glob(re.sub(r"[^A-Za-z0-9]", "", f"{lab.root.name}squid-1") + "-*"))
        assert segments
        os.kill(pids["squid-1"], signal.SIGKILL)  # no clean exit: Squid cannot remove its segments itself
        assert all(p.exists() for p in segments)

    for pid in pids.values():
        assert process_group_members(pid) == []
        with pytest.raises(ProcessLookupError):
            os.kill(pid, 0)
    assert [p for p in segments if p.exists()] == []
    assert list((tmp_path / "shm").iterdir()) == []
    lab.stop()
