"""`edgewarm demo`: a real nginx fleet on loopback, `edgewarm serve` on SQLite, a task warmed before your eyes."""

from __future__ import annotations

import json
import signal
import tempfile
import time
from collections import Counter
from pathlib import Path

from rich.console import Console

from .cli.watch import follow
from .client import Client
from .testing import DEFAULT_HOST, Lab
from .testing.service import DEMO_SECRET, DEMO_USER, ServiceProcess, free_port, write_config


def run_demo(urls: int = 200, size: int = 64 * 1024, keep: bool = False, console: Console | None = None) -> bool:
    """Run the demonstration; True when every URL ended warm on every node. SIGTERM and SIGHUP stop it as
    Ctrl-C does: everything it started is stopped and its folder removed."""
    previous = {signum: signal.signal(signum, _interrupt) for signum in (signal.SIGTERM, signal.SIGHUP)}
    try:
        return _run_demo(urls, size, keep, console or Console())
    finally:
        for signum, handler in previous.items():
            signal.signal(signum, handler)


def _interrupt(signum: int, frame: object) -> None:
    raise KeyboardInterrupt


def _run_demo(urls: int, size: int, keep: bool, out: Console) -> bool:
    with tempfile.TemporaryDirectory(prefix="edgewarm-demo-") as folder:
        root = Path(folder)
        # Nodes that purge (the cache-purge module): a refresh works there too (it failed, 405: a newcomer's).
        with Lab(root / "lab", edges=2, shield=True, purge_module=True) as lab:
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
                ok = follow(client, taskids, interval=0.1, console=out) == 0
                elapsed = time.monotonic() - started
                for taskid in taskids:
                    out.print(f"prefetchQuery → {client.query(taskid)}")
                hits = sum(lab.fetch(edge, p).cache_status == "HIT" for edge in lab.edges for p in paths)
                origin = Counter(r.uri for r in lab.requests(lab.origin) if r.uri.startswith("/assets/"))
                out.print(
                    f"{len(paths)} URLs × {len(lab.cache_nodes())} nodes warmed in {elapsed:.2f}s; "
                    f"a viewer now gets HIT on the edges for {hits} of {len(paths) * len(lab.edges)} requests; "
                    f"the origin was asked {sum(origin.values())} times for {len(paths)} URLs."
                )
                if keep:
                    body = json.dumps(
                        {"username": DEMO_USER, "signature": client.signature(), "publish_urls": [full[0]]}
                    )
                    out.print(
                        f"\nStill serving on {service.url} with the fleet above; signature for today: "
                        f"{client.signature()} (user {DEMO_USER}). Try:\n"
                        f"curl -s {service.url}/api/prefetch -H 'content-type: application/json' -d '{body}'\n"
                        f"Its log: {service.log}\nCtrl-C to stop.",
                        markup=False,
                        highlight=False,
                        soft_wrap=True,
                    )
                    try:
                        while service.proc is not None and service.proc.poll() is None:
                            time.sleep(0.5)
                    except KeyboardInterrupt:
                        pass
                    else:  # the service ended on its own: say so (and fail), not end as if asked to
                        code = service.proc.returncode if service.proc is not None else None
                        how = f"killed by signal {-code}" if code is not None and code < 0 else f"exit status {code}"
                        out.print(f"edgewarm serve ended by itself ({how}); the end of its log:", style="red")
                        out.print(service.log_text()[-2000:], markup=False, highlight=False, soft_wrap=True)
                        ok = False
            return ok and hits == len(paths) * len(lab.edges)
