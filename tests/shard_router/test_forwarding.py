"""Relaying calls: the owner gets them, with the caller's deadline and metadata; the shard's answer comes back whole."""

from __future__ import annotations

import asyncio
import time
from collections.abc import AsyncIterator

import grpc
import pytest
from google.rpc import error_details_pb2
from grpc_health.v1 import health_pb2, health_pb2_grpc
from grpc_reflection.v1alpha.proto_reflection_descriptor_database import ProtoReflectionDescriptorDatabase
from grpc_status import rpc_status

from protos.saga.v1 import saga_pb2
from shard_router import HashRing
from shard_router.channels import ChannelPool
from shard_router.errors import RouterError, ShardStatus
from shard_router.metrics import NullMetrics
from shard_router.relay.forwarding import GET_SAGA, LIST_SAGAS, Forwarder, IncomingCall, Method

from .conftest import Cluster, order, rich_status
from .fake_shard import Failure


async def _three(cluster: Cluster) -> HashRing:
    for i in (1, 2, 3):
        await cluster.add_shard(f"shard-{i}")
    return HashRing(["shard-1", "shard-2", "shard-3"], 1024)


async def test_each_order_goes_to_its_owner_with_the_callers_metadata_and_deadline(cluster: Cluster) -> None:
    ring = await _three(cluster)
    coordinator, _ = cluster.stubs(await cluster.start_router())
    metadata = (("x-request-id", "r-42"), ("authorization", "Bearer t"), ("x-trace-bin", b"\x00\x01\xff"))
    for i in range(30):
        order_id = f"order-{i}"
        reply = await coordinator.PlaceOrder(order(order_id), metadata=metadata, timeout=5)
        assert reply.status == saga_pb2.SUCCESS
        owner = cluster.shards[ring.owner(order_id)]
        call = owner.calls_to("PlaceOrder")[-1]
        assert call.order_id == order_id
        assert call.metadata["x-request-id"] == "r-42"
        assert "authorization" not in call.metadata  # the router authenticated the caller: shards never see the token
        assert call.metadata["x-trace-bin"] == b"\x00\x01\xff"
        # gRPC encodes deadlines on the wire in coarse units, rounded up: a few ms either way is the protocol, not us.
        assert call.time_remaining is not None and 4.0 < call.time_remaining <= 5.1
    assert sum(len(s.calls_to("PlaceOrder")) for s in cluster.shards.values()) == 30
    assert all(s.calls_to("PlaceOrder") for s in cluster.shards.values())

    await coordinator.GetSaga(saga_pb2.GetSagaRequest(order_id="order-1"))  # no deadline: none forwarded either
    assert cluster.shards[ring.owner("order-1")].calls_to("GetSaga")[-1].time_remaining is None


async def test_status_details_and_trailing_metadata_come_back_unchanged(cluster: Cluster) -> None:
    ring = await _three(cluster)
    coordinator, _ = cluster.stubs(await cluster.start_router())
    bad = rpc_status.to_status(_bad_request("payment_info.currency", "must be 3 uppercase letters"))
    owner = cluster.shards[ring.owner("order-bad")]
    owner.failures["PlaceOrder"] = Failure(
        grpc.StatusCode.INVALID_ARGUMENT, bad.details, (*bad.trailing_metadata, ("x-shard", owner.shard_id)), times=1
    )
    call = coordinator.PlaceOrder(order("order-bad"))
    with pytest.raises(grpc.aio.AioRpcError) as e:
        await call
    assert e.value.code() == grpc.StatusCode.INVALID_ARGUMENT
    assert e.value.details() == bad.details
    assert dict(e.value.trailing_metadata())["x-shard"] == owner.shard_id
    status = rich_status(e.value)
    assert status is not None
    violation = error_details_pb2.BadRequest()
    status.details[0].Unpack(violation)
    assert violation.field_violations[0].field == "payment_info.currency"

    owner.failures["PlaceOrder"] = Failure(
        grpc.StatusCode.RESOURCE_EXHAUSTED, "shard overloaded", (("retry-after-ms", "250"),), times=1
    )
    with pytest.raises(grpc.aio.AioRpcError) as e:
        await coordinator.PlaceOrder(order("order-bad"))
    assert (e.value.code(), e.value.details()) == (grpc.StatusCode.RESOURCE_EXHAUSTED, "shard overloaded")
    assert dict(e.value.trailing_metadata())["retry-after-ms"] == "250"

    with pytest.raises(grpc.aio.AioRpcError) as e:
        await coordinator.GetSaga(saga_pb2.GetSagaRequest(order_id="nobody"))
    assert (e.value.code(), e.value.details()) == (grpc.StatusCode.NOT_FOUND, "no saga for order 'nobody'")


async def test_trailing_metadata_of_a_success_comes_back(cluster: Cluster) -> None:
    ring = await _three(cluster)
    cluster.shards[ring.owner("o-1")].reply_metadata = (("x-saga-shard", "yes"),)
    coordinator, _ = cluster.stubs(await cluster.start_router())
    call = coordinator.PlaceOrder(order("o-1"))
    await call
    assert dict(await call.trailing_metadata())["x-saga-shard"] == "yes"


async def test_a_down_shard_fails_its_own_keys_only(cluster: Cluster) -> None:
    ring = await _three(cluster)
    coordinator, _ = cluster.stubs(await cluster.start_router())
    await cluster.shards["shard-2"].stop()
    for i in range(40):
        order_id = f"order-{i}"
        if ring.owner(order_id) == "shard-2":
            with pytest.raises(grpc.aio.AioRpcError) as e:
                await coordinator.PlaceOrder(order(order_id), timeout=5)
            assert e.value.code() == grpc.StatusCode.UNAVAILABLE
        else:
            assert (await coordinator.PlaceOrder(order(order_id), timeout=5)).status == saga_pb2.SUCCESS
    # Nothing was re-routed: the live shards saw only their own keys.
    for sid in ("shard-1", "shard-3"):
        assert all(ring.owner(c.order_id) == sid for c in cluster.shards[sid].calls_to("PlaceOrder"))


async def test_watch_saga_streams_from_the_owner(cluster: Cluster) -> None:
    ring = await _three(cluster)
    cluster.shards[ring.owner("o-7")].add_saga("o-7")
    coordinator, _ = cluster.stubs(await cluster.start_router())
    updates = [u async for u in coordinator.WatchSaga(saga_pb2.WatchSagaRequest(order_id="o-7"), timeout=5)]
    assert [u.HasField("event") for u in updates] == [False, True, True]
    assert updates[0].saga.order_id == "o-7"
    with pytest.raises(grpc.aio.AioRpcError) as e:
        async for _ in coordinator.WatchSaga(saga_pb2.WatchSagaRequest(order_id="nobody")):
            pass
    assert e.value.code() == grpc.StatusCode.NOT_FOUND


async def test_admin_calls_by_order_go_to_the_owner(cluster: Cluster) -> None:
    ring = await _three(cluster)
    owner = cluster.shards[ring.owner("o-dl")]
    owner.add_dead_letter("o-dl", 1)
    _, admin = cluster.stubs(await cluster.start_router())
    reply = await admin.RetryDeadLetter(saga_pb2.RetryDeadLetterRequest(order_id="o-dl", reason="fixed"))
    assert list(reply.order_ids) == ["o-dl"]
    with pytest.raises(grpc.aio.AioRpcError) as e:
        await admin.RetryDeadLetter(saga_pb2.RetryDeadLetterRequest(order_id="o-dl", reason="again"))
    assert e.value.code() == grpc.StatusCode.FAILED_PRECONDITION
    resolved = await admin.ResolveDeadLetter(saga_pb2.ResolveDeadLetterRequest(order_id="o-dl", reason="by hand"))
    assert resolved.saga.state == saga_pb2.SAGA_STATE_RESOLVED
    assert {c.method for c in owner.calls} == {"RetryDeadLetter", "ResolveDeadLetter"}


async def test_garbage_requests_are_invalid_argument(cluster: Cluster) -> None:
    await _three(cluster)
    channel = cluster.channel(await cluster.start_router())
    call = channel.unary_unary("/saga.v1.SagaCoordinator/PlaceOrder")
    with pytest.raises(grpc.aio.AioRpcError) as e:
        await call(b"\xff\xff\xff")
    assert e.value.code() == grpc.StatusCode.INVALID_ARGUMENT
    assert "request" in e.value.details()


async def test_health_and_reflection_look_like_a_shard(cluster: Cluster) -> None:
    await _three(cluster)
    router = await cluster.start_router()
    channel = cluster.channel(router)
    check = await health_pb2_grpc.HealthStub(channel).Check(health_pb2.HealthCheckRequest(service="saga.v1.SagaAdmin"))
    assert check.status == health_pb2.HealthCheckResponse.SERVING

    def reflect() -> tuple[set[str], str]:
        # The reflection client is synchronous: it runs in a thread so the router (on this loop) can answer it.
        with grpc.insecure_channel(f"127.0.0.1:{router.port}") as sync_channel:
            db = ProtoReflectionDescriptorDatabase(sync_channel)
            return set(db.get_services()), db.FindFileContainingSymbol("saga.v1.PlaceOrderRequest").name

    services, file_name = await asyncio.wait_for(asyncio.to_thread(reflect), 10)
    assert {"saga.v1.SagaCoordinator", "saga.v1.SagaAdmin", "grpc.health.v1.Health"} <= services
    assert file_name == "protos/saga/v1/saga.proto"


class _Recorded(NullMetrics):
    """Keeps every forwarded() report."""

    def __init__(self) -> None:
        self.calls: list[tuple[str, str, str]] = []

    def forwarded(self, method: str, shard_id: str, code: str, seconds: float) -> None:
        assert seconds >= 0
        self.calls.append((method, shard_id, code))


@pytest.fixture
async def pool() -> AsyncIterator[ChannelPool]:
    p = ChannelPool(4 * 1024 * 1024, 0)
    try:
        yield p
    finally:
        await p.close()


_LIST_SAGAS = Method(LIST_SAGAS, saga_pb2.ListSagasResponse.FromString)


async def test_call_returns_the_decoded_answer_and_is_counted_like_a_relay(cluster: Cluster, pool: ChannelPool) -> None:
    shard = await cluster.add_shard("shard-1")
    shard.add_saga("o-1")
    metrics = _Recorded()
    forwarder = Forwarder(pool, metrics)
    caller = IncomingCall((("x-request-id", "r-1"),), time.monotonic() + 5)
    request = saga_pb2.ListSagasRequest(page_size=10).SerializeToString()

    page = await forwarder.call("shard-1", shard.address, _LIST_SAGAS, request, caller)
    assert isinstance(page, saga_pb2.ListSagasResponse)
    assert [s.order_id for s in page.sagas] == ["o-1"] and page.next_page_token == ""
    sent = shard.calls_to("ListSagas")[-1]
    assert sent.metadata["x-request-id"] == "r-1"
    assert sent.time_remaining is not None and 4.0 < sent.time_remaining <= 5.1

    # The unary relay and the typed call report through the same code: same method label, same codes.
    await forwarder.unary(
        "shard-1", shard.address, GET_SAGA, saga_pb2.GetSagaRequest(order_id="o-1").SerializeToString(), caller
    )
    assert metrics.calls == [(LIST_SAGAS, "shard-1", "OK"), (GET_SAGA, "shard-1", "OK")]


async def test_call_raises_the_shards_status_whole(cluster: Cluster, pool: ChannelPool) -> None:
    shard = await cluster.add_shard("shard-1")
    shard.failures["ListSagas"] = Failure(
        grpc.StatusCode.RESOURCE_EXHAUSTED, "shard overloaded", (("retry-after-ms", "250"),), times=1
    )
    metrics = _Recorded()
    forwarder = Forwarder(pool, metrics)
    with pytest.raises(ShardStatus) as e:
        await forwarder.call("shard-1", shard.address, _LIST_SAGAS, b"", IncomingCall((), None))
    assert (e.value.shard_id, e.value.code, e.value.details) == (
        "shard-1",
        grpc.StatusCode.RESOURCE_EXHAUSTED,
        "shard overloaded",
    )
    assert dict(e.value.trailing_metadata)["retry-after-ms"] == "250"
    assert metrics.calls == [(LIST_SAGAS, "shard-1", "RESOURCE_EXHAUSTED")]

    await shard.stop()
    with pytest.raises(ShardStatus) as e:
        await forwarder.call("shard-1", shard.address, _LIST_SAGAS, b"", IncomingCall((), time.monotonic() + 5))
    assert e.value.code == grpc.StatusCode.UNAVAILABLE
    assert metrics.calls[-1] == (LIST_SAGAS, "shard-1", "UNAVAILABLE")


async def test_call_past_the_callers_deadline_is_not_sent(cluster: Cluster, pool: ChannelPool) -> None:
    shard = await cluster.add_shard("shard-1")
    metrics = _Recorded()
    with pytest.raises(RouterError) as e:
        await Forwarder(pool, metrics).call(
            "shard-1", shard.address, _LIST_SAGAS, b"", IncomingCall((), time.monotonic())
        )
    assert e.value.code == grpc.StatusCode.DEADLINE_EXCEEDED and not isinstance(e.value, ShardStatus)
    assert shard.calls == [] and metrics.calls == []


def test_a_method_is_named_by_its_short_name() -> None:
    assert _LIST_SAGAS.name == "ListSagas"


def _bad_request(field: str, description: str) -> object:
    from google.rpc import code_pb2, status_pb2

    status = status_pb2.Status(code=code_pb2.INVALID_ARGUMENT, message=f"{field}: {description}")
    bad = error_details_pb2.BadRequest(
        field_violations=[error_details_pb2.BadRequest.FieldViolation(field=field, description=description)]
    )
    status.details.add().Pack(bad)
    return status
