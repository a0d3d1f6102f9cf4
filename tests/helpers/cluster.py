"""The whole system as real processes for chaos tests: stubs, N coordinator shards and the router, on free loopback
ports, each restartable on its own port and journal; every restart checks the journal with PRAGMA integrity_check.

    cluster = Cluster(tmp_path, shards=3)
    await cluster.start()
    await cluster.kill_shard(1); await cluster.start_shard(1)   # SIGKILL, restart on the same journal
    await cluster.add_shard()                                   # a 4th process, then listed in the router's file
    await cluster.stop()                                        # everything it started, by pid

Shards run through tests.helpers.shard_probe, so each writes its asyncio task count to <data>/<shard>.tasks.
Process methods block briefly; the async wrappers run them in a thread so in-process servers (a TCP proxy, say) keep
serving meanwhile.
"""

from __future__ import annotations

import asyncio
import os
import signal
import sqlite3
import subprocess
import sys
import time
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path

from tests.helpers.net import free_port, wait_until_serving
from tests.helpers.shard_probe import read_task_count
from tests.helpers.stubs import StubProcess

REPO_ROOT = Path(__file__).resolve().parents[2]

# Fast policies: a chaos run should see many retries, compensations and crashes per minute, not a few.
SHARD_CONFIG = """\
default_ttl_ms = {ttl_ms}
[forward]
max_attempts = {forward_attempts}
initial_backoff_ms = 5
max_backoff_ms = 100
attempt_timeout_ms = {attempt_timeout_ms}
[compensate]
max_attempts = {compensate_attempts}
initial_backoff_ms = 5
max_backoff_ms = 200
attempt_timeout_ms = {attempt_timeout_ms}
"""


@dataclass(frozen=True)
class ShardSettings:
    """What the chaos scenarios vary in the shards' TOML file."""

    ttl_ms: int = 60_000
    forward_attempts: int = 6
    compensate_attempts: int = 50
    attempt_timeout_ms: int = 3_000
    extra: str = ""
    """More TOML, appended (e.g. a [limits] table)."""

    def toml(self) -> str:
        fields = {k: v for k, v in self.__dict__.items() if k != "extra"}
        return SHARD_CONFIG.format(**fields) + self.extra


def integrity(path: Path) -> str:
    """PRAGMA integrity_check of one SQLite file ("ok" when sound)."""
    with sqlite3.connect(f"file:{path}?mode=ro", uri=True, timeout=10) as db:
        return str(db.execute("PRAGMA integrity_check").fetchone()[0])


class Child:
    """One `python -m module ...` process on a fixed port; start() blocks until it answers gRPC."""

    def __init__(self, name: str, module: str, args: Sequence[str], port: int, log_path: Path) -> None:
        self.name = name
        self.module = module
        self.args = list(args)
        self.port = port
        self.log_path = log_path
        self.env: dict[str, str] = {}
        self.proc: subprocess.Popen[bytes] | None = None

    @property
    def address(self) -> str:
        return f"127.0.0.1:{self.port}"

    @property
    def running(self) -> bool:
        return self.proc is not None and self.proc.poll() is None

    def start(self, extra_env: Mapping[str, str] | None = None, ready_timeout_s: float = 30.0) -> None:
        assert not self.running, f"{self.name} already running"
        env = {**os.environ, **self.env, **(extra_env or {})}
        with self.log_path.open("ab") as log:
            self.proc = subprocess.Popen(
                [sys.executable, "-m", self.module, *self.args], cwd=REPO_ROOT, env=env, stdout=log, stderr=log
            )
        try:
            wait_until_serving(self.proc, self.address, time.monotonic() + ready_timeout_s, self.log)
        except (RuntimeError, TimeoutError) as e:
            self.kill()
            raise type(e)(f"{self.name} {e}") from None

    def kill(self) -> None:
        if self.proc is not None and self.proc.poll() is None:
            self.proc.send_signal(signal.SIGKILL)
            self.proc.wait(timeout=10)

    def terminate(self, timeout_s: float = 15.0) -> int | None:
        if self.proc is None:
            return None
        if self.proc.poll() is None:
            self.proc.send_signal(signal.SIGTERM)
            try:
                self.proc.wait(timeout=timeout_s)
            except subprocess.TimeoutExpired:
                self.kill()
        return self.proc.returncode

    def exit_code(self) -> int | None:
        return None if self.proc is None else self.proc.poll()

    def log(self) -> str:
        try:
            return self.log_path.read_text(errors="replace")
        except FileNotFoundError:
            return ""


class ShardChild(Child):
    def __init__(
        self,
        root: Path,
        shard_id: str,
        services: Mapping[str, str],
        settings: ShardSettings,
        module: str = "tests.helpers.shard_probe",
        journal_dir: Path | None = None,
    ) -> None:
        self.shard_id = shard_id
        self.journal = (journal_dir or root) / f"{shard_id}.db"
        self.task_file = root / f"{shard_id}.tasks"
        config = root / f"{shard_id}.toml"
        config.write_text(settings.toml())
        port = free_port()
        args = ["--config", str(config), "--shard-id", shard_id, "--listen", f"127.0.0.1:{port}"]
        # Addresses go in the environment, one per service: a --services flag would override them all.
        args += ["--journal", str(self.journal)]
        self.clock_file = root / f"{shard_id}.clock"
        super().__init__(shard_id, module, args, port, root / f"{shard_id}.log")
        self.env = {
            "SAGA_JOURNAL_KEY": "chaos-secret",
            "SAGA_TASK_PROBE": str(self.task_file),
            "SAGA_CLOCK_OFFSET_FILE": str(self.clock_file),  # read by tests.helpers.shard_clockskew only
            **{f"SAGA_{name.upper()}_ADDR": addr for name, addr in services.items()},
        }

    def task_count(self) -> int | None:
        return read_task_count(self.task_file)

    def rss_kib(self) -> int:
        """Resident memory (Linux /proc); 0 if the process is not running."""
        if not self.running or self.proc is None:
            return 0
        try:
            for line in Path(f"/proc/{self.proc.pid}/status").read_text().splitlines():
                if line.startswith("VmRSS:"):
                    return int(line.split()[1])
        except OSError:
            pass
        return 0


@dataclass
class Cluster:
    root: Path
    shards: int = 3
    settings: ShardSettings = field(default_factory=ShardSettings)
    services: dict[str, str] = field(default_factory=dict)
    """Per-service address overrides (e.g. payment through a proxy); the rest go to the stubs."""
    reload_interval_s: float = 0.2
    stock: dict[str, int] = field(default_factory=dict)
    shard_module: str = "tests.helpers.shard_probe"
    """What runs a shard: shard_probe, or shard_clockskew for a wall clock the test can move."""
    journal_dirs: dict[str, Path] = field(default_factory=dict)
    """Shard id -> directory of its journal (default: root), e.g. a small tmpfs."""

    def __post_init__(self) -> None:
        self.root.mkdir(parents=True, exist_ok=True)
        self.stubs = StubProcess(self.root / "stubs", stock=self.stock, start=False, log_path=self.root / "stubs.log")
        self.nodes: list[ShardChild] = []
        self.shards_toml = self.root / "shards.toml"
        self.epochs = self.root / "router.epochs.json"
        self.router = Child(
            "router",
            "shard_router",
            ["--listen", "", "--config", str(self.shards_toml), "--epochs", str(self.epochs)],
            free_port(),
            self.root / "router.log",
        )
        self.router.args[1] = self.router.address
        self.integrity_checks = 0
        self.integrity_failures: list[str] = []
        self.restarts = 0

    @property
    def stub_address(self) -> str:
        return self.stubs.address

    @property
    def shard_addresses(self) -> list[str]:
        return [n.address for n in self.nodes]

    def _service_map(self) -> dict[str, str]:
        base = {name: self.stubs.address for name in ("order", "inventory", "payment", "shipping")}
        return {**base, **self.services}

    def _new_node(self) -> ShardChild:
        shard_id = f"shard-{len(self.nodes) + 1}"
        node = ShardChild(
            self.root, shard_id, self._service_map(), self.settings, self.shard_module, self.journal_dirs.get(shard_id)
        )
        self.nodes.append(node)
        return node

    def write_shards_toml(self, count: int | None = None) -> None:
        """Lists the first `count` shards (default all) for the router; written then renamed, as an editor saves."""
        nodes = self.nodes[: count if count is not None else len(self.nodes)]
        lines = [f"[router]\nreload_interval_s = {self.reload_interval_s}\n"]
        for n in nodes:
            lines.append(f'[[shards]]\nid = "{n.shard_id}"\naddress = "{n.address}"\n')
        tmp = self.shards_toml.with_suffix(".tmp")
        tmp.write_text("\n".join(lines))
        os.replace(tmp, self.shards_toml)

    async def start(self) -> None:
        await asyncio.to_thread(self.stubs.start)
        for _ in range(self.shards):
            self._new_node()
        await asyncio.gather(*(asyncio.to_thread(n.start) for n in self.nodes))
        self.write_shards_toml()
        await asyncio.to_thread(self.router.start)

    async def stop(self) -> None:
        """Stops everything this cluster started (each by its pid), then checks every journal once more."""
        await asyncio.to_thread(self.router.terminate)
        await asyncio.gather(*(asyncio.to_thread(n.terminate) for n in self.nodes))
        await asyncio.to_thread(self.stubs.kill)
        for n in self.nodes:
            self.check_journal(n)

    def kill_all(self) -> None:
        """Last-resort cleanup (SIGKILL by pid) for a scenario that failed half-way."""
        self.router.kill()
        for n in self.nodes:
            n.kill()
        self.stubs.kill()

    def check_journal(self, node: ShardChild) -> None:
        if not node.journal.exists():
            return
        self.integrity_checks += 1
        try:
            result = integrity(node.journal)
        except sqlite3.Error as e:
            result = f"cannot check: {e}"
        if result != "ok":
            self.integrity_failures.append(f"I6 {node.shard_id} journal after restart {self.restarts}: {result}")

    async def kill_shard(self, i: int) -> None:
        await asyncio.to_thread(self.nodes[i].kill)

    async def start_shard(self, i: int, extra_env: Mapping[str, str] | None = None) -> None:
        """(Re)starts shard i on its port and journal; checks the journal once it is back (I6)."""
        node = self.nodes[i]
        await asyncio.to_thread(node.start, extra_env)
        self.restarts += 1
        self.check_journal(node)

    async def restart_router(self) -> None:
        await asyncio.to_thread(self.router.kill)
        await asyncio.to_thread(self.router.start)

    async def add_shard(self) -> ShardChild:
        """Starts one more shard process and lists it in the router's file (the router reloads without a restart)."""
        node = self._new_node()
        await asyncio.to_thread(node.start)
        self.write_shards_toml()
        return node

    def logs_tail(self, chars: int = 2000) -> str:
        parts = [f"--- {c.name}\n{c.log()[-chars:]}" for c in (*self.nodes, self.router)]
        return "\n".join(parts)


__all__ = ["Child", "Cluster", "ShardChild", "ShardSettings", "integrity"]
