"""Fakes for unit tests of the engine's pure logic: a scripted caller that also keeps a ledger like the real stubs, and
a journal that says when it is idle (so a fake clock moves only once the real I/O it started has finished)."""

from __future__ import annotations

import functools
from collections import defaultdict
from collections.abc import Awaitable, Callable
from dataclasses import dataclass, field
from typing import Any, TypeVar

import grpc

from common.definitions.model import Step, Values
from coordinator.journal import Journal
from coordinator.saga.errors import CallClass, CallResult, OperationAnswer, OperationState
from coordinator.saga.model import Action, SagaState, idempotency_key
from coordinator.tools.sandbox import ObservedJournal as SandboxJournal
from tests.helpers.clock import FakeClock

Script = Callable[[Values, int], CallResult | None]


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
    operations: dict[str, float] = field(default_factory=dict)
    """Accepted long-running calls by key: when (fake monotonic seconds) each finishes; inf: never."""
    asked: list[str] = field(default_factory=list)
    """Keys GetOperation was asked about, in order."""
    answered: dict[str, CallResult] = field(default_factory=dict)
    """The final answer recorded per key (what GetOperation reports as DONE)."""
    ask_unknown: bool = False
    """GetOperation answers UNKNOWN (a service without it)."""

    def script(self, step: Step, action: Action, fn: Script) -> None:
        self.scripts[(step, action)] = fn

    def fail_with(self, step: Step, action: Action, code: grpc.StatusCode, times: int = 10**9, msg: str = "") -> None:
        """The first `times` attempts fail with code (applying nothing), later ones succeed."""
        self.script(step, action, lambda p, n: CallResult(code, msg) if n <= times else CallResult(grpc.StatusCode.OK))

    def hang(self, step: Step, action: Action) -> None:
        self.script(step, action, lambda p, n: None)

    def long_running(self, step: Step, action: Action, duration_s: float) -> None:
        """The call is accepted and finishes duration_s later (math.inf: never), applying its effect then."""

        def accept(p: Values, n: int) -> CallResult:
            key = idempotency_key(p.saga_id, step.id, action)
            self.operations.setdefault(key, self.clock.monotonic() + duration_s)
            return CallResult(grpc.StatusCode.OK, in_progress=True)

        self.script(step, action, accept)

    async def get_operation(self, payload: Values, step: Step, action: Action, timeout_s: float) -> OperationAnswer:
        key = idempotency_key(payload.saga_id, step.id, action)
        self.asked.append(key)
        if self.ask_unknown:
            return OperationAnswer(OperationState.UNKNOWN, CallResult(grpc.StatusCode.UNIMPLEMENTED))
        done_at = self.operations.get(key)
        if done_at is not None and key not in self.answered:
            if self.clock.monotonic() < done_at:
                return OperationAnswer(OperationState.IN_PROGRESS)
            self._apply(payload, step, action)
            self.answered[key] = CallResult(grpc.StatusCode.OK)
        found = self.answered.get(key)
        if found is None:
            return OperationAnswer(OperationState.NOT_FOUND)
        return OperationAnswer(OperationState.DONE, found)

    async def call(self, payload: Values, step: Step, action: Action, timeout_s: float) -> CallResult:
        key = idempotency_key(payload.saga_id, step.id, action)
        self.calls.append(Call(payload.key, step, action, key, timeout_s))
        self.attempts[(payload.key, step, action)] += 1
        n = self.attempts[(payload.key, step, action)]
        script = self.scripts.get((step, action))
        result = script(payload, n) if script else CallResult(grpc.StatusCode.OK)
        if result is None:
            await self.clock.sleep(timeout_s)
            return CallResult(grpc.StatusCode.DEADLINE_EXCEEDED, "Deadline Exceeded")
        if key in self.answered and key not in self.operations:
            return self.answered[key]  # a key seen before: its first answer, nothing new applied
        if result.ok and result.in_progress:
            if key in self.answered:  # accepted earlier and finished since: the final answer
                return self.answered[key]
            return result
        if result.ok:
            fkey = idempotency_key(payload.saga_id, step.id, Action.FORWARD)
            if action is Action.FORWARD and fkey in self.tombstones:
                return CallResult(grpc.StatusCode.ABORTED, "tombstoned", final=True)
            if action is Action.COMPENSATE and fkey in self.operations and fkey not in self.answered:
                # Compensating a forward call still in progress cancels it: it never applies.
                self.answered[fkey] = CallResult(grpc.StatusCode.ABORTED, "cancelled by its compensation")
                self.tombstones.add(fkey)
            self._apply(payload, step, action)
            self.answered[key] = result
        elif result.cls is CallClass.REJECTED and action is Action.FORWARD:
            self.answered[key] = result  # a business rejection is the key's final answer
        return result

    def _apply(self, payload: Values, step: Step, action: Action) -> None:
        key = idempotency_key(payload.saga_id, step.id, action)
        fkey = idempotency_key(payload.saga_id, step.id, Action.FORWARD)
        if action is Action.FORWARD:
            if self.applied[key] == 0:
                self.applied[key] += 1
                self.net[(payload.key, step)] += 1
        elif self.applied[fkey] and self.applied[key] == 0:
            self.applied[key] += 1
            self.net[(payload.key, step)] -= 1
        elif not self.applied[fkey]:
            self.tombstones.add(fkey)

    async def close(self) -> None:
        return None

    def steps_called(self, order_id: str, action: Action) -> list[Step]:
        out: list[Step] = []
        for c in self.calls:
            if c.order_id == order_id and c.action is action and (not out or out[-1] is not c.step):
                out.append(c.step)
        return out


_F = TypeVar("_F", bound=Callable[..., Awaitable[Any]])


class ObservedJournal(SandboxJournal):
    """A real journal that counts what it has not finished (coordinator.tools.sandbox's): submitted records not yet
    committed, reads under way."""

    @property
    def idle(self) -> bool:
        return self.open_work == 0

    async def state_counts(self) -> dict[SagaState, int]:
        """How many sagas the journal holds in each state (a test's question: no product code asks it)."""
        async with self._reader.execute("SELECT state, count(*) FROM sagas GROUP BY state") as cur:
            return {SagaState(s): n for s, n in await cur.fetchall()}


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
