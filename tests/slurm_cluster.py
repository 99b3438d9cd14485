"""A real one-node SLURM cluster on localhost for the scheduler tests.

Debian's ``slurmctld``/``slurmd``/``munged`` are started directly (no systemd)
with their own munge key, socket, ports, spool and state directories under a
temporary directory, so the cluster does not touch a system SLURM. Finished
jobs are logged by ``jobcomp/filetxt`` (no slurmdbd). Clients find it through
the ``SLURM_CONF`` environment variable, which :func:`start` returns in
``env``.
"""

from __future__ import annotations

import os
import shutil
import signal
import socket
import subprocess
import time
from dataclasses import dataclass, field
from pathlib import Path


@dataclass
class Cluster:
    root: Path
    conf: Path
    env: dict[str, str]
    pids: list[int] = field(default_factory=list)
    jobcomp: Path | None = None

    def run(self, *args: str, check: bool = True) -> subprocess.CompletedProcess:
        return subprocess.run(list(args), env=self.env, capture_output=True, text=True, check=check, timeout=60)

    def stop(self) -> None:
        for pid in reversed(self.pids):
            try:
                os.kill(pid, signal.SIGTERM)
            except ProcessLookupError:
                pass
        deadline = time.time() + 10
        for pid in self.pids:
            while time.time() < deadline:
                try:
                    os.kill(pid, 0)
                except ProcessLookupError:
                    break
                time.sleep(0.1)


def why_unavailable() -> str | None:
    missing = [b for b in ("slurmctld", "slurmd", "sbatch", "munged") if shutil.which(b) is None]
    if missing:
        return f"SLURM is not installed ({', '.join(missing)} missing; scripts/install_slurm.sh installs it)"
    if os.geteuid() != 0:
        return "starting slurmd needs root"
    return None


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def _wait(predicate, timeout: float, what: str, logs: list[Path]) -> None:
    deadline = time.time() + timeout
    while time.time() < deadline:
        if predicate():
            return
        time.sleep(0.2)
    tails = "\n".join(f"--- {p}\n" + (p.read_text()[-2000:] if p.exists() else "(missing)") for p in logs)
    raise RuntimeError(f"local SLURM: {what} did not happen in {timeout:.0f} s\n{tails}")


def start(root: Path, *, cpus: int = 8, max_time_min: int = 30) -> Cluster:
    """Start munged, slurmctld and slurmd under ``root``; the node advertises ``cpus`` CPUs."""
    root = Path(root)
    for sub in ("munge", "state", "spool", "log", "run"):
        (root / sub).mkdir(parents=True, exist_ok=True)
    os.chmod(root / "munge", 0o700)
    key = root / "munge" / "munge.key"
    key.write_bytes(os.urandom(1024))
    os.chmod(key, 0o400)
    munge_socket = root / "munge" / "munge.socket"
    host = socket.gethostname().split(".")[0]
    jobcomp = root / "log" / "jobcomp.txt"
    conf = root / "slurm.conf"
    conf.write_text(f"""\
ClusterName=dftflow-test
SlurmctldHost={host}(127.0.0.1)
SlurmUser=root
SlurmdUser=root
SlurmctldPort={_free_port()}
SlurmdPort={_free_port()}
AuthType=auth/munge
AuthInfo=socket={munge_socket}
CredType=cred/munge
StateSaveLocation={root / "state"}
SlurmdSpoolDir={root / "spool"}
SlurmctldPidFile={root / "run" / "slurmctld.pid"}
SlurmdPidFile={root / "run" / "slurmd.pid"}
SlurmctldLogFile={root / "log" / "slurmctld.log"}
SlurmdLogFile={root / "log" / "slurmd.log"}
ProctrackType=proctrack/linuxproc
TaskPlugin=task/none
MpiDefault=none
ReturnToService=2
SchedulerType=sched/backfill
SelectType=select/cons_tres
SelectTypeParameters=CR_Core
SlurmdParameters=config_overrides
JobCompType=jobcomp/filetxt
JobCompLoc={jobcomp}
JobAcctGatherType=jobacct_gather/none
AccountingStorageType=accounting_storage/none
KillWait=5
OverTimeLimit=0
MinJobAge=300
InactiveLimit=0
SchedulerParameters=sched_interval=1
NodeName={host} NodeAddr=127.0.0.1 CPUs={cpus} RealMemory=4000 State=UNKNOWN
PartitionName=debug Nodes={host} Default=YES MaxTime={max_time_min} State=UP OverSubscribe=NO
""")
    env = {**os.environ, "SLURM_CONF": str(conf)}
    cluster = Cluster(root, conf, env, jobcomp=jobcomp)
    logs = [root / "log" / n for n in ("munged.log", "slurmctld.log", "slurmd.log")]
    try:
        subprocess.run(["munged", "--force", f"--key-file={key}", f"--socket={munge_socket}",
                        f"--pid-file={root / 'run' / 'munged.pid'}", f"--log-file={logs[0]}",
                        f"--seed-file={root / 'munge' / 'munge.seed'}"], check=True, env=env, timeout=30)
        _wait(lambda: (root / "run" / "munged.pid").exists(), 10, "munged start", logs)
        cluster.pids.append(int((root / "run" / "munged.pid").read_text()))
        subprocess.run(["slurmctld", "-f", str(conf)], check=True, env=env, timeout=30)
        _wait(lambda: (root / "run" / "slurmctld.pid").exists(), 20, "slurmctld start", logs)
        cluster.pids.append(int((root / "run" / "slurmctld.pid").read_text()))
        subprocess.run(["slurmd", "-f", str(conf)], check=True, env=env, timeout=30)
        _wait(lambda: (root / "run" / "slurmd.pid").exists(), 20, "slurmd start", logs)
        cluster.pids.append(int((root / "run" / "slurmd.pid").read_text()))

        def idle() -> bool:
            out = subprocess.run(["sinfo", "-h", "-o", "%t"], env=env, capture_output=True, text=True)
            return out.returncode == 0 and out.stdout.strip() in ("idle", "mix", "alloc")

        _wait(idle, 60, "the node becoming idle", logs)
    except BaseException:
        cluster.stop()
        raise
    return cluster
