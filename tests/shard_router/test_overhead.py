"""What the router adds to a call: p50 latency through the router minus p50 straight to the shard.

Everything runs on one event loop here (client, router, shard), so the figure is the router's own work per call plus
one loopback hop; the bound is loose on purpose (CI machines are noisy) and the measured figure is printed.
"""

from __future__ import annotations

import statistics
import time

from protos.saga.v1 import saga_pb2, saga_pb2_grpc

from .conftest import Cluster

CALLS = 600


async def _p50_ms(stub: saga_pb2_grpc.SagaCoordinatorStub, order_id: str) -> float:
    request = saga_pb2.GetSagaRequest(order_id=order_id)
    for _ in range(50):  # warm up connections and code paths
        await stub.GetSaga(request, timeout=5)
    samples = []
    for _ in range(CALLS):
        started = time.perf_counter()
        await stub.GetSaga(request, timeout=5)
        samples.append((time.perf_counter() - started) * 1000)
    return statistics.median(samples)


async def test_router_overhead_per_call_is_small(cluster: Cluster) -> None:
    shard = await cluster.add_shard("shard-1")
    shard.add_saga("o-1")
    router = await cluster.start_router()
    direct = saga_pb2_grpc.SagaCoordinatorStub(cluster.channel_to(shard.address))
    routed, _ = cluster.stubs(router)
    direct_ms = await _p50_ms(direct, "o-1")
    routed_ms = await _p50_ms(routed, "o-1")
    print(
        f"GetSaga p50: direct {direct_ms:.3f} ms, through the router {routed_ms:.3f} ms, "
        f"overhead {routed_ms - direct_ms:.3f} ms"
    )
    assert routed_ms - direct_ms < 5.0
