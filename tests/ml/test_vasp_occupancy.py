"""VASP's augmentation occupancies as irreps: the channels from POTCAR headers, and the convention checked
against real CHGCARs (every block must be invariant under its ion's site symmetry)."""

from __future__ import annotations

import shutil
from pathlib import Path

import numpy as np
import pytest
from pymatgen.symmetry.analyzer import SpacegroupAnalyzer
from scipy.spatial.transform import Rotation

from dftflow.density.chgcar import read_chgcar
from dftflow.errors import InputError
from dftflow.ml.vasp_occupancy import VaspOccupancyLayout, real_spherical_harmonics
from dftflow.vasp.potcar import potcar_channels, read_lmaxmix, read_potcar_channels, rholm_size

SI = "fixtures/vasp/Si_static_with_chgcar/outputs"


def test_channels_from_the_description_tables_of_real_outcars(shared: Path) -> None:
    (si,) = read_potcar_channels(shared / SI / "OUTCAR.gz")
    assert (si.titel, si.element, si.projector_l, si.local_l) == ("PAW_PBE Si_GW 04May2012", "Si",
                                                                  (0, 0, 1, 1, 2, 2), 3)
    assert read_lmaxmix(shared / SI / "OUTCAR.gz") == 2
    sizes = {len(v) for v in read_chgcar(shared / SI / "CHGCAR.gz").augmentation["total"]}
    assert sizes == {rholm_size(si.projector_l)} == {138}  # LMAXMIX = 2 does not shorten the blocks
    ecd = shared / "fixtures" / "ecd_outcars"
    o, pb, ti = read_potcar_channels(ecd / "icsd-1611-O3Pb1Ti1_PBE" / "OUTCAR.gz")
    assert (o.projector_l, o.local_l) == ((0, 0, 1, 1), 2)
    assert (pb.projector_l, pb.local_l) == ((2, 2, 0, 0, 1, 1), 3)  # POTCAR order, not sorted by l
    assert (ti.projector_l, ti.local_l) == ((0, 0, 1, 1, 2, 2), 3)
    # a POTCAR without a pseudised local channel (no ICORE): every row of its table is a projector
    _, zn = read_potcar_channels(ecd / "icsd-163383-O1Zn1_PBE" / "OUTCAR.gz")
    assert (zn.projector_l, zn.local_l) == ((2, 2, 0, 0, 1, 1), None)
    assert rholm_size(o.projector_l) == 33


def test_a_table_that_disagrees_with_what_vasp_read_is_refused(shared: Path) -> None:
    import gzip

    text = gzip.decompress((shared / SI / "OUTCAR.gz").read_bytes()).decode()
    no_icore = "\n".join(line for line in text.splitlines() if "ICORE" not in line)
    with pytest.raises(InputError, match=r"my-OUTCAR: POTCAR 'PAW_PBE Si_GW 04May2012': projectors "
                                         r"l=\[0, 0, 1, 1, 2, 2\] read by VASP, l=\[0, 0, 1, 1, 2, 2, 3\]"):
        potcar_channels(no_icore, "my-OUTCAR")


def test_harvest_quarantines_blocks_that_the_channels_do_not_explain(shared: Path, tmp_path: Path) -> None:
    import gzip

    from dftflow.dataset.harvest import from_directory, harvest, info

    text = gzip.decompress((shared / SI / "OUTCAR.gz").read_bytes()).decode()
    keep = [line for line in text.splitlines()
            if "ICORE" not in line and "non local Contribution" not in line and "LMAX  =" not in line]
    (tmp_path / "src" / "Si").mkdir(parents=True)
    shutil.copy(shared / SI / "CHGCAR.gz", tmp_path / "src" / "Si" / "CHGCAR.gz")
    (tmp_path / "src" / "Si" / "OUTCAR").write_text("\n".join(keep))
    assert harvest(list(from_directory(tmp_path / "src")), tmp_path / "ds")["quarantined"] == 1
    (reason,) = [q["reason"] for q in info(tmp_path / "ds")["quarantine"]]
    assert "CHGCAR.gz: ion 1 (Si) has 138 augmentation occupancies" in reason
    assert "l=[0, 0, 1, 1, 2, 2, 3]" in reason and "OUTCAR give 250" in reason


def test_the_real_harmonics_are_the_positive_cartesian_polynomials() -> None:
    r = np.random.default_rng(1).standard_normal((20, 3))
    r /= np.linalg.norm(r, axis=1, keepdims=True)
    x, y, z = r.T
    expected = {1: [y, z, x], 2: [x * y, y * z, 3 * z**2 - 1, x * z, x**2 - y**2],
                3: [y * (3 * x**2 - y**2), x * y * z, y * (5 * z**2 - 1), z * (5 * z**2 - 3), x * (5 * z**2 - 1),
                    z * (x**2 - y**2), x * (x**2 - 3 * y**2)]}
    for degree, polys in expected.items():
        ylm = real_spherical_harmonics(degree, r)
        for m, p in enumerate(polys):
            ratio = ylm[:, m] / p
            assert ratio.min() > 0 and np.ptp(ratio) < 1e-9 * ratio.max(), (degree, m)


def test_round_trip_and_rotations_compose() -> None:
    layout = VaspOccupancyLayout((2, 2, 0, 0, 1, 1))
    assert layout.size == layout.irreps.dim == 138
    v = np.random.default_rng(0).standard_normal((3, 138))
    np.testing.assert_allclose(layout.from_irreps(layout.to_irreps(v)), v, atol=1e-12)
    np.testing.assert_allclose(np.linalg.norm(layout.to_irreps(v), axis=-1), np.linalg.norm(v, axis=-1))
    R1, R2 = Rotation.random(2, random_state=3).as_matrix()
    R2 = -R2  # improper
    np.testing.assert_allclose(layout.rotate(layout.rotate(v[0], R1), R2), layout.rotate(v[0], R2 @ R1),
                               atol=1e-5)  # e3nn's Wigner matrices carry float32 constants
    with pytest.raises(ValueError, match="137 augmentation occupancies per ion; projectors l=.* give 138"):
        layout.to_irreps(v[0, :137])


def _space_group_error(density, layout: VaspOccupancyLayout, key: str = "total", convert=None) -> float:
    """Largest |rotate(block of a) − block of g·a| / |block| over the space-group operations g and ions a."""
    s = density.structure
    data = SpacegroupAnalyzer(s, symprec=1e-4, angle_tolerance=-1).get_symmetry_dataset()
    A = s.lattice.matrix
    blocks = [convert(v) if convert else v for v in density.augmentation[key]]
    worst = 0.0
    for W, t in zip(data.rotations, data.translations, strict=True):
        R = A.T @ W @ np.linalg.inv(A.T)  # the operation in the cell's Cartesian frame
        for a, frac in enumerate(s.frac_coords):
            delta = (W @ frac + t - s.frac_coords + 0.5) % 1 - 0.5
            (b,) = np.flatnonzero(np.abs(delta).max(axis=1) < 1e-4)
            worst = max(worst, np.abs(layout.rotate(blocks[a], R) - blocks[b]).max() / np.linalg.norm(blocks[b]))
    return worst


def test_si_blocks_follow_the_space_group(shared: Path) -> None:
    """Si on Td sites: each block is invariant under its site's operations, and the two ions map onto
    each other. Only the L = 0 entries are non-zero here (Td removes L = 1, 2; LMAXMIX = 2 leaves L = 3, 4
    at exactly 0), so this pins the order of the (i, j, L) parts, not the M convention (see Li below)."""
    density = read_chgcar(shared / SI / "CHGCAR.gz")
    (si,) = read_potcar_channels(shared / SI / "OUTCAR.gz")
    assert _space_group_error(density, VaspOccupancyLayout(si.projector_l)) < 1e-6
    # the same 138 numbers read with the channels in another order put L = 0 values into L > 0 slots
    assert _space_group_error(density, VaspOccupancyLayout((2, 2, 1, 1, 0, 0))) > 1e-3


@pytest.mark.parametrize("name", ["Li_nospin.gz", "Li_spin.gz"])
def test_li_blocks_follow_the_tetragonal_site_symmetry(shared: Path, name: str) -> None:
    """A real CHGCAR of slightly tetragonal Li (I4/mmm, its 4-fold axis tilted away from z): the small
    L = 2 part of the p–p block (1e-5 to 1e-4) must be invariant under the 16 site operations. This
    file has no OUTCAR; its 15 values per ion fit s, s, p projectors (the Li POTCAR, not Li_sv, whose
    s, s, p, p give 33) — or a single d channel or five s channels, which the check rules out or
    cannot test."""
    density = read_chgcar(shared / "fixtures" / "chgcar" / name)
    layout = VaspOccupancyLayout((0, 0, 1))
    for key in density.block_keys:
        v = density.augmentation[key][0]
        l2 = v[layout.offsets[-2]:]
        assert np.linalg.norm(l2) > 1e-5 * np.linalg.norm(v)  # something for the check to see
        assert _space_group_error(density, layout, key) < 1e-6
        # wrong conventions fail: e3nn's own basis taken for VASP's, or a Condon–Shortley phase
        assert _space_group_error(density, layout, key, convert=layout.from_irreps) > 2e-5
        cs = np.concatenate([(-1.0) ** np.abs(np.arange(-L, L + 1)) for *_, L in layout.blocks])
        assert _space_group_error(density, layout, key, convert=lambda b: b * cs) > 2e-5
        assert _space_group_error(density, VaspOccupancyLayout((2,)), key) > 0.1
