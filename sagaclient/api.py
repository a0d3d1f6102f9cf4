"""The API once, as data: each function here takes one call's arguments and returns what to send and how to read the
answer (Unary, Paged, Stream), without doing any I/O. SagaClient (grpc.aio) and SyncSagaClient (grpc's blocking API)
bind these same functions as their methods, so the two clients share signatures, defaults, requests and docstrings and
cannot drift apart; only the sending differs.

Results are the API's own protobuf messages (protos.saga.v1.saga_pb2), documented field by field in
protos/saga/v1/saga.proto.
"""

from __future__ import annotations

from collections.abc import Callable, Iterable
from dataclasses import dataclass, field
from typing import Any, Generic, Literal, Protocol, TypeVar

from google.protobuf import any_pb2
from google.protobuf.message import Message

from protos.saga.v1 import saga_pb2

from .retry import NO_RETRY, RetryPolicy

__all__ = ["Cursor", "DeadLetterPage", "Paged", "RetriedOrders", "SagaPage", "Stream", "Unary"]

T = TypeVar("T")
Service = Literal["saga", "admin"]
"""Which stub serves a method: SagaCoordinator or SagaAdmin."""


class _Page(Protocol):
    @property
    def next_page_token(self) -> str: ...


PageT = TypeVar("PageT", bound=_Page)
"""A page type: SagaPage or DeadLetterPage."""


@dataclass(frozen=True)
class SagaPage:
    """One page of list_sagas."""

    sagas: list[saga_pb2.Saga] = field(default_factory=list)
    """Newest first, without their event logs."""
    next_page_token: str = ""
    """Pass to list_sagas(page_token=...) to resume after this page; empty on the last page."""


@dataclass(frozen=True)
class DeadLetterPage:
    """One page of list_dead_letters."""

    dead_letters: list[saga_pb2.DeadLetter] = field(default_factory=list)
    """Oldest first."""
    next_page_token: str = ""
    """Empty on the last page."""


@dataclass(frozen=True)
class Unary(Generic[T]):
    """One unary call to make."""

    service: Service
    method: str
    """The RPC's name in the service, e.g. "PlaceOrder"."""
    request: Message
    result: Callable[[Any], T]
    """What the caller gets from the reply."""
    timeout_s: float | None = None
    """The whole call's timeout, retries included; None: the client's."""
    retry: RetryPolicy | None = None
    """None: the client's policy."""


@dataclass(frozen=True)
class Paged(Generic[PageT]):
    """A listing: one Unary per page, from page_token on, until the last page or max_pages."""

    service: Service
    method: str
    request_for: Callable[[str], Message]
    """The request for the page at this token."""
    page: Callable[[Any], PageT]
    page_token: str
    max_pages: int | None
    timeout_s: float | None
    """Each page's own timeout; None: the client's."""


class Cursor(Generic[PageT]):
    """Where a listing is: `while (call := cursor.next_call()) is not None: yield cursor.advance(send(call))`."""

    def __init__(self, paged: Paged[PageT]) -> None:
        self._paged = paged
        self._token = paged.page_token
        self._pages_left = paged.max_pages
        self._done = False

    def next_call(self) -> Unary[PageT] | None:
        if self._done or self._pages_left == 0:
            return None
        p = self._paged
        return Unary(p.service, p.method, p.request_for(self._token), p.page, p.timeout_s)

    def advance(self, page: PageT) -> PageT:
        self._token = page.next_page_token
        self._done = not self._token
        if self._pages_left is not None:
            self._pages_left -= 1
        return page


@dataclass(frozen=True)
class Stream(Generic[T]):
    """A server-streaming call, without timeout or retry."""

    service: Service
    method: str
    request: Message


def _same(reply: T) -> T:
    return reply


class RetriedOrders(list[str]):
    """What retry_dead_letter and retry_all_dead_letters return: the order ids resumed (a list, as it always was), or
    with dry_run the order ids that would be, and then also `previews`."""

    previews: list[saga_pb2.SagaPreview]
    """With dry_run: what each retry would do, one per order id, in the same order (saga.v1 SagaPreview: the calls it
    would make, with their idempotency keys and attempt numbers, and the state the saga would end in). Empty
    otherwise."""

    def __init__(self, order_ids: Iterable[str] = (), previews: Iterable[saga_pb2.SagaPreview] = ()) -> None:
        super().__init__(order_ids)
        self.previews = list(previews)


def _retried(reply: saga_pb2.RetryDeadLetterResponse) -> RetriedOrders:
    return RetriedOrders(reply.order_ids, reply.previews)


def _saga_of(reply: saga_pb2.ResolveDeadLetterResponse) -> saga_pb2.Saga:
    return reply.saga


def _definitions(reply: saga_pb2.ListDefinitionsResponse) -> list[saga_pb2.DefinitionVersion]:
    return list(reply.definitions)


_Named = TypeVar(
    "_Named",
    saga_pb2.GetSagaRequest,
    saga_pb2.WatchSagaRequest,
    saga_pb2.RetryDeadLetterRequest,
    saga_pb2.ResolveDeadLetterRequest,
)


def _named(request: _Named, order_id: str, saga_type: str, key: str) -> _Named:
    """The request naming one saga: by order_id (the order flow), or by saga_type (default "order") and key.
    ValueError if it names none or both ways."""
    if bool(order_id) == bool(key):
        raise ValueError("name the saga by order_id, or by key (with saga_type for a type other than order)")
    if saga_type and not key:
        raise ValueError("saga_type goes with key: an order_id names a saga of type order")
    if order_id:
        request.order_id = order_id
    else:
        request.saga_type, request.key = saga_type, key
    return request


def place_order(
    order_id: str,
    user_id: str,
    items: Iterable[tuple[str, int]] | Iterable[saga_pb2.Item],
    payment_info: saga_pb2.PaymentInfo,
    *,
    ttl_ms: int | None = None,
    no_wait: bool = False,
    timeout_s: float | None = None,
    retry: RetryPolicy | None = None,
) -> Unary[saga_pb2.PlaceOrderResponse]:
    """Runs the order's saga and returns its outcome (status SUCCESS or FAILED, with the saga's state and error
    message); with no_wait, returns PENDING as soon as the saga is durably accepted.

    Retries are safe: PlaceOrder is idempotent by order_id. The same order_id and payload joins the saga already
    running (or returns its outcome) instead of starting a second one, so a retry after a lost answer never
    charges twice. UNAVAILABLE and RESOURCE_EXHAUSTED are retried with the same request until the client's retry
    policy (or `retry`) or timeout_s (default: the client's) runs out, waiting at least the server's
    retry-after-ms; a wait that would reach the end of timeout_s is not waited: the error is raised at once (e.g.
    ResourceExhausted, its retry_after_s saying when to come back). A different payload under a used order_id
    raises AlreadyExists; bad input InvalidRequest with the field named. items: (item_id, quantity) pairs or
    saga_pb2.Item messages."""
    lines = [i if isinstance(i, saga_pb2.Item) else saga_pb2.Item(item_id=i[0], quantity=i[1]) for i in items]
    request = saga_pb2.PlaceOrderRequest(
        order_id=order_id, user_id=user_id, items=lines, payment_info=payment_info, no_wait=no_wait
    )
    if ttl_ms is not None:
        request.ttl_ms = ttl_ms
    return Unary("saga", "PlaceOrder", request, _same, timeout_s, retry)


def start_saga(
    saga_type: str,
    key: str,
    input_message: Message,
    *,
    ttl_ms: int | None = None,
    no_wait: bool = False,
    timeout_s: float | None = None,
    retry: RetryPolicy | None = None,
) -> Unary[saga_pb2.StartSagaResponse]:
    """Runs a saga of any defined type (the name of a committed definition, e.g. "order_loyalty") and returns its
    outcome (the saga's state, its error message, and the definition version it runs); with no_wait, answers as soon
    as the saga is durably accepted (state RUNNING).

    input_message is the definition's input type (e.g. saga_pb2.PlaceOrderRequest), packed into a
    google.protobuf.Any; its key field must equal `key`. Retries are safe as for place_order: a start is idempotent
    per (saga_type, key), so the same type, key and input joins the saga already started; the same (saga_type, key)
    with another input raises AlreadyExists. UNAVAILABLE and RESOURCE_EXHAUSTED are retried by the client's policy
    (or `retry`) within timeout_s. An unknown saga type raises NotFound; an input of another type than the
    definition's, or a key that is not the input's key field, InvalidRequest."""
    packed = any_pb2.Any()
    packed.Pack(input_message)
    request = saga_pb2.StartSagaRequest(saga_type=saga_type, key=key, input=packed, no_wait=no_wait)
    if ttl_ms is not None:
        request.ttl_ms = ttl_ms
    return Unary("saga", "StartSaga", request, _same, timeout_s, retry)


def get_saga(
    order_id: str = "",
    *,
    include_events: bool = False,
    saga_type: str = "",
    key: str = "",
    timeout_s: float | None = None,
    retry: RetryPolicy | None = None,
) -> Unary[saga_pb2.Saga]:
    """The saga (steps by step_id, its saga_type and definition version; the event log too with include_events) of an
    order, or of any type by saga_type and key (`get_saga(saga_type="order_loyalty", key="o-1")`). NotFound if
    there is none. Retried by `retry` (default: the client's policy)."""
    request = _named(saga_pb2.GetSagaRequest(include_events=include_events), order_id, saga_type, key)
    return Unary("saga", "GetSaga", request, _same, timeout_s, retry)


def list_sagas(
    *,
    state: saga_pb2.SagaState.ValueType = saga_pb2.SAGA_STATE_UNSPECIFIED,
    page_size: int = 50,
    page_token: str = "",
    max_pages: int | None = None,
    timeout_s: float | None = None,
) -> Paged[SagaPage]:
    """Pages of sagas, newest first, optionally only those in `state`, until the last page or max_pages. Each
    page is one call (page_size 1-500), retried, with its own timeout_s."""

    def request_for(token: str) -> saga_pb2.ListSagasRequest:
        return saga_pb2.ListSagasRequest(state=state, page_size=page_size, page_token=token)

    def page(reply: saga_pb2.ListSagasResponse) -> SagaPage:
        return SagaPage(list(reply.sagas), reply.next_page_token)

    return Paged("saga", "ListSagas", request_for, page, page_token, max_pages, timeout_s)


def watch_saga(order_id: str = "", *, saga_type: str = "", key: str = "") -> Stream[saga_pb2.SagaUpdate]:
    """The saga's current snapshot (event unset), then one update per journal event, ending after its terminal
    state; the saga named by order_id, or by saga_type and key. No timeout and no retry: a watch lasts as long as
    the saga; if it breaks (Unavailable), watch again (the first update is the current snapshot, so nothing is lost
    but intermediate events)."""
    return Stream("saga", "WatchSaga", _named(saga_pb2.WatchSagaRequest(), order_id, saga_type, key))


# ------------------------------------------------------------------ admin (the operator role)


def list_dead_letters(
    *,
    step: saga_pb2.Step.ValueType = saga_pb2.STEP_UNSPECIFIED,
    include_closed: bool = False,
    page_size: int = 50,
    page_token: str = "",
    max_pages: int | None = None,
    timeout_s: float | None = None,
) -> Paged[DeadLetterPage]:
    """Pages of dead letters, oldest first (open ones; closed ones too with include_closed). Retried."""

    def request_for(token: str) -> saga_pb2.ListDeadLettersRequest:
        return saga_pb2.ListDeadLettersRequest(
            step=step, include_closed=include_closed, page_size=page_size, page_token=token
        )

    def page(reply: saga_pb2.ListDeadLettersResponse) -> DeadLetterPage:
        return DeadLetterPage(list(reply.dead_letters), reply.next_page_token)

    return Paged("admin", "ListDeadLetters", request_for, page, page_token, max_pages, timeout_s)


def retry_dead_letter(
    order_id: str,
    reason: str,
    *,
    saga_type: str = "",
    key: str = "",
    dry_run: bool = False,
    timeout_s: float | None = None,
) -> Unary[RetriedOrders]:
    """Resumes the dead-lettered saga (its compensation, or for a retriable step after the pivot that step, forward);
    returns the keys resumed. The saga is the order's, or with order_id "" the one of saga_type and key. Not retried
    (an answer lost after the retry was journaled would make a second attempt fail with FailedPrecondition).

    With dry_run, nothing changes: returns the order id that would be resumed, with `.previews` saying what the retry
    would do (saga_pb2.SagaPreview: every call, its idempotency key and attempt, and the state it would end in). The
    same errors as the real call (NotFound, FailedPrecondition, PermissionDenied, ...). Dry runs are retried by the
    client's policy: they are safe to repeat."""
    request = _named(saga_pb2.RetryDeadLetterRequest(reason=reason, dry_run=dry_run), order_id, saga_type, key)
    return Unary("admin", "RetryDeadLetter", request, _retried, timeout_s, None if dry_run else NO_RETRY)


def retry_all_dead_letters(
    reason: str,
    *,
    step: saga_pb2.Step.ValueType = saga_pb2.STEP_UNSPECIFIED,
    dry_run: bool = False,
    timeout_s: float | None = None,
) -> Unary[RetriedOrders]:
    """Resumes every open dead letter (of `step`, if given), up to the shard's bulk limit per call. Not retried.

    With dry_run, nothing changes: returns the order ids that would be resumed, with `.previews` (one per order, in
    the same order) saying what each retry would do. Retried by the client's policy."""
    request = saga_pb2.RetryDeadLetterRequest(all=True, step=step, reason=reason, dry_run=dry_run)
    return Unary("admin", "RetryDeadLetter", request, _retried, timeout_s, None if dry_run else NO_RETRY)


def resolve_dead_letter(
    order_id: str,
    reason: str,
    *,
    saga_type: str = "",
    key: str = "",
    dry_run: bool = False,
    timeout_s: float | None = None,
) -> Unary[saga_pb2.Saga]:
    """Marks a dead-lettered saga as fixed by hand (RESOLVED), reason written to its log; returns the saga. The saga
    is the order's, or with order_id "" the one of saga_type and key. Not retried.

    With dry_run, nothing changes: returns the saga as it stands (DEAD_LETTERED), after the same checks and with the
    same errors as the real call (a reason is required all the same). Resolving makes no call to any service; the
    saga would end RESOLVED. Retried by the client's policy."""
    request = _named(saga_pb2.ResolveDeadLetterRequest(reason=reason, dry_run=dry_run), order_id, saga_type, key)
    return Unary("admin", "ResolveDeadLetter", request, _saga_of, timeout_s, None if dry_run else NO_RETRY)


def list_definitions(
    *, include_documents: bool = False, timeout_s: float | None = None
) -> Unary[list[saga_pb2.DefinitionVersion]]:
    """Every saga definition version the coordinator holds, grouped by type, oldest first: its version label, hash,
    whether new sagas of its type start on it (active), how many sagas still need it, its step ids; with
    include_documents also its normalised document (JSON, e.g. its input type). Retried."""
    request = saga_pb2.ListDefinitionsRequest(include_documents=include_documents)
    return Unary("admin", "ListDefinitions", request, _definitions, timeout_s)
