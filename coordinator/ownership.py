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
"""

from __future__ import annotations

import asyncio
import json

from loguru import logger

from common.ring import EPOCH_KEY, REFUSAL_KEY, EpochError, EpochHistory, Refusal, fence

from .errors import SagaError
from .journal import Journal
from .metrics import ShardMetrics


class RingRefused(SagaError):
    """A call routed by a ring this shard cannot serve it under; the router retries after refreshing."""

    status = SagaError.status.FAILED_PRECONDITION

    def __init__(self, message: str, refusal: Refusal, shard_epoch: int) -> None:
        super().__init__(message)
        self.refusal = refusal
        self.shard_epoch = shard_epoch

    def trailing(self) -> tuple[tuple[str, str], ...]:
        return ((REFUSAL_KEY, self.refusal.value), (EPOCH_KEY, str(self.shard_epoch)))


class Ownership:
    def __init__(self, shard_id: str, journal: Journal, metrics: ShardMetrics) -> None:
        self._shard_id = shard_id
        self._journal = journal
        self._metrics = metrics
        self._installing = asyncio.Lock()
        self.history = EpochHistory()

    async def load(self) -> None:
        """Reads the stored history (before the shard serves)."""
        text = await self._journal.ring_history()
        if text is not None:
            self.history = EpochHistory.from_json(json.loads(text))
        self._metrics.ring_epoch.set(self.history.number)

    def check(self, call_epoch: int | None, order_id: str, creating: bool) -> None:
        """Raises RingRefused unless a call routed by call_epoch may answer NOT_FOUND for order_id (creating=False) or
        start its saga here (creating=True). Only for orders the shard does not hold; synchronous, so the caller can
        check and register a new saga with no await in between."""
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

    async def install(self, offered: EpochHistory) -> EpochHistory:
        """Keeps offered if it is newer than (or a trimmed/readdressed copy of) what the shard holds, durably; returns
        what the shard holds afterwards. Raises RingRefused (CONFLICT) if offered has another placement under a number
        the shard holds."""
        async with self._installing:  # one install at a time: each compares against the one before
            held = self.history
            conflict = held.conflict_with(offered)
            if conflict is not None:
                self._metrics.ring_refusals.labels(Refusal.CONFLICT.value).inc()
                raise RingRefused(
                    f"shard {self._shard_id} holds another placement under ring epoch {conflict}: the epochs file was"
                    " written from a stale copy or by hand; restore it (saga-router epochs list shows each side)",
                    Refusal.CONFLICT,
                    held.number,
                )
            if offered.number < held.number or offered == held or not offered.epochs:
                return held
            await self._journal.save_ring_history(offered.number, json.dumps(offered.to_json()))
            self.history = offered
            self._metrics.ring_epoch.set(offered.number)
        if offered.number != held.number:
            logger.info("ring epoch {} installed (was {})", offered.number, held.number or "none")
        return offered


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
