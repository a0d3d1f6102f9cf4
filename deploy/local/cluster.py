"""The launcher's config: which processes make up the local system, read from one TOML file (cluster.toml) and
SAGA_DATA_DIR, validated once. Nothing else in deploy.local reads files or the environment."""

from __future__ import annotations

import os
import re
import tomllib
from collections.abc import Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from common.tls import TlsFiles

DEFAULT_CONFIG = Path(__file__).with_name("cluster.toml")
_PLACEHOLDER = re.compile(r"\{(listen|metrics|dashboard|data_dir|here)(?::([A-Za-z0-9._-]+))?\}")
_ADDRESS = re.compile(r"^[^:]+:\d{1,5}$")
_NAME = re.compile(r"^[A-Za-z0-9._-]{1,32}$")


class ClusterConfigError(ValueError):
    """The cluster file is malformed; the message names the file and the setting."""


@dataclass(frozen=True)
class ProcessSpec:
    name: str
    """Shown in front of each of its log lines."""
    module: str
    """Run as `python -m module` with the launcher's own interpreter (the same venv)."""
    listen: str
    """host:port it serves gRPC (and health) on."""
    args: tuple[str, ...]
    """Command-line arguments, placeholders resolved."""
    env: Mapping[str, str]
    """Extra environment variables."""
    metrics: str | None = None
    """host:port of its Prometheus /metrics ({metrics} in args), listed by the launcher."""
    dashboard: str | None = None
    """host:port of its web dashboard ({dashboard} in args), listed by the launcher."""


@dataclass(frozen=True)
class ClusterSpec:
    processes: tuple[ProcessSpec, ...]
    """In start order; stopped in reverse."""
    data_dir: Path
    """$SAGA_DATA_DIR (default ./.data), absolute; passed on to every child."""
    ready_timeout_s: float = 30.0
    """How long a process may take to answer its health check."""
    stop_timeout_s: float = 15.0
    """After SIGTERM, how long a process may take to exit before SIGKILL."""
    tls: TlsFiles | None = None
    """The launcher's own certificate for its health checks when the processes serve mutual TLS; None: plaintext."""


def load(path: Path = DEFAULT_CONFIG, env: Mapping[str, str] | None = None) -> ClusterSpec:
    env = os.environ if env is None else env
    try:
        data = tomllib.loads(path.read_text())
    except OSError as e:
        raise ClusterConfigError(f"cannot read cluster config {path}: {e}") from e
    except tomllib.TOMLDecodeError as e:
        raise ClusterConfigError(f"cluster config {path} is not valid TOML: {e}") from e
    data_dir = Path(env.get("SAGA_DATA_DIR") or ".data").absolute()
    try:
        return _parse(data, data_dir, path.parent.absolute())
    except ClusterConfigError as e:
        raise ClusterConfigError(f"{path}: {e}") from e


def _parse(data: Mapping[str, Any], data_dir: Path, here: Path) -> ClusterSpec:
    unknown = set(data) - {"launcher", "process"}
    if unknown:
        raise ClusterConfigError(f"unknown setting(s) {sorted(unknown)}")
    launcher = data.get("launcher", {})
    timeouts: dict[str, float] = {}
    for key in ("ready_timeout_s", "stop_timeout_s"):
        if key in launcher:
            value = launcher[key]
            if not isinstance(value, int | float) or isinstance(value, bool) or value <= 0:
                raise ClusterConfigError(f"[launcher] {key} must be a positive number, got {value!r}")
            timeouts[key] = float(value)
    if set(launcher) - set(timeouts):
        raise ClusterConfigError(f"unknown setting(s) [launcher] {sorted(set(launcher) - set(timeouts))}")
    raw = data.get("process")
    if not isinstance(raw, list) or not raw:
        raise ClusterConfigError("no [[process]] tables")
    listens: dict[str, str] = {}
    addresses: dict[tuple[str, str], str] = {}
    for i, entry in enumerate(raw):
        name, listen = entry.get("name"), entry.get("listen")
        if not isinstance(name, str) or not _NAME.match(name) or name in listens:
            raise ClusterConfigError(f"process[{i}].name must be a unique 1-32 character name, got {name!r}")
        if not isinstance(listen, str) or not _ADDRESS.match(listen):
            raise ClusterConfigError(f"process[{i}].listen must be host:port, got {listen!r}")
        listens[name] = listen
        addresses[("listen", name)] = listen
        for key in ("metrics", "dashboard"):
            value = entry.get(key)
            if value is not None:
                if not isinstance(value, str) or not _ADDRESS.match(value):
                    raise ClusterConfigError(f"process[{i}].{key} must be host:port, got {value!r}")
                addresses[(key, name)] = value
    processes = tuple(_process(i, entry, addresses, data_dir, here) for i, entry in enumerate(raw))
    return ClusterSpec(
        processes,
        data_dir,
        ready_timeout_s=timeouts.get("ready_timeout_s", ClusterSpec.ready_timeout_s),
        stop_timeout_s=timeouts.get("stop_timeout_s", ClusterSpec.stop_timeout_s),
    )


def _process(
    i: int, entry: Mapping[str, Any], addresses: Mapping[tuple[str, str], str], data_dir: Path, here: Path
) -> ProcessSpec:
    where = f"process[{i}]"
    unknown = set(entry) - {"name", "module", "listen", "metrics", "dashboard", "args", "env"}
    if unknown:
        raise ClusterConfigError(f"{where}: unknown setting(s) {sorted(unknown)}")
    module, args, env = entry.get("module"), entry.get("args", []), entry.get("env", {})
    if not isinstance(module, str) or not re.match(r"^[A-Za-z_][\w.]*$", module):
        raise ClusterConfigError(f"{where}.module must be a Python module name, got {module!r}")
    if not isinstance(args, list) or not all(isinstance(a, str) for a in args):
        raise ClusterConfigError(f"{where}.args must be a list of strings")
    if not isinstance(env, Mapping) or not all(isinstance(v, str) for v in env.values()):
        raise ClusterConfigError(f"{where}.env must be a table of strings")

    def resolve(match: re.Match[str]) -> str:
        key, ref = match.group(1), match.group(2)
        if key in ("listen", "metrics", "dashboard"):
            address = addresses.get((key, ref or entry["name"]))
            if address is None:
                who = f"process named {ref!r}" if ref is not None else "setting of its own"
                raise ClusterConfigError(f"{where}.args: no {key} {who} for {match.group(0)}")
            return address
        if ref is not None:
            raise ClusterConfigError(f"{where}.args: {match.group(0)} takes no name")
        return str(data_dir if key == "data_dir" else here)

    return ProcessSpec(
        name=entry["name"],
        module=module,
        listen=entry["listen"],
        args=tuple(_PLACEHOLDER.sub(resolve, a) for a in args),
        env=dict(env),
        metrics=entry.get("metrics"),
        dashboard=entry.get("dashboard"),
    )
