#!/usr/bin/env bash
# Set up and run every check: ruff, mypy --strict, and the whole pytest suite (real nginx, Varnish, PostgreSQL).
set -euo pipefail
cd "$(dirname "$0")/.."
bash scripts/setup.sh --test
.venv/bin/ruff check src tests bench
.venv/bin/ruff format --check src tests bench
.venv/bin/mypy src
exec .venv/bin/pytest "$@"
