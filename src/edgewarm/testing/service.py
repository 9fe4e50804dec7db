"""Run `edgewarm serve` (or `api` / `worker`) as a real process, for tests, demos and benchmarks."""

from __future__ import annotations

import os
import resource
import signal
import socket
import subprocess
import sys
import time
import urllib.error
import urllib.request
from pathlib import Path
from types import TracebackType
from typing import Self

from ..config import EXAMPLE_SECRET

DEMO_USER = "jcloud_00"
DEMO_SECRET = EXAMPLE_SECRET  # README's example user is the demo's


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def write_config(
    path: Path,
    *,
    store: str,
    nodes_toml: str,
    port: int,
    domains: tuple[str, ...] = ("www.example.test", "*.example.test"),
    extra: str = "",
) -> Path:
    """A config file for one demo user (PRODUCT.md's example credentials) and the given nodes."""
    quoted = ", ".join(f'"{d}"' for d in domains)
    path.write_text(
        f'listen = "127.0.0.1:{port}"\nstore = "{store}"\n{extra}\n'
        f'[[users]]\nname = "{DEMO_USER}"\nsecret = "{DEMO_SECRET}"\ndomains = [{quoted}]\n'
        f"urls_per_day = 100000000\n\n{nodes_toml}\n"
    )
    path.chmod(0o600)  # it holds a secret: for its owner only, as check-config asks
    return path


class ServiceProcess:
    """`edgewarm <command> --config FILE` in a child process; stopped by PID on exit."""

    def __init__(
        self,
        config: Path,
        *,
        command: str = "serve",
        port: int | None = None,
        log: Path | None = None,
        open_files: int | None = None,
    ):
        self.config = config
        self.command = command
        self.port = port
        self.log = log or config.with_suffix(f".{command}.log")
        self.open_files = open_files  # the process's limit of open files (soft and hard); None: this one's
        self.proc: subprocess.Popen[bytes] | None = None

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.port}"

    def start(self, timeout: float = 20.0) -> Self:
        """Start the process; with a port, return once it answers /healthz and says "edgewarm running" (its
        API answers while its engine takes back a previous process's items: what follows may need the engine)."""
        started = self._running_said()
        exe = Path(sys.executable).with_name("edgewarm")
        argv = [str(exe)] if exe.exists() else [sys.executable, "-m", "edgewarm"]
        with open(self.log, "ab") as out:
            self.proc = subprocess.Popen(
                [*argv, self.command, "--config", str(self.config)],
                stdout=out,
                stderr=subprocess.STDOUT,
                preexec_fn=None if self.open_files is None else self._limit_open_files,
            )
        if self.port is not None:
            deadline = time.monotonic() + timeout
            self._wait_healthy(timeout)
            while self._running_said() == started:  # (the log is appended to: a restart's line is the next one)
                assert self.proc is not None
                if self.proc.poll() is not None or time.monotonic() > deadline:
                    raise RuntimeError(f"edgewarm {self.command} did not say it runs: {self.log_tail()}")
                time.sleep(0.05)
        return self

    def _running_said(self) -> int:
        return self.log_text().count("edgewarm running")

    def _limit_open_files(self) -> None:
        assert self.open_files is not None
        resource.setrlimit(resource.RLIMIT_NOFILE, (self.open_files, self.open_files))

    def _wait_healthy(self, timeout: float) -> None:
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            assert self.proc is not None
            if self.proc.poll() is not None:
                raise RuntimeError(f"edgewarm {self.command} exited with {self.proc.returncode}: {self.log_tail()}")
            try:
                with urllib.request.urlopen(f"{self.url}/healthz", timeout=1) as r:
                    if r.status == 200:
                        return
            except (urllib.error.URLError, OSError):
                time.sleep(0.05)
        raise RuntimeError(f"edgewarm {self.command} not healthy after {timeout}s: {self.log_tail()}")

    def wait_for_log(self, text: str, timeout: float = 20.0) -> None:
        """Wait until the log contains `text` (a worker has no port: it says "edgewarm running" when ready)."""
        deadline = time.monotonic() + timeout
        while True:
            assert self.proc is not None
            if text in self.log_text():
                return
            if self.proc.poll() is not None:
                raise RuntimeError(f"edgewarm {self.command} exited with {self.proc.returncode}: {self.log_tail()}")
            if time.monotonic() > deadline:
                raise RuntimeError(f"edgewarm {self.command}: no {text!r} in its log after {timeout}s")
            time.sleep(0.05)

    def log_text(self) -> str:
        """The whole log ("" before there is one): its last 4,000 characters were what a test counted lines in,
        and a count stood still once each new line pushed an old one out (a review's)."""
        try:
            return self.log.read_text(errors="replace")
        except OSError:
            return ""

    def log_tail(self) -> str:
        """The log's last 4,000 characters, for a message."""
        return self.log_text()[-4000:]

    def stop(self, timeout: float = 20.0) -> int | None:
        """SIGTERM, wait for a clean exit; SIGKILL after `timeout`. Returns the exit code."""
        if self.proc is None or self.proc.poll() is not None:
            return None if self.proc is None else self.proc.returncode
        self.proc.send_signal(signal.SIGTERM)
        try:
            return self.proc.wait(timeout)
        except subprocess.TimeoutExpired:
            self.kill()
            return None

    def kill(self) -> None:
        """SIGKILL: a crash, as far as the store can tell."""
        if self.proc is not None and self.proc.poll() is None:
            os.kill(self.proc.pid, signal.SIGKILL)
            self.proc.wait(10)

    def __enter__(self) -> Self:
        return self if self.proc is not None and self.proc.poll() is None else self.start()  # started already

    def __exit__(self, t: type[BaseException] | None, e: BaseException | None, tb: TracebackType | None) -> None:
        self.stop()


def start_service(
    folder: Path,
    nodes_toml: str,
    *,
    extra: str = "",
    domains: tuple[str, ...] = ("www.example.test", "*.example.test"),
    store: str | None = None,
    command: str = "serve",
    timeout: float = 30.0,
    open_files: int | None = None,
) -> ServiceProcess:
    """`edgewarm serve` (or `api`) on a free port for DEMO_USER, on a SQLite file in `folder` unless `store`."""
    folder.mkdir(parents=True, exist_ok=True)
    port = free_port()
    config = write_config(
        folder / "edgewarm.toml",
        store=store or f"sqlite:///{folder}/edgewarm.db",
        nodes_toml=nodes_toml,
        port=port,
        domains=domains,
        extra=extra,
    )
    return ServiceProcess(config, command=command, port=port, open_files=open_files).start(timeout)
