#!/usr/bin/env bash
# The test suite (reads the reference data in ../shared when it is there).
set -euo pipefail
cd "$(dirname "$0")/.."
./scripts/setup.sh
./scripts/install_slurm.sh   # the scheduler tests start a one-node SLURM cluster
export OMP_NUM_THREADS=1
exec .venv/bin/python -m pytest "$@"
