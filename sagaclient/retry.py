"""How calls that are safe to repeat retry, for both clients: RetryPolicy, the waits between attempts (never shorter
than the server's "retry-after-ms"), and Attempts, one call's retries within its timeout.

A wait that would reach the call's deadline is not slept: the call gives up at once with the last error (as Google API
core's retry does), since no attempt could follow it. Sleeping to the deadline would only make the caller wait out its
whole timeout for the answer it already has, e.g. an overloaded shard asking for 30 s more than the call has left."""

from __future__ import annotations

import random
import time
from collections.abc import Callable, Generator
from dataclasses import dataclass
from typing import Any, TypeVar

import backoff
import grpc

from .errors import RETRYABLE_CODES, retry_after_s

__all__ = ["NO_RETRY", "Attempts", "RetryPolicy", "waits"]

F = TypeVar("F", bound=Callable[..., Any])


@dataclass(frozen=True)
class RetryPolicy:
    """How calls that are safe to repeat retry UNAVAILABLE and RESOURCE_EXHAUSTED."""

    initial_backoff_s: float = 0.1
    """Wait before the first retry."""
    multiplier: float = 2.0
    """Each wait is this many times the previous one."""
    max_backoff_s: float = 5.0
    """No wait is longer than this, except what the server's retry-after-ms asks for."""
    max_attempts: int = 20
    """Attempts in all, the first included; the call's timeout bounds them too."""
    jitter: float = 0.2
    """Each wait is shortened by a random fraction up to this (never below the server's retry-after-ms)."""

    def __post_init__(self) -> None:
        if self.initial_backoff_s <= 0 or self.max_backoff_s < self.initial_backoff_s:
            raise ValueError("RetryPolicy: need 0 < initial_backoff_s <= max_backoff_s")
        if self.multiplier < 1:
            raise ValueError("RetryPolicy: multiplier must be >= 1")
        if self.max_attempts < 1:
            raise ValueError("RetryPolicy: max_attempts must be >= 1")
        if not 0 <= self.jitter < 1:
            raise ValueError("RetryPolicy: jitter must be in [0, 1)")


NO_RETRY = RetryPolicy(max_attempts=1)


def waits(
    policy: RetryPolicy,
    rng: random.Random,
    deadline_s: float | None = None,
    clock: Callable[[], float] = time.monotonic,
) -> Generator[float, BaseException | None, None]:
    """backoff's wait generator: it is sent the exception of each failed attempt, so a retry-after-ms hint stretches
    the next wait (exponential backoff alone might retry an overloaded shard too early). It ends, and backoff then
    re-raises that exception, when the wait would last until deadline_s (on `clock`) or later."""
    delay_s = policy.initial_backoff_s
    error = yield 0.0  # backoff primes the generator with send(None)
    while True:
        wait_s = delay_s * (1 - policy.jitter * rng.random())
        if isinstance(error, grpc.RpcError):
            wait_s = max(wait_s, retry_after_s(error) or 0.0)
        if deadline_s is not None and clock() + wait_s >= deadline_s:
            return  # backoff (2.x, sync and async alike) gives up on an ended generator, re-raising the attempt's error
        delay_s = min(policy.max_backoff_s, delay_s * policy.multiplier)
        error = yield wait_s


class Attempts:
    """One call's attempts: `retrying` decorates one attempt (a function or a coroutine function: backoff handles
    both) to retry it by the policy, and timeout_s() is what is left of the call's budget for the next attempt."""

    def __init__(self, policy: RetryPolicy, budget_s: float, rng: random.Random) -> None:
        self._deadline = time.monotonic() + budget_s
        self._last: grpc.RpcError | None = None
        # One attempt (NO_RETRY) needs no retry loop: backoff's costs a call about 20 us, four times the encoding.
        self._retrying = None
        if policy.max_attempts > 1:
            self._retrying = backoff.on_exception(
                lambda: waits(policy, rng, self._deadline),
                grpc.RpcError,
                max_tries=policy.max_attempts,
                max_time=budget_s,
                giveup=self._give_up,
                jitter=None,  # waits() jitters itself, so that it never undercuts retry-after-ms
                logger=None,  # a library does not log every retry of its caller's calls; the final error says enough
            )

    def retrying(self, attempt: F) -> F:
        if self._retrying is None:
            return attempt
        decorated: F = self._retrying(attempt)
        return decorated

    def _give_up(self, e: grpc.RpcError) -> bool:
        self._last = e
        return e.code() not in RETRYABLE_CODES

    def timeout_s(self) -> float:
        """The next attempt's timeout. No wait reaches the deadline (waits() ends first), but a late wake-up can: then
        the last error is the answer (the outage, not an empty attempt)."""
        remaining_s = self._deadline - time.monotonic()
        if remaining_s <= 0 and self._last is not None:
            raise self._last
        return max(remaining_s, 0.001)
