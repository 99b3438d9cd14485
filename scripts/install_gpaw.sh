#!/usr/bin/env bash
# Install GPAW (serial build: no MPI; FFTW + OpenBLAS + libxc) and its PAW
# datasets (the gpaw-data package) into ./.venv (idempotent).
#
#   scripts/install_gpaw.sh            # uses ./.venv/bin/python
#   PYTHON=/path/to/python scripts/install_gpaw.sh
#
# GPAW 26 compiles its C sources as C++ (g++).  The siteconfig written below
# sets mpi = False explicitly, so an MPI installation on the machine (mpicc /
# mpic++ on PATH) is ignored rather than picked up by default.
# PAW setups: gpaw-data installs them inside site-packages and GPAW finds them
# by itself (gpaw.setup_paths); GPAW_SETUP_PATH is only needed for extra or
# overriding datasets (it is prepended to the search path).
set -euo pipefail
cd "$(dirname "$0")/.."

GPAW_VERSION=26.7.0
GPAW_DATA_VERSION=1.2.1
PYTHON=${PYTHON:-.venv/bin/python}
APT_PACKAGES=(g++ libxc-dev libopenblas-dev libfftw3-dev)

if [ ! -x "$PYTHON" ] && ! command -v "$PYTHON" >/dev/null; then
    echo "install_gpaw: no Python at $PYTHON (run scripts/setup.sh first)" >&2
    exit 1
fi

export OMP_NUM_THREADS=${OMP_NUM_THREADS:-1}

gpaw_ok() {
    "$PYTHON" - <<'EOF' 2>/dev/null
import _gpaw, gpaw, gpaw_data  # noqa: F401  (C extension + datasets)
from gpaw import GPAW  # noqa: F401
assert gpaw.setup_paths, 'no PAW setup path'
EOF
}

if gpaw_ok; then
    echo "install_gpaw: GPAW already installed: $("$PYTHON" -c 'import gpaw; print(gpaw.__version__)')"
    exit 0
fi

# --- system libraries (Debian) -------------------------------------------
missing=()
for pkg in "${APT_PACKAGES[@]}"; do
    if ! dpkg-query -W -f='${Status}' "$pkg" 2>/dev/null | grep -q 'install ok installed'; then
        missing+=("$pkg")
    fi
done
if [ ${#missing[@]} -gt 0 ]; then
    if command -v apt-get >/dev/null && [ "$(id -u)" = 0 ]; then
        echo "install_gpaw: apt-get install ${missing[*]}"
        export DEBIAN_FRONTEND=noninteractive
        apt-get update -q
        apt-get install -y -q --no-install-recommends "${missing[@]}"
    else
        echo "install_gpaw: missing system packages: ${missing[*]}" >&2
        echo "  (install them as root: apt-get install ${missing[*]})" >&2
        exit 1
    fi
fi

# --- siteconfig (serial, FFTW, OpenBLAS, libxc) ----------------------------
workdir=$(mktemp -d)
trap 'rm -rf "$workdir"' EXIT
siteconfig="$workdir/siteconfig.py"
cat > "$siteconfig" <<'EOF'
# GPAW siteconfig written by dftflow scripts/install_gpaw.sh
mpi = False          # explicit: never pick up mpicc/mpic++ from PATH
compiler = 'g++'     # GPAW 26 builds its C sources as C++
fftw = True
scalapack = False
libraries = ['xc', 'openblas', 'fftw3']
EOF

echo "install_gpaw: building gpaw==$GPAW_VERSION (about 1-2 minutes) ..."
log="$workdir/pip.log"
if ! GPAW_CONFIG="$siteconfig" "$PYTHON" -m pip install --no-cache-dir \
        "gpaw==$GPAW_VERSION" "gpaw-data==$GPAW_DATA_VERSION" >"$log" 2>&1; then
    tail -n 60 "$log" >&2
    echo "install_gpaw: pip install failed" >&2
    exit 1
fi

# --- verify ----------------------------------------------------------------
"$PYTHON" -c "from gpaw import GPAW; import gpaw; print('gpaw', gpaw.__version__)"
"$PYTHON" - <<'EOF'
from ase.build import bulk
from gpaw import GPAW, PW, FermiDirac
import gpaw, gpaw_data
atoms = bulk('Si', 'diamond', a=5.43)
atoms.calc = GPAW(mode=PW(200), xc='PBE', kpts=(2, 2, 2),
                  occupations=FermiDirac(0.05), txt=None)
e = atoms.get_potential_energy()
n = atoms.calc.get_number_of_iterations()
assert -11.5 < e < -10.0, e
print(f'install_gpaw: OK gpaw {gpaw.__version__}, gpaw-data '
      f'{gpaw_data.__version__}; Si test E={e:.4f} eV in {n} SCF steps')
EOF
