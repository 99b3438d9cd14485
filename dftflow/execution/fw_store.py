"""The output store of the FireWorks engine: one maggma JSON file per workflow, replaced atomically."""

from __future__ import annotations

import os
from pathlib import Path

import orjson
from maggma.stores import JSONStore


class AtomicJSONStore(JSONStore):
    """A maggma ``JSONStore`` that writes a new file and renames it over the old one.

    maggma's rewrites the file in place: a rocket killed while a job's document is
    written would leave the workflow's file truncated, and the outputs of its
    finished jobs lost with it.
    """

    def update_json_file(self) -> None:
        data = list(self.query())
        for d in data:
            d.pop("_id")
        text = orjson.dumps(data, option=self.serialization_option, default=self.serialization_default).decode()
        target = Path(self.paths[0])
        tmp = target.with_name(target.name + f".tmp{os.getpid()}")
        tmp.write_text(text, encoding=self.encoding or "utf-8")
        os.replace(tmp, target)
