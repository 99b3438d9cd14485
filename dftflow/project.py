"""A dftflow project directory: catalog, figures, and a lock against concurrent writers."""

from __future__ import annotations

import fcntl
import json
import os
import socket
import time
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path

from dftflow.catalog import Catalog
from dftflow.errors import ProjectBusyError


@dataclass
class Project:
    root: Path

    @property
    def catalog_path(self) -> Path:
        return self.root / "catalog.sqlite"

    @property
    def figures_dir(self) -> Path:
        return self.root / "figures"

    @property
    def lock_path(self) -> Path:
        return self.root / ".lock"

    def catalog(self) -> Catalog:
        return Catalog(self.catalog_path)

    @contextmanager
    def locked(self, command: str = "dftflow") -> Iterator[None]:
        """Hold the project's write lock; a second writer is refused with who holds it.

        The lock is an ``flock`` on ``.lock``: the kernel releases it when the
        holder dies, even by ``kill -9``, so a crashed run never blocks the next.
        """
        self.root.mkdir(parents=True, exist_ok=True)
        fd = os.open(self.lock_path, os.O_RDWR | os.O_CREAT, 0o644)
        try:
            try:
                fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
            except BlockingIOError:
                holder = os.pread(fd, 4096, 0).decode(errors="replace").strip()
                try:
                    info = json.loads(holder)
                    who = f"pid {info['pid']} on {info['host']} ({info['command']}, since {info['since']})"
                except (ValueError, KeyError):
                    who = "another process"
                raise ProjectBusyError(f"{self.root}: project is in use by {who}; "
                                       "wait for it to finish or use another --project") from None
            info = {"pid": os.getpid(), "host": socket.gethostname(), "command": command,
                    "since": time.strftime("%Y-%m-%d %H:%M:%S")}
            os.ftruncate(fd, 0)
            os.pwrite(fd, json.dumps(info).encode(), 0)
            yield
        finally:
            os.close(fd)  # closing the descriptor releases the flock
