"""The chaos suite's invariants I1-I6, checked after quiescence over the whole cluster: what every shard holds (its own
API, asked directly, not through the router), what the services applied (StubControl.GetLedger) and what clients were
told (tests.helpers.load).

- I1 every accepted saga is terminal (SUCCEEDED, FAILED, RESOLVED) or parked (DEAD_LETTERED): none stuck.
- I2 SUCCEEDED => each of the four effects applied exactly once and none compensated; FAILED => net zero everywhere.
- I3 no idempotency key applied more than once on any service.
- I4 no acknowledged PlaceOrder lost; no order has sagas on two shards (nor two sagas anywhere).
- I5 the client's answer matches the final saga state (and names the saga that holds the order).
- I6 PRAGMA integrity_check is ok on every journal after every restart (collected by tests.helpers.cluster).
Also: an order that no shard holds has no effect on any service (nothing downstream without its intent in a journal).
"""

from __future__ import annotations

import asyncio
import time
from collections import defaultdict
from collections.abc import Iterable, Sequence
from dataclasses import dataclass, field

import grpc

from protos.saga.v1 import saga_pb2, saga_pb2_grpc
from protos.service_stubs.v1.control_pb2 import OrderLedger
from service_stubs.invariants import ledger_violations
from tests.helpers.load import Load
from tests.helpers.stubs import get_ledgers

S = saga_pb2
UNFINISHED = (S.SAGA_STATE_RUNNING, S.SAGA_STATE_COMPENSATING)
ENDED = frozenset({S.SAGA_STATE_SUCCEEDED, S.SAGA_STATE_FAILED, S.SAGA_STATE_DEAD_LETTERED, S.SAGA_STATE_RESOLVED})


@dataclass
class Held:
    shard: str
    saga: saga_pb2.Saga


@dataclass
class Report:
    violations: list[str] = field(default_factory=list)
    stuck: int = 0
    states: dict[str, int] = field(default_factory=dict)
    sagas: int = 0

    def add(self, tag: str, items: Iterable[str]) -> None:
        self.violations.extend(f"{tag} {v}" for v in items)


async def list_all_sagas(address: str, state: int = 0, timeout_s: float = 20.0) -> list[saga_pb2.Saga]:
    """Every saga of one shard (in `state`, 0 = any), page by page."""
    out: list[saga_pb2.Saga] = []
    async with grpc.aio.insecure_channel(address) as channel:
        stub = saga_pb2_grpc.SagaCoordinatorStub(channel)
        token = ""
        while True:
            req = saga_pb2.ListSagasRequest(state=state, page_size=500, page_token=token)
            resp = await stub.ListSagas(req, timeout=timeout_s)
            out.extend(resp.sagas)
            token = resp.next_page_token
            if not token:
                return out


async def unfinished(addresses: Sequence[str]) -> list[tuple[str, saga_pb2.Saga]]:
    out = []
    for address in addresses:
        for state in UNFINISHED:
            out += [(address, s) for s in await list_all_sagas(address, state)]
    return out


async def quiesce(addresses: Sequence[str], timeout_s: float) -> list[tuple[str, saga_pb2.Saga]]:
    """Waits until no shard has a RUNNING or COMPENSATING saga; returns those still unfinished at the timeout."""
    deadline = time.monotonic() + timeout_s
    while True:
        try:
            left = await unfinished(addresses)
        except grpc.aio.AioRpcError:
            left = [("?", saga_pb2.Saga(order_id="<a shard did not answer>"))]
        if not left or time.monotonic() > deadline:
            return left
        await asyncio.sleep(0.25)


async def holdings(shards: dict[str, str]) -> dict[str, list[Held]]:
    """order_id -> every saga any shard holds for it (shard id -> address given)."""
    held: dict[str, list[Held]] = defaultdict(list)
    for shard_id, address in shards.items():
        for saga in await list_all_sagas(address):
            held[saga.order_id].append(Held(shard_id, saga))
    return held


def _no_effects(order_id: str, ledger: OrderLedger) -> list[str]:
    applied = [k.idempotency_key for k in ledger.keys if k.applied_count]
    return [f"{order_id}: no shard holds a saga, yet services applied {applied}"] if applied else []


async def check_cluster(
    shards: dict[str, str],
    stub_address: str,
    loads: Sequence[Load],
    *,
    integrity_failures: Sequence[str] = (),
    quiesce_timeout_s: float = 60.0,
) -> Report:
    report = Report()
    left = await quiesce(list(shards.values()), quiesce_timeout_s)
    report.stuck = len(left)
    report.add("I1", (f"{s.order_id} still {S.SagaState.Name(s.state)} on {a}" for a, s in left[:20]))

    held = await holdings(shards)
    report.sagas = sum(len(v) for v in held.values())
    states: dict[str, int] = defaultdict(int)
    for hs in held.values():
        for h in hs:
            states[S.SagaState.Name(h.saga.state).removeprefix("SAGA_STATE_").lower()] += 1
    report.states = dict(states)

    orders = {oid: o for load in loads for oid, o in load.orders.items()}
    ledgers = await get_ledgers(stub_address, sorted(set(orders) | set(held)))

    for order_id, hs in held.items():
        # I4: one saga per order, on one shard.
        if len(hs) > 1:
            report.add("I4", [f"{order_id}: {len(hs)} sagas, on {[h.shard for h in hs]}"])
        for h in hs:
            state = h.saga.state
            if state not in ENDED:
                report.add("I1", [f"{order_id}: {S.SagaState.Name(state)} on {h.shard} after quiescence"])
            ledger = ledgers.get(order_id, OrderLedger(order_id=order_id))
            order = orders.get(order_id)
            items = order.items if order is not None else None
            if state == S.SAGA_STATE_SUCCEEDED:
                report.add("I2", ledger_violations(order_id, S.SUCCESS, ledger, items))
            elif state == S.SAGA_STATE_FAILED:
                report.add("I2", ledger_violations(order_id, S.FAILED, ledger, None))
            else:
                report.add("I3", _keys_twice(order_id, ledger))

    for order_id in orders:
        if order_id not in held:
            report.add("I2", _no_effects(order_id, ledgers.get(order_id, OrderLedger(order_id=order_id))))

    for load in loads:
        answers = [*load.answers.items(), *load.extra_answers]
        for order_id, answer in answers:
            hs = held.get(order_id, [])
            if not hs:
                report.add(
                    "I4", [f"{order_id}: acknowledged {S.PlaceOrderStatus.Name(answer.status)} but no shard holds it"]
                )
                continue
            saga = hs[0].saga
            if answer.saga_id != saga.saga_id:
                report.add(
                    "I5", [f"{order_id}: client told saga {answer.saga_id}, shard {hs[0].shard} holds {saga.saga_id}"]
                )
            if answer.status == S.SUCCESS and saga.state != S.SAGA_STATE_SUCCEEDED:
                report.add("I5", [f"{order_id}: client told SUCCESS, saga is {S.SagaState.Name(saga.state)}"])
            if answer.status == S.FAILED and saga.state not in (
                S.SAGA_STATE_FAILED,
                S.SAGA_STATE_DEAD_LETTERED,
                S.SAGA_STATE_RESOLVED,
            ):
                report.add("I5", [f"{order_id}: client told FAILED, saga is {S.SagaState.Name(saga.state)}"])
        report.add("client", load.unexpected[:20])

    report.violations.extend(integrity_failures)
    return report


def _keys_twice(order_id: str, ledger: OrderLedger) -> list[str]:
    return [
        f"{order_id}: key {k.idempotency_key} applied {k.applied_count} times"
        for k in ledger.keys
        if k.applied_count > 1
    ]


__all__ = ["Report", "check_cluster", "holdings", "list_all_sagas", "quiesce", "unfinished"]
