"""Installing rings: at start, when the config or epochs file changes (polled), and on SIGHUP.

A reload builds a new Topology and swaps it in with one assignment; calls already running keep the snapshot they
started with, so nothing in flight is dropped or re-routed. A reload that fails (bad file, corrupt epochs file, a shard
removed while it still has unfinished sagas) logs why and keeps the previous ring; saving the file again or SIGHUP
retries. At start the same failures are fatal, with the same message.

Removing a shard: a shard that leaves the file entirely must not hold unfinished sagas (RUNNING, COMPENSATING,
DEAD_LETTERED), else no one would finish or repair them once it is stopped; the router asks it and refuses the change if
it has any or cannot be asked. The drain procedure (deploy/README.md): mark the shard `draining = true` (it owns no new
orders but keeps serving the ones earlier rings gave it), wait until its sagas are terminal and older than the retry
window, `saga-router epochs drop`, then remove it from the file and stop it.
"""

from __future__ import annotations

import asyncio
import os
import time
from collections.abc import Callable

import grpc
from loguru import logger

from common.loops import run_every
from protos.saga.v1 import saga_pb2

from . import epochs
from .channels import ChannelPool
from .config import ConfigError, RouterConfig
from .epochs import EpochError, EpochHistory
from .metrics import Metrics
from .shard_checks import first_unfinished
from .topology import Topology

_CHECK_TIMEOUT_S = 5.0
"""Bound on asking a departing shard about its sagas; a reload should never hang on a sick shard."""


class RingChangeRefused(Exception):
    """The new config would strand sagas; the message says which shard and what to do."""


def wall_ms() -> int:
    return time.time_ns() // 1_000_000


def _signature(path: os.PathLike[str]) -> tuple[int, int, int] | None:
    """Changes whenever the file is edited in place or replaced by a rename (as editors and ConfigMaps do)."""
    try:
        st = os.stat(path)
    except OSError:
        return None
    return (st.st_mtime_ns, st.st_size, st.st_ino)


class TopologyManager:
    def __init__(
        self,
        load_config: Callable[[], RouterConfig],
        pool: ChannelPool,
        metrics: Metrics,
        now_ms: Callable[[], int] = wall_ms,
    ) -> None:
        self._load_config = load_config
        self._pool = pool
        self._metrics = metrics
        self._now_ms = now_ms
        self._current: Topology | None = None
        self._config: RouterConfig | None = None
        self._config_ids: frozenset[str] = frozenset()
        """Shard ids the installed config lists (draining ones included)."""
        self._signatures: tuple[object, object] = (None, None)
        self._kick = asyncio.Event()
        self._lock = asyncio.Lock()

    @property
    def current(self) -> Topology:
        if self._current is None:
            raise RuntimeError("no ring installed yet")
        return self._current

    async def start(self) -> RouterConfig:
        """Installs the first ring; raises ConfigError, EpochError or RingChangeRefused."""
        async with self._lock:
            return await self._load_and_install()

    async def reload(self) -> bool:
        """Re-reads the files and installs the ring they describe; False (and the old ring stays) if it cannot."""
        async with self._lock:
            try:
                await self._load_and_install()
            except (ConfigError, EpochError, RingChangeRefused) as e:
                self._metrics.ring_refused()
                logger.error("ring change refused, keeping epoch {}: {}", self.current.epoch, e)
                return False
            return True

    def request_reload(self) -> None:
        """Asks the watch loop to reload now (the SIGHUP handler)."""
        self._kick.set()

    async def watch(self, interval_s: float) -> None:
        """Reloads whenever a file changes or a reload is requested. Runs until cancelled; a reload that fails with a
        bug is logged and the previous ring stays (the watch goes on, or the next edit would go unnoticed)."""
        await run_every(
            interval_s,
            self._reload_if_changed,
            name="reload (the ring in use stays)",
            sleep=self._until_kicked,
            wait_first=True,
        )

    async def _until_kicked(self, timeout_s: float) -> None:
        """The watch's pause: until a reload is requested (SIGHUP) or timeout_s has passed."""
        try:
            await asyncio.wait_for(self._kick.wait(), timeout_s)
        except TimeoutError:
            pass

    async def _reload_if_changed(self) -> None:
        kicked = self._kick.is_set()
        self._kick.clear()
        if kicked or self._read_signatures() != self._signatures:
            await self.reload()

    def _read_signatures(self) -> tuple[object, object]:
        cfg = self._config
        return (None, None) if cfg is None else (_signature(cfg.config_path), _signature(cfg.epochs_path))

    async def _load_and_install(self) -> RouterConfig:
        config_before = self._read_signatures()[0]
        try:
            cfg = self._load_config()
            started = self._config
            if started is None:
                self._config = cfg  # from now on the watch loop knows which files to poll
            elif (started.settings, started.listen) != (cfg.settings, cfg.listen):
                logger.warning("[router] settings or listen address changed: restart the router to apply them")
            await self._install(cfg, epochs.read(cfg.epochs_path))
        finally:
            # A refused change is not retried at every poll (it would fail the same way and flood the log): only a new
            # edit or SIGHUP retries it. Our own write of the epochs file does not count as an edit.
            now = self._read_signatures()
            self._signatures = (config_before or now[0], now[1])
        return cfg

    async def _install(self, cfg: RouterConfig, history: EpochHistory) -> None:
        previous = self._current
        if previous is not None:
            listed_before, addresses_before = self._config_ids, previous.addresses
        else:  # at start, the last ring this router installed (before a restart) stands for the previous config
            last = history.current
            listed_before = frozenset(last.shard_ids) if last else frozenset()
            addresses_before = dict(last.shards) if last else {}
        for sid in sorted(listed_before - set(cfg.ring.addresses)):
            await self._check_removal(sid, addresses_before[sid])

        new_history = history.advance(cfg.ring, self._now_ms())
        if new_history is not history:
            epochs.write(cfg.epochs_path, new_history)
        topology = Topology.build(cfg.ring, new_history)
        self._current = topology
        self._config_ids = frozenset(cfg.ring.addresses)
        self._pool.retain(topology.addresses.values())
        self._metrics.ring_installed(topology.epoch, len(topology.ring.shard_ids), len(topology.older))
        if previous is None or previous.epoch != topology.epoch or previous.addresses != topology.addresses:
            logger.info(
                "ring epoch {} installed: owners {}, draining or retired {}, earlier epochs kept {}",
                topology.epoch,
                list(topology.ring.shard_ids),
                [s for s in topology.shard_ids if s not in topology.ring.shard_ids],
                [n for n, _ in topology.older],
            )

    async def _check_removal(self, shard_id: str, address: str) -> None:
        stub = self._pool.get(address).coordinator
        try:
            saga = await first_unfinished(stub, _CHECK_TIMEOUT_S)
        except grpc.aio.AioRpcError as e:
            raise RingChangeRefused(
                f"shard {shard_id} ({address}) left the config but cannot be asked whether it still has unfinished"
                f" sagas ({e.code().name}: {e.details()}); bring it back up or restore its entry"
            ) from None
        if saga is not None:
            raise RingChangeRefused(
                f"shard {shard_id} ({address}) left the config but still holds unfinished sagas (e.g. order"
                f" {saga.order_id!r}, {saga_pb2.SagaState.Name(saga.state)}); mark it `draining = true` instead and"
                " remove it once they are finished (deploy/README.md, 'Removing a shard')"
            )
