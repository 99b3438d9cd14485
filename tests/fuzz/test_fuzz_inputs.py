"""Fuzz the readers a user's bad files reach, with mutations of the real fixture files.

Cut, bit-flipped, NaN/Inf-laced, miscounted and empty versions of the CIFs,
CHGCARs, OUTCARs/OSZICARs, DiffCSP ``.pt`` files and recipes of the fixtures
(compressed files both as damaged archives and as damaged content) go through
the entry points a user hits. Every case must end in one of two ways:

* success with a value that is not silently wrong: finite, of the declared
  shape and atom count, and for a cut file the complete original;
* a recorded reason (a failed import entry, a quarantined material) or an error
  of dftflow's own types whose message names the file.

Anything else (another exception type, a hang, a NaN returned) is a problem;
all problems of a kind are reported together. The RNG is seeded, so a run is
reproducible; ``TALLY`` counts cases and outcomes per kind.
"""

from __future__ import annotations

import gzip
import json
import random
import re
from collections.abc import Callable, Iterator
from pathlib import Path

import numpy as np
import pytest

from dftflow.errors import DftflowError
from dftflow.parallel import TaskTimeout, time_limit
from tests.fuzz.mutate import (
    EMPTY,
    Tally,
    flip,
    gzipped,
    line_spans,
    nonfinite,
    number_spans,
    replace_span,
    truncate,
    truncate_line,
)

SEED = 20240611
CASE_TIMEOUT_S = 10.0
# Cases per kind that each test must reach; together at least 1,000.
MIN_CASES = {"chgcar": 500, "harvest": 120, "steps": 120, "cif": 300, "generated": 120, "recipe": 120}
TALLY = Tally()
_OWN_ERRORS = {cls.__name__ for cls in (DftflowError, *DftflowError.__subclasses__())}
# How dftflow.parallel records a task's exception: 'TypeName: message' ('error: ...' for zlib.error, struct.error).
_RECORDED_TYPE = re.compile(r"^(\w+): ")


def run_case(kind: str, label: str, where: str, call: Callable[[], str]) -> None:
    """Run one case under a time bound; record its outcome, or the problem it shows."""
    try:
        with time_limit(CASE_TIMEOUT_S):
            outcome = call()
    except TaskTimeout:
        outcome = _problem(kind, label, f"no answer within {CASE_TIMEOUT_S:g} s")
    except DftflowError as exc:
        lines = str(exc).splitlines() or [""]
        if not all(where in line for line in lines):
            outcome = _problem(kind, label, f"{type(exc).__name__} does not name {where}: {exc}")
        else:
            outcome = f"error {type(exc).__name__}"
    except AssertionError as exc:
        outcome = _problem(kind, label, f"silently wrong: {(str(exc).splitlines() or [''])[0]}")
    except Exception as exc:  # the contract under test: nothing but dftflow's errors escapes
        outcome = _problem(kind, label, f"uncaught {type(exc).__name__}: {(str(exc).splitlines() or [''])[0]}")
    TALLY.add(kind, outcome)


def _problem(kind: str, label: str, text: str) -> str:
    TALLY.problems.append(f"[{kind}] {label}: {text}")
    return "PROBLEM"


def assert_no_problems(kind: str) -> None:
    mine = [p for p in TALLY.problems if p.startswith(f"[{kind}]")]
    assert not mine, f"{len(mine)} problem(s):\n" + "\n".join(mine[:40])
    assert TALLY.cases(kind) >= MIN_CASES[kind], TALLY.table()


def assert_reason(reason: str | None) -> str:
    """A recorded failure: a reason from dftflow's own checks, not an exception of another type."""
    assert reason and reason.strip(), "failure recorded without a reason"
    typed = _RECORDED_TYPE.match(reason)
    assert typed is None or typed.group(1) in _OWN_ERRORS or not (
        typed.group(1) == "error" or typed.group(1).endswith(("Error", "Exception"))), \
        f"the reason is an exception of another type: {reason}"
    return "recorded"


# -- CHGCAR ------------------------------------------------------------------------------------------------------------
@pytest.fixture(scope="module")
def small_chgcars(shared: Path, tmp_path_factory) -> dict[str, bytes]:
    """The fixtures' real CHGCARs on a coarser grid (every k-th point), written as VASP writes them.

    The total density is rescaled to keep its electron count, so the Si file still
    matches NELECT of its OUTCAR; structure, augmentation occupancies and moments are
    the originals.
    """
    from dftflow.density import Density, read_chgcar, write_chgcar

    root = tmp_path_factory.mktemp("small-chgcar")
    out = {}
    for name, path, step in (("Si", "vasp/Si_static_with_chgcar/outputs/CHGCAR.gz", 5),
                             ("Li_spin", "chgcar/Li_spin.gz", 8), ("Li_nospin", "chgcar/Li_nospin.gz", 8)):
        full = read_chgcar(shared / "fixtures" / path)
        total = full.total[::step, ::step, ::step]
        small = Density(structure=full.structure, total=total * (full.total.mean() / total.mean()),
                        diff=None if full.diff is None else full.diff[::step, ::step, ::step],
                        augmentation=full.augmentation, moments=full.moments)
        write_chgcar(small, root / name)
        out[name] = (root / name).read_bytes()
    return out


def chgcar_count_mutations(data: bytes, rng: random.Random) -> Iterator[tuple[bytes, str]]:
    """Wrong grid dimensions, atom counts, species, augmentation counts and value counts."""
    lines = line_spans(data)
    text = [data[a:b] for a, b in lines]
    for i, line in enumerate(text):
        if i > 8 and len(line.split()) == 3 and all(t.isdigit() for t in line.split()):  # a grid line
            dims = [int(t) for t in line.split()]
            for k in range(3):
                for new in (dims[k] + 1, dims[k] - 1, 0, 2 * dims[k]):
                    changed = dims.copy()
                    changed[k] = new
                    yield replace_span(data, lines[i], b"".join(b"%5d" % d for d in changed)), f"grid {changed}"
    counts = text[6].split()
    for delta in (1, -1):
        changed = [str(int(counts[0]) + delta).encode()] + counts[1:]
        yield replace_span(data, lines[6], b"  ".join(changed)), f"atom count {changed}"
    yield replace_span(data, lines[6], text[6] + b"     1"), "one count more than species"
    yield replace_span(data, lines[5], text[5] + b"    O"), "one species more than counts"
    yield data[: lines[5][0]] + data[lines[6][0]:], "species line removed"
    for i, line in enumerate(text):
        if line.startswith(b"augmentation occupancies") and rng.random() < 0.5:
            ion, n = line.split()[-2:]
            yield replace_span(data, lines[i], line[: -len(n)] + str(int(n) + rng.choice((1, -1))).encode()), \
                f"augmentation count of ion {ion.decode()} changed"
            yield replace_span(data, lines[i], line.replace(b" " + ion + b" ", b" " + str(int(ion) + 1).encode()
                                                            + b" ", 1)), f"augmentation ion {ion.decode()} renumbered"
    grid_lines = [i for i, line in enumerate(text) if i > 12 and len(line.split()) == 5]
    for i in rng.sample(grid_lines, 3):
        yield data[: lines[i][0]] + data[lines[i + 1][0]:], f"line {i + 1} removed"
        yield data[: lines[i + 1][0]] + data[lines[i][0]:], f"line {i + 1} repeated"
        end = lines[i][1]
        yield data[:end] + b" 0.10000000000E+01" + data[end:], f"a value appended to line {i + 1}"


def chgcar_cases(data: bytes, rng: random.Random) -> Iterator[tuple[str, bytes, str]]:
    """(mutation, bytes, label) of one CHGCAR text: cut, flipped, non-finite, miscounted, empty."""
    for _ in range(35):
        yield ("cut", *truncate(data, rng))
    for _ in range(25):
        yield ("cut", *truncate_line(data, rng))
    for _ in range(40):
        yield ("flip", *flip(data, rng))
    numbers = number_spans(data, data.index(b"\n") + 1)  # every number after the comment line
    header = number_spans(data, data.index(b"\n") + 1, line_spans(data)[12][1])
    for spans, n in ((numbers, 30), (header, 10)):
        for _ in range(n):
            yield ("nonfinite", *nonfinite(data, rng, spans))
    for mutated, label in chgcar_count_mutations(data, rng):
        yield "count", mutated, label
    for empty in EMPTY:
        yield "empty", empty, f"empty file {empty!r}"


def _blocks_and_augmentation(d) -> list[np.ndarray]:
    arrays = list(d.blocks())
    for key in d.block_keys if d.augmentation else ():
        arrays += d.augmentation[key]
    return arrays


def check_density(d, original, mutation: str) -> str:
    """A density read from a mutated file: the declared shape, atoms and blocks, finite, and no cut file."""
    assert d.grid == original.grid, f"grid {d.grid}, the original declares {original.grid}"
    assert len(d.structure) == len(original.structure), f"{len(d.structure)} sites for {len(original.structure)}"
    assert np.isfinite(d.structure.lattice.matrix).all() and np.isfinite(d.structure.frac_coords).all(), \
        "non-finite lattice or coordinates"
    assert all(np.isfinite(a).all() for a in _blocks_and_augmentation(d)), "non-finite values"
    got, want = _blocks_and_augmentation(d), _blocks_and_augmentation(original)
    if mutation == "cut" and (d.block_keys != original.block_keys or (d.augmentation is None) != (
            original.augmentation is None)):
        # A CHGCAR cut exactly where a section ends (before the augmentation occupancies, or before a
        # magnetisation block) is a complete CHGCAR with less in it: only the run's OUTCAR can tell
        # (ISPIN; VASP always writes the occupancies), which the harvest checks. Nothing else may differ.
        assert d.block_keys == ("total",) and d.moments is None, f"blocks {d.block_keys} of {original.block_keys}"
        want = want[:1] + (original.augmentation["total"] if d.augmentation else [])
        assert len(got) == len(want) and all(np.array_equal(a, b) for a, b in zip(got, want)), \
            "a cut file read as a different density"
        return "ok: cut at a section boundary"
    assert d.block_keys == original.block_keys, f"blocks {d.block_keys}, the original has {original.block_keys}"
    assert [a.shape for a in got] == [a.shape for a in want], "augmentation sizes differ from the original's"
    changed = sum(int((a != b).sum()) for a, b in zip(got, want))
    if mutation in ("cut", "empty"):
        assert changed == 0, f"a cut file read as a different density ({changed} values differ)"
    else:
        assert mutation == "flip", f"a {mutation} mutation was read as a valid density"
        assert changed <= 1, f"one flipped bit changed {changed} values"
    return "ok" if changed == 0 else "ok: value changed"


@pytest.mark.filterwarnings("ignore")
def test_chgcar_reader(small_chgcars: dict[str, bytes], shared: Path, tmp_path: Path) -> None:
    from dftflow.density import read_chgcar

    rng = random.Random(SEED)
    for name, data in small_chgcars.items():
        path = tmp_path / f"{name}.CHGCAR"
        path.write_bytes(data)
        original = read_chgcar(path)
        cases = list(chgcar_cases(data, rng))
        cases += [("gz-" + m, gzipped(d), label) for m, d, label in cases[::4]]  # damaged content, compressed
        packed = gzipped(data)  # the compressed stream itself damaged
        cases += [("gz-cut", *truncate(packed, rng)) for _ in range(12)]
        cases += [("gz-flip", *flip(packed, rng)) for _ in range(12)]
        for k, (mutation, mutated, label) in enumerate(cases):
            case = tmp_path / f"{name}-{k}.CHGCAR"
            case.write_bytes(mutated)
            kind = mutation.removeprefix("gz-")
            run_case("chgcar", f"{name} {mutation} {label}", str(case),
                     lambda: check_density(read_chgcar(case), original, kind))
            case.unlink()
    real_path = shared / "fixtures" / "vasp" / "Si_static_with_chgcar" / "outputs" / "CHGCAR.gz"
    real, original = real_path.read_bytes(), read_chgcar(real_path)
    for k, (mutated, label) in enumerate([truncate(real, rng) for _ in range(4)] + [flip(real, rng) for _ in range(4)]):
        case = tmp_path / f"real-{k}.CHGCAR.gz"
        case.write_bytes(mutated)
        run_case("chgcar", f"real Si CHGCAR.gz {label}", str(case),
                 lambda: check_density(read_chgcar(case), original, "flip" if "flipped" in label else "cut"))
    assert_no_problems("chgcar")


# -- harvest of a directory ------------------------------------------------------------------------------------------
def outcar_mutations(data: bytes, rng: random.Random) -> Iterator[tuple[str, bytes, str]]:
    """An OUTCAR's text cut, flipped, with a non-finite or wrong NELECT, ISPIN, LMAXMIX and POTCAR count."""
    for _ in range(6):
        yield ("cut", *truncate(data, rng))
    for _ in range(6):
        yield ("flip", *flip(data, rng))
    for key in (rb"NELECT =", rb"LMAXMIX     =", rb"ISPIN  ="):
        start = data.index(key) + len(key)
        spans = number_spans(data, start, start + 20)[:1]
        yield ("nonfinite", *nonfinite(data, rng, spans))
        yield "count", replace_span(data, spans[0], b"9.0.0"), f"{key.decode()} 9.0.0"
    nelect = data.index(rb"NELECT =") + 8
    yield "count", replace_span(data, number_spans(data, nelect, nelect + 20)[0], b"9.0000"), "NELECT 9"
    ispin = data.index(rb"ISPIN  =") + 8
    yield "count", replace_span(data, number_spans(data, ispin, ispin + 20)[0], b"2"), "ISPIN 2"
    yield "count", data.replace(b"LNONCOLLINEAR =      F", b"LNONCOLLINEAR =      T"), "LNONCOLLINEAR T"
    titel = data.index(b"   TITEL")
    yield "count", data[:titel] + b"   TITEL  = PAW_PBE O 08Apr2002\n" + data[titel:], "one POTCAR more"
    yield "count", data.replace(b"TITEL", b"TITLE"), "no POTCAR header"
    for empty in EMPTY[:2]:
        yield "empty", empty, f"empty OUTCAR {empty!r}"


@pytest.mark.filterwarnings("ignore")
def test_harvest_of_a_directory(small_chgcars: dict[str, bytes], shared: Path, tmp_path: Path) -> None:
    """Mutated Si CHGCARs and OUTCARs in one tree: each is stored sane or quarantined with its reason."""
    from dftflow.dataset.harvest import from_directory, harvest
    from dftflow.dataset.store import Dataset, Manifest
    from dftflow.density import read_chgcar

    rng = random.Random(SEED + 1)
    outcar = (shared / "fixtures" / "vasp" / "Si_static_with_chgcar" / "outputs" / "OUTCAR.gz").read_bytes()
    outcar_text = gzip.decompress(outcar)
    data = small_chgcars["Si"]
    cases: list[tuple[str, str, bytes, str, bytes]] = []  # (mutation, CHGCAR name, CHGCAR, OUTCAR name, OUTCAR)
    for mutation, mutated, label in list(chgcar_cases(data, rng))[::2]:
        cases.append((f"CHGCAR {mutation} {label}", "CHGCAR", mutated, "OUTCAR.gz", outcar))
        if mutation in ("cut", "flip") and rng.random() < 0.3:
            cases.append((f"CHGCAR.gz {mutation} {label}", "CHGCAR.gz", gzipped(mutated), "OUTCAR.gz", outcar))
    for mutation, mutated, label in outcar_mutations(outcar_text, rng):
        cases.append((f"OUTCAR {mutation} {label}", "CHGCAR", data, "OUTCAR", mutated))
    cases += [(f"OUTCAR.gz {m} {label}", "CHGCAR", data, "OUTCAR.gz", d)
              for m, (d, label) in [("cut", truncate(outcar, rng)), ("flip", flip(outcar, rng)),
                                    ("flip", flip(outcar, rng))]]
    cases.append(("intact", "CHGCAR", data, "OUTCAR.gz", outcar))
    root = tmp_path / "runs"
    for k, (_, chg_name, chg, out_name, out) in enumerate(cases):
        (root / f"case{k:04d}").mkdir(parents=True)
        (root / f"case{k:04d}" / chg_name).write_bytes(chg)
        (root / f"case{k:04d}" / out_name).write_bytes(out)

    items = list(from_directory(root))
    assert len(items) == len(cases)
    with time_limit(60 + len(items)):
        summary = harvest(items, tmp_path / "ds")
    assert summary["stored"] + summary["quarantined"] == len(items)
    manifest = Manifest(tmp_path / "ds")
    try:
        quarantined = {mid: reason for mid, _, reason in manifest.quarantined()}
    finally:
        manifest.close()
    dataset = Dataset(tmp_path / "ds")
    stored = set(dataset.ids())
    assert f"runs|case{len(cases) - 1:04d}" in stored, quarantined.get(f"runs|case{len(cases) - 1:04d}")

    def check(k: int, label: str) -> str:
        mid, case = f"runs|case{k:04d}", root / f"case{k:04d}"
        assert (mid in stored) != (mid in quarantined), "neither stored nor quarantined, or both"
        # An OUTCAR that disagrees with its CHGCAR, or cannot be read, never lets the density through.
        must_fail = label.startswith(("OUTCAR count", "OUTCAR nonfinite", "OUTCAR empty", "OUTCAR.gz cut"))
        assert mid in quarantined or not must_fail, "stored beside an OUTCAR that contradicts it"
        if mid in quarantined:
            assert str(case) in quarantined[mid], f"the reason does not name the file: {quarantined[mid]}"
            return assert_reason(quarantined[mid])
        record = dataset.read(mid)
        density = read_chgcar(case / cases[k][1])  # what was stored must be what the file holds, sane
        # A changed OUTCAR must leave the density as it was; a cut CHGCAR is stored only when complete.
        mutation = cases[k][0].split()[1] if cases[k][0].startswith("CHGCAR") else "cut"
        assert check_density(density, intact, mutation) in ("ok", "ok: value changed"), "stored a cut density"
        assert record["total"].shape == (8, 8, 8) and np.isfinite(record["total"]).all()
        assert record.get("augmentation") and "diff" not in record, "stored without its occupancies, or a diff"
        assert record.get("nelect") == 8.0, f"stored with NELECT {record.get('nelect')}"
        return "stored"

    intact = read_chgcar(root / f"case{len(cases) - 1:04d}" / "CHGCAR")
    for k, (label, *_) in enumerate(cases):
        run_case("harvest", label, str(root / f"case{k:04d}"), lambda: check(k, label))
    dataset.close()
    assert_no_problems("harvest")


# -- SCF step counters -----------------------------------------------------------------------------------------------
def test_step_counters(shared: Path, tmp_path: Path) -> None:
    from dftflow.vasp.outputs import oszicar_steps, outcar_steps

    rng = random.Random(SEED + 2)
    runs = shared / "fixtures" / "vasp"
    files = [(oszicar_steps, runs / "Si_mp_gga_relax" / "GGA_Relax_1" / "outputs" / "OSZICAR.gz"),
             (oszicar_steps, runs / "Si_mp_gga_relax" / "GGA_Static" / "outputs" / "OSZICAR.gz"),
             (outcar_steps, runs / "Si_mp_gga_relax" / "GGA_Static" / "outputs" / "OUTCAR.gz"),
             (outcar_steps, runs / "Si_static_with_chgcar" / "outputs" / "OUTCAR.gz")]
    for count, path in files:
        original = count(path)
        assert original and all(n > 0 for n in original)
        packed = path.read_bytes()
        text = gzip.decompress(packed)
        step_lines = [s for s in line_spans(text) if rb"Iteration" in text[s[0]:s[1]] or
                      text[s[0]:s[1]].startswith((b"DAV:", b"RMM:"))]
        cases = [("cut", *truncate(text, rng)) for _ in range(8)]
        cases += [("flip", *flip(text, rng)) for _ in range(8)]
        cases += [("nonfinite", *nonfinite(text, rng, number_spans(text))) for _ in range(4)]
        for span in rng.sample(step_lines, 3):  # a step renumbered, garbled or removed
            number = number_spans(text, *span)[0]
            cases += [("count", replace_span(text, number, b"50"), "a step renumbered"),
                      ("count", replace_span(text, number, b"***"), "a step number overflowed (Fortran's ***)"),
                      ("count", text[: span[0]] + text[span[1] + 1:], "a step line removed")]
        cases += [("empty", e, f"empty {e!r}") for e in EMPTY]
        cases += [("gz-" + m, gzipped(d), label) for m, d, label in cases[::3]]
        cases += [("gz-cut", *truncate(packed, rng)) for _ in range(3)]
        cases += [("gz-flip", *flip(packed, rng)) for _ in range(3)]

        def check(steps: list[int], mutation: str) -> str:
            assert isinstance(steps, list) and all(isinstance(n, int) and n >= 0 for n in steps), steps
            if mutation.endswith("cut"):  # a cut run reports the steps it made, no more
                assert len(steps) <= len(original) and steps[:-1] == original[: len(steps) - 1], steps
                assert not steps or steps[-1] <= original[len(steps) - 1], steps
            return "ok" if steps else "ok: no steps"

        for k, (mutation, mutated, label) in enumerate(cases):
            case = tmp_path / f"{path.parent.parent.name}-{path.name}-{k}"
            case.write_bytes(mutated)
            run_case("steps", f"{count.__name__} {path.name} {mutation} {label}", str(case),
                     lambda: check(count(case), mutation))
    assert_no_problems("steps")


# -- CIF import ------------------------------------------------------------------------------------------------------
CIFS = ["CsSnI3.cif", "CuCl.cif", "Fe3O4.cif", "V2O3.cif", "MgNiF6.cif", "La2CoO4.cif", "Graphite.cif",
        "FePO4.cif", "LiFePO4.cif", "Li2O.cif"]


def cif_count_mutations(text: bytes, rng: random.Random) -> Iterator[tuple[bytes, str]]:
    """Atom rows removed or repeated, loop columns dropped, the declared formula changed."""
    lines = line_spans(text)
    rows = [s for s in lines if len(text[s[0]:s[1]].split()) >= 4 and not text[s[0]:s[1]].lstrip().startswith(
        (b"_", b"'", b"#", b"loop_")) and number_spans(text, *s)]
    for span in rng.sample(rows, min(3, len(rows))):
        yield text[: span[0]] + text[span[1] + 1:], "a loop row removed"
        yield text[: span[1] + 1] + text[span[0]: span[1] + 1] + text[span[1] + 1:], "a loop row repeated"
    tags = [s for s in lines if text[s[0]:s[1]].startswith(b"_atom_site_") and len(text[s[0]:s[1]].split()) == 1]
    for span in rng.sample(tags, min(2, len(tags))):
        yield text[: span[0]] + text[span[1] + 1:], f"loop column {text[span[0]:span[1]].decode()} removed"
    formula = [s for s in lines if text[s[0]:s[1]].startswith(b"_chemical_formula_sum")]
    for span in formula:
        line = text[span[0]:span[1]]
        amounts = number_spans(text, *span)
        if amounts:
            a = rng.choice(amounts)
            yield replace_span(text, a, str(int(float(text[a[0]:a[1]]) + 1)).encode()), "declared amount + 1"
        yield replace_span(text, span, line.rstrip(b"'") + b" Xe2" + (b"'" if line.endswith(b"'") else b"")), \
            "declared formula has an element the sites lack"


def check_imported(entries, full, mutation: str, declared: bool) -> str:
    """Import entries: each a reason, or a sane structure; complete (or flagged) where a formula is declared.

    Without ``_chemical_formula_sum`` (a VESTA export, say) an atom loop cut at a row
    boundary is a valid CIF of fewer atoms: nothing in the file tells, so only sanity
    is checked then.
    """
    from pymatgen.core import Composition

    from dftflow.sources.records import unpack

    outcomes = []
    for e in entries:
        if not e.ok:
            outcomes.append(assert_reason(e.error))
            continue
        s = unpack(e.packed)
        assert np.isfinite(s.lattice.matrix).all() and s.volume > 1e-3, "a non-finite or degenerate lattice"
        assert np.isfinite(s.frac_coords).all() and len(s) > 0, "non-finite coordinates or no atoms"
        assert all(np.isfinite(occ) and 0 < occ <= 1 + 1e-6 for site in s for occ in site.species.values()), \
            "an occupancy that is not in (0, 1]"
        if any(f.startswith("missing_atoms:") for f in e.flags):
            outcomes.append("ok: flagged")
            continue
        if mutation in ("cut", "count", "empty"):  # complete, or the shortfall flagged
            if declared:
                ref = unpack(full.packed).composition.reduced_formula
                assert s.composition.reduced_formula == ref or Composition(ref).almost_equals(
                    s.composition.reduced_composition), f"imported {s.composition.reduced_formula} for {ref}, unflagged"
        outcomes.append("ok")
    assert entries, "no entry at all"
    return outcomes[0] if len(set(outcomes)) == 1 else "mixed"


@pytest.mark.filterwarnings("ignore")
def test_cif_import(shared: Path, tmp_path: Path) -> None:
    from dftflow.sources.cif import parse_cif_text
    from dftflow.sources.discover import discover, run_import_task

    rng = random.Random(SEED + 3)

    def import_file(path: Path) -> list:
        return [e for task in discover("cif", path, "fuzz") for e in run_import_task(task)]

    for name in CIFS:
        text = (shared / "fixtures" / "cif" / name).read_bytes()
        (full,) = parse_cif_text(text.decode(), "u", {})
        cases = [("cut", *truncate(text, rng)) for _ in range(8)]
        cases += [("cut", *truncate_line(text, rng)) for _ in range(6)]
        cases += [("flip", *flip(text, rng)) for _ in range(10)]
        cases += [("nonfinite", *nonfinite(text, rng, number_spans(text))) for _ in range(6)]
        cases += [("count", d, label) for d, label in cif_count_mutations(text, rng)]
        cases += [("empty", e, f"empty {e!r}") for e in EMPTY[:2]]
        # (mutation, bytes on disk, the text they hold, label): damaged content also compressed,
        # and the compressed stream itself damaged (then nothing declared can be read).
        cases = [(m, d, d, label) for m, d, label in cases]
        cases += [("gz-" + m, gzipped(d), d, label) for m, d, _, label in cases[::5]]
        packed = gzipped(text)
        cases += [("gz-cut", d, b"", label) for d, label in [truncate(packed, rng)]]
        cases += [("gz-flip", d, b"", label) for d, label in [flip(packed, rng), flip(packed, rng)]]
        for k, (mutation, mutated, plain, label) in enumerate(cases):
            case = tmp_path / (f"{Path(name).stem}-{k}.cif" + (".gz" if mutation.startswith("gz") else ""))
            case.write_bytes(mutated)
            run_case("cif", f"{name} {mutation} {label}", str(case),
                     lambda: check_imported(import_file(case), full, mutation.removeprefix("gz-"),
                                            b"_chemical_formula_sum" in plain))
    assert_no_problems("cif")


@pytest.mark.filterwarnings("ignore")
def test_unreadable_declared_formula_leaves_a_reason(shared: Path) -> None:
    """The missing-atoms check needs the declared formula: one it cannot read is a recorded reason, not a skip."""
    from dftflow.sources.cif import parse_cif_text

    text = (shared / "fixtures" / "cif" / "Fe3O4.cif").read_text()
    for bad in ("'Fe6 O$'", "'Fe6 O1e999'", "'Li1-x Fe P O4'"):
        broken = "\n".join(
            f"_chemical_formula_sum {bad}" if line.startswith("_chemical_formula_sum") else line
            for line in text.splitlines())
        (entry,) = parse_cif_text(broken, "u", {})
        assert not entry.ok and "_chemical_formula_sum" in entry.error and bad.strip("'") in entry.error, entry
    # Control: a readable formula with fewer sites than it declares is flagged, as before.
    short = text.replace("_chemical_formula_sum                   'Fe6 O8'", "_chemical_formula_sum 'Fe6 O9'")
    (entry,) = parse_cif_text(short, "u", {})
    assert entry.ok and entry.flags == ["missing_atoms:O"]


# -- generated candidates (.pt) --------------------------------------------------------------------------------------
# DiffCSP's schema (scripts/evaluate.py), as tests/sources/test_generated.py writes it: 2 samples x 3 structures.
_STRUCTURES = [([11, 17], (3.98, 3.98, 3.98), (60.0, 60.0, 60.0), [[0.0, 0.0, 0.0], [0.5, 0.5, 0.5]]),
               ([22, 8, 8], (4.59, 4.59, 2.96), (90.0, 90.0, 90.0),
                [[0.0, 0.0, 0.0], [0.305, 0.305, 0.0], [0.695, 0.695, 0.0]]),
               ([3, 3, 8, 26], (4.1, 5.3, 6.2), (81.0, 97.5, 104.0),
                [[0.11, 0.22, 0.33], [0.61, 0.72, 0.05], [0.9, 0.05, 0.5], [0.25, 0.75, 0.9]])]


def generated_batch() -> dict[str, np.ndarray]:
    one = {"frac_coords": np.array([r for s in _STRUCTURES for r in s[3]], dtype=np.float32),
           "num_atoms": np.array([len(s[0]) for s in _STRUCTURES]),
           "atom_types": np.array([z for s in _STRUCTURES for z in s[0]]),
           "lengths": np.array([s[1] for s in _STRUCTURES], dtype=np.float32),
           "angles": np.array([s[2] for s in _STRUCTURES], dtype=np.float32)}
    return {k: np.stack([v, v]) for k, v in one.items()}


def generated_content_mutations(rng: random.Random) -> Iterator[tuple[str, object, str]]:
    """Wrong counts and shapes, non-finite and impossible values, missing keys, not a dict."""
    base = generated_batch()

    def changed(key: str, fn: Callable[[np.ndarray], np.ndarray], label: str) -> tuple[str, object, str]:
        data = {k: v.copy() for k, v in base.items()}
        data[key] = fn(data[key])
        return ("count", data, label)

    def at(value: object, index: tuple) -> Callable[[np.ndarray], np.ndarray]:
        def fn(a: np.ndarray) -> np.ndarray:
            a = a.astype(np.float64) if isinstance(value, float) else a
            a[index] = value
            return a
        return fn

    for delta in (1, -1, -2, 5):
        yield changed("num_atoms", at(3 + delta, (rng.randrange(2), 1)), f"num_atoms {3 + delta} for 3")
    yield changed("num_atoms", lambda a: a[:, :2], "num_atoms of 2 structures for 3")
    yield changed("num_atoms", lambda a: a[:1], "num_atoms of 1 sample for 2")
    yield changed("num_atoms", lambda a: a.astype(np.float64) + 0.5, "fractional num_atoms")
    yield changed("frac_coords", lambda a: a[:, :-1], "one coordinate row missing")
    yield changed("frac_coords", lambda a: a[:, :, :2], "two coordinates per atom")
    yield changed("frac_coords", lambda a: a[0, :, 0], "1-D coordinates")
    yield changed("atom_types", lambda a: a[:, :-1], "one atom type missing")
    yield changed("lengths", lambda a: a[:, :2], "lengths of 2 structures for 3")
    yield changed("lengths", lambda a: a[..., :2], "two lengths per cell")
    yield changed("angles", lambda a: a[0], "angles without the samples dimension")
    for key, shape in (("frac_coords", (2, 9, 3)), ("lengths", (2, 3, 3)), ("angles", (2, 3, 3))):
        for value in (float("nan"), float("inf"), -float("inf")):
            index = tuple(rng.randrange(n) for n in shape)
            yield changed(key, at(value, index), f"{key}{list(index)} = {value}")
    for value in (0, -3, 119, 1000):
        yield changed("atom_types", at(value, (rng.randrange(2), rng.randrange(9))), f"atomic number {value}")
    for key, value in (("lengths", 0.0), ("lengths", -4.0), ("angles", 0.0), ("angles", 180.0), ("angles", 250.0)):
        yield changed(key, at(value, (rng.randrange(2), rng.randrange(3), rng.randrange(3))), f"{key} {value}")
    scores = np.zeros((2, 9, 100), dtype=np.float32)
    scores[:, np.arange(9), base["atom_types"][0] - 1] = 1.0
    yield changed("atom_types", lambda a: scores, "per-type scores")
    nan_scores = scores.copy()
    nan_scores[1, 4] = np.nan
    yield changed("atom_types", lambda a: nan_scores, "per-type scores with NaN")
    from pymatgen.core import Lattice

    lattices = np.stack([np.stack([Lattice.from_parameters(*s[1], *s[2]).matrix for s in _STRUCTURES])] * 2)
    no_params = {k: v for k, v in base.items() if k not in ("lengths", "angles")}
    yield "count", {**no_params, "lattices": lattices}, "lattice matrices"
    singular = lattices.copy()
    singular[0, 1, 2] = singular[0, 1, 1]
    yield "count", {**no_params, "lattices": singular}, "a singular lattice matrix"
    nan_lattice = lattices.copy()
    nan_lattice[1, 0, 0, 0] = np.nan
    yield "nonfinite", {**no_params, "lattices": nan_lattice}, "a NaN in a lattice matrix"
    yield "count", {**no_params, "lattices": lattices[:, :2]}, "2 lattice matrices for 3 structures"
    yield "count", {**no_params, "lattices": lattices[..., :2]}, "3x2 lattice matrices"
    for key in ("frac_coords", "num_atoms", "atom_types", "lengths"):
        yield "count", {k: v for k, v in base.items() if k != key}, f"{key} missing"
    yield "count", list(base.values()), "a list, not a dict"
    yield "count", base["frac_coords"], "a bare tensor"
    yield "count", {**base, "num_atoms": "3 3 3"}, "num_atoms a string"
    yield "count", {**base, "frac_coords": [[0.0, 0.0]]}, "ragged frac_coords"


def check_generated(entries) -> str:
    from dftflow.sources.records import unpack

    assert entries, "no entry at all"
    outcomes = []
    for e in entries:
        if not e.ok:
            assert "unusable generated data" not in e.error, f"an unexpected exception was caught: {e.error}"
            outcomes.append(assert_reason(e.error))
            continue
        s = unpack(e.packed)
        assert np.isfinite(s.lattice.matrix).all() and s.volume > 1e-3, "a non-finite or degenerate lattice"
        assert np.isfinite(s.frac_coords).all() and ((s.frac_coords >= 0) & (s.frac_coords < 1)).all(), \
            "coordinates not finite or not in [0, 1)"
        assert all(1 <= site.specie.Z <= 118 for site in s), "an impossible atomic number"
        outcomes.append("ok")
    return outcomes[0] if len(set(outcomes)) == 1 else "mixed"


@pytest.mark.filterwarnings("ignore")
def test_generated_candidates(tmp_path: Path) -> None:
    import torch

    from dftflow.sources.discover import discover, run_import_task

    rng = random.Random(SEED + 4)

    def as_torch(value: object) -> object:
        if isinstance(value, dict):
            return {k: as_torch(v) for k, v in value.items()}
        if isinstance(value, list):
            return [as_torch(v) for v in value]
        return torch.from_numpy(np.ascontiguousarray(value)) if isinstance(value, np.ndarray) else value

    cases: list[tuple[str, bytes, str]] = []
    for zipped in (True, False):  # torch's zip format and the legacy pickle stream
        base = tmp_path / "base.pt"
        torch.save(as_torch(generated_batch()), base, _use_new_zipfile_serialization=zipped)
        data = base.read_bytes()
        cases += [("cut", *truncate(data, rng)) for _ in range(15)]
        cases += [("flip", *flip(data, rng)) for _ in range(25)]
    cases += [("empty", e, f"empty {e!r}") for e in EMPTY[:2]]
    for mutation, content, label in generated_content_mutations(rng):
        torch.save(as_torch(content), tmp_path / "content.pt")
        cases.append((mutation, (tmp_path / "content.pt").read_bytes(), label))
    for k, (mutation, mutated, label) in enumerate(cases):
        case = tmp_path / f"eval_gen-{k}.pt"
        case.write_bytes(mutated)
        run_case("generated", f"{mutation} {label}", str(case), lambda: check_generated(
            [e for task in discover("diffcsp", case, "gen") for e in run_import_task(task)]))
    assert_no_problems("generated")


# -- recipes ---------------------------------------------------------------------------------------------------------
def recipe_count_mutations(text: bytes) -> Iterator[tuple[bytes, str]]:
    """Counts and sizes out of range, lists emptied, a mapping where a list belongs."""
    for key, value in ((b"workers: ", b"0"), (b"size: ", b"-1"), (b"max_atoms: ", b"0"), (b"seed: ", b"1.5"),
                       (b"nfixed: ", b"-1"), (b"test: ", b"0"), (b"ecut: ", b"[300, 400]")):
        start = text.find(b"\n" + key.lstrip())
        if start < 0:
            start = text.find(key)
        if start >= 0:
            end = text.index(b"\n", start + 1)
            line = text[start:end]
            yield text[:start] + line[: line.index(b":") + 2] + value + text[end:], f"{key.decode()}{value.decode()}"
    start = text.index(b"sources:")
    end = text.index(b"\n", text.index(b"label:", start))
    yield text[:start] + b"sources: []" + text[end:], "no sources"
    yield text[:start] + b"sources: {type: cif}" + text[end:], "sources a mapping"
    yield text + b"\nworkers: 3\n", "a key repeated"


def check_recipe(recipe) -> str:
    def walk(value: object, key: str) -> None:
        if isinstance(value, float):
            assert np.isfinite(value), f"{key} = {value} accepted"
        elif isinstance(value, dict):
            for k, v in value.items():
                walk(v, f"{key}.{k}")
        elif isinstance(value, list):
            for i, v in enumerate(value):
                walk(v, f"{key}[{i}]")

    walk(recipe.model_dump(mode="python"), "recipe")
    assert recipe.sources and recipe.workers > 0
    return "ok"


def test_recipe_loading(tmp_path: Path) -> None:
    from dftflow.config.recipe import load_recipe

    rng = random.Random(SEED + 5)
    repo = Path(__file__).resolve().parents[2]
    nonfinite_tokens = (b".nan", b".inf", b"-.inf", b"1.0e+999", b".NaN")
    for source in sorted((repo / "workflows").glob("*.yaml")):
        text = source.read_bytes()
        cases = [("cut", *truncate(text, rng)) for _ in range(8)]
        cases += [("cut", *truncate_line(text, rng)) for _ in range(4)]
        cases += [("flip", *flip(text, rng)) for _ in range(16)]
        for _ in range(8):
            start, end = rng.choice(number_spans(text))
            token = rng.choice(nonfinite_tokens)
            cases.append(("nonfinite", replace_span(text, (start, end), token),
                          f"{text[start:end]!r} at byte {start} -> {token!r}"))
        cases += [("count", d, label) for d, label in recipe_count_mutations(text)]
        cases += [("empty", e, f"empty {e!r}") for e in EMPTY]
        for k, (mutation, mutated, label) in enumerate(cases):
            case = tmp_path / f"{source.stem}-{k}.yaml"
            case.write_bytes(mutated)
            run_case("recipe", f"{source.name} {mutation} {label}", str(case),
                     lambda: check_recipe(load_recipe(case)))
    assert_no_problems("recipe")


# -- the CLI ---------------------------------------------------------------------------------------------------------
def test_cli_reports_a_broken_cif_in_one_line(shared: Path, tmp_path: Path) -> None:
    import os
    import subprocess
    import sys

    text = (shared / "fixtures" / "cif" / "CuCl.cif").read_bytes()
    broken = tmp_path / "CuCl_cut.cif"
    broken.write_bytes(text[: text.index(b"_atom_site_fract_x")])  # cut before the atom sites
    proc = subprocess.run([sys.executable, "-m", "dftflow", "inputs", "show", str(broken)], capture_output=True,
                          text=True, timeout=120, env={**os.environ, "COLUMNS": "200", "OMP_NUM_THREADS": "1"})
    assert proc.returncode == 1, proc
    assert "Traceback" not in proc.stderr
    lines = proc.stderr.strip().splitlines()
    assert lines[0].startswith("error:") and str(broken) in lines[0] and lines[1:] == [
        "(run with --debug for the traceback)"], proc.stderr


def test_cli_reports_a_damaged_recipe_and_quarantines_a_cut_chgcar(small_chgcars: dict[str, bytes], tmp_path: Path,
                                                                   capsys) -> None:
    from dftflow.cli.app import main

    recipe = tmp_path / "recipe.yaml"
    recipe.write_bytes(b"name: demo\nsources:\n  - {type: cif, path: x\xff\xfe}\n")  # not UTF-8
    assert main(["recipes", "show", str(recipe)]) == 1
    err = capsys.readouterr().err.strip().splitlines()
    assert err[0].startswith("error:") and str(recipe) in err[0] and "Traceback" not in "\n".join(err), err

    run = tmp_path / "runs" / "Si"
    run.mkdir(parents=True)
    data = small_chgcars["Si"]
    (run / "CHGCAR").write_bytes(data[: len(data) // 2])
    assert main(["harvest", str(tmp_path / "runs"), "--out", str(tmp_path / "ds"), "--json"]) == 0
    summary = json.loads(capsys.readouterr().out)
    assert summary["quarantined"] == 1 and summary["stored"] == 0
    from dftflow.dataset.harvest import info

    (entry,) = info(tmp_path / "ds")["quarantine"]
    assert entry["reason"].startswith(f"DensityError: {run / 'CHGCAR'}: line ") and "truncated" in entry["reason"]


def test_total_cases() -> None:
    """At least 1,000 cases over all kinds: every kind test asserts its own minimum (``MIN_CASES``)."""
    assert sum(MIN_CASES.values()) >= 1000
    if set(TALLY.outcomes) == set(MIN_CASES):  # the whole file ran: the table of what each kind gave
        print("\n" + TALLY.table())
        assert TALLY.cases() >= 1000, TALLY.table()
