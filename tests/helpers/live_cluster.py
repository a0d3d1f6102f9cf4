"""The whole system as real processes with every observability port open, started by the launcher users run
(deploy.local.LocalSystem): stubs, coordinator shards and the router, each with /metrics, the router also with its
dashboard. For tests that scrape, browse or run sagactl against it.

    with LiveCluster(tmp_path, shards=2) as c:     # blocks until every process answers gRPC
        c.router, c.dashboard_url, c.metrics["shard-1"], c.stubs
        c.log("shard-1")

Shards use quick retry policies (a failing compensation parks its saga in about a second) and, with json_logs, log
JSON lines (SAGA_LOG_JSON=1) to <tmp>/<name>.log. Everything is stopped by pid on exit.
"""

from __future__ import annotations

from pathlib import Path
from types import TracebackType

import grpc

from deploy.local import LocalSystem, SystemOptions

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
[retention]
stats_interval_s = 1
"""


class LiveCluster:
    def __init__(self, tmp_path: Path, shards: int = 2, json_logs: bool = False, dashboard: bool = True) -> None:
        self.root = tmp_path
        self.shard_ids = [f"shard-{i + 1}" for i in range(shards)]
        log_json = {"SAGA_LOG_JSON": "1" if json_logs else "0"}
        options = SystemOptions(
            tmp_path / "data",
            shards=shards,
            dashboard=dashboard,
            shard_config=SHARD_TOML,
            process_env={sid: {"SAGA_JOURNAL_KEY": "test-secret", **log_json} for sid in self.shard_ids},
            router_settings={"health_check_interval_s": 0.2, "dashboard_sample_interval_s": 0.5},
            stop_timeout_s=10.0,
        )
        self.system = LocalSystem(options, log_dir=tmp_path, cwd=REPO_ROOT)
        self.stubs = self.system.stubs.address
        self.router = self.system.router.address
        self.grpc = {c.name: c.address for c in self.system.shards}
        self.metrics = {c.name: c.spec.metrics or "" for c in self.system.processes}
        self.dashboard = self.system.router.spec.dashboard

    @property
    def procs(self) -> list[str]:
        """Every process's name."""
        return [c.name for c in self.system.processes]

    @property
    def dashboard_url(self) -> str:
        assert self.dashboard is not None
        return f"http://{self.dashboard}"

    def start(self) -> None:
        self.system.start()

    def kill(self, name: str) -> None:
        self.system.kill(name)

    def stop(self) -> None:
        """SIGTERM every process it started (router first), SIGKILL what is still running after 10 s."""
        self.system.stop()

    def log(self, name: str) -> str:
        return self.system[name].log()

    def channel(self) -> grpc.Channel:
        return grpc.insecure_channel(self.router)

    def __enter__(self) -> LiveCluster:
        self.start()
        return self

    def __exit__(self, t: type[BaseException] | None, e: BaseException | None, tb: TracebackType | None) -> None:
        self.stop()
