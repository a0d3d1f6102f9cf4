"""Reading one TOML configuration file.

Contract: read_toml(path, what=..., error=...) returns the parsed file as a dict. A file that cannot be read raises
error("cannot read <what> <path>: <reason>"), one that does not parse raises error("<what> <path> is not valid TOML:
<reason>"), each chained to the original exception. `error` is the caller's own configuration error type (each process
keeps its own ConfigError), TomlFileError by default. What the keys mean is the caller's business.

What every process's settings have in common is here too, written once: check_keys() refuses a table with a key it
does not know, naming the table and the keys it knows; build() lays a table over a frozen dataclass of settings, each
key checked against the field's type (a table for a nested dataclass, an int accepted for a float, a list of strings
for a tuple).
"""

from __future__ import annotations

import dataclasses
import os
import tomllib
from collections.abc import Callable, Collection, Mapping
from pathlib import Path
from typing import Any


class TomlFileError(ValueError):
    """A TOML file could not be read or parsed; the message names the file."""


def read_toml(
    path: str | os.PathLike[str], *, what: str = "config", error: Callable[[str], Exception] = TomlFileError
) -> dict[str, Any]:
    """The file's tables and keys; `what` names the file in messages ("shards config")."""
    try:
        text = Path(path).read_text()
    except OSError as e:
        raise error(f"cannot read {what} {path}: {e}") from e
    try:
        return tomllib.loads(text)
    except tomllib.TOMLDecodeError as e:
        raise error(f"{what} {path} is not valid TOML: {e}") from e


def check_keys(
    table: object, known: Collection[str], where: str, error: Callable[[str], Exception] = TomlFileError
) -> Mapping[str, Any]:
    """`table` as a mapping whose keys are all in `known`; else error naming `where` (e.g. "[tls] ", "shards[2]: ")."""
    if not isinstance(table, Mapping):
        raise error(f"{where.strip() or 'the file'} must be a table")
    unknown = set(table) - set(known)
    if unknown:
        raise error(f"{where}unknown setting(s) {sorted(unknown)}; known: {', '.join(known)}")
    return table


def build(
    cls: type[Any],
    data: Mapping[str, Any],
    where: str,
    error: Callable[[str], Exception] = TomlFileError,
    base: Any = None,
) -> Any:
    """A `cls` (a dataclass) with `data` laid over `base` (default: cls()): a table names only what it changes. A
    nested dataclass field takes a table, laid over base's value (so [compensate] max_attempts = 4 keeps the other
    compensate defaults). `where` prefixes messages ("operations.steps.x.", "[router] ")."""
    base = cls() if base is None else base
    known = {f.name for f in dataclasses.fields(cls)}
    kwargs: dict[str, Any] = {}
    for key, value in data.items():
        if key not in known:
            raise error(f"unknown setting {where}{key}; known: {', '.join(sorted(known))}")
        default = getattr(base, key)
        if dataclasses.is_dataclass(default):
            if not isinstance(value, Mapping):
                raise error(f"{where}{key} must be a table")
            kwargs[key] = build(type(default), value, f"{where}{key}.", error, default)
            continue
        expected = type(default) if default is not None else int
        if expected is float and isinstance(value, int) and not isinstance(value, bool):
            value = float(value)
        if expected is tuple:
            if not isinstance(value, list) or not all(isinstance(v, str) and v for v in value):
                raise error(f"{where}{key} must be a list of strings, got {value!r}")
            value = tuple(value)
        if not isinstance(value, expected) or (isinstance(value, bool) and expected is not bool):
            raise error(f"{where}{key} must be {expected.__name__}, got {value!r}")
        kwargs[key] = value
    return dataclasses.replace(base, **kwargs)
