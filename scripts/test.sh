#!/usr/bin/env bash
# The test suite (reads the reference data in ../shared when it is there).
set -euo pipefail
cd "$(dirname "$0")/.."
./scripts/setup.sh
export OMP_NUM_THREADS=1
exec .venv/bin/python -m pytest "$@"
