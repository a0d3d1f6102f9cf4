"""Who may reach StubControl (fault injection, ledgers, stock), against real stub processes started by the launcher
(deploy.local.LocalSystem with no shards: the stubs alone) with mutual TLS and their auth policy: an operator may; a
shard, whose certificate has the coordinator role there, is PERMISSION_DENIED before anything changes; a certificate
with no role is UNAUTHENTICATED. With --no-control the service is not there at all: UNIMPLEMENTED, absent from
reflection and health, while the shop services still serve."""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path

import grpc
import pytest
from grpc_health.v1 import health_pb2, health_pb2_grpc
from grpc_reflection.v1alpha import reflection_pb2, reflection_pb2_grpc

from common.tls import sync_channel
from deploy.local import LocalSystem, SystemOptions
from protos.service_stubs.v1 import control_pb2, control_pb2_grpc
from protos.shop.v1 import payment_pb2, payment_pb2_grpc
from tests.helpers.scrape import scrape, value
from tests.helpers.stubs import key_metadata

CONTROL = "service_stubs.v1.StubControl"
REPO = Path(__file__).parents[2]


def _stubs(tmp: Path, *args: str) -> LocalSystem:
    options = SystemOptions(tmp / "data", shards=0, tls=True, stubs_args=args, ready_timeout_s=60.0)
    return LocalSystem(options, log_dir=tmp, cwd=REPO)


@pytest.fixture(scope="module")
def stubs(tmp_path_factory: pytest.TempPathFactory) -> Iterator[LocalSystem]:
    with _stubs(tmp_path_factory.mktemp("stubs-control")) as system:
        yield system


def _code(call: object, request: object) -> grpc.StatusCode:
    try:
        call(request, timeout=30)  # type: ignore[operator]
    except grpc.RpcError as e:
        return e.code()
    return grpc.StatusCode.OK


def _faults(system: LocalSystem, name: str) -> grpc.StatusCode:
    """SetFaults as `name`'s certificate: a plan that fails every charge, were it installed."""
    rule = control_pb2.FaultRule(method="ChargePayment", error_rate=1.0)
    with sync_channel(system.stubs.address, system.client_tls(name)) as channel:
        control = control_pb2_grpc.StubControlStub(channel)
        return _code(control.SetFaults, control_pb2.SetFaultsRequest(rules=[rule], seed=1))


def _denied(system: LocalSystem) -> float:
    assert system.stubs.spec.metrics is not None
    return value(scrape(system.stubs.spec.metrics), "saga_auth_denied_total", code="PERMISSION_DENIED")


def test_stub_control_refuses_a_shard_and_serves_an_operator(stubs: LocalSystem) -> None:
    before = _denied(stubs)
    assert _faults(stubs, "shard-1") is grpc.StatusCode.PERMISSION_DENIED
    with sync_channel(stubs.stubs.address, stubs.client_tls("shard-1")) as channel:
        control = control_pb2_grpc.StubControlStub(channel)
        denied = grpc.StatusCode.PERMISSION_DENIED
        assert _code(control.GetLedger, control_pb2.GetLedgerRequest(order_id="o-1")) is denied
        assert _code(control.ClearFaults, control_pb2.ClearFaultsRequest()) is denied
    assert _denied(stubs) >= before + 3
    # A certificate of the CA that the stubs' policy does not name: no role at all.
    assert _faults(stubs, "client") is grpc.StatusCode.UNAUTHENTICATED
    # None of the refused plans was installed: the shard, which keeps its own role at the shop services, is charged.
    with sync_channel(stubs.stubs.address, stubs.client_tls("shard-1")) as channel:
        charge = payment_pb2.ChargePaymentRequest(
            order_id="o-1", user_id="u-1", payment_token="tok_ok", amount_cents=500, currency="EUR"
        )
        reply = payment_pb2_grpc.PaymentServiceStub(channel).ChargePayment(
            charge, metadata=key_metadata("o-1:charge"), timeout=30
        )
        assert reply.charge_id
    # An operator may.
    with sync_channel(stubs.stubs.address, stubs.client_tls("operator")) as channel:
        control = control_pb2_grpc.StubControlStub(channel)
        assert control.SetFaults(control_pb2.SetFaultsRequest(), timeout=30).rules == 0
        (ledger,) = control.GetLedger(control_pb2.GetLedgerRequest(order_id="o-1"), timeout=30).ledgers
        assert ledger.charged_cents == 500


def _listed(system: LocalSystem, name: str) -> list[str]:
    with sync_channel(system.stubs.address, system.client_tls(name)) as channel:
        reflection = reflection_pb2_grpc.ServerReflectionStub(channel)
        replies = reflection.ServerReflectionInfo(iter([reflection_pb2.ServerReflectionRequest(list_services="")]))
        (reply,) = list(replies)
    return [s.name for s in reply.list_services_response.service]


def test_no_control_removes_stub_control(stubs: LocalSystem, tmp_path: Path) -> None:
    assert CONTROL in _listed(stubs, "operator")  # what the test below would miss if reflection listed nothing
    with _stubs(tmp_path, "--no-control") as bare:
        assert _faults(bare, "operator") is grpc.StatusCode.UNIMPLEMENTED
        with sync_channel(bare.stubs.address, bare.client_tls("operator")) as channel:
            control = control_pb2_grpc.StubControlStub(channel)
            assert _code(control.GetStats, control_pb2.GetStatsRequest()) is grpc.StatusCode.UNIMPLEMENTED
            health = health_pb2_grpc.HealthStub(channel)
            assert _code(health.Check, health_pb2.HealthCheckRequest(service=CONTROL)) is grpc.StatusCode.NOT_FOUND
        listed = _listed(bare, "operator")
        assert CONTROL not in listed
        assert {"shop.v1.OrderService", "shop.v1.PaymentService"} <= set(listed), listed
