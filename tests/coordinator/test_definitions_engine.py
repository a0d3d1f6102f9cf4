"""The engine runs any definition: a second saga type (docs/definitions/order_loyalty.yaml) with a pivot and a
retriable step, outputs read by later requests, and every saga pinned to the version it started on, across versions
installed while it runs and across restarts. In-process shard over a real journal, fake caller and clock."""

from __future__ import annotations

import asyncio
import json
import sqlite3
from pathlib import Path

import grpc
import pytest

from common.definitions.check import from_document, load, order_flow
from common.definitions.model import Definition
from coordinator.engine.book import Offered, UnknownSagaType
from coordinator.saga.errors import CallResult, InvalidRequest
from coordinator.saga.model import Action, SagaState, StepStatus, idempotency_key
from coordinator.saga.record import EventKind, SagaRecord
from protos.shop.v1 import payment_pb2

from .conftest import Harness, order
from .test_engine import settle

F, C = Action.FORWARD, Action.COMPENSATE
ROOT = Path(__file__).resolve().parents[2]
LOYALTY = load(ROOT / "docs" / "definitions" / "order_loyalty.yaml")
CREATE, RESERVE, SHIP, PAY, AWARD = LOYALTY.steps


async def install(h: Harness, *defs: Definition, history: int = 1) -> None:
    assert h.shard is not None
    offered = [Offered(d.hash, json.loads(json.dumps(d.document))) for d in defs]
    await h.shard.book.install(offered, {d.name: d.hash for d in defs}, history)


async def start(h: Harness, saga_type: str, order_id: str, **kw: object) -> SagaRecord:
    assert h.shard is not None
    task = asyncio.create_task(h.shard.start_saga(saga_type, order_id, order(order_id, **kw), None, False))
    placed = await settle(h, task)
    return placed.saga  # type: ignore[attr-defined, no-any-return]


async def test_a_second_type_runs_its_own_steps_with_its_own_keys(harness: Harness) -> None:
    await install(harness, LOYALTY)
    saga = await start(harness, "order_loyalty", "o-1")
    assert saga.state is SagaState.SUCCEEDED and saga.definition_hash == LOYALTY.hash
    assert harness.caller.steps_called("o-1", F) == list(LOYALTY.steps)
    keys = [c.key for c in harness.caller.calls]
    assert keys == [idempotency_key(saga.saga_id, s.id, F) for s in LOYALTY.steps]
    # The order flow of the same order is another saga (idempotency is per type and key).
    other = await start(harness, "order", "o-1")
    assert other.saga_id != saga.saga_id and other.definition_hash == order_flow().hash
    assert other.state is SagaState.SUCCEEDED


async def test_a_failure_before_the_pivot_compensates_and_a_rejected_pivot_is_not_undone(harness: Harness) -> None:
    await install(harness, LOYALTY)
    harness.caller.fail_with(PAY, F, grpc.StatusCode.FAILED_PRECONDITION, msg="declined")
    saga = await start(harness, "order_loyalty", "o-1")
    assert saga.state is SagaState.FAILED
    assert harness.caller.steps_called("o-1", C) == [SHIP, RESERVE, CREATE]
    assert harness.caller.steps_called("o-1", F) == [CREATE, RESERVE, SHIP, PAY]


async def test_a_pivot_whose_outcome_is_unknown_is_compensated_by_its_own_undo(harness: Harness) -> None:
    await install(harness, LOYALTY)
    harness.caller.fail_with(PAY, F, grpc.StatusCode.INTERNAL, msg="boom")
    harness.caller.ask_unknown = True  # the service cannot say: the charge may have happened
    saga = await start(harness, "order_loyalty", "o-1")
    assert saga.state is SagaState.FAILED
    assert harness.caller.steps_called("o-1", C) == [PAY, SHIP, RESERVE, CREATE]


async def test_a_retriable_step_is_never_compensated_it_parks_and_an_operator_resumes_it(harness: Harness) -> None:
    await install(harness, LOYALTY)
    harness.caller.fail_with(AWARD, F, grpc.StatusCode.UNAVAILABLE, msg="points service down")
    saga = await start(harness, "order_loyalty", "o-1")
    assert saga.state is SagaState.DEAD_LETTERED
    assert "award_points" in saga.parked_note and harness.caller.steps_called("o-1", C) == []
    attempts = saga.steps[AWARD.number].forward_attempts
    assert attempts == 10  # its own policy (the definition's), not the shard's 4
    assert harness.shard is not None
    (letter,) = await harness.shard.dead_letters(0, False, 10, 0)
    assert letter.step == AWARD.number and letter.definition_hash == LOYALTY.hash
    plan = await harness.shard.preview_retry("order_loyalty/o-1")
    assert plan.end_state is SagaState.SUCCEEDED
    assert [(c.step_id, c.action, c.attempt, c.retry_of_earlier_attempt) for c in plan.calls] == [
        ("award_points", F, attempts + 1, True)
    ]
    harness.caller.scripts.clear()  # the points service is back
    await harness.shard.retry_dead_letter("order_loyalty/o-1", "ops", "points service fixed")
    done = await _wait(harness, "order_loyalty/o-1", SagaState.SUCCEEDED)
    assert done.steps[AWARD.number].status is StepStatus.SUCCEEDED
    assert harness.caller.steps_called("o-1", C) == []
    # The same key on every attempt, before and after the operator's retry.
    assert {c.key for c in harness.caller.calls if c.step == AWARD} == {
        idempotency_key(saga.saga_id, "award_points", F)
    }


async def test_past_the_pivot_the_deadline_no_longer_compensates(harness: Harness) -> None:
    await install(harness, LOYALTY)
    harness.caller.fail_with(AWARD, F, grpc.StatusCode.UNAVAILABLE, times=3)
    assert harness.shard is not None
    task = asyncio.create_task(harness.shard.start_saga("order_loyalty", "o-1", order("o-1"), 50, False))
    saga = (await settle(harness, task)).saga  # type: ignore[attr-defined]
    # Its 50 ms deadline passed long before the retries ended: the charge stands, the points went through.
    assert saga.state is SagaState.SUCCEEDED
    assert harness.caller.steps_called("o-1", C) == []


async def test_a_step_output_is_journaled_and_read_by_a_later_request_after_a_restart(harness: Harness) -> None:
    document = json.loads(json.dumps(LOYALTY.document))
    document["name"] = "refund_by_charge"
    # The refund names the charge it undoes: its reason reads the payment step's own output.
    undo = document["steps"][3]["compensation"]
    undo["request"] = {**undo["request"], "reason": "$steps.process_payment.output.charge_id"}
    document["steps"][3]["kind"] = "compensable"
    document["steps"][4] = {**document["steps"][2], "id": "schedule_again"}
    flow = from_document(document, "refund_by_charge")
    assert flow.step(4).output_used and not flow.step(1).output_used
    await install(harness, flow)
    charged = payment_pb2.ChargePaymentResponse(charge_id="ch-42")
    harness.caller.script(flow.step(4), F, lambda p, n: CallResult(grpc.StatusCode.OK, response=charged))
    harness.caller.hang(flow.step(5), F)  # the last step hangs: the shard restarts mid-saga
    assert harness.shard is not None
    running = asyncio.create_task(harness.shard.start_saga("refund_by_charge", "o-1", order("o-1"), 3000, False))
    await harness.quiesce()
    assert not running.done()
    await harness.clock.advance(0.5)
    await harness.quiesce()
    assert harness.journal is not None
    rec = await harness.journal.get_by_order("refund_by_charge/o-1")
    assert rec is not None
    (done,) = [e for e in await harness.journal.events(rec.saga_id) if e.kind is EventKind.SUCCEEDED and e.step == 4]
    assert payment_pb2.ChargePaymentResponse.FromString(done.output).charge_id == "ch-42"
    built: list[str] = []
    await harness.restart()
    original = harness.caller.call

    async def record(values, step, action, timeout_s):  # type: ignore[no-untyped-def]
        if step == 4 and action is C:
            built.append(flow.step(4).compensation.build(values, "fk").reason)  # type: ignore[union-attr]
        return await original(values, step, action, timeout_s)

    harness.caller.call = record  # type: ignore[method-assign]
    await _wait(harness, "refund_by_charge/o-1", SagaState.FAILED, step_s=0.5)
    assert built == ["ch-42"]  # read back from the journal by the restarted shard


async def test_sagas_finish_on_the_version_they_started_on_whatever_is_installed_meanwhile(harness: Harness) -> None:
    v1 = LOYALTY
    await install(harness, v1)
    harness.caller.hang(SHIP, F)
    assert harness.shard is not None
    [
        asyncio.create_task(harness.shard.start_saga("order_loyalty", f"o-{i}", order(f"o-{i}"), 60_000, False))
        for i in range(3)
    ]
    await harness.quiesce()
    # Version 2 drops the points step (and is another hash); it becomes the alias's target while v1 sagas run.
    document = json.loads(json.dumps(v1.document))
    document["version"] = "2"
    document["steps"] = [*document["steps"][:3], {**document["steps"][3], "kind": "compensable"}]
    v2 = from_document(document, "v2")
    await install(harness, v1, v2, history=2)
    harness.caller.scripts.clear()
    await harness.restart()  # ... and across a restart
    for i in range(3):
        saga = await _wait(harness, f"order_loyalty/o-{i}", SagaState.SUCCEEDED, step_s=0.5)
        assert saga.definition_hash == v1.hash
        assert saga.steps[AWARD.number].status is StepStatus.SUCCEEDED  # v1's fifth step ran
    new = await start(harness, "order_loyalty", "o-new")
    assert new.definition_hash == v2.hash and AWARD.number not in new.steps
    assert not [c for c in harness.caller.calls if c.key.startswith(new.saga_id) and c.step == AWARD]
    # An older history changes nothing: the alias stays on v2.
    await install(harness, v1, history=1)
    assert harness.shard.book.for_new("order_loyalty").hash == v2.hash


async def test_a_journal_from_before_definitions_runs_its_sagas_as_the_order_flow(harness: Harness) -> None:
    await harness.stop()
    harness.caller.hang(order_flow().step(2), F)
    shard = await harness.start()
    running = asyncio.create_task(shard.place_order(order("o-old")))
    await harness.quiesce()
    assert not running.done()
    await harness.stop()
    # What a journal written before definitions holds: no definition hash on the saga, no definitions, no alias.
    db = sqlite3.connect(harness.path)
    db.execute("UPDATE sagas SET definition_hash = ''")
    db.execute("DELETE FROM definition_aliases")
    db.execute("DELETE FROM definitions")
    db.commit()
    db.close()
    harness.caller.scripts.clear()
    await harness.start()
    saga = await _wait(harness, "o-old", SagaState.SUCCEEDED, step_s=0.5)
    assert saga.definition_hash == order_flow().hash


async def test_bad_starts_are_refused_with_the_field_named(harness: Harness) -> None:
    assert harness.shard is not None
    with pytest.raises(UnknownSagaType):
        await harness.shard.start_saga("returns", "o-1", order("o-1"), None, False)
    await install(harness, LOYALTY)
    with pytest.raises(InvalidRequest) as e:
        await harness.shard.start_saga("order_loyalty", "o-2", order("o-1"), None, False)
    assert e.value.field == "key"
    with pytest.raises(InvalidRequest) as e:
        await harness.shard.start_saga("order_loyalty", "o-1", payment_pb2.ChargePaymentRequest(), None, False)
    assert e.value.field == "input"
    assert await harness.journal.get_by_order("order_loyalty/o-1") is None  # type: ignore[union-attr]


async def _wait(h: Harness, key: str, state: SagaState, step_s: float = 0.05, limit_s: float = 600) -> SagaRecord:
    waited = 0.0
    while True:
        await h.quiesce()
        assert h.journal is not None
        rec = await h.journal.get_by_order(key)
        if rec is not None and rec.state is state:
            return rec
        assert waited < limit_s, f"{key} is {rec.state.name if rec else None}, not {state.name}"
        await h.clock.advance(step_s)
        waited += step_s
