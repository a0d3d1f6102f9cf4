"""The load generator: one process (`python -m bench.loadgen SPEC_JSON`), one sagaclient.SagaClient (one grpc.aio
channel), uvloop, many concurrent PlaceOrder calls to the router. It places orders as any Python user of the API would
(issue 18: the client library is exercised every day), without retries: a shed or failed call is counted under its
status code, not hidden behind a retry.

It talks to the harness over its standard streams: warms up, prints `ready`, waits for `go` on stdin (so the harness
can read every process's CPU time at the start of the measured window), runs, writes its results to the file the spec
names, prints `done`. Another `go` measures another window of as many sagas (new order ids; the harness reads the file
before it asks), until stdin says anything else or closes.

Closed loop: `concurrency` callers, each sending its next order as soon as the previous one is answered.
Open loop: orders are due at fixed times (rate per second); each call's latency is measured from when it was due, not
from when it was sent, so a stall of the system shows up in the figures instead of silently delaying the arrivals
(coordinated omission).
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import random
import sys
import time
from collections.abc import Callable
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any

import grpc
import uvloop
from google.protobuf import any_pb2

from common.tls import TlsFiles
from protos.saga.v1 import saga_pb2, saga_pb2_grpc
from sagaclient import NO_RETRY, PaymentInfo, SagaClient, SagaError

TOKEN_OK = "tok_ok"
TOKEN_DECLINED = "tok_declined"
CALL_TIMEOUT_S = 30.0
READY_TIMEOUT_S = 15.0
_ITEMS = (("bench-widget", 1), ("bench-gadget", 2))
_LINES = tuple(saga_pb2.Item(item_id=item, quantity=qty) for item, qty in _ITEMS)
_PAYMENT = {
    declined: PaymentInfo(payment_token=TOKEN_DECLINED if declined else TOKEN_OK, amount_cents=1299, currency="EUR")
    for declined in (False, True)
}


@dataclass(frozen=True)
class Spec:
    """What one load generator process does (sent as JSON on its command line)."""

    router: str
    run_id: str
    worker: int
    mode: str
    """closed | open"""
    sagas: int
    """Measured sagas this process sends."""
    warmup: int
    """Sagas sent before `ready`, not measured."""
    concurrency: int
    """Closed loop: callers; open loop: most calls outstanding before arrivals wait (a memory bound)."""
    rate: float
    """Open loop: orders per second this process sends."""
    fail_rate: float
    """Fraction of orders paid with the declined token."""
    seed: int
    result_path: str
    shards: tuple[tuple[str, str], ...] = ()
    """(shard id, address) of every shard: with `direct`, orders go straight to their owner, past the router."""
    direct: bool = False
    vnodes: int = 1024
    tls: tuple[str, str, str] | None = None
    """(cert, key, ca) files for mutual TLS with the router (or shards); None: plaintext."""
    saga_type: str = "order"
    """"order": PlaceOrder; any other: StartSaga of that type (a committed definition whose input is the order)."""


@dataclass
class Result:
    worker: int
    started_mono: float
    ended_mono: float
    latencies_ms: list[float]
    outcomes: list[str]
    """SUCCESS | FAILED | PENDING, or the gRPC status code name of a call that failed."""
    order_ids: list[str]
    declined: list[bool]
    lag_max_ms: float
    """Open loop: how late the generator itself was in sending a due order (its own saturation)."""


@dataclass(frozen=True)
class Request:
    """One order to place, drawn before the measured window; the window holds the calls."""

    order_id: str
    declined: bool
    user_id: str
    client: SagaClient
    """Who places it: the one client of the router, or (direct) the owning shard's."""


class Generator:
    def __init__(self, spec: Spec, client_for: Callable[[str], SagaClient]) -> None:
        self.spec = spec
        self._client_for = client_for
        self._rng = random.Random(spec.seed * 1_000 + spec.worker)
        self._stubs: dict[int, saga_pb2_grpc.SagaCoordinatorStub] = {}

    def _requests(self, prefix: str, n: int) -> list[Request]:
        out = []
        for i in range(n):
            order_id = f"{self.spec.run_id}-{prefix}{self.spec.worker}-{i}"
            declined = self._rng.random() < self.spec.fail_rate
            out.append(Request(order_id, declined, f"bench-user-{i % 97}", self._client_for(order_id)))
        return out

    async def _call(self, r: Request) -> str:
        if self.spec.saga_type != "order":
            return await self._start(r)
        try:
            reply = await r.client.place_order(
                r.order_id, r.user_id, _LINES, _PAYMENT[r.declined], timeout_s=CALL_TIMEOUT_S
            )
        except SagaError as e:
            return str(e.code.name)
        return str(saga_pb2.PlaceOrderStatus.Name(reply.status))

    async def _start(self, r: Request) -> str:
        """StartSaga of the spec's type with the same order as input, as a user of the generic call sends it."""
        stub = self._stubs.get(id(r.client))
        if stub is None:
            stub = self._stubs[id(r.client)] = saga_pb2_grpc.SagaCoordinatorStub(r.client.channel)
        order = saga_pb2.PlaceOrderRequest(
            order_id=r.order_id, user_id=r.user_id, items=_LINES, payment_info=_PAYMENT[r.declined]
        )
        packed = any_pb2.Any()
        packed.Pack(order)
        request = saga_pb2.StartSagaRequest(saga_type=self.spec.saga_type, key=r.order_id, input=packed)
        try:
            reply = await stub.StartSaga(request, timeout=CALL_TIMEOUT_S)
        except grpc.aio.AioRpcError as e:
            return str(e.code().name)
        return "SUCCESS" if reply.state == saga_pb2.SAGA_STATE_SUCCEEDED else "FAILED"

    async def closed(self, prefix: str, n: int, concurrency: int) -> Result:
        requests = self._requests(prefix, n)
        latencies = [0.0] * n
        outcomes = [""] * n
        next_index = 0

        async def caller() -> None:
            nonlocal next_index
            while next_index < n:
                i = next_index
                next_index += 1
                started = time.perf_counter()
                outcomes[i] = await self._call(requests[i])
                latencies[i] = (time.perf_counter() - started) * 1e3

        started = time.monotonic()
        await asyncio.gather(*(caller() for _ in range(min(concurrency, n))))
        return self._result(started, requests, latencies, outcomes, 0.0)

    async def open(self, prefix: str, n: int, rate: float, max_outstanding: int) -> Result:
        requests = self._requests(prefix, n)
        latencies = [0.0] * n
        outcomes = [""] * n
        slots = asyncio.Semaphore(max_outstanding)
        lag_max = 0.0

        async def one(i: int, due: float) -> None:
            try:
                outcomes[i] = await self._call(requests[i])
                latencies[i] = (time.perf_counter() - due) * 1e3
            finally:
                slots.release()

        tasks = []
        started = time.monotonic()
        t0 = time.perf_counter()
        for i in range(n):
            due = t0 + i / rate
            wait = due - time.perf_counter()
            if wait > 0:
                await asyncio.sleep(wait)
            await slots.acquire()
            lag_max = max(lag_max, time.perf_counter() - due)
            tasks.append(asyncio.create_task(one(i, due)))
        await asyncio.gather(*tasks)
        return self._result(started, requests, latencies, outcomes, lag_max * 1e3)

    def _result(
        self,
        started: float,
        requests: list[Request],
        latencies: list[float],
        outcomes: list[str],
        lag_max_ms: float,
    ) -> Result:
        return Result(
            worker=self.spec.worker,
            started_mono=started,
            ended_mono=time.monotonic(),
            latencies_ms=latencies,
            outcomes=outcomes,
            order_ids=[r.order_id for r in requests],
            declined=[r.declined for r in requests],
            lag_max_ms=lag_max_ms,
        )


def _say(line: str) -> None:
    sys.stdout.write(line + "\n")
    sys.stdout.flush()


async def _client(stack: contextlib.AsyncExitStack, spec: Spec, address: str) -> SagaClient:
    """A connected client of address: no retries (the bench counts what failed), mutual TLS if the spec says."""
    tls = None
    if spec.tls is not None:
        cert, key, ca = (Path(p) for p in spec.tls)
        tls = TlsFiles(cert=cert, key=key, ca=ca)
    client = await stack.enter_async_context(
        await SagaClient.connect(address, tls=tls, retry=NO_RETRY, timeout_s=CALL_TIMEOUT_S)
    )
    await asyncio.wait_for(client.channel.channel_ready(), timeout=READY_TIMEOUT_S)
    return client


async def run(spec: Spec) -> None:
    async with contextlib.AsyncExitStack() as stack:
        if spec.direct:
            # Client-side routing (what dropping the router hop would look like): one client per shard, the router's
            # own ring to pick the owner.
            from common.ring import HashRing

            clients = {shard_id: await _client(stack, spec, address) for shard_id, address in spec.shards}
            ring = HashRing(clients, spec.vnodes)
            gen = Generator(spec, lambda order_id: clients[ring.owner(order_id)])
        else:
            # One client per process: every call multiplexes over its HTTP/2 connection, as a real client's would.
            client = await _client(stack, spec, spec.router)
            gen = Generator(spec, lambda order_id: client)
        if spec.warmup:
            warm = await gen.closed("w", spec.warmup, spec.concurrency)
            bad = [o for o in warm.outcomes if o not in ("SUCCESS", "FAILED")]
            if bad:
                _say(f"warning: {len(bad)} warm-up calls failed, e.g. {bad[0]}")
        _say("ready")
        window = 0
        while True:
            line = await asyncio.get_running_loop().run_in_executor(None, sys.stdin.readline)
            if line.strip() != "go":
                return  # done, or the harness gave up (its stdin closed): leave quietly
            prefix = "m" if window == 0 else f"m{window}."
            if spec.mode == "open":
                result = await gen.open(prefix, spec.sagas, spec.rate, spec.concurrency)
            else:
                result = await gen.closed(prefix, spec.sagas, spec.concurrency)
            await asyncio.to_thread(Path(spec.result_path).write_text, json.dumps(asdict(result)))
            _say("done")
            window += 1


def main(argv: list[str] | None = None) -> None:
    args = sys.argv[1:] if argv is None else argv
    data: dict[str, Any] = json.loads(args[0])
    data["shards"] = tuple(tuple(pair) for pair in data.get("shards", ()))
    if data.get("tls") is not None:
        data["tls"] = tuple(data["tls"])
    uvloop.run(run(Spec(**data)))


if __name__ == "__main__":
    main()
