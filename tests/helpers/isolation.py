"""The isolated order flow (common/definitions/shipped/order_isolated.yaml) under test on a running cluster: orders
racing for the last units of a few items, some paid with a declining token; a reader of GetOrder that records every
state it sees; and the check of every isolation countermeasure (service_stubs.invariants) over the services'
ledgers, the stock levels and the reader's history, once the sagas are done.

    definition = commit_isolated(cluster.system)
    await control.set_stock(STOCK)
    reader = OrderReader(cluster.stub_address); watching = asyncio.create_task(reader.run())
    ... orders from scarce_orders(STOCK), placed through the router ...
    await reader.stop()
    found = await check_isolation(shards, cluster.stub_address, order_ids, STOCK, reader.seen, definition.hash)
"""

from __future__ import annotations

import asyncio
import itertools
import random
from collections import Counter
from collections.abc import Callable, Iterable, Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path

import grpc

from common.definitions.model import Definition
from deploy.local import LocalSystem
from protos.saga.v1 import saga_pb2
from protos.shop.v1 import order_pb2, order_pb2_grpc
from service_stubs.invariants import isolation_violations, stock_violations
from tests.helpers.cluster_invariants import holdings
from tests.helpers.coordinator import place_request
from tests.helpers.definitions import commit_definition
from tests.helpers.load import Order
from tests.helpers.stubs import StubControlClient, get_ledgers

ROOT = Path(__file__).resolve().parents[2]
ISOLATED_FILE = ROOT / "common" / "definitions" / "shipped" / "order_isolated.yaml"
DECLINED_TOKEN = "tok_declined"  # service_stubs.payment.TOKEN_DECLINED: the Payment stub declines it
FINAL = frozenset({order_pb2.ORDER_STATE_APPROVED, order_pb2.ORDER_STATE_REJECTED})
STATE_NAME = {
    order_pb2.ORDER_STATE_UNSPECIFIED: "none",
    order_pb2.ORDER_STATE_PENDING: "pending",
    order_pb2.ORDER_STATE_APPROVED: "approved",
    order_pb2.ORDER_STATE_REJECTED: "rejected",
}


def commit_isolated(system: LocalSystem) -> Definition:
    """Makes the isolated flow the system's order flow (version 2 of saga type "order")."""
    return commit_definition(system, ISOLATED_FILE)


def scarce_orders(
    stock: Mapping[str, int], decline_share: float, open_items: Callable[[], Sequence[str]] | None = None
) -> Callable[[str, random.Random], Order]:
    """Order maker (Load.make): one or two of the scarce items (of `open_items()` if given: those on sale now), one or
    two units each, paid with a declining token with probability `decline_share`. An order the stock cannot serve
    fails at reserve_inventory."""

    def make(order_id: str, rng: random.Random) -> Order:
        names = sorted(open_items() if open_items is not None else stock)
        lines = {item: rng.randint(1, 2) for item in rng.sample(names, rng.randint(1, min(2, len(names))))}
        if rng.random() < decline_share:
            return Order(place_request(order_id, token=DECLINED_TOKEN, items=list(lines.items())), None, "declined")
        return Order(place_request(order_id, items=list(lines.items())), lines, "ok")

    return make


@dataclass
class OrderReader:
    """Polls OrderService.GetOrder on the Order service for every order it watches, each order's reads one after the
    other (never two in flight for one order, so they are answered in the order sent), and records each order's
    states in the order it saw them (a change only; NOT_FOUND as UNSPECIFIED)."""

    address: str
    concurrency: int = 16
    """GetOrder calls in flight at once (different orders)."""
    pause_s: float = 0.02
    """Between rounds over every order."""
    seen: dict[str, list[int]] = field(default_factory=dict)
    reads: int = 0
    errors: Counter[str] = field(default_factory=Counter)
    """Reads that got no answer, by status code (faults the stub injects, mostly)."""
    rounds: int = 0
    final_every: int = 4
    """Orders already seen APPROVED or REJECTED are read every this many rounds only (and in the last): the reader
    comes back sooner to those that may still move, and still catches a final state that changes."""
    timeout_s: float = 30.0
    """Per read: generous, since a read that gets no answer at all is a defect (DEADLINE_EXCEEDED in errors)."""

    def __post_init__(self) -> None:
        self._watched: list[str] = []
        self._stop = asyncio.Event()

    def watch(self, order_ids: Iterable[str]) -> None:
        for order_id in order_ids:
            if order_id not in self.seen:
                self.seen[order_id] = []
                self._watched.append(order_id)

    async def run(self) -> None:
        """Reads until stop(), then once more over every order (so the last states are seen too)."""
        async with grpc.aio.insecure_channel(self.address) as channel:
            stub = order_pb2_grpc.OrderServiceStub(channel)
            gate = asyncio.Semaphore(self.concurrency)

            async def read(order_id: str) -> None:
                async with gate:
                    request = order_pb2.GetOrderRequest(order_id=order_id)
                    try:
                        reply = await stub.GetOrder(request, timeout=self.timeout_s)
                        state = int(reply.state)
                    except grpc.aio.AioRpcError as e:
                        if e.code() != grpc.StatusCode.NOT_FOUND:
                            self.errors[e.code().name] += 1
                            return
                        state = order_pb2.ORDER_STATE_UNSPECIFIED
                self.reads += 1
                states = self.seen[order_id]
                if not states or states[-1] != state:
                    states.append(state)

            while True:
                last = self._stop.is_set()
                every = last or self.rounds % self.final_every == 0
                wanted = [o for o in self._watched if every or not self.seen[o] or self.seen[o][-1] not in FINAL]
                await asyncio.gather(*(read(order_id) for order_id in wanted))
                self.rounds += 1
                if last:
                    return
                await asyncio.sleep(self.pause_s)

    def stop(self) -> None:
        self._stop.set()

    def moves(self) -> Counter[str]:
        """How often the reader saw each move between states ("pending->approved", ...)."""
        out: Counter[str] = Counter()
        for states in self.seen.values():
            for before, after in itertools.pairwise(states):
                out[f"{STATE_NAME[before]}->{STATE_NAME[after]}"] += 1
        return out


@dataclass
class Found:
    """What check_isolation found: the violations, and figures for the report."""

    violations: list[str] = field(default_factory=list)
    sagas: Counter[str] = field(default_factory=Counter)
    """Saga states of the orders (none: no shard holds one)."""
    orders: Counter[str] = field(default_factory=Counter)
    """Final order states on the Order service."""
    sold: dict[str, int] = field(default_factory=dict)
    """Units held or sold per scarce item at the end, by the ledgers."""
    levels: dict[str, int] = field(default_factory=dict)
    """Units in stock at the end (StubControl.GetStock)."""


async def check_isolation(
    shards: Mapping[str, str],
    stub_address: str,
    order_ids: Sequence[str],
    initial_stock: Mapping[str, int],
    seen: Mapping[str, Sequence[int]],
    definition_hash: str,
) -> Found:
    """Every isolation countermeasure over the ledgers of `order_ids` (all the orders that touched the scarce items),
    the readers' history and the stock left, once no saga runs (quiesce first). Each order's saga must have run the
    isolated flow (`definition_hash`)."""
    found = Found()
    held = await holdings(dict(shards))
    ledgers = await get_ledgers(stub_address, order_ids)
    for order_id in order_ids:
        sagas = held.get(order_id, [])
        saga_state = sagas[0].saga.state if sagas else saga_pb2.SAGA_STATE_UNSPECIFIED
        found.sagas[saga_pb2.SagaState.Name(saga_state).removeprefix("SAGA_STATE_").lower()] += 1
        found.orders[STATE_NAME[ledgers[order_id].order_state]] += 1
        for h in sagas:
            if h.saga.definition_hash != definition_hash:
                found.violations.append(f"{order_id}: ran definition {h.saga.definition_hash}, not the isolated flow")
        found.violations += isolation_violations(order_id, saga_state, ledgers[order_id], seen.get(order_id, ()))
    async with StubControlClient(stub_address) as control:
        found.levels = await control.get_stock(sorted(initial_stock))
    found.violations += stock_violations(initial_stock, ledgers.values(), found.levels)
    for item in initial_stock:
        found.sold[item] = sum(ledger.reserved_net.get(item, 0) for ledger in ledgers.values())
    return found


__all__ = [
    "DECLINED_TOKEN",
    "ISOLATED_FILE",
    "Found",
    "OrderReader",
    "check_isolation",
    "commit_isolated",
    "scarce_orders",
]
