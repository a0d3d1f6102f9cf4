"""Which shard a call about one saga goes to: the current owner, unless an earlier ring put the saga elsewhere.

A saga is named by its type and key (SagaRef); the ring hashes the key only, whatever the type, exactly as it hashes
an order id, so the order flow's placement is the one it always had and the sagas of every type with one key (the
order flow of o-1 and the return flow of o-1) share a shard. "Order" below means any saga; PlaceOrder is StartSaga of
type "order", named by its order_id.

The epoch rule (DESIGN contract 7). The current ring decides where a *new* order goes; earlier rings
(shard_router.ring.epochs) decide where an *existing* order may already be:

- PlaceOrder and StartSaga: for every shard an earlier ring placed the key on (other than its current owner), the router
  asks that shard GetSaga for the saga (order_id for PlaceOrder; saga_type and key for StartSaga, so the return flow of
  o-1 is never mistaken for the order flow of o-1), all at once. If one holds the saga, the call goes there (the shard
  joins the existing saga), so a client retry after a re-shard never starts a second saga. If every one answers
  NOT_FOUND, the call goes to the key's current owner. If one does not answer (down, overloaded, deadline), the router
  fails the call with that shard's status rather than guess: a retry later is safe, a second saga is not.
- GetSaga, WatchSaga, ResolveDeadLetter and RetryDeadLetter for one saga (by order_id, or by saga_type and key): the
  current owner first, then the earlier owners in turn; the first answer other than NOT_FOUND wins. A saga lives on
  exactly one shard, so a shard's answer that it holds (or judges) the saga is authoritative; NOT_FOUND is returned
  only if every candidate said so.

Also, within one router a start (PlaceOrder or StartSaga) arriving while another start of the same saga (type and key)
is still in flight goes to the same shard, so a client that retries during a ring change cannot slip between "not there
yet" and "accepted".
With no earlier epoch (the usual steady state) none of this costs anything: the owner is one ring lookup.

Across routers, the shards enforce it (fencing, coordinator.ring.ownership): every call, probes included, carries the
epoch it was routed by, and a shard that knows a newer ring, or has not been shown this one, refuses a call about an
order it does not hold (FAILED_PRECONDITION with x-saga-ring-refusal). The router then learns the newer ring from that
shard, or shows it its own, and routes the call again from the start, at most RING_ATTEMPTS times. deploy/README.md,
"Ring epochs and fencing", states the invariant and why it holds."""

from __future__ import annotations

import asyncio
import re
from collections.abc import Awaitable, Callable
from dataclasses import dataclass
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

ORDER_TYPE = "order"
"""The saga type PlaceOrder starts, and the one a call naming a key without a saga_type means."""
_SAGA_TYPE = re.compile(r"[a-z][a-z0-9_]{0,62}")
"""A definition name (common/definitions/schema.json, "name")."""


@dataclass(frozen=True, slots=True)
class SagaRef:
    """The saga a call is about: its type and key. The ring hashes the key only."""

    saga_type: str
    key: str
    by_order_id: bool = False
    """Named by order_id (PlaceOrder and the order flow's calls as they always were) rather than saga_type and key."""

    @classmethod
    def order(cls, order_id: str) -> SagaRef:
        return cls(ORDER_TYPE, order_id, by_order_id=True)

    @property
    def flight(self) -> tuple[str, str]:
        """What makes two starts the same saga: PlaceOrder(o-1) and StartSaga(order, o-1) are one."""
        return (self.saga_type, self.key)

    def probe(self) -> bytes:
        """The GetSaga that asks a shard whether it holds this saga (built only when an earlier ring must be asked)."""
        if self.by_order_id:
            return bytes(saga_pb2.GetSagaRequest(order_id=self.key).SerializeToString())
        return bytes(saga_pb2.GetSagaRequest(saga_type=self.saga_type, key=self.key).SerializeToString())


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
    """Starts (PlaceOrder, StartSaga) in flight on this router: (saga type, key) -> (shard id, address, number of
    calls)."""

    def __init__(self) -> None:
        self._calls: dict[tuple[str, str], tuple[str, str, int]] = {}

    def get(self, saga: tuple[str, str]) -> tuple[str, str] | None:
        entry = self._calls.get(saga)
        return None if entry is None else (entry[0], entry[1])

    def join(self, saga: tuple[str, str], shard_id: str, address: str, follow: bool = True) -> tuple[str, str]:
        """Registers a call; if one is already in flight for the saga, the new one joins its shard (even if routed by
        another epoch: if that shard took the order it holds it; if not, it refuses and this call places it again,
        with follow=False)."""
        entry = self._calls.get(saga)
        if entry is not None and follow:
            shard_id, address = entry[0], entry[1]
        self._calls[saga] = (shard_id, address, (entry[2] if entry else 0) + 1)
        return shard_id, address

    def leave(self, saga: tuple[str, str]) -> None:
        shard_id, address, n = self._calls[saga]
        if n == 1:
            del self._calls[saga]
        else:
            self._calls[saga] = (shard_id, address, n - 1)


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


class Keyed(Protocol):
    """A read or admin request (GetSaga, WatchSaga, RetryDeadLetter, ResolveDeadLetter): named by order_id, or by
    saga_type and key."""

    order_id: str
    saga_type: str
    key: str


def saga_ref(parsed: Keyed) -> SagaRef:
    """The saga a read or an admin call names: by order_id as always, or (with key set) by saga_type ("order" if empty)
    and key. Mixed or malformed names are INVALID_ARGUMENT, as a shard answers them (the shard checks the key's
    characters and length against its own limits)."""
    if not parsed.key and not parsed.saga_type:
        return SagaRef.order(parsed.order_id)
    if parsed.order_id:
        raise InvalidArgument("order_id", "must be empty when key is set")
    return start_ref(parsed.saga_type or ORDER_TYPE, parsed.key)


def start_ref(saga_type: str, key: str) -> SagaRef:
    """The saga a StartSaga names; INVALID_ARGUMENT naming saga_type or key if either is missing or malformed."""
    if not saga_type:
        raise InvalidArgument("saga_type", "is required: the name of a committed definition, e.g. order")
    if not _SAGA_TYPE.fullmatch(saga_type):
        raise InvalidArgument("saga_type", "is a definition name: a lowercase letter, then letters, digits or _")
    if not key:
        raise InvalidArgument("key", "is required")
    return SagaRef(saga_type, key)


def parse_start(request: bytes) -> SagaRef:
    """The saga a raw StartSagaRequest names. Decoding it leaves the input an Any: its payload is never parsed here."""
    try:
        parsed = saga_pb2.StartSagaRequest.FromString(request)
    except DecodeError:
        raise InvalidArgument("request", f"not a valid {saga_pb2.StartSagaRequest.DESCRIPTOR.full_name}") from None
    return start_ref(parsed.saga_type, parsed.key)


class Router:
    """Routes calls about one saga, using whatever topology is current when each call starts."""

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
        return await self.start(SagaRef.order(order_id), PLACE_ORDER, request, caller)

    async def start(self, saga: SagaRef, method: str, request: bytes, caller: IncomingCall) -> Reply:
        """Relays a start (PlaceOrder, StartSaga) to the shard that holds the saga, else to the key's owner."""
        return await self._fenced(lambda topo, attempt: self._place(topo, attempt, saga, method, request, caller))

    async def _place(
        self, topo: Topology, attempt: int, saga: SagaRef, method: str, request: bytes, caller: IncomingCall
    ) -> Reply:
        # A ring a shard refused as a conflict must place nothing (checked at every attempt: a refresh after a refusal
        # may be what found the conflict): under it a fresh shard might take an order that another ring's owner takes
        # too. One attribute read; no I/O on the hot path.
        why = self._rings.disagreement()
        if why is not None:
            raise RingDisagreement(why)
        routed = caller.routed_by(topo.epoch)
        # A retry after a refusal places the order afresh rather than following a call that went to the refusing shard.
        follow = attempt == 0
        target = self._placing.get(saga.flight) if follow else None
        if target is None:
            shard_id = await self._placement(topo, saga, routed)
            target = (shard_id, topo.addresses[shard_id])
        shard_id, address = self._placing.join(saga.flight, *target, follow=follow)
        try:
            return await self._forwarder.unary(shard_id, address, method, request, routed)
        finally:
            self._placing.leave(saga.flight)

    async def _placement(self, topo: Topology, saga: SagaRef, caller: IncomingCall) -> str:
        order_id = saga.key
        earlier = topo.earlier_owners(order_id)
        if not earlier or not order_id:  # an empty order_id is the owner's to refuse
            return topo.owner(order_id)
        probe = saga.probe()
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
                    f"{_what(saga)} may already be on shard {sid} (its owner in ring epoch {epoch}), which did"
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

    async def to_holder(self, key: str, method: str, request: bytes, caller: IncomingCall) -> Reply:
        """Relays a call about an existing saga to the shard that holds it; key: what the ring hashes (the order id,
        or the saga's key)."""
        return await self._fenced(lambda topo, _: self._to_holder(topo, key, method, request, caller))

    async def _to_holder(self, topo: Topology, key: str, method: str, request: bytes, caller: IncomingCall) -> Reply:
        caller = caller.routed_by(topo.epoch)
        absent: ShardStatus | None = None
        unknown: ShardStatus | None = None
        for shard_id, epoch in self._candidates(topo, key):
            try:
                return await self._forwarder.unary(shard_id, topo.addresses[shard_id], method, request, caller)
            except ShardStatus as e:
                absent, unknown = self._keep_looking(e, absent, unknown, epoch, topo.epoch, key)
        raise unknown or absent or AssertionError("no candidate shard")

    async def open_watch(self, key: str, request: bytes, caller: IncomingCall) -> tuple[ShardStream, bytes | None]:
        """Opens WatchSaga on the shard that holds the saga: the stream and its first message (None if it ended)."""
        return await self._fenced(lambda topo, _: self._open_watch(topo, key, request, caller))

    async def _open_watch(
        self, topo: Topology, key: str, request: bytes, caller: IncomingCall
    ) -> tuple[ShardStream, bytes | None]:
        caller = caller.routed_by(topo.epoch)
        absent: ShardStatus | None = None
        unknown: ShardStatus | None = None
        for shard_id, epoch in self._candidates(topo, key):
            stream = self._forwarder.stream(shard_id, topo.addresses[shard_id], WATCH_SAGA, request, caller)
            try:
                return stream, await stream.read()
            except ShardStatus as e:
                absent, unknown = self._keep_looking(e, absent, unknown, epoch, topo.epoch, key)
        raise unknown or absent or AssertionError("no candidate shard")

    @staticmethod
    def _candidates(topo: Topology, key: str) -> list[tuple[str, int]]:
        return [(topo.owner(key), topo.epoch), *topo.earlier_owners(key)]

    @staticmethod
    def _keep_looking(
        e: ShardStatus,
        absent: ShardStatus | None,
        unknown: ShardStatus | None,
        epoch: int,
        current_epoch: int,
        key: str,
    ) -> tuple[ShardStatus | None, ShardStatus | None]:
        """Remembers a NOT_FOUND or an unanswered candidate and lets the search go on; re-raises a final answer (a
        ring refusal included: the search starts again on a refreshed ring)."""
        result = outcome(e.code)
        if result is Outcome.ABSENT:
            return absent or e, unknown
        if result is Outcome.UNKNOWN:
            if epoch != current_epoch:  # the owner's own failure is relayed as is; an earlier owner's needs explaining
                e = e.with_context(f"saga key {key!r} may be on shard {e.shard_id} (its owner in ring epoch {epoch})")
            return absent, unknown or e
        raise e


def _what(saga: SagaRef) -> str:
    """The saga, as an operator's message names it."""
    return f"order {saga.key!r}" if saga.saga_type == ORDER_TYPE else f"saga {saga.saga_type} {saga.key!r}"
