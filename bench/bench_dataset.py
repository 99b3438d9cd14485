"""Harvest throughput, bytes per grid point and loader throughput of the HDF5 dataset.

    OMP_NUM_THREADS=1 python bench/bench_dataset.py [--repeat 5] [--threads 1] [--level 2] [--copies 8]
        [--json out.json]

Inputs (written once to a temporary directory, not timed):

* the real VASP CHGCARs of the test fixtures (Si 40³ with augmentation
  occupancies; Li without and with spin), plain and gzipped;
* four CHGCARs on the exact grids and cells of the ECD runs in
  ``fixtures/ecd_outcars`` (PbTiO3 60³, ZnO 48³, CdN 56³ spin-polarised,
  Fe10Si6 108×108×72 spin-polarised): superposed atomic densities written in
  VASP's own number format, with augmentation blocks per ion;
* ``--copies K`` (default 8): both plain sets again as K hard-linked copies of
  each file, harvested as distinct materials into one dataset. A harvest of a
  handful of files is dominated by creating the dataset (its manifest and
  their fsyncs); a real harvest stores thousands of files into one, and these rows
  show that steady state. Both tools read and write every copy.

Measured in the same run, on one core:

1. **Harvest**: dftflow's ``harvest`` (parse, validate the value count,
   Fortran numbers and electron count, float32 + shuffle + gzip, manifest),
   against ``pymatgen Chgcar.from_file`` + ``VolumetricData.to_hdf5`` on the
   same files. MB/s of CHGCAR text (uncompressed size), wall clock and CPU
   seconds of the process; medians of ``--repeat`` interleaved runs. The
   harvest also fsyncs each shard before the manifest points at it, which
   pymatgen's ``to_hdf5`` does not. ``--threads N`` reads each large grid in
   N pieces and deflates its chunks on N threads; ``--level L`` is their
   deflate level (ISA-L 0-3, default ``store.DEFLATE_LEVEL``).
   **Read**: dftflow's read with every check and the float32 record (nothing
   stored) against ``Chgcar.from_file`` alone, in CPU seconds.
2. **Bytes per grid point** on disk against raw float64 (8 bytes), per set.
3. **Loader**: ``ProbeDataset`` items per second with 200 probes each (cold
   and warm page cache alike: the data are on local disk), and full-grid
   reads through ``iter_grid`` in MB/s of float32 values.
"""

from __future__ import annotations

import argparse
import gzip
import json
import os
import shlex
import shutil
import statistics
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

for var in ("OMP_NUM_THREADS", "OPENBLAS_NUM_THREADS", "MKL_NUM_THREADS"):
    os.environ.setdefault(var, "1")

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))

import numpy as np  # noqa: E402

SHARED = Path(os.environ.get("DFTFLOW_SHARED", REPO.parent / "shared"))
ECD = {  # material: (grid, spin, valence per element from the ECD POTCARs)
    "icsd-1611-O3Pb1Ti1_PBE": ((60, 60, 60), False, {"Pb": 14, "Ti": 12, "O": 6}),
    "icsd-163383-O1Zn1_PBE": ((48, 48, 48), False, {"Zn": 12, "O": 6}),
    "icsd-183198-Cd1N1_PBE": ((56, 56, 56), True, {"Cd": 12, "N": 5}),
    "icsd-99966-Fe10Si6_PBE": ((108, 108, 72), True, {"Fe": 8, "Si": 4}),
}
AUG = {"O": 64, "N": 64, "Si": 138, "Pb": 324, "Ti": 324, "Zn": 324, "Cd": 324, "Fe": 324}


def atomic_superposition(lattice: np.ndarray, frac: np.ndarray, symbols: list[str], valence: dict[str, int],
                         grid: tuple[int, int, int]) -> tuple[np.ndarray, np.ndarray]:
    """rho (e/Å^3) of two-shell Slater atoms on the grid, and a magnetisation from the d/f metals."""
    axes = [np.arange(n) / n for n in grid]
    g = np.stack(np.meshgrid(*axes, indexing="ij"), axis=-1).reshape(-1, 3)
    rho = np.zeros(len(g))
    mag = np.zeros(len(g))
    for f, s in zip(frac, symbols):
        d = g - f
        d -= np.rint(d)
        r = np.linalg.norm(d @ lattice, axis=1)
        zv = valence[s]
        core, valence_shell = 8.0, 2.2  # Slater exponents, 1/Å; each shell integrates to its electrons
        shell = (0.35 * zv * core**3 * np.exp(-core * r) + 0.65 * zv * valence_shell**3 * np.exp(-valence_shell * r)) \
            / (8 * np.pi)
        rho += shell
        if s in ("Fe", "Cd"):
            mag += 0.12 * shell
    return rho.reshape(grid), mag.reshape(grid)


def write_chgcar(path: Path, poscar_lines: list[str], rho: np.ndarray, mag: np.ndarray | None, volume: float,
                 aug_sizes: list[int], rng: np.random.Generator) -> None:
    """A CHGCAR as VASP 5 writes it: POSCAR header, rho*V (x fastest), augmentation, then the spin block."""
    out = ["".join(poscar_lines), "\n", "   " + "   ".join(str(n) for n in rho.shape) + "\n"]

    from dftflow.density._fortran import format_fortran

    def data(block: np.ndarray) -> None:
        out.append(format_fortran((block * volume).ravel(order="F"), width=17, digits=11, per_line=5,
                                  lead=" ").decode())
        for ion, n in enumerate(aug_sizes, start=1):
            out.append(f"augmentation occupancies{ion:4d}{n:4d}\n")
            out.append(format_fortran(rng.normal(0, 0.2, n), width=15, digits=7, per_line=5).decode())

    data(rho)
    if mag is not None:
        out.append("".join(f"{0.0:16.8E}" for _ in aug_sizes) + "\n")  # the per-ion moments line
        out.append("   " + "   ".join(str(n) for n in rho.shape) + "\n")
        data(mag)
    path.write_text("".join(out))


def make_inputs(root: Path) -> dict[str, list[Path]]:
    """{set name: [directories with a CHGCAR]}; 'real' are the fixtures, 'ecd-grid' the synthetic ones."""
    from pymatgen.io.vasp import Poscar

    sets: dict[str, list[Path]] = {"real": [], "ecd-grid": []}
    fixtures = SHARED / "fixtures"
    for name, src in [("Si", fixtures / "vasp" / "Si_static_with_chgcar" / "outputs" / "CHGCAR.gz"),
                      ("Li_nospin", fixtures / "chgcar" / "Li_nospin.gz"),
                      ("Li_spin", fixtures / "chgcar" / "Li_spin.gz")]:
        d = root / "real" / name
        d.mkdir(parents=True)
        with gzip.open(src, "rb") as fin, open(d / "CHGCAR", "wb") as fout:
            shutil.copyfileobj(fin, fout)
        sets["real"].append(d)
    rng = np.random.default_rng(0)
    for name, (grid, spin, valence) in ECD.items():
        poscar_path = fixtures / "ecd_outcars" / name / "POSCAR"
        poscar = Poscar.from_file(poscar_path)
        s = poscar.structure
        symbols = [site.specie.symbol for site in s]
        rho, mag = atomic_superposition(s.lattice.matrix, s.frac_coords, symbols, valence, grid)
        d = root / "ecd-grid" / name
        d.mkdir(parents=True)
        lines = poscar_path.read_text().splitlines(keepends=True)[:8 + len(s)]
        write_chgcar(d / "CHGCAR", lines, rho, mag if spin else None, s.volume, [AUG[x] for x in symbols], rng)
        sets["ecd-grid"].append(d)
    # gzipped copies of both sets, as clusters keep them
    for name in list(sets):
        gz = []
        for d in sets[name]:
            g = root / f"{name}-gz" / d.name
            g.mkdir(parents=True)
            with open(d / "CHGCAR", "rb") as fin, gzip.open(g / "CHGCAR.gz", "wb", compresslevel=6) as fout:
                shutil.copyfileobj(fin, fout)
            gz.append(g)
        sets[f"{name}-gz"] = gz
    return sets


def replicate(root: Path, name: str, dirs: list[Path], copies: int) -> list[Path]:
    """``copies`` of every directory of a set, as distinct materials (hard links: no extra disk or page cache)."""
    out = []
    for k in range(copies):
        for d in dirs:
            target = root / f"{name}-x{copies}" / f"{d.name}_{k}"
            target.mkdir(parents=True)
            for f in d.iterdir():
                try:
                    os.link(f, target / f.name)
                except OSError:
                    shutil.copyfile(f, target / f.name)
            out.append(target)
    return out


def text_bytes(dirs: list[Path]) -> int:
    total = 0
    for d in dirs:
        f = next(d.glob("CHGCAR*"))
        if f.suffix == ".gz":
            with gzip.open(f, "rb") as fh:
                total += len(fh.read())
        else:
            total += f.stat().st_size
    return total


def time_pymatgen(dirs: list[Path], scratch: Path) -> tuple[float, float, int]:
    """Wall seconds, CPU seconds of this process, and bytes of the HDF5 files written."""
    from pymatgen.io.vasp import Chgcar

    t0, c0 = time.perf_counter(), time.process_time()
    for i, d in enumerate(dirs):
        chg = Chgcar.from_file(str(next(d.glob("CHGCAR*"))))
        chg.to_hdf5(str(scratch / f"ref{i}.h5"))
    elapsed, cpu = time.perf_counter() - t0, time.process_time() - c0
    return elapsed, cpu, sum(p.stat().st_size for p in scratch.glob("ref*.h5"))


def time_pymatgen_parse(dirs: list[Path]) -> float:
    """CPU seconds of ``Chgcar.from_file`` alone (pymatgen's parse, no checks, nothing written)."""
    from pymatgen.io.vasp import Chgcar

    c0 = time.process_time()
    for d in dirs:
        Chgcar.from_file(str(next(d.glob("CHGCAR*"))))
    return time.process_time() - c0


def time_dftflow_read(set_root: Path) -> float:
    """CPU seconds of dftflow's read with every check (parse, counts, finiteness, electrons, float32 record)."""
    from dftflow.dataset.harvest import _load, from_directory

    items = list(from_directory(set_root))
    c0 = time.process_time()
    for item in items:
        _load(item)
    return time.process_time() - c0


def stored_values(root: Path) -> int:
    """Grid values stored (total plus magnetisation grids) in a dataset."""
    from dftflow.dataset.store import Dataset

    ds = Dataset(root)
    try:
        return sum(int(np.prod(h["grid"])) * (len(h["has"]) if "magnetisation" not in h["has"] else 4)
                   for h in map(ds.header, ds.ids()))
    finally:
        ds.close()


def shard_level(root: Path) -> str:
    """The deflate setting the shards record."""
    import h5py

    with h5py.File(next((root / "shards").glob("*.h5"))) as f:
        return str(f.attrs.get("deflate", "?"))


def time_dftflow(set_root: Path, out: Path, threads: int = 1, level: int | None = None) -> tuple[float, float, dict]:
    """Wall seconds, CPU seconds of this process (all its threads), and the harvest summary."""
    from dftflow.dataset.harvest import from_directory, harvest

    if out.exists():
        shutil.rmtree(out)
    t0, c0 = time.perf_counter(), time.process_time()
    summary = harvest(list(from_directory(set_root)), out, workers=1, threads=threads, level=level)
    return time.perf_counter() - t0, time.process_time() - c0, summary


def time_new_dataset(root: Path, repeat: int) -> float:
    """Median wall seconds of a harvest of nothing into a new directory: the fixed cost of creating a dataset
    (the manifest, published whole with its fsyncs, and closed)."""
    from dftflow.dataset.harvest import harvest

    times = []
    for i in range(repeat):
        t0 = time.perf_counter()
        harvest([], root / f"empty{i}")
        times.append(time.perf_counter() - t0)
    return statistics.median(times)


def loader_numbers(root: Path, n_epochs: int = 5) -> dict[str, float]:
    from dftflow.dataset.loader import ProbeDataset, iter_grid
    from dftflow.dataset.store import Dataset

    ds = ProbeDataset(root, n_probes=200)
    t0 = time.perf_counter()
    n = 0
    for epoch in range(n_epochs):
        ds.set_epoch(epoch)
        for i in range(len(ds)):
            ds[i]
            n += 1
    probe_rate = n / (time.perf_counter() - t0)
    store = Dataset(root)
    t0 = time.perf_counter()
    nbytes = 0
    for _ in range(n_epochs):
        for mid in store.ids():
            for slab in iter_grid(store, mid, positions=False):
                nbytes += slab.values.nbytes
    grid_rate = nbytes / 1e6 / (time.perf_counter() - t0)
    store.close()
    return {"probe_items_per_s": probe_rate, "full_grid_MB_per_s": grid_rate}


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--repeat", type=int, default=5, help="timings are the medians of this many interleaved runs")
    ap.add_argument("--threads", type=int, default=1, help="dftflow deflates each grid's chunks on this many threads")
    ap.add_argument("--level", type=int, help="deflate level of the grid chunks (default: the store's)")
    ap.add_argument("--copies", type=int, default=8,
                    help="the plain sets are also harvested as this many copies of each file (0: not)")
    ap.add_argument("--json", type=Path, help="write the numbers here too")
    args = ap.parse_args()
    print("$ python", " ".join(shlex.quote(a) for a in sys.argv))
    print(f"{os.cpu_count()} CPUs, load average {os.getloadavg()[0]:.1f} at the start")
    results: dict[str, Any] = {}
    with tempfile.TemporaryDirectory() as tmp:
        root = Path(tmp)
        t0 = time.perf_counter()
        sets = make_inputs(root / "in")
        if args.copies > 1:
            for name in ("real", "ecd-grid"):
                sets[f"{name}-x{args.copies}"] = replicate(root / "in", name, sets[name], args.copies)
        print(f"inputs written in {time.perf_counter() - t0:.1f} s (not part of any timing)")
        results["new_dataset_ms"] = 1e3 * time_new_dataset(root / "empty", args.repeat)
        print(f"creating an empty dataset (manifest and its fsyncs) takes {results['new_dataset_ms']:.1f} ms, "
              "part of every single-pass row below\n")
        head = f"{'set':<15}{'files':>6}{'text MB':>9}{'dftflow MB/s':>14}{'pymatgen MB/s':>15}{'ratio':>7}" \
               f"{'cpu ratio':>10}{'read ratio':>11}{'bytes/val':>10}{'vs f64':>8}{'pmg B/val':>10}"
        print(head)
        print("-" * len(head))
        for name, dirs in sets.items():
            mb = text_bytes(dirs) / 1e6
            ours, ref, ours_cpu, ref_cpu, read, parse = [], [], [], [], [], []
            for _ in range(args.repeat):
                t, cpu, summary = time_dftflow(root / "in" / name, root / "out" / name, args.threads, args.level)
                assert summary["stored"] == len(dirs) and summary["quarantined"] == 0, summary
                ours.append(t)
                ours_cpu.append(cpu)
                scratch = root / "ref"
                scratch.mkdir(exist_ok=True)
                t_ref, cpu_ref, ref_bytes = time_pymatgen(dirs, scratch)
                ref.append(t_ref)
                ref_cpu.append(cpu_ref)
                shutil.rmtree(scratch)
                read.append(time_dftflow_read(root / "in" / name))
                parse.append(time_pymatgen_parse(dirs))
            values = stored_values(root / "out" / name)
            level = shard_level(root / "out" / name)
            ours_bytes = sum(p.stat().st_size for p in (root / "out" / name / "shards").glob("*.h5"))
            bpp = ours_bytes / values
            med = statistics.median
            r = {"files": len(dirs), "text_MB": mb, "dftflow_MB_per_s": mb / med(ours),
                 "pymatgen_MB_per_s": mb / med(ref), "ratio": med(ref) / med(ours),
                 "dftflow_cpu_MB_per_s": mb / med(ours_cpu), "pymatgen_cpu_MB_per_s": mb / med(ref_cpu),
                 "cpu_ratio": med(ref_cpu) / med(ours_cpu), "threads": args.threads, "level": level,
                 "dftflow_read_cpu_MB_per_s": mb / med(read), "pymatgen_parse_cpu_MB_per_s": mb / med(parse),
                 "read_ratio": med(parse) / med(read),
                 "bytes_per_value": bpp, "vs_float64": bpp / 8.0, "pymatgen_hdf5_bytes_per_value": ref_bytes / values,
                 "grid_values": values}
            results[name] = r
            print(f"{name:<15}{len(dirs):>6}{mb:>9.1f}{r['dftflow_MB_per_s']:>14.1f}{r['pymatgen_MB_per_s']:>15.1f}"
                  f"{r['ratio']:>7.2f}{r['cpu_ratio']:>10.2f}{r['read_ratio']:>11.2f}{bpp:>10.3f}{bpp / 8:>8.3f}"
                  f"{ref_bytes / values:>10.2f}")
        print(f"\ngrid chunks: float32, shuffle + deflate ({level})")
        print("ratio = dftflow throughput / pymatgen throughput, wall clock (target >= 1.0); cpu ratio = the same "
              "in CPU seconds of this\nprocess (per core; steadier than wall time on a shared machine); read ratio = "
              "CPU time of pymatgen's Chgcar.from_file alone\nover dftflow's read with every check (parse, value "
              "counts, finiteness, electron count, float32 record; nothing stored); medians of\ninterleaved runs; "
              "bytes/val = shard file bytes "
              "per stored grid value\n(total and magnetisation grids, all metadata included); vs f64 = bytes/val / 8 "
              "(target <= 0.35); pmg B/val = the same for pymatgen's to_hdf5 files;\n-xK sets = K copies of each "
              "file harvested as distinct materials into one dataset (a large harvest's steady state: the\n"
              "one-off cost of creating a dataset, its manifest and fsyncs, is spread over K times the files)\n")
        for name in ("ecd-grid", "real"):
            lr = loader_numbers(root / "out" / name)
            results[f"loader-{name}"] = lr
            print(f"loader on {name:<9} {lr['probe_items_per_s']:8.1f} structures/s with 200 probes, "
                  f"full grid {lr['full_grid_MB_per_s']:7.1f} MB/s (float32)")
    if args.json:
        args.json.write_text(json.dumps(results, indent=1))


if __name__ == "__main__":
    main()
