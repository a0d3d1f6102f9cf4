"""The local cluster a benchmark runs against: the system `make run` starts (deploy.local.LocalSystem: same modules,
same flags, stubs durable), on free loopback ports with fresh journals in the run's directory, every process with
/metrics (the figures come from there), no dashboard (its sampling would load the shards), logs in files."""

from __future__ import annotations

import subprocess
import sys
import urllib.request
from collections.abc import Mapping
from dataclasses import dataclass
from pathlib import Path

from common.definitions.check import load
from common.tls import TlsFiles
from deploy.local import Child, LaunchError, LocalSystem, SystemOptions, free_port

REPO_ROOT = Path(__file__).resolve().parents[1]

ClusterError = LaunchError
"""A process of the cluster failed to start; the message names it and ends with the tail of its log."""

__all__ = ["REPO_ROOT", "Cluster", "ClusterError", "Member", "free_port"]


@dataclass(frozen=True)
class Member:
    """One process of the cluster, as the benchmarks read it."""

    child: Child
    kind: str
    """router | shard | stubs"""

    @property
    def name(self) -> str:
        return self.child.name

    @property
    def address(self) -> str:
        return self.child.address

    @property
    def pid(self) -> int:
        assert self.child.pid is not None, f"{self.name} never started"
        return self.child.pid

    def metrics_text(self, timeout_s: float = 5.0) -> str:
        assert self.child.spec.metrics is not None, f"{self.name} has no metrics endpoint"
        with urllib.request.urlopen(f"http://{self.child.spec.metrics}/metrics", timeout=timeout_s) as resp:
            return str(resp.read().decode())


class Cluster:
    """Stubs, `shards` shards and the router in `workdir`; shards=0: the stubs alone (the stub micro-benchmark)."""

    def __init__(
        self,
        workdir: Path,
        shards: int,
        tls: bool = False,
        env: Mapping[str, str] | None = None,
        shard_config: str = "",
    ) -> None:
        """tls: mutual TLS on every hop (LocalSystem's local CA); the load generators and the ledger check get
        certificates of their own (client_tls). env: more environment for every process (OTEL_* for traces)."""
        options = SystemOptions(
            workdir, shards=shards, dashboard=False, tls=tls, env=dict(env or {}), shard_config=shard_config
        )
        self.system = LocalSystem(options, log_dir=workdir, cwd=REPO_ROOT)

    def client_tls(self, name: str) -> TlsFiles:
        """A certificate for a caller (no files without TLS: plaintext on loopback)."""
        return self.system.client_tls(name)

    def start(self) -> None:
        """Stubs, then the shards, then the router; each healthy before the next. Stops what it started on failure."""
        self.system.start()

    start_stubs_only = start

    def stop(self) -> None:
        self.system.stop()

    @property
    def children(self) -> list[Member]:
        return [Member(c, _kind(c.name)) for c in self.system.processes]

    def of_kind(self, kind: str) -> list[Member]:
        return [m for m in self.children if m.kind == kind]

    def commit_definition(self, path: str) -> str:
        """Commits a definition file as an operator would (`saga-router defs commit`); returns its saga type."""
        if self.system.options.tls:
            raise ValueError("a definition is committed over plaintext here: run it without --tls")
        done = subprocess.run(
            [sys.executable, "-m", "shard_router", "defs", "commit", path, "--config", str(self.system.router_config),
             "--epochs", str(self.system.epochs_file)],
            capture_output=True, text=True, timeout=60, cwd=REPO_ROOT,
        )  # fmt: skip
        if done.returncode != 0:
            raise RuntimeError(f"defs commit {path} failed: {done.stdout}{done.stderr}")
        return str(load(Path(path)).name)

    @property
    def router_address(self) -> str:
        return self.system.router.address

    @property
    def stubs_address(self) -> str:
        return self.system.stubs.address


def _kind(name: str) -> str:
    return "shard" if name.startswith("shard-") else name
