"""Long-running operations across restarts: one accepted before a stop or a SIGKILL is neither lost, nor finished early,
nor finished twice; its due time counts from its acceptance, whatever happened in between."""

from __future__ import annotations

import asyncio
import sqlite3
from pathlib import Path

from protos.service_stubs.v1.control_pb2 import OrderLedger
from protos.shop.v1 import common_pb2
from service_stubs.store import MIGRATIONS, Store
from tests.helpers.stubs import ShopClient, StubControlClient, StubProcess, get_ledgers, running_stubs

IN_PROGRESS = common_pb2.OPERATION_STATE_IN_PROGRESS
DONE = common_pb2.OPERATION_STATE_DONE
ORDERS = ["o-f", "o-r", "o-n", "o-l"]


def applied(ledgers: dict[str, OrderLedger]) -> dict[str, tuple[int, bool]]:
    """key -> (applied_count, in_progress), over every order."""
    return {k.idempotency_key: (k.applied_count, k.in_progress) for ledger in ledgers.values() for k in ledger.keys}


async def wait_finished(address: str, key: str, timeout_s: float = 60.0) -> dict[str, OrderLedger]:
    """Reads ledgers (StubControl only: nobody asks the services) until `key` is no longer in progress."""
    loop = asyncio.get_running_loop()
    deadline = loop.time() + timeout_s
    while True:
        ledgers = await get_ledgers(address, ORDERS)
        if not applied(ledgers)[key][1]:
            return ledgers
        assert loop.time() < deadline, f"{key} still in progress after {timeout_s} s"
        await asyncio.sleep(0.1)


async def test_an_operation_due_while_the_stubs_were_stopped_finishes_at_start(data_dir: Path) -> None:
    async with running_stubs(data_dir) as stubs, ShopClient(stubs.address) as shop:
        accepted = await shop.charge("o-f", key="ch", token="tok_lro-charge-1s", amount_cents=100)
        assert not accepted.operation.done
    await asyncio.sleep(1.2)  # due now, and nobody was running to finish it
    async with running_stubs(data_dir) as stubs:
        ledgers = await wait_finished(stubs.address, "ch")
        assert ledgers["o-f"].charged_cents == 100
        assert applied(ledgers) == {"ch": (1, False)}
        async with StubControlClient(stubs.address) as control:
            assert (await control.get_operation_stats())["ChargePayment"] == (0, 1, 0)  # accepted by the first one


async def test_operations_survive_sigkill_and_finish_once(tmp_path: Path) -> None:
    with StubProcess(tmp_path / "stubs") as proc:
        async with ShopClient(proc.address) as shop:
            # Long enough to be pending when the SIGKILL lands, even on a slow machine; checked below.
            await shop.charge("o-f", key="ch-f", token="tok_lro-charge-5s", amount_cents=100)
            await shop.charge("o-r", key="ch-r", token="tok_lro-refund-5s", amount_cents=200)
            await shop.compensate("payment", "o-r", key="refund-r", forward_key="ch-r")
            await shop.charge("o-n", key="ch-n", token="tok_lro-charge-never", amount_cents=300)
            await shop.charge("o-l", key="ch-l", token="tok_lro-charge-600s", amount_cents=400)
        before = applied(await get_ledgers(proc.address, ORDERS))
        assert before == {
            "ch-f": (0, True),
            "ch-r": (1, False),
            "refund-r": (0, True),
            "ch-n": (0, True),
            "ch-l": (0, True),
        }
        await asyncio.to_thread(proc.kill)
        await asyncio.to_thread(proc.start)

        async with ShopClient(proc.address) as shop, StubControlClient(proc.address) as control:
            # Not lost, and not early: the 600 s charge is still in progress, the never one too.
            long = await shop.get_operation("payment", "ch-l")
            assert (long.state, long.method, long.poll_after_ms) == (IN_PROGRESS, "ChargePayment", 1_000)
            assert (await shop.get_operation("payment", "ch-n")).state == IN_PROGRESS
            # The 5 s ones finish by themselves: the restart re-armed their timers.
            await wait_finished(proc.address, "ch-f")
            ledgers = await wait_finished(proc.address, "refund-r")
            assert (ledgers["o-f"].charged_cents, ledgers["o-r"].charged_cents) == (100, 200)
            assert ledgers["o-r"].refunded_cents == 200
            stats = await control.get_operation_stats()
            assert (stats["ChargePayment"], stats["RefundPayment"]) == ((0, 1, 0), (0, 1, 0))
            # The never-ending charge is still cancelled by its refund after the restart.
            refund = await shop.compensate("payment", "o-n", key="refund-n", forward_key="ch-n")
            assert refund.tombstoned
            assert (await shop.get_operation("payment", "ch-n")).code == "ABORTED"

        # Killed again once they finished: nothing finishes a second time.
        await asyncio.to_thread(proc.kill)
        await asyncio.to_thread(proc.start)
        async with ShopClient(proc.address) as shop, StubControlClient(proc.address) as control:
            ledgers = await get_ledgers(proc.address, ORDERS)
            assert applied(ledgers) == {
                "ch-f": (1, False),
                "ch-r": (1, False),
                "refund-r": (1, False),
                "ch-n": (0, False),
                "refund-n": (1, False),
                "ch-l": (0, True),
            }
            charged = {order: (ledgers[order].charged_cents, ledgers[order].refunded_cents) for order in ORDERS}
            assert charged == {"o-f": (100, 0), "o-r": (200, 200), "o-n": (0, 0), "o-l": (0, 0)}
            await asyncio.sleep(0.5)  # a timer wrongly re-armed for a finished one would have fired by now
            assert await control.get_operation_stats() == {}
            assert (await shop.get_operation("payment", "ch-f")).state == DONE


def test_a_data_dir_from_before_operations_is_migrated(tmp_path: Path) -> None:
    path = tmp_path / "payment.db"
    conn = sqlite3.connect(path)
    conn.executescript(MIGRATIONS[0])
    conn.execute("CREATE TABLE schema_version (version INTEGER NOT NULL)")
    conn.execute("INSERT INTO schema_version (version) VALUES (1)")
    conn.execute(
        "INSERT INTO idempotency_keys VALUES ('k', 'ChargePayment', 'o-1', 'd', 'OK', '', x'', 1, 0, '{\"cents\": 5}',"
        " NULL, 0)"
    )
    conn.commit()
    conn.close()
    store, loaded = Store.open(path)
    store.close()
    [record] = loaded.records
    assert (record.key, record.applied_count, dict(record.effect)) == ("k", 1, {"cents": 5})
    assert not record.in_progress and record.lro is None and record.undo_lro is None and record.request is None
