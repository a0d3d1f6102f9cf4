"""Merged pages across shards: every item exactly once, in order; tokens that survive the merge; bulk retry."""

from __future__ import annotations

import random
from collections.abc import Sequence

import grpc
import pytest

from protos.saga.v1 import saga_pb2
from shard_router import HashRing, RouterSettings, Topology
from shard_router.channels import ChannelPool
from shard_router.errors import ShardStatus
from shard_router.metrics import RouterMetrics
from shard_router.relay.fanout import Cursor, FanOut, Fetch, decode_token, encode_token, merge_page
from shard_router.relay.forwarding import Forwarder, IncomingCall

from .conftest import Cluster
from .fake_shard import Failure


def _offset_pages(shards: dict[str, list[int]], shard_page: dict[str, int]) -> Fetch[int]:
    """Pages of in-memory shards behind offset tokens; each shard caps its pages at shard_page[sid]."""

    async def fetch(sid: str, token: str, size: int) -> tuple[Sequence[int], str]:
        start = int(token or 0)
        end = start + min(size, shard_page[sid])
        return shards[sid][start:end], str(end) if end < len(shards[sid]) else ""

    return fetch


async def test_merge_walks_every_item_once_in_order_whatever_the_page_sizes() -> None:
    seed = random.randrange(2**32)
    print(f"seed={seed}")
    rng = random.Random(seed)
    for _ in range(40):
        shards = {f"s{i}": sorted(rng.sample(range(10_000), rng.randint(0, 60))) for i in range(rng.randint(1, 5))}
        shard_page = {sid: rng.randint(1, 7) for sid in shards}  # shards may answer smaller pages than asked

        fetch = _offset_pages(shards, shard_page)

        cursors: dict[str, Cursor | None] = {}
        seen: list[int] = []
        for _ in range(1000):
            page_size = rng.randint(1, 12)
            page, cursors = await merge_page(list(shards), cursors, page_size, fetch, lambda x: (x,))
            assert len(page) <= page_size
            seen.extend(page)
            token = encode_token("f", cursors)
            if not token:
                break
            cursors = decode_token(token, "f", 500)
        assert seen == sorted(x for items in shards.values() for x in items), f"seed={seed}"


async def test_list_sagas_walks_three_shards_newest_first(cluster: Cluster) -> None:
    for i in (1, 2, 3):
        shard = await cluster.add_shard(f"shard-{i}")
        for j in range(25):
            # interleaved creation times across the shards, so every page mixes them
            shard.add_saga(f"o-{i}-{j}", created_ns=1_700_000_000_000_000_000 + (j * 3 + i) * 1_000_000)
    coordinator, _ = cluster.stubs(await cluster.start_router())
    seen: list[saga_pb2.Saga] = []
    token = ""
    pages = 0
    while True:
        page = await coordinator.ListSagas(saga_pb2.ListSagasRequest(page_size=10, page_token=token), timeout=5)
        assert len(page.sagas) <= 10
        seen.extend(page.sagas)
        pages += 1
        token = page.next_page_token
        if not token:
            break
    assert pages == 8
    assert len(seen) == 75 and len({s.order_id for s in seen}) == 75
    created = [s.created_at.ToNanoseconds() for s in seen]
    assert created == sorted(created, reverse=True)


async def test_list_sagas_keeps_the_state_filter(cluster: Cluster) -> None:
    for i in (1, 2):
        shard = await cluster.add_shard(f"shard-{i}")
        for j in range(6):
            shard.add_saga(f"o-{i}-{j}", state=saga_pb2.SAGA_STATE_FAILED if j % 2 else saga_pb2.SAGA_STATE_SUCCEEDED)
    coordinator, _ = cluster.stubs(await cluster.start_router())
    request = saga_pb2.ListSagasRequest(state=saga_pb2.SAGA_STATE_FAILED, page_size=4)
    first = await coordinator.ListSagas(request)
    assert [s.state for s in first.sagas] == [saga_pb2.SAGA_STATE_FAILED] * 4
    rest = await coordinator.ListSagas(
        saga_pb2.ListSagasRequest(state=saga_pb2.SAGA_STATE_FAILED, page_size=4, page_token=first.next_page_token)
    )
    assert len(rest.sagas) == 2 and not rest.next_page_token
    with pytest.raises(grpc.aio.AioRpcError) as e:  # same token, other filter
        await coordinator.ListSagas(saga_pb2.ListSagasRequest(page_size=4, page_token=first.next_page_token))
    assert e.value.code() == grpc.StatusCode.INVALID_ARGUMENT and "page_token" in e.value.details()


async def test_dead_letters_come_oldest_first(cluster: Cluster) -> None:
    for i in (1, 2, 3):
        shard = await cluster.add_shard(f"shard-{i}")
        for j in range(7):
            shard.add_dead_letter(f"dl-{i}-{j}", parked_ns=1_000_000 * (j * 3 + (4 - i)))
    _, admin = cluster.stubs(await cluster.start_router())
    seen: list[saga_pb2.DeadLetter] = []
    token = ""
    while True:
        page = await admin.ListDeadLetters(saga_pb2.ListDeadLettersRequest(page_size=4, page_token=token))
        seen.extend(page.dead_letters)
        token = page.next_page_token
        if not token:
            break
    parked = [d.parked_at.ToNanoseconds() for d in seen]
    assert len(set(parked)) == 21 and parked == sorted(parked)


async def test_bad_page_requests_name_the_field(cluster: Cluster) -> None:
    await cluster.add_shard("shard-1")
    coordinator, admin = cluster.stubs(await cluster.start_router())
    for request, field in (
        (saga_pb2.ListSagasRequest(page_size=501), "page_size"),
        (saga_pb2.ListSagasRequest(page_size=-1), "page_size"),
        (saga_pb2.ListSagasRequest(page_token="not-ours"), "page_token"),
        (saga_pb2.ListSagasRequest(page_token="e30"), "page_token"),  # "{}"
    ):
        with pytest.raises(grpc.aio.AioRpcError) as e:
            await coordinator.ListSagas(request)
        assert e.value.code() == grpc.StatusCode.INVALID_ARGUMENT
        assert e.value.details().startswith(field)
    with pytest.raises(grpc.aio.AioRpcError) as e:
        await admin.ListDeadLetters(saga_pb2.ListDeadLettersRequest(page_size=1000))
    assert e.value.code() == grpc.StatusCode.INVALID_ARGUMENT


async def test_a_list_fails_rather_than_skip_a_down_shard(cluster: Cluster) -> None:
    for i in (1, 2):
        (await cluster.add_shard(f"shard-{i}")).add_saga(f"o-{i}")
    coordinator, _ = cluster.stubs(await cluster.start_router())
    assert len((await coordinator.ListSagas(saga_pb2.ListSagasRequest())).sagas) == 2
    await cluster.shards["shard-2"].stop()
    with pytest.raises(grpc.aio.AioRpcError) as e:
        await coordinator.ListSagas(saga_pb2.ListSagasRequest(), timeout=5)
    assert e.value.code() == grpc.StatusCode.UNAVAILABLE
    assert "shard shard-2" in e.value.details()


async def test_retry_all_fans_out_and_merges_order_ids(cluster: Cluster) -> None:
    for i in (1, 2, 3):
        shard = await cluster.add_shard(f"shard-{i}")
        for j in range(i):
            shard.add_dead_letter(f"dl-{i}-{j}", parked_ns=j + 1)
    _, admin = cluster.stubs(await cluster.start_router())
    reply = await admin.RetryDeadLetter(saga_pb2.RetryDeadLetterRequest(all=True, reason="outage over"), timeout=5)
    assert sorted(reply.order_ids) == ["dl-1-0", "dl-2-0", "dl-2-1", "dl-3-0", "dl-3-1", "dl-3-2"]
    assert all(len(s.calls_to("RetryDeadLetter")) == 1 for s in cluster.shards.values())
    assert not (await admin.RetryDeadLetter(saga_pb2.RetryDeadLetterRequest(all=True, reason="x"))).order_ids

    await cluster.shards["shard-3"].stop()
    with pytest.raises(grpc.aio.AioRpcError) as e:
        await admin.RetryDeadLetter(saga_pb2.RetryDeadLetterRequest(all=True, reason="x"), timeout=5)
    assert e.value.code() == grpc.StatusCode.UNAVAILABLE and "shard-3" in e.value.details()


async def test_a_dry_run_of_retry_all_merges_every_shards_previews_and_changes_nothing(cluster: Cluster) -> None:
    for i in (1, 2, 3):
        shard = await cluster.add_shard(f"shard-{i}")
        for j in range(i):
            shard.add_dead_letter(f"dl-{i}-{j}", parked_ns=j + 1)
    _, admin = cluster.stubs(await cluster.start_router())
    request = saga_pb2.RetryDeadLetterRequest(all=True, reason="what would it do", dry_run=True)
    reply = await admin.RetryDeadLetter(request, timeout=5)
    assert sorted(reply.order_ids) == ["dl-1-0", "dl-2-0", "dl-2-1", "dl-3-0", "dl-3-1", "dl-3-2"]
    assert [p.order_id for p in reply.previews] == list(reply.order_ids)  # one per order, in the same order
    assert {(p.order_id, p.shard_id) for p in reply.previews} == {
        (o, f"shard-{o.split('-')[1]}") for o in reply.order_ids
    }
    assert all(not d.closed for s in cluster.shards.values() for d in s.dead_letters.values())
    # A routed one (not all) is relayed as it came: the shard it reaches sees dry_run and answers its preview.
    for shard in cluster.shards.values():
        shard.add_dead_letter("dl-routed", parked_ns=9)
    one = await admin.RetryDeadLetter(saga_pb2.RetryDeadLetterRequest(order_id="dl-routed", dry_run=True), timeout=5)
    assert [p.order_id for p in one.previews] == ["dl-routed"] and one.previews[0].shard_id in cluster.shards
    assert all(not d.closed for s in cluster.shards.values() for d in s.dead_letters.values())
    for shard in cluster.shards.values():
        del shard.dead_letters["dl-routed"]

    await cluster.shards["shard-3"].stop()
    with pytest.raises(grpc.aio.AioRpcError) as e:
        await admin.RetryDeadLetter(request, timeout=5)
    assert e.value.code() == grpc.StatusCode.UNAVAILABLE
    assert "shard-3" in e.value.details() and "nothing was changed" in e.value.details()


async def test_fan_out_calls_shards_through_the_forwarder(cluster: Cluster) -> None:
    """Pages are fetched by Forwarder.call: counted under the method's name, failures relayed with the shard named."""
    for i in (1, 2):
        (await cluster.add_shard(f"shard-{i}")).add_dead_letter(f"dl-{i}", parked_ns=i)
    addresses = {sid: s.address for sid, s in cluster.shards.items()}
    topology = Topology(1, HashRing(list(addresses), 16), (), addresses, tuple(addresses))
    metrics = RouterMetrics()
    pool = ChannelPool(4 * 1024 * 1024, 0)
    try:
        fanout = FanOut(lambda: topology, Forwarder(pool, metrics), RouterSettings())
        page = await fanout.list_dead_letters(saga_pb2.ListDeadLettersRequest(), IncomingCall((), None))
        assert [d.order_id for d in page.dead_letters] == ["dl-1", "dl-2"] and not page.next_page_token
        for sid in addresses:
            labels = {"method": "ListDeadLetters", "shard": sid}
            assert metrics.registry.get_sample_value("saga_router_forward_seconds_count", labels) == 1

        cluster.shards["shard-2"].failures["ListSagas"] = Failure(grpc.StatusCode.INTERNAL, "disk on fire", times=1)
        with pytest.raises(ShardStatus) as e:
            await fanout.list_sagas(saga_pb2.ListSagasRequest(), IncomingCall((), None))
        assert (e.value.shard_id, e.value.code) == ("shard-2", grpc.StatusCode.INTERNAL)
        assert e.value.details == "ListSagas needs every shard; shard shard-2 did not answer: disk on fire"
        errors = {"method": "ListSagas", "shard": "shard-2", "code": "INTERNAL"}
        assert metrics.registry.get_sample_value("saga_router_forward_errors_total", errors) == 1
    finally:
        await pool.close()
