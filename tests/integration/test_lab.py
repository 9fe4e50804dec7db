"""The lab fleet (edgewarm.testing.lab) against real nginx and Varnish processes on loopback."""

from __future__ import annotations

import http.client
import os
from collections.abc import Iterator
from pathlib import Path

import pytest

from edgewarm.testing import DEFAULT_HOST, Lab, LabError, LabNode, process_group_members

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
