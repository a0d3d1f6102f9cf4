"""Saga ids derived from the order (coordinator.security.sealing.Sealer.saga_id): a saga re-created for the same request
after its journal was lost sends the same idempotency keys, so the services do nothing twice."""

from __future__ import annotations

import asyncio
import os
import shutil
from pathlib import Path

import grpc
import pytest

from coordinator.config import Retention
from coordinator.security.sealing import Sealer, new_key_ring, read_key_file, rotate_key_file, write_key_file
from protos.saga.v1 import saga_pb2
from tests.helpers.coordinator import SagaClient, place_request, running_shard, shard_config
from tests.helpers.stubs import get_ledgers, running_stubs


async def test_a_saga_recreated_after_its_journal_was_lost_repeats_nothing(tmp_path: Path) -> None:
    async with running_stubs(tmp_path / "stubs") as stubs:
        cfg = shard_config(tmp_path / "journal", stubs.address)
        (tmp_path / "journal").mkdir()
        async with running_shard(cfg) as app, SagaClient(app.address) as client:
            first = await client.place(place_request("lost-1"))
            assert first.status == saga_pb2.SUCCESS
        # The disk is gone: journal and WAL (the key stays: it lives apart, in a Secret or a key file's backup).
        shutil.rmtree(tmp_path / "journal")
        (tmp_path / "journal").mkdir()
        async with running_shard(cfg) as app, SagaClient(app.address) as client:
            again = await client.place(place_request("lost-1"))
            other = await client.place(place_request("lost-2"))
            changed = await client.place(place_request("lost-3", amount_cents=1))
            changed_too = await client.place(place_request("lost-3b", amount_cents=1))
        assert again.saga_id == first.saga_id and again.status == saga_pb2.SUCCESS
        assert len({first.saga_id, other.saga_id, changed.saga_id, changed_too.saga_id}) == 4
        ledger = (await get_ledgers(stubs.address, ["lost-1"]))["lost-1"]
        assert ledger.charged_cents == 2_500 and ledger.refunded_cents == 0  # charged once, not twice
        keys = {k.idempotency_key: k.applied_count for k in ledger.keys}
        assert keys and all(n == 1 for n in keys.values()), keys
        assert all(key.startswith(first.saga_id + "/") for key in keys)


def test_the_id_survives_key_rotation_and_reveals_nothing(tmp_path: Path) -> None:
    path = str(tmp_path / "shard.keys")
    write_key_file(new_key_ring(path))
    payload_hash = Sealer(read_key_file(path)).payload_hash(b"order lost-1 with card tok_ok")
    before = Sealer(read_key_file(path)).saga_id("lost-1", payload_hash)
    rotate_key_file(path)
    assert Sealer(read_key_file(path)).saga_id("lost-1", payload_hash) == before
    assert len(before) == 32 and "tok_ok" not in before and "lost-1" not in before
    other_shard = str(tmp_path / "other.keys")
    write_key_file(new_key_ring(other_shard))
    assert Sealer(read_key_file(other_shard)).saga_id("lost-1", payload_hash) != before  # keyed: not guessable


async def test_a_retry_after_the_dedup_window_re_creates_the_saga_under_its_id(tmp_path: Path) -> None:
    """What README "Retention" says of a retry after dedup_after_s, checked on real stubs with a key file of the
    shard's own (as `make run` makes it). The shard has forgotten the order: the same request re-creates its saga
    under the same saga id, so every call repeats its idempotency key and the services answer what they did the first
    time (nothing charged twice, a decline stays a decline). Another payload, or the same request on another shard
    (its own hash key: another saga id; where a re-shard sends a forgotten order), is a new saga with new keys: only
    the order service's own refusal of an order id it already has (FAILED_PRECONDITION) stops it before the charge."""
    async with running_stubs(tmp_path / "stubs") as stubs:
        retention = Retention(finished_after_s=1, dedup_after_s=1, interval_s=0)
        for name in ("a", "b"):
            (tmp_path / name).mkdir()
        cfg = shard_config(tmp_path / "a", stubs.address, journal_key="", retention=retention)
        async with running_shard(cfg) as app, SagaClient(app.address) as client:
            assert os.path.exists(cfg.journal_path + ".keys")  # noqa: ASYNC240 - created at the shard's start
            first = await client.place(place_request("late-1"))
            declined = await client.place(place_request("late-2", token="tok_declined"))
            changed = await client.place(place_request("late-3"))
            await asyncio.sleep(1.2)
            report = await app.shard.upkeep.run_pass()
            assert (report.removed, report.forgotten) == (3, 3)
            with pytest.raises(grpc.aio.AioRpcError) as gone:
                await client.get("late-1")
            assert gone.value.code() is grpc.StatusCode.NOT_FOUND
            again = await client.place(place_request("late-1"))
            declined_again = await client.place(place_request("late-2", token="tok_declined"))
            changed_again = await client.place(place_request("late-3", amount_cents=1))
        elsewhere_cfg = shard_config(tmp_path / "b", stubs.address, shard_id="shard-b", journal_key="")
        async with running_shard(elsewhere_cfg) as app, SagaClient(app.address) as client:
            elsewhere = await client.place(place_request("late-1"))
        ledgers = await get_ledgers(stubs.address, ["late-1", "late-2", "late-3"])

    assert (again.saga_id, again.status) == (first.saga_id, saga_pb2.SUCCESS)
    assert (declined_again.saga_id, declined_again.status) == (declined.saga_id, saga_pb2.FAILED)
    assert "declined" in declined_again.error_message
    # A new saga id means new idempotency keys: the services cannot tell it from a new order. The order service's
    # refusal of an order id it has (a rule of the stubs' Order service, and one a real one must keep) fails the saga
    # at its first step, before anything is reserved or charged.
    for new in (changed_again, elsewhere):
        assert new.saga_id not in (changed.saga_id, first.saga_id) and new.status == saga_pb2.FAILED
        assert "create_order failed: FAILED_PRECONDITION" in new.error_message and "already exists" in new.error_message

    def applied(order_id: str) -> dict[str, int]:
        return {k.idempotency_key: k.applied_count for k in ledgers[order_id].keys}

    assert ledgers["late-1"].charged_cents == 2_500 and ledgers["late-1"].refunded_cents == 0  # once
    mine = {k: n for k, n in applied("late-1").items() if k.startswith(first.saga_id + "/")}
    assert len(mine) == 4 and all(n == 1 for n in mine.values()), mine
    assert ledgers["late-2"].charged_cents == 0
    assert ledgers["late-3"].charged_cents == 2_500 and ledgers["late-3"].refunded_cents == 0


async def test_a_key_file_lost_with_its_journal_gives_retried_orders_new_ids(tmp_path: Path) -> None:
    """What README says when the key file goes with the journal (under `make run` both sit in .data/): the shard starts
    afresh with a new hash key, so a retried order gets a new saga id and new idempotency keys. The services cannot
    tell it from a new order; the Order service's refusal of an order id it has fails it before any charge, and the
    client hears FAILED for an order that went through."""
    async with running_stubs(tmp_path / "stubs") as stubs:
        cfg = shard_config(tmp_path / "journal", stubs.address, journal_key="")
        (tmp_path / "journal").mkdir()
        async with running_shard(cfg) as app, SagaClient(app.address) as client:
            first = await client.place(place_request("gone-1"))
        shutil.rmtree(tmp_path / "journal")  # the disk, with the key file on it, and no backup of either
        (tmp_path / "journal").mkdir()
        async with running_shard(cfg) as app, SagaClient(app.address) as client:
            again = await client.place(place_request("gone-1"))
        ledger = (await get_ledgers(stubs.address, ["gone-1"]))["gone-1"]
    assert first.status == saga_pb2.SUCCESS and again.saga_id != first.saga_id
    assert again.status == saga_pb2.FAILED and "already exists" in again.error_message
    assert ledger.charged_cents == 2_500 and ledger.refunded_cents == 0
    assert {k.idempotency_key.split("/")[0] for k in ledger.keys} == {first.saga_id, again.saga_id}
