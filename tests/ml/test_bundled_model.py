"""The model that ships with dftflow: its card, and a correction predicted from an installed wheel."""

from __future__ import annotations

import importlib.util
import json
import os
import shutil
import subprocess
import sys
import zipfile
from pathlib import Path

import dftflow.models as registry

REPO = Path(__file__).resolve().parents[2]


def test_the_default_model_is_bundled_with_a_matching_card() -> None:
    path = registry.default_model()
    assert path is not None and path.parent == REPO / "dftflow" / "models"
    card = registry.model_details(registry.DEFAULT_MODEL)
    assert card["checksum_ok"] is True and card["file_bytes"] < registry.MAX_BUNDLED_BYTES
    assert card["target"] == "smooth_delta" and card["engine"] == "gpaw"
    assert len(card["elements"]) >= 30 and {"O", "Si", "Fe", "Zn"} <= set(card["elements"])
    assert card["settings"]["overrides"] == {"ecut": 300, "kpoint_density": 12}
    assert 0 <= card["metrics"]["correction_scale"] <= 2
    from dftflow.ml.checkpoint import load_checkpoint

    ckpt = load_checkpoint(path)
    assert "optimizer" not in ckpt and ckpt["target"] == "smooth_delta"
    assert ckpt["correction_scale"] == card["metrics"]["correction_scale"]


PREDICT = """
import json, sys
import numpy as np
from pymatgen.core import Lattice, Structure
from dftflow.models import default_model
from dftflow.ml.predict import load_model, predict_correction
from dftflow.gpaw.params import gpaw_parameters, to_atoms
from dftflow.gpaw.restart import GridConverter
from dftflow.inputsets import load_inputset, with_overrides

path = default_model()
iset = with_overrides(load_inputset("gpaw_pbe_static"), {"ecut": 300, "kpoint_density": 12})
s = Structure(Lattice.cubic(4.21), ["Mg"] * 4 + ["O"] * 4,
              [[0, 0, 0], [0, .5, .5], [.5, 0, .5], [.5, .5, 0], [.5, .5, .5], [.5, 0, 0], [0, .5, 0], [0, 0, .5]])
s = s.get_primitive_structure()
atoms = to_atoms(s, iset)
conv = GridConverter(atoms, gpaw_parameters(atoms, iset))
model, ckpt = load_model(path)
out = predict_correction(model, ckpt, s, conv.grid)
atomic = conv.atomic.nt_sR.sum(0)
print(json.dumps({"path": str(path), "grid": list(out["delta"].shape), "conv_grid": list(conv.grid),
                  "finite": bool(np.isfinite(out["delta"]).all()), "max": float(np.abs(out["delta"]).max()),
                  "atomic_max": float(np.abs(atomic).max() / 0.148184711),
                  "dD": [list(d.shape) for d in out["delta_D"]],
                  "D": [list(conv.atomic.D_asii[a].shape[1:]) for a in range(len(s))]}))
"""


def test_the_bundled_model_predicts_from_an_installed_wheel(tmp_path: Path) -> None:
    """The wheel carries the real weights; installed elsewhere, the default model is found there (not in the
    checkout) and predicts a finite correction of MgO's atomic guess, grid and density matrices."""
    src = tmp_path / "src"
    skip = shutil.ignore_patterns("__pycache__", "*.pyc")
    shutil.copytree(REPO / "dftflow", src / "dftflow", ignore=skip)
    for name in ("workflows", "inputsets", "ml", "cluster_profiles"):
        shutil.copytree(REPO / name, src / name, ignore=skip)
    for name in ("pyproject.toml", "hatch_build.py", "README.md", ".gitignore"):
        shutil.copy(REPO / name, src / name)
    wheel_dir = tmp_path / "wheel"
    subprocess.run([sys.executable, "-m", "pip", "wheel", "--no-deps", "--no-build-isolation", "-q", "-w",
                    str(wheel_dir), str(src)], check=True, capture_output=True, timeout=300)
    wheel = next(wheel_dir.glob("dftflow-*.whl"))
    name = registry.DEFAULT_MODEL
    names = set(zipfile.ZipFile(wheel).namelist())
    assert {f"dftflow/models/{name}.pt", f"dftflow/models/{name}.json"} <= names
    if importlib.util.find_spec("dftflow._speedups") is not None:  # compiled here, so the build hook compiles it
        assert any(n.startswith("dftflow/_speedups.") and not n.endswith(".c") for n in names), sorted(names)
    target = tmp_path / "site"
    subprocess.run([sys.executable, "-m", "pip", "install", "--no-deps", "-q", "--target", str(target), str(wheel)],
                   check=True, capture_output=True, timeout=300)
    elsewhere = tmp_path / "elsewhere"
    elsewhere.mkdir()
    env = {**os.environ, "PYTHONPATH": str(target), "OMP_NUM_THREADS": "1"}
    proc = subprocess.run([sys.executable, "-c", PREDICT], capture_output=True, text=True, cwd=elsewhere, env=env,
                          timeout=600)
    assert proc.returncode == 0, proc.stderr
    out = json.loads(proc.stdout.strip().splitlines()[-1])
    assert out["path"] == str(target / "dftflow" / "models" / f"{name}.pt")
    assert out["grid"] == out["conv_grid"] and out["finite"]
    assert 0 < out["max"] < out["atomic_max"]  # a correction, smaller than the density it corrects
    assert out["dD"] == out["D"]
