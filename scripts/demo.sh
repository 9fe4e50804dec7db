#!/usr/bin/env bash
# Set up, then run edgewarm end to end on SQLite against local nginx caches started for the demonstration.
set -euo pipefail
cd "$(dirname "$0")/.."
bash scripts/setup.sh
exec .venv/bin/edgewarm demo "$@"
