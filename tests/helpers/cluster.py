"""The whole system for chaos tests, started by the launcher users run (deploy.local.LocalSystem) with the chaos
settings: fast retry policies, a journal key, a clock-offset file per shard; every restart checks the journal with
PRAGMA integrity_check (I6).

    cluster = Cluster(tmp_path, shards=3)
    await cluster.start()
    await cluster.kill_shard(0); await cluster.start_shard(0)   # SIGKILL, restart on the same port and journal
    await cluster.add_shard()                                   # a 4th process, then listed in the router's file
    Cluster(tmp_path, routers=3, router_views=True)             # routers that each see ring changes when published
    await cluster.stop()                                        # everything it started, by pid

A shard's asyncio task count comes from its /metrics (saga_asyncio_tasks). Process control blocks briefly, so the
async methods run it in a thread: in-process servers (a TCP proxy, say) keep serving meanwhile.
"""

from __future__ import annotations

import asyncio
import shutil
import sqlite3
import subprocess
import sys
from collections.abc import Mapping
from dataclasses import dataclass, field
from pathlib import Path

from deploy.local import Child, LocalSystem, SystemOptions, free_port
from tests.helpers.scrape import scrape, value

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


class ShardChild:
    """One shard process as the scenarios see it: the launcher's child plus its journal and clock-offset file."""

    def __init__(self, child: Child, journal: Path, clock_file: Path) -> None:
        self.child = child
        self.shard_id = child.name
        self.journal = journal
        self.clock_file = clock_file

    @property
    def name(self) -> str:
        return self.child.name

    @property
    def address(self) -> str:
        return self.child.address

    @property
    def running(self) -> bool:
        return self.child.running

    def exit_code(self) -> int | None:
        return self.child.exit_code()

    def log(self) -> str:
        return self.child.log()

    def rss_kib(self) -> int:
        return self.child.rss_kib()

    def task_count(self) -> int | None:
        """Tasks alive on its event loop (its /metrics); None if it does not answer."""
        assert self.child.spec.metrics is not None
        try:
            return int(value(scrape(self.child.spec.metrics, timeout_s=2.0), "saga_asyncio_tasks"))
        except OSError:
            return None


@dataclass
class Cluster:
    root: Path
    shards: int = 3
    settings: ShardSettings = field(default_factory=ShardSettings)
    services: dict[str, str] = field(default_factory=dict)
    """Per-service address overrides (e.g. payment through a proxy); the rest go to the stubs."""
    reload_interval_s: float = 0.2
    shard_module: str = "coordinator"
    """What runs a shard: the coordinator, or tests.helpers.shard_clockskew for a wall clock the test can move."""
    journal_dirs: dict[str, Path] = field(default_factory=dict)
    """Shard id -> directory of its journal (default: root), e.g. a small tmpfs."""
    routers: int = 1
    replicate: bool = False
    """Every shard's journal replicated by Litestream (replica-N processes, file replicas under root/replicas)."""
    router_views: bool = False
    """Each router reads its own copy of the ring files, brought up to date by publish(name)."""
    env: dict[str, str] = field(default_factory=dict)
    """More environment for every process (e.g. OTEL_* to export traces)."""
    shared_key: bool = True
    """Every shard's hash key derived from one secret (SAGA_JOURNAL_KEY); False: each shard's own key file with a
    random key, created beside its journal at its first start, as `make run` does."""
    system: LocalSystem | None = None
    integrity_checks: int = 0
    integrity_failures: list[str] = field(default_factory=list)
    restarts: int = 0

    def __post_init__(self) -> None:
        self.root.mkdir(parents=True, exist_ok=True)
        self.nodes: list[ShardChild] = []
        # Known before start: a scenario may put a proxy in front of the stubs first.
        self.stubs_port = free_port()

    def _clock_env(self, shard_id: str) -> dict[str, str]:
        # Read by tests.helpers.shard_clockskew only.
        return {"SAGA_CLOCK_OFFSET_FILE": str(self.root / f"{shard_id}.clock")}

    def _node(self, child: Child) -> ShardChild:
        journal = self.journal_dirs.get(child.name, self.root) / f"{child.name}.db"
        return ShardChild(child, journal, self.root / f"{child.name}.clock")

    def _build(self) -> LocalSystem:
        # Built at start, not at construction: scenarios set services and journal_dirs in between.
        options = SystemOptions(
            self.root,
            shards=self.shards,
            ports={"stubs": self.stubs_port},
            dashboard=False,
            shard_config=self.settings.toml(),
            shard_module=self.shard_module,
            env={**({"SAGA_JOURNAL_KEY": "chaos-secret"} if self.shared_key else {}), **self.env},
            process_env={f"shard-{i}": self._clock_env(f"shard-{i}") for i in range(1, self.shards + 1)},
            services=self.services,
            journal_dirs=self.journal_dirs,
            router_settings={"reload_interval_s": self.reload_interval_s},
            routers=self.routers,
            router_views=self.router_views,
            replicate=self.replicate,
        )
        return LocalSystem(options, log_dir=self.root, cwd=REPO_ROOT)

    @property
    def router(self) -> Child:
        assert self.system is not None, "not started"
        return self.system.router

    @property
    def router_children(self) -> list[Child]:
        """Every router (the first is `router`)."""
        assert self.system is not None, "not started"
        return self.system.routers

    @property
    def stub_address(self) -> str:
        return f"127.0.0.1:{self.stubs_port}"

    @property
    def shard_addresses(self) -> list[str]:
        return [n.address for n in self.nodes]

    async def start(self) -> None:
        self.system = self._build()
        await asyncio.to_thread(self.system.start)
        self.nodes = [self._node(c) for c in self.system.shards]

    async def stop(self) -> None:
        """Stops everything this cluster started (each by its pid), then checks every journal once more."""
        if self.system is not None:
            await asyncio.to_thread(self.system.stop)
        for n in self.nodes:
            self.check_journal(n)

    def kill_all(self) -> None:
        """Last-resort cleanup (SIGKILL by pid) for a scenario that failed half-way."""
        if self.system is not None:
            for child in self.system.processes:
                child.kill()

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
        await asyncio.to_thread(self.nodes[i].child.kill)

    async def start_shard(self, i: int, extra_env: Mapping[str, str] | None = None) -> None:
        """(Re)starts shard i on its port and journal; checks the journal once it is back (I6). LaunchError (a
        RuntimeError) if it does not come up."""
        node = self.nodes[i]
        assert self.system is not None
        await asyncio.to_thread(self.system.restart, node.shard_id, extra_env)
        self.restarts += 1
        self.check_journal(node)

    async def restart_router(self, name: str = "router") -> None:
        assert self.system is not None
        await asyncio.to_thread(self.system.restart, name)

    async def kill_router(self, name: str = "router") -> None:
        assert self.system is not None
        await asyncio.to_thread(self.system[name].kill)

    async def kill_replica(self, shard_id: str) -> None:
        """SIGKILL the Litestream replicating shard_id's journal."""
        assert self.system is not None
        await asyncio.to_thread(self.system[_replica_of(shard_id)].kill)

    async def start_replica(self, shard_id: str) -> None:
        assert self.system is not None
        await asyncio.to_thread(self.system.restart, _replica_of(shard_id))

    def lose_journal(self, node: ShardChild) -> None:
        """The disk is gone: the journal, its WAL and shm, and Litestream's local state beside it (the key file lives
        apart and stays, as a Secret or a separate backup would)."""
        for suffix in ("", "-wal", "-shm"):
            Path(f"{node.journal}{suffix}").unlink(missing_ok=True)
        shutil.rmtree(node.journal.with_name(f".{node.journal.name}-litestream"), ignore_errors=True)

    def restore_journal(self, node: ShardChild) -> str:
        """python -m coordinator restore from the shard's file replica, as deploy/README.md shows; its output."""
        assert self.system is not None
        replica = self.system.replica_dir(node.shard_id)
        done = subprocess.run(
            [
                *(sys.executable, "-m", "coordinator", "restore", "--journal", str(node.journal)),
                *("--shard-id", node.shard_id, "--replica", f"file://{replica}"),
            ],
            capture_output=True,
            text=True,
            timeout=120,
            cwd=REPO_ROOT,
        )
        if done.returncode != 0:
            raise RuntimeError(f"restore of {node.shard_id} failed: {done.stdout}{done.stderr}")
        return done.stdout

    async def publish(self, router: str) -> None:
        """With router_views: the router's ring files become today's (it reloads them at its next poll)."""
        assert self.system is not None
        await asyncio.to_thread(self.system.publish, router)

    async def add_shard(self, publish: bool = True) -> ShardChild:
        """Starts one more shard process, lists it in the routers' file and commits the ring (the routers reload
        without a restart); publish=False (router_views): each router sees it once publish(name) is called."""
        assert self.system is not None
        shard_id = f"shard-{len(self.nodes) + 1}"
        child = await asyncio.to_thread(self.system.add_shard, self._clock_env(shard_id), publish)
        node = self._node(child)
        self.nodes.append(node)
        return node

    def logs_tail(self, chars: int = 2000) -> str:
        parts = [f"--- {c.name}\n{c.log()[-chars:]}" for c in (*self.nodes, self.router)]
        return "\n".join(parts)


def _replica_of(shard_id: str) -> str:
    """The launcher's name of the Litestream replicating shard-N's journal."""
    return "replica-" + shard_id.removeprefix("shard-")


__all__ = ["Cluster", "ShardChild", "ShardSettings", "integrity"]
