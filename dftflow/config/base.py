"""Strict pydantic models loaded from YAML with errors that name file, key and value."""

from __future__ import annotations

from pathlib import Path
from typing import Any, TypeVar

import yaml
from pydantic import BaseModel, ConfigDict, ValidationError

from dftflow.errors import ConfigError

M = TypeVar("M", bound=BaseModel)


class StrictModel(BaseModel):
    """A model that rejects unknown keys and never coerces silently between kinds."""

    model_config = ConfigDict(extra="forbid", validate_default=True, frozen=False)


def _key(loc: tuple[Any, ...]) -> str:
    parts: list[str] = []
    for item in loc:
        if isinstance(item, int):
            parts.append(f"[{item}]")
        else:
            parts.append(("." if parts else "") + str(item))
    return "".join(parts) or "<top level>"


def format_validation_error(path: Path | str, err: ValidationError) -> str:
    """One line per problem: ``file: key: message (got value)``."""
    lines = []
    for e in err.errors():
        loc = tuple(x for x in e["loc"] if not (isinstance(x, str) and x.startswith("function-")))
        msg = e["msg"]
        if e["type"] == "extra_forbidden":
            msg = "unknown key"
        value = e.get("input")
        shown = "" if isinstance(value, dict) else f" (got {value!r})"
        lines.append(f"{path}: {_key(loc)}: {msg}{shown}")
    return "\n".join(lines)


def read_yaml(path: Path) -> Any:
    """Read a YAML file, turning I/O and syntax problems into :class:`ConfigError`."""
    try:
        text = path.read_bytes().decode("utf-8")
    except OSError as exc:
        raise ConfigError(f"{path}: cannot read ({exc.strerror or exc})") from exc
    except UnicodeDecodeError as exc:
        line = path.read_bytes()[: exc.start].count(b"\n") + 1
        raise ConfigError(f"{path}: line {line}: not UTF-8 text (byte {exc.object[exc.start]:#04x})") from exc
    try:
        return yaml.safe_load(text)
    except yaml.YAMLError as exc:
        mark = getattr(exc, "problem_mark", None)
        if mark is None and isinstance(exc, yaml.reader.ReaderError):  # a control character, say
            line = text[: exc.position].count("\n") + 1
            code = ord(exc.character) if isinstance(exc.character, str) else int(exc.character)
            raise ConfigError(f"{path}: line {line}: invalid YAML (control character {code:#04x})") from exc
        where = f" line {mark.line + 1}" if mark is not None else ""
        problem = " ".join(str(getattr(exc, "problem", None) or exc).split())  # one line
        raise ConfigError(f"{path}:{where}: invalid YAML ({problem})") from exc


def load_yaml_model(path: str | Path, model: type[M], context: dict[str, Any] | None = None) -> M:
    """Load ``path`` into ``model``; every error names the file and the offending key."""
    path = Path(path)
    data = read_yaml(path)
    if not isinstance(data, dict):
        raise ConfigError(f"{path}: expected a mapping at the top level, got {type(data).__name__}")
    try:
        return model.model_validate(data, context=context)
    except ValidationError as exc:
        raise ConfigError(format_validation_error(path, exc)) from exc
