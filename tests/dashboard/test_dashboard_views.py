"""What the dashboard's JSON says of a saga, a dead letter, a dry run and the shards' definitions, from saga.v1
messages as shards send them: the saga's type, key and definition version, steps by their ids with their kinds, and
definitions merged across shards. Sagas of every type go through here; the live tests cover the calls."""

from __future__ import annotations

from protos.saga.v1 import saga_pb2
from shard_router.dashboard.app import dead_letter_json, definition_label, merge_definitions, preview_json, saga_json

LOYALTY_HASH = "917436a53f0dcf569f1e327fc6456151"


def test_a_saga_of_another_type_shows_its_type_key_definition_and_steps_by_id() -> None:
    s = saga_pb2.Saga(
        saga_id="s-1",
        saga_type="order_loyalty",
        key="o-1",
        definition_hash=LOYALTY_HASH,
        definition_version="1",
        state=saga_pb2.SAGA_STATE_RUNNING,
        steps=[
            saga_pb2.StepInfo(step=saga_pb2.STEP_PROCESS_PAYMENT, step_id="process_payment", kind="pivot"),
            saga_pb2.StepInfo(step_id="award_points", kind="retriable"),
        ],
        events=[saga_pb2.SagaEvent(seq=1, kind="started", step_id="award_points", action=saga_pb2.ACTION_FORWARD)],
    )
    j = saga_json(s)
    assert (j["saga_type"], j["key"], j["order_id"]) == ("order_loyalty", "o-1", "")
    assert j["definition"] == "order_loyalty v1 · 917436a5"
    assert [(st["step"], st["kind"]) for st in j["steps"]] == [
        ("process_payment", "pivot"),
        ("award_points", "retriable"),
    ]
    assert j["events"][0]["step"] == "award_points"


def test_an_order_saga_from_a_shard_without_definitions_is_still_named_by_its_order_id() -> None:
    j = saga_json(saga_pb2.Saga(order_id="o-2", steps=[saga_pb2.StepInfo(step=saga_pb2.STEP_CREATE_ORDER)]))
    assert (j["saga_type"], j["key"], j["definition"]) == ("order", "o-2", "order")
    assert j["steps"][0]["step"] == "create_order"


def test_a_dead_letter_and_a_plan_name_the_saga_by_type_and_key_and_the_step_by_id() -> None:
    d = saga_pb2.DeadLetter(
        saga_type="order_loyalty", key="o-1", step_id="award_points", action=saga_pb2.ACTION_FORWARD, attempts=10
    )
    j = dead_letter_json(d)
    assert (j["saga_type"], j["key"], j["step"], j["action"]) == ("order_loyalty", "o-1", "award_points", "forward")
    old = dead_letter_json(saga_pb2.DeadLetter(order_id="o-3", step=saga_pb2.STEP_PROCESS_PAYMENT))
    assert (old["saga_type"], old["key"], old["step"], old["action"]) == (
        "order",
        "o-3",
        "process_payment",
        "compensate",
    )
    p = preview_json(
        saga_pb2.SagaPreview(
            saga_type="order_loyalty",
            key="o-1",
            calls=[saga_pb2.PlannedCall(step_id="award_points", action=saga_pb2.ACTION_FORWARD)],
        )
    )
    assert (p["saga_type"], p["key"], p["calls"][0]["step"], p["calls"][0]["action"]) == (
        "order_loyalty",
        "o-1",
        "award_points",
        "forward",
    )


def test_definitions_merge_by_hash_summing_sagas_and_active_only_where_every_shard_says_so() -> None:
    def version(name: str, v: str, h: str, active: bool, sagas: int) -> saga_pb2.DefinitionVersion:
        return saga_pb2.DefinitionVersion(name=name, version=v, hash=h, active=active, sagas=sagas, step_ids=["a"])

    shard_1 = [version("order", "1", "a" * 32, True, 3), version("order_loyalty", "1", "b" * 32, True, 1)]
    # shard-2 already holds version 2 and starts new sagas on it; shard-1 does not hold it yet.
    shard_2 = [
        version("order", "1", "a" * 32, True, 2),
        version("order_loyalty", "1", "b" * 32, False, 4),
        version("order_loyalty", "2", "c" * 32, True, 0),
    ]
    rows = merge_definitions([shard_1, shard_2])
    got = [(r["name"], r["version"], r["active"], r["sagas"], r["shards"]) for r in rows]
    assert got == [
        ("order", "1", True, 5, 2),
        ("order_loyalty", "1", False, 5, 2),
        ("order_loyalty", "2", False, 0, 1),
    ]
    assert rows[0]["label"] == "order v1 · aaaaaaaa" and rows[0]["step_ids"] == ["a"]
    assert definition_label("refund", "2024-06", "c" * 32) == "refund 2024-06 · cccccccc"
