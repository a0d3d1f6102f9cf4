"""Sealing payment details at rest (issue 12): the AEAD blob format, the key file, rotation and re-sealing, journals
written before key files, and what a start refuses. Real SQLite files, the in-process shard of conftest.Harness."""

from __future__ import annotations

import asyncio
import base64
import os
import shutil
from pathlib import Path

import grpc
import pytest

from common.definitions.model import Values
from coordinator.config import Limits
from coordinator.saga.errors import CallResult, PayloadMismatch
from coordinator.saga.model import Action, SagaState
from coordinator.security.sealing import (
    LEGACY,
    KeyFileError,
    KeyRing,
    Sealer,
    SealError,
    blob_kid,
    key_file_path,
    key_usage,
    new_key_ring,
    read_key_file,
    reseal,
    rotate_key_file,
    write_key_file,
)
from tests.helpers.order_flow import PROCESS_PAYMENT, RESERVE_INVENTORY, SCHEDULE_SHIPMENT

from .conftest import Harness, order

F, C = Action.FORWARD, Action.COMPENSATE
FIXTURES = Path(__file__).parent / "fixtures"
TERMINAL = frozenset({SagaState.SUCCEEDED, SagaState.FAILED, SagaState.RESOLVED, SagaState.DEAD_LETTERED})


def ring(tmp_path: Path, name: str = "keys") -> KeyRing:
    r = new_key_ring(str(tmp_path / name))
    write_key_file(r)
    return r


async def drive_until(h: Harness, done: object, limit_s: float = 300) -> None:
    """Advances the fake clock until done() holds."""
    waited = 0.0
    await h.quiesce()
    while not await done():  # type: ignore[operator]
        await h.clock.advance(0.05)
        waited += 0.05
        assert waited < limit_s, "sagas did not settle"


def record_payment_tokens(h: Harness) -> dict[str, str]:
    """The payment token each order's payment step was sent (opened from the journal by the shard)."""
    seen: dict[str, str] = {}

    def script(p: Values, n: int) -> CallResult:
        seen[p.key] = p.input.payment_info.payment_token
        return CallResult(grpc.StatusCode.OK)

    h.caller.script(PROCESS_PAYMENT, F, script)
    return seen


# ---- the blob ---------------------------------------------------------------------------------------------------


def test_round_trip_tamper_and_wrong_saga(tmp_path: Path) -> None:
    s = Sealer(ring(tmp_path))
    blob = s.seal("saga-a", b"tok_round_trip|2599|EUR")
    assert b"tok_round_trip" not in blob and s.open("saga-a", blob) == b"tok_round_trip|2599|EUR"
    assert blob.startswith(b"SJv2\x02k1") and blob_kid(blob) == "k1"
    assert s.seal("saga-a", b"same") != s.seal("saga-a", b"same")  # a fresh nonce each time
    for i in range(len(blob)):
        tampered = blob[:i] + bytes([blob[i] ^ 0x01]) + blob[i + 1 :]
        with pytest.raises(SealError):
            s.open("saga-a", tampered)
    with pytest.raises(SealError):
        s.open("saga-a", blob[:-1])
    # Moved into another saga's row, it does not open: the saga id is associated data.
    with pytest.raises(SealError) as e:
        s.open("saga-b", blob)
    assert "tok_" not in str(e.value)


def test_the_key_id_selects_the_key(tmp_path: Path) -> None:
    path = str(tmp_path / "keys")
    write_key_file(new_key_ring(path))
    old = Sealer(read_key_file(path))
    blob_k1 = old.seal("s", b"one")
    rotated = rotate_key_file(path)
    assert [kid for kid, _ in rotated.seal_keys] == ["k1", "k2"] and rotated.hash_key == old.ring.hash_key
    new = Sealer(read_key_file(path))
    blob_k2 = new.seal("s", b"two")
    assert blob_kid(blob_k2) == "k2"
    assert new.open("s", blob_k1) == b"one" and new.open("s", blob_k2) == b"two"
    assert new.needs_reseal(blob_k1) and not new.needs_reseal(blob_k2)
    # Another key under the same id does not open it.
    k1, _ = rotated.seal_keys
    swapped = KeyRing(path, rotated.hash_key, ((k1[0], os.urandom(32)), rotated.seal_keys[1]))
    with pytest.raises(SealError):
        Sealer(swapped).open("s", blob_k1)


def test_payload_hash_survives_rotation(tmp_path: Path) -> None:
    path = str(tmp_path / "keys")
    write_key_file(new_key_ring(path))
    before = Sealer(read_key_file(path)).payload_hash(b"order")
    rotate_key_file(path)
    rotate_key_file(path)
    assert Sealer(read_key_file(path)).payload_hash(b"order") == before


# ---- the key file -----------------------------------------------------------------------------------------------


def test_key_file_is_private_and_checked(tmp_path: Path) -> None:
    r = ring(tmp_path)
    assert os.stat(r.path).st_mode & 0o777 == 0o600
    for mode in (0o400, 0o440):  # 0440: how Kubernetes hands a Secret to a non-root pod (its fsGroup)
        os.chmod(r.path, mode)
        assert read_key_file(r.path) == r
    for mode in (0o660, 0o644, 0o604, 0o444):
        os.chmod(r.path, mode)
        with pytest.raises(KeyFileError, match=rf"key file {r.path} has mode {mode:04o}"):
            read_key_file(r.path)
    os.chmod(r.path, 0o600)
    key = base64.b64encode(os.urandom(32)).decode()
    for text, message in [
        (f"k1={key}\n", "needs a hash= entry"),
        (f"hash={key}\n", "at least one sealing key"),
        (f"hash={key}\nk1={key[:-4]}\n", "line 2: k1 is not the base64 of 32 bytes"),
        (f"hash={key}\nk1 {key}\n", "line 2: expected <name>=<base64 key>"),
        (f"hash={key}\nk1={key}\nk1={key}\n", "line 3: key id k1 appears twice"),
        (f"hash={key}\nk/1={key}\n", "line 2"),
    ]:
        Path(r.path).write_text(text)
        with pytest.raises(KeyFileError, match=message) as e:
            read_key_file(r.path)
        assert key[:8] not in str(e.value)  # never key material in a message
    with pytest.raises(KeyFileError, match="does not exist"):
        read_key_file(str(tmp_path / "nope"))


async def test_new_journal_gets_a_private_key_file(tmp_path: Path) -> None:
    h = Harness(tmp_path)
    await h.start()
    try:
        path = key_file_path(h.cfg)
        assert path == h.path + ".keys" and os.stat(path).st_mode & 0o777 == 0o600
        await h.shard.place_order(order())
        await h.restart()  # the same key file is read again
        assert (await h.shard.place_order(order())).saga.state is SagaState.SUCCEEDED
    finally:
        await h.stop()


async def test_start_refuses_missing_open_or_foreign_key_file(tmp_path: Path) -> None:
    h = Harness(tmp_path)
    await h.start()
    h.caller.hang(PROCESS_PAYMENT, F)
    await h.shard.place_order(order("o-run", no_wait=True))
    await h.stop()
    path = h.path + ".keys"
    saved = file_bytes(path)

    os.chmod(path, 0o644)
    with pytest.raises(KeyFileError, match=f"key file {path} has mode 0644"):
        await h.start()
    await h.stop()
    os.chmod(path, 0o600)

    os.remove(path)
    with pytest.raises(KeyFileError, match=f"key file {path} does not exist, and journal {h.path} holds 1 sealed"):
        await h.start()
    await h.stop()
    assert not os.path.lexists(path)  # noqa: ASYNC240 - not silently replaced by a fresh key

    # A fresh key file in its place: refused (its hash key would make every retry look like another payload).
    write_key_file(new_key_ring(path))
    with pytest.raises(KeyFileError, match="holds another hash key than journal"):
        await h.start()
    await h.stop()

    # The right hash key but the sealing key gone: refused, naming the key the unfinished saga needs.
    good = read_key_file_from_bytes(tmp_path, saved)
    write_key_file(KeyRing(path, good.hash_key, (("k9", os.urandom(32)),)))
    with pytest.raises(KeyFileError, match="lacks key\\(s\\) k1, under which unfinished sagas"):
        await h.start()
    await h.stop()

    # A configured key file is never created, even for an empty journal.
    (tmp_path / "other").mkdir()
    other = Harness(tmp_path / "other")
    with pytest.raises(KeyFileError, match="does not exist \\(it is configured"):
        await other.start(journal_key_file=str(tmp_path / "missing.keys"))
    await other.stop()

    write_key_file(read_key_file_from_bytes(tmp_path, saved, path))
    h.caller.scripts.clear()
    await h.start()
    try:
        await drive_until(h, lambda: _all_terminal(h))
        assert (await h.journal.get_by_order("o-run")).state is SagaState.SUCCEEDED  # type: ignore[union-attr]
    finally:
        await h.stop()


def read_key_file_from_bytes(tmp_path: Path, data: bytes, as_path: str = "") -> KeyRing:
    p = tmp_path / "copy.keys"
    p.write_bytes(data)
    p.chmod(0o600)
    r = read_key_file(str(p))
    return KeyRing(as_path or r.path, r.hash_key, r.seal_keys)


def file_bytes(path: str | Path) -> bytes:
    return Path(path).read_bytes()


async def _all_terminal(h: Harness) -> bool:
    counts = await h.journal.state_counts()  # type: ignore[union-attr]
    return all(state in TERMINAL for state, n in counts.items() if n)


# ---- journals written before key files ----------------------------------------------------------------------------


def legacy_journal(tmp_path: Path) -> Harness:
    """A copy of a journal written by the build before key files (fixtures/README.md says how)."""
    h = Harness(tmp_path)
    shutil.copy(FIXTURES / "legacy_v2.db", h.path)
    shutil.copy(FIXTURES / "legacy_v2.db.key", h.path + ".key")
    os.chmod(h.path + ".key", 0o600)
    return h


async def test_legacy_journal_opens_and_is_resealed_at_start(tmp_path: Path) -> None:
    h = legacy_journal(tmp_path)
    seen = record_payment_tokens(h)
    await h.start()
    try:
        # Created beside the journal, its hash key derived from the legacy secret; every blob re-sealed under k1.
        assert read_key_file(h.path + ".keys").newest == "k1"
        usage = await key_usage(h.journal)  # type: ignore[arg-type]
        assert usage.all == {"k1": 7} and LEGACY not in usage.all
        # The running sagas resume with the payment details the old build sealed.
        await drive_until(h, lambda: _settled(h, ["running-0", "running-1"]))
        assert seen == {"running-0": "tok_legacy_running_0", "running-1": "tok_legacy_running_1"}
        # The dead-lettered one opens too when an operator retries it.
        await h.shard.retry_dead_letter("parked-0", "alice", "refund fixed")
        await drive_until(h, lambda: _settled(h, ["parked-0"]))
        assert (await h.journal.get_by_order("parked-0")).state is SagaState.FAILED  # type: ignore[union-attr]
        # Stored payload hashes still match: a client retry of an old order is the same order, not another payload.
        placed = await h.shard.place_order(order("ok-1", token="tok_legacy_ok_1"))
        assert placed.saga.state is SagaState.SUCCEEDED
        with pytest.raises(PayloadMismatch):
            await h.shard.place_order(order("ok-1", token="tok_other"))
        # The legacy secret is no longer needed once nothing is sealed the old way.
        await h.stop()
        os.remove(h.path + ".key")
        await h.start()
        assert (await h.shard.place_order(order("ok-2", token="tok_legacy_ok_2"))).saga.state is SagaState.SUCCEEDED
    finally:
        await h.stop()


async def test_legacy_journal_without_its_secret_is_refused(tmp_path: Path) -> None:
    h = legacy_journal(tmp_path)
    os.remove(h.path + ".key")
    with pytest.raises(KeyFileError, match=f"key file {h.path}.keys does not exist, and journal {h.path} holds 7"):
        await h.start()
    await h.stop()


async def _settled(h: Harness, order_ids: list[str]) -> bool:
    for oid in order_ids:
        rec = await h.journal.get_by_order(oid, with_events=False)  # type: ignore[union-attr]
        if rec is None or rec.state not in TERMINAL:
            return False
    return True


# ---- rotation -----------------------------------------------------------------------------------------------------


async def test_rotation_then_reseal_leaves_no_blob_under_the_old_key(tmp_path: Path) -> None:
    h = Harness(tmp_path)
    await h.start()
    try:
        for i in range(5):
            await h.shard.place_order(order(f"done-{i}"))
        h.caller.fail_with(SCHEDULE_SHIPMENT, F, grpc.StatusCode.FAILED_PRECONDITION)
        h.caller.fail_with(PROCESS_PAYMENT, C, grpc.StatusCode.INTERNAL)
        parked = asyncio.create_task(h.shard.place_order(order("parked", token="tok_parked")))
        await drive_until(h, lambda: _settled(h, ["parked"]))
        await parked
        h.caller.scripts.clear()
        h.caller.hang(RESERVE_INVENTORY, F)
        for i in range(5):
            await h.shard.place_order(order(f"run-{i}", no_wait=True))
        path = key_file_path(h.cfg)
        assert (await key_usage(h.journal)).all == {"k1": 11}  # type: ignore[arg-type]

        rotate_key_file(path)
        # Re-sealed while the shard runs (as `keys reseal` would from another process): every state, k2 only.
        n = await reseal(h.journal, Sealer(read_key_file(path)))  # type: ignore[arg-type]
        usage = await key_usage(h.journal)  # type: ignore[arg-type]
        assert n == 11 and usage.all == {"k2": 11} and usage.unfinished == {"k2": 6}
        assert await reseal(h.journal, Sealer(read_key_file(path))) == 0  # type: ignore[arg-type]

        # The running shard loaded only k1: a dead letter retried now opens a k2 blob, which makes the shard re-read
        # its key file (and seal under k2 from then on).
        h.caller.scripts.clear()
        seen = record_payment_tokens(h)
        await h.shard.retry_dead_letter("parked", "alice", "refund fixed")
        await drive_until(h, lambda: _settled(h, ["parked", *(f"run-{i}" for i in range(5))]))
        await h.shard.place_order(order("after", token="tok_after"))
        assert seen["after"] == "tok_after" and "parked" not in seen  # parked only compensates
        rec = await h.journal.get_by_order("after", with_events=False)  # type: ignore[union-attr]
        assert blob_kid(rec.payment_sealed) == "k2"  # type: ignore[union-attr]

        # The old key dropped from the file: the journal needs nothing from it, a start accepts the file.
        r = read_key_file(path)
        write_key_file(KeyRing(path, r.hash_key, r.seal_keys[1:]))
        await h.restart()
        counts = await h.journal.state_counts()  # type: ignore[union-attr]
        assert counts == {SagaState.SUCCEEDED: 11, SagaState.FAILED: 1}, counts
    finally:
        await h.stop()


async def test_rotation_with_200_sagas_in_flight_across_a_restart(tmp_path: Path) -> None:
    h = Harness(tmp_path)
    await h.start(limits=Limits(max_in_flight=1_000), default_ttl_ms=3_600_000)
    try:
        # Half wait on the payment step, half (paid already) on the shipment: 200 in flight, their blobs under k1.
        orders = {f"o-{i:03d}": f"tok_inflight_{i:03d}" for i in range(200)}
        at_payment = {oid for i, oid in enumerate(orders) if i % 2}
        seen: dict[str, str] = {}

        def pay(p: Values, n: int) -> CallResult | None:
            seen.setdefault(p.key, p.input.payment_info.payment_token)
            return None if p.key in at_payment else CallResult(grpc.StatusCode.OK)

        h.caller.script(PROCESS_PAYMENT, F, pay)
        h.caller.hang(SCHEDULE_SHIPMENT, F)
        for oid, token in orders.items():
            await h.shard.place_order(order(oid, token=token, no_wait=True))
        await h.quiesce()
        assert h.shard.in_flight == 200

        path = key_file_path(h.cfg)
        rotate_key_file(path)
        await h.restart()  # the shard now seals under k2; its 200 resumed sagas open k1 blobs
        assert h.shard.in_flight == 200
        await h.shard.place_order(order("o-new", token="tok_new", no_wait=True))
        await h.quiesce()  # o-new paid and waiting at its shipment, like the 100 paid before it
        assert (await key_usage(h.journal)).all == {"k1": 200, "k2": 1}  # type: ignore[arg-type]
        resealed = await reseal(h.journal, Sealer(read_key_file(path)))  # type: ignore[arg-type]
        assert resealed == 200 and (await key_usage(h.journal)).all == {"k2": 201}  # type: ignore[arg-type]

        await h.restart()  # and once more, on re-sealed blobs only
        waited_at_payment = set(at_payment)
        at_payment.clear()
        seen.clear()
        h.caller.scripts.pop((SCHEDULE_SHIPMENT, F))
        await drive_until(h, lambda: _all_terminal(h))
        counts = await h.journal.state_counts()  # type: ignore[union-attr]
        assert counts == {SagaState.SUCCEEDED: 201}, counts
        # The payments still open after the rotation and both restarts carried their own tokens, opened from k2 blobs;
        # every payment and shipment took effect once.
        expected = {**orders, "o-new": "tok_new"}
        assert set(seen) == waited_at_payment and all(seen[oid] == expected[oid] for oid in seen)
        for oid in expected:
            assert h.caller.net[(oid, PROCESS_PAYMENT)] == 1
            assert h.caller.net[(oid, SCHEDULE_SHIPMENT)] == 1
    finally:
        await h.stop()


# ---- nothing in clear -----------------------------------------------------------------------------------------------


async def test_journal_bytes_hold_no_payment_token_after_100_sagas(tmp_path: Path) -> None:
    h = Harness(tmp_path)
    await h.start(limits=Limits(max_in_flight=200))
    try:
        for i in range(100):
            if i == 80:
                h.caller.hang(SCHEDULE_SHIPMENT, F)  # the last 20 stay in flight: their rows are in the WAL
            await h.shard.place_order(order(f"o-{i}", token=f"tok_secret_{i:03d}", no_wait=i >= 80))
        await h.quiesce()
        files = [Path(h.path), Path(h.path + "-wal")]
        assert files[1].stat().st_size > 0
        for f in files:
            data = file_bytes(f)
            assert b"tok_secret" not in data and b"tok_" not in data, f
        assert (await key_usage(h.journal)).all == {"k1": 100}  # type: ignore[arg-type]
    finally:
        await h.stop()
    assert b"tok_" not in file_bytes(h.path)


async def test_a_lost_key_file_is_not_replaced_even_when_no_sealed_blob_is_left(tmp_path: Path) -> None:
    """A journal whose sagas retention removed (or that never took an order) holds no sealed blob, but its fingerprint
    says a key file wrote it: a fresh key would give every retried order another saga id, so other idempotency keys
    (issue 6). The start is refused and no key file is created; the backed-up one starts it."""
    h = Harness(tmp_path)
    await h.start()
    await h.stop()
    path = h.path + ".keys"
    saved = file_bytes(path)
    os.remove(path)
    refusal = f"key file {path} does not exist, and journal {h.path} was written with one"
    with pytest.raises(KeyFileError, match=refusal):
        await h.start()
    await h.stop()
    assert not os.path.lexists(path)  # noqa: ASYNC240 - not silently replaced by a fresh key
    write_key_file(read_key_file_from_bytes(tmp_path, saved, as_path=path))  # the backup, put back
    await h.start()
    await h.stop()
