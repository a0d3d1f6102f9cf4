"""The whole system as real processes with every observability port open: stubs, coordinator shards and the router,
each with /metrics, the router also with its dashboard. For tests that scrape, browse or run sagactl against it.

    with LiveCluster(tmp_path, shards=2) as c:     # all processes start at once; blocks until each answers gRPC
        c.router, c.dashboard_url, c.metrics["shard-1"], c.stubs
        c.log("shard-1")

Shards use quick retry policies (a failing compensation parks its saga in about a second) and, with json_logs, log
JSON lines (SAGA_LOG_JSON=1) to <tmp>/<name>.log. Everything is stopped by pid on exit.
"""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import time
from pathlib import Path
from types import TracebackType

import grpc

from tests.helpers.net import free_port, wait_until_serving

REPO_ROOT = Path(__file__).resolve().parents[2]

SHARD_TOML = """\
default_ttl_ms = 30000
[forward]
max_attempts = 3
initial_backoff_ms = 5
max_backoff_ms = 50
attempt_timeout_ms = 3000
[compensate]
max_attempts = 4
initial_backoff_ms = 5
max_backoff_ms = 50
attempt_timeout_ms = 3000
"""


class LiveCluster:
    def __init__(self, tmp_path: Path, shards: int = 2, json_logs: bool = False, dashboard: bool = True) -> None:
        self.root = tmp_path
        self.shard_ids = [f"shard-{i + 1}" for i in range(shards)]
        self.json_logs = json_logs
        port = free_port
        self.stubs = f"127.0.0.1:{port()}"
        self.router = f"127.0.0.1:{port()}"
        self.grpc = {sid: f"127.0.0.1:{port()}" for sid in self.shard_ids}
        self.metrics = {name: f"127.0.0.1:{port()}" for name in ["stubs", *self.shard_ids, "router"]}
        self.dashboard = f"127.0.0.1:{port()}" if dashboard else None
        self.procs: dict[str, subprocess.Popen[bytes]] = {}
        (self.root / "shard.toml").write_text(SHARD_TOML)
        lines = []
        for sid in self.shard_ids:
            lines += [
                "[[shards]]",
                f'id = "{sid}"',
                f'address = "{self.grpc[sid]}"',
                f'metrics = "{self.metrics[sid]}"',
            ]
        self.shards_toml = self.root / "shards.toml"
        self.shards_toml.write_text(
            "[router]\nhealth_check_interval_s = 0.2\ndashboard_sample_interval_s = 0.5\n\n" + "\n".join(lines) + "\n"
        )

    @property
    def dashboard_url(self) -> str:
        assert self.dashboard is not None
        return f"http://{self.dashboard}"

    def _spawn(self, name: str, args: list[str], env: dict[str, str] | None = None) -> None:
        log = (self.root / f"{name}.log").open("ab")
        full_env = {**os.environ, "PYTHONUNBUFFERED": "1", **(env or {})}
        self.procs[name] = subprocess.Popen(
            [sys.executable, "-m", *args], cwd=REPO_ROOT, env=full_env, stdout=log, stderr=subprocess.STDOUT
        )
        log.close()

    def start(self) -> None:
        data = self.root / "data"
        data.mkdir(exist_ok=True)
        self._spawn(
            "stubs",
            [
                "service_stubs",
                "--listen",
                self.stubs,
                "--data-dir",
                str(data / "stubs"),
                "--metrics-listen",
                self.metrics["stubs"],
            ],
        )
        for sid in self.shard_ids:
            env = {"SAGA_JOURNAL_KEY": "test-secret", "SAGA_LOG_JSON": "1" if self.json_logs else "0"}
            args = ["coordinator", "--config", str(self.root / "shard.toml"), "--shard-id", sid]
            args += ["--listen", self.grpc[sid], "--journal", str(data / f"{sid}.db"), "--services", self.stubs]
            self._spawn(sid, [*args, "--metrics-listen", self.metrics[sid]], env)
        router = ["shard_router", "--listen", self.router, "--config", str(self.shards_toml)]
        router += ["--epochs", str(data / "epochs.json"), "--metrics-listen", self.metrics["router"]]
        if self.dashboard is not None:
            router += ["--dashboard-listen", self.dashboard]
        self._spawn("router", router)
        deadline = time.monotonic() + 30
        for name, address in [("stubs", self.stubs), *self.grpc.items(), ("router", self.router)]:
            try:
                wait_until_serving(self.procs[name], address, deadline, lambda n=name: self.log(n))
            except (RuntimeError, TimeoutError) as e:
                self.stop()
                raise type(e)(f"{name} {e}") from None

    def kill(self, name: str) -> None:
        proc = self.procs.get(name)
        if proc is not None and proc.poll() is None:
            proc.send_signal(signal.SIGKILL)
            proc.wait(timeout=10)

    def stop(self) -> None:
        """SIGTERM every process it started (router first), SIGKILL what is still running after 10 s."""
        order = ["router", *reversed(self.shard_ids), "stubs"]
        for name in order:
            proc = self.procs.get(name)
            if proc is not None and proc.poll() is None:
                proc.send_signal(signal.SIGTERM)
        deadline = time.monotonic() + 10
        for name in order:
            proc = self.procs.get(name)
            if proc is None:
                continue
            try:
                proc.wait(timeout=max(0.1, deadline - time.monotonic()))
            except subprocess.TimeoutExpired:
                proc.kill()
                proc.wait(timeout=5)

    def log(self, name: str) -> str:
        path = self.root / f"{name}.log"
        return path.read_text(errors="replace") if path.exists() else ""

    def channel(self) -> grpc.Channel:
        return grpc.insecure_channel(self.router)

    def __enter__(self) -> LiveCluster:
        self.start()
        return self

    def __exit__(self, t: type[BaseException] | None, e: BaseException | None, tb: TracebackType | None) -> None:
        self.stop()
