"""Asking every shard the router may call whether it is up (the standard gRPC health service), about once a second.

What it feeds: saga_router_shard_up / saga_router_shards_up, the dashboard's shard list, and the router's own health.
The health of the two saga.v1 services (what a readiness probe should check: `grpc_health_probe
-service=saga.v1.SagaCoordinator`) is SERVING while at least one shard answers SERVING and NOT_SERVING when none does:
a router that can reach no shard should be taken out of a load balancer. The overall status ("") stays SERVING while the
process serves (liveness): restarting a router because its shards are down would not help, and the launcher may start
a router before its shards. Everything starts SERVING, before the first round.

A shard that is down is checked every DOWN_INTERVAL_S, on a fresh connection: the shared channel to it waits out gRPC's
reconnect backoff (up to 2 s) before it dials again, so without this a restarted shard stayed unreachable through the
router for up to two seconds after it answered health checks. Once the fresh connection hears SERVING, the shared
channel is replaced (calls still on the old one finish) and the next call dials at once.
"""

from __future__ import annotations

import asyncio
from collections.abc import Callable, Iterable

import grpc
from grpc_health.v1 import health, health_pb2, health_pb2_grpc
from loguru import logger

from common.loops import run_every
from shard_router.channels import ChannelPool
from shard_router.metrics import Metrics
from shard_router.ring.topology import Topology

DOWN_INTERVAL_S = 0.2
"""How often a shard that failed its last check is checked again (the others: health_check_interval_s)."""


class ShardHealth:
    def __init__(
        self,
        topology: Callable[[], Topology],
        pool: ChannelPool,
        metrics: Metrics,
        servicer: health.aio.HealthServicer,
        services: Iterable[str],
        timeout_s: float,
    ) -> None:
        self._topology = topology
        self._pool = pool
        self._metrics = metrics
        self._servicer = servicer
        self._services = tuple(services)
        self._timeout_s = timeout_s
        self.up: dict[str, bool] = {}
        """The last round's answers: shard id -> up."""
        self._serving: bool | None = None

    async def _check(self, address: str) -> bool:
        stub = health_pb2_grpc.HealthStub(self._pool.get(address).channel)
        try:
            reply = await stub.Check(health_pb2.HealthCheckRequest(), timeout=self._timeout_s)
        except grpc.aio.AioRpcError:
            if await self._serving_afresh(address):
                self._pool.reconnect(address)
                return True
            return False
        return bool(reply.status == health_pb2.HealthCheckResponse.SERVING)

    async def _serving_afresh(self, address: str) -> bool:
        """Whether the shard answers SERVING on a connection of its own (no reconnect backoff to wait out)."""
        channel = self._pool.fresh_channel(address)
        try:
            reply = await health_pb2_grpc.HealthStub(channel).Check(
                health_pb2.HealthCheckRequest(), timeout=self._timeout_s
            )
        except grpc.aio.AioRpcError:
            return False
        finally:
            await channel.close()
        return bool(reply.status == health_pb2.HealthCheckResponse.SERVING)

    async def check_once(self) -> dict[str, bool]:
        """One round: checks every shard at once, records the answers and sets the router's own health."""
        topo = self._topology()
        ids = topo.shard_ids
        answers = await asyncio.gather(*(self._check(topo.addresses[sid]) for sid in ids))
        up = dict(zip(ids, answers, strict=True))
        for sid, is_up in up.items():
            if self.up.get(sid, True) != is_up:
                logger.warning("shard {} is {}", sid, "up again" if is_up else "down (health check failed)")
        self.up = up
        self._metrics.shards_checked(up)
        serving = any(up.values())
        if serving != self._serving:
            if not serving:
                logger.error("no shard is up: the router reports NOT_SERVING")
            elif self._serving is not None:
                logger.info("a shard is up again: the router reports SERVING")
            status = health_pb2.HealthCheckResponse.SERVING if serving else health_pb2.HealthCheckResponse.NOT_SERVING
            for name in self._services:
                await self._servicer.set(name, status)
            self._serving = serving
        return up

    async def run(self, interval_s: float) -> None:
        """Checks until cancelled; a failing round is logged and the next one runs on time. While a shard is down,
        rounds come every DOWN_INTERVAL_S."""

        async def pause(_: float) -> None:
            down = not all(self.up.values())
            await asyncio.sleep(min(interval_s, DOWN_INTERVAL_S) if down else interval_s)

        await run_every(interval_s, self.check_once, name="shard health round", sleep=pause)
