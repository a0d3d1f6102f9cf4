"""common.definitions.check: every class of mistake gives exactly its code at its path (one file each under broken/),
every mistake of a file is reported at once, the shipped order flow checks clean, and the identity hash follows the
content and the message types, not the layout."""

from __future__ import annotations

import ast
import json
from pathlib import Path
from typing import Any

import pytest
import yaml

from common.definitions import check
from common.definitions.catalog import Catalog
from common.definitions.model import Kind, Values
from common.definitions.problems import CODES, DefinitionError, Problem
from protos.saga.v1 import saga_pb2
from tests.definitions.conftest import BROKEN, ORDER, REPO_ROOT, order_doc, pool_of, project_files

BROKEN_FILES = sorted(BROKEN.glob("*.yaml"))

# Codes no definition file can show: where each is tested instead.
TESTED_ELSEWHERE = {
    "file.unreadable": "tests/definitions/test_cli.py::test_an_unreadable_file_is_a_problem_of_its_own",
    "path.map-field": "tests/definitions/test_paths.py::test_map_fields_are_refused",
}


def expected_path(path: Path) -> str:
    """The JSON Pointer in the first line, `# expect: /steps/1/kind` (nothing after the colon: the whole file)."""
    first = path.read_text().splitlines()[0]
    assert first.startswith("# expect:"), f"{path.name}: the first line says `# expect: <json pointer>`"
    return first.removeprefix("# expect:").strip()


def problems_of(text: str, catalog: Catalog | None = None) -> list[Problem]:
    try:
        document = check.parse(text)
    except DefinitionError as e:
        return e.problems
    return check.check(document, catalog)[1]


@pytest.mark.parametrize("path", BROKEN_FILES, ids=[p.stem for p in BROKEN_FILES])
def test_each_broken_file_gives_exactly_its_code_at_its_path(path: Path) -> None:
    problems = problems_of(path.read_text())
    assert [(p.code, p.path) for p in problems] == [(path.stem, expected_path(path))], problems
    assert problems[0].message


def test_the_shipped_order_flow_checks_clean() -> None:
    definition, problems = check.check(check.parse(ORDER.read_text()))
    assert problems == []
    assert definition is not None
    assert (definition.name, definition.version) == ("order", "1")
    assert [s.id for s in definition.steps] == [
        "create_order",
        "reserve_inventory",
        "process_payment",
        "schedule_shipment",
    ]
    assert [s.number for s in definition.steps] == [1, 2, 3, 4]
    assert all(s.kind is Kind.COMPENSABLE for s in definition.steps)
    assert definition.pivot == 0
    assert definition.steps[2].get_operation == "/shop.v1.PaymentService/GetOperation"
    assert definition.key_of(saga_pb2.PlaceOrderRequest(order_id="o-1")) == "o-1"


def test_a_file_with_several_mistakes_reports_every_one() -> None:
    doc = order_doc()
    doc["ttl_ms"] = {"default": 600_000, "max": 300_000}
    doc["steps"][1]["id"] = "create_order"
    doc["steps"][2]["call"]["method"] = "shop.v1.PaymentService/Charge"
    doc["steps"][3]["call"]["request"]["user_id"] = "$input.user"
    doc["steps"][3]["compensation"] = "none"
    got = {(p.code, p.path) for p in check.check(doc)[1]}
    assert got == {
        ("ttl.default-above-max", "/ttl_ms/default"),
        ("step.duplicate-id", "/steps/1/id"),
        ("method.unknown-method", "/steps/2/call/method"),
        ("path.no-such-field", "/steps/3/call/request/user_id"),
        ("compensation.missing", "/steps/3/compensation"),
    }


def test_every_structural_mistake_is_reported_at_once() -> None:
    doc = order_doc()
    doc["steps"][0]["id"] = "Create"
    doc["steps"][1]["kind"] = "maybe"
    del doc["input"]["key"]
    got = {(p.code, p.path) for p in check.check(doc)[1]}
    assert got == {("schema.pattern", "/steps/0/id"), ("schema.enum", "/steps/1/kind"), ("schema.required", "/input")}


def test_what_yaml_says_and_json_cannot_is_a_schema_type_problem() -> None:
    text = ORDER.read_text().replace("reason: saga compensation", "reason: !!binary c2FnYQ==")
    text = text.replace(
        "        user_id: $input.user_id\n        items", "        yes: $input.user_id\n        items", 1
    )
    # The compensation request is an anchor: its reason is reported where each alias puts it.
    assert [(p.code, p.path) for p in problems_of(text)] == [
        ("schema.type", "/steps/0/call/request/True"),
        *[("schema.type", f"/steps/{i}/compensation/request/reason") for i in range(4)],
    ]


def test_a_date_stays_the_string_it_reads_as() -> None:
    text = ORDER.read_text().replace("reason: saga compensation", "reason: 2026-01-31")
    definition, problems = check.check(check.parse(text))
    assert definition is not None, problems
    assert definition.steps[0].compensation is not None
    assert definition.steps[0].compensation.mapping["reason"] == "2026-01-31"


def test_an_unknown_method_does_not_make_its_step_unknown_to_later_paths() -> None:
    doc = order_doc()
    doc["steps"][0]["call"]["method"] = "shop.v1.OrderService/Create"
    doc["steps"][1]["call"]["request"]["order_id"] = "$steps.create_order.output.order_id"
    assert [(p.code, p.path) for p in check.check(doc)[1]] == [("method.unknown-method", "/steps/0/call/method")]


def test_load_raises_with_every_problem() -> None:
    text = (BROKEN / "step.duplicate-id.yaml").read_text()
    with pytest.raises(DefinitionError) as info:
        check.load("dup.yaml", text)
    assert [p.code for p in info.value.problems] == ["step.duplicate-id"]
    assert "dup.yaml: 1 problem(s)" in str(info.value)


# ---------------------------------------------------------------- codes: emitted, tested, documented


def _emitted_codes() -> set[str]:
    """Every code literal given to Problem(...) in common/definitions, plus the schema family."""
    codes = {"schema.*"}
    for source in (REPO_ROOT / "common" / "definitions").glob("*.py"):
        for node in ast.walk(ast.parse(source.read_text())):
            if isinstance(node, ast.Call) and getattr(node.func, "id", None) == "Problem" and node.args:
                first = node.args[0]
                if isinstance(first, ast.Constant) and isinstance(first.value, str):
                    codes.add("schema.*" if first.value.startswith("schema.") else first.value)
                else:
                    assert isinstance(first, ast.JoinedStr), (
                        f"{source.name}:{node.lineno}: a code that is not a literal"
                    )
    return codes


def test_every_code_emitted_is_listed_and_every_listed_code_is_emitted() -> None:
    assert _emitted_codes() == set(CODES)


def test_every_code_has_a_test() -> None:
    files = {p.stem for p in BROKEN_FILES}
    untested = {c for c in CODES if c not in files and c not in TESTED_ELSEWHERE and c != "schema.*"}
    assert not untested
    assert {c for c in files if not c.startswith("schema.")} <= set(CODES)
    assert any(c.startswith("schema.") for c in files)


def test_every_code_is_documented() -> None:
    docs = (REPO_ROOT / "docs" / "definitions.md").read_text()
    missing = [c for c in CODES if f"`{c}`" not in docs]
    assert not missing


# ---------------------------------------------------------------- identity


def hash_of(document: Any, catalog: Catalog | None = None) -> str:
    definition, problems = check.check(document, catalog)
    assert definition is not None, problems
    return definition.hash


def _reordered(value: Any) -> Any:
    if isinstance(value, dict):
        return {k: _reordered(value[k]) for k in reversed(list(value))}
    if isinstance(value, list):
        return [_reordered(v) for v in value]
    return value


def test_the_hash_ignores_layout_key_order_anchors_and_json() -> None:
    shipped = hash_of(check.parse(ORDER.read_text()))
    as_json = json.dumps(_reordered(order_doc()), indent=1)
    assert "&undo" in ORDER.read_text() and "*undo" not in as_json
    assert hash_of(check.parse(as_json)) == shipped
    flat = yaml.safe_dump(_reordered(order_doc()), default_flow_style=True)
    assert hash_of(check.parse(flat)) == shipped
    # Defaults written out are the same definition as defaults left implicit.
    implicit = order_doc()
    del implicit["steps"][0]["kind"]
    assert hash_of(implicit) == shipped


def test_the_hash_changes_with_a_step() -> None:
    shipped = hash_of(order_doc())
    changed = order_doc()
    changed["steps"][0]["compensation"]["request"]["reason"] = "undone"
    assert hash_of(changed) != shipped
    policy = order_doc()
    policy["steps"][2]["policy"] = {"forward": {"max_attempts": 5}}
    assert hash_of(policy) != shipped


def _catalog_where(message: str, add_field: bool) -> Catalog:
    """The project's types in a pool of their own; with add_field, `message` gains a string field `note`."""
    files = project_files()
    for f in files:
        for m in f.message_type:
            if add_field and f"{f.package}.{m.name}" == message:
                m.field.add(name="note", number=99, type=m.field[0].TYPE_STRING, label=m.field[0].LABEL_OPTIONAL)
    return Catalog(pool_of(files))


def test_the_hash_follows_the_message_types_it_uses() -> None:
    shipped = hash_of(order_doc())
    # The same types from another pool are the same definition: the hash reads the descriptors, not where they live.
    assert hash_of(order_doc(), _catalog_where("", add_field=False)) == shipped
    assert hash_of(order_doc(), _catalog_where("shop.v1.ChargePaymentRequest", add_field=True)) != shipped
    # A type reached only through a field (saga.v1.PaymentInfo inside the input) counts too.
    assert hash_of(order_doc(), _catalog_where("saga.v1.PaymentInfo", add_field=True)) != shipped
    # A type the definition does not use does not.
    assert hash_of(order_doc(), _catalog_where("saga.v1.GetSagaRequest", add_field=True)) == shipped


# ---------------------------------------------------------------- policies and requests built


def test_a_step_policy_is_laid_over_the_defaults() -> None:
    doc = order_doc()
    doc["defaults"] = {
        "forward": {"max_attempts": 5, "attempt_timeout_ms": 1_000},
        "codes": {"transient": ["UNAVAILABLE", "ABORTED"], "rejected": ["FAILED_PRECONDITION"]},
    }
    doc["steps"][2]["policy"] = {
        "forward": {"max_attempts": 3},
        "operations": {"ask_unknown": False},
        "codes": {"rejected": ["ABORTED"]},
    }
    definition, problems = check.check(doc)
    assert definition is not None, problems
    payment, other = definition.steps[2].policy, definition.steps[0].policy
    assert payment.forward == {"max_attempts": 3, "attempt_timeout_ms": 1_000}
    assert payment.operations == {"ask_unknown": False}
    # ABORTED moves from transient to rejected for this step only.
    assert payment.codes == {"transient": ("UNAVAILABLE",), "rejected": ("FAILED_PRECONDITION", "ABORTED")}
    assert other.codes == {"transient": ("UNAVAILABLE", "ABORTED"), "rejected": ("FAILED_PRECONDITION",)}
    assert other.forward == {"max_attempts": 5, "attempt_timeout_ms": 1_000}


def test_the_ttl_rule_counts_the_steps_up_to_the_pivot_with_their_policies() -> None:
    doc = order_doc()
    doc["ttl_ms"] = {"max": 30_000}
    doc["steps"][1]["kind"] = "pivot"
    doc["steps"][2]["kind"] = doc["steps"][3]["kind"] = "retriable"
    doc["steps"][2]["compensation"] = doc["steps"][3]["compensation"] = "none"
    assert check.check(doc)[1] == []  # two steps of 10 s + 3 s each: 26 s
    doc["defaults"] = {"forward": {"max_elapsed_ms": 0, "max_attempts": 3, "max_backoff_ms": 1_000}}
    assert check.check(doc)[1] == []  # 3 x (3 s + 1 s) twice: 24 s
    doc["steps"][0]["policy"] = {"forward": {"max_elapsed_ms": 20_000}}
    assert [p.code for p in check.check(doc)[1]] == ["ttl.retries-exceed"]  # 23 s + 12 s


def test_the_compiled_requests_build_what_the_services_expect() -> None:
    definition = check.order_flow()
    order = saga_pb2.PlaceOrderRequest(
        order_id="o-1",
        user_id="u-1",
        items=[saga_pb2.Item(item_id="sku", quantity=2)],
        payment_info=saga_pb2.PaymentInfo(payment_token="tok_ok", amount_cents=500, currency="EUR"),
    )
    values = Values(saga_id="s-1", key="o-1", input=order)
    create = definition.steps[0].call.build(values, "")
    assert create.order_id == "o-1" and create.items[0].item_id == "sku" and create.items[0].quantity == 2
    charge = definition.steps[2].call.build(values, "")
    assert (charge.payment_token, charge.amount_cents, charge.currency) == ("tok_ok", 500, "EUR")
    compensation = definition.steps[2].compensation
    assert compensation is not None
    refund = compensation.build(values, "s-1/process_payment/forward")
    assert refund.forward_idempotency_key == "s-1/process_payment/forward"
    assert refund.reason == "saga compensation"
