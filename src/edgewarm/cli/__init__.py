"""The `edgewarm` command: server commands (serve, api, worker, db, check-config, demo), operator commands
(admin cancel) and user tools
(submit, refresh, watch, query, tasks, cancel, quota, sign)."""

from .main import main

__all__ = ["main"]
