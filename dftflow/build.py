"""``build-dataset``: run a recipe's stages in order, resumably, in one project directory.

Stages: import → screen → dedup → select → dft → harvest. Each is skipped or resumed
from what the project already holds (catalog.sqlite, jobs.sqlite), so
re-running the same command continues an interrupted build and redoes nothing.
"""

from __future__ import annotations

import json
import time
from pathlib import Path
from typing import Any

from dftflow.config.recipe import STAGES, Recipe, Stage
from dftflow.errors import ConfigError
from dftflow.project import Project
from dftflow.screening import stages as st


def save_recipe(project: Project, recipe: Recipe) -> None:
    """Keep the recipe a project was built with, so single-step commands reuse its settings."""
    project.root.mkdir(parents=True, exist_ok=True)
    data = recipe.model_dump(mode="json", by_alias=True)
    data["_base_dir"] = str(recipe.base_dir)
    (project.root / "recipe.json").write_text(json.dumps(data, indent=2))


def project_recipe(project: Project) -> Recipe | None:
    path = project.root / "recipe.json"
    if not path.is_file():
        return None
    data = json.loads(path.read_text())
    base = Path(data.pop("_base_dir", "."))
    try:
        recipe = Recipe.model_validate(data)
    except Exception as exc:
        raise ConfigError(f"{path}: stored recipe is invalid ({exc}); re-run build-dataset") from exc
    recipe.base_dir = base
    return recipe


def _ticker(progress: st.Progress | None, label: str = "dft"):
    """Turn queue counts into progress-bar advances (finished jobs)."""
    if progress is None:
        return None
    state = {"started": False, "done": 0}

    def tick(counts: dict[str, int]) -> None:
        total = sum(counts.values())
        done = counts["COMPLETED"] + counts["FAILED"] + counts["LOST"]
        if not state["started"]:
            progress.start(label, total)
            state["started"] = True
            progress.advance(done)
        elif done > state["done"]:
            progress.advance(done - state["done"])
        state["done"] = done

    return tick


def _train_stage(recipe: Recipe, project: Project, progress: Any) -> dict[str, Any]:
    """Split the dataset (once, seeded) and train, continuing an interrupted run."""
    from dftflow.dataset.split import split_dataset
    from dftflow.ml.train import load_checkpoint, load_config, train

    cfg_t = recipe.train
    assert cfg_t is not None and recipe.harvest is not None
    dataset = project.root / recipe.harvest.out
    split = project.root / "split.json"
    if not split.exists():
        data = split_dataset(dataset, test=cfg_t.test, val=cfg_t.val, seed=cfg_t.seed)
        tmp = split.with_suffix(".tmp")
        tmp.write_text(json.dumps(data, indent=1))
        tmp.replace(split)
    out = project.root / cfg_t.out
    cfg = load_config(cfg_t.config, {**cfg_t.overrides, "data.dataset": str(dataset), "data.split": str(split),
                                     "data.task": "pbe-id", "out": str(out)})
    last = out / "checkpoint_last.pt"
    ckpt = load_checkpoint(last) if last.exists() else None
    if ckpt is not None and ckpt["state"]["step"] >= cfg.optim.max_steps:
        return {"model": str(out / "checkpoint_best.pt"), "steps": ckpt["state"]["step"],
                "best_val_eps_mae": ckpt["state"]["best_val"], "already_trained": True}
    summary = train(cfg, resume=ckpt is not None, progress=progress)
    return {"model": str(out / "checkpoint_best.pt"), "split": str(split), **{
        k: summary[k] for k in ("best_val_eps_mae", "final_loss", "saed_fit_eps_mae", "steps") if k in summary}}


def _accel_stage(recipe: Recipe, project: Project, workers: int, progress: Any) -> dict[str, Any]:
    """accel-eval of the trained model on the held-back materials, with the DFT stage's settings."""
    from dftflow.accel.run import accel_eval, dataset_materials

    cfg_a, cfg_t = recipe.accel, recipe.train
    assert cfg_a is not None and cfg_t is not None and recipe.dft is not None and recipe.harvest is not None
    materials = dataset_materials(project.root / recipe.harvest.out, project.root / "split.json", "pbe-id",
                                  cfg_a.subset)
    if cfg_a.model is not None:
        from dftflow.models import resolve_model

        model = resolve_model(cfg_a.model)
    else:
        model = project.root / cfg_t.out / "checkpoint_best.pt"
    report = accel_eval(project.root / cfg_a.out, materials, model=model,
                        arms=tuple(cfg_a.arms), inputset=recipe.dft.static, overrides=recipe.dft.overrides,
                        nfixed=cfg_a.nfixed, occupancies=cfg_a.occupancies, workers=workers,
                        on_tick=_ticker(progress, "accel"))
    return {"report": str(project.root / cfg_a.out / "accel.json"), "model": str(model), "summary": report["summary"],
            "materials": report["materials"], "problems": report["problems"], "arms": cfg_a.arms}


def build_dataset(recipe: Recipe, project: Project, *, until: Stage = "select", workers: int | None = None,
                  progress: st.Progress | None = None, figures: bool = True) -> dict[str, Any]:
    """Run the recipe's stages up to and including ``until``; returns a summary per stage."""
    if until not in STAGES:
        raise ConfigError(f"--until {until!r}: expected one of {', '.join(STAGES)}")
    workers = workers or recipe.workers
    summary: dict[str, Any] = {"recipe": recipe.name, "project": str(project.root), "stages": {}}
    with project.locked("build-dataset"):
        save_recipe(project, recipe)
        catalog = project.catalog()
        try:
            for stage in STAGES[: STAGES.index(until) + 1]:
                t0 = time.perf_counter()
                if stage == "import":
                    result = st.run_import(catalog, recipe, workers=workers, progress=progress)
                elif stage == "screen":
                    result = st.run_screen(catalog, recipe.screening, workers=workers, progress=progress)
                elif stage == "dedup":
                    result = st.run_dedup(catalog, recipe.screening, workers=workers, progress=progress)
                elif stage == "select":
                    result = st.run_select(catalog, recipe.selection)
                elif stage == "harvest":
                    if recipe.harvest is None:
                        continue
                    from dftflow.dataset.harvest import from_project, harvest

                    cfg = recipe.harvest
                    result = harvest(list(from_project(project.root)), project.root / cfg.out, workers=workers,
                                     progress=progress, shard_size=cfg.shard_size, compression=cfg.compression)
                    result["dataset"] = str(project.root / cfg.out)
                elif stage == "train":
                    if recipe.train is None or recipe.harvest is None:
                        continue
                    result = _train_stage(recipe, project, progress)
                elif stage == "accel":
                    if recipe.accel is None or recipe.train is None or recipe.dft is None:
                        continue
                    result = _accel_stage(recipe, project, workers, progress)
                elif recipe.dft is None:
                    continue  # the recipe has no DFT stage
                else:
                    from dftflow.execution.dft_stage import run_dft

                    result = run_dft(project, catalog, recipe.dft, workers=workers,
                                     on_tick=_ticker(progress))
                summary["stages"][stage] = {**result, "seconds": round(time.perf_counter() - t0, 3)}
            summary["funnel"] = st.funnel(catalog)
            if figures:
                from dftflow.screening.report import write_figures

                summary["figures"] = [str(p) for p in write_figures(catalog, project.figures_dir)]
            summary["versions"] = st.versions()
        finally:
            catalog.close()
    (project.root / "summary.json").write_text(json.dumps(summary, indent=2, default=str))
    return summary
