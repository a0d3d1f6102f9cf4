"""The retry schedule, durable: what a step's policy still allows, and when its next attempt is due.

A policy bounds a step's calls by attempts and by retry time (`max_elapsed_ms`). Both are counted from the journal,
never from the process: attempts are the STARTED events, and each RETRYING event records the wait it drew and the
retry time spent so far. So a policy of N attempts means N attempts whatever the number of restarts, and a restarted
shard waits out the same backoff before the next attempt instead of firing at once. An attempt a crash interrupted
(STARTED with no outcome) is spent like any failed one: the engine journals its RETRYING, with a backoff drawn, or
fails the step when the budget is gone (DESIGN contract 11).

Waits are exponential with full jitter: the n-th wait is uniform(0, min(initial * multiplier^(n-1), max)), its bound
from the `backoff` package's expo generator, its draw from the engine's seeded Random.
"""

from __future__ import annotations

import itertools
import random
from dataclasses import dataclass

import backoff

from coordinator.config import RetryPolicy


@dataclass(frozen=True, slots=True)
class RetryDecision:
    """After a failed attempt: wait `wait_ms` and try again, or stop (the budget is spent)."""

    retry: bool
    wait_ms: int = 0
    spent_ms: int = 0
    """Retry time spent once the wait is over: what the RETRYING event journals."""


def backoff_bound_s(policy: RetryPolicy, attempts_made: int) -> float:
    """Upper bound of the wait after the `attempts_made`-th attempt (1: initial_backoff_ms)."""
    gen = backoff.expo(
        base=policy.multiplier, factor=policy.initial_backoff_ms / 1000, max_value=policy.max_backoff_ms / 1000
    )
    next(gen)  # backoff's generators are primed with one next() before yielding values
    return float(next(itertools.islice(gen, max(attempts_made, 1) - 1, None)))


def decide(policy: RetryPolicy, attempts_made: int, spent_ms: int, rng: random.Random) -> RetryDecision:
    """Whether another attempt fits the policy after `attempts_made` attempts that spent `spent_ms` of retry time
    (attempts and waits) in all; the wait before it counts against the time budget too."""
    if attempts_made >= policy.max_attempts:
        return RetryDecision(False, spent_ms=spent_ms)
    wait_ms = round(rng.uniform(0, backoff_bound_s(policy, attempts_made)) * 1000)
    total_ms = spent_ms + wait_ms
    if policy.max_elapsed_ms and total_ms > policy.max_elapsed_ms:
        return RetryDecision(False, spent_ms=spent_ms)
    return RetryDecision(True, wait_ms, total_ms)


def allows(policy: RetryPolicy, attempts_made: int, spent_ms: int) -> bool:
    """Whether the budget still has room for one more attempt after `attempts_made` that spent `spent_ms`: checked
    before every send, so a path that asks for a re-send without a backoff (a lost long-running operation) is bounded
    like any retry."""
    if attempts_made >= policy.max_attempts:
        return False
    return not (policy.max_elapsed_ms and spent_ms > policy.max_elapsed_ms)


def remaining_wait_s(due_at_epoch_ms: int, wait_ms: int, now_epoch_ms: int) -> float:
    """Seconds left before a journaled attempt is due. Never more than the wait that was drawn: a wall clock that
    jumped back while the shard was down must not stall the saga, and one that jumped forward only makes it due now."""
    if not due_at_epoch_ms:
        return 0.0
    return min(max(due_at_epoch_ms - now_epoch_ms, 0), wait_ms) / 1000
