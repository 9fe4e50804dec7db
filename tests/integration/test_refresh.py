"""Issue 4: /api/refresh and refresh-then-warm across real nginx (cache-purge module) and Varnish."""

from __future__ import annotations

import gzip
import time
from collections import Counter
from collections.abc import Iterator
from pathlib import Path

import pytest

from edgewarm.client import Client
from edgewarm.engine.coalesce import SHARED_NOTE
from edgewarm.testing import DEFAULT_HOST, Lab
from edgewarm.testing.service import DEMO_SECRET, DEMO_USER, ServiceProcess, free_port, start_service, write_config

pytestmark = pytest.mark.integration


def url_of(path: str) -> str:
    return f"http://{DEFAULT_HOST}{path}"


@pytest.fixture
def lab(tmp_path: Path) -> Iterator[Lab]:
    with Lab(tmp_path / "lab", edges=2, shield=True, varnish=1, purge_module=True) as lab:
        yield lab


@pytest.fixture
def service(tmp_path: Path, lab: Lab) -> Iterator[ServiceProcess]:
    port = free_port()
    config = write_config(
        tmp_path / "edgewarm.toml", store=f"sqlite:///{tmp_path}/edgewarm.db", nodes_toml=lab.nodes_toml(), port=port
    )
    with ServiceProcess(config, port=port) as service:
        yield service


def kinds_of(lab: Lab) -> dict[str, str]:
    return {node.name: node.kind for node in lab.cache_nodes()}


def refresh(service: ServiceProcess, entries: list[str], kind: str) -> str:
    """Submit /api/refresh through the raw wire format and return the task id."""
    with Client(service.url, DEMO_USER, DEMO_SECRET) as client:
        response = client._http.post(
            "/api/refresh",
            json={"username": DEMO_USER, "signature": client.signature(), "instances": entries, "type": kind},
        )
        body = response.json()
        assert body["status"] == 0, body
        return str(body["taskid"])


def finish(service: ServiceProcess, taskid: str, kind: str = "refresh") -> dict[str, object]:
    with Client(service.url, DEMO_USER, DEMO_SECRET) as client:
        view = client.wait(taskid, timeout=60)
        answer = client._http.post(
            f"/api/{kind}Query", json={"username": DEMO_USER, "signature": client.signature(), "taskid": taskid}
        ).json()
        assert answer["data"]["status"] == view["status"]
        return client.task(taskid)


def warm(service: ServiceProcess, paths: list[str]) -> None:
    with Client(service.url, DEMO_USER, DEMO_SECRET) as client:
        assert client.wait(client.prefetch([url_of(p) for p in paths]), timeout=60)["status"] == 0


def states(lab: Lab, path: str) -> dict[str, str | None]:
    """Each cache node's own cache state for one GET of `path`, shield first (so edges do not refill it)."""
    return {node.name: lab.fetch(node, path).cache_status for node in lab.cache_nodes()}


def test_file_refresh_makes_the_next_request_a_miss_on_nginx_and_varnish(service: ServiceProcess, lab: Lab) -> None:
    """Warm, see HIT everywhere, refresh one file: it is a MISS on every node, the other file stays a HIT."""
    paths = lab.make_files(2, 1000)
    warm(service, paths)
    assert set(states(lab, paths[0]).values()) == {"HIT"}
    view = finish(service, refresh(service, [url_of(paths[0])], "file"))
    assert view["status"] == 0 and view["kind"] == "refresh"
    assert {i["cache_state"] for i in view["items"]} <= {"PURGED", "NOT_CACHED"}
    assert set(states(lab, paths[0]).values()) == {"MISS"}
    assert set(states(lab, paths[1]).values()) == {"HIT"}


def test_an_answer_varnish_will_not_store_is_not_reported_warmed_there(service: ServiceProcess, lab: Lab) -> None:
    """`Surrogate-Control: no-store`: Varnish's built-in VCL does not store the answer (before: its warm
    succeeded on the one MISS, and the node stayed cold); nginx ignores it and stores it. The MISS is looked at
    once more on every node: nginx's second answer is a HIT, Varnish's a MISS again, said so."""
    lab.write_file("/surrogate-no-store/s.bin", b"s" * 100)
    with Client(service.url, DEMO_USER, DEMO_SECRET) as client:
        taskid = client.prefetch([url_of("/surrogate-no-store/s.bin")])
        assert client.wait(taskid, timeout=60)["status"] == 2
        items = client.task(taskid)["items"]
    kinds = kinds_of(lab)
    outcomes = {(kinds[i["node"]], i["state"], i["error"]) for i in items}
    why = "not cached after the warm: MISS again (its answer said Surrogate-Control: no-store)"
    assert outcomes == {("nginx", "succeeded", None), ("varnish", "failed", why)}, items


def test_a_refresh_of_the_root_purges_the_urls_written_without_its_slash(service: ServiceProcess, lab: Lab) -> None:
    """A tester's `http://www.example.test?noslash=1`: one object with `/?noslash=1` to every node, warmed, and
    left cached on the nginx nodes by a refresh of `http://www.example.test/` (edgewarm looked for the URLs it
    knows by the text `http://www.example.test/`); so was `http://www.example.test` itself."""
    lab.write_file("/index.html", b"i" * 100)
    lab.write_file("/root-a.txt", b"a" * 100)
    warm(service, ["?noslash=1", "", "/root-a.txt"])
    for path in ("/?noslash=1", "/", "/root-a.txt"):
        assert set(states(lab, path).values()) == {"HIT"}, path
    view = finish(service, refresh(service, [url_of("/")], "dir"))
    assert view["status"] == 0, view
    for path in ("/?noslash=1", "/", "/root-a.txt"):
        assert set(states(lab, path).values()) == {"MISS"}, path


def test_dir_refresh_empties_the_prefix_and_nothing_outside_it(service: ServiceProcess, lab: Lab) -> None:
    """A dir refresh of /d/ purges /d/a, /d/sub/b on every node (Varnish ban, nginx one by one); /other stays.
    Each nginx item notes how many URLs it purged (before: nothing, so a directory edgewarm knew no URL under,
    purged of nothing, looked the same as one purged whole)."""
    inside = ["/d/a.bin", "/d/sub/b.bin"]
    outside = ["/other/c.bin", "/dd/e.bin"]
    for path in inside + outside:
        lab.write_file(path, path.encode() * 10)
    warm(service, inside + outside)
    view = finish(service, refresh(service, [url_of("/d/"), url_of("/never/")], "dir"))
    assert view["status"] == 0, view["items"]
    kinds = kinds_of(lab)
    # Again: nothing is left there, and the notes say so (they said "purged 2": purge requests, not copies).
    again = finish(service, refresh(service, [url_of("/d/")], "dir"))
    said = {i["note"] for i in again["items"] if kinds[i["node"]] == "nginx"}  # type: ignore[attr-defined]
    assert said == {"purged 0 of the 2 URLs known at or under the directory (2 not cached there)"}, again["items"]
    assert {i["action"] for i in view["items"]} == {"purge_dir"}
    notes = {(i["url"].split("/")[-2], kinds[i["node"]], i["note"], i["error"]) for i in view["items"]}  # type: ignore[index]
    assert notes == {
        ("d", "nginx", "purged 2 of the 2 URLs known at or under the directory", None),
        ("never", "nginx", "no URL at or under the directory is known to edgewarm (this node has no prefix purge: "
         "the URLs edgewarm warmed or refreshed are purged one by one)", None),
        ("d", "varnish", None, None),
        ("never", "varnish", None, None),
    }, view["items"]  # fmt: skip
    # Not asked, nothing known: no cache state (NOT_CACHED was read as the node's word: a tester's)
    never = {i["cache_state"] for i in view["items"] if i["url"].endswith("/never/") and kinds[i["node"]] == "nginx"}  # type: ignore[index]
    assert never == {None}, view["items"]
    for path in inside:
        assert set(states(lab, path).values()) == {"MISS"}, path
    for path in outside:
        assert set(states(lab, path).values()) == {"HIT"}, path


def test_dir_refresh_reaches_the_urls_warmed_with_the_host_in_another_case(service: ServiceProcess, lab: Lab) -> None:
    """nginx purges a directory URL by URL, those edgewarm knows: it finds them by their cache key, so a URL
    warmed as WWW.EXAMPLE.TEST is purged by a refresh of www.example.test/cs/ and the other way round (before,
    by the raw text: those stayed HIT while the task said PURGED)."""
    upper = DEFAULT_HOST.upper()
    for path in ("/cs/a.txt", "/cs/b.txt", "/cs2/c.txt"):
        lab.write_file(path, path.encode() * 10)
    with Client(service.url, DEMO_USER, DEMO_SECRET) as client:
        urls = [f"http://{upper}/cs/a.txt", url_of("/cs/b.txt"), url_of("/cs2/c.txt")]
        assert client.wait(client.prefetch(urls), timeout=60)["status"] == 0
    assert finish(service, refresh(service, [url_of("/cs/")], "dir"))["status"] == 0
    assert finish(service, refresh(service, [f"http://{upper.title()}/cs2/"], "dir"))["status"] == 0
    for path in ("/cs/a.txt", "/cs/b.txt", "/cs2/c.txt"):
        assert set(states(lab, path).values()) == {"MISS"}, path


def test_a_refresh_with_its_escapes_in_lower_case_purges_the_copies_asked_in_upper_case(
    service: ServiceProcess, lab: Lab
) -> None:
    """Browsers ask `/esc/%C3%BC/…`; a client that writes `%c3%bc` (.NET's UrlEncode) refreshed it: every node
    answered "not cached" (Varnish's ban matched nothing) and the task succeeded while every cache kept its copy
    (a tester's). A file refresh and a directory refresh in lower case now leave each node a MISS, the other
    files of the directory's parent a HIT; so do the spellings in mixed case edgewarm warmed, which cannot be
    guessed (a re-tester's `%C3%bc`: HIT everywhere after either refresh)."""
    for name in ("a.txt", "b.txt", "c.txt"):
        lab.write_file(f"/esc/ü/{name}", name.encode() * 10)
    lab.write_file("/esc/other.txt", b"o" * 10)
    spelled = ["/esc/%C3%BC/a.txt", "/esc/%C3%BC/b.txt", "/esc/%C3%bc/c.txt", "/esc/%c3%BC/a.txt"]
    warm(service, [*spelled, "/esc/other.txt"])
    assert set(states(lab, "/esc/%C3%BC/a.txt").values()) == {"HIT"}
    view = finish(service, refresh(service, [url_of("/esc/%c3%bc/a.txt"), url_of("/esc/%c3%bc/c.txt")], "file"))
    assert view["status"] == 0 and {i["cache_state"] for i in view["items"]} == {"PURGED"}, view["items"]  # type: ignore[index]
    for path in ("/esc/%C3%BC/a.txt", "/esc/%c3%BC/a.txt", "/esc/%C3%bc/c.txt"):
        assert set(states(lab, path).values()) == {"MISS"}, path
    assert set(states(lab, "/esc/%C3%BC/b.txt").values()) == {"HIT"}
    view = finish(service, refresh(service, [url_of("/esc/%c3%bc/")], "dir"))
    kinds = kinds_of(lab)
    notes = {i["note"] for i in view["items"] if kinds[i["node"]] == "nginx"}  # type: ignore[attr-defined]
    assert view["status"] == 0 and notes == {"purged 3 of the 3 URLs known at or under the directory"}, view
    for path in spelled:
        assert set(states(lab, path).values()) == {"MISS"}, path
    assert set(states(lab, "/esc/other.txt").values()) == {"HIT"}


def test_a_warm_right_after_a_refresh_fetches_again_on_every_node(service: ServiceProcess, lab: Lab) -> None:
    """Warm, refresh (a directory; a file spelled another way), warm again at once: the second warm fetches
    through every node, which then holds the object (before, it was answered "succeeded" from the warm made
    before the refresh, within `dedupe_seconds`, and every cache stayed empty)."""
    for path in ("/dd/y.txt", "/cs/e.txt"):
        lab.write_file(path, path.encode() * 10)
    warm(service, ["/dd/y.txt"])
    assert finish(service, refresh(service, [url_of("/dd/")], "dir"))["status"] == 0
    warm(service, ["/dd/y.txt"])
    assert set(states(lab, "/dd/y.txt").values()) == {"HIT"}

    upper = url_of("/cs/e.txt").replace(DEFAULT_HOST, DEFAULT_HOST.upper())
    with Client(service.url, DEMO_USER, DEMO_SECRET) as client:
        assert client.wait(client.prefetch([upper]), timeout=60)["status"] == 0
        assert finish(service, refresh(service, [url_of("/cs/e.txt")], "file"))["status"] == 0
        assert client.wait(client.prefetch([upper]), timeout=60)["status"] == 0
    assert set(states(lab, "/cs/e.txt").values()) == {"HIT"}


def test_a_dir_refresh_reaches_urls_warmed_in_another_spelling_of_the_host(service: ServiceProcess, lab: Lab) -> None:
    """Warmed as www.example.test./sp/a.txt (a final dot) and www.example.test:80/sp/b.txt (the default port):
    one object each with www.example.test/sp/…, so a refresh of the directory www.example.test/sp/ purges
    both on every node (before, the known URLs were looked up as typed: both stayed HIT while the task said
    PURGED). A directory purge made of many requests reports no HTTP status of its own (it said 200)."""
    for path in ("/sp/a.txt", "/sp/b.txt"):
        lab.write_file(path, path.encode() * 10)
    typed = [f"http://{DEFAULT_HOST}./sp/a.txt", f"http://{DEFAULT_HOST}:80/sp/b.txt"]
    with Client(service.url, DEMO_USER, DEMO_SECRET) as client:
        assert client.wait(client.prefetch(typed), timeout=60)["status"] == 0
    for path in ("/sp/a.txt", "/sp/b.txt"):
        assert set(states(lab, path).values()) == {"HIT"}, path
    view = finish(service, refresh(service, [url_of("/sp/")], "dir"))
    assert view["status"] == 0
    for path in ("/sp/a.txt", "/sp/b.txt"):
        assert set(states(lab, path).values()) == {"MISS"}, path
    by_urls = [i for i in view["items"] if i["node"] != "varnish-1"]  # type: ignore[attr-defined]
    assert by_urls and {(i["http_status"], i["cache_state"]) for i in by_urls} == {(None, "PURGED")}, by_urls


def test_a_dir_refresh_reaches_urls_warmed_under_the_other_scheme(service: ServiceProcess, lab: Lab) -> None:
    """A node is asked by its own scheme: https://…/sc/a.txt warmed through these http nodes is the object a
    refresh of http://…/sc/ must purge, and the other way round (before, the known URLs were looked up in the
    directory's scheme only: they stayed HIT while the task said NOT_CACHED)."""
    for path in ("/sc/a.txt", "/sc2/b.txt"):
        lab.write_file(path, path.encode() * 10)
    with Client(service.url, DEMO_USER, DEMO_SECRET) as client:
        typed = [f"https://{DEFAULT_HOST}/sc/a.txt", url_of("/sc2/b.txt")]
        assert client.wait(client.prefetch(typed), timeout=60)["status"] == 0
    for path in ("/sc/a.txt", "/sc2/b.txt"):
        assert set(states(lab, path).values()) == {"HIT"}, path
    assert finish(service, refresh(service, [url_of("/sc/")], "dir"))["status"] == 0
    assert finish(service, refresh(service, [f"https://{DEFAULT_HOST}/sc2/"], "dir"))["status"] == 0
    for path in ("/sc/a.txt", "/sc2/b.txt"):
        assert set(states(lab, path).values()) == {"MISS"}, path


def test_a_refresh_leaves_no_old_copy_on_the_shield_for_a_varnish_edge_when_answers_vary(
    service: ServiceProcess, lab: Lab
) -> None:
    """The origin answers with `Vary: Accept-Encoding`: the nginx shield keeps one copy per value asked with,
    and Varnish asks it with "gzip" where edgewarm's purge carried its own header. The refresh removed only
    that one copy: the Varnish edge, purged, refilled the old object from the shield, and every item said it
    succeeded. The shield's purge now asks with "gzip" too."""
    lab.write_file("/vary/app.txt", b"version 1 " * 20)
    warm(service, ["/vary/app.txt"])
    lab.write_file("/vary/app.txt", b"version 2 " * 20)
    with Client(service.url, DEMO_USER, DEMO_SECRET) as client:
        taskid = client.prefetch([url_of("/vary/app.txt")], refresh=True)
        assert client.wait(taskid, timeout=60)["status"] == 0
    varnish = [n for n in lab.cache_nodes() if n.name.startswith("varnish")]
    assert varnish and lab.fetch(varnish[0], "/vary/app.txt").body == b"version 2 " * 20
    shield = lab.cache_nodes()[0]
    gzipped = lab.fetch(shield, "/vary/app.txt", headers={"Accept-Encoding": "gzip"})
    assert gzip.decompress(gzipped.body) == b"version 2 " * 20


def test_a_warm_of_an_answer_that_varies_says_which_copy_it_filled(service: ServiceProcess, lab: Lab) -> None:
    """`Vary: Accept-Encoding`: nginx keeps a copy per value, and the warm filled the one of edgewarm's header,
    now by default what Chrome, Edge and Firefox send (`gzip, deflate, br, zstd`: a tester's Chrome and Firefox
    viewers missed after a warm with `gzip, deflate, br`, told nothing). The nginx items say which copy they
    filled; Varnish, which keeps one copy for all, says nothing."""
    lab.write_file("/vary/c.txt", b"compress me " * 40)
    with Client(service.url, DEMO_USER, DEMO_SECRET) as client:
        taskid = client.prefetch([url_of("/vary/c.txt")])
        assert client.wait(taskid, timeout=60)["status"] == 0
        notes = {item["node"]: item["note"] for item in client.task(taskid)["items"]}
    nginx = [n.name for n in lab.cache_nodes() if n.kind == "nginx"]
    said = (
        "its answer varies on Accept-Encoding (Vary): warmed the copy for Accept-Encoding 'gzip, deflate, br, zstd'; "
        "viewers who send other values get their own copy: none until one is stored, or one stored before, which a "
        "refresh does not remove ([engine] accept_encoding and user_agent choose the copy warmed)"
    )
    assert {notes[name] for name in nginx} == {said}, notes
    assert [notes[n.name] for n in lab.cache_nodes() if n.kind == "varnish"] == [None], notes
    chrome = {"Accept-Encoding": "gzip, deflate, br, zstd"}
    assert {lab.fetch(n, "/vary/c.txt", headers=chrome).cache_status for n in lab.cache_nodes()} == {"HIT"}
    with Client(service.url, DEMO_USER, DEMO_SECRET) as client:  # shared: it keeps the note of what was warmed
        again = client.prefetch([url_of("/vary/c.txt")])
        assert client.wait(again, timeout=60)["status"] == 0
        shared = {item["node"]: item["note"] for item in client.task(again)["items"]}
    assert {shared[name] for name in nginx} == {f"{SHARED_NOTE}; {said}"}, shared


def test_with_accept_encoding_gzip_a_varnish_edge_finds_its_copy_on_the_shield(tmp_path: Path, lab: Lab) -> None:
    """README's advice for Varnish edges behind an nginx shield: the origin answers with `Vary: Accept-Encoding`,
    the shield keeps a copy per value, and Varnish asks it with "gzip". With `[engine] accept_encoding = "gzip"`
    the shield's warm makes that copy: the origin is asked once per URL (with the default header, twice: the
    Varnish edge's warm is a MISS on the shield), and the Varnish edge fills from the shield."""
    paths = [f"/vary/w{n}.txt" for n in range(5)]
    for path in paths:
        lab.write_file(path, path.encode() * 40)
    extra = '[engine]\naccept_encoding = "gzip"\n'
    with start_service(tmp_path / "gz", lab.nodes_toml(), extra=extra) as service:
        warm(service, paths)
    origin = Counter(r.uri for r in lab.requests(lab.origin) if r.uri.startswith("/vary/w"))
    assert origin == Counter(dict.fromkeys(paths, 1)), origin
    varnish = next(n for n in lab.cache_nodes() if n.kind == "varnish")
    assert all(lab.fetch(varnish, path).cache_status == "HIT" for path in paths)


def test_refresh_then_warm_serves_the_new_content_everywhere(service: ServiceProcess, lab: Lab) -> None:
    """prefetch with refresh=true after the origin changed: every node then serves the new body, from cache."""
    lab.write_file("/app.js", b"version 1")
    warm(service, ["/app.js"])
    lab.write_file("/app.js", b"version 2, longer")
    assert {lab.fetch(n, "/app.js").body for n in lab.cache_nodes()} == {b"version 1"}
    with Client(service.url, DEMO_USER, DEMO_SECRET) as client:
        response = client._http.post(
            "/api/prefetch",
            json={
                "username": DEMO_USER,
                "signature": client.signature(),
                "publish_urls": [url_of("/app.js")],
                "refresh": True,
            },
        ).json()
        assert response["status"] == 0, response
        view = client.wait(response["taskid"], timeout=60)
        items = client.task(response["taskid"])["items"]
    assert view["status"] == 0
    assert sorted(i["action"] for i in items) == ["purge"] * 4 + ["warm"] * 4
    for node in lab.cache_nodes():
        answer = lab.fetch(node, "/app.js")
        assert (answer.body, answer.cache_status) == (b"version 2, longer", "HIT"), node.name


def test_refresh_then_warm_goes_on_on_the_nodes_that_purged_when_one_cannot(
    tmp_path: Path, lab: Lab, service: ServiceProcess
) -> None:
    """prefetch with refresh=true where edge-2 declares it cannot purge (`purge_method = ""`): every other node
    is purged and warmed again, serving the new body from cache; edge-2's purge fails and its warm is not
    attempted, naming it (before, every edge's warm failed so: the other edges were left purged and cold)."""
    service.stop()
    port = free_port()
    nodes = lab.nodes_toml().replace('name = "edge-2"\n', 'name = "edge-2"\npurge_method = ""\n')
    config = write_config(tmp_path / "one-cannot.toml", store=f"sqlite:///{tmp_path}/b.db", nodes_toml=nodes, port=port)
    lab.write_file("/rf/app.js", b"version 1")
    with ServiceProcess(config, port=port) as other, Client(other.url, DEMO_USER, DEMO_SECRET) as client:
        assert client.wait(client.prefetch([url_of("/rf/app.js")]), timeout=60)["status"] == 0
        lab.write_file("/rf/app.js", b"version 2, longer")
        view = client.wait(client.prefetch([url_of("/rf/app.js")], refresh=True), timeout=60)
        items = client.task(view["taskid"])["items"]
    assert view["status"] == 2
    failed = {(i["node"], i["action"]): i["error"] for i in items if i["state"] == "failed"}
    assert set(failed) == {("edge-2", "purge"), ("edge-2", "warm")}, failed
    assert failed["edge-2", "warm"] == "not attempted: this URL failed first on edge-2"
    for node in lab.cache_nodes():
        answer = lab.fetch(node, "/rf/app.js")
        expected = b"version 1" if node.name == "edge-2" else b"version 2, longer"
        assert (answer.body, answer.cache_status) == (expected, "HIT"), node.name


def test_a_node_without_purge_support_fails_the_refresh_clearly(tmp_path: Path) -> None:
    """nginx without the purge module refuses PURGE (405): a failed item saying so; purge_method="" likewise."""
    with Lab(tmp_path / "lab", edges=1, shield=False) as lab:
        (path,) = lab.make_files(1, 100)
        nodes = lab.nodes_toml() + f'[[nodes]]\nname = "no-purge"\nurl = "{lab.edges[0].url}"\npurge_method = ""\n'
        port = free_port()
        config = write_config(tmp_path / "e.toml", store=f"sqlite:///{tmp_path}/e.db", nodes_toml=nodes, port=port)
        with ServiceProcess(config, port=port) as service:
            view = finish(service, refresh(service, [url_of(path)], "file"))
    assert view["status"] == 2
    by_node = {i["node"]: i for i in view["items"]}
    assert by_node["edge-1"]["state"] == "failed" and by_node["edge-1"]["http_status"] == 405
    assert "refused the purge" in by_node["edge-1"]["error"]
    assert by_node["edge-1"]["attempts"] == 1
    assert "no purge method" in by_node["no-purge"]["error"]


def test_a_refetch_purge_answered_from_the_nodes_cache_fails_saying_so(tmp_path: Path) -> None:
    """purge_method = "GET" with a header the node's proxy_cache_bypass takes refetches the object; with one it
    does not take, the node answers from its cache (HIT) and its old copy stays. That was recorded as PURGED and
    the task succeeded while viewers kept the old object (a tester's walk through README); it fails now, saying
    why. Two node entries for one nginx: its own header, and another."""
    with Lab(tmp_path / "lab", edges=1, shield=False) as lab:
        lab.write_file("/gp/app.js", b"version 1")
        edge = lab.edges[0]
        nodes = "".join(
            f'[[nodes]]\nname = "{name}"\nurl = "{edge.url}"\npurge_method = "GET"\n'
            f'purge_headers = {{ "{header}" = "1" }}\n'
            for name, header in (("bypassed", "X-Lab-Refetch"), ("ignored", "X-Refetch"))
        )
        with start_service(tmp_path / "svc", nodes) as service:
            warm(service, ["/gp/app.js"])
            lab.write_file("/gp/app.js", b"version 2, longer")
            view = finish(service, refresh(service, [url_of("/gp/app.js")], "file"))
        assert view["status"] == 2
        by_node = {i["node"]: i for i in view["items"]}
        assert by_node["bypassed"]["state"] == "succeeded", by_node
        ignored = by_node["ignored"]
        assert (ignored["state"], ignored["http_status"], ignored["cache_state"]) == ("failed", 200, "HIT"), ignored
        assert "did not take the purge's headers as a bypass" in ignored["error"] and ignored["attempts"] == 1
        answer = lab.fetch(edge, "/gp/app.js")
        assert (answer.body, answer.cache_status) == (b"version 2, longer", "HIT")  # the bypassed refetch stored it


def test_a_known_url_a_node_cannot_read_does_not_hold_a_dir_refresh_back(tmp_path: Path, lab: Lab) -> None:
    """A URL of 9,000 characters (the service takes it: max_url_length 20000) is known under /un/, and nginx
    answers it 414 (its request line is over 8 KiB): never cached there. A refresh of /un/ purges the other
    URL and succeeds (before, every refresh of the directory failed on that one URL, and the edges behind
    the shield were not purged at all: "not attempted")."""
    lab.write_file("/un/a.txt", b"version 1")
    extra = "[api]\nmax_url_length = 20000\n"
    long_url = url_of("/un/" + "x" * 9000)
    with (
        start_service(tmp_path / "long", lab.nodes_toml(), extra=extra) as service,
        Client(service.url, DEMO_USER, DEMO_SECRET) as client,
    ):
        warm(service, ["/un/a.txt"])
        assert client.wait(client.prefetch([long_url]), timeout=60)["status"] == 2  # 414 from the nginx nodes
        assert set(states(lab, "/un/a.txt").values()) == {"HIT"}
        view = finish(service, refresh(service, [url_of("/un/")], "dir"))
    assert view["status"] == 0, view["items"]
    assert set(states(lab, "/un/a.txt").values()) == {"MISS"}


def test_a_refresh_while_a_warm_of_the_url_is_in_flight_leaves_no_node_with_the_old_object(
    service: ServiceProcess, lab: Lab
) -> None:
    """A prefetch of an object the origin sends slowly (3 s) is in flight on the shield when the object changes
    and a refresh of it comes. nginx answers a purge of a key it is still fetching "not cached", then stores
    what that fetch brings: the old object, from which the edges filled too (every node held it, both tasks
    succeeded). A purge now waits for the engine's warms of what it purges on its node: no node ends with the
    old object."""
    path = "/slow/race.bin"
    lab.write_file(path, b"O" * 24_000)  # 3 s at the origin's /slow/ rate
    with Client(service.url, DEMO_USER, DEMO_SECRET) as client:
        first = client.prefetch([url_of(path)])
        time.sleep(1.0)  # the shield's GET of the old object is under way
        lab.write_file(path, b"N" * 24_000)
        refreshed = refresh(service, [url_of(path)], "file")
        assert client.wait(refreshed, timeout=60)["status"] == 0
        assert client.wait(first, timeout=60)["status"] == 0
    bodies = {node.name: lab.fetch(node, path, timeout=30).body[:1] for node in lab.cache_nodes()}
    assert b"O" not in bodies.values(), bodies


def test_refresh_then_warm_of_an_object_gone_at_the_origin_purges_every_node(service: ServiceProcess, lab: Lab) -> None:
    """Every node holds the object; it is deleted at the origin; "refresh": true purges the shield, whose warm
    then fails (404). The edges are purged all the same (before, their purges failed "not attempted" and each
    edge went on serving the deleted object); their warms are not attempted, and the task says it failed."""
    path = "/gone/app.js"
    lab.write_file(path, b"old")
    warm(service, [path])
    assert set(states(lab, path).values()) == {"HIT"}
    lab.delete_file(path)
    with Client(service.url, DEMO_USER, DEMO_SECRET) as client:
        taskid = client.prefetch([url_of(path)], refresh=True)
        assert client.wait(taskid, timeout=60)["status"] == 2
        items = {(i["node"], i["action"]): i for i in client.task(taskid)["items"]}
    for node in lab.cache_nodes()[1:]:
        assert items[node.name, "purge"]["state"] == "succeeded", items[node.name, "purge"]
        assert items[node.name, "warm"]["error"] == "not attempted: this URL failed first on shield-1"
    assert {node.name: lab.fetch(node, path).status for node in lab.cache_nodes()} == dict.fromkeys(
        (n.name for n in lab.cache_nodes()), 404
    )


def test_a_prefetch_submitted_just_after_a_dir_refresh_leaves_every_node_warm_with_the_new_objects(
    service: ServiceProcess, lab: Lab
) -> None:
    """The release workflow: the files change, a directory refresh, at once a prefetch of its URLs. The prefetch's
    warms wait for the refresh's purges of their URLs on their nodes (PURGE_FIRST): every node then holds the
    new object, a HIT (before: a tester's 9 rounds of 9 left the edges cold: the warms, or their shares of the
    first prefetch's within dedupe_seconds, ended before the nginx nodes' directory purges, URL by URL, removed
    the copies warmed)."""
    paths = [f"/release/{n}.txt" for n in range(100)]
    for path in paths:
        lab.write_file(path, f"{path} v1\n".encode())
    warm(service, paths)
    for path in paths:
        lab.write_file(path, f"{path} v2\n".encode())
    with Client(service.url, DEMO_USER, DEMO_SECRET) as client:
        purging = refresh(service, [url_of("/release/")], "dir")
        warming = client.prefetch([url_of(p) for p in paths])
        assert client.wait(purging, timeout=60)["status"] == 0
        assert client.wait(warming, timeout=60)["status"] == 0
        items = client.task(warming, limit=10_000)["items"]
    assert {(i["state"], i["note"]) for i in items} == {("succeeded", None)}, items[:3]
    cold = {
        (node.name, path, answer.cache_status, answer.body)
        for node in lab.cache_nodes()
        for path in paths
        if (answer := lab.fetch(node, path)).cache_status != "HIT" or answer.body != f"{path} v2\n".encode()
    }
    assert not cold, sorted(cold)[:5]


@pytest.mark.parametrize("kind", ["file", "dir"])
def test_a_prefetch_right_after_a_refresh_in_another_escape_case_waits_for_its_purges(
    service: ServiceProcess, lab: Lab, kind: str
) -> None:
    """A refresh that writes an object's escapes in lower case (`%c3%a9`, .NET's), at once a prefetch in upper
    case (`%C3%A9`, browsers'): the purge reaches both cases, so the warm waits for it (PURGE_FIRST). Before, the
    warm went first and the purge then removed what it had warmed: both tasks succeeded, the edges left cold (a
    tester's, 4 runs of 4, and its directory's HITs of the old object). Every node now holds the new object."""
    fillers = [f"/esc-order/{kind}/fill-{n}.txt" for n in range(99)]  # the purge of the object not done at once
    path = f"/esc-order/{kind}/%C3%A9/x.txt?k=%C3%A9"
    for name in fillers:
        lab.write_file(name, b"filler")
    lab.write_file(f"/esc-order/{kind}/é/x.txt", b"v1")
    warm(service, [path, *fillers])
    lab.write_file(f"/esc-order/{kind}/é/x.txt", b"v2")
    lower = f"/esc-order/{kind}/%c3%a9/" if kind == "dir" else path.replace("%C3%A9", "%c3%a9")
    entries = [url_of(lower)] if kind == "dir" else [url_of(p) for p in (*fillers, lower)]
    with Client(service.url, DEMO_USER, DEMO_SECRET) as client:
        purging = refresh(service, entries, kind)
        warming = client.prefetch([url_of(path)])
        assert client.wait(purging, timeout=60)["status"] == 0
        assert client.wait(warming, timeout=60)["status"] == 0
    answers = {node.name: lab.fetch(node, path) for node in lab.cache_nodes()}
    assert {name: (a.cache_status, a.body) for name, a in answers.items()} == dict.fromkeys(answers, ("HIT", b"v2"))
