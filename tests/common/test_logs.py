"""common.logs: tracebacks never show variable values, and context fields reach every line of their block only."""

from __future__ import annotations

import asyncio
import io
import json
import sys
from collections.abc import Iterator

import pytest
from loguru import logger

from common import logs

SECRET = "tok_live_4242424242424242"


@pytest.fixture(autouse=True)
def _restore_loguru() -> Iterator[None]:
    yield
    logger.remove()
    logger.configure(patcher=None, extra={})
    logger.add(sys.stderr)


def _charge(payment_token: str, raw_request: bytes) -> None:
    if b"amount=" not in raw_request:  # a frame holding the token and the raw request bytes
        raise ValueError("no amount in the request")


def _log_failure() -> None:
    payment_token = SECRET
    raw_request = f"token={payment_token}".encode()
    try:
        _charge(payment_token, raw_request)
    except ValueError:
        logger.exception("charge failed")


@pytest.mark.parametrize("json_lines", [False, True], ids=["text", "json"])
def test_a_logged_traceback_shows_code_but_no_variable_values(json_lines: bool) -> None:
    out = io.StringIO()
    logs.setup("stubs", json_lines=json_lines, level="DEBUG", sink=out)
    _log_failure()
    text = out.getvalue()
    assert "charge failed" in text and "Traceback" in text and "ValueError" in text, text
    assert "_charge(payment_token, raw_request)" in text  # the code is shown...
    assert SECRET not in text, text  # ...the values are not (diagnose=False)
    assert "└" not in text  # loguru's variable annotations


def test_text_lines_carry_the_process_and_the_context_fields() -> None:
    out = io.StringIO()
    logs.setup("shard-1", sink=out)
    logger.info("outside")
    with logs.context_fields({"saga_id": "s-1", "order_id": "o-1"}):
        assert logs.add_context_fields({"step": "reserve_inventory"})
        logger.info("inside")
    logger.info("after")
    outside, inside, after = out.getvalue().splitlines()
    assert outside.endswith("shard-1 outside") and after.endswith("shard-1 after")
    assert inside.endswith("shard-1 inside saga_id=s-1 order_id=o-1 step=reserve_inventory")


def test_json_records_carry_the_fields_under_extra() -> None:
    out = io.StringIO()
    logs.setup("router", json_lines=True, sink=out)
    with logs.context_fields({"order_id": "o-1"}), logs.context_fields({"step": "x"}):
        logger.info("nested")
    with logs.context_fields({"order_id": "o-1"}), logs.context_fields({"step": "x"}, keep_outer=False):
        logger.info("fresh")
    nested, fresh = (json.loads(line)["record"] for line in out.getvalue().splitlines())
    assert nested["extra"] == {"process": "router", "order_id": "o-1", "step": "x"}
    assert fresh["extra"] == {"process": "router", "step": "x"}


def test_add_context_fields_outside_a_block_does_nothing() -> None:
    out = io.StringIO()
    logs.setup("p", sink=out)
    assert not logs.add_context_fields({"step": "x"})
    logger.info("plain")
    assert out.getvalue().rstrip().endswith("p plain")


async def test_fields_stay_with_their_task() -> None:
    out = io.StringIO()
    logs.setup("p", json_lines=True, sink=out)

    async def saga(order_id: str, started: asyncio.Event, go: asyncio.Event) -> None:
        with logs.context_fields({"order_id": order_id}):
            started.set()
            await go.wait()
            logs.add_context_fields({"step": order_id + "-step"})
            logger.info("line")

    go = asyncio.Event()
    a_started, b_started = asyncio.Event(), asyncio.Event()
    tasks = [asyncio.create_task(saga("a", a_started, go)), asyncio.create_task(saga("b", b_started, go))]
    await a_started.wait()
    await b_started.wait()
    go.set()
    await asyncio.gather(*tasks)
    logger.info("main")
    extras = [json.loads(line)["record"]["extra"] for line in out.getvalue().splitlines()]
    assert {"process": "p", "order_id": "a", "step": "a-step"} in extras
    assert {"process": "p", "order_id": "b", "step": "b-step"} in extras
    assert extras[-1] == {"process": "p"}
