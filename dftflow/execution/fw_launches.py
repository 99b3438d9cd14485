"""FireWorks rockets on SLURM, offline: reserve, ``CommonAdapter`` submits, offline ``Rocket``, ``recover_offline``.

The LaunchPad has one writer, the submit host (with mongomock it must: the
store is one file). ``FwLauncher.launch`` does what FireWorks' queue launcher
does in reservation mode (``qlaunch -r``, ``queue_launcher.launch_rocket_to_queue``),
for a pack of fireworks per allocation instead of one: it reserves up to
``pack`` READY fireworks of the project (``LaunchPad.reserve_fw``), writes
FireWorks' offline files into each firework's job directory
(``queue_launcher.setup_offline_job``: ``FW.json``, ``FW_offline.json``,
``add_offline_run``), renders the allocation's script with FireWorks'
``CommonAdapter`` (q_type SLURM, FireWorks' own ``SLURM_template.txt`` unless
the profile names another; the profile's partition, account, walltime, nodes,
modules and stop margin) and submits it with ``CommonAdapter.submit_to_queue``,
then records the SLURM id (``set_reservation_id``). The script runs
``dftflow fw-rocket``: FireWorks' own offline ``Rocket`` in each directory,
one after the other, starting none with less than the profile's stop margin
left. The rocket never opens the LaunchPad; it writes ``FW_offline.json``
(started, then the FWAction and state). FireWorks' ``rapidfire`` itself is not
used: in reservation mode it reserves one firework per queue job.

``recover`` (``status``, ``submit``, ``retry``) does what ``lpad recover_offline``
does for the project's active allocations, then settles allocations that have
left ``squeue`` (state from ``sacct``/``scontrol``): a firework that had started
when SLURM ended the allocation is FIZZLED with the SLURM state as its reason;
reserved ones that never started go back to READY (``cancel_reservation``).
Last, FireWorks' ``detect_lostruns`` fizzles the project's RUNNING launches that
no active allocation holds and that have not pinged for ``fireworks.lost_after_s``
(``FwLauncher._detect_lost``).

A workflow's fireworks become READY only when the LaunchPad learns that their
parents completed, i.e. at recovery on the submit host: relax and static of one
structure run in two allocations (``pack`` counts fireworks, not workflows).
"""

from __future__ import annotations

import contextlib
import json
import logging
import os
import shlex
import sys
import threading
import time
import uuid as uuidlib
import warnings
from collections.abc import Iterator
from pathlib import Path
from typing import Any

from dftflow.config.profile import ClusterProfile, stop_margin_s
from dftflow.errors import ConfigError
from dftflow.execution.fw_engine import project_key
from dftflow.execution.fw_launchpad import import_fireworks
from dftflow.execution.launches import _stopped_before_walltime
from dftflow.execution.slurm import (
    ACTIVE_STATES,
    SlurmError,
    final_state,
    job_state_after,
    queue_states,
)

ALLOCATIONS = "dftflow_allocations"
_ROCKET_LOG = "rocket.json"
SUBMIT_SCRIPT = "FW_submit.script"  # FireWorks' name for it (fw_config.SUBMIT_SCRIPT_NAME)
STOPPED_KEY = "_dftflow_stopped"  # in a FIZZLED launch's stored_data: stopped cleanly before the walltime
MAX_STOPS = 3
Q_NAME = "dftflow-slurm"  # CommonAdapter's q_name: its logger is qadapter.<q_name>


def qadapter(profile: ClusterProfile) -> Any:
    """FireWorks' ``CommonAdapter`` (q_type SLURM) filled from the profile, as a ``my_qadapter.yaml`` would be.

    ``pre_rocket`` carries the profile's extra ``#SBATCH`` lines (first, before any command, where sbatch
    still reads them), the walltime stop margin, the modules and ``pre_run``; ``rocket_launch`` is set per
    allocation (:func:`allocation_script`).
    """
    if profile.slurm is None or profile.fireworks is None:
        raise ConfigError(f"profile {profile.name}: engine fireworks needs the slurm and fireworks sections")
    import_fireworks(profile.fireworks, Path.cwd())
    from fireworks.user_objects.queue_adapters.common_adapter import CommonAdapter

    s = profile.slurm
    pre = [f"#SBATCH {d}" for d in s.extra_directives]
    pre += ["# the rocket stops starting jobs, and custodian stops VASP cleanly, before this time",
            f"export DFTFLOW_JOB_END=$(( $(date +%s) + {s.walltime_seconds()} ))",
            f"export DFTFLOW_STOP_MARGIN={s.stop_margin_s}",
            f"export OMP_NUM_THREADS={s.cpus_per_task}"]
    pre += [f"module load {m}" for m in s.modules]
    pre += list(s.pre_run)
    dropped = [line for line in pre if "$$" in line]
    if dropped:  # CommonAdapter drops every script line that still holds "$$" (an unfilled template key)
        raise ConfigError(f"profile {profile.name}: FireWorks' queue script would drop {dropped[0]!r} ('$$')")
    template = profile.fireworks.template
    params = {"nodes": s.nodes, "ntasks_per_node": s.ntasks_per_node, "cpus_per_task": s.cpus_per_task,
              "walltime": s.walltime, "queue": s.partition, "account": s.account, "qos": s.qos,
              "constraint": s.constraint, "mem": s.mem, "pre_rocket": "\n".join(pre)}
    return CommonAdapter("SLURM", q_name=Q_NAME, timeout=120,  # seconds for squeue (get_njobs_in_queue)
                         template_file=str(Path(os.path.expandvars(template)).expanduser()) if template else None,
                         **{k: v for k, v in params.items() if v is not None})


def allocation_script(profile: ClusterProfile, launch_dir: Path, *, job_name: str, adapter: Any = None) -> str:
    """The queue script of one allocation: ``CommonAdapter.get_script_str`` running ``dftflow fw-rocket``
    (with ``adapter``, the profile's :func:`qadapter` already made, else a new one)."""
    adapter = adapter if adapter is not None else qadapter(profile)
    python = profile.python or sys.executable
    launch_dir = os.path.abspath(launch_dir)  # as get_script_str makes the template's launch_dir
    adapter.update(job_name=job_name,
                   rocket_launch=f"exec {shlex.quote(python)} -m dftflow fw-rocket {shlex.quote(launch_dir)}")
    return adapter.get_script_str(launch_dir)


@contextlib.contextmanager
def _environ(env: dict[str, str] | None) -> Iterator[None]:
    """CommonAdapter runs sbatch/squeue in this process's environment: ``env``, if given, for the call."""
    if env is None:
        yield
        return
    saved = dict(os.environ)
    os.environ.clear()
    os.environ.update(env)
    try:
        yield
    finally:
        os.environ.clear()
        os.environ.update(saved)


class _Messages(logging.Handler):
    """What CommonAdapter logs while it submits: its only report of why sbatch failed."""

    def __init__(self) -> None:
        super().__init__(logging.WARNING)
        self.lines: list[str] = []

    def emit(self, record: logging.LogRecord) -> None:
        text = record.getMessage().strip()
        if text and set(text) - set("-|v^"):  # not log_fancy's borders
            self.lines.append(text)


def submit_to_queue(adapter: Any, script: Path, *, env: dict[str, str] | None = None) -> str:
    """``CommonAdapter.submit_to_queue`` from the script's directory; the SLURM id, or SlurmError with the reason."""
    messages = _Messages()
    logger = logging.getLogger(f"qadapter.{adapter.q_name}")
    logger.addHandler(messages)
    try:
        with contextlib.chdir(script.parent), _environ(env):  # FireWorks' template writes the job's output beside it
            job_id = adapter.submit_to_queue(script.name)
    finally:
        logger.removeHandler(messages)
    if not job_id:
        raise SlurmError(f"sbatch {script} (FireWorks CommonAdapter): "
                         + (" ".join(messages.lines) or "no job id"))
    return str(job_id)


def jobs_in_queue(adapter: Any, *, env: dict[str, str] | None = None) -> int:
    """``CommonAdapter.get_njobs_in_queue``: your jobs in the partition's queue; SlurmError when squeue fails."""
    with _environ(env):
        n = adapter.get_njobs_in_queue()
    if n is None:
        raise SlurmError("squeue: could not count the jobs in the queue (CommonAdapter.get_njobs_in_queue)")
    return int(n)


class FwLauncher:
    """Submit-host side: allocations of reserved fireworks and their recovery, on an open LaunchPad."""

    def __init__(self, lp: Any, root: Path, profile: ClusterProfile, *, env: dict[str, str] | None = None) -> None:
        self.lp = lp
        self.root = Path(root).resolve()
        self.key = project_key(self.root)
        self.profile = profile
        self.env = env
        self.allocations = lp.db[ALLOCATIONS]

    def _fworker(self) -> Any:
        from fireworks import FWorker

        assert self.profile.fireworks is not None
        return FWorker(name=self.profile.fireworks.fworker, query={"spec._dftflow.project": self.key})

    def active(self) -> list[dict[str, Any]]:
        return list(self.allocations.find({"project": self.key, "state": "SUBMITTED"}))

    # -- submitting ----------------------------------------------------------
    def launch(self, *, dry_run: bool = False) -> list[dict[str, Any]]:
        """Reserve READY fireworks and submit allocations for them, at most ``max_queued`` active at once."""
        assert self.profile.slurm is not None and self.profile.fireworks is not None
        room = self.profile.slurm.max_queued - len(self.active())  # the project's allocations
        if room > 0 and self.profile.fireworks.njobs_queue is not None:  # all your jobs in the partition
            room = min(room, self.profile.fireworks.njobs_queue - jobs_in_queue(qadapter(self.profile),
                                                                              env=self.env))
        made: list[dict[str, Any]] = []
        while room > 0:
            try:
                launch = self._launch(dry_run=dry_run)
            except SlurmError:
                if not made:
                    raise
                # keep what was submitted: an exception would discard the whole opening (mongomock), and
                # with it the reservations of allocations that SLURM already has
                break
            if launch is None:
                break
            made.append(launch)
            room -= 1
            if dry_run:
                break
        return made

    def _reserve(self, directory: Path) -> list[tuple[Any, int, Path]]:
        from fireworks.queue.queue_launcher import setup_offline_job

        reserved = []
        for _ in range(self.profile.pack):
            fw, launch_id = self.lp.reserve_fw(self._fworker(), str(directory))
            if fw is None:
                break
            workdir = Path(fw.spec["_dftflow"]["dir"])
            workdir.mkdir(parents=True, exist_ok=True)
            self.lp.change_launch_dir(launch_id, str(workdir))
            for stale in ("FW_ping.json", "FWAction.json"):
                (workdir / stale).unlink(missing_ok=True)
            with contextlib.chdir(workdir):  # FireWorks' offline files, as qlaunch -r writes them
                setup_offline_job(self.lp, fw, launch_id)
            reserved.append((fw, launch_id, workdir))
        return reserved

    def _release(self, launch_ids: list[int]) -> None:
        for launch_id in launch_ids:
            self.lp.cancel_reservation(launch_id)
            self.lp.forget_offline(launch_id)

    def _launch(self, *, dry_run: bool) -> dict[str, Any] | None:
        name = time.strftime("%Y%m%d-%H%M%S-") + uuidlib.uuid4().hex[:8]
        directory = self.root / "launches" / name
        adapter = qadapter(self.profile)  # a profile FireWorks' script cannot carry fails before reserving
        text = allocation_script(self.profile, directory, job_name=f"dftflow-fw-{name[-8:]}", adapter=adapter)
        directory.mkdir(parents=True, exist_ok=True)
        reserved = self._reserve(directory)
        if not reserved:
            directory.rmdir()
            return None
        launch_ids = [launch_id for _, launch_id, _ in reserved]
        spec = {"allocation": name, "commands": self.profile.commands,
                "fworker": self.profile.fireworks.fworker if self.profile.fireworks else "dftflow",
                "rockets": [{"fw_id": fw.fw_id, "name": fw.name, "launch_id": lid, "dir": str(d)}
                            for fw, lid, d in reserved]}
        (directory / "launch.json").write_text(json.dumps(spec))
        script = directory / SUBMIT_SCRIPT
        script.write_text(text)
        out = {"launch_id": name, "dir": str(directory), "fw_ids": [fw.fw_id for fw, _, _ in reserved],
               "jobs": len(reserved), "slurm_id": None}
        if dry_run:
            self._release(launch_ids)  # scripts written, nothing stays reserved
            return out
        try:
            slurm_id = submit_to_queue(adapter, script, env=self.env)
        except BaseException:
            self._release(launch_ids)
            raise
        for launch_id in launch_ids:
            self.lp.set_reservation_id(launch_id, slurm_id)
        self.allocations.insert_one({"_id": f"{self.key}|{name}", "project": self.key, "name": name,
                                     "slurm_id": slurm_id, "dir": str(directory), "launch_ids": launch_ids,
                                     "fw_ids": out["fw_ids"], "state": "SUBMITTED", "submitted": time.time(),
                                     "finished": None, "slurm_state": None})
        return {**out, "slurm_id": slurm_id}

    # -- recovering ----------------------------------------------------------
    def recover(self) -> dict[str, int]:
        """Read back the offline results of active allocations; settle the allocations that ended."""
        active = self.active()
        states = queue_states([a["slurm_id"] for a in active], env=self.env)
        applied = settled = 0
        for alloc in active:
            # squeue was asked before the files are read: an allocation missing from it has written all it will
            applied += sum(self._apply(launch_id) for launch_id in alloc["launch_ids"])
            if alloc["slurm_id"] in states:
                continue
            end = final_state(alloc["slurm_id"], env=self.env)
            if end in ACTIVE_STATES:
                continue
            self._settle(alloc, end)
            self.allocations.update_one({"_id": alloc["_id"]}, {"$set": {"state": "DONE", "finished": time.time(),
                                                                        "slurm_state": end}})
            settled += 1
        lost = self._detect_lost()
        return {"applied": applied, "settled": settled, "active": len(active) - settled, "lost": lost}

    def _detect_lost(self) -> int:
        """FireWorks' lost-run detection for the project's RUNNING launches outside its active allocations.

        A launch that dftflow's allocation bookkeeping does not hold (a site's own ``qlaunch``/``rlaunch``,
        an allocation record that is gone, a node lost after SLURM forgot the job) is settled by nobody else:
        if its last ping (``updated_on`` of its RUNNING state) is older than ``fireworks.lost_after_s``,
        ``LaunchPad.detect_lostruns(fizzle=True)`` fizzles it (and forgets its offline run, so that a late
        ``FW_offline.json`` is never applied: one result per job), and the reason is recorded with it.
        Launches of active allocations are left to ``recover``/``_settle``: an offline rocket's ping reaches
        the LaunchPad only when it is recovered. An offline launch outside them is recovered first
        (``recover_offline`` reads its ``FW_ping.json``), so a rocket alive elsewhere is not counted lost.
        Returns how many launches were found lost.
        """
        from fireworks import FWAction, fw_config

        assert self.profile.fireworks is not None
        limit = self.profile.fireworks.lost_after_s
        if limit < fw_config.PING_TIME_SECS:
            raise ConfigError(f"fireworks.lost_after_s = {limit} s is shorter than FireWorks' rocket ping interval "
                              f"(PING_TIME_SECS = {fw_config.PING_TIME_SECS} s): live runs would be found lost")
        running = {"spec._dftflow.project": self.key, "state": "RUNNING"}
        fw_ids = [d["fw_id"] for d in self.lp.fireworks.find(running, {"fw_id": 1})]
        if not fw_ids:
            return 0
        held = [lid for alloc in self.active() for lid in alloc["launch_ids"]]
        outside = {"fw_id": {"$in": fw_ids}, "state": "RUNNING", "launch_id": {"$nin": held}}
        candidates = [d["launch_id"] for d in self.lp.launches.find(outside, {"launch_id": 1})]
        if not candidates:
            return 0
        for launch_id in candidates:
            self._apply(launch_id)  # an offline run: its latest ping first (nothing without one)
        lost_launches, _, _ = self.lp.detect_lostruns(expiration_secs=limit, fizzle=True, query=dict(running),
                                                      launch_query={"launch_id": {"$nin": held}})
        now = time.time()
        for launch_id in lost_launches:
            doc = self.lp.launches.find_one({"launch_id": launch_id}, {"state_history": 1})
            pinged = [_epoch(h.get("updated_on") or h.get("created_on")) for h in (doc or {}).get("state_history", [])
                      if h.get("state") == "RUNNING"]
            age = f"{now - max(pinged):.0f}" if pinged and None not in pinged else f"more than {limit}"
            reason = f"lost: no ping for {age} s (FireWorks detect_lostruns, fireworks.lost_after_s = {limit})"
            self.lp.launches.update_one({"launch_id": launch_id}, {"$set": {
                "action": FWAction(stored_data={"_message": reason}, exit=True).to_dict()}})
        return len(lost_launches)

    def _apply(self, launch_id: int) -> int:
        """``recover_offline`` for one launch, if its rocket wrote anything; 1 if it finished (any state)."""
        run = self.lp.offline_runs.find_one({"launch_id": launch_id, "deprecated": False, "completed": False})
        if run is None:
            return 0
        launch = self.lp.launches.find_one({"launch_id": launch_id}, {"launch_dir": 1})
        path = Path(launch["launch_dir"]) / "FW_offline.json"
        try:
            data = json.loads(path.read_text())
        except (OSError, json.JSONDecodeError):
            return 0  # not written yet, or being rewritten by the rocket: next time
        if "started_on" not in data and "fwaction" not in data:
            return 0
        with warnings.catch_warnings():  # "Unable to find FW_ping.json": a rocket that has just started
            warnings.filterwarnings("ignore", message="Unable to find FW_ping.json")
            self.lp.recover_offline(launch_id, ignore_errors=False, print_errors=False)
        if "fwaction" not in data:
            self._ping(launch_id, path.with_name("FW_ping.json"))
        if ((data.get("fwaction") or {}).get("stored_data") or {}).get(STOPPED_KEY):
            self._requeue_stopped(run["fw_id"])
        return int("fwaction" in data)

    def _ping(self, launch_id: int, path: Path) -> None:
        """The rocket's last ping (``FW_ping.json``) as the RUNNING launch's ``updated_on``.

        FireWorks 2.1's ``recover_offline`` pings the launch and then writes back the copy it read before,
        so ``updated_on`` stays at the first recovery; ``detect_lostruns`` reads it.
        """
        try:
            ping_time = json.loads(path.read_text()).get("ping_time")
        except (OSError, json.JSONDecodeError, AttributeError):
            return
        if isinstance(ping_time, str) and _epoch(ping_time) is not None:
            self.lp.ping_launch(launch_id, ptime=ping_time)

    def _requeue_stopped(self, fw_id: int) -> None:
        """A firework stopped cleanly before the walltime runs again (its relaxation from the CONTCAR).

        Its FIZZLED launch, with the reason, is archived by ``rerun_fw``; after ``MAX_STOPS`` stops
        it stays FIZZLED for ``dftflow retry``.
        """
        fw = self.lp.fireworks.find_one({"fw_id": fw_id}, {"launches": 1, "archived_launches": 1, "state": 1})
        if fw is None or fw["state"] != "FIZZLED":
            return
        if len(fw.get("launches") or []) + len(fw.get("archived_launches") or []) < MAX_STOPS:
            self.lp.rerun_fw(fw_id)

    def _settle(self, alloc: dict[str, Any], end: str) -> None:
        """Fireworks the ended allocation still holds: the one that ran fizzles, the rest are READY again."""
        from fireworks import FWAction

        log = Path(alloc["dir"]) / _ROCKET_LOG
        why = json.loads(log.read_text()).get("stopped") if log.exists() else None
        for launch_id in alloc["launch_ids"]:
            launch = self.lp.launches.find_one({"launch_id": launch_id}, {"state": 1})
            if launch is None or launch["state"] in ("COMPLETED", "FIZZLED"):
                continue
            if launch["state"] == "RESERVED":  # never started
                self._release([launch_id])
                continue
            if job_state_after(end) == "LOST":
                reason = f"lost: SLURM job {alloc['slurm_id']} ended {end} while it ran"
            else:
                what = "reached its time limit (TIMEOUT)" if end == "TIMEOUT" else f"ended {end}"
                reason = f"SLURM job {alloc['slurm_id']} {what} while this job ran"
            if why:
                reason += f" ({why})"
            self.lp.complete_launch(launch_id, FWAction(stored_data={"_message": reason}, exit=True), "FIZZLED")
            self.lp.offline_runs.update_one({"launch_id": launch_id}, {"$set": {"completed": True}})

    def launches(self) -> list[dict[str, Any]]:
        docs = sorted(self.allocations.find({"project": self.key}), key=lambda d: d["submitted"])
        return [{"launch_id": d["name"], "slurm_id": d["slurm_id"], "state": d["state"],
                 "slurm_state": d["slurm_state"], "fw_ids": d["fw_ids"], "submitted": d["submitted"],
                 "finished": d["finished"]} for d in docs]


def _epoch(value: Any) -> float | None:
    """A FireWorks state-history time (ISO text, or a datetime) in seconds since the epoch; naive means UTC."""
    from datetime import UTC, datetime

    if isinstance(value, str):
        try:
            value = datetime.fromisoformat(value)
        except ValueError:
            return None
    if not isinstance(value, datetime):
        return None
    return (value if value.tzinfo else value.replace(tzinfo=UTC)).timestamp()


def _patch_fireworks_zopen() -> None:
    """FireWorks 2.1's offline rocket calls ``monty.io.zopen(path)`` without a mode, which monty ≥ 2025 refuses.

    The rocket reads ``FW_offline.json`` that way; give it the text mode it means.
    """
    import fireworks.core.rocket as rocket_module
    from monty.io import zopen

    def zopen_text_by_default(filename: Any, mode: str = "rt", **kwargs: Any) -> Any:
        return zopen(filename, mode, **kwargs)

    rocket_module.zopen = zopen_text_by_default


def fw_rocket(launch_dir: Path) -> int:
    """Compute-node side: FireWorks' offline rocket in each reserved directory, in order; returns the fizzles."""
    from fireworks import FWorker
    from fireworks.core.rocket_launcher import launch_rocket

    _patch_fireworks_zopen()
    launch_dir = Path(launch_dir).resolve()
    spec = json.loads((launch_dir / "launch.json").read_text())
    os.environ["DFTFLOW_VASP_COMMANDS"] = json.dumps(spec.get("commands") or {})
    margin = stop_margin_s()
    end = os.environ.get("DFTFLOW_JOB_END")
    (launch_dir / _ROCKET_LOG).unlink(missing_ok=True)
    fizzled = 0
    cwd = os.getcwd()
    for rocket in spec["rockets"]:
        workdir = Path(rocket["dir"])
        state = json.loads((workdir / "FW_offline.json").read_text())
        if "fwaction" in state:  # the same allocation run again (requeued by SLURM): done already
            fizzled += state.get("state") == "FIZZLED"
            continue
        if end and float(end) - time.time() < margin:
            left = float(end) - time.time()
            (launch_dir / _ROCKET_LOG).write_text(json.dumps(
                {"stopped": f"{left:.0f} s left in the allocation, less than the stop margin of {margin:.0f} s"}))
            break
        # custodian's WalltimeHandler times its wall_time from CUSTODIAN_WALLTIME_START, set by the first one
        os.environ.pop("CUSTODIAN_WALLTIME_START", None)
        started = time.time()
        threads = set(threading.enumerate())
        os.chdir(workdir)
        try:
            launch_rocket(None, FWorker(name=spec.get("fworker", "dftflow")), strm_lvl="INFO")
        finally:
            # the rocket's ping thread writes FW_ping.json into the working directory once more after it
            # is told to stop: let it, here, before leaving the job directory
            for thread in set(threading.enumerate()) - threads:
                thread.join(timeout=30)
            os.chdir(cwd)
        stopped = _stopped_before_walltime(workdir, started, float(end) if end else None)
        if stopped is not None:
            _record_stop(workdir, stopped)
            (launch_dir / _ROCKET_LOG).write_text(json.dumps({"stopped": f"{rocket['name']} was stopped before "
                                                                          "the walltime"}))
            break
        done = json.loads((workdir / "FW_offline.json").read_text())
        fizzled += done.get("state") == "FIZZLED"
    return fizzled


def _record_stop(workdir: Path, reason: str) -> None:
    """What VASP wrote after a STOPCAR is an interrupted run, not a result: the launch fizzles with the reason.

    Recovery sees ``STOPPED_KEY`` and puts the firework back to READY (``FwLauncher._requeue_stopped``).
    """
    from fireworks import FWAction

    path = workdir / "FW_offline.json"
    data = json.loads(path.read_text())
    data["fwaction"] = FWAction(stored_data={"_message": reason, STOPPED_KEY: True}, exit=True).to_dict()
    data["state"] = "FIZZLED"
    tmp = path.with_name(path.name + ".tmp")
    tmp.write_text(json.dumps(data))
    os.replace(tmp, path)
