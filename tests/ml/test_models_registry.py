"""Bundled models: the registry, `dftflow models`, weights-only checkpoints, and how predict uses them."""

from __future__ import annotations

import json
import math
import os
import shutil
import subprocess
import sys
import zipfile
from pathlib import Path

import numpy as np
import pytest
import torch
from pymatgen.core import Lattice, Structure

import dftflow.models as registry
from dftflow.cli.app import main
from dftflow.errors import InputError
from dftflow.ml.checkpoint import TrainState, load_checkpoint, save_checkpoint
from dftflow.ml.config import TrainConfig
from dftflow.ml.model import ModelConfig, build_model
from dftflow.ml.predict import load_model, predict_density

REPO = Path(__file__).resolve().parents[2]
TINY = {"num_interactions": 1, "mul": 8, "lmax": 1, "num_basis": 6, "radial_neurons": 8}
GRID = (8, 8, 8)


def silicon() -> Structure:
    return Structure(Lattice.cubic(5.43), ["Si"] * 2, [[0, 0, 0], [0.25, 0.25, 0.25]])


def raw_electrons(path: Path, structure: Structure) -> float:
    net, ckpt = load_model(path)
    return predict_density(net, ckpt, structure, GRID)["electrons_predicted"]


def make_checkpoint(path: Path, *, readout_sign: float = 1.0, target: str = "total") -> Path:
    """A real (untrained) ChargE3Net checkpoint with optimizer state, as `dftflow train` writes it, of a model
    'trained on Si' (train_numbers [14]) whose density integrates to a positive count on :func:`silicon`."""
    torch.manual_seed(3)
    cfg = TrainConfig.model_validate({"model": TINY, "out": str(path.parent)})
    model = build_model(ModelConfig(**TINY))
    optimizer = torch.optim.Adam(model.parameters(), lr=1e-3)
    model(_probe_batch(model)).sum().backward()
    optimizer.step()  # a real optimizer state (Adam moments) to strip
    scheduler = torch.optim.lr_scheduler.LambdaLR(optimizer, lambda step: 1.0)
    state = TrainState(step=7, best_val=0.25, history=[{"step": 7, "loss": 1.0, "val_eps_mae": 0.25}])
    extra = {"saed": None, "target": target, "train_numbers": [14], "train_materials": 3}
    path.parent.mkdir(parents=True, exist_ok=True)
    save_checkpoint(path, model, optimizer, scheduler, state, cfg, extra)
    sign = math.copysign(1.0, raw_electrons(path, silicon())) * readout_sign
    with torch.no_grad():
        model.readout.weight.mul_(sign)
    save_checkpoint(path, model, optimizer, scheduler, state, cfg, extra)
    return path


def _probe_batch(model):
    from dftflow.ml.graph import make_batch

    s = silicon()
    return make_batch([{"cell": s.lattice.matrix, "positions": s.cart_coords, "numbers": [14, 14],
                        "probe_positions": s.cart_coords + 0.3}], model.config.cutoff)


@pytest.fixture(scope="module")
def trained(tmp_path_factory) -> Path:
    return make_checkpoint(tmp_path_factory.mktemp("ckpt") / "checkpoint_best.pt")


@pytest.fixture()
def bundle(trained: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Path:
    """A registry folder holding the default model and one other, both stripped from ``trained``."""
    root = tmp_path / "models"
    registry.strip_checkpoint(trained, root / f"{registry.DEFAULT_MODEL}.pt", engine="gpaw",
                              description="tiny test model", settings={"overrides": {"ecut": 300}},
                              rebuild="make_checkpoint() in tests/ml/test_models_registry.py")
    registry.strip_checkpoint(trained, root / "other.pt", engine="vasp", metrics={"test_steps_ratio": 0.8})
    monkeypatch.setattr(registry, "registry", lambda: root)
    return root


def cli(capsys, *args: str) -> tuple[int, str, str]:
    capsys.readouterr()
    code = main([*args])
    out = capsys.readouterr()
    return code, out.out, out.err


def write_structure(path: Path, structure: Structure) -> Path:
    structure.to(filename=str(path))
    return path


def test_the_card_reports_the_validation_of_the_weights_it_ships(trained: Path, tmp_path: Path) -> None:
    """A run's last checkpoint is often not its best: its card carries its own step's validation; one
    saved at a step without validation names the run's best as such, not as its own."""
    ckpt = torch.load(trained, weights_only=False)
    ckpt["state"]["history"] = [{"step": 5, "loss": 1.0, "val_eps_mae": 0.25}, {"step": 7, "loss": 0.9,
                                                                                "val_eps_mae": 0.6}]
    torch.save(ckpt, tmp_path / "last.pt")
    assert registry.strip_checkpoint(tmp_path / "last.pt", tmp_path / "a.pt", engine="gpaw")["metrics"] == {
        "val_eps_mae": 0.6}
    ckpt["state"]["history"] = [{"step": 5, "loss": 1.0, "val_eps_mae": 0.25}, {"step": 7, "loss": 0.9}]
    torch.save(ckpt, tmp_path / "periodic.pt")
    assert registry.strip_checkpoint(tmp_path / "periodic.pt", tmp_path / "b.pt", engine="gpaw")["metrics"] == {
        "run_best_val_eps_mae": 0.25}


def test_strip_checkpoint_drops_training_state_and_predicts_the_same(trained: Path, tmp_path: Path) -> None:
    card = registry.strip_checkpoint(trained, tmp_path / "lean.pt", engine="gpaw")
    full, lean = load_checkpoint(trained), load_checkpoint(tmp_path / "lean.pt")
    assert {"optimizer", "scheduler", "rng"} <= set(full) and not {"optimizer", "scheduler", "rng"} & set(lean)
    assert lean["state"] == {"step": 7, "best_val": 0.25}
    for key in ("model_config", "config", "saed", "target", "train_numbers", "train_materials", "versions"):
        assert lean[key] == full[key], key
    assert (tmp_path / "lean.pt").stat().st_size < trained.stat().st_size
    s = Structure(Lattice.cubic(5.43), ["Si", "Si"], [[0, 0, 0], [0.25, 0.25, 0.3]])
    a = predict_density(*load_model(trained), s, GRID, nelect=8.0)
    b = predict_density(*load_model(tmp_path / "lean.pt"), s, GRID, nelect=8.0)
    np.testing.assert_array_equal(a["rho"], b["rho"])
    assert a["electrons_predicted"] == b["electrons_predicted"]
    # the card: what the checkpoint knows, with its file's checksum
    on_disk = json.loads((tmp_path / "lean.json").read_text())
    assert on_disk == card
    assert card["name"] == "lean" and card["target"] == "total" and card["elements"] == ["Si"]
    assert card["training"]["materials"] == 3 and card["training"]["steps"] == 7
    assert card["metrics"] == {"val_eps_mae": 0.25} and card["settings"] == {"inputset": "gpaw_pbe_static",
                                                                               "overrides": {}}
    assert card["sha256"] == registry.file_digest(tmp_path / "lean.pt")[1]


def test_strip_checkpoint_refuses_what_cannot_be_bundled(trained: Path, tmp_path: Path) -> None:
    with pytest.raises(InputError, match="engine="):
        registry.strip_checkpoint(trained, tmp_path / "a.pt")  # a density model does not say its code
    with pytest.raises(InputError, match="more than the 0 MiB"):
        registry.strip_checkpoint(trained, tmp_path / "b.pt", engine="gpaw", max_bytes=1000)
    assert not list(tmp_path.glob("b.*"))
    with pytest.raises(InputError, match="target"):
        registry.strip_checkpoint(trained, tmp_path / "c.pt", engine="gpaw", target="density")


def test_registry_lists_shows_and_resolves(bundle: Path, trained: Path, tmp_path: Path) -> None:
    assert [c["name"] for c in registry.list_models()] == ["gpaw-pbe-small", "other"]
    card = registry.model_card("gpaw-pbe-small")
    assert card["settings"] == {"inputset": "gpaw_pbe_static", "overrides": {"ecut": 300}}
    assert registry.model_card("other")["metrics"] == {"val_eps_mae": 0.25, "test_steps_ratio": 0.8}
    assert registry.default_model() == bundle / "gpaw-pbe-small.pt"
    assert registry.model_path("other") == bundle / "other.pt"
    assert registry.model_path(trained) == trained  # a file wins
    with pytest.raises(InputError, match=r"nope: no such checkpoint file.*bundled: gpaw-pbe-small, other"):
        registry.model_path("nope")
    (bundle / "other.pt").unlink()  # a card without its weights is not a model
    assert [c["name"] for c in registry.list_models()] == ["gpaw-pbe-small"]
    (bundle / "gpaw-pbe-small.pt").unlink()
    assert registry.default_model() is None
    with pytest.raises(InputError, match="default model gpaw-pbe-small is not bundled"):
        registry.resolve_model(None)


def test_models_cli_list_and_show(bundle: Path, capsys, monkeypatch: pytest.MonkeyPatch) -> None:
    from dftflow.cli.common import console

    monkeypatch.setattr(console, "width", 200)  # table rows on one line
    code, out, _ = cli(capsys, "models", "list", "--json")
    assert code == 0 and [r["name"] for r in json.loads(out)] == ["gpaw-pbe-small", "other"]
    code, out, _ = cli(capsys, "models", "list")
    assert code == 0 and "gpaw-pbe-small (default)" in out and "val_eps_mae 0.25" in out
    code, out, _ = cli(capsys, "models", "show", "other", "--json")
    shown = json.loads(out)
    size, sha = registry.file_digest(bundle / "other.pt")
    assert code == 0 and shown["engine"] == "vasp" and shown["elements"] == ["Si"]
    assert shown["file_bytes"] == size and shown["file_sha256"] == sha and shown["checksum_ok"] is True
    assert shown["path"] == str(bundle / "other.pt")
    code, out, _ = cli(capsys, "models", "show", "other")
    assert code == 0 and sha in out
    code, _, err = cli(capsys, "models", "show", "nope")
    assert code == 1 and err.splitlines()[0].startswith("error: nope: no such checkpoint file")


def test_models_show_reports_a_changed_file(bundle: Path, trained: Path, capsys) -> None:
    shutil.copy(trained, bundle / "other.pt")
    code, out, _ = cli(capsys, "models", "show", "other", "--json")
    assert code == 0 and json.loads(out)["checksum_ok"] is False


def test_predict_without_model_uses_the_bundled_default(bundle: Path, tmp_path: Path, capsys) -> None:
    poscar = write_structure(tmp_path / "Si.vasp", silicon())
    code, out, err = cli(capsys, "predict", str(poscar), "-o", str(tmp_path / "p"), "--grid", "8,8,8", "--json")
    assert code == 0, err
    row = json.loads(out)[0]
    expected = raw_electrons(bundle / "gpaw-pbe-small.pt", silicon())
    assert row["electrons_predicted"] == pytest.approx(expected, rel=1e-6) and row["nelect"] == 8.0
    assert row["unseen_elements"] == [] and Path(row["chgcar"]).is_file()
    # a bundled name works too; without any bundled model the error says what to do
    code, _, err = cli(capsys, "predict", str(poscar), "--model", "other", "-o", str(tmp_path / "q"),
                       "--grid", "8,8,8", "--json")
    assert code == 0, err
    (bundle / "gpaw-pbe-small.pt").unlink()
    code, _, err = cli(capsys, "predict", str(poscar), "-o", str(tmp_path / "r"), "--json")
    assert code == 1 and "default model gpaw-pbe-small is not bundled" in err and "--model" in err


def test_predict_refuses_elements_the_model_never_saw(trained: Path, tmp_path: Path, capsys) -> None:
    sio = write_structure(tmp_path / "SiO.vasp", Structure(Lattice.cubic(4.2), ["Si", "O"],
                                                             [[0, 0, 0], [0.5, 0.5, 0.5]]))
    args = ["predict", str(sio), "--model", str(trained), "-o", str(tmp_path / "p"), "--grid", "8,8,8",
            "--nelect", "none", "--json"]
    code, out, err = cli(capsys, *args)
    assert code == 1 and out == ""
    assert err.splitlines()[0] == (f"error: {sio}: the model {trained} was not trained on O; "
                                   "pass --allow-unseen to predict anyway")
    assert not (tmp_path / "p").exists()
    code, out, err = cli(capsys, *args, "--allow-unseen")
    assert code == 0, err
    assert "warning" in err and "not trained on O" in err
    row = json.loads(out)[0]
    assert row["unseen_elements"] == ["O"] and Path(row["chgcar"]).is_file()


@pytest.mark.parametrize("readout", [-1.0, 0.0])
def test_predict_refuses_a_negative_or_vanishing_electron_count(readout: float, tmp_path: Path, capsys) -> None:
    """A density integrating to ≤ 0 (or ≤ 1e-3 of the target) is not rescaled into a CHGCAR with the wrong sign."""
    bad = make_checkpoint(tmp_path / "bad.pt", readout_sign=readout)
    poscar = write_structure(tmp_path / "Si.vasp", silicon())
    raw = raw_electrons(bad, silicon())
    assert raw < 0 if readout < 0 else raw == 0
    code, out, err = cli(capsys, "predict", str(poscar), "--model", str(bad), "-o", str(tmp_path / "p"),
                         "--grid", "8,8,8", "--json")
    assert code == 1 and out == ""
    assert "integrates to" in err and "not about 8; refusing to rescale" in err
    assert not (tmp_path / "p" / "Si" / "CHGCAR").exists()
    code, _, err = cli(capsys, "predict", str(poscar), "--model", str(bad), "-o", str(tmp_path / "p"),
                       "--grid", "8,8,8", "--nelect", "-3")
    assert code == 1 and "must be positive" in err


def test_predict_refuses_a_correction_model(tmp_path: Path, capsys) -> None:
    delta = make_checkpoint(tmp_path / "delta.pt", target="smooth_delta")
    poscar = write_structure(tmp_path / "Si.vasp", silicon())
    code, _, err = cli(capsys, "predict", str(poscar), "--model", str(delta), "-o", str(tmp_path / "p"))
    assert code == 1 and "correction model" in err and "accel-eval" in err
    assert not (tmp_path / "p").exists()


def test_accel_eval_without_model_needs_a_bundled_default(tmp_path: Path, monkeypatch, capsys) -> None:
    monkeypatch.setattr(registry, "registry", lambda: tmp_path)
    poscar = write_structure(tmp_path / "Si.vasp", silicon())
    code, _, err = cli(capsys, "accel-eval", str(poscar), "-o", str(tmp_path / "a"))
    assert code == 1 and "default model gpaw-pbe-small is not bundled" in err
    code, _, err = cli(capsys, "accel-eval", str(poscar), "--model", "nope", "-o", str(tmp_path / "a"))
    assert code == 1 and "nope: no such checkpoint file, and no bundled model" in err


def test_bundled_models_are_small_and_carded() -> None:
    """What the repository ships: every .pt has a valid card of its name and stays under the size limit."""
    root = REPO / "dftflow" / "models"
    for pt in root.glob("*.pt"):
        assert pt.stat().st_size <= registry.MAX_BUNDLED_BYTES, pt
        card = registry._read_card(pt.with_suffix(".json"))
        assert card.sha256 == registry.file_digest(pt)[1], pt
    assert {p.stem for p in root.glob("*.json")} == {p.stem for p in root.glob("*.pt")}


@pytest.mark.slow
def test_wheel_carries_a_bundled_model(trained: Path, tmp_path: Path) -> None:
    """A copy of the source tree with a model in dftflow/models builds a wheel that holds it (even with *.pt
    git-ignored), and the installed wheel lists, shows and predicts with it from another directory."""
    src = tmp_path / "src"

    def skip(folder: str, names: list[str]) -> set[str]:  # caches, and the models the checkout may bundle
        models = Path(folder) == REPO / "dftflow" / "models"
        return {n for n in names if n == "__pycache__" or n.endswith(".pyc")
                or (models and n.endswith((".pt", ".json")))}

    shutil.copytree(REPO / "dftflow", src / "dftflow", ignore=skip)
    for name in ("workflows", "inputsets", "ml", "cluster_profiles"):
        shutil.copytree(REPO / name, src / name, ignore=skip)
    for name in ("pyproject.toml", "hatch_build.py", "README.md"):
        shutil.copy(REPO / name, src / name)
    (src / ".gitignore").write_text((REPO / ".gitignore").read_text() + "*.pt\n")  # the wheel must not care
    registry.strip_checkpoint(trained, src / "dftflow" / "models" / "tiny-si.pt", engine="gpaw")

    wheel_dir = tmp_path / "wheel"
    subprocess.run([sys.executable, "-m", "pip", "wheel", "--no-deps", "--no-build-isolation", "-q",
                    "-w", str(wheel_dir), str(src)], check=True, capture_output=True, timeout=300)
    wheel = next(wheel_dir.glob("dftflow-*.whl"))
    assert {"dftflow/models/tiny-si.pt", "dftflow/models/tiny-si.json",
            "dftflow/models/__init__.py"} <= set(zipfile.ZipFile(wheel).namelist())
    target = tmp_path / "site"
    subprocess.run([sys.executable, "-m", "pip", "install", "--no-deps", "-q", "--target", str(target),
                    str(wheel)], check=True, capture_output=True, timeout=300)
    elsewhere = tmp_path / "elsewhere"
    elsewhere.mkdir()
    env = {**os.environ, "PYTHONPATH": str(target), "OMP_NUM_THREADS": "1"}

    def dftflow(*args: str) -> dict | list:
        proc = subprocess.run([sys.executable, "-m", "dftflow", *args, "--json"], capture_output=True, text=True,
                              cwd=elsewhere, env=env, timeout=300)
        assert proc.returncode == 0, proc.stderr
        return json.loads(proc.stdout)

    assert [r["name"] for r in dftflow("models", "list")] == ["tiny-si"]
    shown = dftflow("models", "show", "tiny-si")
    assert shown["path"] == str(target / "dftflow" / "models" / "tiny-si.pt") and shown["checksum_ok"] is True
    poscar = write_structure(elsewhere / "Si.vasp", silicon())
    rows = dftflow("predict", str(poscar), "--model", "tiny-si", "--grid", "8,8,8", "-o", str(elsewhere / "p"))
    assert rows[0]["nelect"] == 8.0 and Path(rows[0]["chgcar"]).is_file()
