"""``submit``, ``status`` and ``retry`` of a project whose profile says ``engine: fireworks``.

Each call opens the LaunchPad once (on mongomock: one locked, all-or-nothing
opening, see :mod:`dftflow.execution.fw_launchpad`), reads back what the
project's allocations left (``recover_offline``), then does its part.
"""

from __future__ import annotations

import json
from collections.abc import Callable, Iterable
from pathlib import Path
from typing import Any

from dftflow.config.profile import ClusterProfile, load_profile
from dftflow.execution import fw_engine
from dftflow.execution.fw_launches import FwLauncher
from dftflow.execution.fw_launchpad import open_launchpad


def fireworks_profile(root: Path) -> ClusterProfile | None:
    """The cluster profile of a project submitted with ``engine: fireworks`` (its ``submit.json``), else None."""
    path = Path(root).resolve() / "submit.json"
    settings = json.loads(path.read_text()) if path.is_file() else {}
    if not isinstance(settings, dict) or settings.get("engine") != "fireworks":
        return None
    return load_profile(settings["profile"])


def _settings(profile: ClusterProfile) -> Any:
    if profile.fireworks is None:
        raise ValueError(f"profile {profile.name}: no fireworks section")
    return profile.fireworks


def submit(root: Path, profile: ClusterProfile, items: Iterable[tuple[str, Callable[[], Any]]], *,
           dry_run: bool = False, env: dict[str, str] | None = None) -> dict[str, Any]:
    """Add the workflows of structures that have none, read back results, submit allocations."""
    with open_launchpad(_settings(profile), root) as lp:
        added = fw_engine.add_workflows(lp, root, items)
        launcher = FwLauncher(lp, root, profile, env=env)
        recovered = launcher.recover()
        launched = launcher.launch(dry_run=dry_run)
    return {"workflows_added": added, "launched": launched, "recovered": recovered}


def status(root: Path, profile: ClusterProfile, *, env: dict[str, str] | None = None) -> dict[str, Any]:
    """Counts by FireWorks state, every fizzled job with its reason, the rows, the allocations."""
    with open_launchpad(_settings(profile), root) as lp:
        launcher = FwLauncher(lp, root, profile, env=env)
        launcher.recover()
        rows = fw_engine.rows(lp, root)
        launches = launcher.launches()
    failures = [r for r in rows if r["state"] in fw_engine.FAILED_STATES]
    return {"engine": "fireworks", "counts": fw_engine.counts(rows), "failures": failures, "jobs": rows,
            "launches": launches}


def retry(root: Path, profile: ClusterProfile, *, env: dict[str, str] | None = None) -> dict[str, Any]:
    """Rerun fizzled fireworks and submit allocations for them."""
    with open_launchpad(_settings(profile), root) as lp:
        launcher = FwLauncher(lp, root, profile, env=env)
        launcher.recover()
        requeued = fw_engine.retry(lp, root)
        launched = launcher.launch()
    return {"requeued": requeued, "launched": launched}


def jobs(root: Path, profile: ClusterProfile) -> list[dict[str, Any]]:
    """The rows of ``status`` as the LaunchPad has them now, without asking SLURM (``harvest``)."""
    with open_launchpad(_settings(profile), root) as lp:
        return fw_engine.rows(lp, root)
