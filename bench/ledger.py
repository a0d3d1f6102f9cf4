"""After a run, what the services actually applied (StubControl.GetLedger), checked against what the client was told:
SUCCESS means every effect exactly once and nothing compensated; FAILED means the compensations ran, net zero on every
service; an order paid with the declined token must not succeed."""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass, field

from common.tls import TlsFiles, sync_channel
from protos.saga.v1 import saga_pb2
from protos.service_stubs.v1 import control_pb2, control_pb2_grpc
from protos.service_stubs.v1.control_pb2 import OrderLedger
from service_stubs.invariants import ledger_violations

_CHUNK = 1_000  # orders per GetLedger call (the stubs allow up to 10,000)


@dataclass
class LedgerCheck:
    checked: int = 0
    failed_checked: int = 0
    """FAILED orders whose compensations were verified (net zero)."""
    violations: list[str] = field(default_factory=list)


def violations(order_id: str, outcome: str, declined: bool, ledger: OrderLedger) -> list[str]:
    out = ledger_violations(order_id, saga_pb2.SUCCESS if outcome == "SUCCESS" else saga_pb2.FAILED, ledger)
    if outcome == "SUCCESS" and declined:
        out.append(f"{order_id}: paid with the declined token but SUCCESS")
    return out


def check(
    stubs_address: str,
    order_ids: Sequence[str],
    outcomes: Sequence[str],
    declined: Sequence[bool],
    tls: TlsFiles | None = None,
) -> LedgerCheck:
    """Checks every order that got an answer (calls that errored have no promised outcome to hold the ledger to)."""
    result = LedgerCheck()
    wanted = [
        (o, out, d) for o, out, d in zip(order_ids, outcomes, declined, strict=True) if out in ("SUCCESS", "FAILED")
    ]
    with sync_channel(stubs_address, tls or TlsFiles()) as channel:
        control = control_pb2_grpc.StubControlStub(channel)
        for start in range(0, len(wanted), _CHUNK):
            chunk = wanted[start : start + _CHUNK]
            reply = control.GetLedger(control_pb2.GetLedgerRequest(order_ids=[o for o, _, _ in chunk]), timeout=30.0)
            ledgers = {ledger.order_id: ledger for ledger in reply.ledgers}
            for order_id, outcome, was_declined in chunk:
                ledger = ledgers.get(order_id, OrderLedger(order_id=order_id))
                result.violations += violations(order_id, outcome, was_declined, ledger)
                result.checked += 1
                result.failed_checked += outcome == "FAILED"
    return result
