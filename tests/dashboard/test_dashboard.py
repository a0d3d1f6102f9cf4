"""The router's dashboard against a real cluster (stubs, two shards, router as processes): its JSON API, and the page
in headless Chromium: orders appear, the step latency table fills from the shards' metrics, a dead letter shows up and
a click on Retry (after the fault is cleared) sends it back to compensation, and the saga detail view shows its
timeline. One cluster for the module; the browser test skips only if /usr/bin/chromium is missing."""

from __future__ import annotations

import json
import re
import shutil
import time
import urllib.error
import urllib.request
from collections.abc import Callable, Iterator
from typing import Any

import grpc
import pytest

from common.definitions.model import Definition
from protos.saga.v1 import saga_pb2, saga_pb2_grpc
from protos.service_stubs.v1 import control_pb2, control_pb2_grpc
from tests.helpers.coordinator import place_request
from tests.helpers.live_cluster import LiveCluster
from tests.helpers.loyalty import LOYALTY_TYPE, commit_loyalty, start_loyalty
from tests.helpers.tools import require_tool

CHROMIUM = shutil.which("chromium")
"""Debian's Chromium, found on PATH as `make browser-deps` finds it (it installs it); None if missing."""
CHROMIUM_ARGS = [
    "--headless",
    "--no-sandbox",
    "--disable-gpu",
    "--disable-quic",
    "--no-first-run",
    "--disable-background-networking",
    "--disable-component-update",
    "--disable-sync",
]
SECRET_TOKEN = "tok_ok_DashSecret77"
EXPECT_TIMEOUT_MS = 20_000
"""How long a browser assertion waits for the page to show what it expects."""


@pytest.fixture(scope="module")
def live(tmp_path_factory: pytest.TempPathFactory) -> Iterator[LiveCluster]:
    with LiveCluster(tmp_path_factory.mktemp("dash"), shards=2) as c:
        yield c


@pytest.fixture(scope="module")
def saga(live: LiveCluster) -> Iterator[saga_pb2_grpc.SagaCoordinatorStub]:
    with live.channel() as channel:
        yield saga_pb2_grpc.SagaCoordinatorStub(channel)


@pytest.fixture(scope="module")
def loyalty(live: LiveCluster) -> Definition:
    """The second saga type, committed to the router (and so to both shards)."""
    return commit_loyalty(live.system)


def http(
    live: LiveCluster,
    path: str,
    body: Any = None,
    content_type: str = "application/json",
    headers: dict[str, str] | None = None,
) -> tuple[int, Any]:
    data = None if body is None else json.dumps(body).encode()
    req = urllib.request.Request(live.dashboard_url + path, data=data, method="POST" if data is not None else "GET")
    if data is not None:
        req.add_header("Content-Type", content_type)
        req.add_header("Origin", live.dashboard_url.rstrip("/"))  # what a browser sends from the dashboard's page
    for name, value in (headers or {}).items():
        req.add_header(name, value)
    try:
        with urllib.request.urlopen(req, timeout=15) as r:
            raw, status = r.read(), r.status
    except urllib.error.HTTPError as e:
        raw, status = e.read(), e.code
    return status, json.loads(raw) if raw.startswith((b"{", b"[")) else raw.decode()


def set_faults(live: LiveCluster, *rules: control_pb2.FaultRule) -> None:
    with grpc.insecure_channel(live.stubs) as channel:
        control = control_pb2_grpc.StubControlStub(channel)
        if rules:
            control.SetFaults(control_pb2.SetFaultsRequest(rules=rules, seed=1), timeout=10)
        else:
            control.ClearFaults(control_pb2.ClearFaultsRequest(), timeout=10)


def compensation_keys(live: LiveCluster, order_id: str) -> set[tuple[str, str]]:
    """(method, idempotency key) of each compensation the stubs applied or answered OK for the order."""
    with grpc.insecure_channel(live.stubs) as channel:
        control = control_pb2_grpc.StubControlStub(channel)
        (ledger,) = control.GetLedger(control_pb2.GetLedgerRequest(order_id=order_id), timeout=10).ledgers
    compensations = {"CancelOrder", "ReleaseInventory", "RefundPayment", "CancelShipment"}
    return {(k.method, k.idempotency_key) for k in ledger.keys if k.method in compensations and k.code == "OK"}


def test_json_api(live: LiveCluster, saga: saga_pb2_grpc.SagaCoordinatorStub) -> None:
    assert saga.PlaceOrder(place_request("api-1", token=SECRET_TOKEN), timeout=30).status == saga_pb2.SUCCESS
    status, summary = http(live, "/api/summary")
    assert status == 200
    assert [s["id"] for s in summary["shards"]] == live.shard_ids
    assert "api-1" in [s["order_id"] for s in summary["recent"]]
    assert summary["errors"] == {}
    status, one = http(live, "/api/sagas/api-1")
    assert status == 200 and one["state"] == "SUCCEEDED" and len(one["steps"]) == 4 and one["events"]
    assert (one["saga_type"], one["key"], one["definition_version"]) == ("order", "api-1", "1")
    assert one["definition"] == f"order v1 · {one['definition_hash'][:8]}"
    assert [(st["step"], st["kind"]) for st in one["steps"]] == [
        (step, "compensable") for step in ("create_order", "reserve_inventory", "process_payment", "schedule_shipment")
    ]
    assert http(live, "/api/sagas/api-1?type=order")[1]["saga_id"] == one["saga_id"]
    assert SECRET_TOKEN not in json.dumps(one) and SECRET_TOKEN not in json.dumps(summary)
    status, listed = http(live, "/api/sagas?state=succeeded&limit=5")
    assert status == 200 and all(s["state"] == "SUCCEEDED" for s in listed["sagas"])

    assert http(live, "/api/sagas/api-missing")[0] == 404
    assert http(live, "/api/sagas/bad%20id")[0] == 400
    assert http(live, "/api/sagas/api-1?type=Not-A-Type")[0] == 400
    assert http(live, "/api/sagas?state=nope")[0] == 400
    assert http(live, "/nope")[0] == 404
    # Actions: JSON only (a cross-site form cannot send it), a reason to resolve, and the shard's own refusal.
    assert http(live, "/api/dead-letters/api-1/retry", {}, content_type="text/plain")[0] == 415
    status, err = http(live, "/api/dead-letters/api-1/resolve", {"reason": " "})
    assert status == 400 and "reason" in err["error"]
    status, err = http(live, "/api/dead-letters/api-1/retry", {})
    assert status == 409 and "FAILED_PRECONDITION" in err["error"]
    status, page = http(live, "/")
    assert status == 200 and "<title>" in page


def test_a_saga_of_another_type_is_found_by_type_and_key_with_its_definition_and_steps(
    live: LiveCluster, saga: saga_pb2_grpc.SagaCoordinatorStub, loyalty: Definition
) -> None:
    started = start_loyalty(live.router, place_request("loy-1"))
    assert started.state == saga_pb2.SAGA_STATE_SUCCEEDED, started
    status, one = http(live, f"/api/sagas/loy-1?type={LOYALTY_TYPE}")
    assert status == 200, one
    assert (one["saga_type"], one["key"], one["order_id"], one["state"]) == (LOYALTY_TYPE, "loy-1", "", "SUCCEEDED")
    assert one["definition"] == f"order_loyalty v1 · {loyalty.hash[:8]}" and one["definition_hash"] == loyalty.hash
    assert [(st["step"], st["kind"]) for st in one["steps"]] == [(s.id, s.kind.value) for s in loyalty.steps]
    assert {e["step"] for e in one["events"]} >= {"award_points"}
    # Another type's saga is not the order flow's: no order loy-1.
    assert http(live, "/api/sagas/loy-1")[0] == 404
    assert http(live, f"/api/sagas/loy-nope?type={LOYALTY_TYPE}")[0] == 404

    status, defs = http(live, "/api/definitions")
    assert status == 200 and defs["errors"] == {}
    rows = {d["name"]: d for d in defs["definitions"]}
    assert set(rows) == {"order", LOYALTY_TYPE}
    row = rows[LOYALTY_TYPE]
    assert (row["hash"], row["version"], row["active"], row["shards"]) == (loyalty.hash, "1", True, 2)
    assert row["step_ids"] == [s.id for s in loyalty.steps] and row["sagas"] >= 1
    assert rows["order"]["active"] and len(rows["order"]["step_ids"]) == 4

    summary = wait_for(
        lambda: (
            (s := http(live, "/api/summary")[1])
            and any(x["saga_type"] == LOYALTY_TYPE for x in s["latency"]["steps"])
            and s
        ),
        "the second type's step latencies",
    )
    assert ("loy-1", LOYALTY_TYPE) in {(x["key"], x["saga_type"]) for x in summary["recent"]}
    steps = {(x["saga_type"], x["step"], x["action"]) for x in summary["latency"]["steps"]}
    assert (LOYALTY_TYPE, "award_points", "forward") in steps and ("order", "create_order", "forward") in steps


AWARD_REFUSED = "graph-dlf-"
"""Loyalty sagas whose key starts so park past the pivot: the stubs refuse their points for good."""


def park_loyalty(live: LiveCluster, *keys: str) -> None:
    """Parks each loyalty saga on award_points (a retriable step past the pivot, refused for good)."""
    rule = control_pb2.FaultRule(
        method="AwardPoints", order_id_prefix=AWARD_REFUSED, error_rate=1.0, error_code="FAILED_PRECONDITION"
    )
    set_faults(live, rule)
    try:
        for key in keys:
            assert key.startswith(AWARD_REFUSED)
            assert start_loyalty(live.router, place_request(key)).state == saga_pb2.SAGA_STATE_DEAD_LETTERED
    finally:
        set_faults(live)


def test_a_definitions_graph_counts_its_live_sagas_at_their_steps(
    live: LiveCluster, saga: saga_pb2_grpc.SagaCoordinatorStub, loyalty: Definition
) -> None:
    park_loyalty(live, "graph-dlf-1", "graph-dlf-2")
    # A charge the payment service runs as a long-running operation (20 s): the saga is in flight at the pivot.
    start_loyalty(live.router, place_request("graph-wait", token="tok_lro-charge-20s"), no_wait=True)
    park(live, saga, "graph-order-dlq")  # an order parked by its refund: at process_payment, compensating for good

    path = f"/api/definitions/{loyalty.hash}/graph"
    graph = wait_for(
        lambda: (g := http(live, path)[1])["counts"]["process_payment"]["waiting"] == 1 and g,
        "the waiting loyalty saga counted at its pivot",
    )
    assert (graph["name"], graph["version"], graph["hash"]) == (LOYALTY_TYPE, "1", loyalty.hash)
    assert graph["label"] == f"order_loyalty v1 · {loyalty.hash[:8]}"
    nodes = {n["id"]: n for n in graph["nodes"]}
    assert [n["step"] for n in graph["nodes"] if n["type"] == "step"] == [s.id for s in loyalty.steps]
    assert [sid for sid, n in nodes.items() if n.get("pivot")] == ["step_process_payment"]
    assert nodes["step_award_points"]["retriable"] and "undo_award_points" not in nodes
    edges = {(e["from"], e["to"]): e for e in graph["edges"]}
    assert not edges[("step_process_payment", "step_award_points")]["dashed"]
    assert edges[("undo_reserve_inventory", "undo_create_order")]["dashed"]
    assert edges[("step_award_points", "parked")]["type"] == "park"
    counts = graph["counts"]
    assert list(counts) == [s.id for s in loyalty.steps]
    assert counts["award_points"] == {"in_flight": 0, "failed": 0, "compensating": 0, "parked": 2, "waiting": 0}
    assert counts["process_payment"] == {"in_flight": 1, "failed": 0, "compensating": 0, "parked": 0, "waiting": 1}
    assert sum(c[b] for c in counts.values() for b in ("in_flight", "failed", "compensating", "parked")) == 3
    assert (graph["bottleneck"], graph["bottleneck_rule"]) == (
        "process_payment",
        "the step with the most sagas in flight",
    )
    assert graph["complete"] and graph["errors"] == {} and graph["scanned"] >= 4

    # The order flow's version: its own sagas only (the parked order, at the step whose refund failed).
    order_hash = http(live, "/api/sagas/graph-order-dlq")[1]["definition_hash"]
    order = http(live, f"/api/definitions/{order_hash}/graph")[1]
    assert order["name"] == "order" and "award_points" not in order["counts"]
    assert order["counts"]["process_payment"]["parked"] >= 1
    assert http(live, f"/api/definitions/{'0' * 32}/graph")[0] == 404
    assert http(live, "/api/definitions/not-a-hash/graph")[0] == 404


def wait_for(check: Callable[[], Any], what: str, limit_s: float = 30.0) -> Any:
    """check()'s first truthy answer, polled; AssertionError naming `what` after limit_s (generous: busy machines)."""
    deadline = time.monotonic() + limit_s
    while not (answer := check()):
        assert time.monotonic() < deadline, f"{what} within {limit_s} s"
        time.sleep(0.1)
    return answer


def park(live: LiveCluster, saga: saga_pb2_grpc.SagaCoordinatorStub, *order_ids: str) -> None:
    """Dead-letters each order: shipping refuses its item, and its refunds fail until the fault is cleared here."""
    set_faults(
        live,
        *(
            control_pb2.FaultRule(method="RefundPayment", order_id_prefix=o, error_rate=1.0, error_code="INTERNAL")
            for o in order_ids
        ),
    )
    try:
        for order_id in order_ids:
            answer = saga.PlaceOrder(place_request(order_id, items=[("unshippable-x", 1)]), timeout=30)
            assert answer.state == saga_pb2.SAGA_STATE_DEAD_LETTERED
    finally:
        set_faults(live)


def started_after_retry(events: list[dict[str, Any]]) -> list[tuple[str, str, int]]:
    last = max(e["seq"] for e in events if e["kind"] == "admin_retry")
    return [(e["step"], e["action"], e["attempt"]) for e in events if e["seq"] > last and e["kind"] == "started"]


def test_dry_runs_show_the_plan_change_nothing_and_the_action_then_follows_it(
    live: LiveCluster, saga: saga_pb2_grpc.SagaCoordinatorStub
) -> None:
    park(live, saga, "api-dlq")
    before = http(live, "/api/sagas/api-dlq")[1]
    status, plan = http(live, "/api/dead-letters/api-dlq/retry", {"dry_run": True})
    assert status == 200 and plan["dry_run"] is True and plan["order_ids"] == ["api-dlq"]
    (preview,) = plan["previews"]
    assert (preview["saga_id"], preview["shard_id"]) == (before["saga_id"], before["shard_id"])
    assert (preview["state_now"], preview["end_state"]) == ("DEAD_LETTERED", "FAILED")
    sid = before["saga_id"]
    assert [(c["step"], c["method"], c["idempotency_key"], c["attempt"]) for c in preview["calls"]] == [
        ("process_payment", "/shop.v1.PaymentService/RefundPayment", f"{sid}/process_payment/compensate", 5),
        ("reserve_inventory", "/shop.v1.InventoryService/ReleaseInventory", f"{sid}/reserve_inventory/compensate", 1),
        ("create_order", "/shop.v1.OrderService/CancelOrder", f"{sid}/create_order/compensate", 1),
    ]
    status, looked = http(live, "/api/dead-letters/api-dlq/resolve", {"reason": "just looking", "dry_run": True})
    assert status == 200 and looked["saga"]["state"] == "DEAD_LETTERED"
    assert (looked["preview"]["end_state"], looked["preview"]["calls"]) == ("RESOLVED", [])
    assert http(live, "/api/sagas/api-dlq")[1]["events"] == before["events"]  # nothing was written
    # The shard's refusals come back for a dry run as for the action.
    assert saga.PlaceOrder(place_request("api-dry-ok"), timeout=30).status == saga_pb2.SUCCESS
    assert http(live, "/api/dead-letters/api-dry-ok/retry", {"dry_run": True})[0] == 409
    assert http(live, "/api/dead-letters/api-nope/retry", {"dry_run": True})[0] == 404

    assert http(live, "/api/dead-letters/api-dlq/retry", {})[0] == 200
    after = wait_for(
        lambda: (s := http(live, "/api/sagas/api-dlq")[1])["state"] == "FAILED" and s, "the retried saga compensated"
    )
    assert started_after_retry(after["events"]) == [(c["step"], c["action"], c["attempt"]) for c in preview["calls"]]


def test_a_step_waiting_on_a_service_is_shown(live: LiveCluster, saga: saga_pb2_grpc.SagaCoordinatorStub) -> None:
    # The stub accepts this charge as a long-running operation and finishes it 20 s later.
    saga.PlaceOrder(place_request("api-wait", token="tok_lro-charge-20s", no_wait=True), timeout=30)
    waiting = wait_for(
        lambda: [st for st in http(live, "/api/sagas/api-wait")[1]["steps"] if st["waiting"]], "a waiting step"
    )
    (st,) = waiting
    assert (st["step"], st["status"], st["waiting_action"]) == ("process_payment", "IN_FLIGHT", "forward")
    assert st["waiting_since"] <= st["next_poll_at"]
    assert saga.PlaceOrder(place_request("api-no-wait"), timeout=30).status == saga_pb2.SUCCESS
    assert not any(x["waiting"] or x["waiting_since"] for x in http(live, "/api/sagas/api-no-wait")[1]["steps"])
    events = http(live, "/api/sagas/api-wait")[1]["events"]
    accepted = next(e for e in events if e["kind"] == "accepted")
    assert accepted["step"] == "process_payment" and accepted["next_attempt_at"] > accepted["at"]
    assert http(live, "/api/summary")[1]["live_count"]["waiting"] >= 1
    polled = wait_for(
        lambda: [e for e in http(live, "/api/sagas/api-wait")[1]["events"] if e["kind"] == "polled"], "a poll"
    )
    assert polled[0]["code"] == "IN_PROGRESS" and polled[0]["next_attempt_at"] > polled[0]["at"]


def test_each_shards_journal_is_shown(live: LiveCluster, saga: saga_pb2_grpc.SagaCoordinatorStub) -> None:
    saga.PlaceOrder(place_request("journal-1"), timeout=30)
    deadline = time.monotonic() + 30
    while True:
        shards = http(live, "/api/summary")[1]["shards"]
        journals = {sh["id"]: sh["journal"] for sh in shards}
        # Every shard's figures arrive with its next scrape: wait for all of them, not the first.
        scraped = all("file_bytes" in j for j in journals.values())
        if (scraped and sum(j.get("rows.sagas", 0) for j in journals.values()) >= 1) or time.monotonic() > deadline:
            break
        time.sleep(0.5)
    assert set(journals) == set(live.shard_ids)
    for j in journals.values():
        assert j["file_bytes"] > 0 and "wal_bytes" in j and "rows.sagas" in j and "rows.saga_events" in j
    assert sum(j["rows.sagas"] for j in journals.values()) >= 1


def test_browser_side_defences(live: LiveCluster) -> None:
    # A page of another site cannot press the buttons (its Origin is not the dashboard's) ...
    status, err = http(live, "/api/dead-letters/x-1/retry", {}, headers={"Origin": "http://evil.example"})
    assert status == 403 and "origin" in err["error"]
    # ... nor reach the dashboard through a name it does not serve as (DNS rebinding).
    assert http(live, "/api/summary", headers={"Host": "evil.example"})[0] == 421
    with urllib.request.urlopen(live.dashboard_url, timeout=15) as r:
        csp = r.headers["Content-Security-Policy"]
        assert "frame-ancestors 'none'" in csp and "script-src 'sha256-" in csp and "unsafe-inline" not in csp
        assert r.headers["X-Frame-Options"] == "DENY"
    # Without a policy the router is in development mode: everyone is local-dev, an operator.
    status, me = http(live, "/api/whoami")
    assert status == 200 and me == {"signed_in": True, "name": "local-dev", "can_act": True, "auth": "development"}


def require_chromium() -> str:
    """Chromium's path; fails the test (or skips it, SAGA_ALLOW_MISSING_TOOLS=chromium) if it is not installed."""
    require_tool("chromium", CHROMIUM is not None, "chromium is not installed (Debian package chromium)")
    assert CHROMIUM is not None
    return CHROMIUM


def test_the_page_shows_orders_and_retries_a_dead_letter(
    live: LiveCluster, saga: saga_pb2_grpc.SagaCoordinatorStub, loyalty: Definition
) -> None:
    chromium = require_chromium()
    from playwright.sync_api import expect, sync_playwright

    # The page follows the cluster (polls every 1-2 s, each step a round trip to busy shards): generous waits.
    expect.set_options(timeout=EXPECT_TIMEOUT_MS)

    with sync_playwright() as p:
        browser = p.chromium.launch(executable_path=chromium, args=CHROMIUM_ARGS)
        try:
            page = browser.new_page(viewport={"width": 1400, "height": 1000})
            errors: list[str] = []
            page.on("pageerror", lambda e: errors.append(str(e)))
            page.goto(live.dashboard_url + "/")
            expect(page.locator("#shards [data-shard]")).to_have_count(2)

            for i in range(3):
                saga.PlaceOrder(place_request(f"web-{i}", token=SECRET_TOKEN), timeout=30)
            saga.PlaceOrder(place_request("web-declined", token="tok_declined"), timeout=30)
            recent = page.get_by_test_id("recent")
            for order_id in ("web-0", "web-1", "web-2"):
                expect(recent.locator(f'[data-saga="{order_id}"]')).to_contain_text("SUCCEEDED")
            expect(recent.locator('[data-saga="web-declined"]')).to_contain_text("FAILED")
            # Step latencies come from the shards' /metrics; every forward step has run by now.
            expect(
                page.get_by_test_id("latency").locator('[data-step="process_payment/forward"]').first
            ).to_be_visible()
            expect(recent.locator('[data-saga="web-0"]')).to_contain_text("order v1 · ")

            # A saga of the second type: its row names its type and definition version, its detail its steps by id
            # with their kinds (the pivot marked), and the Definitions panel the versions the shards hold.
            assert start_loyalty(live.router, place_request("web-loy")).state == saga_pb2.SAGA_STATE_SUCCEEDED
            label = f"order_loyalty v1 · {loyalty.hash[:8]}"
            loy_row = recent.locator(f'[data-saga="web-loy"][data-type="{LOYALTY_TYPE}"]')
            expect(loy_row).to_contain_text(label)
            expect(
                page.get_by_test_id("latency").locator(
                    f'[data-saga-type="{LOYALTY_TYPE}"][data-step="award_points/forward"]'
                )
            ).to_be_visible()
            definitions = page.get_by_test_id("definitions")
            loy_def = definitions.locator(f'[data-definition="{loyalty.hash}"]')
            expect(loy_def).to_contain_text("active")
            expect(loy_def).to_contain_text("create_order → reserve_inventory")
            loy_row.locator("a[data-order]").click()
            detail = page.get_by_test_id("detail")
            expect(detail.get_by_test_id("detail-type")).to_have_text(LOYALTY_TYPE)
            expect(detail.get_by_test_id("detail-definition")).to_contain_text(label)
            expect(detail.locator('tr[data-step="process_payment"]')).to_contain_text("◆ pivot")
            expect(detail.locator('tr[data-step="award_points"]')).to_contain_text("retriable")
            assert f"type={LOYALTY_TYPE}&key=web-loy" in page.url  # the page's address names the open saga
            page.locator("#d-close").click()
            # ... and an address naming a saga by type and key opens it.
            page.goto(live.dashboard_url + f"/?type={LOYALTY_TYPE}&key=web-loy")
            expect(detail.get_by_test_id("detail-definition")).to_contain_text(label)
            page.locator("#d-close").click()

            park(live, saga, "web-dlq", "web-dlq-resolve")
            saga_id = saga.GetSaga(saga_pb2.GetSagaRequest(order_id="web-dlq"), timeout=10).saga_id
            letters = page.get_by_test_id("dead-letters")
            row = letters.locator('[data-dead-letter="web-dlq"]')
            expect(row).to_contain_text("process_payment")
            # Retry first shows its dry run: the calls it would make, their keys, and where the saga would end.
            row.locator('[data-action="retry"]').click()
            dialog = page.get_by_test_id("confirm")
            expect(dialog).to_be_visible()
            expect(dialog).to_contain_text("Retry the compensation of web-dlq?")
            expect(dialog.get_by_test_id("plan-end")).to_contain_text("DEAD_LETTERED → FAILED")
            calls = dialog.get_by_test_id("plan-calls").locator("[data-call]")
            expect(calls).to_have_count(3)
            refund = calls.nth(0)
            expect(refund).to_contain_text(f"{saga_id}/process_payment/compensate")
            expect(refund).to_contain_text("repeats an earlier attempt")
            assert refund.get_attribute("data-call") == "/shop.v1.PaymentService/RefundPayment"
            planned = [
                (calls.nth(i).get_attribute("data-call"), calls.nth(i).locator("td").nth(5).inner_text())
                for i in range(3)
            ]
            dialog.get_by_test_id("confirm-cancel").click()  # Cancel: nothing happens
            expect(dialog).to_be_hidden()
            page.wait_for_timeout(500)
            expect(row).to_have_count(1)
            row.locator('[data-action="retry"]').click()
            expect(dialog.get_by_test_id("plan-calls").locator("[data-call]")).to_have_count(3)
            dialog.get_by_test_id("confirm-ok").click()
            expect(dialog).to_be_hidden()
            expect(row).to_have_count(0)  # no longer an open dead letter
            expect(page.locator("#toast")).to_contain_text("Retried web-dlq")
            # What the dialog showed is what the stubs then received: the same methods with the same keys.
            wait_for(lambda: http(live, "/api/sagas/web-dlq")[1]["state"] == "FAILED", "the retried saga compensated")
            made = compensation_keys(live, "web-dlq")
            assert {(method.rpartition("/")[2], key) for method, key in planned} == made

            other = letters.locator('[data-dead-letter="web-dlq-resolve"]')
            other.locator('[data-action="resolve"]').click()  # no reason yet: refused in the page
            expect(page.locator("#toast")).to_contain_text("needs a reason")
            expect(other).to_have_count(1)
            expect(dialog).to_be_hidden()
            other.locator('[data-reason="web-dlq-resolve"]').fill("refunded by hand in the PSP console")
            other.locator('[data-action="resolve"]').click()
            expect(dialog.get_by_test_id("plan-end")).to_contain_text("DEAD_LETTERED → RESOLVED")
            expect(dialog.get_by_test_id("plan-calls")).to_contain_text("No call to any service")
            dialog.get_by_test_id("confirm-ok").click()
            expect(other).to_have_count(0)
            expect(page.get_by_test_id("recent").locator('[data-saga="web-dlq-resolve"]')).to_contain_text("RESOLVED")

            # The detail view: its state after the retry, and the timeline with the failed refunds and the retry.
            recent.locator('a[data-order="web-dlq"]').click()
            expect(detail.get_by_test_id("detail-state")).to_have_text("FAILED")
            timeline = detail.get_by_test_id("timeline")
            expect(timeline).to_contain_text("admin_retry")
            expect(timeline).to_contain_text(re.compile(r"retrying process_payment compensate attempt 1 INTERNAL"))
            page.locator("#d-close").click()

            # A saga whose charge the payment service runs as a long-running operation: the detail shows the step
            # waiting, since when and the next poll, and the operation's events.
            saga.PlaceOrder(place_request("web-wait", token="tok_lro-charge-20s", no_wait=True), timeout=30)
            page.locator("#open-id").fill("web-wait")
            page.locator("#open-form button").click()
            waiting = detail.get_by_test_id("detail-waiting")
            expect(waiting).to_contain_text(
                re.compile(r"process_payment forward: accepted by the service .* ago; next poll (in|due)")
            )
            expect(detail.locator('tr[data-step="process_payment"]')).to_contain_text("IN_FLIGHT (waiting)")
            accepted = timeline.locator('li[data-kind="accepted"]')
            expect(accepted).to_contain_text(
                re.compile(r"accepted process_payment forward attempt 1 IN_PROGRESS · next poll \+")
            )
            expect(timeline.locator('li[data-kind="polled"]').first).to_contain_text("next poll +")
            page.locator("#d-close").click()
            expect(page.get_by_test_id("waiting-count")).to_be_visible()
            assert SECRET_TOKEN not in page.content()
            assert errors == []
        finally:
            browser.close()


def test_the_page_draws_a_definitions_graph_with_live_counts(live: LiveCluster, loyalty: Definition) -> None:
    chromium = require_chromium()
    from playwright.sync_api import expect, sync_playwright

    expect.set_options(timeout=EXPECT_TIMEOUT_MS)
    park_loyalty(live, "graph-dlf-web")
    start_loyalty(live.router, place_request("graph-web-wait", token="tok_lro-charge-20s"), no_wait=True)
    with sync_playwright() as p:
        browser = p.chromium.launch(executable_path=chromium, args=CHROMIUM_ARGS)
        try:
            page = browser.new_page(viewport={"width": 1400, "height": 1000})
            errors: list[str] = []
            page.on("pageerror", lambda e: errors.append(str(e)))
            page.goto(live.dashboard_url + "/")
            # Each version in Definitions links its graph; the graph marks the pivot and counts sagas at each step.
            page.get_by_test_id("definitions").locator(f'a[data-graph="{loyalty.hash}"]').click()
            panel = page.get_by_test_id("graph")
            expect(panel.get_by_test_id("graph-title")).to_have_text(f"order_loyalty v1 · {loyalty.hash[:8]}")
            pivot = panel.locator('[data-node="step_process_payment"]')
            expect(pivot).to_have_attribute("data-pivot", "true")
            expect(pivot).to_contain_text("◆ pivot")
            expect(panel.locator('[data-node="step_create_order"]')).to_have_attribute("data-pivot", "false")
            expect(panel.locator('[data-node="undo_create_order"]')).to_have_count(1)
            expect(panel.locator("line.edge.dashed").first).to_be_attached()
            parked = panel.locator('[data-node="step_award_points"] [data-count="parked"]')
            expect(parked).to_contain_text(re.compile(r"parked [1-9]"))
            # The waiting charge is in flight at the pivot: the bottleneck, by the rule the page states.
            expect(pivot).to_have_class(re.compile(r"\bbottleneck\b"))
            expect(pivot.get_by_test_id("bottleneck")).to_be_visible()
            expect(pivot.locator('[data-count="in_flight"]')).to_contain_text(re.compile(r"in flight [1-9]"))
            expect(panel.get_by_test_id("graph-note")).to_contain_text(
                "bottleneck: process_payment (the step with the most sagas in flight)"
            )

            # A saga's page names its version and links its graph.
            page.goto(live.dashboard_url + f"/?type={LOYALTY_TYPE}&key=graph-dlf-web")
            detail = page.get_by_test_id("detail")
            link = detail.get_by_test_id("detail-definition").locator(f'a[data-graph="{loyalty.hash}"]')
            expect(link).to_contain_text(f"order_loyalty v1 · {loyalty.hash[:8]}")
            link.click()
            expect(detail).to_be_hidden()
            expect(panel.locator(f'svg[data-hash="{loyalty.hash}"]')).to_be_visible()
            assert errors == []
        finally:
            browser.close()


def test_a_shard_down_is_named_and_the_other_shards_still_shown(
    live: LiveCluster, saga: saga_pb2_grpc.SagaCoordinatorStub
) -> None:
    """Last in the module: it kills a shard."""
    # Orders on both shards of its own: the browser test, which places some too, is skipped without Chromium.
    for i in range(8):
        assert saga.PlaceOrder(place_request(f"down-{i}"), timeout=30).status == saga_pb2.SUCCESS
    before = {(s["saga_type"], s["key"]): s["shard_id"] for s in http(live, "/api/summary")[1]["recent"]}
    assert set(before.values()) == set(live.shard_ids)
    live.kill("shard-2")
    deadline = time.monotonic() + 10
    while True:
        status, summary = http(live, "/api/summary")
        down = [s["id"] for s in summary["shards"] if s["up"] is False]
        if down == ["shard-2"] or time.monotonic() > deadline:
            break
        time.sleep(0.2)
    assert status == 200 and down == ["shard-2"]
    assert "shard shard-2" in summary["errors"] and "UNAVAILABLE" in summary["errors"]["shard shard-2"]
    # Recent is the newest 20: with shard-2's gone, older sagas of shard-1 may join those it showed before.
    shown = {(s["saga_type"], s["key"]): s["shard_id"] for s in summary["recent"]}
    assert set(shown.values()) == {"shard-1"}
    assert {o for o, sid in before.items() if sid == "shard-1"} <= set(shown)
