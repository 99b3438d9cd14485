"""``dftflow submit`` and ``dftflow rocket``: VASP workflows on a SLURM cluster."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Annotated

import typer

from dftflow.cli.common import JsonOpt, console, print_json, read_structure, structure_name
from dftflow.errors import InputError

ProjectOpt = Annotated[Path, typer.Option("--project", "-p", help="Project directory (created if missing).")]


def _structures(paths: list[Path]) -> list[tuple[str, object]]:
    out, seen = [], set()
    for path in paths:
        structure = read_structure(path)
        uid = base = structure_name(path)
        n = 1
        while uid in seen:
            n += 1
            uid = f"{base}-{n}"
        seen.add(uid)
        out.append((uid, structure))
    return out


def submit(
    structures: Annotated[list[Path] | None, typer.Argument(help="Structure files (POSCAR, CIF, ...).")] = None,
    project: ProjectOpt = Path("vasp-project"),
    profile: Annotated[str, typer.Option(help="Cluster profile (name or YAML path).")] = "slurm-generic",
    from_catalog: Annotated[bool, typer.Option(help="Also every structure kept by the project's dedup.")] = False,
    relax_set: Annotated[str, typer.Option(help="Input set of the relaxation.")] = "ecd-pbe-relax",
    static_set: Annotated[str, typer.Option(help="Input set of the static.")] = "ecd-pbe-static",
    hse: Annotated[bool, typer.Option(help="Add the HSE06 static (from the PBE CHGCAR).")] = False,
    hse_set: Annotated[str, typer.Option(help="Input set of the HSE06 static.")] = "ecd-hse06-static",
    dry_run: Annotated[bool, typer.Option(help="Write the launch directories and scripts, do not sbatch.")] = False,
    json_: JsonOpt = False,
) -> None:
    """Queue relax → static (→ HSE06) workflows and launch them on SLURM, packed per the profile.

    Re-running it submits more allocations as earlier ones finish (up to the
    profile's max_queued) and never queues a workflow twice.
    """
    from dftflow.config.profile import load_profile
    from dftflow.execution.launches import Launcher
    from dftflow.execution.queue import JobQueue
    from dftflow.execution.worker import flow_jobs
    from dftflow.vasp.jobs import vasp_flow

    prof = load_profile(profile)
    if prof.scheduler != "slurm":
        raise InputError(f"profile {prof.name}: scheduler is {prof.scheduler}; submit needs a slurm profile")
    if prof.engine == "embedded" and prof.store.type != "file":
        raise InputError(f"profile {prof.name}: store.type {prof.store.type} is not supported by the embedded "
                         "engine (use store.type: file, or engine: fireworks with a MongoDB LaunchPad; "
                         "see docs/execution.md)")
    root = project.resolve()
    root.mkdir(parents=True, exist_ok=True)
    items = _structures(list(structures or []))
    if from_catalog:
        from dftflow.catalog import Catalog
        from dftflow.sources.records import unpack

        catalog = Catalog(root / "catalog.sqlite")
        for (uid,) in catalog.db.execute("SELECT uid FROM outcomes WHERE filter='dedup' AND status='pass'"):
            items.append((uid, unpack(json.loads(catalog.get(uid)["data"]))))
    settings = {"profile": str(profile), "engine": prof.engine, "relax_set": relax_set, "static_set": static_set,
                "hse_set": hse_set if hse else None}
    previous = json.loads((root / "submit.json").read_text()) if (root / "submit.json").exists() else None
    if previous is not None and previous.get("engine", "embedded") != prof.engine:
        raise InputError(f"{project}: its workflows are on the {previous.get('engine', 'embedded')} engine "
                         f"(profile {previous['profile']}); profile {prof.name} uses engine {prof.engine}: "
                         "submit to a new project")
    if prof.engine == "fireworks":
        from dftflow.execution import fw_project

        (root / "submit.json").write_text(json.dumps(settings))

        def builder(uid: str, structure: object):
            return lambda: vasp_flow(structure, uid, relax_set=relax_set, static_set=static_set,
                                     hse_set=hse_set if hse else None)

        summary = fw_project.submit(root, prof, [(uid, builder(uid, s)) for uid, s in items], dry_run=dry_run)
        _print_summary(summary, dry_run, json_)
        return
    queue = JobQueue(root / "jobs.sqlite")
    try:
        new = [(uid, flow_jobs(vasp_flow(structure, uid, relax_set=relax_set, static_set=static_set,
                                         hse_set=hse_set if hse else None)))
               for uid, structure in items if not queue.has_flow(uid)]
        added = queue.add_flows(new)  # one transaction; a flow another submit queued meanwhile is skipped
    finally:
        queue.close()
    (root / "submit.json").write_text(json.dumps(settings))
    launcher = Launcher(root, prof)
    try:
        recovered = launcher.recover()
        launched = launcher.launch(dry_run=dry_run)
    finally:
        launcher.close()
    _print_summary({"workflows_added": added, "launched": launched, "recovered": recovered}, dry_run, json_)


def _print_summary(summary: dict, dry_run: bool, json_: bool) -> None:
    if json_:
        print_json(summary)
        return
    launched = summary["launched"]
    console.print(f"queued {summary['workflows_added']} new workflow(s); submitted {len(launched)} allocation(s)"
                  + (" (dry run: scripts written, nothing submitted)" if dry_run else ""))
    for launch in launched:
        what = (f"{len(launch['flows'])} workflows, " if "flows" in launch else "") + f"{launch['jobs']} jobs"
        console.print(f"  {launch['slurm_id'] or '-'}  {launch['dir']}  ({what})")


def rocket(launch_dir: Annotated[Path, typer.Argument(help="Launch directory written by submit.")]) -> None:
    """Run the jobs of one launch (on a compute node; started by the batch script)."""
    from dftflow.execution.launches import rocket as run

    failed = run(launch_dir)
    raise typer.Exit(0 if failed == 0 else 3)


def fw_rocket(launch_dir: Annotated[Path, typer.Argument(help="Launch directory written by submit.")]) -> None:
    """Run the reserved fireworks of one launch offline (engine: fireworks; started by the batch script)."""
    from dftflow.execution.fw_launches import fw_rocket as run

    fizzled = run(launch_dir)
    raise typer.Exit(0 if fizzled == 0 else 3)


def fw_migrate(
    project: ProjectOpt = Path("vasp-project"),
    profile: Annotated[str, typer.Option(help="Cluster profile with engine: fireworks (name or YAML path).")] = (
        "slurm-fireworks"),
    json_: JsonOpt = False,
) -> None:
    """Move a project of the embedded engine onto a FireWorks LaunchPad (run it again: adds nothing).

    What has not run is queued on the LaunchPad; completed jobs keep their results
    (shown by status, read by harvest). Then `dftflow submit -p PROJECT --profile PROFILE`
    launches the rest.
    """
    from dftflow.execution.fw_migrate import migrate

    out = migrate(project, profile)
    if json_:
        print_json(out)
        return
    console.print(f"{project}: {out['workflows_added']} of {out['workflows']} workflow(s) added to the LaunchPad, "
                  f"{out['completed_from_embedded']} job(s) completed from jobs.sqlite, {out['to_run']} to run "
                  f"(`dftflow submit -p {project} --profile {profile}`)")
