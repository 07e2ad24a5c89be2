#!/usr/bin/env bash
# Set up (idempotent) and run every check: lint, the full test suite (slow tests included), docs build.
set -euo pipefail
cd "$(dirname "$0")/.."
# Small tensors: intra-op threads only add overhead (and contention when tests run beside other work).
export OMP_NUM_THREADS="${OMP_NUM_THREADS:-1}"
TSODE_EXTRAS=dev,docs bash scripts/setup.sh
.venv/bin/python -m ruff check tsode tests benchmarks
.venv/bin/python -m pytest -q "$@"
if [ -f mkdocs.yml ]; then
    .venv/bin/python -m mkdocs build --strict --quiet --site-dir "$(mktemp -d)"
fi
