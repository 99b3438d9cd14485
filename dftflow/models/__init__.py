"""Models that ship with dftflow: weights-only ChargE3Net checkpoints and their model cards.

A bundled model is two files of this package: ``<name>.pt``, a checkpoint
without optimizer state (:func:`strip_checkpoint` writes it), and
``<name>.json``, its model card (:class:`ModelCard`: what the model predicts,
for which engine and settings, on which elements, from how much data, how
well, and how to rebuild it). The files are found with
:mod:`importlib.resources`, so a wheel install finds them like a checkout.

Wherever a command takes a model, a path to a checkpoint file wins over a
bundled name of the same spelling; with no model at all, :data:`DEFAULT_MODEL`
is used when it is bundled.
"""

from __future__ import annotations

import hashlib
import json
import math
from importlib import resources
from importlib.resources.abc import Traversable
from pathlib import Path
from typing import Any, Literal

from pydantic import Field, ValidationError

from dftflow.config.base import StrictModel, format_validation_error
from dftflow.errors import ConfigError, InputError

#: The model ``dftflow predict`` and ``dftflow accel-eval`` use without ``--model``.
DEFAULT_MODEL = "gpaw-pbe-small"
#: The largest checkpoint that may be bundled (the repository keeps no large binaries).
MAX_BUNDLED_BYTES = 8 * 1024 * 1024
#: Checkpoint entries that only a resumed training needs.
TRAINING_ONLY = ("optimizer", "scheduler", "rng")
#: The input set a card names when ``settings`` is not given, by engine.
DEFAULT_INPUTSET = {"gpaw": "gpaw_pbe_static", "vasp": "ecd-pbe-static"}


class CardSettings(StrictModel):
    """The DFT settings of the training densities: a prediction is meant for the same ones."""

    inputset: str = Field(description="input set name (inputsets/)")
    overrides: dict[str, Any] = Field(default_factory=dict, description="changes to it, e.g. ecut, kpoint_density")


class TrainingData(StrictModel):
    dataset: str = Field(default="", description="where the densities came from (recipe, dataset, split)")
    materials: int | None = Field(default=None, ge=0, description="training materials")
    validation_materials: int | None = Field(default=None, ge=0)
    test_materials: int | None = Field(default=None, ge=0)
    steps: int | None = Field(default=None, ge=0, description="optimizer steps")


class ModelCard(StrictModel):
    """What a bundled model is, stored beside it as ``<name>.json``."""

    name: str
    description: str = ""
    target: Literal["total", "smooth_delta"] = Field(
        description="total: the density itself; smooth_delta: a correction to GPAW's atomic-guess start")
    engine: Literal["gpaw", "vasp"] = Field(description="the DFT code whose densities it learnt")
    settings: CardSettings
    elements: list[str] = Field(description="element symbols of the training data; others are refused")
    training: TrainingData = Field(default_factory=TrainingData)
    metrics: dict[str, float] = Field(default_factory=dict, description="e.g. val_eps_mae, test steps ratio")
    rebuild: str = Field(default="", description="the commands that make this model again")
    bytes: int | None = Field(default=None, ge=0, description="size of <name>.pt when the card was written")
    sha256: str | None = Field(default=None, description="checksum of <name>.pt when the card was written")


def registry() -> Traversable:
    """The folder of the bundled models (this package's data)."""
    return resources.files(__name__)


def _as_path(item: Traversable) -> Path:
    if isinstance(item, Path):
        return item
    raise ConfigError(f"{item}: the bundled models are inside an archive; install dftflow unzipped to use them")


def _read_card(item: Traversable) -> ModelCard:
    try:
        card = ModelCard.model_validate(json.loads(item.read_text()))
    except json.JSONDecodeError as exc:
        raise ConfigError(f"{item}: invalid JSON ({exc})") from exc
    except ValidationError as exc:
        raise ConfigError(format_validation_error(str(item), exc)) from exc
    if card.name != item.name.removesuffix(".json"):
        raise ConfigError(f"{item}: name: {card.name!r} differs from the file name")
    return card


def _cards() -> dict[str, ModelCard]:
    """Cards of the bundled models whose checkpoint is there too, by name."""
    root = registry()
    cards = {}
    for item in sorted(root.iterdir(), key=lambda t: t.name):
        name = item.name.removesuffix(".json")
        if item.name.endswith(".json") and root.joinpath(f"{name}.pt").is_file():
            cards[name] = _read_card(item)
    return cards


def list_models() -> list[dict[str, Any]]:
    """The cards of every bundled model, by name."""
    return [card.model_dump(mode="json") for card in _cards().values()]


def _unknown(name: str) -> InputError:
    known = ", ".join(_cards()) or "none"
    return InputError(f"{name}: no such checkpoint file, and no bundled model of that name "
                      f"(bundled: {known}; see `dftflow models list`)")


def model_card(name: str) -> dict[str, Any]:
    """The card of the bundled model ``name``."""
    card = _cards().get(name)
    if card is None:
        raise _unknown(name)
    return card.model_dump(mode="json")


def model_path(name_or_path: str | Path) -> Path:
    """A checkpoint file: ``name_or_path`` if it is an existing file, else the bundled model of that name."""
    path = Path(name_or_path).expanduser()
    if path.is_file():
        return path
    name = str(name_or_path)
    if name not in _cards():
        raise _unknown(name)
    return _as_path(registry().joinpath(f"{name}.pt"))


def default_model() -> Path | None:
    """The checkpoint of :data:`DEFAULT_MODEL`, or None when it is not bundled (yet)."""
    return model_path(DEFAULT_MODEL) if DEFAULT_MODEL in _cards() else None


def resolve_model(name_or_path: str | Path | None) -> Path:
    """What a command's ``--model`` means: a file, a bundled name, or (None) the default model."""
    if name_or_path is not None:
        return model_path(name_or_path)
    path = default_model()
    if path is None:
        raise InputError(f"no --model given, and the default model {DEFAULT_MODEL} is not bundled with this "
                         "dftflow; pass --model CHECKPOINT (see `dftflow models list`)")
    return path


def file_digest(path: Path) -> tuple[int, str]:
    """Size in bytes and SHA-256 of ``path``."""
    digest = hashlib.sha256()
    with open(path, "rb") as fh:
        for block in iter(lambda: fh.read(1 << 20), b""):
            digest.update(block)
    return path.stat().st_size, digest.hexdigest()


def model_details(name_or_path: str | Path) -> dict[str, Any]:
    """What ``dftflow models show`` prints: a model's card and its file.

    A bundled name gives its card; a checkpoint file (which wins over a bundled name, as everywhere)
    gives the card fields the checkpoint knows itself (``engine`` None when it does not say). Both
    add the file (``path``, ``file_bytes``, ``file_sha256``, ``checksum_ok`` against the card) and
    the ``versions`` that wrote it. The checkpoint is loaded, so a damaged file is a
    :class:`~dftflow.ml.checkpoint.CheckpointError` naming it.
    """
    from dftflow.ml.checkpoint import load_checkpoint

    is_file = Path(name_or_path).expanduser().is_file()
    card = None if is_file else model_card(str(name_or_path))
    path = model_path(name_or_path)
    ckpt = load_checkpoint(path)
    if card is None:
        card = _default_card(ckpt, path.stem, None, need_engine=False)
    size, sha = file_digest(path)
    return {**card, "path": str(path), "file_bytes": size, "file_sha256": sha,
            "checksum_ok": None if card.get("sha256") is None else card["sha256"] == sha,
            "versions": ckpt.get("versions") or {}}


def _default_card(ckpt: dict[str, Any], name: str, engine: str | None, *, need_engine: bool = True
                  ) -> dict[str, Any]:
    """The card fields a checkpoint knows itself: target, elements, data counts, its validation ε_mae."""
    from pymatgen.core import Element

    target = ckpt.get("target", "total")
    engine = engine or ("gpaw" if target == "smooth_delta" else None)  # a correction of GPAW's guess
    if engine is None and need_engine:
        raise InputError(f"{name}: give engine= (gpaw or vasp): the checkpoint does not say which code it learnt")
    state = ckpt.get("state") or {}
    best = state.get("best_val")
    # the validation of these weights (their step's row), not the best one of the run: a run's last checkpoint
    # is often not its best; without a row of its own step the card names the run's best as such
    own = next((row["val_eps_mae"] for row in reversed(state.get("history") or [])
                if row.get("step") == state.get("step") and row.get("val_eps_mae") is not None), None)
    if own is not None and math.isfinite(own):
        metrics = {"val_eps_mae": float(own)}
    else:
        metrics = {"run_best_val_eps_mae": float(best)} if best is not None and math.isfinite(best) else {}
    numbers = ckpt.get("train_numbers") or []
    return {
        "name": name, "target": target, "engine": engine,
        "settings": {"inputset": DEFAULT_INPUTSET.get(engine, ""), "overrides": {}},
        "elements": [Element.from_Z(int(z)).symbol for z in numbers],
        "training": {"materials": ckpt.get("train_materials"), "steps": state.get("step")},
        "metrics": metrics,
    }


def strip_checkpoint(src: str | Path, dst: str | Path, *, max_bytes: int | None = MAX_BUNDLED_BYTES,
                     **card_fields: Any) -> dict[str, Any]:
    """Write ``dst`` (a weights-only copy of the checkpoint ``src``) and its card ``dst`` with ``.json``.

    Dropped: :data:`TRAINING_ONLY` and the training history (``state`` keeps
    ``step`` and ``best_val``); everything a prediction reads stays (``model``,
    ``model_config``, ``config``, ``saed``, ``target``, ``train_numbers``,
    ``train_materials``, ``correction_scale``, ``versions``). The card takes
    what the checkpoint knows (target, elements, counts, best validation ε_mae)
    and ``card_fields`` on top (``settings``, ``training`` and ``metrics`` are
    merged key by key). ``max_bytes``: refuse a file too large to bundle.
    Returns the card.
    """
    import torch

    from dftflow.ml.checkpoint import load_checkpoint

    src, dst = Path(src), Path(dst)
    if dst.suffix != ".pt":
        raise InputError(f"{dst}: a bundled checkpoint is named <name>.pt")
    ckpt = load_checkpoint(src)  # a file that is not a ChargE3Net checkpoint is refused here
    card = _default_card(ckpt, dst.stem, card_fields.get("engine"))
    for key, value in card_fields.items():
        card[key] = {**card[key], **value} if isinstance(card.get(key), dict) and isinstance(value, dict) else value
    try:
        ModelCard.model_validate(card)
    except ValidationError as exc:
        raise InputError(format_validation_error(f"card of {dst}", exc)) from exc
    state = ckpt.get("state") or {}
    lean = {k: v for k, v in ckpt.items() if k not in TRAINING_ONLY}
    lean["state"] = {k: state[k] for k in ("step", "best_val") if k in state}
    dst.parent.mkdir(parents=True, exist_ok=True)
    tmp = dst.with_name(dst.name + ".tmp")
    torch.save(lean, tmp)
    size, sha = file_digest(tmp)
    if max_bytes is not None and size > max_bytes:
        tmp.unlink()
        raise InputError(f"{src}: the weights take {size / 2**20:.1f} MiB, more than the {max_bytes / 2**20:.0f} "
                         "MiB a bundled model may have; train a smaller model (model.mul, model.lmax)")
    tmp.replace(dst)
    card.update(bytes=size, sha256=sha)
    data = ModelCard.model_validate(card).model_dump(mode="json")
    dst.with_suffix(".json").write_text(json.dumps(data, indent=1) + "\n")
    return data
