"""Calls that concern every shard: ListSagas and ListDeadLetters (merged pages), RetryDeadLetter(all), and
ListDefinitions (merged by hash).

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
from collections.abc import Awaitable, Callable, Coroutine, Mapping, Sequence
from dataclasses import dataclass
from typing import Any, Generic, Protocol, TypeVar

from protos.saga.v1 import saga_pb2
from shard_router.config import RouterSettings
from shard_router.errors import InvalidArgument, ShardStatus
from shard_router.relay.forwarding import (
    LIST_DEAD_LETTERS,
    LIST_DEFINITIONS,
    LIST_SAGAS,
    RETRY_DEAD_LETTER,
    Forwarder,
    IncomingCall,
    Method,
)
from shard_router.ring.topology import Topology

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
class Buffer(Generic[T]):
    """One fetched shard page and how much of it the merge has used."""

    token: str
    """The shard page token that fetched items."""
    size: int
    """The page size it was fetched with (a resumed page must be fetched the same way to skip the same items)."""
    items: Sequence[T]
    pos: int
    """Items before pos are already in the merged page."""
    next_token: str
    """The shard's token for its next page; empty on its last page."""

    @property
    def drained(self) -> bool:
        return self.pos >= len(self.items)

    def head(self) -> T:
        return self.items[self.pos]

    def take(self) -> T:
        """The head, now counted as returned."""
        self.pos += 1
        return self.items[self.pos - 1]

    def after(self, page_size: int) -> Cursor | None:
        """Where this shard resumes next call: the unread rest of this page, else its next page, else nowhere."""
        if not self.drained:
            return Cursor(self.token, self.pos, self.size)
        if self.next_token:
            return Cursor(self.next_token, 0, page_size)
        return None


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


def start_cursors(shard_ids: Sequence[str], cursors: Cursors, page_size: int) -> dict[str, Cursor | None]:
    """Every current shard's cursor. A shard absent from the token joined after the first page: it is listed from its
    start. A shard in the token but not in shard_ids left: it is forgotten."""
    fresh = Cursor("", 0, page_size)
    return {sid: cursors.get(sid, fresh) for sid in shard_ids}


async def load(fetch: Fetch[T], wanted: Sequence[tuple[str, Cursor]]) -> dict[str, Buffer[T]]:
    """The wanted pages, fetched concurrently, each positioned past the items its cursor already returned. A page
    shorter than skip (the shard's list shrank) is simply used up."""

    async def one(sid: str, cursor: Cursor) -> tuple[str, Buffer[T]]:
        items, next_token = await fetch(sid, cursor.token, cursor.size)
        return sid, Buffer(cursor.token, cursor.size, items, min(cursor.skip, len(items)), next_token)

    return dict(await run_all([one(sid, c) for sid, c in wanted]))


def refills(buffers: Mapping[str, Buffer[T]], page_size: int) -> list[tuple[str, Cursor]]:
    """The next pages of shards whose buffer is used up but whose list goes on. Any of them may hold the smallest
    item, so the merge must fetch them before it chooses the next one."""
    return [(sid, Cursor(b.next_token, 0, page_size)) for sid, b in buffers.items() if b.drained and b.next_token]


def smallest(
    buffers: Mapping[str, Buffer[T]], rank: Mapping[str, int], sort_key: Callable[[T], tuple[int, ...]]
) -> str | None:
    """The shard whose next item comes first, or None when every buffer is used up. Equal keys go to the shard ranked
    first, so the same data always merges into the same pages."""
    live = [sid for sid, b in buffers.items() if not b.drained]
    if not live:
        return None
    return min(live, key=lambda sid: (sort_key(buffers[sid].head()), rank[sid]))


def cursors_after(
    start: Mapping[str, Cursor | None], buffers: Mapping[str, Buffer[T]], page_size: int
) -> dict[str, Cursor | None]:
    """Every shard's cursor for the next page; a shard this call did not fetch keeps the cursor it started with."""
    return {sid: buffers[sid].after(page_size) if sid in buffers else c for sid, c in start.items()}


async def merge_page(
    shard_ids: Sequence[str],
    cursors: Cursors,
    page_size: int,
    fetch: Fetch[T],
    sort_key: Callable[[T], tuple[int, ...]],
) -> tuple[list[T], dict[str, Cursor | None]]:
    """One merged page of at most page_size items (smallest sort_key first) and every shard's cursor after it."""
    rank = {sid: i for i, sid in enumerate(shard_ids)}
    start = start_cursors(shard_ids, cursors, page_size)
    wanted = [(sid, c) for sid, c in start.items() if c is not None]
    buffers = await load(fetch, wanted)
    # Bounds the fetches of one call, in case a shard keeps answering empty pages that still have a next token.
    fetch_budget = 2 * len(shard_ids) + page_size - len(wanted)
    out: list[T] = []
    while len(out) < page_size and fetch_budget > 0:
        if wanted := refills(buffers, page_size):
            fetch_budget -= len(wanted)
            buffers.update(await load(fetch, wanted))
            continue
        best = smallest(buffers, rank, sort_key)
        if best is None:
            break
        out.append(buffers[best].take())
    return out, cursors_after(start, buffers, page_size)


def _page_size(requested: int, settings: RouterSettings) -> int:
    if requested == 0:
        return settings.page_size_default
    if not 1 <= requested <= settings.page_size_max:
        raise InvalidArgument(
            "page_size", f"must be 0 (default {settings.page_size_default}) to {settings.page_size_max}"
        )
    return requested


class _PageRequest(Protocol):
    page_size: int
    page_token: str


class _ShardPage(Protocol):
    next_page_token: str


P = TypeVar("P", bound=_ShardPage)


@dataclass(frozen=True)
class _Listing(Generic[P, T]):
    """What one merged list needs to know of its shard method."""

    method: Method[P]
    items: Callable[[P], Sequence[T]]
    """The items of one shard page."""
    sort_key: Callable[[T], tuple[int, ...]]
    """The order the shards list items in, so the merge keeps it."""


_SAGAS: _Listing[Any, saga_pb2.Saga] = _Listing(
    Method(LIST_SAGAS, saga_pb2.ListSagasResponse.FromString),
    lambda page: page.sagas,
    lambda s: (-s.created_at.seconds, -s.created_at.nanos),  # newest first
)
_DEAD_LETTERS: _Listing[Any, saga_pb2.DeadLetter] = _Listing(
    Method(LIST_DEAD_LETTERS, saga_pb2.ListDeadLettersResponse.FromString),
    lambda page: page.dead_letters,
    lambda d: (d.parked_at.seconds, d.parked_at.nanos),  # oldest first
)
_RETRY_DEAD_LETTER = Method(RETRY_DEAD_LETTER, saga_pb2.RetryDeadLetterResponse.FromString)
_LIST_DEFINITIONS = Method(LIST_DEFINITIONS, saga_pb2.ListDefinitionsResponse.FromString)


def merge_definitions(answers: Sequence[saga_pb2.ListDefinitionsResponse]) -> saga_pb2.ListDefinitionsResponse:
    """One entry per hash over the shards' answers: `sagas` summed; `active` only if the alias points at it on every
    shard that answered (a version some shard does not start new sagas on is not what the type starts on, and a
    half-installed commit shows as such); grouped by saga type, each type's versions in the order first seen (a shard
    lists them oldest first)."""
    merged: dict[str, saga_pb2.DefinitionVersion] = {}
    active_on: dict[str, int] = {}
    for answer in answers:
        for d in answer.definitions:
            entry = merged.get(d.hash)
            if entry is None:
                entry = merged[d.hash] = saga_pb2.DefinitionVersion()
                entry.CopyFrom(d)
                entry.sagas = 0
            entry.sagas += d.sagas
            active_on[d.hash] = active_on.get(d.hash, 0) + int(d.active)
    out = saga_pb2.ListDefinitionsResponse()
    for d in sorted(merged.values(), key=lambda d: d.name):  # stable: versions keep their order within a type
        d.active = active_on[d.hash] == len(answers)
        out.definitions.append(d)
    return out


class FanOut:
    def __init__(self, topology: Callable[[], Topology], forwarder: Forwarder, settings: RouterSettings) -> None:
        self._topology = topology
        self._forwarder = forwarder
        self._settings = settings

    async def list_sagas(self, request: saga_pb2.ListSagasRequest, caller: IncomingCall) -> saga_pb2.ListSagasResponse:
        def shard_request(token: str, n: int) -> bytes:
            shard = saga_pb2.ListSagasRequest(state=request.state, page_size=n, page_token=token)
            return bytes(shard.SerializeToString())

        filter_key = f"sagas:{request.state}"
        sagas, next_token = await self._merged(_SAGAS, request, filter_key, shard_request, caller)
        return saga_pb2.ListSagasResponse(sagas=sagas, next_page_token=next_token)

    async def list_dead_letters(
        self, request: saga_pb2.ListDeadLettersRequest, caller: IncomingCall
    ) -> saga_pb2.ListDeadLettersResponse:
        def shard_request(token: str, n: int) -> bytes:
            shard = saga_pb2.ListDeadLettersRequest(
                step=request.step, include_closed=request.include_closed, page_size=n, page_token=token
            )
            return bytes(shard.SerializeToString())

        filter_key = f"dead_letters:{request.step}:{int(request.include_closed)}"
        letters, next_token = await self._merged(_DEAD_LETTERS, request, filter_key, shard_request, caller)
        return saga_pb2.ListDeadLettersResponse(dead_letters=letters, next_page_token=next_token)

    async def _merged(
        self,
        listing: _Listing[P, T],
        request: _PageRequest,
        filter_key: str,
        shard_request: Callable[[str, int], bytes],
        caller: IncomingCall,
    ) -> tuple[list[T], str]:
        """The merged page a list request asks for (its page_size and page_token) and the next_page_token.

        filter_key binds the token to the request's filter; shard_request(shard token, page size) is the request
        for one shard page."""
        topo = self._topology()
        size = _page_size(request.page_size, self._settings)
        cursors = decode_token(request.page_token, filter_key, self._settings.page_size_max)

        async def fetch(sid: str, token: str, n: int) -> tuple[Sequence[T], str]:
            try:
                page = await self._forwarder.call(
                    sid, topo.addresses[sid], listing.method, shard_request(token, n), caller
                )
            except ShardStatus as e:
                raise e.with_context(f"{listing.method.name} needs every shard; shard {sid} did not answer") from None
            return listing.items(page), page.next_page_token

        items, after = await merge_page(topo.shard_ids, cursors, size, fetch, listing.sort_key)
        return items, encode_token(filter_key, after)

    async def retry_all(
        self, request: bytes, caller: IncomingCall, dry_run: bool = False
    ) -> saga_pb2.RetryDeadLetterResponse:
        """RetryDeadLetter(all=true) on every shard; the order ids of all of them (and, for a dry run, what each retry
        would do), shard by shard.

        If a shard fails, the call fails with its status (the others have resumed theirs): retrying the call is safe,
        since a resumed saga is no longer an open dead letter. A dry run changes nothing anywhere."""
        topo = self._topology()
        replies = await asyncio.gather(
            *(
                self._forwarder.call(sid, topo.addresses[sid], _RETRY_DEAD_LETTER, request, caller)
                for sid in topo.shard_ids
            ),
            return_exceptions=True,
        )
        merged = saga_pb2.RetryDeadLetterResponse()
        done: list[str] = []
        failures: list[ShardStatus] = []
        for sid, reply in zip(topo.shard_ids, replies, strict=True):
            if isinstance(reply, ShardStatus):
                failures.append(reply)
            elif isinstance(reply, BaseException):
                raise reply
            else:
                merged.order_ids.extend(reply.order_ids)
                merged.previews.extend(reply.previews)
                done.append(sid)
        if failures:
            first = failures[0]
            if dry_run:
                raise first.with_context(
                    f"RetryDeadLetter(all, dry_run) failed on shard {first.shard_id}; nothing was changed"
                )
            raise first.with_context(
                f"RetryDeadLetter(all) failed on shard {first.shard_id}"
                f" (resumed {len(merged.order_ids)} on {', '.join(done) or 'no shard'}; calling again is safe)"
            )
        return merged

    async def list_definitions(
        self, request: saga_pb2.ListDefinitionsRequest, caller: IncomingCall
    ) -> saga_pb2.ListDefinitionsResponse:
        """ListDefinitions of every shard, merged (merge_definitions). Every shard must answer, as for the lists: a
        count that silently skipped a down shard would let an operator drop a version its sagas still need."""
        topo = self._topology()
        body = bytes(request.SerializeToString())

        async def one(sid: str) -> saga_pb2.ListDefinitionsResponse:
            try:
                return await self._forwarder.call(sid, topo.addresses[sid], _LIST_DEFINITIONS, body, caller)
            except ShardStatus as e:
                raise e.with_context(f"ListDefinitions needs every shard; shard {sid} did not answer") from None

        return merge_definitions(await run_all([one(sid) for sid in topo.shard_ids]))
