"""Recipes: what ``dftflow build-dataset`` does, declared in ``workflows/*.yaml``.

Paths inside a recipe are relative to the recipe file, so a recipe and its
structures can be copied around together.
"""

from __future__ import annotations

import math
from pathlib import Path
from typing import Annotated, Any, Literal

from pydantic import ConfigDict, Field, field_validator, model_validator

from dftflow.accel import DEFAULT_ARMS
from dftflow.config.base import StrictModel, load_yaml_model
from dftflow.errors import ConfigError
from dftflow.resources import resolve

Stage = Literal["import", "screen", "dedup", "select", "dft", "harvest", "train", "accel"]
STAGES: tuple[Stage, ...] = ("import", "screen", "dedup", "select", "dft", "harvest", "train", "accel")


class RecipeModel(StrictModel):
    """A recipe section: strict, and no number in it may be NaN or infinite (YAML's ``.nan``, ``.inf``)."""

    model_config = ConfigDict(allow_inf_nan=False)


def _finite_values(value: dict[str, Any]) -> dict[str, Any]:
    """Overrides pass through untyped; a NaN or infinity among them is refused all the same."""

    def walk(item: Any, key: str) -> None:
        if isinstance(item, float) and not math.isfinite(item):
            raise ValueError(f"{key} = {item} is not a finite number")
        for k, v in item.items() if isinstance(item, dict) else enumerate(item) if isinstance(item, list) else ():
            walk(v, f"{key}.{k}" if isinstance(k, str) else f"{key}[{k}]")

    for k, v in value.items():
        walk(v, str(k))
    return value


class PrototypeSettings(RecipeModel):
    """Decorated prototype crystals (dftflow.sources.prototypes), in a seeded order whose prefixes are diverse."""

    prototypes: list[str] | None = Field(default=None, description="prototype names; null for all")
    elements: list[str] | None = Field(default=None, description="allowed elements; null for GPAW's setups")
    max_atoms: int | None = Field(default=8, gt=0, description="skip prototypes with larger primitive cells")
    seed: int = 0
    limit: int | None = Field(default=None, gt=0, description="the first N of the seeded order")
    per_prototype: int | None = Field(default=None, gt=0, description="at most N decorations per prototype")

    @field_validator("prototypes")
    @classmethod
    def _known(cls, value: list[str] | None) -> list[str] | None:
        from dftflow.sources.prototypes import BY_NAME

        unknown = sorted(set(value or ()) - set(BY_NAME))
        if unknown:
            raise ValueError(f"unknown prototype(s) {', '.join(unknown)}; known: {', '.join(BY_NAME)}")
        return value

    @field_validator("elements")
    @classmethod
    def _elements(cls, value: list[str] | None) -> list[str] | None:
        from ase.data import atomic_numbers

        unknown = sorted(s for s in value or () if s not in atomic_numbers or s == "X")
        if unknown:
            raise ValueError(f"unknown element(s): {', '.join(unknown)}")
        return value


class SourceSpec(RecipeModel):
    """One structure source.

    ``type: cif`` takes a CIF file, a directory (searched recursively, COD mirror
    layouts included) or a zip/tar(.gz) archive of CIFs. ``diffcsp`` takes the
    ``eval_gen.pt``/``eval_diff.pt``/``eval_opt.pt`` files of DiffCSP, DiffCSP++ and
    CDVAE. ``mattergen`` takes a zip of CIFs or an extxyz file. ``prototypes``
    generates decorated prototype crystals (no path; settings under ``generate``).
    """

    type: Literal["cif", "diffcsp", "mattergen", "prototypes"]
    path: str = Field(default="", description="file, directory or archive (not for type prototypes)")
    label: str | None = Field(
        default=None, description="database or generator name recorded as provenance (icsd, cod, ...)"
    )
    pattern: str = Field(default="*.cif", description="file glob inside directories")
    generate: PrototypeSettings | None = Field(default=None, description="type prototypes: what to generate")

    @model_validator(mode="after")
    def _needs(self) -> SourceSpec:
        if self.type == "prototypes":
            if self.path:
                raise ValueError("type prototypes takes no path (its settings go under 'generate')")
            if self.generate is None:
                self.generate = PrototypeSettings()
        else:
            if not self.path:
                raise ValueError(f"type {self.type} needs a path")
            if self.generate is not None:
                raise ValueError("'generate' is only for type prototypes")
        return self


class OrderSettings(RecipeModel):
    enabled: bool = True
    min_distance: float = Field(default=0.5, ge=0, description="Å; closer atoms mean a broken structure")


class ElectroneutralitySettings(RecipeModel):
    """SMACT charge-neutrality test on the integer element composition."""

    enabled: bool = True
    oxidation_states_set: str = Field(
        default="icsd24", description="SMACT oxidation-state set (icsd24, icsd16, smact14, pymatgen_sp, wiki)"
    )
    mixed_valence: bool = Field(
        default=False,
        description="let atoms of one element take different oxidation states (Fe3O4 passes)",
    )
    pauling_test: bool = True
    include_alloys: bool = Field(default=True, description="all-metal compositions pass")
    max_combinations: int = Field(
        default=200_000, gt=0,
        description="oxidation-state combinations above which the outcome is 'undetermined'",
    )


class SymmetrySettings(RecipeModel):
    symprec: float = Field(default=0.1, gt=0, description="Å, spglib symprec")
    angle_tolerance: float = Field(default=5.0, description="degrees; -1 lets spglib choose")
    reject_p1: bool = Field(default=True, description="space group 1 fails the filter")


class DedupSettings(RecipeModel):
    """pymatgen StructureMatcher tolerances."""

    enabled: bool = True
    ltol: float = Field(default=0.2, gt=0)
    stol: float = Field(default=0.3, gt=0)
    angle_tol: float = Field(default=5.0, gt=0)


class ScreeningSettings(RecipeModel):
    order: OrderSettings = Field(default_factory=OrderSettings)
    max_atoms: int | None = Field(default=200, gt=0, description="sites per cell; null for no cap")
    max_elements: int | None = Field(default=10, gt=0)
    electroneutrality: ElectroneutralitySettings = Field(default_factory=ElectroneutralitySettings)
    symmetry: SymmetrySettings = Field(default_factory=SymmetrySettings)
    dedup: DedupSettings = Field(default_factory=DedupSettings)
    timeout_s: float = Field(default=30.0, gt=0, description="bound on one structure's screening")


class ImportSettings(RecipeModel):
    timeout_s: float = Field(default=20.0, gt=0, description="bound on one file's parse time")


class SelectorSettings(RecipeModel):
    """A diverse subset, e.g. the structures that also get HSE06 statics."""

    size: int = Field(gt=0)
    max_atoms: int | None = Field(default=19, gt=0, description="ECD's HSE06 subset has < 20 atoms")
    max_elements: int | None = Field(default=3, gt=0, description="unary, binary, ternary")
    cover_elements: bool = True
    cover_crystal_systems: bool = True
    seed: int = 0


class DftSettings(RecipeModel):
    """The DFT stage: a flow per structure, run by local workers (embedded default)."""

    engine: Literal["gpaw"] = "gpaw"
    structures: str = Field(default="kept", description="'kept' (the unique screened pool) or 'selection:NAME'")
    primitive: bool = Field(default=True, description="run the primitive cell")
    relax: str | None = Field(default=None, description="input set of the relax before the static, or null")
    static: str = "gpaw_pbe_static"
    hybrid: str | None = Field(default=None, description="input set of a hybrid static, or null")
    hybrid_selection: str | None = Field(default=None, description="run the hybrid only on this selection")
    overrides: dict[str, Any] = Field(default_factory=dict, description="win over the input sets")
    max_attempts: int = Field(default=2, gt=0, description="runs of a job lost with its worker")
    limit: int | None = Field(default=None, gt=0, description="at most this many structures")
    on_settings_change: Literal["refuse", "requeue"] = Field(
        default="refuse", description="finished calculations whose input sets changed since: refuse to go on, "
                                      "or requeue them with the current settings")

    _finite_overrides = field_validator("overrides")(_finite_values)

    @field_validator("structures")
    @classmethod
    def _structures(cls, value: str) -> str:
        if value != "kept" and not value.startswith("selection:"):
            raise ValueError("expected 'kept' or 'selection:NAME'")
        return value


class HarvestSettings(RecipeModel):
    """Densities of the completed statics into the project's HDF5 dataset."""

    out: str = Field(default="dataset", description="dataset directory, relative to the project")
    compression: Literal["gzip", "lzf", "none"] = "gzip"
    shard_size: int = Field(default=64, gt=0, description="materials per shard file")


class TrainSettings(RecipeModel):
    """Split the harvested dataset (ECD pbe-id task) and train a model on it."""

    config: str = Field(default="charge3net-demo", description="training config (ml/*.yaml name or path)")
    test: float = Field(default=0.1, gt=0, description="held-back materials: a fraction (< 1) or a count")
    val: float = Field(default=0.05, gt=0, description="validation materials: a fraction or a count")
    seed: int = 0
    overrides: dict[str, Any] = Field(default_factory=dict, description="dotted config keys, e.g. optim.max_steps")
    out: str = Field(default="model", description="training directory, relative to the project")

    _finite_overrides = field_validator("overrides")(_finite_values)


class AccelSettings(RecipeModel):
    """accel-eval of the trained model on the held-back (test) materials, with the DFT stage's settings."""

    subset: Literal["train", "val", "test"] = "test"
    model: str | None = Field(default=None, description="a bundled model name or checkpoint path; "
                              "null: the model the recipe's train stage made")
    arms: list[str] = Field(default_factory=lambda: list(DEFAULT_ARMS))
    nfixed: int = Field(default=3, ge=0)
    occupancies: Literal["auto", "predicted", "predicted-refresh", "refresh", "atomic"] = "auto"
    out: str = Field(default="accel", description="evaluation directory, relative to the project")


class Recipe(RecipeModel):
    name: str
    description: str = ""
    project: str | None = Field(default=None, description="project directory (relative to the working directory)")
    workers: Annotated[int, Field(gt=0)] = 2
    sources: list[SourceSpec] = Field(min_length=1)
    import_: ImportSettings = Field(default_factory=ImportSettings, alias="import")
    screening: ScreeningSettings = Field(default_factory=ScreeningSettings)
    selection: dict[str, SelectorSettings] = Field(default_factory=dict)
    dft: DftSettings | None = None
    harvest: HarvestSettings | None = None
    train: TrainSettings | None = None
    accel: AccelSettings | None = None

    # Where the file came from; paths inside the recipe are relative to it.
    base_dir: Path = Field(default=Path("."), exclude=True)

    @field_validator("selection")
    @classmethod
    def _names(cls, value: dict[str, SelectorSettings]) -> dict[str, SelectorSettings]:
        for name in value:
            if not name.replace("_", "").replace("-", "").isalnum():
                raise ValueError(f"selection name {name!r} must be letters, digits, '-' or '_'")
        return value

    def source_path(self, spec: SourceSpec) -> Path:
        path = Path(spec.path).expanduser()
        return path if path.is_absolute() else (self.base_dir / path).resolve()

    def project_dir(self) -> Path:
        if self.project is None:
            return (Path.cwd() / f"{self.name}-project").resolve()
        path = Path(self.project).expanduser()
        return path if path.is_absolute() else (Path.cwd() / path).resolve()


def load_recipe(name_or_path: str | Path) -> Recipe:
    """Load a recipe by bundled name (``demo``) or path, validated strictly."""
    path = resolve("workflows", name_or_path)
    _check_text(path)
    recipe = load_yaml_model(path, Recipe)
    recipe.base_dir = path.parent
    return recipe


def _check_text(path: Path) -> None:
    """Refuse, in one line naming the file and line, bytes that are not UTF-8 or characters YAML does not allow.

    ``load_yaml_model`` reports the rest (a missing file, YAML syntax, invalid values).
    """
    import yaml.reader

    try:
        raw = path.read_bytes()
    except OSError:
        return
    try:
        text = raw.decode("utf-8")
    except UnicodeDecodeError as exc:
        line = raw.count(b"\n", 0, exc.start) + 1
        raise ConfigError(f"{path}: line {line}: byte {raw[exc.start]:#04x} is not UTF-8 text") from None
    if bad := yaml.reader.Reader.NON_PRINTABLE.search(text):
        line = text.count("\n", 0, bad.start()) + 1
        raise ConfigError(f"{path}: line {line}: character {bad.group()!r} is not allowed in YAML") from None
