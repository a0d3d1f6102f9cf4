"""The steps of a merged page, one by one: where each shard starts, what is fetched, which item comes next, where each
shard resumes."""

from __future__ import annotations

import asyncio
from collections.abc import Sequence

import grpc
import pytest

from shard_router.errors import ShardStatus
from shard_router.relay.fanout import (
    Buffer,
    Cursor,
    cursors_after,
    load,
    merge_page,
    refills,
    smallest,
    start_cursors,
)


def _buffer(items: Sequence[int], pos: int = 0, next_token: str = "", token: str = "t", size: int = 5) -> Buffer[int]:
    return Buffer(token, size, items, pos, next_token)


def test_start_cursors_list_a_joined_shard_from_its_start_and_forget_a_shard_that_left() -> None:
    token = {"a": Cursor("ta", 2, 4), "b": None, "gone": Cursor("tg", 0, 4)}
    assert start_cursors(["a", "b", "new"], token, 7) == {"a": Cursor("ta", 2, 4), "b": None, "new": Cursor("", 0, 7)}
    assert start_cursors(["a", "b"], {}, 3) == {"a": Cursor("", 0, 3), "b": Cursor("", 0, 3)}


def test_a_buffer_resumes_inside_its_page_then_at_the_next_page_then_nowhere() -> None:
    assert _buffer([1, 2, 3], pos=1, next_token="n", token="t", size=3).after(9) == Cursor("t", 1, 3)
    assert _buffer([1, 2, 3], pos=3, next_token="n").after(9) == Cursor("n", 0, 9)
    assert _buffer([1, 2, 3], pos=3).after(9) is None
    assert _buffer([]).after(9) is None


def test_take_returns_the_head_and_moves_past_it() -> None:
    b = _buffer([4, 5])
    assert (b.head(), b.take(), b.head(), b.take(), b.drained) == (4, 4, 5, 5, True)


def test_refills_fetch_only_drained_buffers_whose_list_goes_on() -> None:
    buffers = {
        "unread": _buffer([1], next_token="u"),
        "more": _buffer([1], pos=1, next_token="m"),
        "done": _buffer([1], pos=1),
        "empty-page-more": _buffer([], next_token="e"),
    }
    assert refills(buffers, 6) == [("more", Cursor("m", 0, 6)), ("empty-page-more", Cursor("e", 0, 6))]


def test_smallest_picks_the_smallest_head_and_breaks_ties_by_shard_rank() -> None:
    rank = {"a": 0, "b": 1, "c": 2}
    buffers = {"b": _buffer([3, 9]), "c": _buffer([1, 2], pos=2), "a": _buffer([0, 3], pos=1)}
    assert smallest(buffers, rank, lambda x: (x,)) == "a"  # 3 on both a and b: a ranks first
    assert smallest(buffers, {"a": 1, "b": 0, "c": 2}, lambda x: (x,)) == "b"
    assert smallest({"a": _buffer([2]), "b": _buffer([9])}, rank, lambda x: (-x,)) == "b"  # newest first
    assert smallest({"c": buffers["c"]}, rank, lambda x: (x,)) is None
    assert smallest({}, rank, lambda x: (x,)) is None


def test_cursors_after_keep_the_start_of_shards_not_fetched() -> None:
    start = {"a": Cursor("ta", 0, 5), "b": None, "c": Cursor("tc", 1, 5)}
    buffers = {"a": _buffer([1, 2], pos=1, token="ta"), "c": _buffer([1], pos=1)}
    after = cursors_after(start, buffers, 8)
    assert after == {"a": Cursor("ta", 1, 5), "b": None, "c": None}
    assert list(after) == list(start)  # shard order is the token's order


async def test_load_fetches_concurrently_and_skips_what_was_returned() -> None:
    running = 0
    overlap = 0

    async def fetch(sid: str, token: str, size: int) -> tuple[Sequence[int], str]:
        nonlocal running, overlap
        running += 1
        await asyncio.sleep(0.01)
        overlap = max(overlap, running)
        running -= 1
        return [1, 2, 3][:size], f"{sid}-next"

    buffers = await load(fetch, [("a", Cursor("t", 2, 3)), ("b", Cursor("", 5, 2))])
    assert overlap == 2
    assert buffers["a"] == Buffer("t", 3, [1, 2, 3], 2, "a-next")
    assert buffers["b"].pos == 2 and buffers["b"].drained  # the page shrank below skip: nothing of it is left
    assert await load(fetch, []) == {}


async def test_load_raises_the_first_failure_as_itself_and_cancels_the_rest() -> None:
    cancelled = asyncio.Event()

    async def fetch(sid: str, token: str, size: int) -> tuple[Sequence[int], str]:
        if sid == "down":
            raise ShardStatus("down", grpc.StatusCode.UNAVAILABLE, "gone")
        try:
            await asyncio.sleep(10)
        except asyncio.CancelledError:
            cancelled.set()
            raise
        return [], ""

    with pytest.raises(ShardStatus) as e:
        await load(fetch, [("slow", Cursor("", 0, 1)), ("down", Cursor("", 0, 1))])
    assert e.value.shard_id == "down" and cancelled.is_set()


async def test_merge_page_stops_at_its_fetch_budget_and_resumes_where_it_stopped() -> None:
    # "a" answers empty pages with a next token 30 times before its one item: a call must not chase it forever.
    async def fetch(sid: str, token: str, size: int) -> tuple[Sequence[int], str]:
        n = int(token or 0)
        if sid == "b":
            return ([5], "") if n == 0 else ([], "")
        return ([], str(n + 1)) if n < 30 else ([7], "")

    calls = 0
    cursors: dict[str, Cursor | None] = {}
    seen: list[int] = []
    while True:
        calls += 1
        page, cursors = await merge_page(["a", "b"], cursors, 2, fetch, lambda x: (x,))
        seen.extend(page)
        if all(c is None for c in cursors.values()):
            break
        assert calls < 20
    assert seen == [5, 7] and calls > 1
