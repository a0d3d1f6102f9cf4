"""Where the live sagas of one definition version stand, step by step, for its graph on the dashboard
(GET /api/definitions/{hash}/graph; docs/observability.md, "Definition graphs").

Each live saga (RUNNING, COMPENSATING or DEAD_LETTERED) counts once, at its current step, in one bucket:

- parked: a dead-lettered saga, at the step that failed for good (a compensation past its budget, or a retriable
  step past its policy's bounds);
- compensating: the step whose compensation runs (or waits on the service, or on its next attempt);
- in_flight: the step whose forward call runs (or waits on the service, or on its next attempt); a running saga
  between two steps counts at the next one;
- failed: the step whose forward call failed for good, while the saga has not started undoing yet.

A saga that is waiting on a long-running operation also counts in `waiting` (a part of in_flight or compensating).
The bottleneck is the step with the most sagas in flight (the earliest such step on a tie; none while nothing is in
flight): where new sagas pile up now, read from the same scan as the counts.
"""

from __future__ import annotations

from collections.abc import Iterable, Sequence

from protos.saga.v1 import saga_pb2

BUCKETS = ("in_flight", "failed", "compensating", "parked")
BOTTLENECK_RULE = "the step with the most sagas in flight"
LIVE_STATES = (saga_pb2.SAGA_STATE_RUNNING, saga_pb2.SAGA_STATE_COMPENSATING, saga_pb2.SAGA_STATE_DEAD_LETTERED)


def step_id(step_id: str, step: int) -> str:
    """A step by its id in the definition; the enum's name only from a shard that sets no step_id."""
    return step_id or (str(saga_pb2.Step.Name(step)).removeprefix("STEP_").lower() if step else "")


def current_step(s: saga_pb2.Saga) -> tuple[str, str] | None:
    """(step id, bucket) of a live saga; None for a finished one, or one with no step to name."""
    if s.state not in LIVE_STATES:
        return None
    steps = [(step_id(st.step_id, st.step), st) for st in s.steps]
    by_status: dict[int, str] = {}
    for name, st in steps:
        by_status.setdefault(st.status, name)  # the first step of each status
    if s.state == saga_pb2.SAGA_STATE_DEAD_LETTERED:
        # Parked by a compensation that failed for good, else by a retriable step past its bounds.
        for status in (saga_pb2.STEP_STATUS_COMPENSATION_FAILED, saga_pb2.STEP_STATUS_FAILED):
            if status in by_status:
                return by_status[status], "parked"
        return None
    if saga_pb2.STEP_STATUS_COMPENSATING in by_status:
        return by_status[saga_pb2.STEP_STATUS_COMPENSATING], "compensating"
    if saga_pb2.STEP_STATUS_IN_FLIGHT in by_status:
        return by_status[saga_pb2.STEP_STATUS_IN_FLIGHT], "in_flight"
    if saga_pb2.STEP_STATUS_FAILED in by_status:
        return by_status[saga_pb2.STEP_STATUS_FAILED], "failed"
    if s.state == saga_pb2.SAGA_STATE_RUNNING and saga_pb2.STEP_STATUS_PENDING in by_status:
        return by_status[saga_pb2.STEP_STATUS_PENDING], "in_flight"
    return None


def step_counts(
    sagas: Iterable[saga_pb2.Saga], definition_hash: str, step_ids: Sequence[str]
) -> dict[str, dict[str, int]]:
    """{step id: {bucket: sagas, "waiting": sagas}} over the sagas of this definition version, every step listed."""
    counts = {sid: dict.fromkeys((*BUCKETS, "waiting"), 0) for sid in step_ids}
    for s in sagas:
        if s.definition_hash != definition_hash or (at := current_step(s)) is None:
            continue
        name, bucket = at
        if name not in counts:  # a step the version does not have: a shard's answer we cannot place
            continue
        counts[name][bucket] += 1
        if bucket in ("in_flight", "compensating") and any(st.waiting for st in s.steps):
            counts[name]["waiting"] += 1
    return counts


def bottleneck(counts: dict[str, dict[str, int]]) -> str | None:
    """The step with the most sagas in flight; the earliest on a tie; None if none is in flight."""
    best = max(counts, key=lambda sid: counts[sid]["in_flight"], default=None)
    return best if best is not None and counts[best]["in_flight"] > 0 else None


__all__ = ["BOTTLENECK_RULE", "BUCKETS", "LIVE_STATES", "bottleneck", "current_step", "step_counts", "step_id"]
