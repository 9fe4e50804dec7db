"""Helpers the acceptance tests share."""

from __future__ import annotations

import http.server
import threading
import time

from edgewarm.testing.service import free_port


class Receiver:
    """A webhook receiver on loopback that answers 500 to the first `fail_first` calls, then 200; `calls` holds
    each call's body and headers."""

    def __init__(self, fail_first: int = 0) -> None:
        self.calls: list[tuple[bytes, dict[str, str]]] = []
        self.fail_first = fail_first
        receiver = self

        class Handler(http.server.BaseHTTPRequestHandler):
            def do_POST(self) -> None:
                body = self.rfile.read(int(self.headers.get("Content-Length", "0")))
                receiver.calls.append((body, dict(self.headers.items())))
                self.send_response(500 if len(receiver.calls) <= receiver.fail_first else 200)
                self.send_header("Content-Length", "0")
                self.end_headers()

            def log_message(self, *args: object) -> None:
                pass

        self.server = http.server.ThreadingHTTPServer(("127.0.0.1", free_port()), Handler)
        self.url = f"http://127.0.0.1:{self.server.server_address[1]}/hook"
        self.thread = threading.Thread(target=self.server.serve_forever, daemon=True)

    def __enter__(self) -> Receiver:
        self.thread.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self.server.shutdown()
        self.server.server_close()

    def wait_for(self, count: int, timeout: float = 30) -> None:
        deadline = time.monotonic() + timeout
        while len(self.calls) < count and time.monotonic() < deadline:
            time.sleep(0.05)
        assert len(self.calls) >= count, f"{len(self.calls)} webhook calls after {timeout}s"
