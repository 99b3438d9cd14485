"""Cluster profiles (``cluster_profiles/*.yaml``): where and how jobs run."""

from __future__ import annotations

import os
import re
from pathlib import Path
from typing import Literal

from pydantic import Field, field_validator, model_validator

from dftflow.config.base import StrictModel, load_yaml_model
from dftflow.errors import ConfigError
from dftflow.resources import resolve

_WALLTIME = re.compile(r"^(\d+-)?\d{1,3}:\d{2}:\d{2}$")

DEFAULT_STOP_MARGIN_S = 300
"""Seconds before an allocation's end at which VASP is stopped cleanly and no job is started.

The one default of ``slurm.stop_margin_s`` and of ``DFTFLOW_STOP_MARGIN`` (the batch
script exports the profile's value; the rocket and custodian's ``WalltimeHandler`` read it).
"""


def stop_margin_s() -> float:
    """The stop margin in force: ``DFTFLOW_STOP_MARGIN`` (set by the batch script), else the default."""
    value = os.environ.get("DFTFLOW_STOP_MARGIN", "").strip()
    if not value:
        return float(DEFAULT_STOP_MARGIN_S)
    try:
        margin = float(value)
    except ValueError:
        raise ConfigError(f"DFTFLOW_STOP_MARGIN={value!r}: not a number of seconds") from None
    if margin < 0:
        raise ConfigError(f"DFTFLOW_STOP_MARGIN={value!r}: must not be negative")
    return margin


class SlurmSettings(StrictModel):
    account: str | None = None
    partition: str | None = None
    qos: str | None = None
    constraint: str | None = None
    nodes: int = Field(default=1, gt=0)
    ntasks_per_node: int = Field(default=1, gt=0)
    cpus_per_task: int = Field(default=1, gt=0)
    walltime: str = Field(default="01:00:00", description="[D-]HH:MM:SS")
    mem: str | None = Field(default=None, description="--mem, e.g. 64G (omit for the site default)")
    modules: list[str] = Field(default_factory=list)
    pre_run: list[str] = Field(default_factory=list, description="shell lines before the launcher")
    extra_directives: list[str] = Field(default_factory=list, description="more #SBATCH lines")
    max_queued: int = Field(default=50, gt=0, description="jobs in the queue at once")

    stop_margin_s: int = Field(default=DEFAULT_STOP_MARGIN_S, ge=0,
                               description="stop VASP cleanly, and start no job, this long before the walltime")

    @field_validator("walltime")
    @classmethod
    def _walltime(cls, value: str) -> str:
        if not _WALLTIME.match(value):
            raise ValueError("walltime must look like HH:MM:SS or D-HH:MM:SS")
        return value

    @model_validator(mode="after")
    def _margin(self) -> SlurmSettings:
        if self.stop_margin_s >= self.walltime_seconds():
            raise ValueError(f"stop_margin_s ({self.stop_margin_s} s) must be shorter than the walltime "
                             f"({self.walltime}): no job would ever start")
        return self

    def walltime_seconds(self) -> int:
        days, _, hms = self.walltime.rpartition("-")
        h, m, s = (int(x) for x in hms.split(":"))
        return (int(days) if days else 0) * 86400 + h * 3600 + m * 60 + s


class StoreSettings(StrictModel):
    type: Literal["file", "mongodb"] = "file"
    path: str | None = Field(default=None, description="file store, relative to the project")
    uri: str | None = Field(default=None, description="MongoDB URI for type: mongodb")

    @model_validator(mode="after")
    def _uri(self) -> StoreSettings:
        if self.type == "mongodb" and not self.uri:
            raise ValueError("store.type mongodb needs store.uri")
        return self


class FireworksSettings(StrictModel):
    """Where the FireWorks LaunchPad of ``engine: fireworks`` lives.

    ``launchpad`` is a LaunchPad YAML file (FireWorks' ``my_launchpad.yaml``), a
    ``mongodb://`` / ``mongodb+srv://`` URI, or ``mongomock:FILE`` — FireWorks'
    mongomock persistence in one JSON file (relative paths: to the project), for
    one host without a MongoDB server: every opening holds a lock on ``FILE.lock``.
    """

    launchpad: str = Field(description="LaunchPad YAML, MongoDB URI, or mongomock:FILE")
    database: str = Field(default="fireworks", description="database name for a URI without one")
    fworker: str = Field(default="dftflow", description="FireWorker name recorded with every launch")
    template: str | None = Field(
        default=None, description="queue script template for FireWorks' CommonAdapter (default: FireWorks' own "
                                  "SLURM_template.txt); ~ and $VARS expanded, relative to the current directory")
    njobs_queue: int | None = Field(
        default=None, gt=0, description="submit no allocation while this many of your jobs are in the partition's "
                                        "queue (qlaunch rapidfire's njobs_queue, counted by "
                                        "CommonAdapter.get_njobs_in_queue); slurm.max_queued caps the project's")
    lost_after_s: int = Field(
        default=4 * 3600, ge=3600,
        description="a RUNNING firework of the project outside its active allocations whose launch has not pinged "
                    "for this long is lost: FIZZLED by FireWorks' detect_lostruns at status/submit/retry "
                    "(FireWorks' default RUN_EXPIRATION_SECS; at least its rocket ping interval, PING_TIME_SECS)")

    @field_validator("launchpad")
    @classmethod
    def _launchpad(cls, value: str) -> str:
        if not value.strip() or value.strip() == "mongomock:":
            raise ValueError("launchpad must be a LaunchPad YAML file, a mongodb:// URI or mongomock:FILE")
        return value.strip()


class ClusterProfile(StrictModel):
    name: str
    description: str = ""
    scheduler: Literal["local", "slurm"] = "local"
    workers: int = Field(default=2, gt=0, description="local worker processes")
    slurm: SlurmSettings | None = None
    commands: dict[str, str] = Field(default_factory=dict, description="engine commands, e.g. vasp_std")
    store: StoreSettings = Field(default_factory=StoreSettings)
    engine: Literal["embedded", "fireworks"] = Field(
        default="embedded", description="workflow manager: the project's SQLite store, or a FireWorks LaunchPad")
    fireworks: FireworksSettings | None = None
    pack: int = Field(default=1, gt=0, description="structures run in one allocation")
    python: str | None = Field(default=None, description="interpreter on the compute nodes (default: this one)")

    @model_validator(mode="after")
    def _slurm(self) -> ClusterProfile:
        if self.scheduler == "slurm" and self.slurm is None:
            raise ValueError("scheduler: slurm needs a slurm: section")
        if self.engine == "fireworks" and self.fireworks is None:
            raise ValueError("engine: fireworks needs a fireworks: section with launchpad:")
        if self.engine == "fireworks" and self.scheduler != "slurm":
            raise ValueError("engine: fireworks launches through SLURM: set scheduler: slurm")
        return self


def load_profile(name_or_path: str | Path) -> ClusterProfile:
    """Load a cluster profile by bundled name (``local``) or path."""
    return load_yaml_model(resolve("cluster_profiles", name_or_path), ClusterProfile)
