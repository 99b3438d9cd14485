#!/usr/bin/env bash
# Debian's SLURM and munge, for the scheduler tests (which start a one-node
# cluster on localhost themselves). Needs root for apt; a no-op when installed.
set -euo pipefail
if command -v slurmctld >/dev/null && command -v slurmd >/dev/null && command -v sbatch >/dev/null \
        && command -v munged >/dev/null; then
    exit 0
fi
if [ "$(id -u)" = 0 ] && command -v apt-get >/dev/null; then
    export DEBIAN_FRONTEND=noninteractive
    apt-get update -q
    apt-get install -y -q slurmctld slurmd slurm-client munge
else
    echo "SLURM is not installed and this is not root with apt: the scheduler tests will be skipped" >&2
fi
