"""The structure stages on real CIFs: resumability, recorded settings, funnel and states."""

from __future__ import annotations

import json
import shutil
from pathlib import Path

import pytest

from dftflow.catalog import Catalog
from dftflow.config.recipe import Recipe, ScreeningSettings
from dftflow.screening import stages as st

DEMO = Path(__file__).resolve().parents[2] / "workflows" / "structures" / "demo"


def recipe_for(path: Path, **kw) -> Recipe:
    return Recipe(name="t", sources=[{"type": "cif", "path": str(path), "label": "local"}],
                  selection={"hse": {"size": 4}}, **kw)


@pytest.fixture()
def demo_catalog(tmp_path: Path) -> tuple[Catalog, Recipe]:
    recipe = recipe_for(DEMO)
    catalog = Catalog(tmp_path / "catalog.sqlite")
    st.run_import(catalog, recipe)
    st.run_screen(catalog, recipe.screening)
    st.run_dedup(catalog, recipe.screening)
    st.run_select(catalog, recipe.selection)
    return catalog, recipe


def test_demo_funnel(demo_catalog: tuple[Catalog, Recipe]) -> None:
    catalog, _ = demo_catalog
    rows = {r["step"]: r for r in st.funnel(catalog)}
    n = len(list(DEMO.glob("*.cif")))
    assert rows["import"]["entered"] == n and rows["import"]["passed"] == n
    assert rows["symmetry"]["passed"] == n
    # Si_primitive.cif is the same crystal as Si.cif
    assert rows["dedup"]["failed"] == 1
    assert rows["dedup"]["reasons"] == [("duplicate", 1)]
    info = st.describe(catalog, "local:Si_primitive.cif")
    dedup = next(o for o in info["outcomes"] if o["filter"] == "dedup")
    assert dedup["details"]["representative"] == "local:Si.cif"
    assert rows["select:hse"]["passed"] == 4
    # every step's entrants are exactly the previous step's passes
    steps = [r for k, r in rows.items() if not k.startswith("select")]
    for prev, nxt in zip(steps, steps[1:]):
        assert nxt["entered"] == prev["passed"], (prev["step"], nxt["step"])


def test_rerun_is_a_no_op(demo_catalog: tuple[Catalog, Recipe]) -> None:
    catalog, recipe = demo_catalog
    before = catalog.db.execute("SELECT COUNT(*) FROM outcomes").fetchone()[0]
    assert st.run_import(catalog, recipe)["tasks"] == 0
    assert st.run_screen(catalog, recipe.screening)["screened"] == 0
    assert st.run_dedup(catalog, recipe.screening).get("skipped") is True
    assert catalog.db.execute("SELECT COUNT(*) FROM outcomes").fetchone()[0] == before


def test_changed_settings_rescreen_and_are_recorded(demo_catalog: tuple[Catalog, Recipe]) -> None:
    catalog, recipe = demo_catalog
    tight = ScreeningSettings(max_atoms=4)
    assert st.run_screen(catalog, tight)["screened"] == catalog.count("ok")
    rows = {r["step"]: r for r in st.funnel(catalog)}
    assert rows["max_atoms"]["failed"] > 0
    params = catalog.filter_params()
    assert params["max_atoms"] == {"max_atoms": 4}
    assert params["symmetry"]["symprec"] == 0.1
    assert params["electroneutrality"]["oxidation_states_set"] == "icsd24"
    assert "dedup" not in {r["step"] for r in st.funnel(catalog)}  # void until dedup runs again


def test_interrupted_import_resumes_without_duplicates(tmp_path: Path) -> None:
    src = tmp_path / "cifs"
    shutil.copytree(DEMO, src)
    recipe = recipe_for(src)
    catalog = Catalog(tmp_path / "catalog.sqlite")

    class Interrupt:
        def __init__(self) -> None:
            self.n = 0

        def start(self, label: str, total: int | None) -> None:
            pass

        def advance(self, n: int = 1) -> None:
            self.n += n
            if self.n == 5:
                raise KeyboardInterrupt

    with pytest.raises(KeyboardInterrupt):
        st.run_import(catalog, recipe, progress=Interrupt())
    assert 0 < catalog.count() < 17
    summary = st.run_import(catalog, recipe)
    assert summary["skipped_tasks"] == 5
    uids = [u for (u,) in catalog.db.execute("SELECT uid FROM structures")]
    assert len(uids) == len(set(uids)) == 17


def test_list_states(demo_catalog: tuple[Catalog, Recipe]) -> None:
    catalog, _ = demo_catalog
    rows = {r["uid"]: r for r in st.list_entries(catalog)}
    assert rows["local:Si_primitive.cif"]["state"] == "duplicate"
    assert rows["local:Si.cif"]["state"] == "kept"
    kept = st.list_entries(catalog, "kept")
    assert len(kept) == 16
    selected = st.list_entries(catalog, "selection:hse")
    assert len(selected) == 4


def test_fixture_cifs_reasons(shared: Path, tmp_path: Path) -> None:
    recipe = recipe_for(shared / "fixtures" / "cif")
    catalog = Catalog(tmp_path / "catalog.sqlite")
    st.run_import(catalog, recipe, workers=2)
    st.run_screen(catalog, recipe.screening, workers=2)
    states = {r["uid"]: r for r in st.list_entries(catalog)}
    assert states["local:Fe3O4.cif"]["state"] == "electroneutrality: fail"  # strict valence policy
    assert states["local:Li10GeP2S12.cif"]["reason"] == "partial occupancy"
    nh3 = [u for u in states if u.startswith("local:PF_sd_1002871.cif#") and "standardized" in u]
    assert states[nh3[0]]["reason"] == "implicit hydrogens"
    assert states["local:LiFePO4.cif"]["state"] == "screened"
    sym = json.loads(catalog.db.execute(
        "SELECT details FROM outcomes WHERE uid='local:LiFePO4.cif' AND filter='symmetry'").fetchone()[0])
    assert sym["spacegroup"] == 62 and sym["crystal_system"] == "orthorhombic"
