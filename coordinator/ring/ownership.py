"""Which orders this shard may start: the ring history routers showed it, and the fencing rule (common.ring.fence).

Every call a router forwards names the ring epoch it was routed by (metadata x-saga-ring-epoch). For an order the shard
holds (a saga, or what retention kept of one) the epoch does not matter: the saga lives here and the shard answers.
For one it does not hold, the shard answers NOT_FOUND or starts a saga only if the call's epoch is its own and, to
start one, only if that ring places the order here; otherwise it refuses with FAILED_PRECONDITION, the reason in
trailing metadata (x-saga-ring-refusal: stale, unknown, not-owner, conflict) and its own epoch (x-saga-ring-epoch), so
the router refreshes its ring and tries again. deploy/README.md, "Ring epochs and fencing", states why this keeps one
saga per order.

A newer history is stored in the journal before the shard acts on it: once a router has been told "I know epoch N", a
crash and restart cannot make the shard forget N and accept a call routed by an older ring.

Two cases where the shard's own history is not enough, so it asks its peers (coordinator.ring.peers, GetRing): - A
journal restored from its replica (coordinator/operations/restore.py marks it) may hold an older history than the one
the
  shard had acknowledged before the disk was lost: the last replicated second may not hold the newest InstallRing.
  Until it has caught up, the shard creates no saga and answers no routed call about an order it does not hold
  (UNAVAILABLE, x-saga-ring-refusal: catching-up; the client retries): it asks every owner of its current epoch, then
  of each newer epoch it learns, for their histories, adopts the newest, and only when every one of them answered
  clears the mark (in the commit that stores what it learnt). A router's InstallRing is still taken meanwhile, but it
  does not end the catch-up: that router may be the stale one.
- A shard's first history (a new shard, or one whose journal is empty): before it stores one, it asks the owners the
  offered history names. If one of them holds another placement under a number both hold, the offer is refused
  (CONFLICT): a router that derived the ring from an edited, uncommitted config must not find a fresh shard that
  accepts it while the others refuse it. A newer history a peer holds is taken instead. Peers that do not answer are
  skipped here (a shard must be able to join while another is down); the routers' own rule (shard_router.ring.reload)
  keeps them from deriving such a ring in the first place.
"""

from __future__ import annotations

import asyncio
import json

from loguru import logger

from common.ring import EPOCH_KEY, REFUSAL_KEY, EpochError, EpochHistory, Refusal, fence
from coordinator.journal import Journal
from coordinator.metrics import ShardMetrics
from coordinator.ring.peers import PeerRings, PeerUnanswered
from coordinator.saga.errors import SagaError

CATCH_UP_RETRY_S = 1.0
"""Pause between two rounds of asking the peers while a restored shard catches up (until all of them answered)."""


class RingRefused(SagaError):
    """A call routed by a ring this shard cannot serve it under; the router retries after refreshing."""

    status = SagaError.status.FAILED_PRECONDITION

    def __init__(self, message: str, refusal: Refusal, shard_epoch: int) -> None:
        super().__init__(message)
        self.refusal = refusal
        self.shard_epoch = shard_epoch

    def trailing(self) -> tuple[tuple[str, str], ...]:
        return ((REFUSAL_KEY, self.refusal.value), (EPOCH_KEY, str(self.shard_epoch)))


class RingCatchingUp(SagaError):
    """The journal was restored and the shard has not yet learnt its peers' newest ring: try again shortly."""

    status = SagaError.status.UNAVAILABLE

    def __init__(self, message: str, shard_epoch: int) -> None:
        super().__init__(message)
        self.shard_epoch = shard_epoch

    def trailing(self) -> tuple[tuple[str, str], ...]:
        return (
            (REFUSAL_KEY, Refusal.CATCHING_UP.value),
            (EPOCH_KEY, str(self.shard_epoch)),
            ("retry-after-ms", str(int(CATCH_UP_RETRY_S * 1000))),
        )


class Ownership:
    def __init__(self, shard_id: str, journal: Journal, metrics: ShardMetrics, peers: PeerRings | None = None) -> None:
        self._shard_id = shard_id
        self._journal = journal
        self._metrics = metrics
        self._peers = peers
        self._installing = asyncio.Lock()
        self.history = EpochHistory()
        self.catching_up = False
        """The journal was restored from a replica and the peers have not all been asked since (catch_up)."""
        self.caught_up = asyncio.Event()
        """Set once catching_up is False (at load for a journal that was not restored)."""

    async def load(self) -> None:
        """Reads the stored history, and whether a restore left it to catch up (before the shard serves)."""
        text = await self._journal.ring_history()
        if text is not None:
            self.history = EpochHistory.from_json(json.loads(text))
        self._metrics.ring_epoch.set(self.history.number)
        self.catching_up = await self._journal.restored_at() is not None
        if not self.catching_up:
            self.caught_up.set()
        else:
            logger.warning(
                "journal restored from a replica: shard {} holds ring epoch {} and creates no saga until it has asked"
                " its peers for a newer one",
                self._shard_id,
                self.history.number or "none",
            )

    def check(self, call_epoch: int | None, order_id: str, creating: bool) -> None:
        """Raises RingRefused unless a call routed by call_epoch may answer NOT_FOUND for order_id (creating=False) or
        start its saga here (creating=True); RingCatchingUp while a restored journal's history may be behind. Only for
        orders the shard does not hold; synchronous, so the caller can check and register a new saga with no await in
        between."""
        if self.catching_up and (creating or call_epoch is not None):
            self._metrics.ring_refusals.labels(Refusal.CATCHING_UP.value).inc()
            raise RingCatchingUp(
                f"shard {self._shard_id} was restored from a replica and is still learning the newest ring from its"
                f" peers (it holds epoch {self.history.number}); retry shortly",
                self.history.number,
            )
        refusal = fence(call_epoch, self.history, self._shard_id, order_id, creating)
        if refusal is None:
            return
        self._metrics.ring_refusals.labels(refusal.value).inc()
        known = self.history.number
        if refusal is Refusal.STALE:
            why = f"routed by ring epoch {call_epoch}, but shard {self._shard_id} knows epoch {known}"
        elif refusal is Refusal.UNKNOWN:
            why = f"routed by ring epoch {call_epoch}, newer than epoch {known} that shard {self._shard_id} holds"
        else:
            why = f"ring epoch {known} does not place order {order_id!r} on shard {self._shard_id}"
        raise RingRefused(f"{why}; the router refreshes its ring and retries", refusal, known)

    def allows(self, call_epoch: int | None, order_id: str) -> bool:
        """Whether check(call_epoch, order_id, creating=False) would pass now; counts nothing."""
        if self.catching_up and call_epoch is not None:
            return False
        return fence(call_epoch, self.history, self._shard_id, order_id, creating=False) is None

    async def install(self, offered: EpochHistory) -> EpochHistory:
        """Keeps offered if it is newer than (or a trimmed/readdressed copy of) what the shard holds, durably; returns
        what the shard holds afterwards. Raises RingRefused (CONFLICT) if offered has another placement under a number
        the shard holds."""
        async with self._installing:  # one install at a time: each compares against the one before
            held = self.history
            self._refuse_conflict(held, offered, f"shard {self._shard_id}")
            if offered.number < held.number or offered == held or not offered.epochs:
                return held
            if not held.epochs and self._peers is not None:
                offered, _ = await self._ask_peers(offered)
            await self._store(offered)
        if offered.number != held.number:
            logger.info("ring epoch {} installed (was {})", offered.number, held.number or "none")
        return offered

    async def catch_up(self, retry_s: float = CATCH_UP_RETRY_S) -> None:
        """After a restore: asks the peers until every one of them has answered, adopting the newest history they hold,
        then clears the restore's mark. Runs until then, or until cancelled (the shard stops)."""
        if self._peers is None:
            logger.error(
                "restored shard {} has no way to ask its peers: it stays unable to create sagas", self._shard_id
            )
            return
        rounds = 0
        while self.catching_up:
            rounds += 1
            start = self.history
            # Asked without the install lock: a router's InstallRing meanwhile is taken, and the round starts again.
            try:
                found, unanswered = await self._ask_peers(start)
            except RingRefused as e:
                # Two placements under one number: no history is safe to route by until an operator settles it.
                logger.error("restored shard {} cannot catch up: {}", self._shard_id, e.message)
                found, unanswered = start, ["(conflict)"]
            async with self._installing:
                if self.history != start:
                    continue  # a router showed it another history meanwhile: ask the owners of that one
                if not unanswered:
                    await self._store(found, caught_up=True)
                    self.catching_up = False
                    self.caught_up.set()
                    logger.info(
                        "restored shard {} caught up with its peers: ring epoch {} (the replica held {})",
                        self._shard_id,
                        found.number or "none",
                        start.number or "none",
                    )
                    return
                if found.number > start.number:
                    await self._store(found)
            if rounds == 1 or rounds % 30 == 0:
                logger.warning(
                    "restored shard {} still waits for peers {} to say which ring they hold (ring epoch {} so far);"
                    " it creates no saga until they have",
                    self._shard_id,
                    unanswered,
                    self.history.number or "none",
                )
            await asyncio.sleep(retry_s)

    async def _ask_peers(self, start: EpochHistory) -> tuple[EpochHistory, list[str]]:
        """Asks every owner of start's current epoch, then of any newer epoch one of them holds, which history it
        holds. Returns the newest one found (start if none is newer) and the peers that did not answer; raises
        RingRefused (CONFLICT) if one holds another placement under a number start or a newer answer holds."""
        assert self._peers is not None
        best = start
        asked = {self._shard_id}
        unanswered: list[str] = []
        while True:
            current = best.current
            todo = [] if current is None else [(sid, addr) for sid, addr in current.shards if sid not in asked]
            if not todo:
                return best, unanswered
            asked.update(sid for sid, _ in todo)
            answers = await asyncio.gather(*(self._peers.get(addr) for _, addr in todo), return_exceptions=True)
            for (sid, _), answer in zip(todo, answers, strict=True):
                if isinstance(answer, PeerUnanswered):
                    logger.info("shard {} could not ask peer {} for its ring: {}", self._shard_id, sid, answer)
                    unanswered.append(sid)
                    continue
                if isinstance(answer, BaseException):
                    raise answer
                self._refuse_conflict(answer, best, f"peer {sid}")
                if answer.number > best.number:
                    best = answer

    def _refuse_conflict(self, held: EpochHistory, offered: EpochHistory, holder: str) -> None:
        conflict = held.conflict_with(offered)
        if conflict is None:
            return
        self._metrics.ring_refusals.labels(Refusal.CONFLICT.value).inc()
        raise RingRefused(
            f"{holder} holds another placement under ring epoch {conflict}: the epochs file was written from a stale"
            " copy or by hand, or a router took an uncommitted config as the ring; restore it (saga-router epochs"
            " list shows each side)",
            Refusal.CONFLICT,
            self.history.number,
        )

    async def _store(self, history: EpochHistory, caught_up: bool = False) -> None:
        await self._journal.save_ring_history(history.number, json.dumps(history.to_json()), caught_up=caught_up)
        self.history = history
        self._metrics.ring_epoch.set(history.number)


def call_epoch(metadata: object) -> int | None:
    """The x-saga-ring-epoch of a call's invocation metadata; None if absent. Raises EpochError if malformed."""
    if not metadata:
        return None
    for key, value in metadata:  # type: ignore[attr-defined]
        if key == EPOCH_KEY:
            try:
                number = int(value)
            except (TypeError, ValueError):
                raise EpochError(f"{EPOCH_KEY} must be a positive integer, got {value!r}") from None
            if number < 1:
                raise EpochError(f"{EPOCH_KEY} must be a positive integer, got {value!r}")
            return number
    return None
