"""The Loyalty stub end to end on a real server: awards and revokes, its business rules, its ledger and invariants,
durability, faults and long-running operations. The cross-service suites (test_tombstones, test_operations) run it
too."""

from __future__ import annotations

import asyncio
import urllib.request
from pathlib import Path

import grpc
import pytest
from google.rpc import error_details_pb2
from grpc_status import rpc_status

from protos.saga.v1 import saga_pb2
from protos.service_stubs.v1.control_pb2 import OrderLedger, PointsLedger
from protos.shop.v1 import common_pb2, loyalty_pb2
from service_stubs import MAX_POINTS, TOMBSTONED_MESSAGE, StubServer
from service_stubs.invariants import ledger_violations
from tests.helpers.stubs import ShopClient, StubControlClient, StubProcess, fault_rule, get_ledgers, running_stubs
from tests.service_stubs.conftest import rpc_error

DONE = common_pb2.OPERATION_STATE_DONE
IN_PROGRESS = common_pb2.OPERATION_STATE_IN_PROGRESS
NOT_FOUND = common_pb2.OPERATION_STATE_NOT_FOUND


def points(ledger: OrderLedger) -> dict[str, tuple[int, int, int]]:
    """user id -> (awarded, revoked, balance)"""
    return {p.user_id: (p.awarded, p.revoked, p.balance) for p in ledger.points}


async def test_award_credits_the_user_and_the_ledger_shows_it(shop: ShopClient, control: StubControlClient) -> None:
    first = await shop.award("o-1", key="a1", user_id="u-ann", points=120)
    assert first.award_id.startswith("pts_") and first.balance == 120 and not first.HasField("operation")
    second = await shop.award("o-2", key="a2", user_id="u-ann", points=30)
    assert second.balance == 150 and second.award_id != first.award_id

    ledger = await control.get_ledger("o-1")
    assert points(ledger) == {"u-ann": (120, 0, 150)}  # the balance counts every order of the user
    assert [(k.service, k.method, k.applied_count, k.code) for k in ledger.keys] == [
        ("loyalty", "AwardPoints", 1, "OK")
    ]
    # Only the saga's own steps are missing from this order: nothing is wrong with its points.
    assert not [v for v in ledger_violations("o-1", saga_pb2.SUCCESS, ledger) if "u-ann" in v]


async def test_a_replay_returns_the_first_answer_and_credits_nothing(
    shop: ShopClient, control: StubControlClient
) -> None:
    first = await shop.award("o-1", key="a1", points=500)
    await shop.award("o-2", key="a2", points=7)  # the balance moves on meanwhile
    replies = await asyncio.gather(*(shop.award("o-1", key="a1", points=500) for _ in range(20)))
    assert all(reply == first for reply in replies)  # the same award id and the same balance as the first answer
    ledgers = await control.get_ledgers(["o-1", "o-2"])
    assert points(ledgers["o-1"]) == {"u-1": (500, 0, 507)}
    assert [k.applied_count for k in ledgers["o-1"].keys] == [1]


async def test_same_key_with_another_request_is_already_exists(shop: ShopClient, control: StubControlClient) -> None:
    await shop.award("o-1", key="a1", points=10)
    await rpc_error(shop.award("o-1", key="a1", points=11), grpc.StatusCode.ALREADY_EXISTS)
    await rpc_error(shop.award("o-1", key="a1", user_id="u-2", points=10), grpc.StatusCode.ALREADY_EXISTS)
    # The compensation method shares the service's key space.
    await rpc_error(shop.compensate("loyalty", "o-1", key="a1", forward_key="x"), grpc.StatusCode.ALREADY_EXISTS)
    assert points(await control.get_ledger("o-1")) == {"u-1": (10, 0, 10)}


async def test_revoke_takes_back_exactly_what_its_award_credited(shop: ShopClient, control: StubControlClient) -> None:
    await shop.award("o-keep", key="keep", points=40)
    await shop.award("o-1", key="a1", points=260)
    reply = await shop.compensate("loyalty", "o-1", key="r1", forward_key="a1")
    assert reply.undone and not reply.tombstoned
    # Its retry and a second revoke under another key: undone already, nothing more taken.
    assert await shop.compensate("loyalty", "o-1", key="r1", forward_key="a1") == reply
    assert (await shop.compensate("loyalty", "o-1", key="r2", forward_key="a1")).undone

    ledger = await control.get_ledger("o-1")
    assert points(ledger) == {"u-1": (260, 260, 40)}
    assert {k.idempotency_key: k.applied_count for k in ledger.keys} == {"a1": 1, "r1": 1, "r2": 0}
    assert ledger_violations("o-1", saga_pb2.FAILED, ledger) == []
    assert (await shop.award("o-3", key="a3", points=1)).balance == 41


async def test_revoke_before_award_tombstones_and_the_late_award_is_aborted(
    shop: ShopClient, control: StubControlClient
) -> None:
    reply = await shop.compensate("loyalty", "o-late", key="rev", forward_key="award")
    assert reply.tombstoned and not reply.undone
    for _ in range(2):  # the late award and its retry
        error = await rpc_error(shop.award("o-late", key="award", points=99), grpc.StatusCode.ABORTED)
        assert error.details() == TOMBSTONED_MESSAGE
    ledger = await control.get_ledger("o-late")
    assert points(ledger) == {}
    assert {k.idempotency_key: (k.applied_count, k.tombstoned, k.code) for k in ledger.keys} == {
        "rev": (1, False, "OK"),
        "award": (0, True, "ABORTED"),
    }
    assert (await shop.award("o-next", key="next", points=1)).balance == 1  # nothing was credited


async def test_a_banned_user_is_refused_and_a_replay_says_the_same(
    shop: ShopClient, control: StubControlClient
) -> None:
    error = await rpc_error(shop.award("o-1", key="a1", user_id="banned-mallory"), grpc.StatusCode.FAILED_PRECONDITION)
    again = await rpc_error(shop.award("o-1", key="a1", user_id="banned-mallory"), grpc.StatusCode.FAILED_PRECONDITION)
    assert error.details() == again.details() == "user banned-mallory may not collect loyalty points"
    ledger = await control.get_ledger("o-1")
    assert points(ledger) == {}
    assert [(k.applied_count, k.code) for k in ledger.keys] == [(0, "FAILED_PRECONDITION")]
    # Its revoke tombstones the key and keeps the recorded rejection.
    assert (await shop.compensate("loyalty", "o-1", key="r1", forward_key="a1")).tombstoned
    await rpc_error(shop.award("o-1", key="a1", user_id="banned-mallory"), grpc.StatusCode.FAILED_PRECONDITION)


@pytest.mark.parametrize("value", [0, -1, MAX_POINTS + 1], ids=["zero", "negative", "over 10^12"])
async def test_points_out_of_range_are_invalid_argument(
    shop: ShopClient, control: StubControlClient, value: int
) -> None:
    error = await rpc_error(shop.award("o-1", key="a1", points=value), grpc.StatusCode.INVALID_ARGUMENT)
    status = rpc_status.from_call(error)
    assert status is not None
    bad_request = error_details_pb2.BadRequest()
    assert status.details[0].Unpack(bad_request)
    assert [violation.field for violation in bad_request.field_violations] == ["points"]
    assert not (await control.get_ledger("o-1")).keys  # nothing recorded: the key is still free
    assert (await shop.award("o-1", key="a1", points=MAX_POINTS)).balance == MAX_POINTS


async def test_empty_ids_are_invalid_argument(shop: ShopClient) -> None:
    for call, field in [(shop.award("", key="k"), "order_id"), (shop.award("o", key="k", user_id=""), "user_id")]:
        error = await rpc_error(call, grpc.StatusCode.INVALID_ARGUMENT)
        assert field in (error.details() or "")


async def make_history(address: str) -> loyalty_pb2.AwardPointsResponse:
    async with ShopClient(address) as shop:
        kept = await shop.award("o-kept", key="kept", user_id="u-d", points=70)
        await shop.award("o-revoked", key="gone", user_id="u-d", points=5)
        await shop.compensate("loyalty", "o-revoked", key="gone-rev", forward_key="gone")
        await shop.compensate("loyalty", "o-tomb", key="tomb-rev", forward_key="tomb")
        await shop.award("o-later", key="later", user_id="u-d", points=3)
    return kept


async def check_history(address: str, kept: loyalty_pb2.AwardPointsResponse) -> None:
    async with ShopClient(address) as shop:
        assert await shop.award("o-kept", key="kept", user_id="u-d", points=70) == kept
        await rpc_error(shop.award("o-kept", key="kept", user_id="u-d", points=71), grpc.StatusCode.ALREADY_EXISTS)
        await rpc_error(shop.award("o-tomb", key="tomb", user_id="u-d", points=1), grpc.StatusCode.ABORTED)
        # The balance came back from the records: 70 + 3, the revoked 5 not counted.
        assert (await shop.award("o-new", key="new", user_id="u-d", points=1)).balance == 74
        assert (await shop.compensate("loyalty", "o-later", key="later-rev", forward_key="later")).undone
    ledgers = await get_ledgers(address, ["o-kept", "o-revoked", "o-later"])
    assert points(ledgers["o-kept"]) == {"u-d": (70, 0, 71)}
    assert points(ledgers["o-revoked"]) == {"u-d": (5, 5, 71)}
    assert points(ledgers["o-later"]) == {"u-d": (3, 3, 71)}


async def test_points_survive_a_stop_and_start(data_dir: Path) -> None:
    async with running_stubs(data_dir) as stubs:
        kept = await make_history(stubs.address)
    async with running_stubs(data_dir) as stubs:
        await check_history(stubs.address, kept)


async def test_points_survive_sigkill_of_the_process(tmp_path: Path) -> None:
    with StubProcess(tmp_path / "stubs", services=["loyalty", "control"]) as proc:
        kept = await make_history(proc.address)
        await asyncio.to_thread(proc.kill)
        await asyncio.to_thread(proc.start)
        await check_history(proc.address, kept)
    assert sorted(p.name for p in (tmp_path / "stubs").glob("*.db")) == ["loyalty.db"]


async def test_an_injected_error_applies_nothing(shop: ShopClient, control: StubControlClient) -> None:
    await control.set_faults([fault_rule("AwardPoints", error_rate=1.0, error_code="RESOURCE_EXHAUSTED")], seed=5)
    error = await rpc_error(shop.award("o-1", key="a1"), grpc.StatusCode.RESOURCE_EXHAUSTED)
    assert error.details() == "injected fault: RESOURCE_EXHAUSTED"
    assert not (await control.get_ledger("o-1")).keys
    await control.clear_faults()
    assert (await shop.award("o-1", key="a1", points=100)).balance == 100


async def test_apply_then_fail_credits_once_and_the_retry_gets_the_answer(
    shop: ShopClient, control: StubControlClient
) -> None:
    rule = fault_rule("/shop.v1.LoyaltyService/AwardPoints", apply_then_fail_rate=1.0, error_code="UNAVAILABLE")
    await control.set_faults([rule], seed=5)
    await rpc_error(shop.award("o-1", key="a1", points=60), grpc.StatusCode.UNAVAILABLE)
    assert points(await control.get_ledger("o-1")) == {"u-1": (60, 0, 60)}  # applied although the reply failed
    await control.clear_faults()
    assert (await shop.award("o-1", key="a1", points=60)).balance == 60
    assert points(await control.get_ledger("o-1")) == {"u-1": (60, 0, 60)}
    stats = await control.get_stats()
    assert (stats[("AwardPoints", "UNAVAILABLE")], stats[("AwardPoints", "OK")]) == (1, 1)


async def test_a_hang_fault_on_revoke_never_answers(shop: ShopClient, control: StubControlClient) -> None:
    await shop.award("o-1", key="a1", points=9)
    await control.set_faults([fault_rule("RevokePoints", hang_rate=1.0)], seed=5)
    await rpc_error(
        shop.compensate("loyalty", "o-1", key="r1", forward_key="a1", timeout_s=0.3), grpc.StatusCode.DEADLINE_EXCEEDED
    )
    assert points(await control.get_ledger("o-1")) == {"u-1": (9, 0, 9)}
    assert (await control.get_stats())[("RevokePoints", "HANG")] == 1


async def test_get_operation_answers(shop: ShopClient) -> None:
    assert (await shop.get_operation("loyalty", "never-seen")).state == NOT_FOUND
    awarded = await shop.award("o-1", key="a1", points=25)
    state = await shop.get_operation("loyalty", "a1")
    assert (state.state, state.code, state.method) == (DONE, "OK", "AwardPoints")
    response = loyalty_pb2.AwardPointsResponse()
    assert state.response.Unpack(response) and response == awarded

    await shop.compensate("loyalty", "o-2", key="r2", forward_key="lost")
    state = await shop.get_operation("loyalty", "lost")
    assert (state.state, state.code, state.method) == (DONE, "ABORTED", "AwardPoints")
    state = await shop.get_operation("loyalty", "r2")
    assert (state.state, state.code, state.method) == (DONE, "OK", "RevokePoints")


async def test_a_long_running_award_is_credited_once_when_it_finishes(
    shop: ShopClient, control: StubControlClient
) -> None:
    user = "u-lro-award-1s"
    accepted = await shop.award("o-1", key="a1", user_id=user, points=80)
    assert accepted.operation.name == "a1" and not accepted.operation.done
    assert (accepted.award_id, accepted.balance) == ("", 0)  # not meaningful yet
    assert points(await control.get_ledger("o-1")) == {}
    state = await shop.get_operation("loyalty", "a1")
    assert state.state in (IN_PROGRESS, DONE)  # a slow machine may be past the second already

    done = await shop.wait_done("loyalty", "a1")
    award = loyalty_pb2.AwardPointsResponse()
    assert done.code == "OK" and done.response.Unpack(award)
    assert award.balance == 80 and award.operation.done
    assert await shop.award("o-1", key="a1", user_id=user, points=80) == award
    assert points(await control.get_ledger("o-1")) == {user: (80, 0, 80)}
    assert (await control.get_operation_stats())["AwardPoints"] == (1, 1, 0)


async def test_a_banned_user_is_rejected_when_the_operation_finishes(shop: ShopClient) -> None:
    accepted = await shop.award("o-1", key="a1", user_id="banned-lro-award-0s")
    assert not accepted.operation.done
    done = await shop.wait_done("loyalty", "a1")
    assert (done.code, done.method) == ("FAILED_PRECONDITION", "AwardPoints")


async def test_metrics_and_a_services_subset(tmp_path: Path) -> None:
    async with running_stubs(tmp_path, services=["loyalty", "control"], metrics_listen="127.0.0.1:0") as stubs:
        assert list(stubs.services) == ["loyalty"]
        async with ShopClient(stubs.address) as shop:
            await shop.award("o-1", key="a1", user_id="u-secret", points=123_456)
            await rpc_error(shop.charge("o-1", key="c1"), grpc.StatusCode.UNIMPLEMENTED)
        assert stubs.metrics is not None
        url = f"http://127.0.0.1:{stubs.metrics.port}/metrics"
        text = await asyncio.to_thread(lambda: urllib.request.urlopen(url, timeout=5).read().decode())
    assert 'saga_stub_calls_total{code="OK",method="AwardPoints"} 1.0' in text
    assert 'saga_stub_store_rows_total{service="loyalty"} 1.0' in text
    assert 'saga_stub_idempotency_keys{service="loyalty"} 1.0' in text
    assert "u-secret" not in text and "123456" not in text


async def test_served_by_default(stubs: StubServer) -> None:
    assert "loyalty" in stubs.services
    assert (stubs.data_dir / "loyalty.db").exists()


def test_invariants_catch_points_left_after_a_failed_saga() -> None:
    ledger = OrderLedger(order_id="o-1", points=[PointsLedger(user_id="u", awarded=5, revoked=0, balance=5)])
    assert ledger_violations("o-1", saga_pb2.FAILED, ledger) == ["o-1: FAILED but user u awarded 5 revoked 0"]
    ledger.points[0].revoked = 6
    assert "o-1: user u awarded 5 revoked 6 balance 5" in ledger_violations("o-1", saga_pb2.FAILED, ledger)
