"""`edgewarm demo`: a real nginx fleet on loopback, `edgewarm serve` on SQLite, a task warmed before your eyes."""

from __future__ import annotations

import tempfile
import time
from collections import Counter
from pathlib import Path

from rich.console import Console
from rich.progress import BarColumn, MofNCompleteColumn, Progress, TextColumn, TimeElapsedColumn
from rich.table import Table

from .client import Client
from .testing import DEFAULT_HOST, Lab
from .testing.service import DEMO_SECRET, DEMO_USER, ServiceProcess, free_port, write_config


def run_demo(urls: int = 200, size: int = 64 * 1024, keep: bool = False, console: Console | None = None) -> bool:
    """Run the demonstration; True when every URL ended warm on every node."""
    out = console or Console()
    with tempfile.TemporaryDirectory(prefix="edgewarm-demo-") as folder:
        root = Path(folder)
        with Lab(root / "lab", edges=2, shield=True) as lab:
            paths = lab.make_files(urls, size, prefix="/assets/")
            port = free_port()
            config = write_config(
                root / "edgewarm.toml", store=f"sqlite:///{root}/edgewarm.db", nodes_toml=lab.nodes_toml(), port=port
            )
            out.print(
                f"[bold]fleet[/]: origin {lab.origin.url}, " + ", ".join(f"{n.name} {n.url}" for n in lab.cache_nodes())
            )
            out.print(f"[bold]config[/]: {config}")
            with ServiceProcess(config, port=port) as service, Client(service.url, DEMO_USER, DEMO_SECRET) as client:
                pid = service.proc.pid if service.proc else "?"
                out.print(f"[bold]edgewarm serve[/] listening on {service.url} (PID {pid})")
                started = time.monotonic()
                full = [f"http://{DEFAULT_HOST}{p}" for p in paths]
                taskids = [client.prefetch(full[i : i + 100]) for i in range(0, len(full), 100)]
                for taskid in taskids:
                    out.print(f"POST /api/prefetch → taskid {taskid}  prefetchQuery → {client.query(taskid)}")
                ok = _follow(out, client, taskids)
                elapsed = time.monotonic() - started
                for taskid in taskids:
                    out.print(f"prefetchQuery → {client.query(taskid)}")
                _summary(out, client, taskids)
                hits = sum(lab.fetch(edge, p).cache_status == "HIT" for edge in lab.edges for p in paths)
                origin = Counter(r.uri for r in lab.requests(lab.origin) if r.uri.startswith("/assets/"))
                out.print(
                    f"{len(paths)} URLs × {len(lab.cache_nodes())} nodes warmed in {elapsed:.2f}s; "
                    f"a viewer now gets HIT on the edges for {hits} of {len(paths) * len(lab.edges)} requests; "
                    f"the origin was asked {sum(origin.values())} times for {len(paths)} URLs."
                )
                if keep:
                    out.print(
                        f"\nStill serving on {service.url} with the fleet above; signature for today: "
                        f"{client.signature()} (user {DEMO_USER}). Ctrl-C to stop."
                    )
                    try:
                        while service.proc is not None and service.proc.poll() is None:
                            time.sleep(0.5)
                    except KeyboardInterrupt:
                        pass
            return ok and hits == len(paths) * len(lab.edges)


def _follow(out: Console, client: Client, taskids: list[str]) -> bool:
    columns = (TextColumn("{task.description}"), BarColumn(), MofNCompleteColumn(), TimeElapsedColumn())
    with Progress(*columns, console=out) as progress:
        bars = {t: progress.add_task(f"task {t[:8]}", total=None) for t in taskids}
        deadline = time.monotonic() + 300
        views: dict[str, dict[str, object]] = {}
        while time.monotonic() < deadline:
            for taskid, bar in bars.items():
                view = client.task(taskid, limit=0)
                views[taskid] = view
                counts = view["counts"]
                assert isinstance(counts, dict)
                progress.update(bar, total=view["total"], completed=counts["succeeded"] + counts["failed"])
            if all(v["status"] != 1 for v in views.values()):
                break
            time.sleep(0.1)
    return all(v["status"] == 0 for v in views.values())


def _summary(out: Console, client: Client, taskids: list[str]) -> None:
    per_node: dict[str, Counter[str]] = {}
    for taskid in taskids:
        for item in client.task(taskid, limit=10_000)["items"]:
            per_node.setdefault(item["node"], Counter())[f"{item['state']} {item['cache_state'] or ''}".strip()] += 1
    table = Table(title="outcomes by node (state and the cache state the node reported)")
    table.add_column("node")
    table.add_column("outcomes")
    for node, counts in per_node.items():
        table.add_row(node, ", ".join(f"{k}: {v}" for k, v in sorted(counts.items())))
    out.print(table)
