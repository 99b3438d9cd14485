"""Checkpoint files: what a training run writes, and the one loader every command reads them with.

A checkpoint is a ``torch.save`` of a dict: the weights (``model``), the
model's settings (``model_config``), the optimizer, scheduler and RNG states
of a resumable run, the run's configuration, its :class:`TrainState`, the
SAED table, what it was trained on (:func:`model_card_fields`) and the
versions that wrote it. Bundled models are the same files without the
training-only entries (:func:`dftflow.models.strip_checkpoint`).

:func:`load_checkpoint` is the only place a checkpoint is unpickled. A
missing, empty, truncated or corrupt file, a file that is not a dftflow
checkpoint, and one a newer or incompatible dftflow wrote all become a
:class:`CheckpointError` whose one-line message names the file and what is
wrong with it.
"""

from __future__ import annotations

import math
import os
import random
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any

import numpy as np
import torch

from dftflow.errors import CheckpointError

if TYPE_CHECKING:
    from dftflow.ml.config import TrainConfig
    from dftflow.ml.model import ChargE3Net

#: The layout of the checkpoint dict that :func:`save_checkpoint` writes (``format``); files without
#: the entry are format 1. A file of a higher format needs a newer dftflow.
CHECKPOINT_FORMAT = 1
#: Entries without which a file is not a dftflow checkpoint.
REQUIRED_ENTRIES = ("model", "model_config")


@dataclass
class TrainState:
    """The progress of a training run, as a checkpoint records it."""

    step: int = 0
    best_val: float = math.inf
    history: list[dict[str, float]] = field(default_factory=list)


def _version() -> str:
    from dftflow import __version__

    return __version__


def save_checkpoint(path: Path, model: torch.nn.Module, optimizer: torch.optim.Optimizer,
                    scheduler: Any, state: TrainState, cfg: TrainConfig, extra: dict[str, Any] | None = None) -> None:
    """Write everything a resumed run needs to ``path``, atomically; ``extra`` adds entries (SAED, model card)."""
    raw = model.module if hasattr(model, "module") else model
    payload = {
        "model": raw.state_dict(), "model_config": raw.config.to_dict(), "optimizer": optimizer.state_dict(),
        "scheduler": scheduler.state_dict(), "state": asdict(state), "config": cfg.model_dump(),
        "rng": {"torch": torch.get_rng_state(), "numpy": np.random.get_state(), "python": random.getstate()},
        "versions": {"torch": torch.__version__, "dftflow": _version()}, "format": CHECKPOINT_FORMAT,
        **(extra or {}),
    }
    tmp = path.with_name(path.name + ".tmp")
    torch.save(payload, tmp)
    os.replace(tmp, path)


def _first_line(exc: BaseException) -> str:
    """``Type: first sentence`` of an exception's message (torch's messages run on for several sentences)."""
    lines = str(exc).strip().splitlines()
    if not lines:
        return type(exc).__name__
    text = lines[0]
    if len(text) > 100 and ". " in text:
        text = text[: text.index(". ") + 1]
    return f"{type(exc).__name__}: {text}"


def _check_archive(path: Path, size: int) -> None:
    """Check a zip checkpoint (torch's format since 1.6) before unpickling anything from it.

    A file that is neither a zip archive nor a pickle is no checkpoint. A zip without its directory
    at the end was cut short; an entry whose bytes do not match their CRC-32 was damaged
    (``torch.load`` itself reads flipped bytes in the weights without a word).
    """
    import zipfile

    with open(path, "rb") as fh:
        head = fh.read(8)
    if head[:1] == b"\x80":  # a pickle: torch's legacy format (no checksums); torch.load decides
        return
    if head[:4] != b"PK\x03\x04":
        raise CheckpointError(f"{path}: not a checkpoint file (it starts with {head!r}; torch writes a zip archive)")
    if not zipfile.is_zipfile(path):
        raise CheckpointError(f"{path}: truncated checkpoint ({size} bytes; the zip archive's directory at its "
                              "end is missing or damaged: an interrupted save or copy?)")
    try:
        with zipfile.ZipFile(path) as archive:
            bad = archive.testzip()
    except Exception as exc:  # a damaged archive: zipfile fails in many ways (BadZipFile, zlib, EOF ...)
        raise CheckpointError(f"{path}: corrupt checkpoint ({size} bytes; {_first_line(exc)})") from exc
    if bad is not None:
        raise CheckpointError(f"{path}: corrupt checkpoint ({size} bytes; the checksum of {bad} does not match "
                              "its bytes: the file was changed or damaged after it was written)")


def _unpickle(path: Path) -> Any:
    """``torch.load`` of ``path``, every way it can fail turned into a :class:`CheckpointError`."""
    if path.is_dir():
        raise CheckpointError(f"{path}: a directory, not a checkpoint file")
    try:
        size = path.stat().st_size
    except FileNotFoundError:
        raise CheckpointError(f"{path}: no such checkpoint file") from None
    except OSError as exc:
        raise CheckpointError(f"{path}: cannot read the checkpoint ({exc.strerror or exc})") from exc
    if size == 0:
        raise CheckpointError(f"{path}: empty file (0 bytes), not a checkpoint")
    try:
        _check_archive(path, size)
        return torch.load(path, map_location="cpu", weights_only=False)
    except PermissionError as exc:
        raise CheckpointError(f"{path}: cannot read the checkpoint ({exc.strerror or exc})") from exc
    except CheckpointError:
        raise
    except Exception as exc:  # a damaged pickle or zip archive can fail in any of unpickling's ways
        raise CheckpointError(f"{path}: truncated or corrupt checkpoint ({size} bytes; {_first_line(exc)})") from exc


def _written_by(ckpt: dict[str, Any]) -> str:
    versions = ckpt.get("versions")
    found = versions.get("dftflow") if isinstance(versions, dict) else None
    return f"dftflow {found}" if found else "an unknown dftflow"


def check_checkpoint(ckpt: Any, path: str | Path) -> dict[str, Any]:
    """``ckpt`` if it is a checkpoint this dftflow can use, else a :class:`CheckpointError` naming ``path``.

    Checks that it is a dict with :data:`REQUIRED_ENTRIES`, of a format no newer than
    :data:`CHECKPOINT_FORMAT`, whose ``model_config`` is valid here. Checkpoints written before
    ``model_config.scalar_readout`` existed get it (false).
    """
    from pydantic import ValidationError

    from dftflow.ml.model import ModelConfig

    if not isinstance(ckpt, dict):
        raise CheckpointError(f"{path}: not a dftflow checkpoint (it holds a {type(ckpt).__name__}, not a dict "
                              f"with {' and '.join(REQUIRED_ENTRIES)})")
    missing = [key for key in REQUIRED_ENTRIES if key not in ckpt]
    if missing:
        has = ", ".join(map(str, list(ckpt)[:6])) or "nothing"
        raise CheckpointError(f"{path}: not a dftflow checkpoint (no {' or '.join(missing)} entry; it has {has})")
    fmt = ckpt.get("format", 1)
    if not isinstance(fmt, int) or fmt > CHECKPOINT_FORMAT:
        raise CheckpointError(f"{path}: checkpoint format {fmt!r} written by {_written_by(ckpt)}; this dftflow "
                              f"{_version()} reads format {CHECKPOINT_FORMAT} and older (upgrade dftflow)")
    if not isinstance(ckpt["model_config"], dict):
        raise CheckpointError(f"{path}: not a dftflow checkpoint (model_config is a "
                              f"{type(ckpt['model_config']).__name__}, not a dict)")
    ckpt["model_config"].setdefault("scalar_readout", False)  # written before the lean last layer
    try:
        ModelConfig.model_validate(ckpt["model_config"])
    except ValidationError as exc:
        problem = exc.errors()[0]
        key = ".".join(map(str, problem["loc"]))
        what = "unknown setting" if problem["type"] == "extra_forbidden" else problem["msg"]
        raise CheckpointError(f"{path}: model_config.{key}: {what}; the checkpoint was written by "
                              f"{_written_by(ckpt)}, which this dftflow {_version()} cannot read") from exc
    return ckpt


def load_checkpoint(path: str | Path) -> dict[str, Any]:
    """The checkpoint dict in ``path`` (on the CPU); any problem is a :class:`CheckpointError` naming the file."""
    path = Path(path)
    return check_checkpoint(_unpickle(path), path)


def model_from_checkpoint(ckpt: dict[str, Any], path: str | Path, *,
                          dtype: torch.dtype = torch.float32) -> ChargE3Net:
    """The checkpoint's model, in eval mode; weights that do not fit its ``model_config`` are a
    :class:`CheckpointError` naming ``path``."""
    from dftflow.ml.model import ChargE3Net, ModelConfig

    model = ChargE3Net(ModelConfig(**ckpt["model_config"])).to(dtype)
    try:
        model.load_state_dict(ckpt["model"])
    except (RuntimeError, TypeError, AttributeError) as exc:  # other shapes or names, or not a state dict
        lines = str(exc).strip().splitlines()
        detail = lines[1].strip() if len(lines) > 1 else _first_line(exc)
        raise CheckpointError(f"{path}: its weights do not fit its model_config (written by {_written_by(ckpt)}): "
                              f"{detail}") from exc
    model.eval()
    return model


def restore_training(path: Path, model: torch.nn.Module, optimizer: torch.optim.Optimizer,
                     scheduler: Any) -> tuple[TrainState, dict[str, Any]]:
    """Load a run's last checkpoint into ``model``, ``optimizer``, ``scheduler`` and the global RNGs.

    Returns the run's state and the checkpoint.
    """
    ckpt = load_checkpoint(path)
    model.load_state_dict(ckpt["model"])
    optimizer.load_state_dict(ckpt["optimizer"])
    scheduler.load_state_dict(ckpt["scheduler"])
    state = TrainState(**ckpt["state"])
    torch.set_rng_state(ckpt["rng"]["torch"])
    np.random.set_state(ckpt["rng"]["numpy"])
    random.setstate(ckpt["rng"]["python"])
    return state, ckpt


def model_card_fields(cfg: TrainConfig, train_set: Any) -> dict[str, Any]:
    """What a checkpoint says about its data: the target, the atomic numbers it was trained on, how many materials.

    ``train_numbers`` is what a deployed model checks a structure against: an element outside it
    gets the engine's default start (docs/accel.md), never an extrapolation.
    """
    numbers = sorted({int(z) for mid in train_set.ids for z in train_set.store.header(mid)["numbers"]})
    return {"target": cfg.data.target, "train_numbers": numbers, "train_materials": len(train_set.ids)}
