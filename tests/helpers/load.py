"""Seeded client load for chaos tests: workers place orders and, like a real client, retry the same order_id (same
payload) through crashes and overload until they get SUCCESS or FAILED. Every answer is recorded, with its saga id,
so the invariants can compare what clients were told with what the system holds.

    load = Load(router_address, seed=7, workers=16)
    runner = asyncio.create_task(load.run(duration_s=10))   # new orders for 10 s, then only finish the open ones
    ...
    await runner
    load.answers["o-7-12"]  -> Answer(status, saga_id, state)
"""

from __future__ import annotations

import asyncio
import random
import time
from collections import Counter
from collections.abc import Callable
from dataclasses import dataclass, field

import grpc

from protos.saga.v1 import saga_pb2, saga_pb2_grpc
from tests.helpers.coordinator import place_request

# Statuses a client retries on: the system's "try again", not an answer.
RETRYABLE = frozenset(
    {
        grpc.StatusCode.UNAVAILABLE,
        grpc.StatusCode.DEADLINE_EXCEEDED,
        grpc.StatusCode.RESOURCE_EXHAUSTED,
        grpc.StatusCode.ABORTED,
        grpc.StatusCode.CANCELLED,
    }
)

ITEMS = {"sku-a": 1, "sku-b": 2}


@dataclass(frozen=True)
class Order:
    request: saga_pb2.PlaceOrderRequest
    items: dict[str, int] | None
    """What a SUCCESS must have reserved; None for an order designed to fail."""
    kind: str


@dataclass(frozen=True)
class Answer:
    status: int
    saga_id: str
    state: int
    at_s: float
    """Seconds since the load started."""


def make_order(order_id: str, rng: random.Random, fail_share: float = 0.3, ttl_ms: int | None = None) -> Order:
    """Mostly orders that can succeed; the rest fail at payment (declined) or shipping (unshippable) and compensate."""
    extra = {} if ttl_ms is None else {"ttl_ms": ttl_ms}
    r = rng.random()
    if r < fail_share / 2:
        return Order(place_request(order_id, token="tok_declined", **extra), None, "declined")
    if r < fail_share:
        return Order(place_request(order_id, items=[("unshippable-crate", 1)], **extra), None, "unshippable")
    return Order(place_request(order_id, items=list(ITEMS.items()), **extra), dict(ITEMS), "ok")


@dataclass
class Load:
    addresses: list[str]
    """Where PlaceOrder goes (usually the router); workers spread over them."""
    seed: int
    workers: int = 16
    prefix: str = "o"
    fail_share: float = 0.3
    attempt_timeout_s: float = 15.0
    give_up_s: float = 120.0
    """A client stops retrying one order after this long (the order is then 'unacknowledged', never 'lost')."""
    ttl_ms: int | None = None
    twins: bool = False
    """Every order placed by two clients at once (both retrying until answered)."""
    make: Callable[[str, random.Random], Order] | None = None
    """What each new order is (order id, the load's seeded rng); None: make_order's mix."""
    orders: dict[str, Order] = field(default_factory=dict)
    answers: dict[str, Answer] = field(default_factory=dict)
    extra_answers: list[tuple[str, Answer]] = field(default_factory=list)
    """Answers to repeated placements of an already answered order (duplicates, retries after a re-shard)."""
    errors: Counter[str] = field(default_factory=Counter)
    """Non-answers by status code name (retried ones included)."""
    unexpected: list[str] = field(default_factory=list)
    """Statuses a valid PlaceOrder must never get (INTERNAL, UNKNOWN, ALREADY_EXISTS for the same payload, ...)."""
    pending_answers: int = 0
    error_samples: dict[str, str] = field(default_factory=dict)
    """The first message seen with each non-answer status."""

    def __post_init__(self) -> None:
        self._rng = random.Random(self.seed)
        self._next = 0
        self._t0 = time.monotonic()
        self._stop_new = asyncio.Event()
        self._channels = [grpc.aio.insecure_channel(a) for a in self.addresses]
        self._stubs = [saga_pb2_grpc.SagaCoordinatorStub(c) for c in self._channels]
        self.answer_times: list[float] = []

    def now_s(self) -> float:
        return time.monotonic() - self._t0

    def new_order(self) -> Order:
        order_id = f"{self.prefix}-{self.seed}-{self._next}"
        self._next += 1
        if self.make is not None:
            order = self.make(order_id, self._rng)
        else:
            order = make_order(order_id, self._rng, self.fail_share, self.ttl_ms)
        self.orders[order_id] = order
        return order

    async def place(self, order: Order, stub_index: int = 0, record: bool = True) -> Answer | None:
        """Retries one order until it is answered (SUCCESS/FAILED) or the client gives up; None if it gave up."""
        started = time.monotonic()
        delay_s = 0.02
        n = stub_index
        while time.monotonic() - started < self.give_up_s:
            stub = self._stubs[n % len(self._stubs)]
            n += 1
            try:
                resp = await stub.PlaceOrder(order.request, timeout=self.attempt_timeout_s)
            except grpc.aio.AioRpcError as e:
                self.errors[e.code().name] += 1
                self.error_samples.setdefault(e.code().name, e.details() or "")
                if e.code() not in RETRYABLE:
                    self.unexpected.append(f"{order.request.order_id}: {e.code().name} {e.details()}")
                    return None
            else:
                if resp.status in (saga_pb2.SUCCESS, saga_pb2.FAILED):
                    answer = Answer(int(resp.status), resp.saga_id, int(resp.state), self.now_s())
                    if record:
                        if order.request.order_id in self.answers:
                            self.extra_answers.append((order.request.order_id, answer))
                        else:
                            self.answers[order.request.order_id] = answer
                            self.answer_times.append(answer.at_s)
                    return answer
                # PENDING without no_wait: the shard found the saga unfinished but not running; ask again.
                self.pending_answers += 1
            await asyncio.sleep(delay_s * (0.5 + self._rng.random()))
            delay_s = min(delay_s * 1.6, 0.5)
        return None

    async def place_once(self, order: Order, timeout_s: float = 60.0) -> Answer | grpc.StatusCode:
        """One PlaceOrder, no retry: the answer (recorded), or the status code it failed with."""
        try:
            resp = await self._stubs[0].PlaceOrder(order.request, timeout=timeout_s)
        except grpc.aio.AioRpcError as e:
            self.errors[e.code().name] += 1
            return e.code()
        answer = Answer(int(resp.status), resp.saga_id, int(resp.state), self.now_s())
        if resp.status in (saga_pb2.SUCCESS, saga_pb2.FAILED):
            self.answers.setdefault(order.request.order_id, answer)
        return answer

    async def _worker(self, index: int) -> None:
        while not self._stop_new.is_set():
            order = self.new_order()
            if self.twins:
                await asyncio.gather(self.place(order, index), self.place(order, index + 1))
            else:
                await self.place(order, index)

    async def run(self, duration_s: float) -> None:
        """New orders for duration_s, then waits for every open order to be answered or given up."""
        self._t0 = time.monotonic()
        workers = [asyncio.create_task(self._worker(i)) for i in range(self.workers)]
        try:
            try:
                await asyncio.wait_for(self._stop_new.wait(), duration_s)
            except TimeoutError:
                self._stop_new.set()
            await asyncio.gather(*workers)
        finally:
            for w in workers:
                w.cancel()

    def stop_new(self) -> None:
        self._stop_new.set()

    async def close(self) -> None:
        for c in self._channels:
            await c.close()

    def outcomes(self) -> Counter[str]:
        return Counter("success" if a.status == saga_pb2.SUCCESS else "failed" for a in self.answers.values())

    def throughput(self, start_s: float, end_s: float) -> float:
        """Answers per second between two instants (seconds since start)."""
        if end_s <= start_s:
            return 0.0
        return sum(1 for t in self.answer_times if start_s <= t < end_s) / (end_s - start_s)


__all__ = ["ITEMS", "Answer", "Load", "Order", "make_order"]
