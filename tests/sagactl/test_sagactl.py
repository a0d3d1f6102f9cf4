"""sagactl as an operator runs it: a subprocess against a real cluster (stubs, two shards, router as processes),
checking what it prints, its JSON, and the exit codes scripts rely on. One cluster for the module."""

from __future__ import annotations

import asyncio
import json
import os
import subprocess
import sys
import time
from collections.abc import Iterator
from pathlib import Path

import grpc
import pytest

from protos.service_stubs.v1 import control_pb2, control_pb2_grpc
from tests.helpers.live_cluster import LiveCluster
from tests.helpers.loyalty import LOYALTY_TYPE, commit_loyalty
from tests.helpers.net import free_port
from tests.helpers.tcp_proxy import Mode, TcpProxy

REPO = Path(__file__).parents[2]


@pytest.fixture(scope="module")
def live(tmp_path_factory: pytest.TempPathFactory) -> Iterator[LiveCluster]:
    with LiveCluster(tmp_path_factory.mktemp("ctl"), shards=2, dashboard=False) as c:
        yield c


def ctl(live: LiveCluster | None, *args: str, router: str | None = None) -> subprocess.CompletedProcess[str]:
    env = {**os.environ, "SAGA_ROUTER": router or (live.router if live else "")}
    proc = subprocess.run(
        [sys.executable, "-m", "sagactl", *args], cwd=REPO, env=env, capture_output=True, text=True, timeout=60
    )
    assert "Traceback" not in proc.stderr, proc.stderr
    return proc


def set_faults(live: LiveCluster, *rules: control_pb2.FaultRule) -> None:
    with grpc.insecure_channel(live.stubs) as channel:
        control = control_pb2_grpc.StubControlStub(channel)
        if rules:
            control.SetFaults(control_pb2.SetFaultsRequest(rules=rules, seed=1), timeout=10)
        else:
            control.ClearFaults(control_pb2.ClearFaultsRequest(), timeout=10)


def loyalty_input(key: str) -> str:
    return json.dumps(
        {
            "order_id": key,
            "user_id": "u-1",
            "items": [{"item_id": "sku-1", "quantity": 1}],
            "payment_info": {"payment_token": "tok_ok", "amount_cents": 1000, "currency": "EUR"},
        }
    )


def test_sagas_of_another_type_by_type_and_key(live: LiveCluster) -> None:
    loyalty = commit_loyalty(live.system)
    label = f"order_loyalty v1 · {loyalty.hash[:8]}"
    by_type = ("--type", LOYALTY_TYPE, "--key", "ctl-loy-1")
    started = ctl(live, "start", *by_type, "--input-json", loyalty_input("ctl-loy-1"))
    assert started.returncode == 0, started.stderr
    assert "order_loyalty/ctl-loy-1: SUCCEEDED" in started.stdout and label in started.stdout

    human = ctl(live, "get", *by_type)
    assert human.returncode == 0 and label in human.stdout
    assert "pivot *" in human.stdout and "retriable" in human.stdout and "award_points" in human.stdout
    saga = json.loads(ctl(live, "get", *by_type, "--events", "--json").stdout)
    assert (saga["saga_type"], saga["key"], saga["definition_hash"]) == (LOYALTY_TYPE, "ctl-loy-1", loyalty.hash)
    assert [st["step_id"] for st in saga["steps"]] == [s.id for s in loyalty.steps]
    watched = ctl(live, "watch", *by_type)
    assert watched.returncode == 0 and "order_loyalty/ctl-loy-1: SUCCEEDED" in watched.stdout
    listed = ctl(live, "list")
    assert "order_loyalty/ctl-loy-1" in listed.stdout and label in listed.stdout
    assert ctl(live, "get", "ctl-loy-1").returncode == 4  # an order id names the order flow's saga: none

    # The input type named instead of learnt from ListDefinitions; and what is refused before any call.
    typed = ("--input-type", "saga.v1.PlaceOrderRequest", "--input-json", loyalty_input("ctl-loy-2"))
    assert ctl(live, "start", "--type", LOYALTY_TYPE, "--key", "ctl-loy-2", *typed).returncode == 0
    assert ctl(live, "get", "ctl-loy-1", "--key", "ctl-loy-1").returncode == 2
    assert ctl(live, "get").returncode == 2
    bad = ctl(live, "start", *by_type, "--input-json", '{"no_such_field": 1}')
    assert bad.returncode == 2 and "--input-json" in bad.stderr
    unknown = ctl(live, "start", *by_type, "--input-type", "x.v1.Nope", "--input-json", "{}")
    assert unknown.returncode == 2 and "--input-type" in unknown.stderr
    assert ctl(live, "start", "--type", "nope", "--key", "k", "--input-json", "{}").returncode == 2

    # A saga parked past its pivot: listed with its type, step and action; a retry would resume it forward.
    set_faults(
        live,
        control_pb2.FaultRule(
            method="AwardPoints", order_id_prefix="ctl-dlf-", error_rate=1.0, error_code="FAILED_PRECONDITION"
        ),
    )
    try:
        by_type = ("--type", LOYALTY_TYPE, "--key", "ctl-dlf-1")
        parked = ctl(live, "start", *by_type, "--input-json", loyalty_input("ctl-dlf-1"))
        assert parked.returncode == 1 and "DEAD_LETTERED" in parked.stdout
        letters = ctl(live, "dlq", "list").stdout
        (row,) = [line for line in letters.splitlines() if line.startswith("ctl-dlf-1 ")]
        assert row.split()[:4] == ["ctl-dlf-1", LOYALTY_TYPE, "award_points", "forward"]
        plan = ctl(live, "dlq", "retry", *by_type, "--dry-run")
        assert plan.returncode == 0 and "this would resume 1 saga(s)" in plan.stdout
        assert "order_loyalty/ctl-dlf-1" in plan.stdout and "award_points  forward" in plan.stdout
        resolved = ctl(live, "dlq", "resolve", *by_type, "--reason", "points by hand")
        assert resolved.returncode == 0 and "order_loyalty/ctl-dlf-1: RESOLVED" in resolved.stdout
    finally:
        set_faults(live)


def test_place_get_and_list(live: LiveCluster) -> None:
    ok = ctl(live, "place", "ctl-ok", "--item", "sku-1=2", "--item", "sku-2=1", "--token", "tok_ok_Secret42")
    assert ok.returncode == 0 and "ctl-ok: SUCCESS" in ok.stdout
    declined = ctl(live, "place", "ctl-declined", "--token", "tok_declined", "--json")
    assert declined.returncode == 1
    assert json.loads(declined.stdout)["status"] == "FAILED"

    got = ctl(live, "get", "ctl-ok", "--events", "--json")
    assert got.returncode == 0
    saga = json.loads(got.stdout)
    assert saga["state"] == "SAGA_STATE_SUCCEEDED" and len(saga["events"]) >= 9
    assert "tok_ok_Secret42" not in got.stdout and "payment_info" not in got.stdout
    human = ctl(live, "get", "ctl-ok")
    assert "SUCCEEDED" in human.stdout and "schedule_shipment" in human.stdout

    failed = json.loads(ctl(live, "list", "--state", "failed", "--json").stdout)
    assert [s["order_id"] for s in failed["sagas"]] == ["ctl-declined"]
    # States as the API spells them work too.
    assert json.loads(ctl(live, "list", "--state", "FAILED", "--json").stdout) == failed
    # A reader that leaves early (`sagactl get ... | head -1`) is not an error: the pipe is closed before sagactl
    # has its answer, so its first write finds no reader.
    proc = subprocess.Popen(
        [sys.executable, "-m", "sagactl", "get", "ctl-ok", "--events"],
        cwd=REPO,
        env={**os.environ, "SAGA_ROUTER": live.router},
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
    )
    assert proc.stdout is not None and proc.stderr is not None
    proc.stdout.close()
    assert proc.wait(timeout=60) == 0
    assert proc.stderr.read() == b""
    table = ctl(live, "list", "--page-size", "1")
    assert table.returncode == 0 and table.stdout.splitlines()[0].split()[:3] == ["SAGA", "DEFINITION", "STATE"]
    assert len(table.stdout.splitlines()) == 2 and "more" in table.stderr


def test_exit_codes_for_bad_input_missing_sagas_and_a_router_that_is_down(live: LiveCluster) -> None:
    missing = ctl(live, "get", "ctl-nope")
    assert missing.returncode == 4 and "NOT_FOUND" in missing.stderr
    assert ctl(live, "place", "--item", "no-quantity").returncode == 2
    server_says_invalid = ctl(live, "place", "ctl-bad", "--user", "")
    assert server_says_invalid.returncode == 2 and "user_id" in server_says_invalid.stderr
    assert ctl(live, "list", "--page-size", "0").returncode == 2
    assert ctl(live, "dlq", "resolve", "ctl-ok").returncode == 2  # --reason is required
    assert ctl(live, "bogus").returncode == 2
    down = ctl(None, "list", router=f"127.0.0.1:{free_port()}")
    assert down.returncode == 3 and "cannot reach the router" in down.stderr and "SAGA_ROUTER" in down.stderr
    down_json = ctl(None, "get", "x", "--json", router=f"127.0.0.1:{free_port()}")
    assert down_json.returncode == 3 and json.loads(down_json.stderr)["exit_code"] == 3


async def test_retry_only_when_asked_and_then_through_a_router_that_comes_back(live: LiveCluster) -> None:
    proxy = TcpProxy(live.router)  # the router as sagactl sees it: refusing connections until set to PASS
    await proxy.start()
    try:
        proxy.set_mode(Mode.DROP)
        once = await asyncio.to_thread(ctl, live, "place", "ctl-retry-0", router=proxy.address)
        assert once.returncode == 3 and "cannot reach the router" in once.stderr  # no retry by default

        placing = await asyncio.create_subprocess_exec(
            sys.executable, "-m", "sagactl", "place", "ctl-retry-1", "--retry", "--json", cwd=REPO,
            env={**os.environ, "SAGA_ROUTER": proxy.address}, stdout=asyncio.subprocess.PIPE,
            stderr=asyncio.subprocess.PIPE,
        )  # fmt: skip
        refused_before = proxy.stats["dropped"]
        deadline = time.monotonic() + 30
        while proxy.stats["dropped"] < refused_before + 2:  # its first call refused, and it tried again
            assert time.monotonic() < deadline and placing.returncode is None, "sagactl --retry did not try again"
            await asyncio.sleep(0.05)
        proxy.set_mode(Mode.PASS)
        out, err = await asyncio.wait_for(placing.communicate(), timeout=60)
        assert placing.returncode == 0, err.decode()
        assert json.loads(out)["status"] == "SUCCESS"
    finally:
        await proxy.stop()


def test_watch_follows_a_saga_to_its_end(live: LiveCluster) -> None:
    placed = ctl(live, "place", "ctl-watch", "--no-wait", "--json", "--token", "tok_slow")  # payment waits 2 s
    assert placed.returncode == 0 and json.loads(placed.stdout)["status"] == "PENDING"
    watched = ctl(live, "watch", "ctl-watch")
    assert watched.returncode == 0
    assert "succeeded" in watched.stdout and watched.stdout.strip().endswith("ctl-watch: SUCCEEDED")
    lines = ctl(live, "watch", "ctl-declined", "--json").stdout.splitlines()
    assert json.loads(lines[-1])["saga"]["state"] == "SAGA_STATE_FAILED"


def test_dead_letters_listed_retried_and_resolved(live: LiveCluster) -> None:
    set_faults(
        live,
        control_pb2.FaultRule(method="RefundPayment", order_id_prefix="ctl-dlq", error_rate=1.0, error_code="INTERNAL"),
    )
    try:
        for order_id in ("ctl-dlq-1", "ctl-dlq-2"):
            parked = ctl(live, "place", order_id, "--item", "unshippable-x=1", "--json")
            assert parked.returncode == 1 and json.loads(parked.stdout)["state"] == "SAGA_STATE_DEAD_LETTERED"
        letters = json.loads(ctl(live, "dlq", "list", "--json").stdout)["dead_letters"]
        assert {d["order_id"] for d in letters} == {"ctl-dlq-1", "ctl-dlq-2"}
        table = ctl(live, "dlq", "list", "--step", "process_payment")
        assert "ctl-dlq-1" in table.stdout and "INTERNAL" in table.stdout
    finally:
        set_faults(live)

    # Dry runs first: each prints its plan, exits 0, and changes nothing.
    letters_before = json.loads(ctl(live, "dlq", "list", "--json").stdout)
    events_before = json.loads(ctl(live, "get", "ctl-dlq-1", "--events", "--json").stdout)["events"]
    saga_id = json.loads(ctl(live, "get", "ctl-dlq-1", "--json").stdout)["saga_id"]
    plan = ctl(live, "dlq", "retry", "ctl-dlq-1", "--dry-run")
    assert plan.returncode == 0, plan.stderr
    lines = plan.stdout.splitlines()
    assert lines[0].startswith("dry run, nothing was changed")
    assert "ctl-dlq-1 (saga" in plan.stdout and "DEAD_LETTERED -> FAILED, 3 calls" in plan.stdout
    refund = next(line for line in lines if "RefundPayment" in line)
    assert f"{saga_id}/process_payment/compensate" in refund and "repeats an earlier attempt" in refund
    assert (
        "/shop.v1.InventoryService/ReleaseInventory" in plan.stdout
        and "/shop.v1.OrderService/CancelOrder" in plan.stdout
    )
    planned = json.loads(ctl(live, "dlq", "retry", "ctl-dlq-1", "--dry-run", "--json").stdout)
    assert planned["dry_run"] is True and planned["order_ids"] == ["ctl-dlq-1"]
    (preview,) = planned["previews"]
    assert preview["end_state"] == "SAGA_STATE_FAILED" and preview["calls"][0]["attempt"] == 5  # 4 attempts parked it
    assert [c["idempotency_key"] for c in preview["calls"]] == [
        f"{saga_id}/process_payment/compensate",
        f"{saga_id}/reserve_inventory/compensate",
        f"{saga_id}/create_order/compensate",
    ]
    every = json.loads(ctl(live, "dlq", "retry", "--all", "--dry-run", "--json").stdout)
    assert sorted(every["order_ids"]) == ["ctl-dlq-1", "ctl-dlq-2"] and len(every["previews"]) == 2
    assert "this would resume compensation of 2 saga(s)" in ctl(live, "dlq", "retry", "--all", "--dry-run").stdout
    looked = ctl(live, "dlq", "resolve", "ctl-dlq-2", "--reason", "just looking", "--dry-run")
    assert looked.returncode == 0 and "DEAD_LETTERED -> RESOLVED, no calls to any service" in looked.stdout
    assert ctl(live, "place", "ctl-dry-ok").returncode == 0
    assert ctl(live, "dlq", "retry", "ctl-dry-ok", "--dry-run").returncode == 5  # refused as the real call would be
    assert ctl(live, "dlq", "retry", "ctl-nope", "--dry-run").returncode == 4
    assert json.loads(ctl(live, "dlq", "list", "--json").stdout) == letters_before
    assert json.loads(ctl(live, "get", "ctl-dlq-1", "--events", "--json").stdout)["events"] == events_before

    retried = ctl(live, "dlq", "retry", "ctl-dlq-1", "--reason", "refunds work again")
    assert retried.returncode == 0 and "ctl-dlq-1" in retried.stdout
    deadline = time.monotonic() + 15
    while json.loads(ctl(live, "get", "ctl-dlq-1", "--json").stdout)["state"] != "SAGA_STATE_FAILED":
        assert time.monotonic() < deadline, "retried saga did not finish compensating"
        time.sleep(0.2)
    assert ctl(live, "dlq", "retry", "ctl-dlq-1").returncode == 5  # no longer dead-lettered: refused

    resolved = ctl(live, "dlq", "resolve", "ctl-dlq-2", "--reason", "refunded by hand in the PSP console")
    assert resolved.returncode == 0 and "RESOLVED" in resolved.stdout
    assert json.loads(ctl(live, "dlq", "list", "--json").stdout)["dead_letters"] == []


def test_top_shows_in_flight_sagas_and_step_latencies(live: LiveCluster) -> None:
    frame = ctl(live, "top", "--once", "--json")
    assert frame.returncode == 0
    data = json.loads(frame.stdout)
    assert set(data["in_flight"]) == {"running", "compensating"}
    assert {s["step"] for s in data["steps"]} >= {"create_order", "process_payment"}
    text = ctl(live, "top", "--once").stdout
    assert "STEP (FORWARD)" in text and "P99" in text and "dead letters open" in text


def test_journals_shows_each_shards_journal_from_its_metrics(live: LiveCluster) -> None:
    assert ctl(live, "place", "j-1").returncode == 0
    shards_file = str(live.system.router_config)
    table = ctl(live, "journals", "--shards-file", shards_file)
    assert table.returncode == 0, table.stderr
    lines = table.stdout.splitlines()
    assert lines[0].split()[:3] == ["SHARD", "FILE", "WAL"]
    assert {line.split()[0] for line in lines[1:]} == {"shard-1", "shard-2"}
    assert "not replicated" in table.stdout  # this cluster runs no Litestream
    data = json.loads(ctl(live, "journals", "--shards-file", shards_file, "--json").stdout)
    assert sum(j["rows.sagas"] for j in data.values()) >= 1
    down = ctl(live, "journals", "--metrics", f"127.0.0.1:{free_port()}")
    assert down.returncode == 3 and "unreachable" in down.stdout
    assert ctl(live, "journals").returncode == 2  # neither --metrics nor --shards-file


def test_defs_list_shows_every_version_the_shards_hold(live: LiveCluster) -> None:
    table = ctl(live, "defs", "list")
    assert table.returncode == 0, table.stderr
    header, *rows = table.stdout.splitlines()
    assert header.split() == ["TYPE", "VERSION", "HASH", "ACTIVE", "SAGAS"]
    assert rows and rows[0].split()[:4][0] == "order" and "yes" in rows[0].split()
    as_json = ctl(live, "defs", "list", "--json")
    assert as_json.returncode == 0, as_json.stderr
    (order,) = [d for d in json.loads(as_json.stdout)["definitions"] if d["name"] == "order"]
    assert order["active"] and len(order["hash"]) == 32 and order["step_ids"][0] == "create_order"
