"""SLURM: batch scripts from cluster profiles, submission and job states.

A *launch* is one SLURM allocation that runs the jobs of up to ``pack``
workflows, one after the other (many "rockets" per allocation, as FireWorks'
``qlaunch rapidfire`` does). The script below starts ``dftflow rocket`` on the
launch directory; the rocket never writes the project's store, it leaves one
result file per job there, which the submit host reads back (the embedded
store has a single writer; see docs/execution.md).
"""

from __future__ import annotations

import re
import shlex
import subprocess
import sys
from pathlib import Path

from dftflow.config.profile import ClusterProfile
from dftflow.errors import ConfigError, DftflowError


class SlurmError(DftflowError):
    """sbatch/squeue failed; the message carries their stderr."""


def job_script(profile: ClusterProfile, launch_dir: Path, *, job_name: str = "dftflow",
               command: str = "rocket") -> str:
    """The batch script for one launch: #SBATCH lines, modules, pre-run lines, then the rocket.

    ``command``: the dftflow command run on the launch directory (``fw-rocket`` for the FireWorks engine).
    """
    if profile.slurm is None:
        raise ConfigError(f"profile {profile.name}: no slurm section")
    s = profile.slurm
    lines = ["#!/bin/bash", f"#SBATCH --job-name={job_name}"]
    for flag, value in (("account", s.account), ("partition", s.partition), ("qos", s.qos),
                        ("constraint", s.constraint), ("mem", s.mem)):
        if value:
            lines.append(f"#SBATCH --{flag}={value}")
    lines += [f"#SBATCH --nodes={s.nodes}", f"#SBATCH --ntasks-per-node={s.ntasks_per_node}",
              f"#SBATCH --cpus-per-task={s.cpus_per_task}", f"#SBATCH --time={s.walltime}",
              f"#SBATCH --output={launch_dir}/slurm-%j.out"]
    lines += [f"#SBATCH {d}" for d in s.extra_directives]
    lines += [
        "",
        "# the rocket stops starting jobs, and custodian stops VASP cleanly, before this time",
        f"export DFTFLOW_JOB_END=$(( $(date +%s) + {s.walltime_seconds()} ))",
        f"export DFTFLOW_STOP_MARGIN={s.stop_margin_s}",
        f"export OMP_NUM_THREADS={s.cpus_per_task}",
    ]
    lines += [f"module load {m}" for m in s.modules]
    lines += list(s.pre_run)
    python = profile.python or sys.executable
    lines += ["", f"exec {shlex.quote(python)} -m dftflow {command} {shlex.quote(str(launch_dir))}", ""]
    return "\n".join(lines)


def sbatch(script: Path, *, env: dict[str, str] | None = None) -> str:
    """Submit a batch script; returns the SLURM job id."""
    try:
        out = subprocess.run(["sbatch", "--parsable", str(script)], capture_output=True, text=True, env=env,
                             timeout=120)
    except FileNotFoundError as exc:
        raise SlurmError("sbatch not found: is this a SLURM login node?") from exc
    if out.returncode != 0:
        raise SlurmError(f"sbatch {script}: {out.stderr.strip() or out.stdout.strip()}")
    return out.stdout.strip().split(";")[0]


# States of an allocation that has not ended (squeue may briefly miss one that sacct still reports)
ACTIVE_STATES = frozenset({"PENDING", "CONFIGURING", "RUNNING", "COMPLETING", "SUSPENDED", "REQUEUED",
                           "REQUEUE_HOLD", "REQUEUE_FED", "RESIZING", "SIGNALING", "STAGE_OUT", "STOPPED"})
# End states that are not the job's doing: the job that was running is LOST (``dftflow retry`` reruns it)
LOST_STATES = frozenset({"NODE_FAIL", "BOOT_FAIL", "CANCELLED", "PREEMPTED", "REVOKED", "UNKNOWN"})


def queue_states(job_ids: list[str], *, env: dict[str, str] | None = None) -> dict[str, str]:
    """SLURM states (PENDING, RUNNING, ...) of the jobs still known to squeue.

    Raises :class:`SlurmError` when squeue cannot answer (controller down, ...): an
    allocation must never be taken for ended because the scheduler did not reply.
    """
    if not job_ids:
        return {}
    try:
        out = subprocess.run(["squeue", "-h", "-o", "%i %T", "-j", ",".join(job_ids)], capture_output=True,
                             text=True, env=env, timeout=120)
    except FileNotFoundError as exc:
        raise SlurmError("squeue not found: is this a SLURM login node?") from exc
    if out.returncode != 0 and "Invalid job id" not in out.stderr:  # that one: none of them is known any more
        raise SlurmError(f"squeue: {out.stderr.strip() or out.stdout.strip() or f'exit status {out.returncode}'}")
    states = {}
    for line in out.stdout.splitlines():
        parts = line.split()
        if len(parts) == 2:
            states[parts[0]] = parts[1]
    return states


_STATE = re.compile(r"JobState=(\S+)")


def sacct_state(text: str) -> str | None:
    """The state in ``sacct -n -X -P -o State`` output (``CANCELLED by 0`` → CANCELLED, ``TIMEOUT+`` → TIMEOUT)."""
    line = next((x for x in text.splitlines() if x.strip()), "")
    return line.split()[0].rstrip("+") if line else None


def scontrol_state(text: str) -> str | None:
    """The ``JobState=`` of ``scontrol show job`` output."""
    m = _STATE.search(text)
    return m.group(1) if m else None


def job_state_after(end: str) -> str:
    """The state of the job that was running when an allocation ended ``end``: LOST or FAILED."""
    return "LOST" if end in LOST_STATES else "FAILED"


def final_state(job_id: str, *, env: dict[str, str] | None = None) -> str:
    """How a SLURM job ended: COMPLETED, TIMEOUT, FAILED, CANCELLED, NODE_FAIL, ... or UNKNOWN.

    Asks ``sacct`` (accounting) first, then ``scontrol show job`` (kept for MinJobAge
    after the end). A state in :data:`ACTIVE_STATES` means it has not ended after all.
    """
    for cmd, parse in ((["sacct", "-n", "-X", "-P", "-o", "State", "-j", job_id], sacct_state),
                       (["scontrol", "show", "job", job_id], scontrol_state)):
        try:
            out = subprocess.run(cmd, capture_output=True, text=True, env=env, timeout=60)
        except FileNotFoundError:
            continue
        if out.returncode == 0 and (state := parse(out.stdout)):
            return state
    return "UNKNOWN"
