"""`saga-defs plan`: every call the coordinator makes for one saga of a definition when given steps fail as said,
in order, with its request (payment fields masked), idempotency key, attempt number and answer, and where the saga
ends.

It runs the saga through the real Shard and Engine (coordinator.tools.sandbox) against fake services, so the plan is
the engine's own decisions, never a second description of them. preview.plan_retry is the operators' dry run for a
parked saga (what a retry would send, from its journal); this is its counterpart for a whole run of a definition
before it is deployed.
"""

from __future__ import annotations

import json
from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any

from google.protobuf.message import Message

from common.definitions.model import Definition
from coordinator.tools.messages import masked
from coordinator.tools.sandbox import Ran, Sandbox
from coordinator.tools.services import Outcome

PLAN_KEY = "plan-1"
"""The key of the default input's saga."""


@dataclass(frozen=True, slots=True)
class Plan:
    definition: Definition
    input: Message
    failures: Mapping[str, Outcome]
    then: Mapping[str, tuple[Outcome, ...]]
    ran: Ran

    def as_dict(self) -> dict[str, Any]:
        d, ran = self.definition, self.ran
        return {
            "name": d.name,
            "version": d.version,
            "hash": d.hash,
            "input": masked(self.input),
            "failures": {step: outcome.value for step, outcome in self.failures.items()},
            "then": {step: [o.value for o in seq] for step, seq in self.then.items()},
            "saga_id": ran.saga_id,
            "calls": [c.as_dict() for c in ran.calls],
            "end_state": ran.state.name,
            "message": ran.message,
            "elapsed_ms": ran.elapsed_ms,
        }


def parse_failure(text: str) -> tuple[str, Outcome]:
    """ "STEP=OUTCOME" (--fail-at); ValueError naming what is wrong."""
    step, sep, outcome = text.partition("=")
    if not sep or not step:
        raise ValueError(f"{text!r} is not STEP=OUTCOME")
    try:
        return step, Outcome(outcome)
    except ValueError:
        choices = ", ".join(o.value for o in Outcome if o is not Outcome.OK)
        raise ValueError(f"{text!r}: no outcome {outcome!r} (one of {choices})") from None


async def plan(
    flow: Definition,
    message: Message,
    failures: Mapping[str, Outcome],
    seed: int = 0,
    then: Mapping[str, tuple[Outcome, ...]] | None = None,
) -> Plan:
    """One saga of `flow` on `message`, each step named in `failures` meeting its outcome (and, in `then`, what its
    later attempts meet); SandboxError if it cannot run."""
    async with Sandbox(flow, seed) as box:
        ran = await box.run(message, failures, then)
    return Plan(flow, message, dict(failures), dict(then or {}), ran)


def render(p: Plan) -> str:
    d, ran = p.definition, p.ran
    failing = (
        ", ".join(
            f"{s}={o.value}" + "".join(f" then {t.value}" for t in p.then.get(s, ())) for s, o in p.failures.items()
        )
        or "none"
    )
    lines = [
        f"{d.name} version {d.version} hash {d.hash}; failing: {failing}",
        f"input {d.input_type.DESCRIPTOR.full_name} {json.dumps(masked(p.input))}",
    ]
    width = max(len(s.id) for s in d.steps)
    method_width = max((len(c.method) for c in ran.calls), default=0)
    for i, c in enumerate(ran.calls, 1):
        action = "asks" if c.asks else c.action.label
        lines.append(
            f"{i:>3} t+{c.at_ms:<6} {c.step_id:<{width}}  {action:<10} {c.method:<{method_width}}  #{c.attempt}"
            f"  -> {c.result}"
        )
        lines.append(f"      key {c.key}  request {json.dumps(c.request)}")
    end = f"end: {ran.state.name} after {ran.elapsed_ms} ms ({len(ran.calls)} calls)"
    lines.append(f"{end}: {ran.message}" if ran.message else end)
    return "\n".join(lines)
