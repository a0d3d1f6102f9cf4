"""How sagactl prints: aligned tables for people, JSON (proto field names) for scripts. Sagas never carry payment
details (the coordinator does not return them), so nothing here has to hide any."""

from __future__ import annotations

import json
import sys
import time
from collections.abc import Iterable, Sequence
from typing import Any, TextIO

from google.protobuf.json_format import MessageToDict
from google.protobuf.message import Message

from protos.saga.v1 import saga_pb2


def to_dict(message: Message) -> dict[str, Any]:
    return MessageToDict(message, preserving_proto_field_name=True)


def print_json(value: Any, out: TextIO = sys.stdout) -> None:
    out.write(json.dumps(value, indent=2, sort_keys=False) + "\n")


def table(
    rows: Iterable[Sequence[object]], headers: Sequence[str], out: TextIO = sys.stdout, max_width: int = 60
) -> None:
    cells = [[_cut(str(c), max_width) for c in row] for row in rows]
    widths = [len(h) for h in headers]
    for row in cells:
        for i, c in enumerate(row):
            widths[i] = max(widths[i], len(c))
    out.write("  ".join(h.upper().ljust(w) for h, w in zip(headers, widths, strict=True)).rstrip() + "\n")
    for row in cells:
        out.write("  ".join(c.ljust(w) for c, w in zip(row, widths, strict=True)).rstrip() + "\n")


def _cut(text: str, width: int) -> str:
    return text if len(text) <= width else text[: width - 1] + "…"


def state(value: int) -> str:
    return str(saga_pb2.SagaState.Name(value)).removeprefix("SAGA_STATE_")


def step(value: int) -> str:
    return str(saga_pb2.Step.Name(value)).removeprefix("STEP_").lower()


def step_name(step_id: str, value: int) -> str:
    """A step by its id in the saga's definition; the enum's name only from a shard that sends no step_id."""
    return step_id or (step(value) if value else "")


def saga_name(saga_type: str, key: str, order_id: str = "") -> str:
    """How a saga is named: its order id for the order flow, "<type>/<key>" for any other type."""
    if not saga_type or saga_type == "order":
        return order_id or key
    return f"{saga_type}/{key}"


def definition(saga_type: str, version: str, definition_hash: str) -> str:
    """A definition version as people read it: "order_loyalty v1 · 917436a5"."""
    label = f"v{version}" if version.replace(".", "").isdigit() else version
    return " ".join(
        x for x in (saga_type or "order", label, f"· {definition_hash[:8]}" if definition_hash else "") if x
    )


KIND_MARK = {"pivot": "pivot *"}
"""The pivot is the point of no return: steps before it are compensated on failure, steps after it retried."""


def step_status(value: int) -> str:
    return str(saga_pb2.StepStatus.Name(value)).removeprefix("STEP_STATUS_")


def action(value: int) -> str:
    return str(saga_pb2.Action.Name(value)).removeprefix("ACTION_").lower()


def seconds(ts: Any) -> float:
    return float(ts.seconds + ts.nanos / 1e9)


def clock(ts: Any) -> str:
    return time.strftime("%H:%M:%S", time.localtime(seconds(ts))) if ts.seconds else "-"


def age(s: saga_pb2.Saga, now: float | None = None) -> float:
    """Seconds from creation to now (live sagas) or to the last change (finished ones)."""
    live = s.state in (saga_pb2.SAGA_STATE_RUNNING, saga_pb2.SAGA_STATE_COMPENSATING)
    end = (now or time.time()) if live else seconds(s.updated_at)
    return max(0.0, end - seconds(s.created_at))


def duration(value: float | None) -> str:
    if value is None:
        return "-"
    if value < 1:
        return f"{value * 1000:.1f}ms"
    if value < 120:
        return f"{value:.1f}s"
    return f"{value / 60:.1f}m"


def saga_rows(sagas: Iterable[saga_pb2.Saga]) -> list[list[object]]:
    return [
        [
            saga_name(s.saga_type, s.key, s.order_id),
            definition(s.saga_type, s.definition_version, s.definition_hash),
            state(s.state),
            s.shard_id,
            clock(s.created_at),
            duration(age(s)),
            s.last_error,
        ]
        for s in sagas
    ]


SAGA_HEADERS = ("saga", "definition", "state", "shard", "created", "took/age", "error")


def saga_detail(s: saga_pb2.Saga, out: TextIO = sys.stdout, now: float | None = None) -> None:
    now = time.time() if now is None else now
    if s.order_id:
        out.write(f"order     {s.order_id}\n")
    out.write(f"type      {s.saga_type or 'order'}   key {s.key or s.order_id}\n")
    out.write(f"def       {definition(s.saga_type, s.definition_version, s.definition_hash)}\n")
    out.write(f"saga      {s.saga_id}\n")
    out.write(f"state     {state(s.state)}\n")
    out.write(f"shard     {s.shard_id}\n")
    out.write(f"user      {s.user_id}\n")
    out.write(f"items     {', '.join(f'{i.quantity} x {i.item_id}' for i in s.items)}\n")
    out.write(f"created   {clock(s.created_at)}   age {duration(age(s, now))}   deadline {clock(s.deadline)}\n")
    if s.last_error:
        out.write(f"error     {s.last_error}\n")
    if s.parked_note:
        out.write(f"parked    {s.parked_note}\n")
    for st in s.steps:
        if st.waiting:
            out.write(f"waiting   {waiting(st, now)}\n")
    out.write("\n")
    rows = []
    for st in s.steps:
        took = seconds(st.updated_at) - seconds(st.started_at) if st.started_at.seconds else None
        rows.append(
            [
                step_name(st.step_id, st.step),
                KIND_MARK.get(st.kind, st.kind),
                step_status(st.status) + (" (waiting)" if st.waiting else ""),
                st.forward_attempts,
                st.compensate_attempts,
                duration(took),
                st.last_error,
            ]
        )
    table(rows, ("step", "kind", "status", "fwd", "comp", "took", "last error"), out)
    if s.events:
        out.write("\n")
        t0 = seconds(s.created_at)
        table(
            [event_row(e, t0) for e in s.events], ("seq", "at", "event", "step", "action", "try", "code", "detail"), out
        )


def waiting(st: saga_pb2.StepInfo, now: float) -> str:
    """A step waiting on a long-running operation: which call, for how long, and when the service is asked next."""
    waited = max(0.0, now - seconds(st.waiting_since))
    due = seconds(st.next_poll_at) - now
    when = f"next poll in {duration(due)} ({clock(st.next_poll_at)})" if due > 0 else "next poll due now"
    which = f"{step_name(st.step_id, st.step)} {action(st.waiting_action)}"
    return f"{which}: accepted by the service {duration(waited)} ago; {when}"


_NEXT = {"accepted": "next poll", "polled": "next poll", "retrying": "next attempt"}
"""Events whose next_attempt_at says when the coordinator acts next, and what it does then."""


def event_row(e: saga_pb2.SagaEvent, t0: float) -> list[object]:
    detail = e.detail
    if e.kind in _NEXT and e.HasField("next_attempt_at"):
        detail = f"{detail}; " if detail else ""
        detail += f"{_NEXT[e.kind]} at +{duration(max(0.0, seconds(e.next_attempt_at) - t0))}"
    return [
        e.seq,
        f"+{duration(max(0.0, seconds(e.at) - t0))}",
        e.kind + (f" -> {state(e.state)}" if e.kind == "state" else ""),
        step_name(e.step_id, e.step),
        action(e.action) if e.action else "",
        e.attempt or "",
        e.code,
        detail,
    ]


PLAN_HEADERS = ("#", "step", "action", "service", "method", "attempt", "idempotency key", "note")


def preview(p: saga_pb2.SagaPreview, out: TextIO = sys.stdout) -> None:
    """One saga's dry run: where it would go, and every call it would make, in order."""
    calls = f"{len(p.calls)} call{'' if len(p.calls) == 1 else 's'}" if p.calls else "no calls to any service"
    name = saga_name(p.saga_type, p.key, p.order_id)
    out.write(f"{name} (saga {p.saga_id} on {p.shard_id}): {state(p.state_now)} -> {state(p.end_state)}, {calls}\n")
    if not p.calls:
        return
    rows = []
    for i, c in enumerate(p.calls, 1):
        notes = []
        if c.retry_of_earlier_attempt:
            notes.append("repeats an earlier attempt (same key)")
        if c.asks_first:
            notes.append("asks GetOperation first: skipped if the forward call was rejected")
        rows.append(
            [
                i,
                step_name(c.step_id, c.step),
                action(c.action),
                c.service,
                c.method,
                c.attempt,
                c.idempotency_key,
                "; ".join(notes),
            ]
        )
    # Wide: a method or an idempotency key cut short would not say what is called.
    table(rows, PLAN_HEADERS, out, max_width=200)


def dead_letter_rows(letters: Iterable[saga_pb2.DeadLetter]) -> list[list[object]]:
    # action: compensate (a compensation failed for good; retry resumes compensating) or forward (a retriable step
    # after the pivot; retry resumes it forward). Shards from before definitions send no action: compensate.
    return [
        [
            d.key or d.order_id,
            d.saga_type or "order",
            step_name(d.step_id, d.step),
            action(d.action) if d.action else "compensate",
            d.shard_id,
            clock(d.parked_at),
            d.attempts,
            d.closed_note or "open",
            d.last_error,
        ]
        for d in letters
    ]


DEAD_LETTER_HEADERS = ("key", "type", "step", "action", "shard", "parked", "attempts", "status", "last error")


def json_line(message: Message) -> str:
    """One message as compact JSON on one line (streams: one line per update)."""
    return json.dumps(to_dict(message), separators=(",", ":"))


def definition_rows(definitions: Iterable[saga_pb2.DefinitionVersion]) -> list[list[object]]:
    # 12 hex digits tell versions apart in a table; --json shows the whole hash.
    return [[d.name, d.version, d.hash[:12], "yes" if d.active else "", d.sagas] for d in definitions]


DEFINITION_HEADERS = ("type", "version", "hash", "active", "sagas")
