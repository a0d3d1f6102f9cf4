"""`saga-defs verify`: a definition run through the real engine at every step with every outcome, and the invariants
checked on the fake services' ledger (coordinator.tools.services), not on the sequence of calls.

For each step and each outcome of OUTCOMES (the other steps answering OK) one saga runs in the sandbox, and:

- it ends as the kinds say: SUCCEEDED when the failure heals (ok, applied-then-lost: the service says the call was
  applied); otherwise FAILED when the step is at or before the pivot (every step, without one), DEAD_LETTERED past it;
- no step's effect is applied twice (the same effect under two keys: a compensation calling a forward method);
- a FAILED saga leaves no effect: every effect applied is undone exactly once. A compensation reaches its effect only
  by naming the forward key that applied it (shop.v1 contract: `forward_idempotency_key`); one that names another key
  (`$saga.id`, a field of an output the service never sent, ...) tombstones that key and leaves the effect applied;
- a SUCCEEDED or DEAD_LETTERED saga undoes nothing: past the pivot the saga never compensates, and a retriable step is
  never compensated;
- compensations run in reverse order of the steps.

And before any run, the policies: every step up to the pivot (every step, without one) must be able to finish its own
forward retries within the saga's default TTL (`ttl_ms.default`, else the shard's `default_ttl_ms`): its worst case,
computed as `check` computes it over the policy the engine lays (file over the shard's built-in configuration). A step
whose retry window is longer than the deadline always has its retries cut short by it. (check compares the sum over
those steps with the longest TTL; the order flow's sum, 52 s, passes the longest and not the 30 s default, and it
fails no step of this rule: each of its steps needs 13 s.)
"""

from __future__ import annotations

import dataclasses
import time
from collections import defaultdict
from dataclasses import dataclass, field
from typing import Any

from google.protobuf.message import Message

from common.definitions.check import worst_case_forward_ms
from common.definitions.model import Action, Definition, Kind
from common.definitions.model import Step as StepDef
from coordinator.config import ShardConfig
from coordinator.saga.model import SagaState
from coordinator.saga.policies import Policies
from coordinator.tools.messages import default_input, set_key
from coordinator.tools.sandbox import Ran, Sandbox
from coordinator.tools.services import UNDO_KEY_FIELD, Outcome

OUTCOMES = (
    Outcome.OK,
    Outcome.REJECTED,
    Outcome.UNKNOWN,
    Outcome.TIMEOUT,
    Outcome.APPLIED_THEN_LOST,
    Outcome.ACCEPTED_THEN_FAILED,
)
HEALED = frozenset({Outcome.OK, Outcome.APPLIED_THEN_LOST})
"""Outcomes after which the step counts as done: the saga goes on as if it had answered OK."""


@dataclass(frozen=True, slots=True)
class Cell:
    """One run: a step meeting an outcome."""

    step: str
    outcome: Outcome
    expected: SagaState | None
    """None: the outcome cannot happen at this step (accepted-then-failed of a method that cannot be long-running)."""
    state: SagaState | None = None
    message: str = ""
    violations: tuple[str, ...] = ()
    calls: int = 0

    @property
    def ok(self) -> bool:
        return not self.violations

    def as_dict(self) -> dict[str, Any]:
        return {
            "step": self.step,
            "outcome": self.outcome.value,
            "applicable": self.expected is not None,
            "expected": self.expected.name if self.expected else None,
            "state": self.state.name if self.state else None,
            "message": self.message,
            "calls": self.calls,
            "ok": self.ok,
            "violations": list(self.violations),
        }


@dataclass(frozen=True, slots=True)
class Report:
    definition: Definition
    cells: tuple[Cell, ...]
    problems: tuple[str, ...] = ()
    """Problems of the definition as a whole (its policies against the TTL)."""
    elapsed_s: float = 0.0
    violations: tuple[str, ...] = field(init=False, default=())

    def __post_init__(self) -> None:
        # The same mistake breaks many runs the same way: one line per violation, naming the runs.
        runs: dict[str, list[str]] = defaultdict(list)
        for c in self.cells:
            for v in c.violations:
                runs[v].append(f"{c.step} x {c.outcome.value}")
        found = [f"{v} [{len(r)} run(s): {', '.join(r)}]" for v, r in runs.items()]
        object.__setattr__(self, "violations", tuple(found))

    @property
    def ok(self) -> bool:
        return not self.problems and not self.violations

    def as_dict(self) -> dict[str, Any]:
        d = self.definition
        return {
            "name": d.name,
            "version": d.version,
            "hash": d.hash,
            "ok": self.ok,
            "outcomes": [o.value for o in OUTCOMES],
            "problems": list(self.problems),
            "violations": list(self.violations),
            "cells": [c.as_dict() for c in self.cells],
        }


def expected_state(flow: Definition, step: StepDef, outcome: Outcome) -> SagaState | None:
    if not outcome.applies_to(step):
        return None
    if outcome in HEALED:
        return SagaState.SUCCEEDED
    return SagaState.DEAD_LETTERED if flow.pivot and step.number > flow.pivot else SagaState.FAILED


def ttl_problems(flow: Definition, cfg: ShardConfig | None = None) -> list[str]:
    """Steps up to the pivot whose forward policy cannot finish within the default TTL."""
    cfg = cfg or ShardConfig()
    policies = Policies(cfg)
    ttl_ms = flow.ttl_default_ms or cfg.default_ttl_ms
    found = []
    for step in flow.steps[: flow.pivot or len(flow.steps)]:
        worst_ms = worst_case_forward_ms(dataclasses.asdict(policies.of(flow, step).forward))
        if worst_ms > ttl_ms:
            found.append(
                f"{step.id}: its forward policy may retry for {worst_ms} ms, longer than the saga's default TTL"
                f" ({ttl_ms} ms): the deadline always cuts its retries short (shorten its forward max_elapsed_ms or"
                " max_attempts, or raise ttl_ms.default)"
            )
    return found


def invariants(flow: Definition, failing: StepDef, outcome: Outcome, expected: SagaState, ran: Ran) -> list[str]:
    """What the run broke, one sentence each."""
    found: list[str] = []
    if ran.state is not expected:
        found.append(f"ended {ran.state.name}, expected {expected.name} ({ran.message or 'no message'})")
    applied: dict[str, list[str]] = defaultdict(list)
    for effect in ran.effects:
        applied[effect.step_id].append(effect.key)
        if effect.action is Action.COMPENSATE:
            found.append(
                f"{effect.step_id}: its compensation {effect.method} applied an effect instead of undoing one"
                f" (key {effect.key})"
            )
    for step_id, keys in applied.items():
        if len(keys) > 1:
            found.append(f"{step_id}: applied {len(keys)} times (keys {', '.join(keys)})")
    undos = [c for c in ran.calls if c.action is Action.COMPENSATE and not c.asks]
    if ran.state is SagaState.FAILED:
        for effect in ran.effects:
            if not effect.undone_by and effect.action is Action.FORWARD:
                found.append(_never_undone(flow, ran, effect.step_id, effect.method, effect.key))
            elif len(effect.undone_by) > 1:
                found.append(f"{effect.step_id}: undone {len(effect.undone_by)} times ({', '.join(effect.undone_by)})")
    elif ran.state in (SagaState.SUCCEEDED, SagaState.DEAD_LETTERED):
        for effect in ran.effects:
            if effect.undone_by:
                found.append(f"{effect.step_id}: undone although the saga ended {ran.state.name}")
        if undos and flow.pivot and failing.number > flow.pivot:
            found.append(f"compensated past the pivot ({', '.join(dict.fromkeys(c.step_id for c in undos))})")
    for call in undos:
        step = flow.by_id(call.step_id)
        if step is not None and step.kind is Kind.RETRIABLE:
            found.append(f"{call.step_id}: a retriable step was compensated")
    order = list(dict.fromkeys(number for c in undos if (number := _number(flow, c.step_id))))
    if order != sorted(order, reverse=True):
        names = [flow.step(n).id for n in order]
        found.append(f"compensations out of reverse step order: {', '.join(names)}")
    if ran.state is SagaState.SUCCEEDED:
        for step in flow.steps:
            if step.id not in applied:
                found.append(f"{step.id}: never applied, yet the saga SUCCEEDED")
    # Keys carry the saga's id, which differs per run: without it the same mistake reads the same in every run.
    return [v.replace(ran.saga_id, "<saga_id>") for v in found]


def _number(flow: Definition, step_id: str) -> int:
    step = flow.by_id(step_id)
    return step.number if step is not None else 0


def _never_undone(flow: Definition, ran: Ran, step_id: str, method: str, key: str) -> str:
    text = f"{step_id}: {method} applied (key {key}) and never undone"
    step = flow.by_id(step_id)
    named = [t.key for t in ran.tombstones if t.step_id == step_id]
    if named and step is not None and step.compensation is not None:
        mapped = step.compensation.mapping.get(UNDO_KEY_FIELD)
        text += (
            f": its compensation {step.compensation.method} named {named[0]!r}, a key never applied, so the service"
            f" tombstoned it instead of undoing the effect ({UNDO_KEY_FIELD} is {mapped!r}; map it to $forward_key)"
        )
    elif step is not None and step.compensation is None:
        text += " (the step has no compensation)"
    return text


async def verify(flow: Definition, message: Message | None = None, seed: int = 0) -> Report:
    """Runs every (step, outcome) of the definition; `message`: the input (its key is replaced per run), else the
    default input. SandboxError if the shard cannot run it at all."""
    began = time.monotonic()
    base = message or default_input(flow.input_type, flow.key_field, "verify")
    cells: list[Cell] = []
    async with Sandbox(flow, seed) as box:
        for step in flow.steps:
            for outcome in OUTCOMES:
                expected = expected_state(flow, step, outcome)
                if expected is None:
                    cells.append(Cell(step.id, outcome, None))
                    continue
                run_input = type(base)()
                run_input.CopyFrom(base)
                set_key(run_input, flow.key_field, f"verify-{step.number}-{outcome.value}")
                failures = {} if outcome is Outcome.OK else {step.id: outcome}
                ran = await box.run(run_input, failures)
                broken = invariants(flow, step, outcome, expected, ran)
                cells.append(Cell(step.id, outcome, expected, ran.state, ran.message, tuple(broken), len(ran.calls)))
    return Report(flow, tuple(cells), tuple(ttl_problems(flow)), time.monotonic() - began)


def render(report: Report) -> str:
    d = report.definition
    runs = sum(1 for c in report.cells if c.state is not None)
    lines = [
        f"{d.name} version {d.version} hash {d.hash}: {len(d.steps)} steps x {len(OUTCOMES)} outcomes,"
        f" {runs} runs in {report.elapsed_s:.1f} s"
    ]
    width = max(len(s.id) for s in d.steps)
    widths = [max(len(o.value), 14) for o in OUTCOMES]
    lines.append(" ".join([f"{'step':<{width}}", *(f"{o.value:<{w}}" for o, w in zip(OUTCOMES, widths, strict=True))]))
    by_step: dict[str, list[Cell]] = defaultdict(list)
    for cell in report.cells:
        by_step[cell.step].append(cell)
    for step in d.steps:
        row = [f"{step.id:<{width}}"]
        for cell, w in zip(by_step[step.id], widths, strict=True):
            text = "n/a" if cell.state is None else cell.state.name + ("" if cell.ok else " !")
            row.append(f"{text:<{w}}")
        lines.append(" ".join(row).rstrip())
    if any(c.state is None for c in report.cells):
        lines.append("(n/a: the step's method cannot be long-running; ! marks a run that broke an invariant)")
    else:
        lines.append("(! marks a run that broke an invariant)")
    for problem in report.problems:
        lines.append(f"policy: {problem}")
    for violation in report.violations:
        lines.append(f"violation: {violation}")
    if report.ok:
        lines.append(f"verify: ok, no violation in {runs} runs")
    else:
        lines.append(f"verify: {len(report.violations)} violation(s), {len(report.problems)} policy problem(s)")
    return "\n".join(lines)
