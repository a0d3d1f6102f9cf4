"""Idempotency records: what each key did on one service, kept in memory as the source of truth for reads.

The store (store.py) makes them durable; this module only knows their shape and the replay rules.
"""

from __future__ import annotations

import asyncio
import hashlib
from collections.abc import Iterator, Mapping
from dataclasses import dataclass, field

import grpc
from google.protobuf.message import Message

from service_stubs.errors import TOMBSTONED_MESSAGE, StubError
from service_stubs.lro_rules import Lro

KEY_REUSED_MESSAGE = "idempotency key already used with a different request"


def request_digest(method: str, request: Message) -> str:
    """Hash of the method and the deterministically serialized request: equal requests, equal digests."""
    payload = request.SerializeToString(deterministic=True)
    return hashlib.sha256(method.encode() + b"\0" + payload).hexdigest()


def derived_id(prefix: str, key: str) -> str:
    """A stable id for what `key` created (charge, reservation...): the same on replay and after a restart."""
    return f"{prefix}_{hashlib.sha256(key.encode()).hexdigest()[:20]}"


@dataclass(frozen=True, slots=True)
class Answer:
    """The answer recorded for a key: OK with a serialized response, or a business rejection."""

    code: str
    """Status code name, "OK" or e.g. "FAILED_PRECONDITION"."""
    message: str = ""
    response: bytes = b""

    @property
    def ok(self) -> bool:
        return self.code == "OK"

    @classmethod
    def success(cls, response: Message) -> Answer:
        return cls("OK", "", response.SerializeToString())

    @classmethod
    def rejection(cls, code: grpc.StatusCode, message: str) -> Answer:
        return cls(code.name, message, b"")

    def error(self) -> StubError:
        return StubError(grpc.StatusCode[self.code], self.message)


TOMBSTONED = Answer.rejection(grpc.StatusCode.ABORTED, TOMBSTONED_MESSAGE)
"""The answer of a forward key tombstoned by its compensation, or cancelled by it while in progress."""


@dataclass(slots=True)
class KeyRecord:
    """One idempotency key on one service. Mutable only in the event loop thread; the store copies it on commit."""

    key: str
    method: str
    """The method that used the key; for a tombstone, the forward method it refuses."""
    order_id: str
    request_digest: str | None
    """None for a tombstone recorded before any forward call with this key was answered."""
    answer: Answer | None
    """None until the key has a recorded answer (a bare tombstone)."""
    applied_count: int = 0
    """Times the key's effect was applied; the protocol keeps it at most 1, the ledger reports it to prove that."""
    tombstoned: bool = False
    effect: Mapping[str, int] = field(default_factory=dict)
    """What an applied forward call did, so a compensation undoes exactly that: units per item id for a reservation,
    {"cents": n} for a charge, empty otherwise."""
    undone_by: str | None = None
    """Key of the compensation that undid this forward call."""
    in_progress: bool = False
    """A long-running operation accepted and not finished: no answer and nothing applied yet."""
    lro: Lro | None = None
    """Set if the call was accepted as a long-running operation: how long it runs (kept once it is done)."""
    accepted_at_epoch_ms: int | None = None
    """When the operation was accepted (wall clock: its due time must survive a restart)."""
    request: bytes | None = None
    """The serialized request while in progress, to apply when the operation finishes; dropped then."""
    undo_lro: Lro | None = None
    """For an applied forward call: the long-running rule of the compensation that would undo it."""
    finalized_by: str | None = None
    """Key of the final step (ApproveOrder, ConfirmReservation, ReleaseShipment) that made this forward call's effect
    final: no compensation undoes it from then on (holds.py)."""
    details: bytes | None = None
    """For an applied forward call whose effect a read reports (GetOrder, GetShipment): what it applied, serialized."""

    @classmethod
    def tombstone(cls, key: str, method: str, order_id: str) -> KeyRecord:
        return cls(key=key, method=method, order_id=order_id, request_digest=None, answer=None, tombstoned=True)

    @property
    def applied(self) -> bool:
        return self.applied_count > 0

    @property
    def due_at_epoch_ms(self) -> int | None:
        """When an operation in progress finishes; None if it never does (or is not one)."""
        if self.lro is None or self.accepted_at_epoch_ms is None:
            return None
        return self.lro.due_at_epoch_ms(self.accepted_at_epoch_ms)

    def due(self, now_epoch_ms: int) -> bool:
        """True for an operation in progress whose time has come."""
        due_at = self.due_at_epoch_ms
        return self.in_progress and due_at is not None and now_epoch_ms >= due_at

    @property
    def code(self) -> str:
        """The code a call with this key gets now: the recorded one, ABORTED for a bare tombstone, "" in progress."""
        if self.in_progress:
            return ""
        return self.answer.code if self.answer is not None else grpc.StatusCode.ABORTED.name

    @property
    def final(self) -> Answer:
        """The answer a call with this key gets now, once it is not in progress (a bare tombstone's is ABORTED)."""
        assert not self.in_progress, "an operation in progress has no final answer yet"
        if self.answer is None:
            return TOMBSTONED
        return self.answer

    def check_request(self, digest: str) -> None:
        """Raises ALREADY_EXISTS if a call reuses the key with another request."""
        if self.request_digest is not None and digest != self.request_digest:
            raise StubError(grpc.StatusCode.ALREADY_EXISTS, KEY_REUSED_MESSAGE)

    def replay(self, digest: str) -> Answer:
        """The first answer, for a call that reuses the key; raises if the call may not have it."""
        assert not self.in_progress, "an operation in progress is answered by the service"
        if self.answer is None or self.request_digest is None:
            raise TOMBSTONED.error()
        self.check_request(digest)
        return self.answer


class _KeyLock:
    __slots__ = ("lock", "users")

    def __init__(self) -> None:
        self.lock = asyncio.Lock()
        self.users = 0


class KeyTable:
    """Every record of one service, indexed by key and by order, plus per-key locks that serialize duplicate calls."""

    def __init__(self, service: str) -> None:
        self.service = service
        self._records: dict[str, KeyRecord] = {}
        self._by_order: dict[str, list[str]] = {}
        # Entries live only while a call holds or waits for the key, so the table is bounded by calls in flight.
        self._locks: dict[str, _KeyLock] = {}

    def __len__(self) -> int:
        return len(self._records)

    def __iter__(self) -> Iterator[KeyRecord]:
        return iter(self._records.values())

    def get(self, key: str) -> KeyRecord | None:
        return self._records.get(key)

    def busy(self, key: str) -> bool:
        """True while a call with this key is being served (it may have no record yet)."""
        return key in self._locks

    def put(self, record: KeyRecord) -> None:
        """Adds a new record (a key is recorded once; later changes mutate the record in place)."""
        assert record.key not in self._records, f"{self.service}: key {record.key!r} recorded twice"
        self._records[record.key] = record
        self._by_order.setdefault(record.order_id, []).append(record.key)

    def for_order(self, order_id: str) -> list[KeyRecord]:
        return [self._records[key] for key in self._by_order.get(order_id, ())]

    def locked(self, key: str) -> _KeyGuard:
        """`async with table.locked(key):` runs calls with the same key one at a time, in arrival order."""
        return _KeyGuard(self, key)

    def _acquire_entry(self, key: str) -> _KeyLock:
        entry = self._locks.get(key)
        if entry is None:
            entry = self._locks[key] = _KeyLock()
        entry.users += 1
        return entry

    def _release_entry(self, key: str, entry: _KeyLock) -> None:
        entry.users -= 1
        if entry.users == 0:
            del self._locks[key]


class _KeyGuard:
    __slots__ = ("_entry", "_key", "_table")

    def __init__(self, table: KeyTable, key: str) -> None:
        self._table = table
        self._key = key
        self._entry: _KeyLock | None = None

    async def __aenter__(self) -> None:
        entry = self._table._acquire_entry(self._key)
        try:
            await entry.lock.acquire()
        except BaseException:
            # Cancelled while waiting (the caller's deadline): give the slot back or the entry leaks.
            self._table._release_entry(self._key, entry)
            raise
        self._entry = entry

    async def __aexit__(self, *exc: object) -> None:
        entry = self._entry
        assert entry is not None
        entry.lock.release()
        self._table._release_entry(self._key, entry)
