"""Sampling in real processes: at 1% (OTEL_TRACES_SAMPLER=parentbased_traceidratio, the SDK's own variables in every
process), every saga that fails has its shard's spans at the receiver, and about 1% of those that succeed."""

from __future__ import annotations

import asyncio
from collections import defaultdict
from collections.abc import Iterator
from pathlib import Path

import pytest

from bench.otlp import OtlpReceiver, Span
from common.tls import TlsFiles, aio_channel
from protos.saga.v1 import saga_pb2, saga_pb2_grpc
from tests.helpers.cluster import Cluster, ShardSettings
from tests.helpers.coordinator import place_request

pytestmark = pytest.mark.timeout(240)

SUCCEEDING, FAILING = 300, 30
SECRET = "tok_ok_sampling_secret_51d0"


@pytest.fixture
def receiver() -> Iterator[OtlpReceiver]:
    with OtlpReceiver() as r:
        yield r


async def test_at_one_percent_every_failed_saga_is_traced(tmp_path: Path, receiver: OtlpReceiver) -> None:
    env = {
        **receiver.environment(),
        "OTEL_TRACES_SAMPLER": "parentbased_traceidratio",
        "OTEL_TRACES_SAMPLER_ARG": "0.01",
    }
    cluster = Cluster(tmp_path, shards=2, settings=ShardSettings(ttl_ms=120_000), env=env)
    await cluster.start()
    try:
        channel = aio_channel(cluster.router.address, TlsFiles())
        saga = saga_pb2_grpc.SagaCoordinatorStub(channel)
        limit = asyncio.Semaphore(16)

        async def place(i: int) -> saga_pb2.PlaceOrderResponse:
            token = "tok_declined" if i % (SUCCEEDING // FAILING + 1) == 0 else SECRET
            async with limit:
                return await saga.PlaceOrder(place_request(f"sample-{i}", token=token), timeout=60)

        replies = await asyncio.gather(*(place(i) for i in range(SUCCEEDING + FAILING)))
        await channel.close()
    finally:
        await cluster.stop()  # every process flushes what it batched at exit
    failed = {r.saga_id for r in replies if r.status == saga_pb2.FAILED}
    succeeded = {r.saga_id for r in replies if r.status == saga_pb2.SUCCESS}
    assert len(failed) >= FAILING and len(failed) + len(succeeded) == len(replies)

    by_saga: dict[str, list[Span]] = defaultdict(list)
    for s in receiver.spans:
        if s.service == "saga-coordinator" and "saga.id" in s.attributes:
            by_saga[str(s.attributes["saga.id"])].append(s)
    want = {
        "forward create_order",
        "forward reserve_inventory",
        "forward process_payment",
        "saga COMPENSATING",
        "compensate reserve_inventory",
        "compensate create_order",
        "saga FAILED",
    }
    for saga_id in failed:
        spans = by_saga.get(saga_id, [])
        assert {s.name for s in spans} == want, (saga_id, sorted(s.name for s in spans))
        assert len({(s.trace_id, s.parent_id) for s in spans}) == 1  # one trace, under the router's call
    traced_ok = succeeded & set(by_saga)
    print(f"{len(traced_ok)} of {len(succeeded)} successful sagas traced at 1%; {len(failed)} failed, all traced")
    # Binomial(300, 0.01): mean 3; 12 or more has probability about 1e-4 (trace ids are random).
    assert len(traced_ok) < 12
    assert not [s for i in traced_ok for s in by_saga[i] if "saga.kept" in s.attributes]
    # The compensations' services saw the shard's kept spans as sampled parents: their spans were exported too.
    compensation_parents = {s.span_id for i in failed for s in by_saga[i] if s.name.startswith("compensate ")}
    served = {s.parent_id for s in receiver.spans if s.service == "saga-stubs"}
    assert compensation_parents <= served
    # No payment token in any byte exported, kept spans included.
    assert not [s for s in receiver.spans if any(SECRET in text for text in s.strings())]
    assert receiver.requests and not [body for body in receiver.requests if SECRET.encode() in body]
