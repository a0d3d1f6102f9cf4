"""saga-defs graph: the shipped definitions drawn by the engine's rules (golden text for one of each format, the
rules asserted on the graph itself), and the command's formats, --json and exit codes."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from common.definitions import check, from_document, load
from common.definitions.graph import EdgeType, Graph, NodeType, build, dot, mermaid
from tests.definitions.conftest import BROKEN, ORDER, REPO_ROOT, order_doc, saga_defs

LOYALTY = REPO_ROOT / "docs" / "definitions" / "order_loyalty.yaml"
GOLDEN = Path(__file__).parent / "golden"


def edges(graph: Graph, kind: EdgeType) -> list[tuple[str, str, str]]:
    return [(e.source, e.target, e.label) for e in graph.edges if e.type is kind]


def test_the_order_flow_in_mermaid_is_the_golden_text() -> None:
    # To update after a deliberate change: saga-defs graph common/definitions/shipped/order.yaml > the golden file.
    assert mermaid(build(check.order_flow())) == (GOLDEN / "order.mmd").read_text()


def test_order_loyalty_in_dot_is_the_golden_text() -> None:
    assert dot(build(load(LOYALTY))) == (GOLDEN / "order_loyalty.dot").read_text()


def test_the_order_flow_runs_forward_and_undoes_in_reverse() -> None:
    g = build(check.order_flow())
    assert edges(g, EdgeType.FORWARD) == [
        ("start", "step_create_order", ""),
        ("step_create_order", "step_reserve_inventory", "ok"),
        ("step_reserve_inventory", "step_process_payment", "ok"),
        ("step_process_payment", "step_schedule_shipment", "ok"),
        ("step_schedule_shipment", "succeeded", "ok"),
    ]
    assert edges(g, EdgeType.COMPENSATE) == [
        ("undo_schedule_shipment", "undo_process_payment", "done"),
        ("undo_process_payment", "undo_reserve_inventory", "done"),
        ("undo_reserve_inventory", "undo_create_order", "done"),
        ("undo_create_order", "failed", "done"),
    ]
    # A rejected call applied nothing: the undo starts before it; one that may have applied is undone too.
    assert ("step_process_payment", "undo_reserve_inventory", "rejected") in edges(g, EdgeType.FAIL)
    assert ("step_process_payment", "undo_process_payment", "may have applied") in edges(g, EdgeType.FAIL)
    assert ("step_create_order", "failed", "rejected") in edges(g, EdgeType.FAIL)
    # A compensation past its budget parks the saga (engine: COMPENSATING -> DEAD_LETTERED).
    assert len(edges(g, EdgeType.PARK)) == 4
    assert all(e.type.dashed for e in g.edges if e.type is not EdgeType.FORWARD)
    assert not any(n.step and n.step.kind.value != "compensable" for n in g.nodes)


def test_order_loyalty_marks_the_pivot_and_parks_its_retriable_step() -> None:
    g = build(load(LOYALTY))
    [pivot] = [n for n in g.nodes if n.type is NodeType.STEP and "point of no return" in " ".join(n.label)]
    assert pivot.id == "step_process_payment"
    assert ("step_award_points", "parked", "retries exhausted") in edges(g, EdgeType.PARK)
    # Past the pivot nothing is undone: award_points has no compensation node and no failure edge.
    assert "undo_award_points" not in {n.id for n in g.nodes}
    assert not [e for e in g.edges if e.source == "step_award_points" and e.type is EdgeType.FAIL]
    text = mermaid(g)
    assert 'step_process_payment{{"4. process_payment<br/>pivot: point of no return' in text
    assert 'step_award_points[["5. award_points<br/>retriable' in text
    assert "  class step_process_payment pivot\n" in text
    assert "  class step_award_points retriable\n" in text
    assert "  undo_process_payment -.->|done| undo_schedule_shipment\n" in text
    drawn = dot(g)
    assert 'step_process_payment [label="4. process_payment\\npivot: point of no return' in drawn
    assert 'shape="hexagon"' in drawn and 'peripheries="2"' in drawn
    assert '  undo_process_payment -> undo_schedule_shipment [label="done", style=dashed];\n' in drawn


def test_a_pivot_without_compensation_fails_to_the_step_before() -> None:
    doc = order_doc()
    doc["steps"][3]["kind"] = "pivot"
    doc["steps"][3]["compensation"] = "none"
    g = build(from_document(doc, "pivot-last"))
    assert [e for e in edges(g, EdgeType.FAIL) if e[0] == "step_schedule_shipment"] == [
        ("step_schedule_shipment", "undo_process_payment", "fails")
    ]


def test_the_output_is_deterministic() -> None:
    assert mermaid(build(load(LOYALTY))) == mermaid(build(load(LOYALTY)))


def test_graph_command_prints_mermaid_by_default_and_dot_on_request() -> None:
    run = saga_defs("graph", ORDER)
    assert run.returncode == 0, run.stderr
    assert run.stdout == (GOLDEN / "order.mmd").read_text()
    run = saga_defs("graph", "--format", "dot", LOYALTY)
    assert run.returncode == 0, run.stderr
    assert run.stdout == (GOLDEN / "order_loyalty.dot").read_text()


def test_graph_json_gives_nodes_and_edges() -> None:
    run = saga_defs("graph", "--json", LOYALTY)
    assert run.returncode == 0, run.stderr
    out = json.loads(run.stdout)
    assert (out["name"], out["hash"]) == ("order_loyalty", load(LOYALTY).hash)
    by_id = {n["id"]: n for n in out["nodes"]}
    assert by_id["step_process_payment"]["pivot"] is True
    assert by_id["step_award_points"]["retriable"] is True
    assert by_id["undo_create_order"]["method"] == "shop.v1.OrderService/CancelOrder"
    assert {n["id"] for n in out["nodes"] if n["type"] == "end"} == {"succeeded", "failed", "parked"}
    assert {"from": "undo_create_order", "to": "failed", "type": "compensate", "label": "done", "dashed": True} in out[
        "edges"
    ]


@pytest.mark.parametrize("json_flag", [[], ["--json"]])
def test_graph_of_a_broken_file_prints_its_problems_and_exits_1(json_flag: list[str]) -> None:
    run = saga_defs("graph", *json_flag, BROKEN / "step.duplicate-id.yaml")
    assert run.returncode == 1
    assert "step.duplicate-id" in run.stdout


def test_graph_takes_one_file() -> None:
    assert saga_defs("graph", ORDER, LOYALTY).returncode == 2
