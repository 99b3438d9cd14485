"""dftflow's ChargE3Net next to the reference implementation, same CPU, same data, same model size.

    git clone https://github.com/AIforGreatGood/charge3net /tmp/charge3net-ref   # never committed here
    pip install lz4 pandas                                                        # the reference's imports
    OMP_NUM_THREADS=1 python bench/bench_charge3net.py --reference /tmp/charge3net-ref [--steps 200]

Both models get the same hyper-parameters (``--mul``, ``--lmax``, 3
interactions, 4 Å cutoff, 20 Gaussians) and the same real densities (the Si
and Li CHGCARs of the test fixtures, as ρ in e/Å³ on their grids). Measured in
one run, on one thread:

The reference's one-hot species vector is cast to float before its first
tensor product (recent torch refuses an integer × float ``tensordot``); that is
the only change made to it, at run time.

1. **training steps/s**: a batch of 2 structures × ``--probes`` random grid
   points — data preparation (probe sampling, graph construction, collation)
   plus forward, L1 loss, backward and Adam step, in the same process (no
   loader workers on either side);
2. **ε_mae at the same budget**: both trained ``--steps`` steps with the same
   learning rate and probe budget, scored on 5,000 random points of each
   structure (the mean of 5 evaluations over the last quarter of the run: at
   a constant learning rate single evaluations jump), averaged over ``--seeds``
   initialisations of each model (runs differ by more than the two codes);
   dftflow is then trained on for as many steps as fit in the reference's
   training time and scored the same way (the same compute budget);
3. **full-grid inference, s per structure**: the reference's own path (graph
   of the whole grid with its k-d tree constructor, split into sub-batches of
   2,500 probes, atom representation once) against ``dftflow predict``'s
   (chunks of ~8,000 edges with cached periodic images, the probe layers in
   :class:`dftflow.ml.probe_kernel.ProbeKernel`), both evaluating
   every grid point and with one point per space-group orbit (the default;
   the largest difference between the two grids is printed), on ECD cells at
   their real VASP grids (48³, 56³, 60³; 108×108×72 with ``--cells``), and
   dftflow's peak resident memory (VmHWM, in a fresh process) for a 1e7-point grid.
"""

from __future__ import annotations

import argparse
import gc
import os
import resource
import shlex
import shutil
import subprocess
import sys
import tempfile
import time
from pathlib import Path

for var in ("OMP_NUM_THREADS", "OPENBLAS_NUM_THREADS", "MKL_NUM_THREADS"):
    os.environ.setdefault(var, "1")
REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))
SHARED = Path(os.environ.get("DFTFLOW_SHARED", REPO.parent / "shared"))

import functools  # noqa: E402

import numpy as np  # noqa: E402
import torch  # noqa: E402

print = functools.partial(print, flush=True)  # noqa: A001 - progress of a long benchmark, unbuffered

torch.set_num_threads(1)


def load_fixtures(tmp: Path) -> Path:
    from dftflow.dataset.harvest import from_directory, harvest

    for name, path in (("Si", SHARED / "fixtures/vasp/Si_static_with_chgcar/outputs/CHGCAR.gz"),
                       ("Li", SHARED / "fixtures/chgcar/Li_nospin.gz")):
        (tmp / "src" / name).mkdir(parents=True)
        shutil.copy(path, tmp / "src" / name / "CHGCAR.gz")
    harvest(list(from_directory(tmp / "src")), tmp / "ds")
    return tmp / "ds"


class Reference:
    """The reference code, imported from its checkout (``src.charge3net``)."""

    def __init__(self, root: Path, mul: int, lmax: int) -> None:
        sys.path.insert(0, str(root))
        import src.charge3net.models.e3 as e3
        from src.charge3net.data.collate import collate_list_of_dicts
        from src.charge3net.data.graph_construction import KdTreeGraphConstructor
        from src.charge3net.models.e3 import E3DensityModel

        class _Functional:  # newer torch refuses long x float in the one-hot tensor product: cast it
            def __getattr__(self, name):
                return getattr(torch.nn.functional, name)

            @staticmethod
            def one_hot(x, num_classes):
                return torch.nn.functional.one_hot(x, num_classes).to(torch.get_default_dtype())

        e3.F = _Functional()
        self.collate = collate_list_of_dicts
        self.graphs = KdTreeGraphConstructor
        self.mul, self.lmax, self._model_class = mul, lmax, E3DensityModel
        self.reset(0)

    def reset(self, seed: int) -> None:
        """A freshly initialised model (its initialisation and its probe sampling seeded)."""
        torch.manual_seed(seed)
        np.random.seed(seed)
        self.model = self._model_class(num_interactions=3, num_neighbors=20, mul=self.mul, lmax=self.lmax,
                                       cutoff=4.0, basis="gaussian", num_basis=20)

    def item(self, rho: np.ndarray, atoms, num_probes: int | None):
        from src.utils.data import calculate_grid_pos

        grid_pos = calculate_grid_pos(rho, np.zeros(3), atoms.get_cell())
        return self.graphs(cutoff=4.0, num_probes=num_probes)(rho.astype(np.float32),
                                                              atoms, grid_pos.astype(np.float32))

    def step(self, data, opt) -> float:
        batch = self.collate([self.item(rho, atoms, self.num_probes) for rho, atoms in data])
        pred = self.model(batch)
        loss = torch.nn.functional.l1_loss(pred, batch["probe_target"])
        opt.zero_grad()
        loss.backward()
        opt.step()
        return float(loss.detach())

    def predict_full(self, rho_shape, atoms) -> np.ndarray:
        from src.utils.predictions import split_batch

        rho = np.zeros(rho_shape, dtype=np.float32)
        batch = self.collate([self.item(rho, atoms, None)])
        out, atom_repr = [], None
        with torch.no_grad():
            for sub in split_batch(batch, 2500):
                if atom_repr is None:
                    atom_repr = self.model.atom_model(sub)
                out.append(self.model.probe_model(sub, atom_repr).reshape(-1))
        return torch.cat(out).numpy()


def ours_model(mul: int, lmax: int, seed: int = 0):
    from dftflow.ml.model import ChargE3Net, ModelConfig

    torch.manual_seed(seed)
    return ChargE3Net(ModelConfig(num_interactions=3, mul=mul, lmax=lmax, cutoff=4.0, num_basis=20))


def eps_mae(pred: np.ndarray, true: np.ndarray) -> float:
    return float(np.abs(pred - true).sum() / np.abs(true).sum())


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--reference", type=Path, required=True, help="checkout of AIforGreatGood/charge3net")
    ap.add_argument("--mul", type=int, default=100)
    ap.add_argument("--lmax", type=int, default=4)
    ap.add_argument("--probes", type=int, default=200)
    ap.add_argument("--steps", type=int, default=200)
    ap.add_argument("--timing-steps", type=int, default=10)
    ap.add_argument("--lr", type=float, default=5e-3)
    ap.add_argument("--seeds", type=int, default=3, help="initialisations of each model for the error comparison")
    ap.add_argument("--skip-big", action="store_true", help="skip the 1e7-point memory measurement")
    ap.add_argument("--cells", default="icsd-163383-O1Zn1,icsd-183198-Cd1N1,icsd-1611-O3Pb1Ti1",
                    help="ECD cells for the inference comparison (icsd-99966-Fe10Si6 too: slow for the reference)")
    ap.add_argument("--inference-only", action="store_true", help="skip the training comparison (1 and 2)")
    ap.add_argument("--grid", help="NX,NY,NZ for every cell instead of its VASP grid (the paper's size is slow)")
    ap.add_argument("--big-grid", help=argparse.SUPPRESS)  # internal: one big prediction in a fresh process
    ap.add_argument("--no-symmetry", action="store_true", help=argparse.SUPPRESS)
    args = ap.parse_args()
    if args.big_grid:
        big_grid(args)
        return
    print("$ python", " ".join(shlex.quote(a) for a in sys.argv))
    from ase import Atoms
    from pymatgen.core import Structure

    from dftflow.dataset.loader import ProbeDataset
    from dftflow.dataset.store import Dataset
    from dftflow.ml.predict import predict_grid
    from dftflow.ml.train import graph_batch

    tmp = Path(tempfile.mkdtemp())
    ds_path = load_fixtures(tmp)
    ds = Dataset(ds_path)
    data = []
    for mid in ds.ids():
        rec = ds.read(mid)
        atoms = Atoms(numbers=rec["numbers"], scaled_positions=rec["frac_coords"], cell=rec["lattice"], pbc=True)
        data.append((rec["total"], atoms))
    ds.close()

    ref = Reference(args.reference, args.mul, args.lmax)
    ref.num_probes = args.probes
    ours = ours_model(args.mul, args.lmax)  # rebuilt per seed below
    print(f"parameters: dftflow {sum(p.numel() for p in ours.parameters()):,}, "
          f"reference {sum(p.numel() for p in ref.model.parameters()):,}")
    probes = ProbeDataset(ds_path, n_probes=args.probes, seed=0)  # rebuilt per seed below

    def ours_step(step: int, opt) -> float:
        probes.set_epoch(step)
        batch = graph_batch([probes[i] for i in range(len(probes))], 4.0, torch.float32)
        loss = torch.nn.functional.l1_loss(ours(batch), batch["target"])
        opt.zero_grad()
        loss.backward()
        opt.step()
        return float(loss.detach())

    # ε_mae on 5,000 random points per structure (the same points for both)
    rng = np.random.default_rng(1)
    points = [rng.choice(rho.size, 5000, replace=False) for rho, _ in data]

    def score(name: str) -> float:
        scores = []
        for (rho, atoms), idx in zip(data, points):
            frac = np.stack(np.unravel_index(idx, rho.shape), -1) / np.array(rho.shape)
            pts = frac @ np.array(atoms.get_cell())
            true = rho.reshape(-1)[idx]
            if name == "dftflow":
                from dftflow.ml.graph import make_batch

                b = make_batch([{"cell": np.array(atoms.get_cell()), "positions": atoms.positions,
                                 "numbers": atoms.numbers, "probe_positions": pts}], 4.0)
                with torch.no_grad():
                    pred = ours(b).numpy()
            else:
                g = ref.graphs(cutoff=4.0, num_probes=None).atoms_and_probes_to_graph(atoms, pts)
                from src.charge3net.data.collate import collate_list_of_dicts

                g.update(num_nodes=torch.tensor(len(atoms)), num_atom_edges=torch.tensor(g["atom_edges"].shape[0]),
                         num_probes=torch.tensor(len(pts)), num_probe_edges=torch.tensor(g["probe_edges"].shape[0]),
                         probe_xyz=torch.tensor(pts, dtype=torch.float32),
                         atom_xyz=torch.tensor(atoms.positions, dtype=torch.float32),
                         cell=torch.tensor(np.array(atoms.get_cell()), dtype=torch.float32))
                with torch.no_grad():
                    pred = ref.model(collate_list_of_dicts([g])).reshape(-1).numpy()
            scores.append(eps_mae(pred, true))
        return float(np.mean(scores))

    # 1 + 2: training speed, and the error after the same number of steps and after the same training time.
    # At a constant learning rate one evaluation moves by a percent from step to step (the Li density
    # most), so a run's error is the mean of 5 evaluations spread over the last quarter of the run; and
    # runs from different initialisations differ by more than that (3.9 to 6.7 % for the reference at
    # 200 steps), so both codes train from --seeds initialisations and the means are compared.
    def train(name: str, step_fn, opt, start: int, stop: int) -> tuple[float, list[float]]:
        evals = set(np.linspace(0.75 * stop, stop, 5).round().astype(int).tolist())
        seconds, scores = 0.0, []
        for s in range(start, stop):
            t0 = time.perf_counter()
            step_fn(s, opt)
            seconds += time.perf_counter() - t0
            if s + 1 == args.timing_steps:
                results[name]["steps_per_s"].append(args.timing_steps / seconds)
            if s + 1 in evals:
                scores.append(score(name))
        return seconds, scores

    results: dict[str, dict] = {name: {"steps_per_s": [], "train_s": [], "eps_mae": [], "same_time": []}
                                for name in ("reference", "dftflow")}
    for seed in range(0 if args.inference_only else args.seeds):
        ref.reset(seed)
        ours = ours_model(args.mul, args.lmax, seed)
        probes = ProbeDataset(ds_path, n_probes=args.probes, seed=seed)
        runs = (("reference", ref.model, lambda s, o: ref.step(data, o)), ("dftflow", ours, ours_step))
        for name, model, step_fn in runs:
            opt = torch.optim.Adam(model.parameters(), lr=args.lr)
            seconds, scores = train(name, step_fn, opt, 0, args.steps)
            results[name]["train_s"].append(seconds)
            results[name]["eps_mae"].append(float(np.mean(scores)))
        # dftflow goes on for as many steps as fit in the reference's training time (the same compute budget)
        total = max(args.steps, int(args.steps * results["reference"]["train_s"][-1] / seconds))
        if total > args.steps:
            _, scores = train("dftflow", ours_step, opt, args.steps, total)
        results["dftflow"]["same_time"].append((total, float(np.mean(scores))))
        print(f"  seed {seed}: ε_mae after {args.steps} steps dftflow {100 * results['dftflow']['eps_mae'][-1]:.2f} %, "
              f"reference {100 * results['reference']['eps_mae'][-1]:.2f} %; dftflow after {total} steps "
              f"(the reference's time) {100 * results['dftflow']['same_time'][-1][1]:.2f} %")
    r, o = results["reference"], results["dftflow"]

    def pm(values: list[float]) -> str:
        return f"{100 * np.mean(values):.2f} ± {100 * np.std(values):.2f} %"

    rate_o, rate_r = float(np.mean(o["steps_per_s"] or [np.nan])), float(np.mean(r["steps_per_s"] or [np.nan]))
    if not args.inference_only:
        print(f"\ntraining ({args.probes} probes × 2 structures per step, mul {args.mul}, lmax {args.lmax}, "
              f"{args.seeds} seeds):")
        print(f"  steps/s     dftflow {rate_o:.2f}   reference {rate_r:.2f}   ratio {rate_o / rate_r:.2f}x "
              "(target >= 1.5)")
        print(f"  ε_mae after {args.steps} steps (mean over seeds ± std): dftflow {pm(o['eps_mae'])}   "
              f"reference {pm(r['eps_mae'])}")
        print(f"  ε_mae in the reference's training time ({np.mean(r['train_s']):.0f} s): dftflow "
              f"{pm([e for _, e in o['same_time']])} ({np.mean([n for n, _ in o['same_time']]):.0f} steps)   "
              f"reference {pm(r['eps_mae'])}")

    # 3: full-grid inference on the ECD cells at their VASP grids
    grids = {"icsd-1611-O3Pb1Ti1": (60, 60, 60), "icsd-163383-O1Zn1": (48, 48, 48),
             "icsd-183198-Cd1N1": (56, 56, 56), "icsd-99966-Fe10Si6": (108, 108, 72)}
    print("\nfull-grid inference (s per structure; 'per point' evaluates every grid point, "
          "'symmetric' one per space-group orbit):")
    totals = {"sym": 0.0, "all": 0.0, "ref": 0.0, "def": 0.0}
    if args.grid:
        grids = dict.fromkeys(grids, tuple(int(x) for x in args.grid.split(",")))
    for name, grid in ((n, grids[n]) for n in args.cells.split(",")):
        s = Structure.from_file(SHARED / "fixtures" / "ecd_outcars" / f"{name}_PBE" / "POSCAR")
        atoms = Atoms(numbers=[x.specie.Z for x in s], positions=s.cart_coords, cell=s.lattice.matrix, pbc=True)
        t0 = time.perf_counter()
        sym = predict_grid(ours, s, grid)
        t_sym = time.perf_counter() - t0
        t0 = time.perf_counter()
        a = predict_grid(ours, s, grid, symmetry=False)["rho"]
        t_all = time.perf_counter() - t0
        t0 = time.perf_counter()  # the definition (model.probe_density per chunk), as before the probe kernel
        d = predict_grid(ours, s, grid, symmetry=False, kernel=False)["rho"]
        t_def = time.perf_counter() - t0
        t0 = time.perf_counter()
        b = ref.predict_full(grid, atoms)
        t_ref = time.perf_counter() - t0
        for key, t in (("sym", t_sym), ("all", t_all), ("ref", t_ref), ("def", t_def)):
            totals[key] += t
        assert a.size == b.size == np.prod(grid)
        diff = float(np.abs(sym["rho"] - a).max() / np.abs(a).max())
        kdiff = float(np.abs(d - a).max() / np.abs(d).max())
        print(f"  {name:<22} {np.prod(grid):>9,} pts  dftflow symmetric {t_sym:6.1f} "
              f"({sym['symmetry']['spacegroup']}, {sym['points_evaluated']:,} evaluated, max rel. diff {diff:.1e})"
              f"  per point {t_all:6.1f} (definition {t_def:6.1f}, max rel. diff {kdiff:.1e})  reference {t_ref:7.1f}"
              f"  ratios {t_ref / t_sym:5.1f}x / {t_ref / t_all:4.1f}x")
    print(f"  total: dftflow {totals['sym']:.1f} s symmetric, {totals['all']:.1f} s per point; reference "
          f"{totals['ref']:.1f} s; ratio {totals['ref'] / totals['sym']:.1f}x symmetric, "
          f"{totals['ref'] / totals['all']:.1f}x per point (target >= 5); the definition path "
          f"{totals['def']:.1f} s ({totals['ref'] / totals['def']:.1f}x)")
    if not args.skip_big:  # in fresh processes, so that the peak is dftflow's own
        for grid, symmetric in (((240, 240, 174), True), ((240, 240, 18), False)):
            cmd = [sys.executable, __file__, "--reference", str(args.reference), "--mul", str(args.mul),
                   "--lmax", str(args.lmax), "--big-grid", ",".join(map(str, grid))]
            subprocess.run(cmd + ([] if symmetric else ["--no-symmetry"]), check=True)
    shutil.rmtree(tmp, ignore_errors=True)


def peak_rss_mb() -> float:
    """This process's peak resident memory: VmHWM (ru_maxrss carries the parent's peak across exec on Linux)."""
    try:
        for line in Path("/proc/self/status").read_text().splitlines():
            if line.startswith("VmHWM:"):
                return int(line.split()[1]) / 1024
    except OSError:
        pass
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024


def big_grid(args: argparse.Namespace) -> None:
    """Peak resident memory of one prediction on a big grid, in this (fresh) process."""
    from pymatgen.core import Structure

    from dftflow.ml.predict import predict_grid

    grid = tuple(int(x) for x in args.big_grid.split(","))
    ours = ours_model(args.mul, args.lmax).eval()
    s = Structure.from_file(SHARED / "fixtures" / "ecd_outcars" / "icsd-99966-Fe10Si6_PBE" / "POSCAR")
    gc.collect()
    before = peak_rss_mb()
    t0 = time.perf_counter()
    result = predict_grid(ours, s, grid, symmetry=not args.no_symmetry)
    peak = peak_rss_mb()
    print(f"\n{np.prod(grid):.1e}-point grid (Fe10Si6, {'×'.join(map(str, grid))}, "
          f"{result['points_evaluated']:,} evaluated{'' if not args.no_symmetry else ', every point'}): "
          f"{time.perf_counter() - t0:.0f} s, peak RSS {peak:.0f} MB (model and libraries loaded: {before:.0f} MB; "
          f"output grid alone {4 * np.prod(grid) / 2**20:.0f} MB)")


if __name__ == "__main__":
    main()
