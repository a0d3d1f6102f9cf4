"""Calls that concern every shard: ListSagas and ListDeadLetters (merged pages) and RetryDeadLetter(all).

Merging pages. Each shard lists its own items in order (sagas newest first by created_at, dead letters oldest first by
parked_at) behind its own opaque page tokens. The router merges the shards' lists like a k-way merge and remembers, per
shard, where its page stands: the shard page token that fetched the items still unread, and how many of them were
already returned. That map, JSON in URL-safe base64, is our next_page_token. Resuming re-fetches that page and skips
what was returned, so every item comes exactly once, in order, whatever the page sizes. An item is only returned when
every shard with more items has at least one buffered (their next pages come from a fresh fetch within the same call),
which is what keeps the order right across shards.

The token is bound to the request's filter (a different filter with an old token is INVALID_ARGUMENT). A shard that
joins between two pages is listed from its start; a shard that left is forgotten. Every shard must answer: a page that
silently skipped a down shard would lose sagas, so a list fails with that shard's status instead.
"""

from __future__ import annotations

import asyncio
import base64
import binascii
import json
import time
from collections.abc import Awaitable, Callable, Coroutine, Mapping, Sequence
from dataclasses import dataclass
from typing import Any, Generic, TypeVar

import grpc

from protos.saga.v1 import saga_pb2

from .config import RouterSettings
from .errors import InvalidArgument, ShardStatus
from .forwarding import RETRY_DEAD_LETTER, Caller, Forwarder
from .topology import Topology

T = TypeVar("T")
_MAX_TOKEN_CHARS = 65_536


@dataclass(frozen=True)
class Cursor:
    """Where one shard's list stands: fetch page `token` with page size `size`, then skip `skip` items."""

    token: str
    skip: int
    size: int


Cursors = Mapping[str, Cursor | None]
"""Per shard id; None means that shard's list is exhausted."""


def encode_token(filter_key: str, cursors: Cursors) -> str:
    """The next_page_token; empty once every shard is exhausted."""
    if all(c is None for c in cursors.values()):
        return ""
    body = {"f": filter_key, "c": {sid: None if c is None else [c.token, c.skip, c.size] for sid, c in cursors.items()}}
    return base64.urlsafe_b64encode(json.dumps(body, separators=(",", ":")).encode()).decode().rstrip("=")


def decode_token(token: str, filter_key: str, page_size_max: int) -> dict[str, Cursor | None]:
    """The cursors of a page_token from encode_token; INVALID_ARGUMENT for anything else."""
    if not token:
        return {}
    try:
        if len(token) > _MAX_TOKEN_CHARS:
            raise ValueError("too long")
        body = json.loads(base64.urlsafe_b64decode(token + "=" * (-len(token) % 4)))
        if body["f"] != filter_key:
            raise InvalidArgument("page_token", "was issued for a different filter; start again without a token")
        cursors: dict[str, Cursor | None] = {}
        for sid, raw in body["c"].items():
            if raw is None:
                cursors[str(sid)] = None
                continue
            shard_token, skip, size = raw
            if not (isinstance(shard_token, str) and isinstance(skip, int) and isinstance(size, int)):
                raise ValueError("bad cursor")
            if not (0 <= skip <= page_size_max and 1 <= size <= page_size_max):
                raise ValueError("cursor out of range")
            cursors[str(sid)] = Cursor(shard_token, skip, size)
        return cursors
    except InvalidArgument:
        raise
    except (ValueError, KeyError, TypeError, AttributeError, binascii.Error):
        raise InvalidArgument("page_token", "is not a token this service issued") from None


@dataclass
class _Buffer(Generic[T]):
    token: str
    size: int
    items: Sequence[T]
    pos: int
    next_token: str


Fetch = Callable[[str, str, int], Awaitable[tuple[Sequence[T], str]]]
"""(shard id, shard page token, page size) -> (items, the shard's next_page_token)."""


async def run_all(coros: Sequence[Coroutine[Any, Any, T]]) -> list[T]:
    """Runs coros concurrently; the first failure cancels the rest and is raised as itself."""
    try:
        async with asyncio.TaskGroup() as tg:
            tasks = [tg.create_task(c) for c in coros]
    except BaseExceptionGroup as eg:
        raise eg.exceptions[0] from None
    return [t.result() for t in tasks]


async def merge_page(
    shard_ids: Sequence[str],
    cursors: Cursors,
    page_size: int,
    fetch: Fetch[T],
    sort_key: Callable[[T], tuple[int, ...]],
) -> tuple[list[T], dict[str, Cursor | None]]:
    """One merged page of at most page_size items (smallest sort_key first) and every shard's cursor after it."""
    rank = {sid: i for i, sid in enumerate(shard_ids)}
    buffers: dict[str, _Buffer[T]] = {}

    async def load(sid: str, cursor: Cursor) -> tuple[str, _Buffer[T]]:
        items, next_token = await fetch(sid, cursor.token, cursor.size)
        return sid, _Buffer(cursor.token, cursor.size, items, min(cursor.skip, len(items)), next_token)

    # A shard absent from the token joined after the first page: list it from its start.
    start = {
        sid: cursors.get(sid, Cursor("", 0, page_size)) if cursors else Cursor("", 0, page_size) for sid in shard_ids
    }
    pending = [(sid, c) for sid, c in start.items() if c is not None]
    # Bounds the fetches of one call, in case a shard keeps answering empty pages that still have a next token.
    fetch_budget = 2 * len(shard_ids) + page_size
    out: list[T] = []
    while True:
        if pending:
            fetch_budget -= len(pending)
            for sid, buffer in await run_all([load(sid, c) for sid, c in pending]):
                buffers[sid] = buffer
        if len(out) >= page_size or fetch_budget <= 0:
            break
        # A shard with more pages but nothing buffered might hold the next item: fetch before choosing.
        pending = [
            (sid, Cursor(b.next_token, 0, page_size))
            for sid, b in buffers.items()
            if b.pos >= len(b.items) and b.next_token
        ]
        if pending:
            continue
        live = [sid for sid, b in buffers.items() if b.pos < len(b.items)]
        if not live:
            break
        best = min(live, key=lambda sid: (sort_key(buffers[sid].items[buffers[sid].pos]), rank[sid]))
        out.append(buffers[best].items[buffers[best].pos])
        buffers[best].pos += 1

    after: dict[str, Cursor | None] = {}
    for sid in shard_ids:
        b = buffers.get(sid)
        if b is None:
            after[sid] = start[sid]
        elif b.pos < len(b.items):
            after[sid] = Cursor(b.token, b.pos, b.size)
        elif b.next_token:
            after[sid] = Cursor(b.next_token, 0, page_size)
        else:
            after[sid] = None
    return out, after


def _page_size(requested: int, settings: RouterSettings) -> int:
    if requested == 0:
        return settings.page_size_default
    if not 1 <= requested <= settings.page_size_max:
        raise InvalidArgument(
            "page_size", f"must be 0 (default {settings.page_size_default}) to {settings.page_size_max}"
        )
    return requested


def _shard_failure(e: grpc.aio.AioRpcError, shard_id: str, what: str) -> ShardStatus:
    status = ShardStatus(shard_id, e.code(), e.details() or "", tuple(e.trailing_metadata() or ()))
    return status.with_context(f"{what} needs every shard; shard {shard_id} did not answer")


class FanOut:
    def __init__(self, topology: Callable[[], Topology], forwarder: Forwarder, settings: RouterSettings) -> None:
        self._topology = topology
        self._forwarder = forwarder
        self._settings = settings

    async def list_sagas(self, request: saga_pb2.ListSagasRequest, caller: Caller) -> saga_pb2.ListSagasResponse:
        topo = self._topology()
        size = _page_size(request.page_size, self._settings)
        filter_key = f"sagas:{request.state}"
        cursors = decode_token(request.page_token, filter_key, self._settings.page_size_max)

        async def fetch(sid: str, token: str, n: int) -> tuple[Sequence[saga_pb2.Saga], str]:
            stub = self._forwarder.pool.get(topo.addresses[sid]).coordinator
            shard_request = saga_pb2.ListSagasRequest(state=request.state, page_size=n, page_token=token)
            started = time.perf_counter()
            try:
                resp = await stub.ListSagas(shard_request, metadata=caller.metadata, timeout=caller.timeout_s())
            except grpc.aio.AioRpcError as e:
                self._forwarder.metrics.forwarded("ListSagas", sid, e.code().name, time.perf_counter() - started)
                raise _shard_failure(e, sid, "ListSagas") from None
            self._forwarder.metrics.forwarded("ListSagas", sid, "OK", time.perf_counter() - started)
            return resp.sagas, resp.next_page_token

        def newest_first(s: saga_pb2.Saga) -> tuple[int, ...]:
            return (-s.created_at.seconds, -s.created_at.nanos)

        sagas, after = await merge_page(topo.shard_ids, cursors, size, fetch, newest_first)
        return saga_pb2.ListSagasResponse(sagas=sagas, next_page_token=encode_token(filter_key, after))

    async def list_dead_letters(
        self, request: saga_pb2.ListDeadLettersRequest, caller: Caller
    ) -> saga_pb2.ListDeadLettersResponse:
        topo = self._topology()
        size = _page_size(request.page_size, self._settings)
        filter_key = f"dead_letters:{request.step}:{int(request.include_closed)}"
        cursors = decode_token(request.page_token, filter_key, self._settings.page_size_max)

        async def fetch(sid: str, token: str, n: int) -> tuple[Sequence[saga_pb2.DeadLetter], str]:
            stub = self._forwarder.pool.get(topo.addresses[sid]).admin
            shard_request = saga_pb2.ListDeadLettersRequest(
                step=request.step, include_closed=request.include_closed, page_size=n, page_token=token
            )
            started = time.perf_counter()
            try:
                resp = await stub.ListDeadLetters(shard_request, metadata=caller.metadata, timeout=caller.timeout_s())
            except grpc.aio.AioRpcError as e:
                self._forwarder.metrics.forwarded("ListDeadLetters", sid, e.code().name, time.perf_counter() - started)
                raise _shard_failure(e, sid, "ListDeadLetters") from None
            self._forwarder.metrics.forwarded("ListDeadLetters", sid, "OK", time.perf_counter() - started)
            return resp.dead_letters, resp.next_page_token

        def oldest_first(d: saga_pb2.DeadLetter) -> tuple[int, ...]:
            return (d.parked_at.seconds, d.parked_at.nanos)

        letters, after = await merge_page(topo.shard_ids, cursors, size, fetch, oldest_first)
        return saga_pb2.ListDeadLettersResponse(dead_letters=letters, next_page_token=encode_token(filter_key, after))

    async def retry_all(self, request: bytes, caller: Caller) -> saga_pb2.RetryDeadLetterResponse:
        """RetryDeadLetter(all=true) on every shard; the order ids of all of them, shard by shard.

        If a shard fails, the call fails with its status (the others have resumed theirs): retrying the call is safe,
        since a resumed saga is no longer an open dead letter."""
        topo = self._topology()
        replies = await asyncio.gather(
            *(
                self._forwarder.unary(sid, topo.addresses[sid], RETRY_DEAD_LETTER, request, caller)
                for sid in topo.shard_ids
            ),
            return_exceptions=True,
        )
        order_ids: list[str] = []
        done: list[str] = []
        failures: list[ShardStatus] = []
        for sid, reply in zip(topo.shard_ids, replies, strict=True):
            if isinstance(reply, ShardStatus):
                failures.append(reply)
            elif isinstance(reply, BaseException):
                raise reply
            else:
                order_ids.extend(saga_pb2.RetryDeadLetterResponse.FromString(reply.body).order_ids)
                done.append(sid)
        if failures:
            first = failures[0]
            raise first.with_context(
                f"RetryDeadLetter(all) failed on shard {first.shard_id}"
                f" (resumed {len(order_ids)} on {', '.join(done) or 'no shard'}; calling again is safe)"
            )
        return saga_pb2.RetryDeadLetterResponse(order_ids=order_ids)
