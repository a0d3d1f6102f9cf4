"""`saga-router defs commit|list|drop` against real shards, and the router showing the committed history to shards:
a second saga type committed with a command runs through the router; a shard's refusal writes nothing; a version is
dropped only once no saga needs it; a shard on a fresh journal gets the history from the next router that starts."""

from __future__ import annotations

import json
from pathlib import Path

import grpc
import pytest
from loguru import logger

from common.definitions import load
from coordinator.config import Retention
from protos.ring.v1 import ring_pb2, ring_pb2_grpc
from protos.saga.v1 import saga_pb2
from shard_router import HashRing
from shard_router.defs import history as defs_history
from shard_router.defs.history import DefinitionsHistory
from shard_router.metrics import RouterMetrics
from tests.helpers.coordinator import place_request

from .conftest import eventually
from .real_shards import DATA, RealSystem, real_system, start_request

LOYAL = DATA / "loyal_order.yaml"


def variant(tmp_path: Path, label: str, **replace: str) -> Path:
    """loyal_order.yaml with another version label (another hash), and any other text replaced."""
    text = LOYAL.read_text().replace('version: "1"', f'version: "{label}"')
    for old, new in replace.items():
        text = text.replace(old, new)
    path = tmp_path / f"loyal_order-{label}.yaml"
    path.write_text(text)
    return path


async def held(system: RealSystem, shard_id: str, usage: bool = False) -> ring_pb2.DefinitionsState:
    async with grpc.aio.insecure_channel(system.apps[shard_id].address) as channel:
        reply = await ring_pb2_grpc.RingServiceStub(channel).GetDefinitions(
            ring_pb2.GetDefinitionsRequest(with_usage=usage), timeout=10
        )
    return reply.state


async def test_commit_then_start_the_new_type_through_the_router(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    async with real_system(tmp_path) as (system, client):
        with pytest.raises(grpc.aio.AioRpcError) as e:
            await client.saga.StartSaga(start_request("loyal_order", "o-1"), timeout=10)
        assert e.value.code() == grpc.StatusCode.NOT_FOUND

        assert await system.defs("commit", str(LOYAL)) == 0
        out = capsys.readouterr().out
        assert "committed loyal_order version 1" in out and "(active)" in out
        stored = json.loads(system.defs_path.read_text())
        assert stored["version"] == 1 and set(stored["aliases"]) == {"loyal_order"}
        assert await system.defs("commit", str(LOYAL)) == 0  # again: nothing changes
        assert "nothing to commit" in capsys.readouterr().out
        assert json.loads(system.defs_path.read_text())["version"] == 1

        started = await client.saga.StartSaga(start_request("loyal_order", "o-1"), timeout=20)
        assert started.state == saga_pb2.SAGA_STATE_SUCCEEDED, started.error_message
        placed = await client.place(place_request("o-1"))
        assert placed.saga_id != started.saga_id  # the order flow of o-1 is another saga

        # Both sagas of key o-1 live where the key hashes, whatever their type.
        owner = HashRing(["shard-1", "shard-2"], 1024).owner("o-1")
        for saga_type in ("order", "loyal_order"):
            saga = await client.saga.GetSaga(saga_pb2.GetSagaRequest(saga_type=saga_type, key="o-1"), timeout=10)
            assert saga.shard_id == owner and saga.saga_type == saga_type
        assert (await client.get("o-1")).saga_id == placed.saga_id

        listed = await client.admin.ListDefinitions(saga_pb2.ListDefinitionsRequest(), timeout=10)
        by_name = {d.name: d for d in listed.definitions}
        assert by_name["loyal_order"].active and by_name["loyal_order"].sagas == 1
        assert by_name["order"].active

        assert await system.defs("list") == 0
        out = capsys.readouterr().out
        assert "loyal_order" in out and started.definition_hash in out


async def test_a_commit_a_shard_refuses_writes_nothing(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    async with real_system(tmp_path) as (system, _):
        fraud = variant(tmp_path, "fraud", **{"service: loyalty": "service: fraud"})  # no shard has its address
        assert await system.defs("commit", str(fraud)) == 2
        out = capsys.readouterr().out
        assert "nothing written" in out and "shard shard-1" in out and "fraud" in out
        assert not system.defs_path.exists()

        broken = tmp_path / "broken.yaml"
        broken.write_text(LOYAL.read_text().replace("kind: pivot", "kind: pivotal"))
        assert await system.defs("commit", str(broken), str(LOYAL)) == 2
        assert "nothing committed" in capsys.readouterr().out
        assert not system.defs_path.exists()

        assert await system.defs("commit", str(LOYAL), "--expect-version", "3") == 2
        assert "at version 0, not 3" in capsys.readouterr().out
        assert await system.defs("commit", str(LOYAL), "--expect-version", "0") == 0


async def test_drop_waits_until_no_saga_needs_the_version(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    # Finished sagas leave the journal a second after they finish, so the version is free again soon.
    quick = Retention(finished_after_s=1, dedup_after_s=1, audit_after_s=1, interval_s=1)
    async with real_system(tmp_path, retention=quick) as (system, client):
        assert await system.defs("commit", str(LOYAL)) == 0
        first = (await client.saga.StartSaga(start_request("loyal_order", "d-1"), timeout=20)).definition_hash
        assert await system.defs("commit", str(variant(tmp_path, "2"))) == 0
        capsys.readouterr()

        assert await system.defs("drop", first[:12]) == 1
        out = capsys.readouterr().out
        assert "still need" in out and "loyal_order/d-1" in out
        assert first in json.loads(system.defs_path.read_text())["definitions"]

        second = json.loads(system.defs_path.read_text())["aliases"]["loyal_order"]
        assert await system.defs("drop", second) == 1  # the alias's target
        assert "alias" in capsys.readouterr().out

        async def unused() -> bool:
            states = [await held(system, sid, usage=True) for sid in system.apps]
            return all(not state.usage.get(first) for state in states)

        await eventually(unused, timeout_s=15)
        assert await system.defs("drop", first) == 0
        stored = json.loads(system.defs_path.read_text())
        assert first not in stored["definitions"] and stored["version"] == 3
        for sid in system.apps:
            assert first not in {d.hash for d in (await held(system, sid)).definitions}


async def test_a_router_shows_the_history_to_a_shard_on_a_fresh_journal(tmp_path: Path) -> None:
    async with real_system(tmp_path) as (system, _):
        assert await system.defs("commit", str(LOYAL)) == 0
        await system.stop_router()
        await system.stop_shard("shard-2")
        await system.start_shard("shard-2")  # a new disk: only the shipped order flow
        assert "loyal_order" not in (await held(system, "shard-2")).aliases
        system.write_config()  # its new address (same id: same placement)

        metrics = RouterMetrics()
        client = await system.start_router(metrics)

        async def has_it() -> bool:
            return "loyal_order" in (await held(system, "shard-2")).aliases

        await eventually(has_it, timeout_s=10)
        await eventually(lambda: _installed(metrics, "shard-2") == 1)
        key = next(
            k for k in (f"f-{i}" for i in range(100)) if HashRing(["shard-1", "shard-2"], 1024).owner(k) == "shard-2"
        )
        started = await client.saga.StartSaga(start_request("loyal_order", key), timeout=20)
        assert started.state == saga_pb2.SAGA_STATE_SUCCEEDED


async def test_a_router_puts_back_the_files_aliases_at_the_same_history_version(tmp_path: Path) -> None:
    async with real_system(tmp_path) as (system, _):
        assert await system.defs("commit", str(LOYAL)) == 0
        stored = json.loads(system.defs_path.read_text())
        # What a commit that lost the race to write the file leaves on a shard: the same version, other aliases.
        order_hash = (await held(system, "shard-1")).aliases["order"]
        async with grpc.aio.insecure_channel(system.apps["shard-1"].address) as channel:
            await ring_pb2_grpc.RingServiceStub(channel).InstallDefinitions(
                ring_pb2.InstallDefinitionsRequest(history_version=1, aliases={"loyal_order": order_hash}), timeout=10
            )
        assert (await held(system, "shard-1")).aliases["loyal_order"] == order_hash
        await system.start_router()

        async def restored() -> bool:
            return (await held(system, "shard-1")).aliases["loyal_order"] == stored["aliases"]["loyal_order"]

        await eventually(restored, timeout_s=10)


def _installed(metrics: RouterMetrics, shard_id: str) -> float | None:
    return metrics.registry.get_sample_value("saga_router_definitions_installed", {"shard": shard_id})


async def test_a_router_logs_a_shards_refusal_of_the_history_at_error(tmp_path: Path) -> None:
    async with real_system(tmp_path) as (system, _):
        # A file no `defs commit` would write (every shard refuses it): as a hand edit or a bad restore leaves it.
        fraud = load(variant(tmp_path, "fraud", **{"service: loyalty": "service: fraud"}))
        defs_history.write(system.defs_path, DefinitionsHistory().committed([fraud]), expect=0)
        errors: list[str] = []
        sink = logger.add(errors.append, level="ERROR", format="{message}")
        try:
            metrics = RouterMetrics()
            await system.start_router(metrics)
            await eventually(lambda: sum("refused definitions history version 1" in e for e in errors) == 2)
        finally:
            logger.remove(sink)
        assert all("no address" in e and "fraud" in e for e in errors if "refused definitions" in e)
        assert "loyal_order" not in (await held(system, "shard-1")).aliases
        assert _installed(metrics, "shard-1") is None
