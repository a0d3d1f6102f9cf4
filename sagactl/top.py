"""`sagactl top`: a live terminal view of the sagas in flight and where their time goes.

Everything comes from the router's gRPC API (no dashboard or Prometheus needed): the live sagas (RUNNING and
COMPENSATING, one page each, oldest shown first; those waiting on a long-running operation counted apart), the open
dead letters, and the most recent sagas, whose steps give the forward latency per step (from a step's start to its
success) and the recent throughput.
"""

from __future__ import annotations

import argparse
import io
import sys
import time
from typing import Any

from protos.saga.v1 import saga_pb2

from . import render
from .client import EXIT_OK, Client, UsageError

SCAN = 500
"""Sagas read per state (and recent sagas read for latencies) each refresh: one page each."""
RECENT = 200
"""Recent sagas whose steps give the latency figures."""


def _quantile(values: list[float], q: float) -> float | None:
    if not values:
        return None
    ordered = sorted(values)
    return ordered[min(len(ordered) - 1, int(q * len(ordered)))]


def _current_step(s: saga_pb2.Saga, now: float) -> str:
    for st in s.steps:
        if st.waiting:
            waited = render.duration(max(0.0, now - render.seconds(st.waiting_since)))
            return f"{render.step_name(st.step_id, st.step)} {render.action(st.waiting_action)} waiting {waited}"
        if st.status in (saga_pb2.STEP_STATUS_IN_FLIGHT, saga_pb2.STEP_STATUS_COMPENSATING):
            return f"{render.step_name(st.step_id, st.step)} {render.step_status(st.status).lower()}"
    return ""


def _waiting(s: saga_pb2.Saga) -> bool:
    """Waiting on a long-running operation: a service accepted one of its calls and has not finished it."""
    return any(st.waiting for st in s.steps)


def collect(c: Client, rows: int) -> dict[str, Any]:
    now = time.time()
    running, _ = c.list_sagas(saga_pb2.SAGA_STATE_RUNNING, SCAN, SCAN)
    compensating, _ = c.list_sagas(saga_pb2.SAGA_STATE_COMPENSATING, SCAN, SCAN)
    recent, _ = c.list_sagas(0, RECENT, RECENT)
    with c.calling("dlq list"):
        (page,) = c.sagas.list_dead_letters(page_size=SCAN, max_pages=1)
    letters = page.dead_letters
    # By saga type and step id: two definitions may name a step alike. Types in name order, steps in their
    # definition's order (a saga lists every step of its definition).
    per_step: dict[tuple[str, str], list[float]] = {}
    for s in sorted(recent, key=lambda s: s.saga_type or "order"):
        for st in s.steps:
            where = (s.saga_type or "order", render.step_name(st.step_id, st.step))
            if st.status == saga_pb2.STEP_STATUS_SUCCEEDED and st.started_at.seconds:
                per_step.setdefault(where, []).append(render.seconds(st.updated_at) - render.seconds(st.started_at))
    live = sorted([*running, *compensating], key=lambda s: render.seconds(s.created_at))
    last_minute = [s for s in recent if render.seconds(s.created_at) >= now - 60]
    outcomes: dict[str, int] = {}
    for s in recent:
        outcomes[render.state(s.state)] = outcomes.get(render.state(s.state), 0) + 1
    return {
        "at": now,
        "router": c.router,
        "in_flight": {"running": len(running), "compensating": len(compensating)},
        "in_flight_capped": len(running) >= SCAN or len(compensating) >= SCAN,
        "waiting": sum(1 for s in live if _waiting(s)),
        "dead_letters_open": len(letters),
        "started_last_minute": len(last_minute),
        "started_last_minute_capped": len(recent) >= RECENT and len(last_minute) == len(recent),
        "recent_outcomes": outcomes,
        "steps": [
            {
                "saga_type": saga_type,
                "step": step,
                "count": len(values),
                "p50_seconds": _quantile(values, 0.5),
                "p99_seconds": _quantile(values, 0.99),
            }
            for (saga_type, step), values in per_step.items()
        ],
        "oldest_in_flight": [
            {
                "order_id": s.order_id,
                "saga_type": s.saga_type or "order",
                "key": s.key or s.order_id,
                "state": render.state(s.state),
                "shard_id": s.shard_id,
                "age_seconds": render.age(s, now),
                "at": _current_step(s, now),
            }
            for s in live[:rows]
        ],
    }


def frame(data: dict[str, Any]) -> str:
    lines: list[str] = []
    stamp = time.strftime("%H:%M:%S", time.localtime(data["at"]))
    lines.append(f"sagactl top  router {data['router']}  {stamp}   (Ctrl-C quits)")
    f = data["in_flight"]
    cap = "+" if data["in_flight_capped"] else ""
    started = data["started_last_minute"]
    rate = f"{started} ({started / 60:.1f}/s)"
    if data["started_last_minute_capped"]:
        rate = f"at least {started} (the last {RECENT} sagas all started within it)"
    waiting = f" ({data['waiting']}{cap} waiting on a service)" if data["waiting"] else ""
    lines.append(
        f"in flight: {f['running']}{cap} running, {f['compensating']}{cap} compensating{waiting}   "
        f"dead letters open: {data['dead_letters_open']}   started in the last minute: {rate}"
    )
    outcomes = ", ".join(f"{k.lower()} {v}" for k, v in sorted(data["recent_outcomes"].items()))
    lines.append(f"last {RECENT} sagas: {outcomes or 'none yet'}")
    lines.append("")
    rows = [
        [
            s.get("saga_type", "order"),
            s["step"],
            render.duration(s["p50_seconds"]),
            render.duration(s["p99_seconds"]),
            s["count"],
        ]
        for s in data["steps"]
    ]
    slowest = max((s["p99_seconds"] or 0 for s in data["steps"]), default=0)
    for row, s in zip(rows, data["steps"], strict=True):
        if slowest and s["p99_seconds"] == slowest:
            row.append("<- slowest")
        else:
            row.append("")
    lines.extend(_table(rows, ("type", "step (forward)", "p50", "p99", "n", "")))
    lines.append("")
    live = [
        [
            render.saga_name(s.get("saga_type", "order"), s.get("key", ""), s["order_id"]),
            s["state"],
            s["shard_id"],
            render.duration(s["age_seconds"]),
            s["at"],
        ]
        for s in data["oldest_in_flight"]
    ]
    lines.append("oldest in flight:" if live else "nothing in flight.")
    if live:
        lines.extend(_table(live, ("saga", "state", "shard", "age", "at step")))
    return "\n".join(lines) + "\n"


def _table(rows: list[list[Any]], headers: tuple[str, ...]) -> list[str]:
    out = io.StringIO()
    render.table(rows, headers, out)
    return out.getvalue().rstrip("\n").split("\n")


def run(c: Client, ns: argparse.Namespace) -> int:
    if ns.interval <= 0 or ns.rows < 1:
        raise UsageError("--interval must be > 0 and --rows >= 1")
    if ns.once:
        data = collect(c, ns.rows)
        if ns.json:
            render.print_json(data)
        else:
            sys.stdout.write(frame(data))
        return EXIT_OK
    try:
        while True:
            text = frame(collect(c, ns.rows))
            sys.stdout.write("\x1b[H\x1b[2J" + text)  # home + clear: redraw in place
            sys.stdout.flush()
            time.sleep(ns.interval)
    except KeyboardInterrupt:
        return EXIT_OK
