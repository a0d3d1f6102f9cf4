"""Seeded fault plans: which calls get latency, hang, fail, or apply and then fail (control.proto's FaultRule).

A call takes the first rule matching its method and order id. Each rule owns a random stream derived from (seed, rule
index) and draws exactly one number per matching call, so the same seed and the same sequence of calls give the same
faults, and adding calls for one rule does not shift the faults of another.
"""

from __future__ import annotations

import asyncio
import enum
import hashlib
import random
from collections.abc import Sequence
from dataclasses import dataclass
from typing import NoReturn

import grpc

from protos.service_stubs.v1 import control_pb2
from service_stubs.errors import InvalidArgument

MAX_LATENCY_MS = 600_000
"""Bound on injected latency: longer than any sane deadline already, anything more is a typo."""


class FaultAction(enum.Enum):
    NONE = "none"
    HANG = "hang"
    """Never answer; nothing applied. The caller's deadline (or server stop) ends the call."""
    ERROR = "error"
    """Answer error_code before applying anything."""
    APPLY_THEN_FAIL = "apply_then_fail"
    """Apply and record the real answer durably, then answer error_code: the reply was lost."""


@dataclass(frozen=True)
class Fault:
    """What happens to one call."""

    latency_s: float
    action: FaultAction
    code: grpc.StatusCode


NO_FAULT = Fault(0.0, FaultAction.NONE, grpc.StatusCode.UNAVAILABLE)


@dataclass(frozen=True)
class FaultRule:
    """control.proto FaultRule, validated."""

    method: str
    order_id_prefix: str = ""
    error_rate: float = 0.0
    error_code: grpc.StatusCode = grpc.StatusCode.UNAVAILABLE
    latency_ms: int = 0
    hang_rate: float = 0.0
    apply_then_fail_rate: float = 0.0

    def matches(self, full_method: str, method: str, order_id: str) -> bool:
        if self.method not in ("*", method, full_method):
            return False
        return order_id.startswith(self.order_id_prefix)

    @classmethod
    def from_proto(cls, rule: control_pb2.FaultRule, index: int) -> FaultRule:
        """Raises InvalidArgument naming `rules[index].<field>` for a rule that makes no sense."""
        where = f"rules[{index}]"
        if not rule.method:
            raise InvalidArgument(f"{where}.method", 'required: a method name, a full method path, or "*"')
        for name in ("error_rate", "hang_rate", "apply_then_fail_rate"):
            value = getattr(rule, name)
            if not 0.0 <= value <= 1.0:
                raise InvalidArgument(f"{where}.{name}", f"must be between 0 and 1, got {value}")
        if rule.error_rate + rule.hang_rate + rule.apply_then_fail_rate > 1.0 + 1e-9:
            # One draw per call is split between the three outcomes, so together they cannot exceed certainty.
            raise InvalidArgument(f"{where}.error_rate", "error_rate + hang_rate + apply_then_fail_rate must be <= 1")
        if not 0 <= rule.latency_ms <= MAX_LATENCY_MS:
            raise InvalidArgument(f"{where}.latency_ms", f"must be between 0 and {MAX_LATENCY_MS}")
        code_name = rule.error_code or "UNAVAILABLE"
        code = grpc.StatusCode.__members__.get(code_name)
        if code is None or code is grpc.StatusCode.OK:
            raise InvalidArgument(f"{where}.error_code", f"not a non-OK gRPC status code name: {code_name!r}")
        return cls(
            method=rule.method,
            order_id_prefix=rule.order_id_prefix,
            error_rate=rule.error_rate,
            error_code=code,
            latency_ms=rule.latency_ms,
            hang_rate=rule.hang_rate,
            apply_then_fail_rate=rule.apply_then_fail_rate,
        )


def _stream_seed(seed: int, index: int) -> bytes:
    # A hash, not seed + index: neighbouring seeds must not share streams shifted by one rule.
    return hashlib.sha256(f"{seed}/{index}".encode()).digest()


class FaultPlan:
    """Rules plus their random streams. Not thread-safe: used from the event loop only."""

    def __init__(self, rules: Sequence[FaultRule] = (), seed: int = 0) -> None:
        self.rules = tuple(rules)
        self.seed = seed
        self._streams = [random.Random(_stream_seed(seed, index)) for index in range(len(self.rules))]

    def decide(self, full_method: str, method: str, order_id: str) -> Fault:
        for rule, stream in zip(self.rules, self._streams, strict=True):
            if not rule.matches(full_method, method, order_id):
                continue
            draw = stream.random()
            latency_s = rule.latency_ms / 1000.0
            if draw < rule.hang_rate:
                return Fault(latency_s, FaultAction.HANG, rule.error_code)
            if draw < rule.hang_rate + rule.error_rate:
                return Fault(latency_s, FaultAction.ERROR, rule.error_code)
            if draw < rule.hang_rate + rule.error_rate + rule.apply_then_fail_rate:
                return Fault(latency_s, FaultAction.APPLY_THEN_FAIL, rule.error_code)
            return Fault(latency_s, FaultAction.NONE, rule.error_code)
        return NO_FAULT


class FaultInjector:
    """The plan currently installed in this process, shared by every service it hosts."""

    def __init__(self) -> None:
        self.plan = FaultPlan()

    def install(self, plan: FaultPlan) -> None:
        self.plan = plan

    def clear(self) -> None:
        self.plan = FaultPlan()

    def decide(self, full_method: str, method: str, order_id: str) -> Fault:
        return self.plan.decide(full_method, method, order_id)


async def hang_forever() -> NoReturn:
    """Waits until cancelled: the caller's deadline or the server's stop ends the call."""
    await asyncio.get_running_loop().create_future()
    raise AssertionError("unreachable: nobody resolves this future")
