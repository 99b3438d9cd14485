#!/usr/bin/env bash
# Create ./.venv with dftflow and everything its tests need (idempotent).
# torch is pinned to the CPU build here; the package itself accepts a range,
# so on a GPU machine you can install your own CUDA torch instead.
set -euo pipefail
cd "$(dirname "$0")/.."

PYTHON=${PYTHON:-python3}
if ! "$PYTHON" -c 'import sys; assert sys.version_info >= (3, 11)' 2>/dev/null; then
    echo "dftflow needs Python >= 3.11 (found: $("$PYTHON" --version 2>&1))" >&2
    exit 1
fi
if ! "$PYTHON" -m venv --help >/dev/null 2>&1 || ! "$PYTHON" -c 'import ensurepip' 2>/dev/null; then
    if command -v apt-get >/dev/null && [ "$(id -u)" = 0 ]; then
        export DEBIAN_FRONTEND=noninteractive
        apt-get update -q && apt-get install -y -q python3-venv python3-dev
    else
        echo "python3 -m venv is not available: install python3-venv" >&2
        exit 1
    fi
fi

# A C compiler and Python's headers build dftflow's CHGCAR reader (dftflow/_speedups.c;
# optional: without them dftflow falls back to pymatgen's parser, see hatch_build.py).
if ! command -v cc >/dev/null 2>&1 || ! "$PYTHON" -c 'import os, sysconfig
assert os.path.exists(os.path.join(sysconfig.get_paths()["include"], "Python.h"))' 2>/dev/null; then
    if command -v apt-get >/dev/null && [ "$(id -u)" = 0 ]; then
        export DEBIAN_FRONTEND=noninteractive
        apt-get update -q && apt-get install -y -q --no-install-recommends gcc libc6-dev python3-dev
    else
        echo "setup: no C compiler or Python headers; dftflow will read CHGCARs without its compiled reader" >&2
    fi
fi

if [ ! -x .venv/bin/python ]; then
    "$PYTHON" -m venv .venv
fi
stamp=.venv/.dftflow-installed
if [ ! -f "$stamp" ] || [ pyproject.toml -nt "$stamp" ] || [ dftflow/_speedups.c -nt "$stamp" ] \
        || [ hatch_build.py -nt "$stamp" ]; then
    .venv/bin/python -m pip install -q --upgrade pip
    .venv/bin/python -m pip install -q "torch==2.13.0"
    .venv/bin/python -m pip install -q -e ".[ml,test,vasp,atomate2]"
    touch "$stamp"
fi
# Headless Chromium drives the dashboard's browser tests (tests/dashboard): Debian's package.
if ! command -v chromium >/dev/null 2>&1; then
    if command -v apt-get >/dev/null && [ "$(id -u)" = 0 ]; then
        export DEBIAN_FRONTEND=noninteractive
        apt-get update -q && apt-get install -y -q --no-install-recommends chromium fonts-liberation
    else
        echo "setup: chromium is missing; the dashboard tests need it (as root: apt-get install chromium)" >&2
    fi
fi
# GPAW, the local DFT engine: compiled from source against Debian's libxc,
# OpenBLAS and FFTW (skipped when already installed).
PYTHON=.venv/bin/python ./scripts/install_gpaw.sh
