"""``dftflow status`` and ``dftflow retry``: the DFT jobs of a project."""

from __future__ import annotations

from collections import Counter
from pathlib import Path
from typing import Annotated

import typer
from rich.table import Table

from dftflow.cli.common import JsonOpt, RichProgress, WorkersOpt, console, print_json
from dftflow.cli.tables import dft_table
from dftflow.errors import InputError
from dftflow.project import Project

ProjectArg = Annotated[Path, typer.Option("--project", "-p", help="Project directory.")]


def _queue_path(project: Path) -> Path:
    path = project.resolve() / "jobs.sqlite"
    if not path.exists():
        raise InputError(f"{project}: no DFT jobs in this project (run build-dataset with a dft: stage)")
    return path


def status(project: ProjectArg = Path("demo-project"), json_: JsonOpt = False) -> None:
    """Counts of DFT jobs by state, and every failure with its reason."""
    from dftflow.execution.dft_stage import results
    from dftflow.execution.queue import JobQueue

    fireworks = _fireworks_profile(project)
    if fireworks is not None:
        from dftflow.execution import fw_project

        out = fw_project.status(project.resolve(), fireworks)
        if json_:
            print_json(out)
        else:
            _print_status(project, out["counts"], out["failures"], out["launches"])
        return
    path = _queue_path(project)
    launches = _recover(project)
    queue = JobQueue(path)
    queue.detect_lost()
    counts = queue.counts()
    queue.close()
    rows = results(Project(project.resolve()))
    failures = [r for r in rows if r["state"] in ("FAILED", "LOST")]
    if json_:
        print_json({"counts": counts, "failures": failures, "jobs": rows, "launches": launches})
        return
    _print_status(project, counts, failures, launches)


def _print_status(project: Path, counts: dict, failures: list[dict], launches: list[dict]) -> None:
    table = Table(*counts.keys(), title=f"DFT jobs in {project}")
    table.add_row(*(str(v) for v in counts.values()))
    console.print(table)
    if launches:
        active = [x for x in launches if x["state"] == "SUBMITTED"]
        console.print(f"SLURM allocations: {len(active)} queued or running, {len(launches) - len(active)} finished")
    if failures:
        reasons = Counter(r["error"] for r in failures)
        fail = Table("uid", "job", "state", "reason", title="failures")
        for r in failures:
            fail.add_row(r["uid"], r["job"], r["state"], r["error"] or "")
        console.print(fail)
        console.print(f"{len(failures)} failed or lost ({len(reasons)} distinct reasons); "
                      "`dftflow retry` runs them again")


def _submit_settings(project: Path) -> dict | None:
    import json

    path = project.resolve() / "submit.json"
    return json.loads(path.read_text()) if path.exists() else None


def _fireworks_profile(project: Path):
    """The cluster profile of a project submitted with ``engine: fireworks``, else None."""
    from dftflow.execution.fw_project import fireworks_profile

    return fireworks_profile(project)


def _recover(project: Path) -> list[dict]:
    """For projects run on SLURM: read back results of allocations (the store has one writer: us)."""
    settings = _submit_settings(project)
    if settings is None:
        return []
    from dftflow.config.profile import load_profile
    from dftflow.execution.launches import Launcher

    launcher = Launcher(project, load_profile(settings["profile"]))
    try:
        launcher.recover()
        return launcher.launches()
    finally:
        launcher.close()


ReasonOpt = Annotated[str | None, typer.Option(
    "--reason", help="Only jobs whose recorded reason contains this text (case-insensitive), e.g. 'lost' or "
    "'DFT+U'; `dftflow status` lists the reasons.")]
UidOpt = Annotated[list[str] | None, typer.Option("--uid", help="Only this structure's jobs (repeatable).")]


def retry(project: ProjectArg = Path("demo-project"), workers: WorkersOpt = None, reason: ReasonOpt = None,
          uid: UidOpt = None, json_: JsonOpt = False) -> None:
    """Run failed and lost DFT jobs again (and whatever waited on them).

    On a SLURM project the jobs are requeued and new allocations submitted; a
    relaxation continues from the CONTCAR its interrupted attempt left.
    ``--reason`` and ``--uid`` pick which failures: a cause since fixed, not the
    SCFs that would fail the same way again.
    """
    flow_ids = list(uid) if uid else None
    fireworks = _fireworks_profile(project)
    if fireworks is not None:
        if reason or flow_ids:
            raise InputError(f"{project}: --reason and --uid are not available on the FireWorks engine yet; "
                             "rerun single fireworks with FireWorks' `lpad rerun_fws -i FW_ID`")
        from dftflow.execution import fw_project

        out = fw_project.retry(project.resolve(), fireworks)
        if json_:
            print_json(out)
            return
        console.print(f"requeued {out['requeued']} fizzled firework(s); submitted {len(out['launched'])} "
                      "allocation(s)")
        return
    settings = _submit_settings(project)
    if settings is not None:
        from dftflow.config.profile import load_profile
        from dftflow.execution.launches import Launcher
        from dftflow.execution.queue import JobQueue

        _queue_path(project)
        launcher = Launcher(project, load_profile(settings["profile"]))
        try:
            launcher.recover()
            requeued = launcher.queue.retry(flow_ids=flow_ids, reason=reason)
            launched = launcher.launch()
        finally:
            launcher.close()
        if json_:
            print_json({"requeued": requeued, "launched": launched})
            return
        console.print(f"requeued {requeued} job(s); submitted {len(launched)} allocation(s)")
        return
    from dftflow.build import _ticker, project_recipe
    from dftflow.execution.dft_stage import results
    from dftflow.execution.queue import JobQueue
    from dftflow.execution.worker import run_workers

    proj = Project(project.resolve())
    path = _queue_path(project)
    recipe = project_recipe(proj)
    n_workers = workers or (recipe.workers if recipe else 2)
    with proj.locked("retry"), RichProgress(enabled=not json_) as progress:
        queue = JobQueue(path)
        queue.detect_lost()
        requeued = queue.retry(flow_ids=flow_ids, reason=reason)
        queue.close()
        counts = run_workers(path, proj.root, n_workers, on_tick=_ticker(progress))
    rows = results(proj)
    if json_:
        print_json({"requeued": requeued, "counts": counts, "jobs": rows})
        return
    console.print(f"requeued {requeued} job(s)")
    console.print(dft_table(rows))
