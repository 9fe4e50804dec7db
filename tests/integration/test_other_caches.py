"""Warming and refresh through `edgewarm serve` on real Squid and Apache Traffic Server nodes (kinds squid, ats)."""

from __future__ import annotations

from collections import Counter
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

from edgewarm.client import Client
from edgewarm.testing import DEFAULT_HOST, Lab, LabNode
from edgewarm.testing.service import DEMO_SECRET, DEMO_USER, ServiceProcess, free_port, write_config

pytestmark = pytest.mark.integration

OTHERS = ("squid-1", "ats-1")


def url_of(path: str) -> str:
    return f"http://{DEFAULT_HOST}{path}"


def start_lab(root: Path, *, shield: bool) -> Lab:
    """A shield (nginx with the purge module) or none, one Squid and one ATS: no nginx edges to hide behind."""
    return Lab(root, edges=0, shield=shield, squid=1, trafficserver=1, purge_module=True)


def start_service(tmp_path: Path, lab: Lab) -> ServiceProcess:
    """`edgewarm serve` for `lab`'s cache nodes; dedupe off, so that a second prefetch fetches again."""
    port = free_port()
    config = write_config(
        tmp_path / "edgewarm.toml",
        store=f"sqlite:///{tmp_path}/edgewarm.db",
        nodes_toml=lab.nodes_toml(),
        port=port,
        extra="[engine]\ndedupe_seconds = 0\n",
    )
    return ServiceProcess(config, port=port)


@pytest.fixture
def lab(tmp_path: Path) -> Iterator[Lab]:
    with start_lab(tmp_path / "lab", shield=True) as lab:
        yield lab


@pytest.fixture
def service(tmp_path: Path, lab: Lab) -> Iterator[ServiceProcess]:
    with start_service(tmp_path, lab) as service:
        yield service


def others(lab: Lab) -> list[LabNode]:
    return [*lab.squids, *lab.trafficservers]


def prefetch(service: ServiceProcess, paths: list[str]) -> dict[str, Any]:
    """Prefetch `paths`, wait for the end; the task's native view with its items."""
    with Client(service.url, DEMO_USER, DEMO_SECRET) as client:
        taskid = client.prefetch([url_of(p) for p in paths])
        view = client.wait(taskid, timeout=60)
        assert client.query(taskid)["status"] == view["status"]
        return client.task(taskid)


def refresh(service: ServiceProcess, entries: list[str], kind: str) -> dict[str, Any]:
    """Submit /api/refresh in the raw wire format, wait for the end; the task's native view with its items."""
    with Client(service.url, DEMO_USER, DEMO_SECRET) as client:
        body = client._http.post(
            "/api/refresh",
            json={"username": DEMO_USER, "signature": client.signature(), "instances": entries, "type": kind},
        ).json()
        assert body["status"] == 0, body
        client.wait(body["taskid"], timeout=60)
        return client.task(body["taskid"])


def items_on(view: dict[str, Any], node: str) -> dict[str, dict[str, Any]]:
    """The task's items on `node`, by URL."""
    return {i["url"]: i for i in view["items"] if i["node"] == node}


def states(lab: Lab, path: str) -> dict[str, str | None]:
    """Each cache node's own cache state for one GET of `path`, shield first (so it is not refilled by them)."""
    return {node.name: lab.fetch(node, path).cache_status for node in lab.cache_nodes()}


def purges(lab: Lab, node: LabNode) -> list[tuple[str, str, int]]:
    """(host, uri, status) of each PURGE `node` logged."""
    return [(r.host, r.uri, r.status) for r in lab.requests(node) if r.method == "PURGE"]


@pytest.mark.parametrize("shield", [True, False], ids=["behind-shield", "on-origin"])
def test_prefetch_warms_squid_and_ats(tmp_path: Path, shield: bool) -> None:
    """A prefetch ends with status 0; Squid and ATS recorded a MISS, then answer HIT; the origin saw each URL
    once behind the shield, else once per node; a second prefetch records HIT on both."""
    with start_lab(tmp_path / "lab", shield=shield) as lab, start_service(tmp_path, lab) as service:
        paths = lab.make_files(3, 3000)
        view = prefetch(service, paths)
        assert view["status"] == 0, view["items"]
        assert view["counts"]["succeeded"] == 3 * len(lab.cache_nodes()) == len(view["items"])
        for name in OTHERS:
            items = items_on(view, name)
            assert sorted(items) == sorted(url_of(p) for p in paths)
            assert {(i["state"], i["http_status"], i["cache_state"], i["bytes"]) for i in items.values()} == {
                ("succeeded", 200, "MISS", 3000)
            }, name
        for node in others(lab):
            assert [lab.fetch(node, p).cache_status for p in paths] == ["HIT"] * 3, node.name
        origin = Counter(r.uri for r in lab.requests(lab.origin) if r.uri.startswith("/f/"))
        assert origin == Counter({p: 1 if shield else 2 for p in paths})

        again = prefetch(service, paths)
    assert again["status"] == 0
    assert {i["cache_state"] for name in OTHERS for i in items_on(again, name).values()} == {"HIT"}


def test_file_refresh_purges_on_squid_and_ats(service: ServiceProcess, lab: Lab) -> None:
    """Warm two files, refresh one and a URL never warmed: PURGED and NOT_CACHED on each node, the refreshed
    file is then a MISS everywhere, the other one still a HIT; Squid and ATS logged PURGE with the URL's Host."""
    paths = lab.make_files(2, 1000)
    assert prefetch(service, paths)["status"] == 0
    assert set(states(lab, paths[0]).values()) == {"HIT"}

    view = refresh(service, [url_of(paths[0]), url_of("/never/warmed.bin")], "file")

    assert view["status"] == 0, view["items"]
    assert {i["action"] for i in view["items"]} == {"purge"}
    for name in OTHERS:
        items = items_on(view, name)
        assert items[url_of(paths[0])]["cache_state"] == "PURGED", name
        assert items[url_of("/never/warmed.bin")]["cache_state"] == "NOT_CACHED", name
    assert states(lab, paths[0]) == {"shield-1": "MISS", "squid-1": "MISS", "ats-1": "MISS"}
    assert set(states(lab, paths[1]).values()) == {"HIT"}
    for node in others(lab):
        lab.wait_for_requests(node, 2, uri=paths[1], timeout=10)  # the last GET: ATS writes its log late
        assert sorted(purges(lab, node)) == [
            (DEFAULT_HOST, paths[0], 200),
            (DEFAULT_HOST, "/never/warmed.bin", 404),
        ], node.name


def test_dir_refresh_purges_each_known_url_under_the_prefix(service: ServiceProcess, lab: Lab) -> None:
    """A dir refresh of /d/ (dir_purge "urls" for Squid and ATS) purges /d/ itself (its index page; before,
    it stayed cached), /d/a, /d/sub/b and nothing outside."""
    inside = ["/d/", "/d/a.bin", "/d/sub/b.bin"]
    outside = ["/other/c.bin", "/dd/e.bin"]
    lab.write_file("/d/index.html", b"the index of /d/")
    for path in inside[1:] + outside:
        lab.write_file(path, path.encode() * 10)
    assert prefetch(service, inside + outside)["status"] == 0

    view = refresh(service, [url_of("/d/")], "dir")

    assert view["status"] == 0, view["items"]
    assert {(i["node"], i["action"], i["cache_state"]) for i in view["items"]} == {
        (name, "purge_dir", "PURGED") for name in ("shield-1", *OTHERS)
    }
    for path in inside:
        assert set(states(lab, path).values()) == {"MISS"}, path
    for path in outside:
        assert set(states(lab, path).values()) == {"HIT"}, path
    for node in others(lab):
        lab.wait_for_requests(node, 2, uri=outside[-1], timeout=10)  # the warm and the last GET
        assert sorted(purges(lab, node)) == [(DEFAULT_HOST, p, 200) for p in sorted(inside)], node.name
