"""The per-structure dataset flow: [relax →] static [→ hybrid static]."""

from __future__ import annotations

from typing import Any

from jobflow import Flow
from pymatgen.core import Structure


def dataset_flow(structure: Structure, uid: str, *, static: str, relax: str | None = None,
                 hybrid: str | None = None, overrides: dict[str, Any] | None = None,
                 engine: str = "gpaw") -> Flow:
    """Jobs for one structure; the static (and hybrid) run on the relaxed structure when there is a relax."""
    if engine != "gpaw":
        raise ValueError(f"engine {engine!r}: only gpaw flows run locally (VASP flows come with cluster profiles)")
    from dftflow.gpaw.makers import GpawRelaxMaker, GpawStaticMaker

    overrides = overrides or {}
    jobs = []
    source: Any = structure
    if relax:
        relax_job = GpawRelaxMaker(inputset=relax, overrides=overrides).make(structure, uid=uid)
        jobs.append(relax_job)
        source = relax_job.output["structure"]
    static_job = GpawStaticMaker(inputset=static, overrides=overrides).make(source, uid=uid)
    jobs.append(static_job)
    if hybrid:
        jobs.append(GpawStaticMaker(name="gpaw hybrid static", inputset=hybrid, overrides=overrides)
                    .make(source, uid=uid))
    return Flow(jobs, name=uid)
