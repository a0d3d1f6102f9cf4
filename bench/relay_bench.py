"""What the gRPC stack alone costs a shard (`python -m bench relay`): the lower bound under issue 16's shard ratio.

A relay is a shard with everything of the coordinator taken out but its calls: a grpc.aio server (uvloop, as the shards
run) that takes PlaceOrder, makes the saga's four forward calls to the durable stubs through the shards' own
coordinator.engine.caller.GrpcCaller (the same requests, idempotency keys and channel), one after the other, and answers
SUCCESS. No validation, hashing, sealing, journal, engine, metrics or logs. Three relays behind the proxy below, 64
callers in this process, as `make bench` spreads them over three shards; then one caller for the latency of the
chain without the journal and without the router's and the coordinator's own work. The gRPC floor (bench/grpc_floor.py)
is measured in the same invocation (before and after, the mean), so the relay's CPU per saga reads against it as the
shard's does.

In front of the relays, a proxy stands for the router with its work taken out: it reads order_id from the request (as
the router does), picks a relay by a hash of it, and passes the request's bytes on and the reply's bytes back, with no
metadata, authentication, fencing or metrics: the bound under the router's ratio (1 call in, 1 out).
"""

from __future__ import annotations

import asyncio
import os
import shutil
import subprocess
import sys
import tempfile
import time
import zlib
from pathlib import Path
from typing import Any

import grpc
import uvloop

from common.definitions.check import order_flow
from common.definitions.model import Values
from coordinator.config import Services
from coordinator.engine.caller import GrpcCaller
from coordinator.saga.model import Action
from protos.saga.v1 import saga_pb2, saga_pb2_grpc

from . import grpc_floor
from .cluster import REPO_ROOT, Cluster, free_port
from .probes import cpu_seconds
from .run import BenchError

STEPS = order_flow().steps

RELAYS = 3
_PLACE_ORDER = "/saga.v1.SagaCoordinator/PlaceOrder"


async def _serve(address: str, stubs: str) -> None:
    caller = GrpcCaller(Services.all_at(stubs))

    async def place_order(body: bytes, context: Any) -> bytes:
        req = saga_pb2.PlaceOrderRequest.FromString(body)
        payload = Values(f"relay-{req.order_id}", req.order_id, req)
        for step in STEPS:
            result = await caller.call(payload, step, Action.FORWARD, 10.0)
            if not result.ok:
                failed = saga_pb2.PlaceOrderResponse(
                    order_id=req.order_id, status=saga_pb2.FAILED, error_message=f"{step.label}: {result.summary}"
                )
                return bytes(failed.SerializeToString())
        done = saga_pb2.PlaceOrderResponse(order_id=req.order_id, status=saga_pb2.SUCCESS, saga_id=payload.saga_id)
        return bytes(done.SerializeToString())

    await _listen(address, place_order)


async def _proxy(address: str, upstreams: list[str]) -> None:
    channels = [grpc.aio.insecure_channel(u) for u in upstreams]
    relays = [c.unary_unary(_PLACE_ORDER, _registered_method=True) for c in channels]

    async def place_order(body: bytes, context: Any) -> bytes:
        order_id = saga_pb2.PlaceOrderRequest.FromString(body).order_id
        reply: bytes = await relays[zlib.crc32(order_id.encode()) % len(relays)](body, timeout=30.0)
        return reply

    await _listen(address, place_order)


async def _listen(address: str, place_order: Any) -> None:
    server = grpc.aio.server()
    handler = grpc.unary_unary_rpc_method_handler(place_order)
    server.add_generic_rpc_handlers(
        (grpc.method_handlers_generic_handler("saga.v1.SagaCoordinator", {"PlaceOrder": handler}),)
    )
    server.add_insecure_port(address)
    await server.start()
    print("ready", flush=True)
    await server.wait_for_termination()


async def _drive(addresses: list[str], sagas: int, concurrency: int, run_id: str) -> tuple[float, list[float], int]:
    channels = [grpc.aio.insecure_channel(a) for a in addresses]
    try:
        stubs = [saga_pb2_grpc.SagaCoordinatorStub(c) for c in channels]
        latencies: list[float] = []
        failures = 0
        next_index = 0

        async def caller() -> None:
            nonlocal next_index, failures
            while next_index < sagas:
                oid = f"{run_id}-{next_index}"
                next_index += 1
                req = saga_pb2.PlaceOrderRequest(
                    order_id=oid,
                    user_id="bench",
                    items=[saga_pb2.Item(item_id="bench-widget", quantity=1)],
                    payment_info=saga_pb2.PaymentInfo(payment_token="tok_ok", amount_cents=1299, currency="EUR"),
                )
                started = time.perf_counter()
                reply = await stubs[zlib.crc32(oid.encode()) % len(stubs)].PlaceOrder(req, timeout=30.0)
                latencies.append(time.perf_counter() - started)
                failures += reply.status != saga_pb2.SUCCESS

        started = time.perf_counter()
        await asyncio.gather(*(caller() for _ in range(concurrency)))
        return time.perf_counter() - started, latencies, failures
    finally:
        for c in channels:
            await c.close()


def _p50_ms(values: list[float]) -> float:
    ordered = sorted(values)
    return round(ordered[len(ordered) // 2] * 1000, 2) if ordered else 0.0


def _start(args: list[str]) -> subprocess.Popen[str]:
    proc = subprocess.Popen(
        [sys.executable, "-m", "bench.relay_bench", *args], cwd=REPO_ROOT, stdout=subprocess.PIPE, text=True
    )
    assert proc.stdout is not None
    if proc.stdout.readline().strip() != "ready":
        proc.kill()
        proc.wait()
        proc.stdout.close()
        raise BenchError(f"bench.relay_bench {' '.join(args)} did not start")
    return proc


def run(
    sagas: int, concurrency: int, warmup: int = 200, c1_sagas: int = 300, floor_calls: int = 10_000
) -> dict[str, Any]:
    floor_before = grpc_floor.run(floor_calls, 64)
    workdir = Path(tempfile.mkdtemp(prefix="saga-bench-relay-"))
    cluster = Cluster(workdir, shards=0)
    procs: list[subprocess.Popen[str]] = []
    try:
        cluster.start_stubs_only()
        stubs = cluster.of_kind("stubs")[0]
        addresses = [f"127.0.0.1:{free_port()}" for _ in range(RELAYS)]
        for address in addresses:
            procs.append(_start(["relay", address, stubs.address]))
        relays = list(procs)
        front = f"127.0.0.1:{free_port()}"
        proxy = _start(["proxy", front, *addresses])
        procs.append(proxy)
        uvloop.run(_drive([front], warmup, concurrency, "warm"))
        before = sum(cpu_seconds(r.pid) for r in relays), cpu_seconds(proxy.pid), cpu_seconds(stubs.pid)
        elapsed, _, failures = uvloop.run(_drive([front], sagas, concurrency, "m"))
        relay_cpu = sum(cpu_seconds(r.pid) for r in relays) - before[0]
        proxy_cpu = cpu_seconds(proxy.pid) - before[1]
        stubs_cpu = cpu_seconds(stubs.pid) - before[2]
        _, c1_latencies, c1_failures = uvloop.run(_drive([front], c1_sagas, 1, "c1"))
    finally:
        for proc in procs:
            proc.kill()
            proc.wait()
            if proc.stdout is not None:
                proc.stdout.close()
        cluster.stop()
        shutil.rmtree(workdir, ignore_errors=True)
    # Measured on both sides of the runs, as `make bench` does: the machine's speed drifts within a minute.
    floor_after = grpc_floor.run(floor_calls, 64)
    keys = ("server_cpu_us_per_call", "client_cpu_us_per_call")
    floor = {k: round((floor_before[k] + floor_after[k]) / 2, 1) for k in keys}
    server_ms, client_ms = floor["server_cpu_us_per_call"] / 1000, floor["client_cpu_us_per_call"] / 1000
    shard_floor_ms, router_floor_ms = server_ms + 4 * client_ms, server_ms + client_ms
    relay_ms, proxy_ms = relay_cpu * 1000 / sagas, proxy_cpu * 1000 / sagas
    return {
        "mode": "relay",
        "sagas": sagas,
        "concurrency": concurrency,
        "relays": RELAYS,
        "sagas_per_s": round(sagas / elapsed, 1),
        "relay_cpu_ms_per_saga": round(relay_ms, 3),
        "proxy_cpu_ms_per_saga": round(proxy_ms, 3),
        "stubs_cpu_ms_per_saga": round(stubs_cpu * 1000 / sagas, 3),
        "grpc_floor_us": {"server_us": floor["server_cpu_us_per_call"], "client_us": floor["client_cpu_us_per_call"]},
        "shard_floor_ms": round(shard_floor_ms, 3),
        "router_floor_ms": round(router_floor_ms, 3),
        "relay_over_floor": round(relay_ms / shard_floor_ms, 2),
        "proxy_over_floor": round(proxy_ms / router_floor_ms, 2),
        "c1_p50_ms": _p50_ms(c1_latencies),
        "failures": failures + c1_failures,
        "cores": os.cpu_count() or 0,
    }


if __name__ == "__main__":
    if sys.argv[1] == "relay":
        uvloop.run(_serve(sys.argv[2], sys.argv[3]))
    else:
        uvloop.run(_proxy(sys.argv[2], sys.argv[3:]))
