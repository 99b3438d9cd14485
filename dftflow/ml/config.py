"""The training configuration: the ``ml/*.yaml`` schema of ``dftflow train`` and how it is read.

:class:`TrainConfig` holds the model's settings (:class:`~dftflow.ml.model.ModelConfig`),
the data (:class:`DataSettings`), the optimizer (:class:`OptimSettings`) and the
run's own options (seed, output folder, fine-tuning, Δ-SAED, occupancies);
unknown keys are refused. :func:`load_config` reads one from a file or a
bundled ``ml/`` name, with dotted overrides (``optim.max_steps=500``).
"""

from __future__ import annotations

from pathlib import Path
from typing import Any, Literal

from pydantic import Field

from dftflow.config.base import StrictModel, load_yaml_model
from dftflow.ml.model import ModelConfig


class DataSettings(StrictModel):
    """Which materials train and validate, how many probe points each, and what the loss compares."""

    dataset: str | None = Field(default=None, description="dataset directory")
    split: str | None = Field(default=None, description="split file from `dftflow dataset split`")
    task: str = "pbe-id"
    train_phase: str = "train"
    val_phase: str = "val"
    train_ids: list[str] | None = None
    val_ids: list[str] | None = None
    n_probes: int = Field(default=200, gt=0)
    batch_size: int = Field(default=4, gt=0, description="structures per step (global, over all processes)")
    val_probes: int = Field(default=2000, ge=0, description="0: full grid")
    num_workers: int = 0
    loss: Literal["l1", "relative_l1"] = Field(
        default="l1", description="relative_l1: each structure's L1 divided by the mean |target| of its grid, so "
        "materials with small corrections count as much as those with large ones (what ε_mae averages)")
    target: Literal["total", "smooth_delta"] = Field(
        default="total", description="total: the CHGCAR density; smooth_delta: GPAW's smooth density minus "
        "its atomic guess (a model of the correction to the engine's default start, docs/ml.md)")


class OptimSettings(StrictModel):
    """Adam's learning rate and its decay, how long to train, how often to validate and checkpoint."""

    lr: float = Field(default=5e-3, gt=0)
    decay_steps: float = Field(default=1000.0, gt=0, description="lr * 0.96^(step / decay_steps)")
    max_steps: int = Field(default=1000, gt=0)
    val_every: int = Field(default=100, gt=0)
    checkpoint_every: int = Field(default=100, gt=0)
    grad_clip: float | None = None
    max_seconds: float | None = Field(default=None, gt=0, description="stop (with a checkpoint and a validation) "
                                      "after this much wall time of this run, whatever the step")


class TrainConfig(StrictModel):
    """A training run: the ``ml/*.yaml`` file of ``dftflow train``."""

    model: ModelConfig = Field(default_factory=ModelConfig)
    data: DataSettings = Field(default_factory=DataSettings)
    optim: OptimSettings = Field(default_factory=OptimSettings)
    seed: int = 0
    out: str = "train-out"
    init_from: str | None = Field(default=None, description="checkpoint to fine-tune from (all weights trainable)")
    delta_saed: bool = Field(default=False, description="learn rho - rho_SAED (fitted atomic densities)")
    saed_probes: int = Field(default=4000, gt=0, description="points per training structure for the SAED fit")
    dtype: str = "float32"
    device: str = Field(default="cpu", description="torch device of the model and batches (cpu, cuda, cuda:1)")
    occupancy_weight: float = Field(default=0.0, ge=0,
                                    description="> 0: also learn the PAW occupancies (model.occupancy_layout)")
    freeze_density: bool = Field(default=False, description="train only the occupancy head (with init_from)")
    occupancy_delta: bool = Field(
        default=True, description="GPAW occupancies: learn the change from the free atoms' density matrices "
        "(stored in model.occupancy_reference), so an untrained head gives GPAW's atomic guess; VASP "
        "occupancies have no atomic reference here and are learnt whole")


def load_config(path: str | Path, overrides: dict[str, Any] | None = None) -> TrainConfig:
    """The config ``path`` (a file or an ``ml/`` name), with ``overrides`` (dotted key → value) applied."""
    from dftflow.resources import resolve

    cfg = load_yaml_model(resolve("ml", path), TrainConfig)
    if overrides:
        data = cfg.model_dump()
        for dotted, value in overrides.items():
            node = data
            *head, last = dotted.split(".")
            for key in head:
                node = node[key]
            node[last] = value
        cfg = TrainConfig.model_validate(data)
    return cfg
