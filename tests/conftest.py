"""Shared test fixtures: the real reference data in ../shared beside the checkout."""

from __future__ import annotations

import json
import os
import sys
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[1]

os.environ.setdefault("OMP_NUM_THREADS", "1")


# -- CI: a skip is a failure -------------------------------------------------------------------
# Every test can run where scripts/setup.sh and scripts/install_slurm.sh have run and ../shared is
# beside the checkout. A skip there means a broken install (GPAW that did not build, a SLURM that
# did not start, missing reference data), so with DFTFLOW_FORBID_SKIPS=1 (.ci/run) it fails the run.
def _forbid_skips() -> bool:
    return os.environ.get("DFTFLOW_FORBID_SKIPS", "") not in ("", "0")


def _skipped(config: pytest.Config) -> list:
    reporter = config.pluginmanager.get_plugin("terminalreporter")
    return reporter.stats.get("skipped", []) if reporter is not None else []


def pytest_sessionfinish(session: pytest.Session, exitstatus: int) -> None:
    if _forbid_skips() and _skipped(session.config):
        session.exitstatus = pytest.ExitCode.TESTS_FAILED


def pytest_terminal_summary(terminalreporter, exitstatus: int, config: pytest.Config) -> None:
    skipped = _skipped(config) if _forbid_skips() else []
    if skipped:
        terminalreporter.write_sep("=", f"{len(skipped)} skipped, which DFTFLOW_FORBID_SKIPS=1 makes a failure",
                                   red=True)
        for report in skipped:
            reason = report.longrepr[2] if isinstance(report.longrepr, tuple) else str(report.longrepr)
            terminalreporter.write_line(f"{report.nodeid}: {reason}")


@pytest.fixture(autouse=True)
def _no_cwd_leak():
    """A test that changes the working directory must put it back (use ``monkeypatch.chdir``)."""
    before = os.getcwd()
    yield
    after = os.getcwd()
    if after != before:
        os.chdir(before)
        pytest.fail(f"the test left the working directory at {after}; use monkeypatch.chdir", pytrace=False)

def shared_dir() -> Path | None:
    for candidate in (os.environ.get("DFTFLOW_SHARED"), REPO.parent / "shared", REPO / "shared"):
        if candidate and (Path(candidate) / "fixtures").is_dir():
            return Path(candidate)
    return None


@pytest.fixture(scope="session")
def shared() -> Path:
    path = shared_dir()
    if path is None:
        pytest.skip("reference data ../shared/fixtures not found beside the checkout")
    return path


@pytest.fixture(scope="session")
def si_vasp_dataset(shared: Path, tmp_path_factory) -> Path:
    """The real VASP Si CHGCAR (with its OUTCAR) of the fixtures harvested into a dataset (material ``src|Si``).

    Read-only. The OUTCAR gives NELECT and the POTCAR's projector channels of the augmentation blocks.
    """
    import shutil

    from dftflow.dataset.harvest import from_directory, harvest

    root = tmp_path_factory.mktemp("si-ds")
    (root / "src" / "Si").mkdir(parents=True)
    for name in ("CHGCAR.gz", "OUTCAR.gz"):
        shutil.copy(shared / "fixtures" / "vasp" / "Si_static_with_chgcar" / "outputs" / name,
                    root / "src" / "Si" / name)
    assert harvest(list(from_directory(root / "src")), root / "ds")["stored"] == 1
    return root / "ds"


@pytest.fixture(scope="session")
def si_checkpoint(si_vasp_dataset: Path, tmp_path_factory) -> Path:
    """A (barely trained) ChargE3Net checkpoint from the real VASP Si density: for plumbing tests."""
    from dftflow.ml.train import TrainConfig, train

    root = tmp_path_factory.mktemp("si-ckpt")
    train(TrainConfig.model_validate({
        "model": {"num_interactions": 1, "mul": 8, "lmax": 1, "num_basis": 6, "radial_neurons": 8},
        "data": {"dataset": str(si_vasp_dataset), "train_ids": ["src|Si"], "val_ids": ["src|Si"], "n_probes": 32,
                 "batch_size": 1, "val_probes": 200},
        "optim": {"max_steps": 2, "val_every": 2, "checkpoint_every": 2},
        "delta_saed": True, "saed_probes": 2000, "out": str(root / "fit")}))
    return root / "fit" / "checkpoint_best.pt"


DOUBLE = REPO / "tests" / "vasp_double" / "vasp_std"


@pytest.fixture()
def vasp_double(shared: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch):
    """Returns ``configure(**extra) -> env``; ``vasp_std`` then runs the double on the Si relax → static chain."""
    base = shared / "fixtures" / "vasp" / "Si_mp_gga_relax"

    chgcar_run = shared / "fixtures" / "vasp" / "Si_static_with_chgcar" / "outputs"

    def configure(*, chgcar_outcar: bool = False, **extra) -> dict[str, str]:
        """``chgcar_outcar``: the static also replays the OUTCAR of the run its CHGCAR comes from, whose
        POTCAR channels make up the CHGCAR's augmentation blocks (a harvest checks them against each other);
        otherwise OUTCAR and OSZICAR are GGA_Static's own, which agree on the SCF steps."""
        config = {
            "references": [
                {"dir": str(base / "GGA_Relax_1"), "match": {"NSW": 99}},
                {"dir": str(base / "GGA_Relax_2"), "match": {"NSW": 99}},
                # GGA_Static kept no CHGCAR: the double replays another Si static's (see chgcar_outcar)
                {"dir": str(base / "GGA_Static"), "match": {"NSW": 0}, "tolerance": 0.01,
                 "chgcar": str(chgcar_run / "CHGCAR.gz"), **({"outcar": str(chgcar_run / "OUTCAR.gz")}
                                                             if chgcar_outcar else {})},
                # the same static as the ICHARG = 11 run from its own converged density (that CHGCAR):
                # there the eigenvalues are the static's (nscf-eval's oracle start)
                {"dir": str(base / "GGA_Static"), "match": {"NSW": 0}, "tolerance": 0.01, "fixed_density": True,
                 "chgcar": str(chgcar_run / "CHGCAR.gz")},
            ],
            "state": str(tmp_path / "double-state"),
            **extra,
        }
        path = tmp_path / "double.json"
        path.write_text(json.dumps(config))
        env = {"DFTFLOW_VASP_DOUBLE": str(path),
               "DFTFLOW_VASP_COMMANDS": json.dumps({"vasp_std": f"{sys.executable} {DOUBLE}"})}
        for k, v in env.items():
            monkeypatch.setenv(k, v)
        return env

    return configure


@pytest.fixture(scope="module")
def cluster(tmp_path_factory):
    """A one-node SLURM (slurmctld + slurmd + munge on localhost), one per test module."""
    from tests import slurm_cluster

    why = slurm_cluster.why_unavailable()
    if why:
        pytest.skip(why)
    c = slurm_cluster.start(tmp_path_factory.mktemp("slurm"), cpus=8, max_time_min=30)
    yield c
    c.stop()
