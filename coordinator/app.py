"""Assembles one shard process: journal, caller, shard, gRPC server; starts and stops them in order."""

from __future__ import annotations

import asyncio
import random
from dataclasses import dataclass

import grpc
from grpc_health.v1 import health, health_pb2
from loguru import logger

from common.auth import AuthPolicy, denied_counter, resolve_policy
from common.grpc_server import ServerLimits
from common.metrics_http import MetricsServer
from common.tls import ClientTls, TlsFiles, check_plaintext
from coordinator.api.server import build_server, set_serving
from coordinator.clock import Clock, SystemClock
from coordinator.config import ShardConfig
from coordinator.engine.caller import Caller, GrpcCaller
from coordinator.journal import Journal
from coordinator.metrics import ShardMetrics
from coordinator.operations.replication import HEALTH_SERVICE, ReplicaMonitor
from coordinator.ring.peers import GrpcPeerRings
from coordinator.security.sealing import open_sealer
from coordinator.shard import Shard


@dataclass
class ShardApp:
    cfg: ShardConfig
    journal: Journal
    shard: Shard
    server: grpc.aio.Server
    health: health.aio.HealthServicer
    caller: Caller
    port: int
    metrics_server: MetricsServer | None = None
    replica: ReplicaMonitor | None = None
    _replica_task: asyncio.Task[None] | None = None

    @property
    def address(self) -> str:
        host = self.cfg.listen.rpartition(":")[0]
        return f"{host}:{self.port}"

    @classmethod
    async def start(
        cls,
        cfg: ShardConfig,
        clock: Clock | None = None,
        caller: Caller | None = None,
        tls: TlsFiles | None = None,
        limits: ServerLimits | None = None,
        auth: AuthPolicy | None = None,
    ) -> ShardApp:
        """tls: the shard's certificate, key and CA (--tls-*), served to the router and presented to the services;
        None: plaintext, on loopback only. limits: the gRPC server's (default: coordinator.api.server.server_limits).
        auth: who may call (--auth-policy); None: auth off, refused unless plaintext on loopback."""
        tls = tls or TlsFiles()
        # Before the journal opens: bad TLS files, a refused plaintext address or a missing auth policy fail the start
        # with nothing to undo.
        check_plaintext(cfg.listen, tls, "on")
        policy = resolve_policy(auth, cfg.listen, tls, f"shard {cfg.shard_id}")
        caller = caller or GrpcCaller(cfg.services, ClientTls(tls))
        metrics = ShardMetrics()
        journal = Journal(
            cfg.journal_path,
            max_batch=cfg.limits.journal_max_batch,
            metrics=metrics,
            replicated=bool(cfg.replication.litestream_socket),
            window=cfg.group_commit,
        )
        await journal.open()
        try:
            # Before any saga resumes: a key file missing, too open or foreign stops the start (__main__ exits 2).
            sealer = await open_sealer(cfg, journal)
        except BaseException:
            await journal.close()
            await caller.close()
            raise
        rng = random.Random(cfg.seed)
        peers = GrpcPeerRings(ClientTls(tls))
        shard = Shard(cfg, journal, caller, clock or SystemClock(), sealer, rng, metrics, peers)
        try:
            on_denied = denied_counter(metrics.registry)
            server, port, health_servicer = build_server(shard, cfg.listen, tls, limits, policy, on_denied)
        except BaseException:
            await journal.close()
            await caller.close()
            raise
        resumed = await shard.start()
        metrics_server = MetricsServer(cfg.metrics_listen, metrics.registry) if cfg.metrics_listen else None
        await server.start()
        await set_serving(health_servicer, True)
        replica, replica_task = None, None
        if cfg.replication.litestream_socket:

            async def on_lagging(lagging: bool) -> None:
                status = (
                    health_pb2.HealthCheckResponse.NOT_SERVING if lagging else health_pb2.HealthCheckResponse.SERVING
                )
                await health_servicer.set(HEALTH_SERVICE, status)

            replica = ReplicaMonitor(cfg.replication, cfg.journal_path, metrics, on_lagging)
            replica_task = asyncio.create_task(replica.run(), name="replica-monitor")
        logger.info(
            "shard {} serving on {} (journal {}, {} sagas resumed){}",
            cfg.shard_id,
            f"{cfg.listen.rpartition(':')[0]}:{port}",
            cfg.journal_path,
            resumed,
            f", metrics on {cfg.metrics_listen.rpartition(':')[0]}:{metrics_server.port}" if metrics_server else "",
        )
        return cls(cfg, journal, shard, server, health_servicer, caller, port, metrics_server, replica, replica_task)

    async def stop(self, grace_s: float = 5.0) -> None:
        """Stops accepting, ends in-flight RPCs within the grace period, stops the sagas (they resume at the next
        start), commits what the journal holds, and closes."""
        await set_serving(self.health, False)
        if self._replica_task is not None:
            self._replica_task.cancel()
        stopping = asyncio.ensure_future(self.server.stop(grace_s))
        await self.shard.stop()
        await stopping
        await self.journal.close()
        await self.caller.close()
        if self.metrics_server is not None:
            await asyncio.to_thread(self.metrics_server.close)
        logger.info("shard {} stopped", self.cfg.shard_id)
