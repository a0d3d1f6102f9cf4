"""Which ring the router routes by, kept current from three sources: the epochs file, the shards, and the config.

The router holds no state of its own that correctness depends on. The ring history in use is the newest of:
- the epochs file (read-only here; `saga-router epochs commit` writes it), re-read when it changes (polled, SIGHUP);
- what the shards hold: a shard that refuses a call as routed by a stale epoch is asked for its history (GetRing), and
  every history this router installs is shown to every shard (InstallRing), whose answer may be newer still;
- a first start without an epochs file asks every shard the config lists for its history (GetRing) and routes by the
  newest one any of them holds: the config's shard list may have been edited since that ring was made, and an edited,
  uncommitted list taken as "epoch 1" would be a second placement under a number the shards already use. Only when
  every shard answers and none holds a history (a new cluster) does the config's ring become epoch 1; when some cannot
  be asked and none that answered holds one, the start waits (FIRST_RING_WAIT_S), then refuses.
A router never goes back to an older epoch, and refuses a history that puts another placement under a number it holds
(RingChangeRefused: the previous ring stays, an error is logged). The config file gives addresses and settings; a shard
list that differs from the current epoch's placement is reported (log, saga_router_ring_refused_total) and routes
nothing until it is committed.

A shard that refuses our history as a conflict (another placement under one of our numbers), or shows us one, means
this router's ring was made by no commit the shards know: until every such shard agrees again, the router creates no
saga (PlaceOrder answers UNAVAILABLE, disagreement()); reads still go to the shards, which answer only for what they
hold or fence. While it disagrees it shows its history to every shard at each poll, so the block lifts once they agree.

A change builds a new Topology and swaps it in with one assignment; calls already running keep the snapshot they
started with, so nothing in flight is dropped or re-routed.

Removing a shard from the config: a shard that leaves the file entirely must not hold unfinished sagas (RUNNING,
COMPENSATING, DEAD_LETTERED), else no one would finish or repair them once it is stopped; the router asks it and
refuses the change if it has any or cannot be asked. The drain procedure: deploy/README.md, "Removing a shard".
"""

from __future__ import annotations

import asyncio
import os
import time
from collections.abc import Callable

import grpc
from loguru import logger

from common.loops import run_every
from common.ring import (
    EPOCH_KEY,
    REFUSAL_KEY,
    EpochError,
    EpochHistory,
    Refusal,
    history_from_message,
    history_message,
)
from protos.ring.v1 import ring_pb2
from protos.saga.v1 import saga_pb2
from shard_router.channels import ChannelPool
from shard_router.config import ConfigError, RouterConfig
from shard_router.metrics import Metrics
from shard_router.ring import epochs
from shard_router.ring.shard_checks import first_unfinished
from shard_router.ring.topology import Topology

_CHECK_TIMEOUT_S = 5.0
"""Bound on asking a departing shard about its sagas; a reload should never hang on a sick shard."""
RING_CALL_TIMEOUT_S = 2.0
"""Bound on one GetRing/InstallRing call to a shard."""
FIRST_RING_WAIT_S = 10.0
"""Without an epochs file: how long the start waits for shards that cannot be asked which ring they hold (when none
that answered holds one) before the router refuses to start; one of them may hold the ring the others route by."""
_FIRST_RING_RETRY_S = 0.5


class RingChangeRefused(Exception):
    """The new config or history would strand sagas or contradict a ring in use; the message says what to do."""


def wall_ms() -> int:
    return time.time_ns() // 1_000_000


def _refusal(e: grpc.aio.AioRpcError) -> Refusal | None:
    """The fencing refusal (x-saga-ring-refusal) a shard's FAILED_PRECONDITION carries, if any."""
    if e.code() is not grpc.StatusCode.FAILED_PRECONDITION:
        return None
    for key, value in e.trailing_metadata() or ():
        if key == REFUSAL_KEY:
            try:
                return Refusal(value if isinstance(value, str) else value.decode())
            except ValueError:
                return None
    return None


def _epoch_of(e: grpc.aio.AioRpcError, default: int) -> int:
    """The shard's epoch a refusal names (x-saga-ring-epoch), else default."""
    for key, value in e.trailing_metadata() or ():
        if key == EPOCH_KEY:
            try:
                return int(value)
            except ValueError:
                break
    return default


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
        self._uncommitted: tuple[int, tuple[str, ...]] | None = None
        """The config's placement when it differs from the current epoch's (reported once per change)."""
        self._signatures: tuple[object, object] = (None, None)
        self._kick = asyncio.Event()
        self._lock = asyncio.Lock()
        self._announcing: set[asyncio.Task[None]] = set()
        self._conflicts: dict[str, int] = {}
        """Shard id -> an epoch number under which it holds another placement than the history in use."""
        self._disagreement: str | None = None
        """Why no saga may be created (built when _conflicts changes: PlaceOrder reads it per call), or None."""

    @property
    def current(self) -> Topology:
        if self._current is None:
            raise RuntimeError("no ring installed yet")
        return self._current

    async def start(self) -> RouterConfig:
        """Installs the first ring, then shows it to every shard (adopting a newer one any of them holds) before the
        router serves; raises ConfigError, EpochError or RingChangeRefused."""
        async with self._lock:
            cfg = await self._load_and_install()
        await self.announce()
        return cfg

    async def reload(self) -> bool:
        """Re-reads the files and installs what they describe; False (and the old ring stays) if it cannot."""
        async with self._lock:
            before = self.current.history
            try:
                await self._load_and_install()
            except (ConfigError, EpochError, RingChangeRefused) as e:
                self._metrics.ring_refused()
                logger.error("ring change refused, keeping epoch {}: {}", self.current.epoch, e)
                return False
            changed = self.current.history != before
        if changed:
            self._announce_later()
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
        if self._conflicts:
            await self.announce()  # each shard that agrees again is cleared; the block lifts when none is left

    def disagreement(self) -> str | None:
        """Why this router must create no saga now (a shard holds another placement under an epoch of ours), or None."""
        return self._disagreement

    def _record_conflict(self, shard_id: str, topo: Topology, epoch: int) -> None:
        if topo is not self._current:
            return  # about a history no longer in use
        if self._conflicts.get(shard_id) != epoch:
            self._conflicts[shard_id] = epoch
            self._metrics.ring_refused()
            self._update_disagreement()
            logger.error("{}", self._disagreement)

    def _record_agreement(self, shard_id: str, topo: Topology) -> None:
        if topo is self._current and self._conflicts.pop(shard_id, None) is not None:
            self._update_disagreement()
            logger.info(
                "shard {} agrees with ring epoch {} now{}",
                shard_id,
                topo.epoch,
                "; creating sagas again" if not self._conflicts else "",
            )

    def _update_disagreement(self) -> None:
        if not self._conflicts:
            self._disagreement = None
            return
        where = ", ".join(f"{sid} (at epoch {n})" for sid, n in sorted(self._conflicts.items()))
        self._disagreement = (
            f"this router's ring history (epoch {self.current.epoch}) and shard(s) {where} hold different placements"
            " under one epoch number: it places no new order until they agree. Compare `saga-router epochs list` with"
            " GetRing on the shards, restore the epochs file, and restart this router"
        )

    def _read_signatures(self) -> tuple[object, object]:
        cfg = self._config
        return (None, None) if cfg is None else (_signature(cfg.config_path), _signature(cfg.epochs_path))

    # ---- the shards' side -------------------------------------------------------------------------------------------

    async def resolve(self, refusal: Refusal, shard_id: str) -> None:
        """After a shard refused a call: learn its newer ring (STALE, NOT_OWNER) or show it ours (UNKNOWN). Errors are
        logged; the caller simply tries again (or gives up after its attempts)."""
        topo = self.current
        if refusal is Refusal.UNKNOWN:
            await self.install_on(shard_id, topo)
        else:
            await self.learn_from(shard_id, topo)

    async def install_on(self, shard_id: str, topo: Topology) -> None:
        """Shows the shard our history; adopts the shard's if it answers with a newer one."""
        address = topo.addresses.get(shard_id)
        if address is None:
            return
        try:
            reply = await self._pool.get(address).ring.InstallRing(
                ring_pb2.InstallRingRequest(history=history_message(topo.history)), timeout=RING_CALL_TIMEOUT_S
            )
        except grpc.aio.AioRpcError as e:
            if _refusal(e) is Refusal.CONFLICT:  # logged once per shard and epoch: the refusal repeats at each poll
                self._record_conflict(shard_id, topo, _epoch_of(e, topo.epoch))
            else:
                self._ring_call_failed("InstallRing", shard_id, e)
            return
        self._record_agreement(shard_id, topo)
        await self.adopt(reply.history, shard_id)

    async def learn_from(self, shard_id: str, topo: Topology) -> None:
        """Asks the shard for its history and adopts it if it is newer than ours."""
        address = topo.addresses.get(shard_id)
        if address is None:
            return
        try:
            reply = await self._pool.get(address).ring.GetRing(ring_pb2.GetRingRequest(), timeout=RING_CALL_TIMEOUT_S)
        except grpc.aio.AioRpcError as e:
            self._ring_call_failed("GetRing", shard_id, e)
            return
        await self.adopt(reply.history, shard_id)

    async def adopt(self, message: ring_pb2.RingHistory, shard_id: str) -> bool:
        """Routes by the shard's history from now on if it is newer than the one in use (and agrees with it on every
        epoch both hold). True if it was adopted."""
        try:
            offered = history_from_message(message)
        except EpochError as e:
            logger.error("shard {} sent a malformed ring history, ignored: {}", shard_id, e)
            return False
        async with self._lock:
            cfg, topo = self._config, self.current
            assert cfg is not None
            conflict = topo.history.conflict_with(offered)
            if conflict is not None:
                logger.error("shard {} holds another placement under ring epoch {}: not adopted", shard_id, conflict)
                self._record_conflict(shard_id, topo, conflict)
                return False
            self._record_agreement(shard_id, topo)
            if offered.number <= topo.epoch:
                return False
            self._install_topology(cfg, offered, f"learnt from shard {shard_id}")
        self._announce_later()
        return True

    async def announce(self) -> None:
        """Shows the history in use to every shard at once (each may answer with a newer one, which is adopted)."""
        topo = self.current
        await asyncio.gather(*(self.install_on(sid, topo) for sid in topo.shard_ids))

    def _announce_later(self) -> None:
        task = asyncio.create_task(self.announce(), name="ring-announce")
        self._announcing.add(task)
        task.add_done_callback(self._announcing.discard)

    def _ring_call_failed(self, method: str, shard_id: str, e: grpc.aio.AioRpcError) -> None:
        if e.code() is grpc.StatusCode.FAILED_PRECONDITION:
            logger.error("shard {} refused {}: {}", shard_id, method, e.details())
        else:
            logger.debug("{} on shard {} failed: {} {}", method, shard_id, e.code().name, e.details())

    # ---- the files' side --------------------------------------------------------------------------------------------

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
            # edit or SIGHUP retries it.
            now = self._read_signatures()
            self._signatures = (config_before or now[0], now[1])
        return cfg

    async def _install(self, cfg: RouterConfig, from_file: EpochHistory) -> None:
        previous = self._current
        in_use = previous.history if previous is not None else EpochHistory()
        if from_file.epochs:
            conflict = in_use.conflict_with(from_file)
            if conflict is not None:
                raise RingChangeRefused(
                    f"the epochs file {cfg.epochs_path} holds another placement under epoch {conflict} than the ring"
                    " this router routes by (from the file before, a shard, or the config taken as epoch 1); it was"
                    " written from a stale copy or without asking the shards: restore it, or commit again without"
                    " --offline"
                )
            # Equal numbers: the file wins (`epochs drop` trims it, an address may have moved).
            chosen = from_file if from_file.number >= in_use.number else in_use
        elif in_use.epochs:
            chosen = in_use  # never re-derived from an edited config: epoch 1 means one placement
        else:
            chosen = await self._first_history(cfg)

        if previous is not None:
            listed_before, addresses_before = self._config_ids, previous.addresses
            for sid in sorted(listed_before - set(cfg.ring.addresses)):
                await self._check_removal(sid, addresses_before[sid])

        self._config_ids = frozenset(cfg.ring.addresses)
        self._install_topology(cfg, chosen, "from the epochs file" if from_file.epochs else "")

    async def _first_history(self, cfg: RouterConfig) -> EpochHistory:
        """No epochs file and no ring yet: the newest history a shard of the config holds; the config's ring as epoch 1
        only if every shard answered and none holds any (a new cluster). Raises RingChangeRefused if, for
        FIRST_RING_WAIT_S, some cannot be asked and none that answered holds one."""
        deadline = time.monotonic() + FIRST_RING_WAIT_S
        shards = sorted(cfg.ring.addresses.items())
        while True:
            answers = await asyncio.gather(*(self._held_by(sid, address) for sid, address in shards))
            held = [(sid, h) for (sid, _), h in zip(shards, answers, strict=True) if h is not None and h.epochs]
            if held:
                source, newest = max(held, key=lambda found: found[1].number)
                for sid, h in held:
                    if (conflict := newest.conflict_with(h)) is not None:
                        logger.error(
                            "shards {} and {} hold other placements under ring epoch {}", source, sid, conflict
                        )
                logger.warning(
                    "no epochs file at {}: routing by ring epoch {} as shard {} holds it (the config's shard list is"
                    " not a ring until `saga-router epochs commit` records it)",
                    cfg.epochs_path,
                    newest.number,
                    source,
                )
                return newest
            unanswered = [sid for (sid, _), h in zip(shards, answers, strict=True) if h is None]
            if not unanswered:
                logger.warning(
                    "no epochs file at {} and no shard holds a ring: a new cluster, routing by the config's ring as"
                    " epoch 1 (saga-router epochs commit records it)",
                    cfg.epochs_path,
                )
                return epochs.committed(EpochHistory(), cfg.ring, self._now_ms())
            if time.monotonic() >= deadline:
                raise RingChangeRefused(
                    f"no epochs file at {cfg.epochs_path}, and shard(s) {unanswered} cannot be asked which ring they"
                    " hold (none that answered holds one): taking the config's shard list as the ring could put a"
                    " second placement under an epoch they use. Bring them up and start again, or restore the epochs"
                    " file"
                )
            await asyncio.sleep(_FIRST_RING_RETRY_S)

    async def _held_by(self, shard_id: str, address: str) -> EpochHistory | None:
        """The history the shard holds; None if it cannot be asked (or sends a malformed one)."""
        try:
            reply = await self._pool.get(address).ring.GetRing(ring_pb2.GetRingRequest(), timeout=RING_CALL_TIMEOUT_S)
        except grpc.aio.AioRpcError as e:
            if e.code() is grpc.StatusCode.UNIMPLEMENTED:
                return EpochHistory()  # no RingService: it holds no ring, and fences nothing either
            self._ring_call_failed("GetRing", shard_id, e)
            return None
        try:
            return history_from_message(reply.history)
        except EpochError as e:
            logger.error("shard {} sent a malformed ring history: {}", shard_id, e)
            return None

    def _install_topology(self, cfg: RouterConfig, history: EpochHistory, source: str) -> None:
        previous = self._current
        topology = Topology.build(cfg.ring, history)
        self._current = topology
        self._config = cfg
        self._pool.retain(topology.addresses.values())
        self._metrics.ring_installed(topology.epoch, len(topology.ring.shard_ids), len(topology.older))
        if previous is None or previous.epoch != topology.epoch or previous.addresses != topology.addresses:
            logger.info(
                "ring epoch {} installed{}: owners {}, draining or retired {}, earlier epochs kept {}",
                topology.epoch,
                f" ({source})" if source else "",
                list(topology.ring.shard_ids),
                [s for s in topology.shard_ids if s not in topology.ring.shard_ids],
                [n for n, _ in topology.older],
            )
        placement = (cfg.ring.vnodes, cfg.ring.ring_ids)
        current = history.current
        assert current is not None
        uncommitted = None if current.placement == placement else placement
        if uncommitted is not None and uncommitted != self._uncommitted:
            self._metrics.ring_refused()
            logger.warning(
                "the config lists owners {} (vnodes {}), but ring epoch {} has {} (vnodes {}): routing by epoch {}"
                " until the change is committed (saga-router epochs commit)",
                list(placement[1]),
                placement[0],
                current.number,
                list(current.shard_ids),
                current.vnodes,
                current.number,
            )
        self._uncommitted = uncommitted

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
