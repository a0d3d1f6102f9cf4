"""A saga definition once checked: what the coordinator runs, the router hashes and the tools draw.

A definition file (docs/definitions.md; JSON Schema in schema.json) is checked by common.definitions.check, which
reports every problem at once, and becomes a Definition: plain data plus, for every call, a request builder compiled
once from its mapping (common.definitions.paths). Nothing here reads the file again or walks a dict per call.

Steps are numbered from 1 in file order: the number is what the journal stores (saga_events.step,
dead_letters.step), the id is what idempotency keys, logs, metrics and the API show. For the order flow the numbers
are those of the saga.v1 Step enum, so journals written before definitions existed read unchanged.
"""

from __future__ import annotations

import enum
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from typing import Any

from google.protobuf.message import Message

SCHEMA = "saga/v1"
"""The `schema:` every definition file names; the interpreter keeps running every schema it ever accepted."""


class Kind(enum.StrEnum):
    """What happens to a step when the saga cannot finish (Richardson's vocabulary)."""

    COMPENSABLE = "compensable"
    """Undone by its compensation, in reverse order, when a later step fails for good or the deadline passes."""
    PIVOT = "pivot"
    """The point of no return (at most one): once it succeeded the saga only goes forward. Its compensation, if it
    has one, runs only when the pivot itself failed with an outcome that may have applied."""
    RETRIABLE = "retriable"
    """After the pivot: never compensated; retried by its policy, then the saga is parked for an operator."""


class Action(enum.IntEnum):
    FORWARD = 1
    COMPENSATE = 2

    @property
    def label(self) -> str:
        return "forward" if self is Action.FORWARD else "compensate"


@dataclass(frozen=True, slots=True)
class Values:
    """What a request mapping reads at run time: the saga's input, its identity, the outputs of earlier steps."""

    saga_id: str
    key: str
    input: Message
    outputs: dict[int, Message] = field(default_factory=dict)
    """Step number -> the step's forward response, for the steps whose output a mapping uses (journaled)."""


RequestBuilder = Callable[[Values, str], Message]
"""(values, forward idempotency key of the step) -> the request message."""


@dataclass(frozen=True, slots=True, eq=False)
class Call:
    """One gRPC method a step calls, with the request mapping compiled."""

    method: str
    """"package.Service/Method" as written in the file."""
    path: str
    """The full gRPC path, "/package.Service/Method"."""
    service: str
    """Full name of the gRPC service, "shop.v1.PaymentService"."""
    request_type: Any
    """The request message class."""
    response_type: Any
    """The response message class."""
    build: RequestBuilder
    long_running: bool
    """The response has an `operation` field (shop.v1.Operation): the service may accept and finish later."""
    mapping: Mapping[str, Any]
    """The mapping as written (for plans, diffs and graphs); never read on the hot path."""


@dataclass(frozen=True, slots=True)
class Policy:
    """A step's policy overrides as the file gives them (its own, laid over the file's `defaults`): the shard lays
    them over its configuration. Keys are those of coordinator.config.RetryPolicy / OperationPolicy."""

    forward: Mapping[str, Any] = field(default_factory=dict)
    compensate: Mapping[str, Any] = field(default_factory=dict)
    operations: Mapping[str, Any] = field(default_factory=dict)
    codes: Mapping[str, tuple[str, ...]] = field(default_factory=dict)
    """"transient" / "rejected" / "unknown" -> gRPC status code names that this step classifies so."""


@dataclass(frozen=True, slots=True, eq=False)
class Step:
    """Equal (and hashed) by number: the same step of two compilations of a definition is the same step, and a step
    is interchangeable with its number (the journal's, an event's, a dict key of StepProgress)."""

    number: int
    """1-based position in the file: what the journal stores."""
    id: str
    kind: Kind
    endpoint: str
    """The name of the service's address in the shard's [services] table ("payment")."""
    call: Call
    compensation: Call | None
    policy: Policy
    get_operation: str
    """The full gRPC path of the service's GetOperation, "" if its service has none (then it cannot be asked)."""
    output_used: bool
    """A later request (or this step's compensation) reads this step's response: the engine journals it."""

    @property
    def label(self) -> str:
        return self.id

    def __eq__(self, other: object) -> bool:
        if isinstance(other, Step):
            return (self.number, self.id) == (other.number, other.id)
        if isinstance(other, int) and not isinstance(other, bool):
            return self.number == other
        return NotImplemented

    def __hash__(self) -> int:
        return hash(self.number)

    def __index__(self) -> int:
        return self.number

    def __int__(self) -> int:
        return self.number

    def __repr__(self) -> str:
        return f"Step({self.number}, {self.id!r}, {self.kind.value})"


@dataclass(frozen=True, slots=True)
class Definition:
    name: str
    """The saga type: what StartSaga names and new sagas of the type run (through the alias of that name)."""
    version: str
    """The file's version label (free text, for people); the identity is `hash`."""
    hash: str
    """BLAKE2b of the normalised document plus the fingerprints of the message types it uses (common.definitions
    .identity): what a saga's journal row stores, so it finishes on the definition it started on."""
    input_type: Any
    """The input message class."""
    key_field: str
    """Dotted path of the input's key field (a string): PlaceOrder's idempotency and the router's hashing use it."""
    key_of: Callable[[Message], str]
    steps: tuple[Step, ...]
    ttl_default_ms: int | None
    ttl_max_ms: int | None
    document: Mapping[str, Any]
    """The normalised document (what is hashed, stored in journals and shown by tools)."""
    description: str = ""

    def step(self, number: int) -> Step:
        return self.steps[number - 1]

    @property
    def pivot(self) -> int:
        """Number of the pivot step; 0 if the definition has none (every step compensable)."""
        for s in self.steps:
            if s.kind is Kind.PIVOT:
                return s.number
        return 0

    def by_id(self, step_id: str) -> Step | None:
        for s in self.steps:
            if s.id == step_id:
                return s
        return None


def idempotency_key(saga_id: str, step_id: str, action: Action) -> str:
    """The key a service sees for (saga, step, action): identical across retries, restarts and versions."""
    return f"{saga_id}/{step_id}/{action.label}"
