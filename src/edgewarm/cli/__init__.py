"""The `edgewarm` command: server commands (serve, api, worker, db, check-config, demo), operator commands
(admin cancel) and user tools
(submit, refresh, watch, query, tasks, cancel, failed, quota, sign)."""

import sys

from .. import hangups

if sys.argv[1:2] in (["serve"], ["api"], ["worker"]):
    hangups.hold()  # first, before the imports (a second or so): a reload asked meanwhile is not fatal

from .main import main

__all__ = ["main"]
