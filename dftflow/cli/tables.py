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
