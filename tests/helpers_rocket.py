"""jobflow jobs for the rocket tests (module level, so a stored job can be rebuilt from its import path)."""

from __future__ import annotations

import os
from pathlib import Path

from jobflow import job


@job
def vasp_like(stopcar: str | None = None, after_vasp: bool = False) -> dict:
    """Leave the files of a VASP run in the job directory; ``stopcar``: also a STOPCAR with that content.

    By default the STOPCAR is older than VASP's outputs (custodian wrote it while VASP ran, so VASP
    stopped); ``after_vasp``: newer (custodian's last check after VASP had ended).
    """
    outcar, stop = Path("OUTCAR"), Path("STOPCAR")
    outcar.write_text("a VASP run\n")
    if stopcar is not None:
        stop.write_text(stopcar + "\n")
        t = outcar.stat().st_mtime
        os.utime(stop, (t + 1, t + 1) if after_vasp else (t - 1, t - 1))
    return {"dir": str(Path.cwd())}


@job
def walltime_start() -> str | None:
    """What a custodian ``WalltimeHandler`` made now would take as its start; then set it, as the handler does."""
    seen = os.environ.get("CUSTODIAN_WALLTIME_START")
    os.environ["CUSTODIAN_WALLTIME_START"] = "set by an earlier job"
    return seen
