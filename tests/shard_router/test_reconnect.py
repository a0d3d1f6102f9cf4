"""A restarted shard is reachable through the router as soon as it answers health checks: the router's health round
notices it on a fresh connection and replaces the shared channel, instead of waiting out gRPC's reconnect backoff."""

from __future__ import annotations

import contextlib
import dataclasses
import time
from pathlib import Path

from deploy.local import free_port
from protos.saga.v1 import saga_pb2
from shard_router import RouterServer, load
from tests.helpers.coordinator import SagaClient, place_request, running_shard, shard_config
from tests.helpers.stubs import running_stubs

from .conftest import write_shards


async def test_a_restarted_shard_is_reached_at_the_first_health_round_that_sees_it(tmp_path: Path) -> None:
    port = free_port()
    async with contextlib.AsyncExitStack() as stack:
        stubs = await stack.enter_async_context(running_stubs(tmp_path / "stubs"))
        cfg = dataclasses.replace(shard_config(tmp_path, stubs.address, shard_id="shard-1"), listen=f"127.0.0.1:{port}")
        config = tmp_path / "shards.toml"
        write_shards(
            config, [("shard-1", cfg.listen)], "[router]\nhealth_check_interval_s = 600.0", tmp_path / "e.json"
        )
        router = RouterServer(load(config, listen="127.0.0.1:0", epochs_path=tmp_path / "e.json", env={}))
        async with running_shard(cfg):
            await router.start()
            stack.push_async_callback(router.stop, 0.5)
            client = await stack.enter_async_context(SagaClient(f"127.0.0.1:{router.port}"))
            assert (await client.place(place_request("rc-1"))).status == saga_pb2.SUCCESS
        # The shard is gone: the router's channel fails and backs off (up to 2 s between attempts).
        assert (await router.shard_health.check_once()) == {"shard-1": False}
        before = router.pool.get(cfg.listen)
        async with running_shard(cfg):
            started = time.monotonic()
            assert (await router.shard_health.check_once()) == {"shard-1": True}
            assert router.pool.get(cfg.listen) is not before  # a new channel, dialled at once
            saga = await client.saga.GetSaga(saga_pb2.GetSagaRequest(order_id="rc-1"), timeout=10)
            lag = time.monotonic() - started
            assert saga.state == saga_pb2.SAGA_STATE_SUCCEEDED
            print(f"reached through the router {lag * 1000:.0f} ms after its first health round saw it SERVING")
