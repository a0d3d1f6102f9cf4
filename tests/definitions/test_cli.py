"""saga-defs as users run it (python -m and the console script, in a process of its own): what it prints, --json,
exit codes, --descriptor-set and --reflect, against the stub services and against a server of a service that is
not in the repo."""

from __future__ import annotations

import asyncio
import json
import subprocess
import sys
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from pathlib import Path
from typing import Any

import grpc
import pytest
import yaml
from grpc_reflection.v1alpha import reflection

from common.definitions import check, reflect
from tests.definitions.conftest import (
    BROKEN,
    LOYALTY_PROTO,
    ORDER,
    compile_proto,
    loyalty_doc,
    pool_of,
    read_set,
    saga_defs,
)
from tests.helpers.stubs import running_stubs

CONSOLE_SCRIPT = Path(sys.executable).parent / "saga-defs"


async def saga_defs_async(*args: str | Path) -> subprocess.CompletedProcess[str]:
    """From a test whose event loop serves the server the command talks to."""
    return await asyncio.to_thread(saga_defs, *args)


def write(path: Path, doc: dict[str, Any]) -> Path:
    path.write_text(yaml.safe_dump(doc, sort_keys=False))
    return path


@pytest.fixture(scope="module")
def loyalty_set(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return compile_proto(tmp_path_factory.mktemp("protos"), "loyalty/v1/loyalty.proto", LOYALTY_PROTO)


def test_a_clean_file_prints_its_name_version_hash_and_steps() -> None:
    run = saga_defs("check", ORDER)
    assert run.returncode == 0, run.stderr
    lines = run.stdout.splitlines()
    assert lines[0] == f"{ORDER}: order version 1 hash {check.order_flow().hash}"
    assert lines[1].split() == [
        "1",
        "create_order",
        "compensable",
        "shop.v1.OrderService/CreateOrder",
        "undo",
        "shop.v1.OrderService/CancelOrder",
    ]
    assert len(lines) == 5


def test_every_problem_of_every_file_one_a_line() -> None:
    dup, syntax = BROKEN / "step.duplicate-id.yaml", BROKEN / "file.syntax.yaml"
    run = saga_defs("check", ORDER, dup, syntax)
    assert run.returncode == 1
    problems = [line for line in run.stdout.splitlines() if line.startswith(str(BROKEN))]
    assert len(problems) == 2
    assert problems[0].startswith(f"{dup}:/steps/1/id: step.duplicate-id: 'create_order' is already the id of step 1")
    assert problems[1].startswith(f"{syntax}:/: file.syntax: not YAML or JSON (line ")
    assert f"{ORDER}: order version 1" in run.stdout  # the clean file is still shown
    assert "2 problem(s) in 2 of 3 file(s)" in run.stderr


def test_a_hint_follows_its_problem() -> None:
    run = saga_defs("check", BROKEN / "method.unknown-method.yaml")
    assert run.returncode == 1
    assert run.stdout.strip().endswith("(hint: its methods: ChargePayment, RefundPayment, GetOperation)"), run.stdout


def test_json_lists_every_file() -> None:
    run = saga_defs("check", "--json", ORDER, BROKEN / "pivot.more-than-one.yaml")
    assert run.returncode == 1
    clean, broken = json.loads(run.stdout)
    assert clean["file"] == str(ORDER)
    assert (clean["ok"], clean["name"], clean["version"], clean["hash"]) == (
        True,
        "order",
        "1",
        check.order_flow().hash,
    )
    assert clean["problems"] == []
    assert [s["id"] for s in clean["steps"]][-1] == "schedule_shipment"
    assert (broken["ok"], broken["name"], broken["hash"]) == (False, "order", None)
    assert broken["problems"] == [
        {
            "code": "pivot.more-than-one",
            "path": "/steps/3/kind",
            "message": "a second pivot (the first is process_payment)",
            "hint": "a saga has one point of no return: mark the others compensable or retriable",
        }
    ]


def test_an_unreadable_file_is_a_problem_of_its_own(tmp_path: Path) -> None:
    missing = tmp_path / "missing.yaml"
    run = saga_defs("check", "--json", missing)
    assert run.returncode == 1
    [entry] = json.loads(run.stdout)
    assert [(p["code"], p["path"]) for p in entry["problems"]] == [("file.unreadable", "")]
    assert entry["name"] is None


def test_a_descriptor_set_brings_a_service_from_outside_the_repo(tmp_path: Path, loyalty_set: Path) -> None:
    definition = write(tmp_path / "loyalty.yaml", loyalty_doc())
    without = saga_defs("check", "--json", definition)
    assert without.returncode == 1
    [entry] = json.loads(without.stdout)
    assert [(p["code"], p["path"]) for p in entry["problems"]] == [("method.unknown-service", "/steps/4/call/method")]
    run = saga_defs("check", definition, "--descriptor-set", loyalty_set)
    assert run.returncode == 0, run.stdout + run.stderr
    assert "award_points" in run.stdout and "retriable" in run.stdout


def test_a_descriptor_set_that_cannot_be_read_stops_the_command(tmp_path: Path) -> None:
    bad = tmp_path / "bad.binpb"
    bad.write_bytes(b"\xff\xff not protobuf")
    run = saga_defs("check", ORDER, "--descriptor-set", bad)
    assert run.returncode == 2
    assert f"saga-defs: {bad}: not a FileDescriptorSet" in run.stderr


async def test_reflect_reads_the_stub_services(tmp_path: Path) -> None:
    async with running_stubs(tmp_path / "stubs") as stubs:
        files, unknown = await asyncio.to_thread(
            reflect.fetch, stubs.address, ["shop.v1.PaymentService", "saga.v1.PlaceOrderRequest", "no.such.Service"]
        )
        names = {f.name for f in files}
        # The files defining the symbols and every file they import, asked for by name when not sent along.
        assert {"protos/shop/v1/payment.proto", "protos/shop/v1/common.proto", "google/protobuf/any.proto"} <= names
        assert any(f.package == "saga.v1" for f in files)
        assert unknown == ["no.such.Service"]
        run = await saga_defs_async("check", ORDER, "--reflect", stubs.address)
    assert run.returncode == 0, run.stdout + run.stderr


@asynccontextmanager
async def reflection_only_server(descriptor_set: Path, services: list[str]) -> AsyncIterator[str]:
    """A server that serves nothing but reflection over types this process never imported."""
    server = grpc.aio.server()
    pool = pool_of(read_set(descriptor_set))
    reflection.enable_server_reflection([*services, reflection.SERVICE_NAME], server, pool=pool)
    port = server.add_insecure_port("127.0.0.1:0")
    await server.start()
    try:
        yield f"127.0.0.1:{port}"
    finally:
        await server.stop(0)


async def test_reflect_brings_a_service_from_outside_the_repo(tmp_path: Path, loyalty_set: Path) -> None:
    definition = write(tmp_path / "loyalty.yaml", loyalty_doc())
    async with reflection_only_server(loyalty_set, ["loyalty.v1.LoyaltyService"]) as address:
        run = await saga_defs_async("check", "--json", definition, "--reflect", address)
    assert run.returncode == 0, run.stdout + run.stderr
    [entry] = json.loads(run.stdout)
    assert entry["steps"][-1] == {
        "number": 5,
        "id": "award_points",
        "kind": "retriable",
        "method": "loyalty.v1.LoyaltyService/AwardPoints",
        "compensation": None,
    }
    # The same types from a descriptor set: the same definition.
    from_set = saga_defs("check", "--json", definition, "--descriptor-set", loyalty_set)
    assert json.loads(from_set.stdout)[0]["hash"] == entry["hash"]


def test_reflect_to_a_server_that_does_not_answer_stops_the_command() -> None:
    run = saga_defs("check", ORDER, "--reflect", "127.0.0.1:1")
    assert run.returncode == 2
    assert "saga-defs: 127.0.0.1:1: server reflection: UNAVAILABLE" in run.stderr


def test_schema_prints_the_published_json_schema() -> None:
    run = subprocess.run([CONSOLE_SCRIPT, "schema"], capture_output=True, text=True, timeout=60)
    assert run.returncode == 0, run.stderr
    assert json.loads(run.stdout) == check.schema()


def test_usage_errors_exit_2() -> None:
    assert saga_defs().returncode == 2
    assert saga_defs("check").returncode == 2
