#!/usr/bin/env bash
# The main job on the embedded default: no server, no VASP, local execution.
set -euo pipefail
cd "$(dirname "$0")/.."
./scripts/setup.sh
export OMP_NUM_THREADS=${OMP_NUM_THREADS:-1}
exec .venv/bin/dftflow build-dataset demo "$@"
