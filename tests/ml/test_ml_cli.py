"""End to end on real densities: Δ-SAED training, evaluate, fine-tuning and predict (CHGCAR out).

The trained model must beat what its own SAED baseline gives alone (the same checkpoint with the
readout zeroed): a trainer that does not learn (lr 0, gradients lost, targets misaligned) keeps the
network's output near zero or noise and fails it.
"""

from __future__ import annotations

import gzip
import json
import shutil
from pathlib import Path

import numpy as np
import pytest
import torch
import yaml
from pymatgen.io.vasp import Chgcar
from typer.testing import CliRunner

from dftflow.cli.app import app
from dftflow.dataset.harvest import from_directory, harvest
from dftflow.ml.checkpoint import load_checkpoint


@pytest.fixture(scope="module")
def dataset(shared: Path, tmp_path_factory) -> Path:
    root = tmp_path_factory.mktemp("ds")
    for name, path in (("Si", shared / "fixtures" / "vasp" / "Si_static_with_chgcar" / "outputs" / "CHGCAR.gz"),
                       ("Li", shared / "fixtures" / "chgcar" / "Li_nospin.gz")):
        (root / "src" / name).mkdir(parents=True)
        shutil.copy(path, root / "src" / name / "CHGCAR.gz")
    assert harvest(list(from_directory(root / "src")), root / "ds")["stored"] == 2
    return root / "ds"


def write_config(path: Path, dataset: Path, out: Path, **extra) -> Path:
    cfg = {"model": {"num_interactions": 2, "mul": 16, "lmax": 1, "num_basis": 8, "radial_neurons": 16},
           "data": {"dataset": str(dataset), "train_ids": ["src|Si", "src|Li"], "val_ids": ["src|Si", "src|Li"],
                    "n_probes": 64, "batch_size": 2, "val_probes": 1000},
           "optim": {"lr": 0.01, "max_steps": 20, "val_every": 10, "checkpoint_every": 10}, "out": str(out), **extra}
    path.write_text(yaml.safe_dump(cfg))
    return path


def run(*args: str) -> dict:
    res = CliRunner().invoke(app, [*args, "--json"])
    assert res.exit_code == 0, res.output
    return json.loads(res.output)


def saed_only(checkpoint: Path, dest: Path) -> Path:
    """``checkpoint`` with its readout zeroed: the network adds nothing, the prediction is its SAED baseline."""
    ckpt = torch.load(checkpoint, weights_only=False)
    ckpt["model"] = {k: (torch.zeros_like(v) if k.startswith("readout.") else v) for k, v in ckpt["model"].items()}
    torch.save(ckpt, dest)
    return dest


#: the trained model's mean ε_mae over its SAED baseline's, at most (20 steps reach about 0.88; no learning: 1.0)
LEARNT = 0.95


def test_delta_saed_train_evaluate_finetune_predict(dataset: Path, shared: Path, tmp_path: Path) -> None:
    cfg = write_config(tmp_path / "saed.yaml", dataset, tmp_path / "pbe", delta_saed=True, saed_probes=3000)
    summary = run("train", str(cfg))
    assert summary["saed_fit_eps_mae"] is not None and summary["saed_fit_eps_mae"] < 0.5
    best = tmp_path / "pbe" / "checkpoint_best.pt"
    ckpt = load_checkpoint(best)
    assert set(ckpt["saed"]["coefficients"]) == {"3", "14"} and "fitted" in ckpt["saed"]["source"]

    # evaluate on the same 2000 points per material: the model, and its SAED baseline alone
    result = run("evaluate", "--model", str(best), "--dataset", str(dataset), "--probes", "2000",
                 "--out", str(tmp_path / "eval"))
    assert result["materials"] == 2 and set(result["per_element"]) == {"Li", "Si"}
    assert (tmp_path / "eval" / "parity.png").stat().st_size > 10_000
    assert (tmp_path / "eval" / "errors.png").exists() and (tmp_path / "eval" / "evaluation.json").exists()
    baseline = run("evaluate", "--model", str(saed_only(best, tmp_path / "saed_only.pt")), "--dataset",
                   str(dataset), "--probes", "2000", "--out", str(tmp_path / "eval_saed"))
    # the fitted atomic densities are far better than predicting zero (ε_mae 1) ...
    assert baseline["eps_mae_mean"] < 0.2, baseline["per_structure"]
    # ... and the trained network improves on them: it learnt the rest of the density
    ratio = result["eps_mae_mean"] / baseline["eps_mae_mean"]
    assert ratio < LEARNT, (ratio, result["per_structure"], baseline["per_structure"])

    # fine-tuning from the checkpoint on one material: all weights train, the SAED baseline is kept
    tune = write_config(tmp_path / "tune.yaml", dataset, tmp_path / "tuned", delta_saed=True,
                        init_from=str(tmp_path / "pbe" / "checkpoint_best.pt"))
    data = yaml.safe_load(tune.read_text())
    data["data"].update(train_ids=["src|Li"], val_ids=["src|Li"])
    data["optim"]["max_steps"] = 10
    tune.write_text(yaml.safe_dump(data))
    run("train", str(tune))
    tuned = load_checkpoint(tmp_path / "tuned" / "checkpoint_last.pt")
    assert tuned["saed"] == ckpt["saed"]
    moved = [k for k in ckpt["model"] if not np.allclose(ckpt["model"][k].numpy(), tuned["model"][k].numpy())]
    # every part of the network trained, from the first atom layer to the readout
    assert {"atom_convs.0.radial.layer0.weight", "probe_convs.1.post.weight", "readout.weight"} <= set(moved)

    # predict a structure from its POSCAR alone, rescaled to its valence electrons (Si: 2 × 4)
    poscar = tmp_path / "Si.vasp"
    poscar.write_bytes(gzip.decompress((shared / "fixtures" / "vasp" / "Si_static_with_chgcar" / "outputs" /
                                        "POSCAR.gz").read_bytes()))
    rows = run("predict", str(poscar), "--model", str(tmp_path / "pbe" / "checkpoint_best.pt"), "--out",
               str(tmp_path / "pred"), "--grid", "12,12,12")
    chg = Chgcar.from_file(rows[0]["chgcar"])
    assert chg.data["total"].shape == (12, 12, 12)
    assert chg.data["total"].mean() == pytest.approx(8.0, rel=1e-4) and rows[0]["nelect"] == 8.0
