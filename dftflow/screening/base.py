"""The shape every screening filter has: a name, its parameters, and an outcome per structure."""

from __future__ import annotations

import hashlib
import json
from dataclasses import dataclass, field
from typing import Any, Literal, Protocol

from pymatgen.core import Structure

Status = Literal["pass", "fail", "undetermined"]


@dataclass(slots=True, frozen=True)
class Outcome:
    """What a filter decided about one structure, and why."""

    status: Status
    reason: str = ""
    details: dict[str, Any] = field(default_factory=dict)

    def __str__(self) -> str:
        return self.status + (f": {self.reason}" if self.reason else "")


def passed(**details: Any) -> Outcome:
    return Outcome("pass", "", details)


def failed(reason: str, **details: Any) -> Outcome:
    return Outcome("fail", reason, details)


def undetermined(reason: str, **details: Any) -> Outcome:
    return Outcome("undetermined", reason, details)


class Filter(Protocol):
    """A screening step. ``params()`` is recorded next to every outcome it produces."""

    name: str

    def params(self) -> dict[str, Any]: ...

    def check(self, structure: Structure, flags: list[str]) -> Outcome: ...


def params_hash(params: dict[str, Any]) -> str:
    """Short, stable digest of a filter's parameters (outcomes are reused while it is unchanged)."""
    return hashlib.sha1(json.dumps(params, sort_keys=True, default=str).encode()).hexdigest()[:12]
