"""saga-defs plan and verify on the command line: text and --json, and the exit status (0 ran / nothing found, 1 the
file has problems or verify found a violation, 2 the command could not run); check and schema unchanged under the
console script, which now points at coordinator.tools.cli."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import pytest

from coordinator.tools.cli import main

ROOT = Path(__file__).resolve().parents[3]
ORDER = ROOT / "common" / "definitions" / "shipped" / "order.yaml"
LOYALTY = ROOT / "docs" / "definitions" / "order_loyalty.yaml"
SEEDED = ROOT / "tests" / "definitions" / "seeded"
CONSOLE_SCRIPT = Path(sys.executable).parent / "saga-defs"


def test_plan_prints_every_call_and_the_end(capsys: pytest.CaptureFixture[str]) -> None:
    assert main(["plan", str(ORDER), "--fail-at", "process_payment=rejected"]) == 0
    out = capsys.readouterr().out
    assert "failing: process_payment=rejected" in out
    assert out.index("CreateOrder") < out.index("ReleaseInventory") < out.index("CancelOrder")
    assert '"payment_token": "***"' in out
    assert out.rstrip().splitlines()[-1].startswith("end: FAILED")


def test_plan_json(capsys: pytest.CaptureFixture[str]) -> None:
    given = {
        "order_id": "o-7",
        "user_id": "u-7",
        "items": [{"item_id": "sku", "quantity": 2}],
        "payment_info": {"payment_token": "tok_visa_4242", "amount_cents": 500, "currency": "EUR"},
    }
    argv = ["plan", str(LOYALTY), "--input", json.dumps(given), "--fail-at", "award_points=timeout", "--json"]
    assert main(argv) == 0
    out = capsys.readouterr().out
    data = json.loads(out)
    assert data["end_state"] == "DEAD_LETTERED" and data["name"] == "order_loyalty"
    assert "tok_visa_4242" not in out
    assert not [c for c in data["calls"] if c["action"] == "compensate"]
    first = data["calls"][0]
    assert first["step"] == "create_order" and first["request"]["order_id"] == "o-7"
    assert first["idempotency_key"] == f"{data['saga_id']}/create_order/forward" and first["attempt"] == 1


def test_verify_text_and_json(capsys: pytest.CaptureFixture[str]) -> None:
    assert main(["verify", str(ORDER)]) == 0
    assert "verify: ok, no violation in 24 runs" in capsys.readouterr().out
    assert main(["verify", str(SEEDED / "compensation-names-saga-id.yaml"), "--json"]) == 1
    data = json.loads(capsys.readouterr().out)
    assert data["ok"] is False and data["violations"]
    cell = next(c for c in data["cells"] if c["step"] == "process_payment" and c["outcome"] == "rejected")
    assert cell["state"] == "FAILED" and not cell["ok"] and "tombstoned" in cell["violations"][0]


def test_a_definition_with_problems_exits_1_and_bad_arguments_2(capsys: pytest.CaptureFixture[str]) -> None:
    broken = ROOT / "tests" / "definitions" / "broken" / "step.duplicate-id.yaml"
    assert main(["verify", str(broken)]) == 1
    assert "step.duplicate-id" in capsys.readouterr().out
    assert main(["plan", str(ORDER), "--fail-at", "charge=rejected"]) == 2
    assert "has no step 'charge'" in capsys.readouterr().err
    assert main(["plan", str(ORDER), "--fail-at", "process_payment=late"]) == 2
    assert main(["plan", str(ORDER), "--input", "{not json"]) == 2
    assert "--input is not a saga.v1.PlaceOrderRequest" in capsys.readouterr().err
    assert main(["plan", str(ORDER), "--input", '{"order_id": "o-1"}']) == 2  # the shard refuses it
    assert "user_id" in capsys.readouterr().err
    assert main(["verify", str(ROOT / "no-such.yaml")]) == 2


def test_check_and_schema_still_answer(capsys: pytest.CaptureFixture[str]) -> None:
    assert main(["check", str(ORDER)]) == 0
    assert "order version 1 hash" in capsys.readouterr().out
    assert main(["schema"]) == 0
    assert json.loads(capsys.readouterr().out)["$schema"]


def test_the_console_script_runs_plan() -> None:
    run = subprocess.run(
        [CONSOLE_SCRIPT, "plan", ORDER, "--fail-at", "create_order=rejected", "--json"],
        capture_output=True,
        text=True,
        timeout=60,
    )
    assert run.returncode == 0, run.stderr
    assert json.loads(run.stdout)["end_state"] == "FAILED"


def test_then_follows_its_fail_at(capsys: pytest.CaptureFixture[str]) -> None:
    args = ["plan", str(ORDER), "--fail-at", "process_payment=unknown", "--then", "ok", "--json"]
    assert main(args) == 0
    assert json.loads(capsys.readouterr().out)["then"] == {"process_payment": ["ok"]}
    assert main(["plan", str(ORDER), "--then", "ok"]) == 2
    assert "comes after a --fail-at" in capsys.readouterr().err
    assert main(["plan", str(ORDER), "--fail-at", "create_order=rejected", "--then", "soon"]) == 2
    assert "no outcome 'soon'" in capsys.readouterr().err
