"""Retries against the call's deadline, both clients, with a fake SagaCoordinator that refuses PlaceOrder (a real gRPC
server in this process): a wait that would reach the deadline, be it the server's retry-after-ms or the next backoff,
is not slept; the call fails at once with the last error. A wait that fits is waited, and the call retried."""

from __future__ import annotations

import random
import threading
import time
from collections.abc import Iterator
from concurrent import futures
from contextlib import contextmanager
from typing import Any

import grpc
import pytest

from protos.saga.v1 import saga_pb2, saga_pb2_grpc
from sagaclient import PaymentInfo, ResourceExhausted, RetryPolicy, SagaClient, SyncSagaClient, Unavailable
from sagaclient.retry import waits

PAY = PaymentInfo(payment_token="tok_ok", amount_cents=1200, currency="EUR")
TIMEOUT_S = 5.0
"""Every call's timeout here; a call that gives up at once is done well within half of it."""


class Refusing(saga_pb2_grpc.SagaCoordinatorServicer):  # type: ignore[misc]
    """Refuses the first `refusals` PlaceOrder calls with `code` (and a retry-after-ms trailer if given), then
    answers SUCCESS. `calls` counts the attempts that arrived."""

    def __init__(self, code: grpc.StatusCode, retry_after_ms: int | None = None, refusals: int = 1_000) -> None:
        self.code = code
        self.retry_after_ms = retry_after_ms
        self.refusals = refusals
        self.calls = 0
        self._lock = threading.Lock()

    def PlaceOrder(self, request: saga_pb2.PlaceOrderRequest, context: Any) -> saga_pb2.PlaceOrderResponse:
        with self._lock:
            self.calls += 1
            refuse = self.calls <= self.refusals
        if refuse:
            if self.retry_after_ms is not None:
                context.set_trailing_metadata((("retry-after-ms", str(self.retry_after_ms)),))
            context.abort(self.code, "refused by the test")
        return saga_pb2.PlaceOrderResponse(order_id=request.order_id, status=saga_pb2.SUCCESS)


@contextmanager
def serving(servicer: Refusing) -> Iterator[str]:
    # Threads, not grpc.aio: the blocking client's calls would otherwise stop the loop serving them.
    server = grpc.server(futures.ThreadPoolExecutor(max_workers=2))
    saga_pb2_grpc.add_SagaCoordinatorServicer_to_server(servicer, server)
    port = server.add_insecure_port("127.0.0.1:0")
    server.start()
    try:
        yield f"127.0.0.1:{port}"
    finally:
        server.stop(None)


async def test_a_retry_after_past_the_deadline_fails_at_once() -> None:
    refusing = Refusing(grpc.StatusCode.RESOURCE_EXHAUSTED, retry_after_ms=60_000)
    with serving(refusing) as address:
        async with await SagaClient.connect(address, timeout_s=TIMEOUT_S, rng=random.Random(7)) as client:
            started = time.monotonic()
            with pytest.raises(ResourceExhausted) as shed:
                await client.place_order("r-1", "u-1", [("sku-1", 1)], PAY)
            elapsed_s = time.monotonic() - started
    assert shed.value.retry_after_s == 60.0
    assert refusing.calls == 1
    assert elapsed_s < TIMEOUT_S / 2, elapsed_s  # it used to sleep out the whole timeout


def test_a_retry_after_past_the_deadline_fails_at_once_sync() -> None:
    refusing = Refusing(grpc.StatusCode.RESOURCE_EXHAUSTED, retry_after_ms=60_000)
    with serving(refusing) as address, SyncSagaClient.connect(address, timeout_s=TIMEOUT_S) as client:
        started = time.monotonic()
        with pytest.raises(ResourceExhausted) as shed:
            client.place_order("r-2", "u-1", [("sku-1", 1)], PAY)
        elapsed_s = time.monotonic() - started
    assert shed.value.retry_after_s == 60.0
    assert refusing.calls == 1
    assert elapsed_s < TIMEOUT_S / 2, elapsed_s


async def test_a_backoff_past_the_deadline_fails_at_once() -> None:
    # Waits of 0.2 s, then 10 s: the first fits in the timeout, the second does not.
    policy = RetryPolicy(initial_backoff_s=0.2, multiplier=50, max_backoff_s=10, jitter=0)
    refusing = Refusing(grpc.StatusCode.UNAVAILABLE)
    with serving(refusing) as address:
        async with await SagaClient.connect(address, timeout_s=TIMEOUT_S, retry=policy) as client:
            started = time.monotonic()
            with pytest.raises(Unavailable):
                await client.place_order("r-3", "u-1", [("sku-1", 1)], PAY)
            elapsed_s = time.monotonic() - started
    assert refusing.calls == 2
    assert 0.2 <= elapsed_s < TIMEOUT_S / 2, elapsed_s


def test_a_retry_after_within_the_deadline_is_waited_and_retried() -> None:
    refusing = Refusing(grpc.StatusCode.RESOURCE_EXHAUSTED, retry_after_ms=300, refusals=2)
    with serving(refusing) as address, SyncSagaClient.connect(address, timeout_s=TIMEOUT_S) as client:
        started = time.monotonic()
        reply = client.place_order("r-4", "u-1", [("sku-1", 1)], PAY)
        elapsed_s = time.monotonic() - started
    assert reply.status == saga_pb2.SUCCESS
    assert refusing.calls == 3
    assert elapsed_s >= 0.6


def test_waits_end_where_the_next_would_reach_the_deadline() -> None:
    now = [0.0]
    policy = RetryPolicy(initial_backoff_s=1, multiplier=2, max_backoff_s=4, jitter=0)
    plain = grpc.aio.AioRpcError(grpc.StatusCode.UNAVAILABLE, grpc.aio.Metadata(), grpc.aio.Metadata())
    gen = waits(policy, random.Random(1), deadline_s=10.0, clock=lambda: now[0])
    gen.send(None)
    assert gen.send(plain) == 1.0
    now[0] = 7.5
    assert gen.send(plain) == 2.0  # until 9.5: an attempt still fits
    now[0] = 9.0
    with pytest.raises(StopIteration):  # 4 s more would pass the deadline: backoff gives up with the error
        gen.send(plain)

    hinted = grpc.aio.AioRpcError(
        grpc.StatusCode.RESOURCE_EXHAUSTED, grpc.aio.Metadata(), grpc.aio.Metadata(("retry-after-ms", "10000"))
    )
    now[0] = 0.0
    gen = waits(policy, random.Random(1), deadline_s=10.0, clock=lambda: now[0])
    gen.send(None)
    with pytest.raises(StopIteration):  # the server's 10 s reach the deadline exactly: no attempt could follow
        gen.send(hinted)
