"""Questions the router asks shards about their sagas before it changes what it remembers: may this shard leave the
config (shard_router.ring.reload), may these epochs be forgotten (shard_router.ring.epochs_cli)?"""

from __future__ import annotations

import time
from collections.abc import AsyncIterator

from protos.saga.v1 import saga_pb2, saga_pb2_grpc

UNFINISHED = (
    saga_pb2.SAGA_STATE_RUNNING,
    saga_pb2.SAGA_STATE_COMPENSATING,
    saga_pb2.SAGA_STATE_DEAD_LETTERED,
)
"""States that still need the shard: running, compensating, or waiting for an operator."""


async def first_unfinished(stub: saga_pb2_grpc.SagaCoordinatorStub, timeout_s: float) -> saga_pb2.Saga | None:
    """One unfinished saga of the shard, or None if all are terminal. Raises grpc.aio.AioRpcError if it cannot tell."""
    for state in UNFINISHED:
        resp = await stub.ListSagas(saga_pb2.ListSagasRequest(state=state, page_size=1), timeout=timeout_s)
        if resp.sagas:
            return resp.sagas[0]
    return None


async def sagas_that_need_routing(
    stub: saga_pb2_grpc.SagaCoordinatorStub, retry_window_s: int, timeout_s: float, page_size: int = 500
) -> AsyncIterator[saga_pb2.Saga]:
    """Every saga of the shard that a client may still ask about through PlaceOrder, WatchSaga or admin calls: the
    unfinished ones, and the terminal ones created within the retry window (a PlaceOrder retry must find them)."""
    for state in UNFINISHED:
        async for saga in _walk(stub, state, timeout_s, page_size, None):
            yield saga
    since_s = int(time.time()) - retry_window_s
    async for saga in _walk(stub, saga_pb2.SAGA_STATE_UNSPECIFIED, timeout_s, page_size, since_s):
        if saga.state not in UNFINISHED:
            yield saga


async def _walk(
    stub: saga_pb2_grpc.SagaCoordinatorStub, state: int, timeout_s: float, page_size: int, since_s: int | None
) -> AsyncIterator[saga_pb2.Saga]:
    token = ""
    while True:
        resp = await stub.ListSagas(
            saga_pb2.ListSagasRequest(state=state, page_size=page_size, page_token=token), timeout=timeout_s
        )
        for saga in resp.sagas:
            if since_s is not None and saga.created_at.seconds < since_s:
                return  # newest first: everything after this one is older still
            yield saga
        token = resp.next_page_token
        if not token:
            return
