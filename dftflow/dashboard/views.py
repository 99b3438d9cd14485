"""What the dashboard shows, as JSON-ready dicts read from one project directory (read-only).

Each function takes the project root and reads its files through
:mod:`dftflow.readonly` connections that live for one call. Paths returned to
the page are relative to the project root (the server serves them under
``/files/``).
"""

from __future__ import annotations

import csv
import json
import math
import threading
import time
from collections import Counter
from collections.abc import Callable
from pathlib import Path
from typing import Any

from dftflow import readonly
from dftflow.execution.queue import STATES

#: Files of a job directory that the failures table links to (the engine's and dftflow's logs).
LOG_NAMES = ("error.txt", "gpaw.txt", "relax.log", "std_err.txt", "std_out.txt", "OSZICAR", "OUTCAR",
             "custodian.json", "vasp.out", "result.json")
#: Directories never searched for datasets, training runs and reports (large or not dftflow's output).
_SKIP_DIRS = {"calcs", "shards", "figures", "__pycache__", ".git"}
_MAX_POINTS = 2000


_cache: dict[tuple[str, str], tuple[tuple, Any]] = {}
_cache_lock = threading.Lock()


def _signature(path: Path) -> tuple:
    """Changes whenever ``path`` (a SQLite file with its WAL, or any file) is written."""
    out: list[Any] = []
    for p in (path, Path(f"{path}-wal")):
        try:
            st = p.stat()
            out += [st.st_mtime_ns, st.st_size, st.st_ino]
        except OSError:
            out += [None]
    return tuple(out)


def _cached(kind: str, path: Path, compute: Callable[[], Any]) -> Any:
    """``compute()``, reused until ``path`` changes (large catalogs and training logs are read once per change)."""
    key, sig = (kind, str(path)), _signature(path)
    with _cache_lock:
        hit = _cache.get(key)
    if hit is not None and hit[0] == sig:
        return hit[1]
    value = compute()
    with _cache_lock:
        _cache[key] = (sig, value)
    return value


def _rel(root: Path, path: Path) -> str:
    return path.relative_to(root).as_posix()


def find(root: Path, marker: str, depth: int = 3) -> list[Path]:
    """Directories up to ``depth`` levels below ``root`` (itself included) that hold a file named ``marker``."""
    found: list[Path] = []
    level = [root]
    for _ in range(depth + 1):
        nxt = []
        for d in level:
            if (d / marker).is_file() and not (d / marker).is_symlink():
                found.append(d)
            try:
                nxt += sorted(c for c in d.iterdir() if c.is_dir() and not c.is_symlink()
                              and c.name not in _SKIP_DIRS and not c.name.startswith("."))
            except OSError:
                continue
        level = nxt
    return found


def _pngs(root: Path, folder: Path) -> list[str]:
    return [_rel(root, p) for p in sorted(folder.glob("*.png")) if p.is_file() and not p.is_symlink()]


# -- funnel and candidates ---------------------------------------------------------------------
def funnel(root: Path) -> dict[str, Any]:
    """The screening funnel (rows as ``dftflow candidates funnel``) and the project's figures."""
    from dftflow.catalog import Catalog
    from dftflow.screening.stages import funnel as funnel_rows

    path = root / "catalog.sqlite"
    rows: list[dict[str, Any]] = []
    if path.exists():
        def compute() -> list[dict[str, Any]]:
            catalog = Catalog.reader(path)
            try:
                return funnel_rows(catalog)
            finally:
                catalog.close()

        rows = _cached("funnel", path, compute)
    reasons: Counter[str] = Counter()
    for r in rows:
        for reason, n in r["reasons"]:
            reasons[f"{r['step']}: {reason}"] += n
    return {"catalog": path.exists(), "funnel": rows, "top_reasons": reasons.most_common(10),
            "figures": _pngs(root, root / "figures") if (root / "figures").is_dir() else []}


def candidates(root: Path, query: str = "", state: str = "", offset: int = 0, limit: int = 100) -> dict[str, Any]:
    """Catalog entries with the state each one reached and why (``dftflow candidates list``), searched and paged.

    ``query`` matches (case-insensitively) anywhere in the uid, formula, state or reason; ``state`` is
    an exact state (``kept``, ``duplicate``, ``import failed``, ``<filter>: fail`` ...).
    """
    from dftflow.catalog import Catalog
    from dftflow.screening.stages import list_entries

    path = root / "catalog.sqlite"
    if not path.exists():
        return {"total": 0, "matched": 0, "states": {}, "rows": [], "offset": 0}
    def compute() -> list[dict[str, Any]]:
        catalog = Catalog.reader(path)
        try:
            return list_entries(catalog)
        finally:
            catalog.close()

    entries = _cached("candidates", path, compute)
    states = Counter(e["state"] for e in entries)
    q = query.strip().lower()
    hits = [e for e in entries if (not state or e["state"] == state)
            and (not q or any(q in str(e[k] or "").lower() for k in ("uid", "formula", "state", "reason")))]
    offset = max(0, offset)
    return {"total": len(entries), "matched": len(hits), "states": dict(states.most_common()),
            "offset": offset, "rows": hits[offset: offset + max(1, min(limit, 1000))]}


# -- DFT jobs ----------------------------------------------------------------------------------
def _log_files(root: Path, flow_id: str, name: str, uuid: str, names: tuple[str, ...] = LOG_NAMES) -> list[str]:
    from dftflow.execution.worker import job_dir_for

    folder = job_dir_for(root, flow_id, name, uuid)
    out = []
    for log in names:
        p = folder / log
        if p.is_file():
            out.append(_rel(root, p))
    return out


def jobs(root: Path, recent: int = 15, max_failures: int = 200) -> dict[str, Any]:
    """DFT jobs by state, those running, the latest finished, and every failure with its reason and logs.

    A project on the FireWorks engine (``submit.json``) is read from its LaunchPad instead, without
    writing to it (:mod:`dftflow.dashboard.fireworks`).
    """
    from dftflow.dashboard import fireworks

    settings = fireworks.engine_settings(root)
    if settings is not None:
        def fw_logs(root_: Path, uid: str, name: str, uuid: str) -> list[str]:
            return _log_files(root_, uid, name, uuid, LOG_NAMES + fireworks.FW_LOG_NAMES)

        return fireworks.jobs(root, settings, fw_logs, cached=_cached, recent=recent, max_failures=max_failures)
    embedded = {"engine": "embedded", "states": list(STATES), "failed_label": "failed or lost"}
    path = root / "jobs.sqlite"
    if not path.exists():
        return {**embedded, "exists": False, "counts": dict.fromkeys(STATES, 0), "total": 0, "running": [],
                "recent": [], "failures": [], "failed_total": 0, "failure_reasons": [], "at": time.time()}
    with readonly.reading(path) as db:
        counts = dict.fromkeys(STATES, 0)
        counts.update(dict(db.execute("SELECT state, COUNT(*) FROM jobs GROUP BY state")))
        running = [{"uid": f, "job": n, "worker": w, "host": h, "attempts": a, "started": s, "heartbeat": b}
                   for f, n, w, h, a, s, b in db.execute(
                       "SELECT flow_id, name, worker, host, attempts, started, heartbeat FROM jobs "
                       "WHERE state='RUNNING' ORDER BY started LIMIT 200")]
        done = [{"uid": f, "job": n, "state": s, "finished": fi, "seconds": (fi - st) if fi and st else None}
                for f, n, s, fi, st in db.execute(
                    "SELECT flow_id, name, state, finished, started FROM jobs WHERE finished IS NOT NULL "
                    "ORDER BY finished DESC LIMIT ?", (recent,))]
        failed = db.execute("SELECT uuid, flow_id, name, state, attempts, error, finished FROM jobs "
                            "WHERE state IN ('FAILED','LOST') ORDER BY finished DESC, rowid LIMIT ?",
                            (max_failures,)).fetchall()
        reasons = db.execute("SELECT error, COUNT(*) AS n FROM jobs WHERE state IN ('FAILED','LOST') "
                             "GROUP BY error ORDER BY n DESC LIMIT 10").fetchall()
    failures = [{"uuid": u, "uid": f, "job": n, "state": s, "attempts": a, "reason": e, "finished": fi,
                 "logs": _log_files(root, f, n, u)} for u, f, n, s, a, e, fi in failed]
    return {**embedded, "exists": True, "counts": counts, "total": sum(counts.values()), "running": running,
            "recent": done, "failures": failures, "failed_total": counts["FAILED"] + counts["LOST"],
            "failure_reasons": [[r or "?", n] for r, n in reasons], "at": time.time()}


# -- datasets ----------------------------------------------------------------------------------
def _grid_summary(grids: list[list[int]]) -> dict[str, Any]:
    points = sorted(math.prod(g) for g in grids)
    if not points:
        return {"n": 0}
    shapes = Counter("×".join(str(x) for x in g) for g in grids)
    return {"n": len(points), "min": points[0], "median": points[len(points) // 2], "max": points[-1],
            "total": sum(points), "shapes": shapes.most_common(15)}


def datasets(root: Path, max_rows: int = 500) -> list[dict[str, Any]]:
    """Every HDF5 dataset in the project: materials, grid sizes, functionals, and the quarantine with reasons."""
    out = []
    for folder in find(root, "manifest.sqlite"):
        with readonly.reading(folder / "manifest.sqlite") as db:
            states = dict(db.execute("SELECT state, COUNT(*) FROM materials GROUP BY state"))
            rows = db.execute("SELECT material_id, formula, nsites, grid, functional, engine, nbytes FROM materials "
                              "WHERE state='stored' ORDER BY material_id").fetchall()
            quarantine = db.execute("SELECT material_id, source, reason, at FROM quarantine "
                                    "ORDER BY at DESC").fetchall()
        grids = [json.loads(r[3]) for r in rows if r[3]]
        out.append({
            "path": _rel(root, folder) or ".", "materials": len(rows), "states": states,
            "functionals": dict(Counter(r[4] or "unknown" for r in rows)),
            "engines": dict(Counter(r[5] or "unknown" for r in rows)),
            "bytes": sum(r[6] or 0 for r in rows), "grid": _grid_summary(grids),
            "rows": [{"material_id": m, "formula": f, "nsites": n, "grid": json.loads(g) if g else None,
                      "functional": fu, "engine": e, "nbytes": b} for m, f, n, g, fu, e, b in rows[:max_rows]],
            "quarantined": len(quarantine),
            "quarantine": [{"material_id": m, "source": s, "reason": r, "at": a}
                           for m, s, r, a in quarantine[:max_rows]],
        })
    return out


# -- training runs -----------------------------------------------------------------------------
def _number(text: str) -> float | None:
    try:
        value = float(text)
    except (TypeError, ValueError):
        return None
    return value if math.isfinite(value) else None


def _thin(points: list[list[float]]) -> list[list[float]]:
    if len(points) <= _MAX_POINTS:
        return points
    stride = math.ceil(len(points) / _MAX_POINTS)
    return points[::stride] + ([points[-1]] if (len(points) - 1) % stride else [])


def training(root: Path) -> list[dict[str, Any]]:
    """Every training run in the project (a folder with ``log.csv``): loss and validation ε_mae per step."""
    out = []
    for folder in find(root, "log.csv"):
        curves = _cached("training", folder / "log.csv", lambda f=folder: _read_log(f / "log.csv"))
        out.append({"path": _rel(root, folder) or ".", **curves,
                    "checkpoints": sorted(p.name for p in folder.glob("checkpoint*.pt")),
                    "figures": _pngs(root, folder)})
    return out


def _read_log(path: Path) -> dict[str, Any]:
    """Loss and validation curves of a trainer's ``log.csv`` (a line still being written is left out)."""
    with open(path, newline="") as fh:
        reader = csv.reader(fh)
        header = next(reader, [])
        col = {name: i for i, name in enumerate(header)}
        i_step, i_loss, i_val = col.get("step"), col.get("loss"), col.get("val_eps_mae")
        loss: list[list[float]] = []
        val: list[list[float]] = []
        if i_step is not None:
            for row in reader:
                if len(row) != len(header) or (step := _number(row[i_step])) is None:
                    continue
                if i_loss is not None and (v := _number(row[i_loss])) is not None:
                    loss.append([step, v])
                if i_val is not None and row[i_val] and (v := _number(row[i_val])) is not None:
                    val.append([step, v])
    best = min(val, key=lambda p: p[1]) if val else None
    return {"steps": int(loss[-1][0]) if loss else 0, "last_loss": loss[-1][1] if loss else None,
            "best_val": best, "loss": _thin(loss), "val": _thin(val)}


# -- accel-eval and nscf-eval reports ----------------------------------------------------------
def _scalar_columns(rows: list[dict[str, Any]]) -> list[str]:
    columns: list[str] = []
    for r in rows:
        columns += [k for k, v in r.items() if k not in columns and (v is None or isinstance(v, str | int | float))]
    return columns


def reports(root: Path, max_rows: int = 1000) -> list[dict[str, Any]]:
    """accel-eval (``accel.json``) and nscf-eval (``nscf.json``) reports: summary, per-material rows, PNGs."""
    out = []
    for kind, marker in (("accel-eval", "accel.json"), ("nscf-eval", "nscf.json")):
        for folder in find(root, marker):
            try:
                report = json.loads((folder / marker).read_text())
            except (OSError, ValueError) as exc:
                out.append({"kind": kind, "path": _rel(root, folder) or ".", "error": f"{marker}: {exc}"})
                continue
            rows = [r for r in report.get("materials", []) if isinstance(r, dict)]
            out.append({"kind": kind, "path": _rel(root, folder) or ".", "summary": report.get("summary"),
                        "columns": _scalar_columns(rows), "rows": rows[:max_rows], "materials": len(rows),
                        "figures": _pngs(root, folder)})
    return out


def overview(root: Path) -> dict[str, Any]:
    """The project's name and what it holds (for the page's header)."""
    recipe = None
    if (root / "recipe.json").is_file():
        try:
            recipe = json.loads((root / "recipe.json").read_text()).get("name")
        except (OSError, ValueError, AttributeError):
            recipe = None
    return {"project": str(root), "name": root.name, "recipe": recipe,
            "has": {name: (root / name).exists() for name in ("catalog.sqlite", "jobs.sqlite", "figures")}}
