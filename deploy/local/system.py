"""The local system built in code rather than read from cluster.toml: stubs, N coordinator shards and the router, on
free loopback ports, for a program that embeds the launcher (tests, benchmarks). The same processes with the same
flags as cluster.toml (a test compares the two); what differs is data, in SystemOptions.

    with LocalSystem(SystemOptions(tmp / "data", shards=2), log_dir=tmp) as system:
        system.router.address, system.stubs.address, system.shards[0].spec.metrics
        system.kill("shard-1"); system.restart("shard-1")     # SIGKILL, then the same port and journal
        system.add_shard()                                     # shard-3, then listed in the router's file

The routers' shard list is a file they re-read (<data_dir>/shards.toml), rewritten when a shard is added, and its ring
committed as the next epoch in <data_dir>/router.epochs.json (what an operator does with `saga-router epochs commit`).
SystemOptions(routers=N) starts N routers (router, router-2, ...); with router_views each reads its own copy of both
files (<data_dir>/<router>/), brought up to date by publish(name): routers that learn a ring change at different
moments, as ConfigMap mounts do. The shards' settings file (--config) is <data_dir>/shard.toml:
SystemOptions.shard_config, or a copy of deploy/local/shard.toml.

SystemOptions(replicate=True): as under `make run`, each shard's journal is replicated continuously by a Litestream of
its own (replica-N, started before the shards and stopped after them, deploy/local/litestream.yml) to
system.replica_dir("shard-N"), and the shard watches it through system.litestream_socket("shard-N").

SystemOptions(tls=True): every process serves mutual TLS with a certificate of its own from a local CA
(deploy.local.certs, under <data_dir>/tls) and dials the others with it; a caller gets one: system.client_tls("client").
Every process also authenticates its callers with the policy of its kind (deploy.local.authpolicy, --auth-policy):
clients and operators at the routers (certificates, or a bearer JWT: system.policies.token("alice", ["operator"])),
every router at the shards, the shards and operators at the stubs.
"""

from __future__ import annotations

import json
import os
import random
import shutil
import socket
import time
from collections.abc import Mapping
from dataclasses import dataclass, field
from pathlib import Path
from types import TracebackType
from typing import TextIO

from common.tls import TlsFiles
from shard_router import epochs
from shard_router import load as load_router_config

from .authpolicy import LocalPolicies, write_policies
from .certs import LAUNCHER, LocalCA, tls_args
from .cluster import ClusterSpec, ProcessSpec, Ready, launcher_bin
from .supervisor import Child, Supervisor

SERVICES = ("order", "inventory", "payment", "shipping", "loyalty")
DEFAULT_SHARD_CONFIG = Path(__file__).with_name("shard.toml")
LITESTREAM_CONFIG = Path(__file__).with_name("litestream.yml")
_SOCKET_PATH_MAX = 103
"""Bytes of a unix socket's path: sun_path holds 104 on macOS (108 on Linux), the final NUL included."""


_HANDED_OUT: set[int] = set()


def _ephemeral_range() -> tuple[int, int]:
    """The kernel's range for outgoing connections' local ports (Linux; a common default elsewhere)."""
    try:
        low, high = Path("/proc/sys/net/ipv4/ip_local_port_range").read_text().split()
        return int(low), int(high)
    except (OSError, ValueError):
        return 32768, 60999


def free_port(host: str = "127.0.0.1") -> int:
    """A TCP port on host that was free a moment ago, for a process to bind soon. Chosen below the kernel's ephemeral
    range, so no outgoing connection (the tests make thousands) can take it before its server binds, and never the
    same one twice in this process, so two clusters started side by side cannot be handed one port."""
    low, _ = _ephemeral_range()
    rng = random.Random()
    if low > 12_000:
        for _ in range(500):
            port = rng.randrange(10_000, low)
            if port in _HANDED_OUT:
                continue
            with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as s:
                try:
                    s.bind((host, port))
                except OSError:
                    continue
            _HANDED_OUT.add(port)
            return port
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as s:
        s.bind((host, 0))
        port = int(s.getsockname()[1])
    _HANDED_OUT.add(port)
    return port


@dataclass(frozen=True)
class SystemOptions:
    """What one local system is made of, beyond cluster.toml's fixed ports."""

    data_dir: Path
    """Journals, the stubs' data, the router's files ($SAGA_DATA_DIR of every child)."""
    shards: int = 3
    """Coordinator shards, shard-1..shard-N; 0 starts the stubs alone (a router needs a shard to route to)."""
    host: str = "127.0.0.1"
    """Every process listens on this host."""
    ports: Mapping[str, int] = field(default_factory=dict)
    """gRPC port by process name where it must be known in advance; the others (and every /metrics) are free ports."""
    metrics: bool = True
    """Every process serves Prometheus /metrics on a port of its own."""
    dashboard: bool = True
    """The router serves its web dashboard."""
    shard_config: str = ""
    """TOML for the shards' --config (coordinator/config.py); "" uses deploy/local/shard.toml, as `make run` does."""
    shard_module: str = "coordinator"
    """What runs a shard: `python -m <shard_module>`, taking the coordinator's flags."""
    env: Mapping[str, str] = field(default_factory=dict)
    """Extra environment of every process."""
    process_env: Mapping[str, Mapping[str, str]] = field(default_factory=dict)
    """Extra environment by process name (stubs, shard-N, router), after `env`."""
    services: Mapping[str, str] = field(default_factory=dict)
    """Downstream address by service name (order, inventory, payment, shipping) where it is not the stubs."""
    journal_dirs: Mapping[str, Path] = field(default_factory=dict)
    """Directory of a shard's journal by shard id, where it is not data_dir."""
    stubs_args: tuple[str, ...] = ()
    """More flags for the stubs (e.g. --stock sku=N)."""
    router_settings: Mapping[str, bool | int | float | str] = field(default_factory=dict)
    """The [router] table of the router's shards file (shard_router/config.py), e.g. reload_interval_s."""
    vnodes: int = 1024
    """Points per shard on the router's hash ring, as deploy/local/shards.toml sets it."""
    routers: int = 1
    """Routers in front of the shards (router, router-2, ...): any of them routes any call (`make run` starts two)."""
    router_views: bool = False
    """Each router reads its own copy of the shards and epochs files, updated only by LocalSystem.publish()."""
    ready_timeout_s: float = 30.0
    """How long a process may take to answer its health check."""
    stop_timeout_s: float = 15.0
    """After SIGTERM, how long a process may take to exit before SIGKILL."""
    tls: bool = False
    """Mutual TLS on every hop: each process has a certificate named after it (spiffe://saga/<name>) from a local CA."""
    tls_dir: Path | None = None
    """With tls: where the CA and the certificates live (default <data_dir>/tls); a CA already there is reused."""
    replicate: bool = False
    """A Litestream per shard (replica-N) replicating its journal, watched by the shard (--litestream-socket)."""
    commit_ring: bool = True
    """Record the shards file's ring in the epochs file at start; False: no epochs file until `saga-router epochs
    commit` (as `make run` starts the first time)."""

    def __post_init__(self) -> None:
        if self.shards < 0:
            raise ValueError(f"shards must be >= 0, got {self.shards}")
        if self.routers < 1:
            raise ValueError(f"routers must be >= 1, got {self.routers}")
        unknown = set(self.services) - set(SERVICES)
        if unknown:
            raise ValueError(f"unknown service(s) {sorted(unknown)}; known: {', '.join(SERVICES)}")


class LocalSystem:
    """Builds the processes SystemOptions describe and runs them with a Supervisor (start, stop, kill, restart, add a
    shard). Supervisor's log_dir, out and cwd are passed on. Blocking: from async code, call through to_thread."""

    def __init__(
        self,
        options: SystemOptions,
        *,
        log_dir: Path | None = None,
        out: TextIO | None = None,
        cwd: Path | None = None,
    ) -> None:
        self.options = options
        self.data_dir = options.data_dir.absolute()
        self.data_dir.mkdir(parents=True, exist_ok=True)
        self.router_config = self.data_dir / "shards.toml"
        self.epochs_file = self.data_dir / "router.epochs.json"
        self.shard_config = self.data_dir / "shard.toml"
        self.shard_config.write_text(options.shard_config or DEFAULT_SHARD_CONFIG.read_text())
        self.ca: LocalCA | None = None
        self.policies: LocalPolicies | None = None
        """With tls: the auth policies every process runs with, and test tokens (policies.token(sub, roles))."""
        self.router_names = tuple(["router", *(f"router-{i}" for i in range(2, options.routers + 1))])
        if options.tls:
            self.ca = LocalCA(options.tls_dir or self.data_dir / "tls")
            self.policies = write_policies(self.ca.dir, routers=self.router_names)
        stubs = self._spec("stubs", "service_stubs", ["--data-dir", str(self.data_dir / "stubs"), *options.stubs_args])
        self._stubs_address = stubs.listen
        shard_ids = [f"shard-{i}" for i in range(1, options.shards + 1)]
        # Each Litestream before the shards: it waits for a journal that does not exist yet, and being stopped after
        # them, it ships their last writes.
        replicas = [self._replica_spec(shard_id) for shard_id in shard_ids] if options.replicate else []
        shards = [self._shard_spec(shard_id) for shard_id in shard_ids]
        specs = [stubs, *replicas, *shards]
        if options.shards:
            self._write_router_config(shards, commit=options.commit_ring)
            for i, name in enumerate(self.router_names):
                config, history = self._router_files(name)
                if options.router_views:
                    self.publish(name)
                router_args = ["--config", str(config), "--epochs", str(history)]
                # One dashboard (the first router's): each one shows the same shards.
                specs.append(self._spec(name, "shard_router", router_args, dashboard=options.dashboard and i == 0))
        launcher_tls = self.ca.issue(LAUNCHER).files if self.ca is not None else None
        cluster = ClusterSpec(
            tuple(specs), self.data_dir, options.ready_timeout_s, options.stop_timeout_s, tls=launcher_tls
        )
        self.supervisor = Supervisor(cluster, out=out, log_dir=log_dir, cwd=cwd)

    def _spec(self, name: str, module: str, args: list[str], dashboard: bool = False) -> ProcessSpec:
        host, o = self.options.host, self.options
        listen = f"{host}:{o.ports.get(name) or free_port(host)}"
        metrics = f"{host}:{free_port(host)}" if o.metrics else None
        board = f"{host}:{free_port(host)}" if dashboard else None
        args = ["--listen", listen, *args]
        if metrics:
            args += ["--metrics-listen", metrics]
        if board:
            args += ["--dashboard-listen", board]
        if self.ca is not None and self.policies is not None:
            args += tls_args(self.ca.issue(name).files)
            args += ["--auth-policy", str(self.policies.for_module(module))]
        env = {**o.env, **o.process_env.get(name, {})}
        return ProcessSpec(name, module, listen, tuple(args), env, metrics, board)

    def _journal_dir(self, shard_id: str) -> Path:
        return self.options.journal_dirs.get(shard_id, self.data_dir)

    def _shard_spec(self, shard_id: str, env: Mapping[str, str] | None = None) -> ProcessSpec:
        o = self.options
        journal = self._journal_dir(shard_id) / f"{shard_id}.db"
        args = ["--shard-id", shard_id, "--journal", str(journal)]
        args += ["--config", str(self.shard_config)]
        if o.replicate:
            args += ["--litestream-socket", str(self.litestream_socket(shard_id))]
        service_env: dict[str, str] = {}
        if o.services:
            # One variable per service: --services would set every one to the stubs.
            service_env = {f"SAGA_{s.upper()}_ADDR": o.services.get(s, self._stubs_address) for s in SERVICES}
        else:
            args += ["--services", self._stubs_address]
        spec = self._spec(shard_id, o.shard_module, args)
        return ProcessSpec(
            spec.name, spec.module, spec.listen, spec.args, {**service_env, **spec.env, **(env or {})}, spec.metrics
        )

    def _replica_spec(self, shard_id: str) -> ProcessSpec:
        """replica-N: Litestream replicating shard-N's journal, configured by litestream.yml from its environment."""
        o, name = self.options, _replica_name(shard_id)
        socket_path = self.litestream_socket(shard_id)
        if len(os.fsencode(socket_path)) > _SOCKET_PATH_MAX:
            raise ValueError(f"{socket_path}: longer than a unix socket path may be ({_SOCKET_PATH_MAX} bytes)")
        metrics = f"{o.host}:{free_port(o.host)}"  # always: the launcher knows it is up once its /metrics answers
        env = {"SAGA_SHARD_ID": shard_id, "LITESTREAM_METRICS": metrics}
        if self._journal_dir(shard_id) != self.data_dir:
            env["SAGA_DATA_DIR"] = str(self._journal_dir(shard_id))  # litestream.yml finds the journal under it
        command = (str(launcher_bin() / "litestream"), "replicate", "-config", str(LITESTREAM_CONFIG))
        env = {**env, **o.env, **o.process_env.get(name, {})}
        return ProcessSpec(name, "", metrics, (), env, metrics, command=command, ready=Ready.METRICS)

    def replica_dir(self, shard_id: str) -> Path:
        """Where replica-N keeps shard-N's replica (a Litestream file replica: ltx/<level>/*.ltx)."""
        return self._journal_dir(shard_id) / "replicas" / shard_id

    def litestream_socket(self, shard_id: str) -> Path:
        """The control socket of replica-N (`litestream list -socket PATH`; the shard's --litestream-socket)."""
        return self._journal_dir(shard_id) / f"{shard_id}.litestream.sock"

    def _write_router_config(self, shards: list[ProcessSpec], commit: bool = True) -> None:
        lines = [f"vnodes = {self.options.vnodes}", "", "[router]"]
        lines += [f"{key} = {json.dumps(value)}" for key, value in self.options.router_settings.items()]
        for s in shards:
            lines += ["", "[[shards]]", f"id = {json.dumps(s.name)}", f"address = {json.dumps(s.listen)}"]
            if s.metrics:
                lines.append(f"metrics = {json.dumps(s.metrics)}")
        # Written whole, then renamed, as an editor saves it: the router never reads half a file.
        tmp = self.router_config.with_suffix(".tmp")
        tmp.write_text("\n".join(lines) + "\n")
        os.replace(tmp, self.router_config)
        if not commit:
            return
        # Then its ring becomes the next epoch, as `saga-router epochs commit` does it.
        history = epochs.read(self.epochs_file)
        ring = load_router_config(self.router_config, epochs_path=self.epochs_file, env={}).ring
        new = epochs.committed(history, ring, time.time_ns() // 1_000_000)
        if new != history:
            epochs.write(self.epochs_file, new, expect=history.number)

    def _router_files(self, name: str) -> tuple[Path, Path]:
        """The shards and epochs files the router reads."""
        if not self.options.router_views:
            return self.router_config, self.epochs_file
        return self.data_dir / name / "shards.toml", self.data_dir / name / "epochs.json"

    def publish(self, name: str) -> None:
        """With router_views: the router's copies of the shards and epochs files become today's (both replaced at
        once, as a ConfigMap update does)."""
        config, history = self._router_files(name)
        if config == self.router_config:
            return
        config.parent.mkdir(exist_ok=True)
        for source, target in ((self.epochs_file, history), (self.router_config, config)):
            tmp = target.with_suffix(".tmp")
            shutil.copyfile(source, tmp)
            os.replace(tmp, target)

    def client_tls(self, name: str = "client") -> TlsFiles:
        """A certificate for a caller of the system (spiffe://saga/<name>: client, operator, ...) from its CA; without
        tls, no files (plaintext on loopback)."""
        return self.ca.issue(name).files if self.ca is not None else TlsFiles()

    # ------------------------------------------------------------ the processes

    @property
    def stubs(self) -> Child:
        return self.supervisor["stubs"]

    @property
    def router(self) -> Child:
        """The first router."""
        return self.supervisor["router"]

    @property
    def routers(self) -> list[Child]:
        return [self.supervisor[name] for name in self.router_names]

    @property
    def shards(self) -> list[Child]:
        """shard-1, shard-2, ... (added ones last)."""
        return sorted((c for c in self.supervisor.children if c.name.startswith("shard-")), key=_shard_number)

    @property
    def replicas(self) -> list[Child]:
        """With replicate: replica-1, replica-2, ..., the Litestream of shard-1, shard-2, ..."""
        return sorted((c for c in self.supervisor.children if c.name.startswith("replica-")), key=_shard_number)

    @property
    def processes(self) -> tuple[Child, ...]:
        return self.supervisor.children

    def __getitem__(self, name: str) -> Child:
        return self.supervisor[name]

    # ------------------------------------------------------------ control

    def start(self) -> None:
        self.supervisor.start()

    def stop(self) -> None:
        self.supervisor.stop()

    def kill(self, name: str) -> None:
        self.supervisor.kill(name)

    def restart(self, name: str, env: Mapping[str, str] | None = None) -> Child:
        return self.supervisor.restart(name, env)

    def add_shard(self, env: Mapping[str, str] | None = None, publish: bool = True, commit: bool = True) -> Child:
        """Starts shard-<N+1> (with replicate, its Litestream first) and, once it is healthy, lists it in the routers'
        file and commits the new ring (the routers reload it). publish=False (with router_views): each router sees it
        only once publish(name) is called. commit=False: listed, not committed (the routers report an uncommitted
        ring until `saga-router epochs commit`)."""
        shard_id = f"shard-{len(self.shards) + 1}"
        if self.options.replicate:
            self.supervisor.add(self._replica_spec(shard_id))
        spec = self._shard_spec(shard_id, env)
        child = self.supervisor.add(spec)
        self._write_router_config([c.spec for c in self.shards], commit=commit)
        if publish:
            for name in self.router_names:
                self.publish(name)
        return child

    def __enter__(self) -> LocalSystem:
        self.start()
        return self

    def __exit__(self, t: type[BaseException] | None, e: BaseException | None, tb: TracebackType | None) -> None:
        self.stop()


def _replica_name(shard_id: str) -> str:
    """replica-N for shard-N."""
    return "replica-" + shard_id.removeprefix("shard-")


def _shard_number(child: Child) -> int:
    return int(child.name.rpartition("-")[2])
