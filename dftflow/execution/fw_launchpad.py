"""Open the FireWorks LaunchPad of a cluster profile: MongoDB, or mongomock persisted in one JSON file.

FireWorks' mongomock persistence (``MONGOMOCK_SERVERSTORE_FILE``, the
``mongomock-persistence`` package) reads the whole file when a client is made
and rewrites it, in place, when the client is garbage-collected. Used as it is,
two processes each write back their own copy (the last one wins, the other's
additions are lost) and a kill during the rewrite truncates the file.
:func:`open_launchpad` therefore holds an exclusive ``flock`` on ``FILE.lock``
for the whole opening, reads the file after taking it, and on a clean exit
writes the state to a temporary file and renames it over ``FILE`` (a reader
sees the old or the new state, never half of one). After an exception nothing
is written: the opening is all or nothing. This makes every process on *one
host* (the submit host) a safe writer, one at a time; compute nodes never open
it (offline rockets, :mod:`dftflow.execution.fw_launches`).

A MongoDB LaunchPad (a URI or FireWorks' LaunchPad YAML) is opened as FireWorks
opens it, without a lock: MongoDB's own atomic operations apply.
"""

from __future__ import annotations

import fcntl
import os
import sys
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any
from urllib.parse import urlparse

from dftflow.config.profile import FireworksSettings
from dftflow.errors import ConfigError

MOCK = "mongomock:"


def mock_file(settings: FireworksSettings, root: Path) -> Path | None:
    """The JSON file of a ``mongomock:FILE`` LaunchPad (relative to the project), or None."""
    if not settings.launchpad.startswith(MOCK):
        return None
    path = Path(os.path.expanduser(settings.launchpad[len(MOCK):]))
    return path if path.is_absolute() else Path(root) / path


def _import_fireworks_for_mock(path: Path) -> Any:
    """Import FireWorks with its mongomock client (chosen when ``fireworks`` is first imported)."""
    if "fireworks" not in sys.modules and "MONGOMOCK_SERVERSTORE_FILE" not in os.environ:
        os.environ["MONGOMOCK_SERVERSTORE_FILE"] = str(path)
        try:
            import fireworks.fw_config  # noqa: F401 - reads the variable once, at import
        finally:
            del os.environ["MONGOMOCK_SERVERSTORE_FILE"]  # not inherited by sbatch and the compute nodes
    import fireworks.fw_config as fw_config

    try:
        import mongomock_persistence
    except ImportError as exc:  # pragma: no cover - an install without the fireworks extra
        raise ConfigError("launchpad mongomock:... needs mongomock-persistence (pip install 'fireworks[mongomock]')") \
            from exc
    if fw_config.MongoClient is not mongomock_persistence.MongoClient:
        raise ConfigError("launchpad mongomock:...: FireWorks was already imported in this process with a MongoDB "
                          "client; set MONGOMOCK_SERVERSTORE_FILE before starting dftflow")
    from fireworks import LaunchPad

    return LaunchPad


def import_fireworks(settings: FireworksSettings, root: Path) -> None:
    """Import FireWorks as the profile's LaunchPad needs it: with mongomock's client for ``mongomock:FILE``.

    For code that needs FireWorks before the LaunchPad is opened (``CommonAdapter`` in ``profiles check``):
    FireWorks picks its MongoDB client once, at its first import in a process.
    """
    path = mock_file(settings, root)
    if path is not None:
        _import_fireworks_for_mock(path)


def _initialise(lp: Any) -> None:
    """A new LaunchPad (no fireworks, no id counter) gets FireWorks' id counter, as ``lpad reset`` would."""
    if lp.fw_id_assigner.count_documents({}) == 0:
        if lp.fireworks.count_documents({}) > 0:
            raise ConfigError(f"LaunchPad {lp.name}: fireworks but no id counter; repair it with lpad admin tools")
        lp.fw_id_assigner.insert_one({"next_fw_id": 1, "next_launch_id": 1})


def _write_atomically(path: Path, text: str) -> None:
    tmp = path.with_name(path.name + f".tmp{os.getpid()}")
    with open(tmp, "w", encoding="utf-8") as fh:
        fh.write(text)
        fh.flush()
        os.fsync(fh.fileno())
    os.replace(tmp, path)


@contextmanager
def _mock_launchpad(path: Path) -> Iterator[Any]:
    from bson import json_util

    path.parent.mkdir(parents=True, exist_ok=True)
    with open(path.with_name(path.name + ".lock"), "a") as lock:
        fcntl.flock(lock, fcntl.LOCK_EX)
        try:
            if not path.exists() or path.stat().st_size == 0:
                _write_atomically(path, "{}")
            launchpad_cls = _import_fireworks_for_mock(path)
            before = os.environ.get("MONGOMOCK_SERVERSTORE_FILE")
            os.environ["MONGOMOCK_SERVERSTORE_FILE"] = str(path)  # read by each new client's store
            try:
                lp = launchpad_cls(strm_lvl="ERROR")
            finally:
                if before is None:
                    os.environ.pop("MONGOMOCK_SERVERSTORE_FILE", None)
                else:
                    os.environ["MONGOMOCK_SERVERSTORE_FILE"] = before
            store = lp.connection._store
            store._finalizer.detach()  # never FireWorks' in-place rewrite at exit: ours below, or none
            _initialise(lp)
            yield lp
            _write_atomically(path, json_util.dumps(store.to_dict()))
        finally:
            fcntl.flock(lock, fcntl.LOCK_UN)


def _database(uri: str, default: str) -> str:
    name = urlparse(uri).path.lstrip("/")
    return name or default


@contextmanager
def open_launchpad(settings: FireworksSettings, root: Path) -> Iterator[Any]:
    """The profile's LaunchPad, initialised if new; a mongomock one is locked and saved atomically on exit."""
    path = mock_file(settings, root)
    if path is not None:
        with _mock_launchpad(path) as lp:
            yield lp
        return
    from fireworks import LaunchPad

    spec = os.path.expandvars(settings.launchpad)  # ${DFTFLOW_DB_PASSWORD} and the like
    if "${" in spec:
        raise ConfigError(f"fireworks.launchpad {settings.launchpad}: unset environment variable")
    if spec.startswith(("mongodb://", "mongodb+srv://")):
        lp = LaunchPad(host=spec, uri_mode=True, name=_database(spec, settings.database), strm_lvl="ERROR")
    else:
        file = Path(os.path.expanduser(spec))
        file = file if file.is_absolute() else Path(root) / file
        if not file.exists():
            raise ConfigError(f"fireworks.launchpad: {file} does not exist (a LaunchPad YAML, a mongodb:// URI "
                              "or mongomock:FILE)")
        lp = LaunchPad.from_file(str(file))
    try:
        _initialise(lp)
        yield lp
    finally:
        lp.connection.close()
