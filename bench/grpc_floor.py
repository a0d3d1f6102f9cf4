"""The floor under every figure (`python -m bench grpc`): what one unary call costs in Python's gRPC (grpc.aio +
uvloop, the stack every process here uses) when the handler does nothing: a server process that echoes bytes, a
client process (this one) with many calls in flight over one channel. CPU per call on each side, from /proc.

A saga makes 6 such calls (client -> router -> shard, shard -> 4 services): 6 client-side and 6 server-side costs
before any saga logic, journal or durability.
"""

from __future__ import annotations

import asyncio
import os
import subprocess
import sys
import time
from typing import Any

import grpc
import uvloop

from .cluster import REPO_ROOT, free_port
from .probes import cpu_seconds

_METHOD = "/bench.Echo/Echo"


async def _serve(address: str) -> None:
    async def echo(request: bytes, context: Any) -> bytes:
        return request

    server = grpc.aio.server()
    handler = grpc.unary_unary_rpc_method_handler(echo)
    server.add_generic_rpc_handlers((grpc.method_handlers_generic_handler("bench.Echo", {"Echo": handler}),))
    server.add_insecure_port(address)
    await server.start()
    print("ready", flush=True)
    await server.wait_for_termination()


async def _drive(address: str, calls: int, concurrency: int) -> float:
    async with grpc.aio.insecure_channel(address) as channel:
        await channel.channel_ready()
        echo = channel.unary_unary(_METHOD, _registered_method=True)
        body = b"x" * 120  # about a shop request's size
        next_index = 0

        async def caller() -> None:
            nonlocal next_index
            while next_index < calls:
                next_index += 1
                await echo(body, timeout=10.0)

        started = time.perf_counter()
        await asyncio.gather(*(caller() for _ in range(concurrency)))
        return time.perf_counter() - started


def run(calls: int, concurrency: int) -> dict[str, Any]:
    address = f"127.0.0.1:{free_port()}"
    server = subprocess.Popen(
        [sys.executable, "-m", "bench.grpc_floor", address], cwd=REPO_ROOT, stdout=subprocess.PIPE, text=True
    )
    try:
        assert server.stdout is not None
        if server.stdout.readline().strip() != "ready":
            raise RuntimeError("the echo server did not start")
        uvloop.run(_drive(address, min(calls, 2_000), concurrency))  # warm-up
        server_before, client_before = cpu_seconds(server.pid), time.process_time()
        elapsed = uvloop.run(_drive(address, calls, concurrency))
        server_cpu, client_cpu = cpu_seconds(server.pid) - server_before, time.process_time() - client_before
    finally:
        server.kill()
        server.wait()
        if server.stdout is not None:
            server.stdout.close()
    return {
        "mode": "grpc",
        "calls": calls,
        "concurrency": concurrency,
        "calls_per_s": round(calls / elapsed, 1),
        "server_cpu_us_per_call": round(server_cpu * 1e6 / calls, 1),
        "client_cpu_us_per_call": round(client_cpu * 1e6 / calls, 1),
        "grpc_version": grpc.__version__,
        "cores": os.cpu_count() or 0,
    }


if __name__ == "__main__":
    uvloop.run(_serve(sys.argv[1]))
