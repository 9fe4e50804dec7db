"""Warms through an https node: the Fetcher against one nginx serving TLS on loopback, sources in turns.

    .venv/bin/python bench/https_nodes.py                                      # this checkout
    .venv/bin/python bench/https_nodes.py --src old=/tmp/old/src --src new=/tmp/new/src
    .venv/bin/python bench/https_nodes.py --by-name     # the node given as https://localhost:PORT

The node is given by IP address (`--by-name`: as localhost) with `tls_verify = false` (a self-signed
certificate for the site's name, made with openssl), the files (4 KiB each) are in /dev/shm, and nginx serves
them itself (no cache: what is measured is the client). Each contender runs in its own process (uvloop, as the
service), `--concurrency` requests in flight, and prints requests/s and CPU per request: the process's and its
event loop thread's. `--src NAME=DIR` runs that contender from another source folder (`git archive REV src |
tar -x -C DIR`).
"""

from __future__ import annotations

import argparse
import json
import shutil
import signal
import subprocess
import sys
import tempfile
from pathlib import Path

if __package__ in (None, ""):
    sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from bench.common import Deadline, in_turns, use_source
from edgewarm.testing import DEFAULT_HOST, self_signed
from edgewarm.testing.service import free_port

SIZE = 4096

# The contender: run with `python -c`, in a process of its own.
_CONTENDER = """
import asyncio, json, sys, time
import uvloop
from edgewarm.config import Engine, Node
from edgewarm.engine import Fetcher
from edgewarm.urls import parse_url

async def main(url, host, count, concurrency, size):
    node = Node(name="tls", url=url, tls_verify=False)
    targets = [parse_url(f"https://{host}/f/{i:06d}.bin") for i in range(count)]
    async with Fetcher(Engine(concurrency=concurrency)) as fetcher:
        await fetcher.request("GET", node, targets[0])  # the first connection, before the clock starts
        jobs, failures = iter(targets), 0
        async def worker():
            nonlocal failures
            for target in jobs:
                result = await fetcher.request("GET", node, target)
                failures += result.status != 200 or result.bytes != size
        wall, cpu, loop = time.perf_counter(), time.process_time(), time.thread_time()
        await asyncio.gather(*(worker() for _ in range(concurrency)))
        wall, cpu, loop = time.perf_counter() - wall, time.process_time() - cpu, time.thread_time() - loop
    return {"per_s": count / wall, "cpu_us": cpu / count * 1e6, "loop_us": loop / count * 1e6, "failures": failures}

uvloop.install()
url, host, count, concurrency, size = sys.argv[1], sys.argv[2], *map(int, sys.argv[3:])
print(json.dumps(asyncio.run(main(url, host, count, concurrency, size))))
"""


def _nginx_conf(root: Path, port: int) -> str:
    return f"""worker_processes 1; daemon off; error_log {root}/error.log; pid {root}/nginx.pid;
events {{ worker_connections 1024; }}
http {{
    access_log off;
    keepalive_requests 1000000;
    server {{
        listen 127.0.0.1:{port} ssl;
        ssl_certificate {root}/cert.pem;
        ssl_certificate_key {root}/key.pem;
        root {root}/docroot;
    }}
}}
"""


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--requests", type=int, default=5000)
    parser.add_argument("--concurrency", type=int, default=64)
    parser.add_argument("--rounds", type=int, default=3)
    parser.add_argument("--src", action="append", default=[], help="NAME=DIR: PYTHONPATH of that contender")
    parser.add_argument("--by-name", action="store_true", help="the node's URL names localhost, not 127.0.0.1")
    args = parser.parse_args(argv)
    sources: dict[str, str | None] = dict(s.split("=", 1) for s in args.src) or {"this": None}
    deadline = Deadline(60 + 60 * args.rounds * len(sources), "https_nodes")
    root = Path(tempfile.mkdtemp(prefix="edgewarm-https-", dir="/dev/shm"))
    root.chmod(0o755)  # nginx's workers run as another user
    nginx = None
    try:
        self_signed(root, DEFAULT_HOST)
        (root / "docroot" / "f").mkdir(parents=True)
        for i in range(args.requests):
            (root / "docroot" / "f" / f"{i:06d}.bin").write_bytes(b"x" * SIZE)
        port = free_port()
        (root / "nginx.conf").write_text(_nginx_conf(root, port))
        nginx = subprocess.Popen(["nginx", "-p", str(root), "-c", str(root / "nginx.conf")])
        node_url = f"https://{'localhost' if args.by_name else '127.0.0.1'}:{port}"
        argv_tail = [node_url, DEFAULT_HOST, str(args.requests), str(args.concurrency), str(SIZE)]
        for round_no in range(args.rounds):
            for name in in_turns(list(sources), round_no):
                use_source(sources[name])
                run = subprocess.run(
                    [sys.executable, "-c", _CONTENDER, *argv_tail],
                    capture_output=True,
                    text=True,
                    timeout=deadline.left(),
                )
                if run.returncode != 0:
                    raise RuntimeError(f"{name} failed: {run.stderr[-2000:]}")
                r = json.loads(run.stdout)
                if r["failures"]:
                    raise RuntimeError(f"{name}: {r['failures']} requests did not get a 200 with the whole file")
                print(
                    f"round {round_no + 1} {name:8s} {r['per_s']:8,.0f} requests/s  CPU {r['cpu_us']:6.1f} us/request "
                    f"(event loop {r['loop_us']:5.1f})  failures {r['failures']}",
                    flush=True,
                )
    finally:
        if nginx is not None:
            nginx.send_signal(signal.SIGTERM)
            try:
                nginx.wait(10)
            except subprocess.TimeoutExpired:
                nginx.kill()
                nginx.wait()
        shutil.rmtree(root, ignore_errors=True)
    return 0


if __name__ == "__main__":
    sys.exit(main())
