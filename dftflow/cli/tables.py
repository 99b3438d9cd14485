"""Rich tables shared by several commands."""

from __future__ import annotations

from typing import Any

from rich.table import Table


def funnel_table(rows: list[dict[str, Any]], title: str = "screening funnel") -> Table:
    table = Table("step", "entered", "passed", "failed", "undetermined", "top reasons", title=title)
    for r in rows:
        reasons = "; ".join(f"{reason} ({n})" for reason, n in r["reasons"])
        table.add_row(r["step"], str(r["entered"]), str(r["passed"]), str(r["failed"]),
                      str(r["undetermined"]), reasons)
    return table


def dft_table(rows: list[dict[str, Any]], title: str = "DFT results") -> Table:
    table = Table("structure", "job", "state", "energy (eV)", "SCF", "electrons / expected", "wall (s)", "note",
                  title=title)
    for r in rows:
        electrons = (f"{r['electrons']:.4f} / {r['expected']:.0f}"
                     if r.get("electrons") is not None and r.get("expected") is not None else "")
        table.add_row(r["uid"], r["job"], r["state"],
                      f"{r['energy']:.4f}" if r.get("energy") is not None else "",
                      str(r["n_scf"] if r.get("n_scf") is not None else r.get("ionic_steps") or ""),
                      electrons, f"{r['wall_s']:.1f}" if r.get("wall_s") is not None else "",
                      r.get("error") or "")
    return table
