"""Saga ids derived from the order (coordinator.sealing.Sealer.saga_id): a saga re-created for the same request after
its journal was lost sends the same idempotency keys, so the services do nothing twice."""

from __future__ import annotations

import shutil
from pathlib import Path

from coordinator.sealing import Sealer, new_key_ring, read_key_file, rotate_key_file, write_key_file
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
