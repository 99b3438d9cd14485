"""Figures of a candidate pool, in the style of the ECD paper's dataset overview.

``elements.png``: how many structures contain each element, laid out on the
periodic table (log colour scale). ``sizes.png``: sites per cell for the
imported, kept and selected structures.
"""

from __future__ import annotations

import json
from collections import Counter
from pathlib import Path

import numpy as np

from dftflow.catalog import Catalog


def _table_position(z: int) -> tuple[int, int]:
    """(row, column) of element ``z`` in the 18-column table, f-block rows 8 and 9."""
    from pymatgen.core import Element

    el = Element.from_Z(z)
    if 57 <= z <= 71:
        return 8, 3 + (z - 57)
    if 89 <= z <= 103:
        return 9, 3 + (z - 89)
    return el.row, el.group


def plot_periodic_table(counts: Counter[str], path: Path, title: str) -> Path:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt
    from matplotlib.colors import LogNorm
    from matplotlib.patches import Rectangle
    from pymatgen.core import Element

    fig, ax = plt.subplots(figsize=(12, 6.8))
    vmax = max(counts.values(), default=1)
    norm = LogNorm(vmin=1, vmax=max(vmax, 2))
    cmap = plt.get_cmap("viridis")
    for z in range(1, 104):
        el = Element.from_Z(z)
        row, col = _table_position(z)
        n = counts.get(el.symbol, 0)
        face = cmap(norm(n)) if n else (0.93, 0.93, 0.93)
        ax.add_patch(Rectangle((col - 0.5, -row - 0.5 + (0.5 if row >= 8 else 0)), 0.95, 0.95,
                               facecolor=face, edgecolor="white"))
        y = -row + (0.5 if row >= 8 else 0)
        light = n and norm(n) < 0.6
        ax.text(col - 0.03, y + 0.12, el.symbol, ha="center", va="center", fontsize=9,
                color="white" if light else "black", weight="bold")
        if n:
            ax.text(col - 0.03, y - 0.22, str(n), ha="center", va="center", fontsize=6,
                    color="white" if light else "black")
    ax.set_xlim(0.3, 18.7)
    ax.set_ylim(-9.2, -0.3)
    ax.set_aspect("equal")
    ax.axis("off")
    sm = plt.cm.ScalarMappable(norm=norm, cmap=cmap)
    fig.colorbar(sm, ax=ax, fraction=0.025, pad=0.01, label="structures containing the element")
    ax.set_title(title)
    fig.tight_layout()
    path.parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(path, dpi=120)
    plt.close(fig)
    return path


def plot_sizes(groups: dict[str, list[int]], path: Path) -> Path:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, ax = plt.subplots(figsize=(7, 4))
    values = [v for vs in groups.values() for v in vs]
    if values:
        bins = np.arange(0.5, max(values) + 1.5, max(1, (max(values) + 1) // 40))
        for label, vs in groups.items():
            if vs:
                ax.hist(vs, bins=bins, histtype="step", linewidth=2, label=f"{label} ({len(vs)})")
        ax.legend()
    ax.set_xlabel("sites per cell")
    ax.set_ylabel("structures")
    ax.set_title("Structure sizes")
    fig.tight_layout()
    path.parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(path, dpi=120)
    plt.close(fig)
    return path


def write_figures(catalog: Catalog, out_dir: Path) -> list[Path]:
    """Write the element and size figures for the kept pool (and each selection)."""
    rows = {u: (json.loads(e), n) for u, e, n in catalog.db.execute(
        "SELECT uid, elements, nsites FROM structures WHERE status='ok'")}
    kept = [u for (u,) in catalog.db.execute(
        "SELECT uid FROM outcomes WHERE filter='dedup' AND status='pass'")]
    if not kept:  # the dedup stage has not run: the structures that passed every filter
        kept = [u for (u,) in catalog.db.execute(
            "SELECT uid FROM outcomes WHERE filter='symmetry' AND status='pass'")]
    paths = []
    counts = Counter(e for u in kept for e in rows[u][0])
    paths.append(plot_periodic_table(counts, out_dir / "elements.png",
                                     f"Elements in the kept pool ({len(kept)} structures)"))
    sizes = {"imported": [n for _, n in rows.values()], "kept": [rows[u][1] for u in kept]}
    for (name,) in catalog.db.execute("SELECT DISTINCT name FROM selections ORDER BY name"):
        chosen = catalog.selection(name)
        sizes[f"selection {name}"] = [rows[u][1] for u in chosen]
        sel_counts = Counter(e for u in chosen for e in rows[u][0])
        paths.append(plot_periodic_table(sel_counts, out_dir / f"elements_{name}.png",
                                         f"Elements in selection '{name}' ({len(chosen)} structures)"))
    paths.append(plot_sizes(sizes, out_dir / "sizes.png"))
    return paths
