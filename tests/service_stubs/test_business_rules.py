"""The stubs' business rules (test fixtures) and their INVALID_ARGUMENT answers for malformed requests."""

from __future__ import annotations

from collections.abc import Awaitable, Callable
from pathlib import Path
from typing import Any

import grpc
import pytest
from google.rpc import error_details_pb2
from grpc_status import rpc_status

from tests.helpers.stubs import ShopClient, StubControlClient, running_stubs
from tests.service_stubs.conftest import rpc_error


async def test_sold_out_items_have_no_stock(shop: ShopClient, control: StubControlClient) -> None:
    await rpc_error(shop.reserve("o-1", key="k", lines=[("sold-out-lamp", 1)]), grpc.StatusCode.FAILED_PRECONDITION)
    assert not (await control.get_ledger("o-1")).reserved_net


async def test_default_stock_is_a_million(shop: ShopClient) -> None:
    await shop.reserve("o-1", key="k1", lines=[("sku-big", 1_000_000)])
    await rpc_error(shop.reserve("o-2", key="k2", lines=[("sku-big", 1)]), grpc.StatusCode.FAILED_PRECONDITION)


async def test_a_short_item_reserves_nothing(shop: ShopClient, control: StubControlClient) -> None:
    await control.set_stock({"sku-a": 10, "sku-b": 1})
    error = await rpc_error(
        shop.reserve("o-1", key="k1", lines=[("sku-a", 4), ("sku-b", 2)]), grpc.StatusCode.FAILED_PRECONDITION
    )
    assert "sku-b" in (error.details() or "")
    assert not (await control.get_ledger("o-1")).reserved_net
    await shop.reserve("o-2", key="k2", lines=[("sku-a", 10), ("sku-b", 1)])  # all of it is still there


async def test_set_stock_can_restock_a_sold_out_item(shop: ShopClient, control: StubControlClient) -> None:
    await control.set_stock({"sold-out-x": 2})
    await shop.reserve("o-1", key="k1", lines=[("sold-out-x", 2)])


async def test_get_stock_reads_what_reservations_left(shop: ShopClient, control: StubControlClient) -> None:
    await control.set_stock({"sku-a": 10})
    await shop.reserve("o-1", key="k1", lines=[("sku-a", 4)])
    assert await control.get_stock(["sku-a", "sold-out-y", "sku-default"]) == {
        "sku-a": 6,
        "sold-out-y": 0,
        "sku-default": 1_000_000,
    }
    await shop.compensate("inventory", "o-1", key="k1/undo", forward_key="k1")
    assert await control.get_stock(["sku-a"]) == {"sku-a": 10}
    await rpc_error(control.get_stock([""]), grpc.StatusCode.INVALID_ARGUMENT)


async def test_initial_stock_applies_until_the_data_dir_has_a_level(data_dir: Path) -> None:
    async with running_stubs(data_dir, initial_stock={"sku-few": 3}) as stubs, ShopClient(stubs.address) as shop:
        await rpc_error(shop.reserve("o-1", key="k1", lines=[("sku-few", 4)]), grpc.StatusCode.FAILED_PRECONDITION)
        await shop.reserve("o-1", key="k2", lines=[("sku-few", 2)])
    # Restarted with the same flag: the persisted level (1) wins over the starting level.
    async with running_stubs(data_dir, initial_stock={"sku-few": 3}) as stubs, ShopClient(stubs.address) as shop:
        await rpc_error(shop.reserve("o-2", key="k3", lines=[("sku-few", 2)]), grpc.StatusCode.FAILED_PRECONDITION)
        await shop.reserve("o-2", key="k4", lines=[("sku-few", 1)])


async def test_declined_token(shop: ShopClient, control: StubControlClient) -> None:
    error = await rpc_error(shop.charge("o-1", key="k", token="tok_declined"), grpc.StatusCode.FAILED_PRECONDITION)
    assert error.details() == "payment declined"
    assert (await control.get_ledger("o-1")).charged_cents == 0


async def test_any_other_token_charges(shop: ShopClient, control: StubControlClient) -> None:
    await shop.charge("o-1", key="k1", token="tok_visa_4242", amount_cents=1_999, currency="USD")
    assert (await control.get_ledger("o-1")).charged_cents == 1_999


async def test_unshippable_items(shop: ShopClient, control: StubControlClient) -> None:
    await rpc_error(
        shop.schedule("o-1", key="k", lines=[("sku-1", 1), ("unshippable-piano", 1)]),
        grpc.StatusCode.FAILED_PRECONDITION,
    )
    assert not (await control.get_ledger("o-1")).shipment_scheduled


async def test_an_open_order_cannot_be_created_twice(shop: ShopClient, control: StubControlClient) -> None:
    await shop.create_order("o-1", key="k1")
    await rpc_error(shop.create_order("o-1", key="k2"), grpc.StatusCode.FAILED_PRECONDITION)
    await shop.compensate("order", "o-1", key="c1", forward_key="k1")
    await shop.create_order("o-1", key="k3")  # a cancelled order may be placed again
    ledger = await control.get_ledger("o-1")
    assert ledger.order_created and not ledger.order_cancelled


BadCall = Callable[[ShopClient], Awaitable[Any]]

BAD_REQUESTS: list[tuple[str, BadCall, str]] = [
    ("order: empty order_id", lambda s: s.create_order("", key="k"), "order_id"),
    ("order: empty user_id", lambda s: s.create_order("o", key="k", user_id=""), "user_id"),
    ("order: no items", lambda s: s.create_order("o", key="k", lines=[]), "items"),
    ("order: empty item_id", lambda s: s.create_order("o", key="k", lines=[("", 1)]), "items[0].item_id"),
    ("inventory: quantity 0", lambda s: s.reserve("o", key="k", lines=[("a", 1), ("b", 0)]), "items[1].quantity"),
    ("inventory: no items", lambda s: s.reserve("o", key="k", lines=[]), "items"),
    ("payment: amount 0", lambda s: s.charge("o", key="k", amount_cents=0), "amount_cents"),
    ("payment: negative amount", lambda s: s.charge("o", key="k", amount_cents=-5), "amount_cents"),
    ("payment: empty token", lambda s: s.charge("o", key="k", token=""), "payment_token"),
    ("payment: empty currency", lambda s: s.charge("o", key="k", currency=""), "currency"),
    ("payment: empty user_id", lambda s: s.charge("o", key="k", user_id=""), "user_id"),
    ("shipping: empty user_id", lambda s: s.schedule("o", key="k", user_id=""), "user_id"),
    ("shipping: quantity -1", lambda s: s.schedule("o", key="k", lines=[("a", -1)]), "items[0].quantity"),
    ("loyalty: points 0", lambda s: s.award("o", key="k", points=0), "points"),
    ("loyalty: empty user_id", lambda s: s.award("o", key="k", user_id=""), "user_id"),
    (
        "compensation: empty forward key",
        lambda s: s.compensate("payment", "o", key="k", forward_key=""),
        "forward_idempotency_key",
    ),
    (
        "compensation: its own key as forward key",
        lambda s: s.compensate("payment", "o", key="k", forward_key="k"),
        "forward_idempotency_key",
    ),
    ("compensation: empty order_id", lambda s: s.compensate("order", "", key="k", forward_key="f"), "order_id"),
    ("missing idempotency key", lambda s: s.charge("o", key=""), "idempotency-key"),
]


@pytest.mark.parametrize(("call", "field"), [(c, f) for _, c, f in BAD_REQUESTS], ids=[n for n, _, _ in BAD_REQUESTS])
async def test_bad_requests_are_invalid_argument_naming_the_field(
    shop: ShopClient, control: StubControlClient, call: BadCall, field: str
) -> None:
    error = await rpc_error(call(shop), grpc.StatusCode.INVALID_ARGUMENT)
    assert field in (error.details() or "")
    status = rpc_status.from_call(error)
    assert status is not None
    bad_request = error_details_pb2.BadRequest()
    assert status.details[0].Unpack(bad_request)
    assert [violation.field for violation in bad_request.field_violations] == [field]
    # Nothing was recorded: the same key can be used for a good request afterwards.
    assert not (await control.get_ledger("o")).keys
