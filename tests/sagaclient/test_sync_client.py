"""SyncSagaClient against a real system (plaintext on loopback): the same calls, errors and retries as SagaClient,
without an event loop, and a shed PlaceOrder retried no sooner than the shard's retry-after-ms (and not at all when
that is past the call's timeout)."""

from __future__ import annotations

import random
import time
from pathlib import Path

import grpc
import pytest

from deploy.local import LocalSystem
from protos.saga.v1 import saga_pb2
from protos.service_stubs.v1 import control_pb2
from sagaclient import (
    NO_RETRY,
    AlreadyExists,
    InvalidRequest,
    NotFound,
    PaymentInfo,
    ResourceExhausted,
    RetryPolicy,
    SyncSagaClient,
)

from .conftest import start_system

PAY = PaymentInfo(payment_token="tok_ok", amount_cents=1200, currency="EUR")


def _client(system: LocalSystem, **kwargs: object) -> SyncSagaClient:
    return SyncSagaClient.connect(system.router.address, rng=random.Random(7), **kwargs)  # type: ignore[arg-type]


def test_place_get_list_and_watch(system: LocalSystem) -> None:
    with _client(system) as client:
        reply = client.place_order("s-ok-1", "u-1", [("sku-1", 2)], PAY)
        assert reply.status == saga_pb2.SUCCESS and reply.state == saga_pb2.SAGA_STATE_SUCCEEDED, reply
        assert client.place_order("s-ok-1", "u-1", [("sku-1", 2)], PAY).saga_id == reply.saga_id

        saga = client.get_saga("s-ok-1", include_events=True)
        assert saga.saga_id == reply.saga_id and saga.state == saga_pb2.SAGA_STATE_SUCCEEDED and saga.events

        pending = client.place_order("s-watch-1", "u-1", [("sku-2", 1)], PAY, no_wait=True)
        assert pending.status == saga_pb2.PENDING
        updates = list(client.watch_saga("s-watch-1"))
        assert not updates[0].HasField("event") and updates[-1].saga.state == saga_pb2.SAGA_STATE_SUCCEEDED

        pages = list(client.list_sagas(page_size=1, max_pages=2))
        assert len(pages) == 2 and all(len(p.sagas) == 1 for p in pages) and pages[0].next_page_token
        listed = [s.order_id for p in client.list_sagas(page_size=500) for s in p.sagas]
        assert {"s-ok-1", "s-watch-1"} <= set(listed) and len(listed) == len(set(listed))


def test_errors_are_typed(system: LocalSystem) -> None:
    with _client(system) as client:
        client.place_order("s-err-1", "u-1", [("sku-1", 1)], PAY)
        with pytest.raises(AlreadyExists) as taken:
            client.place_order("s-err-1", "u-1", [("sku-1", 5)], PAY)
        assert taken.value.code is grpc.StatusCode.ALREADY_EXISTS and not taken.value.retryable

        bad = PaymentInfo(payment_token="tok_ok", amount_cents=1200, currency="eur")
        with pytest.raises(InvalidRequest) as invalid:
            client.place_order("s-err-2", "u-1", [("sku-1", 1)], bad)
        assert invalid.value.field == "payment_info.currency", invalid.value.field_violations

        with pytest.raises(NotFound):
            client.get_saga("s-no-such-order")
        with pytest.raises(NotFound):
            list(client.watch_saga("s-no-such-order"))


def test_dead_letters_retry_and_resolve(system: LocalSystem) -> None:
    with _client(system) as client:
        parked = client.place_order("dl-s-1", "u-1", [("unshippable-2", 1)], PAY)
        assert parked.state == saga_pb2.SAGA_STATE_DEAD_LETTERED, parked
        assert "dl-s-1" in [d.order_id for p in client.list_dead_letters() for d in p.dead_letters]
        assert client.retry_dead_letter("dl-s-1", "refund provider back") == ["dl-s-1"]
        for _ in range(100):  # the refund still fails: the saga parks again within its compensation budget
            if client.get_saga("dl-s-1").state == saga_pb2.SAGA_STATE_DEAD_LETTERED:
                break
            time.sleep(0.1)
        assert client.resolve_dead_letter("dl-s-1", "refunded by hand").state == saga_pb2.SAGA_STATE_RESOLVED


def test_a_shed_place_order_is_retried_after_retry_after_ms(tmp_path: Path) -> None:
    # One saga in flight at most; "slow-" orders hold that slot for 1.5 s (their CreateOrder is slow), and a shed
    # PlaceOrder is told to come back in 2 s. A client that only backed off (10-20 ms, 2 attempts) would be shed twice.
    limits = "[limits]\nmax_in_flight = 1\nshed_retry_after_ms = 2000\n"
    slow = control_pb2.FaultRule(method="CreateOrder", order_id_prefix="slow-", latency_ms=1500)
    system = start_system(tmp_path, shard_config=limits, faults=[slow])
    try:
        policy = RetryPolicy(initial_backoff_s=0.01, max_backoff_s=0.02, max_attempts=2)
        with _client(system, retry=policy) as client:
            assert client.place_order("slow-1", "u-1", [("sku-1", 1)], PAY, no_wait=True).status == saga_pb2.PENDING
            with pytest.raises(ResourceExhausted) as shed:
                client.place_order("s-shed-0", "u-1", [("sku-1", 1)], PAY, retry=NO_RETRY)
            assert shed.value.retryable and shed.value.retry_after_s == 2.0
            # A timeout ending before the shard's retry-after-ms leaves no time for a retry: the call gives up at once
            # instead of sleeping out its timeout.
            started = time.monotonic()
            with pytest.raises(ResourceExhausted):
                client.place_order("s-shed-2", "u-1", [("sku-1", 1)], PAY, timeout_s=1.9)
            assert time.monotonic() - started < 1.0

            started = time.monotonic()
            reply = client.place_order("s-shed-1", "u-1", [("sku-1", 1)], PAY)
            assert reply.status == saga_pb2.SUCCESS, reply
            assert time.monotonic() - started >= 2.0
    finally:
        system.stop()
