"""Reading one TOML configuration file.

Contract: read_toml(path, what=..., error=...) returns the parsed file as a dict. A file that cannot be read raises
error("cannot read <what> <path>: <reason>"), one that does not parse raises error("<what> <path> is not valid TOML:
<reason>"), each chained to the original exception. `error` is the caller's own configuration error type (each process
keeps its own ConfigError), TomlFileError by default. What the keys mean is the caller's business: nothing is validated
here.
"""

from __future__ import annotations

import os
import tomllib
from collections.abc import Callable
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
