"""Fakes for unit tests of the engine's pure logic: a scripted caller that also keeps a ledger like the real stubs, and
a journal that says when it is idle (so a fake clock moves only once the real I/O it started has finished)."""

from __future__ import annotations

import asyncio
import functools
from collections import defaultdict
from collections.abc import Awaitable, Callable, Sequence
from dataclasses import dataclass, field
from typing import Any, TypeVar

import grpc

from coordinator.caller import SagaPayload
from coordinator.clock import FakeClock
from coordinator.errors import CallResult
from coordinator.journal import Journal, Record
from coordinator.model import Action, Step, idempotency_key

Script = Callable[[SagaPayload, int], CallResult | None]


@dataclass
class Call:
    order_id: str
    step: Step
    action: Action
    key: str
    timeout_s: float


@dataclass
class FakeCaller:
    """Answers OK unless a script says otherwise. A script returning None hangs: like a gRPC call, the attempt then
    ends with DEADLINE_EXCEEDED when its timeout passes on the fake clock (applying nothing).

    It keeps the services' contract in miniature: applied forward keys, tombstones, and net effect per order."""

    clock: FakeClock = field(default_factory=FakeClock)
    scripts: dict[tuple[Step, Action], Script] = field(default_factory=dict)
    calls: list[Call] = field(default_factory=list)
    applied: dict[str, int] = field(default_factory=lambda: defaultdict(int))
    tombstones: set[str] = field(default_factory=set)
    net: dict[tuple[str, Step], int] = field(default_factory=lambda: defaultdict(int))
    attempts: dict[tuple[str, Step, Action], int] = field(default_factory=lambda: defaultdict(int))

    def script(self, step: Step, action: Action, fn: Script) -> None:
        self.scripts[(step, action)] = fn

    def fail_with(self, step: Step, action: Action, code: grpc.StatusCode, times: int = 10**9, msg: str = "") -> None:
        """The first `times` attempts fail with code (applying nothing), later ones succeed."""
        self.script(step, action, lambda p, n: CallResult(code, msg) if n <= times else CallResult(grpc.StatusCode.OK))

    def hang(self, step: Step, action: Action) -> None:
        self.script(step, action, lambda p, n: None)

    async def call(self, payload: SagaPayload, step: Step, action: Action, timeout_s: float) -> CallResult:
        key = idempotency_key(payload.saga_id, step, action)
        self.calls.append(Call(payload.order_id, step, action, key, timeout_s))
        self.attempts[(payload.order_id, step, action)] += 1
        n = self.attempts[(payload.order_id, step, action)]
        script = self.scripts.get((step, action))
        result = script(payload, n) if script else CallResult(grpc.StatusCode.OK)
        if result is None:
            await self.clock.sleep(timeout_s)
            return CallResult(grpc.StatusCode.DEADLINE_EXCEEDED, "Deadline Exceeded")
        if result.ok:
            fkey = idempotency_key(payload.saga_id, step, Action.FORWARD)
            if action is Action.FORWARD:
                if fkey in self.tombstones:
                    return CallResult(grpc.StatusCode.ABORTED, "tombstoned")
                if self.applied[key] == 0:
                    self.applied[key] += 1
                    self.net[(payload.order_id, step)] += 1
            elif self.applied[fkey] and self.applied[key] == 0:
                self.applied[key] += 1
                self.net[(payload.order_id, step)] -= 1
            elif not self.applied[fkey]:
                self.tombstones.add(fkey)
        return result

    async def close(self) -> None:
        return None

    def steps_called(self, order_id: str, action: Action) -> list[Step]:
        out: list[Step] = []
        for c in self.calls:
            if c.order_id == order_id and c.action is action and (not out or out[-1] is not c.step):
                out.append(c.step)
        return out


_F = TypeVar("_F", bound=Callable[..., Awaitable[Any]])


class ObservedJournal(Journal):
    """A real journal that counts what it has not finished: submitted records not yet committed, reads under way."""

    def __init__(self, path: str) -> None:
        super().__init__(path)
        self.open_work = 0

    @property
    def idle(self) -> bool:
        return self.open_work == 0

    def submit(self, records: Sequence[Record]) -> asyncio.Future[None]:
        fut = super().submit(records)
        if not fut.done():
            self.open_work += 1
            fut.add_done_callback(self._finished)
        return fut

    def _finished(self, _: object) -> None:
        self.open_work -= 1


def _counted(fn: _F) -> _F:
    @functools.wraps(fn)
    async def wrapper(self: ObservedJournal, *args: Any, **kwargs: Any) -> Any:
        self.open_work += 1
        try:
            return await fn(self, *args, **kwargs)
        finally:
            self.open_work -= 1

    return wrapper  # type: ignore[return-value]


for _name in ("get_by_order", "events", "events_for", "unfinished", "list_sagas", "dead_letters", "open_dead_letters"):
    setattr(ObservedJournal, _name, _counted(getattr(Journal, _name)))
