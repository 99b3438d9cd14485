"""Decorated prototype candidates: lattices, geometry, charge balance, the seeded diverse order, the recipe."""

from __future__ import annotations

from collections import Counter
from pathlib import Path

import numpy as np
import pytest
import yaml
from ase.data import atomic_numbers, covalent_radii
from pymatgen.core import Structure
from pymatgen.symmetry.analyzer import SpacegroupAnalyzer

from dftflow.config.recipe import ScreeningSettings, load_recipe
from dftflow.screening.pipeline import build_chain
from dftflow.sources import prototypes as pt

ELEMENTS = pt.FALLBACK_ELEMENTS  # fixed, so the tests do not depend on the installed GPAW setups


@pytest.mark.parametrize(("name", "elements", "ox", "a", "c"), [
    ("rocksalt", ("Na", "Cl"), (1, -1), 5.64, None),
    ("rocksalt", ("Mg", "O"), (2, -2), 4.21, None),
    ("diamond", ("Si",), None, 5.43, None),
    ("zincblende", ("Ga", "As"), (3, -3), 5.65, None),
    ("fcc", ("Cu",), None, 3.61, None),
    ("fcc", ("Al",), None, 4.05, None),
    ("bcc", ("Fe",), None, 2.87, None),
    ("bcc", ("W",), None, 3.16, None),
    ("fluorite", ("Ca", "F"), (2, -1), 5.46, None),
    ("perovskite", ("Sr", "Ti", "O"), (2, 4, -2), 3.905, None),
    ("rutile", ("Ti", "O"), (4, -2), 4.59, 2.96),
    ("wurtzite", ("Zn", "O"), (2, -2), 3.25, 5.21),
    ("mos2_2h", ("Mo", "S"), (4, -2), 3.16, 12.3),
])
def test_lattice_constants_match_known_crystals(name, elements, ox, a, c) -> None:
    cand = pt.build(pt.BY_NAME[name], elements, ox)
    conv = SpacegroupAnalyzer(cand.structure(), symprec=0.1).get_conventional_standard_structure()
    assert conv.lattice.a == pytest.approx(a, rel=0.08)
    if c is not None:
        assert conv.lattice.c == pytest.approx(c, rel=0.08)


def test_primitive_cells_are_small() -> None:
    sizes = {p.name: len(pt.unit_cell(p.name)[1]) for p in pt.PROTOTYPES}
    assert sizes["spinel"] == 14 and sizes["fcc"] == 1 and sizes["rocksalt"] == 2 and sizes["heusler"] == 4
    assert max(n for name, n in sizes.items() if name != "spinel") <= 8
    assert "spinel" not in {p.name for p in pt.select_prototypes(None, 8)}
    assert {c.prototype for c in pt.generate(elements=ELEMENTS, max_atoms=2, limit=100)} <= {
        name for name, n in sizes.items() if n <= 2}


def _candidates(n_each: int, seed: int = 0) -> list[pt.Candidate]:
    return list(pt.generate(elements=ELEMENTS, per_prototype=n_each, seed=seed, max_atoms=None))


def test_no_atoms_too_close_and_cells_within_max_atoms() -> None:
    cands = _candidates(15, seed=3)
    assert {c.prototype for c in cands} == set(pt.BY_NAME)
    for c in cands:
        s = c.structure().make_supercell(2)  # so that an atom's own periodic images count too
        radii = np.array([covalent_radii[site.specie.Z] for site in s])
        dist = s.distance_matrix + np.diag(np.full(len(s), np.inf))
        assert np.all(dist >= pt.MIN_FACTOR * (radii[:, None] + radii[None, :]) - 1e-6), c.uid("t")
    assert all(len(c.numbers) <= 8 for c in pt.generate(elements=ELEMENTS, limit=300))


def test_every_candidate_passes_the_recipe_screening() -> None:
    # The screening chain of the pretrain recipe: order, max_atoms, SMACT electroneutrality (icsd24,
    # Pauling test, all-metal alloys allowed) and symmetry. Ionic decorations are charge balanced.
    chain = build_chain(load_recipe("pretrain-gpaw").screening)
    ionic = 0
    for c in _candidates(12, seed=5):
        if len(c.numbers) > 8:
            continue
        ionic += c.oxidation_states is not None
        s = c.structure()
        for f in chain:
            outcome = f.check(s, [])
            assert outcome.status == "pass", (c.uid("t"), f.name, str(outcome))
    assert ionic > 100


def test_unbalanced_decoration_fails_electroneutrality() -> None:
    # The filter the previous test relies on does reject what the generator must not make.
    chain = {f.name: f for f in build_chain(ScreeningSettings())}
    bad = pt.build(pt.BY_NAME["rocksalt"], ("Mg", "F"), None)
    assert chain["electroneutrality"].check(bad.structure(), []).status == "fail"
    assert all(("Mg", "F") != e for e, _ in pt.decorations(pt.BY_NAME["rocksalt"], ELEMENTS))


def test_order_is_seeded_and_limits_take_a_prefix() -> None:
    uids = [c.uid("p") for c in pt.generate(elements=ELEMENTS, limit=300)]
    assert uids == [c.uid("p") for c in pt.generate(elements=ELEMENTS, limit=300)]
    assert uids[:50] == [c.uid("p") for c in pt.generate(elements=ELEMENTS, limit=50)]
    assert uids != [c.uid("p") for c in pt.generate(elements=ELEMENTS, limit=300, seed=1)]
    assert uids == sorted(uids) and uids[7].startswith("p:000007:")  # uid order is the generator's order
    assert len(set(uids)) == len(uids)


def test_prefix_is_diverse() -> None:
    first = list(pt.generate(elements=ELEMENTS, limit=200))
    per_proto = Counter(c.prototype for c in first)
    assert len(per_proto) >= 20  # every prototype up to 8 atoms (23) but few elementals yet
    assert max(per_proto.values()) <= 15  # neither the 52k Heuslers nor the elementals swamp it
    assert sum(per_proto[n] for n in ("fcc", "bcc", "hcp", "diamond", "sc")) <= 25
    assert len({e for c in first for e in c.elements}) >= len(ELEMENTS) - 2


def test_recipe_builds_to_dedup(tmp_path: Path) -> None:
    from dftflow.build import build_dataset
    from dftflow.project import Project
    from dftflow.screening import stages as st

    recipe = load_recipe("pretrain-gpaw")
    assert recipe.sources[0].type == "prototypes" and recipe.dft is not None and recipe.dft.limit == 1659
    data = yaml.safe_load(Path(recipe.base_dir / "pretrain-gpaw.yaml").read_text())
    data["sources"][0]["generate"].update(limit=40, elements=ELEMENTS)
    (tmp_path / "small.yaml").write_text(yaml.safe_dump(data))
    small = load_recipe(tmp_path / "small.yaml")
    project = Project(tmp_path / "project")
    summary = build_dataset(small, project, until="dedup", workers=1, figures=False)
    assert summary["stages"]["import"]["imported"] == 40 and summary["stages"]["import"]["failed"] == 0
    rows = {r["step"]: r for r in st.funnel(project.catalog())}
    assert rows["symmetry"]["passed"] == 40 and rows["dedup"]["passed"] == 40
    uid = next(r["uid"] for r in st.list_entries(project.catalog()) if r["uid"].startswith("proto:000003:"))
    info = st.describe(project.catalog(), uid)
    prov = info["provenance"]
    assert prov["generator"] == pt.GENERATOR and prov["generator_version"] == pt.VERSION and prov["seed"] == 0
    assert info["uid"].endswith(f":{prov['prototype']}:{'-'.join(prov['elements'])}")


def test_cli_writes_cifs_resumably(tmp_path: Path) -> None:
    from typer.testing import CliRunner

    from dftflow.cli.app import app

    args = ["candidates", "generate", "-o", str(tmp_path / "cifs"), "--limit", "12", "--elements", "Na,Cl,Mg,O,Cu,Al",
            "--prototype", "rocksalt", "--prototype", "fcc", "--prototype", "l12", "--json"]
    first = CliRunner().invoke(app, args)
    assert first.exit_code == 0, first.output
    files = sorted((tmp_path / "cifs").glob("*.cif"))
    assert len(files) == 12 and files[0].name.startswith("000000_")
    again = CliRunner().invoke(app, args)
    assert '"written": 0' in again.output and '"kept": 12' in again.output
    s = Structure.from_file(files[0])
    assert {el.symbol for el in s.composition} <= {"Na", "Cl", "Mg", "O", "Cu", "Al"}
    assert all(z in (atomic_numbers[e] for e in ("Na", "Cl", "Mg", "O", "Cu", "Al")) for z in s.atomic_numbers)
