"""Training: a short run on a real density lowers the error; resume continues the same loss curve."""

from __future__ import annotations

import csv
import shutil
from pathlib import Path

import pytest

from dftflow.dataset.harvest import from_directory, harvest
from dftflow.ml.checkpoint import load_checkpoint
from dftflow.ml.config import TrainConfig
from dftflow.ml.train import train


@pytest.fixture(scope="module")
def si_dataset(si_vasp_dataset: Path) -> Path:
    return si_vasp_dataset


def config(dataset: Path, out: Path, steps: int, **optim) -> TrainConfig:
    return TrainConfig.model_validate({
        "model": {"num_interactions": 2, "mul": 16, "lmax": 1, "num_basis": 8, "radial_neurons": 16},
        "data": {"dataset": str(dataset), "train_ids": ["src|Si"], "val_ids": ["src|Si"], "n_probes": 64,
                 "batch_size": 2, "val_probes": 2000},
        "optim": {"lr": 0.01, "decay_steps": 100, "max_steps": steps, "val_every": 5, "checkpoint_every": 3,
                  **optim},
        "seed": 3, "out": str(out)})


def si_and_li(shared: Path, root: Path) -> Path:
    """The real Si and Li CHGCARs of the fixtures harvested into ``root / "ds"``."""
    src = root / "src"
    for name, path in (("Si", shared / "fixtures" / "vasp" / "Si_static_with_chgcar" / "outputs" / "CHGCAR.gz"),
                       ("Li", shared / "fixtures" / "chgcar" / "Li_nospin.gz")):
        (src / name).mkdir(parents=True)
        shutil.copy(path, src / name / "CHGCAR.gz")
    assert harvest(list(from_directory(src)), root / "ds")["stored"] == 2
    return root / "ds"


def losses(out: Path) -> list[float]:
    return [float(r["loss"]) for r in csv.DictReader((out / "log.csv").open())]


def test_resume_continues_the_same_loss_curve(si_dataset: Path, tmp_path: Path) -> None:
    straight = train(config(si_dataset, tmp_path / "a", 6))
    train(config(si_dataset, tmp_path / "b", 3))
    resumed = train(config(si_dataset, tmp_path / "b", 6), resume=True)
    assert losses(tmp_path / "b") == pytest.approx(losses(tmp_path / "a"), rel=1e-6)
    assert resumed["final_loss"] == pytest.approx(straight["final_loss"], rel=1e-6)
    ckpt = load_checkpoint(tmp_path / "b" / "checkpoint_last.pt")
    assert ckpt["state"]["step"] == 6 and ckpt["model_config"]["lmax"] == 1 and "rng" in ckpt


@pytest.mark.slow
def test_overfits_a_real_density_below_one_percent(si_dataset: Path, tmp_path: Path) -> None:
    """A short CPU run on the real Si CHGCAR: Δ-SAED plus a small ChargE3Net reaches ε_mae < 1 %."""
    cfg = TrainConfig.model_validate({
        "model": {"num_interactions": 2, "mul": 24, "lmax": 2, "num_basis": 10, "radial_neurons": 32},
        "data": {"dataset": str(si_dataset), "train_ids": ["src|Si"], "val_ids": ["src|Si"], "n_probes": 300,
                 "batch_size": 1, "val_probes": 3000},
        "optim": {"lr": 0.02, "decay_steps": 40, "max_steps": 1000, "val_every": 100, "checkpoint_every": 500},
        "delta_saed": True, "saed_probes": 6000, "out": str(tmp_path / "fit")})
    summary = train(cfg)
    rows = [r for r in csv.DictReader((tmp_path / "fit" / "log.csv").open()) if r["val_eps_mae"]]
    # the fitted atomic densities alone are a rough start (about 12 %); the model takes it below 1 %
    assert 0.05 < summary["saed_fit_eps_mae"] < 0.2
    assert summary["best_val_eps_mae"] < 0.009, [(r["step"], r["val_eps_mae"]) for r in rows]
    best = load_checkpoint(tmp_path / "fit" / "checkpoint_best.pt")["state"]
    assert best["history"][-1]["step"] == best["step"]  # it holds its own validation (for its card)
    assert best["history"][-1]["val_eps_mae"] == best["best_val"] == summary["best_val_eps_mae"]


@pytest.mark.parametrize("cutoff", [None, 2.5])
def test_two_process_ddp_equals_one_process(shared: Path, tmp_path: Path, cutoff: float | None) -> None:
    """With a 2.5 Å cutoff bcc Li (3.0 Å bonds) has no atom edges, Si (2.35 Å) has: a process whose structures
    have none leaves part of the network out of its graph, and the processes must still reduce alike."""
    import json
    import subprocess
    import sys

    import torch
    import yaml

    si_and_li(shared, tmp_path)
    runs = {}
    for procs in (1, 2):
        cfg = config(tmp_path / "ds", tmp_path / f"out{procs}", 4).model_dump()
        cfg["data"].update(train_ids=["src|Li", "src|Si"], val_ids=None, batch_size=2)
        cfg["dtype"] = "float64"
        if cutoff is not None:
            cfg["model"]["cutoff"] = cutoff
        path = tmp_path / f"cfg{procs}.yaml"
        path.write_text(yaml.safe_dump(cfg))
        launcher = [sys.executable, "-m", "torch.distributed.run", "--standalone", f"--nproc_per_node={procs}",
                    "-m", "dftflow"] if procs > 1 else [sys.executable, "-m", "dftflow"]
        res = subprocess.run([*launcher, "train", str(path), "--json"], capture_output=True, text=True, timeout=600)
        assert res.returncode == 0, res.stderr[-3000:]
        summary = json.loads(res.stdout[res.stdout.index("{"):])
        assert summary["steps"] == 4
        runs[procs] = torch.load(tmp_path / f"out{procs}" / "checkpoint_last.pt", weights_only=False)["model"]
    assert losses(tmp_path / "out2") == pytest.approx(losses(tmp_path / "out1"), rel=1e-9)
    for key, value in runs[1].items():
        torch.testing.assert_close(runs[2][key], value, rtol=1e-9, atol=1e-12)


def test_two_processes_stop_together_at_the_time_limit(shared: Path, tmp_path: Path) -> None:
    """Only rank 0 validates, so the ranks reach each step's time check at different moments; a rank that
    stopped alone would leave the other waiting in its next gradient reduction for ever."""
    import json
    import subprocess
    import sys

    import yaml

    si_and_li(shared, tmp_path)
    cfg = config(tmp_path / "ds", tmp_path / "out", 100000, val_every=1, max_seconds=4.0).model_dump()
    cfg["data"].update(train_ids=["src|Li", "src|Si"], val_ids=["src|Li", "src|Si"], batch_size=2, val_probes=0)
    path = tmp_path / "cfg.yaml"
    path.write_text(yaml.safe_dump(cfg))
    res = subprocess.run([sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc_per_node=2",
                          "-m", "dftflow", "train", str(path), "--json"], capture_output=True, text=True, timeout=300)
    assert res.returncode == 0, res.stderr[-3000:]
    summary = json.loads(res.stdout[res.stdout.index("{"):])
    assert summary["stopped_by_time"] and 1 < summary["steps"] < 100000
    assert len(losses(tmp_path / "out")) == summary["steps"]


def test_validation_on_elements_training_never_saw_is_flagged(shared: Path, tmp_path: Path) -> None:
    si_and_li(shared, tmp_path)
    cfg = config(tmp_path / "ds", tmp_path / "out", 2, val_every=2)
    cfg = cfg.model_copy(update={"data": cfg.data.model_copy(update={"val_ids": ["src|Li", "src|Si"]})})
    with pytest.warns(UserWarning, match=r"elements no training material has \(Li\)"):
        summary = train(cfg)
    assert summary["val_unseen_elements"] == ["Li"]
    assert train(config(tmp_path / "ds", tmp_path / "out2", 1))["val_unseen_elements"] == []


def test_relative_l1_weighs_every_structure_by_its_own_scale() -> None:
    """Two structures with the same relative error contribute the same loss, whatever their density scale."""
    import torch

    from dftflow.ml.loss import training_loss

    target = torch.tensor([0.01, -0.01, 1.0, -1.0])
    batch = {"target": target, "probe_weight": torch.tensor([100.0, 100.0, 1.0, 1.0]),
             "pred": target * 1.5}  # 50 % too large everywhere

    def model(b):
        return b["pred"]

    plain = training_loss(model, batch, spin=False)
    relative = training_loss(model, batch, spin=False, relative=True)
    assert float(plain) == pytest.approx((0.005 * 2 + 0.5 * 2) / 4)
    assert float(relative) == pytest.approx(0.5)  # each point: 50 % of its structure's mean |target|
