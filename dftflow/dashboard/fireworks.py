"""The DFT jobs of a project on the FireWorks engine, read from its LaunchPad without writing anything.

``dftflow status`` opens the LaunchPad to write (it recovers offline rockets and
settles allocations); the dashboard never does. It reads:

* a ``mongomock:FILE`` LaunchPad as the JSON file it is. dftflow replaces that file
  by an atomic rename (:mod:`dftflow.execution.fw_launchpad`), so a plain read sees
  one whole state; no lock is taken, and FireWorks' mongomock persistence (whose
  client rewrites the file when it is garbage-collected) is never imported;
* a MongoDB LaunchPad (a ``mongodb://`` URI or FireWorks' LaunchPad YAML) with
  pymongo ``find`` queries only.

What it shows is the LaunchPad as last recovered by ``dftflow status``/``submit``:
an offline rocket that has finished on a compute node appears once one of them
has read its ``FW_offline.json`` back.
"""

from __future__ import annotations

import datetime as dt
import os
from collections import Counter
from collections.abc import Callable
from pathlib import Path
from typing import Any
from urllib.parse import urlparse

from dftflow.execution.fw_engine import FAILED_STATES, STATES, fizzle_reason, project_key

_FW_FIELDS = ("fw_id", "name", "state", "launches", "archived_launches", "spec", "updated_on")
_LAUNCH_FIELDS = ("launch_id", "fworker", "host", "state", "action", "runtime_secs", "time_start", "time_end",
                  "state_history", "launch_dir")
#: FireWorks' own record of an offline launch, linked beside dftflow's logs.
FW_LOG_NAMES = ("FW_offline.json",)


def engine_settings(root: Path) -> Any | None:
    """The ``fireworks`` settings of a project submitted with ``engine: fireworks`` (its ``submit.json``), else None."""
    from dftflow.errors import DftflowError
    from dftflow.execution.fw_project import fireworks_profile

    try:
        profile = fireworks_profile(root)
    except (DftflowError, KeyError) as exc:  # answered as an error of the jobs view; the page polls again
        raise ValueError(f"submit.json: cannot load the cluster profile: {exc}") from exc
    return None if profile is None else profile.fireworks


def mock_file(settings: Any, root: Path) -> Path | None:
    from dftflow.execution.fw_launchpad import mock_file as _mock_file

    return _mock_file(settings, root)


# -- reading the LaunchPad -----------------------------------------------------------------------
def _from_mock(path: Path, key: str) -> tuple[list[dict[str, Any]], dict[int, dict[str, Any]]]:
    """The project's fireworks and every launch, from mongomock persistence's JSON (``{db: {coll: {documents}}}``)."""
    from bson import json_util

    data = json_util.loads(path.read_text(encoding="utf-8"))
    db = data.get("fireworks") or next((d for d in data.values() if isinstance(d, dict) and "fireworks" in d), {})

    def documents(name: str) -> list[dict[str, Any]]:
        return [doc for _, doc in (db.get(name) or {}).get("documents", [])]

    fireworks = [fw for fw in documents("fireworks") if ((fw.get("spec") or {}).get("_dftflow") or {})
                 .get("project") == key]
    launches = {d["launch_id"]: d for d in documents("launches") if "launch_id" in d}
    return fireworks, launches


def _mongo_database(settings: Any, root: Path) -> Any:
    """A pymongo database of a MongoDB LaunchPad (URI or LaunchPad YAML); only ``find`` is used on it."""
    import pymongo

    spec = os.path.expandvars(settings.launchpad)
    if "${" in spec:
        raise ValueError(f"fireworks.launchpad {settings.launchpad}: unset environment variable")
    if spec.startswith(("mongodb://", "mongodb+srv://")):
        client = pymongo.MongoClient(spec, serverSelectionTimeoutMS=5000)
        return client, client[urlparse(spec).path.lstrip("/") or settings.database]
    import yaml

    file = Path(os.path.expanduser(spec))
    file = file if file.is_absolute() else root / file
    conf = yaml.safe_load(file.read_text()) or {}
    kwargs = dict(conf.get("mongoclient_kwargs") or {})
    kwargs.setdefault("serverSelectionTimeoutMS", 5000)
    name = conf.get("name") or settings.database
    if conf.get("uri_mode"):
        client = pymongo.MongoClient(conf["host"], **kwargs)
        return client, client[urlparse(conf["host"]).path.lstrip("/") or name]
    for option, value in (("username", conf.get("username")), ("password", conf.get("password")),
                          ("authSource", conf.get("authsource"))):
        if value is not None:
            kwargs.setdefault(option, value)
    client = pymongo.MongoClient(conf.get("host") or "localhost", int(conf.get("port") or 27017), **kwargs)
    return client, client[name]


def _from_mongo(settings: Any, root: Path, key: str) -> tuple[list[dict[str, Any]], dict[int, dict[str, Any]]]:
    from pymongo.errors import PyMongoError

    client, db = _mongo_database(settings, root)
    try:
        fireworks = list(db.fireworks.find({"spec._dftflow.project": key}, dict.fromkeys(_FW_FIELDS, 1)))
        ids = [i for fw in fireworks for i in (fw.get("launches") or [])[-1:]]
        launches = {d["launch_id"]: d for d in db.launches.find({"launch_id": {"$in": ids}},
                                                                 dict.fromkeys(_LAUNCH_FIELDS, 1))} if ids else {}
    except PyMongoError as exc:  # server unreachable, authentication: the page says so and polls again
        raise OSError(f"LaunchPad: {type(exc).__name__}: {exc}") from exc
    finally:
        client.close()
    return fireworks, launches


# -- the view ------------------------------------------------------------------------------------
def _epoch(value: Any) -> float | None:
    if isinstance(value, dt.datetime):
        return (value if value.tzinfo else value.replace(tzinfo=dt.UTC)).timestamp()
    if isinstance(value, str):
        try:
            return _epoch(dt.datetime.fromisoformat(value))
        except ValueError:
            return None
    return None


def _started(launch: dict[str, Any] | None) -> float | None:
    if not launch:
        return None
    if launch.get("time_start"):
        return _epoch(launch["time_start"])
    running = [h for h in launch.get("state_history") or [] if h.get("state") == "RUNNING"]
    return _epoch(running[0].get("created_on")) if running else None


def _heartbeat(launch: dict[str, Any] | None) -> float | None:
    history = (launch or {}).get("state_history") or []
    return _epoch(history[-1].get("updated_on") or history[-1].get("created_on")) if history else None


def _worker(launch: dict[str, Any] | None) -> str | None:
    fworker = (launch or {}).get("fworker")
    return fworker.get("name") if isinstance(fworker, dict) else None


def _finished(launch: dict[str, Any] | None) -> float | None:
    if not launch:
        return None
    if launch.get("time_end"):
        return _epoch(launch["time_end"])
    done = [h for h in launch.get("state_history") or [] if h.get("state") in ("COMPLETED", "FIZZLED")]
    return _epoch(done[-1].get("created_on")) if done else None


def jobs(root: Path, settings: Any, log_files: Callable[[Path, str, str, str], list[str]], *,
         cached: Callable[[str, Path, Callable[[], Any]], Any] | None = None, recent: int = 15,
         max_failures: int = 200) -> dict[str, Any]:
    """The dashboard's jobs view (same keys as for ``jobs.sqlite``) over the project's fireworks."""
    import time

    key = project_key(root)
    path = mock_file(settings, root)
    where = "mongomock:" + (os.path.relpath(path, root) if path is not None else "")
    empty = {"engine": "fireworks", "states": list(STATES), "failed_label": "fizzled or defused",
             "launchpad": where if path is not None else "MongoDB", "exists": False,
             "counts": dict.fromkeys(STATES, 0), "total": 0, "running": [], "recent": [], "failures": [],
             "failed_total": 0, "failure_reasons": [], "at": time.time()}
    if path is not None:
        if not path.is_file():
            return empty
        read = lambda: _from_mock(path, key)  # noqa: E731
        fireworks, launches = cached("fireworks", path, read) if cached else read()
    else:
        fireworks, launches = _from_mongo(settings, root, key)
    fireworks = sorted(fireworks, key=lambda d: d["fw_id"])
    counts = {**dict.fromkeys(STATES, 0), **Counter(fw["state"] for fw in fireworks)}
    rows = []
    for fw in fireworks:
        tag = fw["spec"]["_dftflow"]
        launch = launches.get(fw["launches"][-1]) if fw.get("launches") else None
        rows.append((fw, tag, launch, len(fw.get("launches") or []) + len(fw.get("archived_launches") or [])))
    running = [{"uid": tag["uid"], "job": fw["name"], "fw_id": fw["fw_id"], "worker": _worker(launch),
                "host": (launch or {}).get("host"), "attempts": n, "started": _started(launch),
                "heartbeat": _heartbeat(launch)}
               for fw, tag, launch, n in rows if fw["state"] == "RUNNING"]
    running.sort(key=lambda r: r["started"] or 0)
    done = [{"uid": tag["uid"], "job": fw["name"], "fw_id": fw["fw_id"], "state": fw["state"],
             "finished": _finished(launch), "seconds": (launch or {}).get("runtime_secs")}
            for fw, tag, launch, n in rows if fw["state"] in ("COMPLETED", "FIZZLED") and launch]
    done.sort(key=lambda r: r["finished"] or 0, reverse=True)
    failed = [{"uuid": tag["job_uuid"], "uid": tag["uid"], "job": fw["name"], "fw_id": fw["fw_id"],
               "state": fw["state"], "attempts": n,
               "reason": fizzle_reason(launch) if fw["state"] == "FIZZLED" else None,
               "finished": _finished(launch)}
              for fw, tag, launch, n in rows if fw["state"] in FAILED_STATES]
    failed.sort(key=lambda r: (-(r["finished"] or 0), r["fw_id"]))
    for r in failed[:max_failures]:
        r["logs"] = log_files(root, r["uid"], r["job"], r["uuid"])
    reasons = Counter(r["reason"] for r in failed)
    return {**empty, "exists": True, "counts": counts, "total": len(fireworks), "running": running[:200],
            "recent": done[:recent], "failures": failed[:max_failures], "failed_total": len(failed),
            "failure_reasons": [[r or "?", n] for r, n in reasons.most_common(10)], "at": time.time()}
