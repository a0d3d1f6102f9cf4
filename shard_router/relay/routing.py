"""Which shard a call about one order goes to: the current owner, unless an earlier ring put the order elsewhere.

The epoch rule (DESIGN contract 7). The current ring decides where a *new* order goes; earlier rings
(shard_router.ring.epochs) decide where an *existing* order may already be:

- PlaceOrder: for every shard an earlier ring placed the order on (other than its current owner), the router asks that
  shard GetSaga(order_id), all at once. If one holds the saga, the PlaceOrder goes there (the shard joins the existing
  saga), so a client retry after a re-shard never starts a second saga. If every one answers NOT_FOUND, the order goes
  to its current owner. If one does not answer (down, overloaded, deadline), the router fails the call with that shard's
  status rather than guess: a retry later is safe, a second saga is not.
- GetSaga, WatchSaga, ResolveDeadLetter and RetryDeadLetter for one order: the current owner first, then the earlier
  owners in turn; the first answer other than NOT_FOUND wins. A saga lives on exactly one shard, so a shard's answer
  that it holds (or judges) the saga is authoritative; NOT_FOUND is returned only if every candidate said so.

Also, within one router a PlaceOrder arriving while another PlaceOrder for the same order is still in flight goes to the
same shard, so a client that retries during a ring change cannot slip between "not there yet" and "accepted".
With no earlier epoch (the usual steady state) none of this costs anything: the owner is one ring lookup.

Across routers, the shards enforce it (fencing, coordinator.ring.ownership): every call, probes included, carries the
epoch it was routed by, and a shard that knows a newer ring, or has not been shown this one, refuses a call about an
order it does not hold (FAILED_PRECONDITION with x-saga-ring-refusal). The router then learns the newer ring from that
shard, or shows it its own, and routes the call again from the start, at most RING_ATTEMPTS times. deploy/README.md,
"Ring epochs and fencing", states the invariant and why it holds."""

from __future__ import annotations

import asyncio
from collections.abc import Awaitable, Callable
from typing import Protocol, TypeVar

import grpc
from google.protobuf.message import DecodeError

from common.ring import REFUSAL_KEY, Refusal
from protos.saga.v1 import saga_pb2
from shard_router.errors import InvalidArgument, Outcome, RingDisagreement, ShardStatus, outcome
from shard_router.relay.forwarding import GET_SAGA, PLACE_ORDER, WATCH_SAGA, Forwarder, IncomingCall, Reply, ShardStream
from shard_router.ring.topology import Topology

RING_ATTEMPTS = 5
"""Routings of one call while shards refuse it for its ring epoch; each one refreshes the ring first. Ring changes are
rare and each refusal moves the router to a newer epoch, so more than two in a row means the rings disagree for good
(an operator's error), and the caller gets UNAVAILABLE with the last refusal rather than a loop."""

T = TypeVar("T")


class Rings(Protocol):
    """Where a refused call's router refreshes its ring (shard_router.ring.reload.TopologyManager)."""

    async def resolve(self, refusal: Refusal, shard_id: str) -> None: ...

    def disagreement(self) -> str | None:
        """Why no saga may be created now (a shard holds another placement under an epoch of ours), or None."""
        ...


def ring_refusal(e: ShardStatus) -> Refusal | None:
    """The fencing refusal a shard's status carries, if it is one."""
    if e.code is not grpc.StatusCode.FAILED_PRECONDITION:
        return None
    for key, value in e.trailing_metadata:
        if key == REFUSAL_KEY:
            try:
                return Refusal(value if isinstance(value, str) else value.decode())
            except ValueError:
                return None
    return None


class _Placing:
    """PlaceOrder calls in flight on this router: order id -> (shard id, address, number of calls)."""

    def __init__(self) -> None:
        self._calls: dict[str, tuple[str, str, int]] = {}

    def get(self, order_id: str) -> tuple[str, str] | None:
        entry = self._calls.get(order_id)
        return None if entry is None else (entry[0], entry[1])

    def join(self, order_id: str, shard_id: str, address: str, follow: bool = True) -> tuple[str, str]:
        """Registers a call; if one is already in flight for the order, the new one joins its shard (even if routed by
        another epoch: if that shard took the order it holds it; if not, it refuses and this call places it again,
        with follow=False)."""
        entry = self._calls.get(order_id)
        if entry is not None and follow:
            shard_id, address = entry[0], entry[1]
        self._calls[order_id] = (shard_id, address, (entry[2] if entry else 0) + 1)
        return shard_id, address

    def leave(self, order_id: str) -> None:
        shard_id, address, n = self._calls[order_id]
        if n == 1:
            del self._calls[order_id]
        else:
            self._calls[order_id] = (shard_id, address, n - 1)


def parse_order_id(
    message: type[saga_pb2.PlaceOrderRequest]
    | type[saga_pb2.GetSagaRequest]
    | type[saga_pb2.WatchSagaRequest]
    | type[saga_pb2.ResolveDeadLetterRequest],
    request: bytes,
) -> str:
    """The order_id of a raw request (field 1 of every request routed by order)."""
    try:
        return str(message.FromString(request).order_id)
    except DecodeError:
        raise InvalidArgument("request", f"not a valid {message.DESCRIPTOR.full_name}") from None


class Router:
    """Routes calls about one order, using whatever topology is current when each call starts."""

    def __init__(
        self,
        topology: Callable[[], Topology],
        forwarder: Forwarder,
        probe_timeout_s: float,
        rings: Rings,
    ) -> None:
        self._topology = topology
        self._forwarder = forwarder
        self._probe_timeout_s = probe_timeout_s
        self._rings = rings
        self._placing = _Placing()

    async def _fenced(self, route: Callable[[Topology, int], Awaitable[T]]) -> T:
        """Runs route(topology, attempt) until no shard refuses it for its ring epoch (at most RING_ATTEMPTS times),
        refreshing the ring after each refusal."""
        for attempt in range(RING_ATTEMPTS):
            try:
                return await route(self._topology(), attempt)
            except ShardStatus as e:
                refusal = ring_refusal(e)
                if refusal is None:
                    raise
                self._forwarder.metrics.fenced(refusal.value)
                if refusal is Refusal.CONFLICT:
                    raise
                if attempt == RING_ATTEMPTS - 1:
                    raise ShardStatus(
                        e.shard_id,
                        grpc.StatusCode.UNAVAILABLE,
                        f"the ring is changing ({e.details}); retry the call",
                        e.trailing_metadata,
                    ) from None
                await self._rings.resolve(refusal, e.shard_id)
        raise AssertionError("unreachable")

    async def place_order(self, order_id: str, request: bytes, caller: IncomingCall) -> Reply:
        return await self._fenced(lambda topo, attempt: self._place(topo, attempt, order_id, request, caller))

    async def _place(self, topo: Topology, attempt: int, order_id: str, request: bytes, caller: IncomingCall) -> Reply:
        # A ring a shard refused as a conflict must place nothing (checked at every attempt: a refresh after a refusal
        # may be what found the conflict): under it a fresh shard might take an order that another ring's owner takes
        # too. One attribute read; no I/O on the hot path.
        why = self._rings.disagreement()
        if why is not None:
            raise RingDisagreement(why)
        routed = caller.routed_by(topo.epoch)
        # A retry after a refusal places the order afresh rather than following a call that went to the refusing shard.
        follow = attempt == 0
        target = self._placing.get(order_id) if follow else None
        if target is None:
            shard_id = await self._placement(topo, order_id, routed)
            target = (shard_id, topo.addresses[shard_id])
        shard_id, address = self._placing.join(order_id, *target, follow=follow)
        try:
            return await self._forwarder.unary(shard_id, address, PLACE_ORDER, request, routed)
        finally:
            self._placing.leave(order_id)

    async def _placement(self, topo: Topology, order_id: str, caller: IncomingCall) -> str:
        earlier = topo.earlier_owners(order_id)
        if not earlier or not order_id:  # an empty order_id is the owner's to refuse
            return topo.owner(order_id)
        probe = saga_pb2.GetSagaRequest(order_id=order_id).SerializeToString()
        answers = await asyncio.gather(*(self._probe(topo, sid, probe, caller) for sid, _ in earlier))
        for _, error in answers:
            if error is not None and ring_refusal(error) is not None:
                raise error  # the router's ring is not the shard's: refresh, then place again
        for (sid, _), (result, _) in zip(earlier, answers, strict=True):
            if result is Outcome.FOUND:
                return sid
        for (sid, epoch), (result, error) in zip(earlier, answers, strict=True):
            if error is not None and result is Outcome.UNKNOWN:
                raise error.with_context(
                    f"order {order_id!r} may already be on shard {sid} (its owner in ring epoch {epoch}), which did"
                    " not answer; not placing it elsewhere"
                )
        for _, (result, error) in zip(earlier, answers, strict=True):
            if error is not None and result is Outcome.FINAL:
                raise error
        return topo.owner(order_id)

    async def _probe(
        self, topo: Topology, shard_id: str, probe: bytes, caller: IncomingCall
    ) -> tuple[Outcome, ShardStatus | None]:
        try:
            await self._forwarder.unary(
                shard_id, topo.addresses[shard_id], GET_SAGA, probe, caller, cap_s=self._probe_timeout_s
            )
        except ShardStatus as e:
            return outcome(e.code), e
        return Outcome.FOUND, None

    async def to_holder(self, order_id: str, method: str, request: bytes, caller: IncomingCall) -> Reply:
        """Relays a call about an existing saga to the shard that holds it."""
        return await self._fenced(lambda topo, _: self._to_holder(topo, order_id, method, request, caller))

    async def _to_holder(
        self, topo: Topology, order_id: str, method: str, request: bytes, caller: IncomingCall
    ) -> Reply:
        caller = caller.routed_by(topo.epoch)
        absent: ShardStatus | None = None
        unknown: ShardStatus | None = None
        for shard_id, epoch in self._candidates(topo, order_id):
            try:
                return await self._forwarder.unary(shard_id, topo.addresses[shard_id], method, request, caller)
            except ShardStatus as e:
                absent, unknown = self._keep_looking(e, absent, unknown, epoch, topo.epoch, order_id)
        raise unknown or absent or AssertionError("no candidate shard")

    async def open_watch(self, order_id: str, request: bytes, caller: IncomingCall) -> tuple[ShardStream, bytes | None]:
        """Opens WatchSaga on the shard that holds the saga: the stream and its first message (None if it ended)."""
        return await self._fenced(lambda topo, _: self._open_watch(topo, order_id, request, caller))

    async def _open_watch(
        self, topo: Topology, order_id: str, request: bytes, caller: IncomingCall
    ) -> tuple[ShardStream, bytes | None]:
        caller = caller.routed_by(topo.epoch)
        absent: ShardStatus | None = None
        unknown: ShardStatus | None = None
        for shard_id, epoch in self._candidates(topo, order_id):
            stream = self._forwarder.stream(shard_id, topo.addresses[shard_id], WATCH_SAGA, request, caller)
            try:
                return stream, await stream.read()
            except ShardStatus as e:
                absent, unknown = self._keep_looking(e, absent, unknown, epoch, topo.epoch, order_id)
        raise unknown or absent or AssertionError("no candidate shard")

    @staticmethod
    def _candidates(topo: Topology, order_id: str) -> list[tuple[str, int]]:
        return [(topo.owner(order_id), topo.epoch), *topo.earlier_owners(order_id)]

    @staticmethod
    def _keep_looking(
        e: ShardStatus,
        absent: ShardStatus | None,
        unknown: ShardStatus | None,
        epoch: int,
        current_epoch: int,
        order_id: str,
    ) -> tuple[ShardStatus | None, ShardStatus | None]:
        """Remembers a NOT_FOUND or an unanswered candidate and lets the search go on; re-raises a final answer (a
        ring refusal included: the search starts again on a refreshed ring)."""
        result = outcome(e.code)
        if result is Outcome.ABSENT:
            return absent or e, unknown
        if result is Outcome.UNKNOWN:
            if epoch != current_epoch:  # the owner's own failure is relayed as is; an earlier owner's needs explaining
                e = e.with_context(f"order {order_id!r} may be on shard {e.shard_id} (its owner in ring epoch {epoch})")
            return absent, unknown or e
        raise e
