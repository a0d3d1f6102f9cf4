"""The local cluster a benchmark runs against: stubs, N coordinator shards and the router, each a child process on
loopback with fresh journals in a temporary directory, stopped (SIGTERM, then SIGKILL) by whoever started them.

Started the way `make run` starts them (deploy/local/cluster.toml): same modules, same defaults, stubs durable; the
only additions are free ports, a --metrics-listen for every shard and the stubs (the figures come from /metrics), and
logs written to files in the run's directory instead of the terminal.
"""

from __future__ import annotations

import os
import signal
import socket
import subprocess
import sys
import time
import urllib.request
from dataclasses import dataclass, field
from pathlib import Path

import grpc
from grpc_health.v1 import health_pb2, health_pb2_grpc

REPO_ROOT = Path(__file__).resolve().parents[1]


class ClusterError(RuntimeError):
    """A process of the cluster failed to start; the message names it and points at its log."""


def free_port() -> int:
    """A TCP port on 127.0.0.1 that was free a moment ago."""
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


@dataclass
class Child:
    """One process the cluster started."""

    name: str
    kind: str
    """router | shard | stubs"""
    address: str
    metrics_address: str | None
    proc: subprocess.Popen[bytes]
    log_path: Path

    @property
    def pid(self) -> int:
        return self.proc.pid

    def metrics_text(self, timeout_s: float = 5.0) -> str:
        assert self.metrics_address is not None, f"{self.name} has no metrics endpoint"
        with urllib.request.urlopen(f"http://{self.metrics_address}/metrics", timeout=timeout_s) as resp:
            return str(resp.read().decode())


@dataclass
class Cluster:
    workdir: Path
    shards: int
    ready_timeout_s: float = 30.0
    stop_timeout_s: float = 15.0
    children: list[Child] = field(default_factory=list)
    router_address: str = ""
    stubs_address: str = ""

    def of_kind(self, kind: str) -> list[Child]:
        return [c for c in self.children if c.kind == kind]

    def start(self) -> None:
        """Stubs, then the shards, then the router; each healthy before the next. Stops what it started on failure."""
        try:
            self._start()
        except BaseException:
            self.stop()
            raise

    def start_stubs_only(self) -> None:
        """Just the stub process (the stub micro-benchmark)."""
        try:
            self._start_stubs()
        except BaseException:
            self.stop()
            raise

    def _start_stubs(self) -> None:
        self.workdir.mkdir(parents=True, exist_ok=True)
        stubs_port, stubs_metrics = free_port(), free_port()
        self.stubs_address = f"127.0.0.1:{stubs_port}"
        stubs = self._spawn(
            "stubs",
            "stubs",
            "service_stubs",
            self.stubs_address,
            f"127.0.0.1:{stubs_metrics}",
            ["--data-dir", str(self.workdir / "stubs")],
        )
        self._wait_ready(stubs)

    def _start(self) -> None:
        self._start_stubs()
        stubs_addr = self.stubs_address
        shard_lines = ["vnodes = 1024", ""]
        shards = []
        for i in range(1, self.shards + 1):
            shard_id = f"shard-{i}"
            address = f"127.0.0.1:{free_port()}"
            shard = self._spawn(
                shard_id,
                "shard",
                "coordinator",
                address,
                f"127.0.0.1:{free_port()}",
                ["--shard-id", shard_id, "--journal", str(self.workdir / f"{shard_id}.db"), "--services", stubs_addr],
            )
            shards.append(shard)
            shard_lines += ["[[shards]]", f'id = "{shard_id}"', f'address = "{address}"', ""]
        for shard in shards:  # started together, checked together: shards do not depend on each other
            self._wait_ready(shard)
        config = self.workdir / "shards.toml"
        config.write_text("\n".join(shard_lines))
        self.router_address = f"127.0.0.1:{free_port()}"
        router = self._spawn(
            "router",
            "router",
            "shard_router",
            self.router_address,
            None,
            ["--config", str(config), "--epochs", str(self.workdir / "router.epochs.json")],
        )
        self._wait_ready(router)

    def _spawn(self, name: str, kind: str, module: str, address: str, metrics: str | None, args: list[str]) -> Child:
        log_path = self.workdir / f"{name}.log"
        command = [sys.executable, "-m", module, "--listen", address, *args]
        if metrics is not None:
            command += ["--metrics-listen", metrics]
        env = {**os.environ, "PYTHONUNBUFFERED": "1", "SAGA_DATA_DIR": str(self.workdir)}
        with open(log_path, "wb") as log:
            proc = subprocess.Popen(
                command,
                cwd=REPO_ROOT,
                stdin=subprocess.DEVNULL,
                stdout=log,
                stderr=subprocess.STDOUT,
                env=env,
                # Its own session: a Ctrl-C in the terminal reaches only the harness, which then stops it in order.
                start_new_session=True,
            )
        child = Child(name, kind, address, metrics, proc, log_path)
        self.children.append(child)
        return child

    def _wait_ready(self, child: Child) -> None:
        deadline = time.monotonic() + self.ready_timeout_s
        with grpc.insecure_channel(child.address) as channel:
            stub = health_pb2_grpc.HealthStub(channel)
            while True:
                if child.proc.poll() is not None:
                    raise ClusterError(
                        f"{child.name} exited with code {child.proc.returncode} before it was ready; "
                        f"log: {child.log_path}\n{_tail(child.log_path)}"
                    )
                if time.monotonic() > deadline:
                    raise ClusterError(f"{child.name} not healthy after {self.ready_timeout_s}s; log: {child.log_path}")
                try:
                    reply = stub.Check(health_pb2.HealthCheckRequest(), timeout=1.0)
                    if reply.status == health_pb2.HealthCheckResponse.SERVING:
                        return
                except grpc.RpcError:
                    pass
                time.sleep(0.05)

    def stop(self) -> None:
        """Router first, then shards, then stubs: SIGTERM, then SIGKILL after stop_timeout_s. Idempotent."""
        order = {"router": 0, "shard": 1, "stubs": 2}
        groups: dict[int, list[Child]] = {}
        for child in self.children:
            groups.setdefault(order[child.kind], []).append(child)
        for _, group in sorted(groups.items()):
            for child in group:
                if child.proc.poll() is None:
                    child.proc.send_signal(signal.SIGTERM)
            deadline = time.monotonic() + self.stop_timeout_s
            for child in group:
                try:
                    child.proc.wait(timeout=max(0.0, deadline - time.monotonic()))
                except subprocess.TimeoutExpired:
                    child.proc.kill()
                    child.proc.wait()
        self.children.clear()


def _tail(path: Path, lines: int = 15) -> str:
    try:
        return "\n".join(path.read_text(errors="replace").splitlines()[-lines:])
    except OSError:
        return ""
