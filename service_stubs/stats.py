"""Calls per method and outcome since the process started (StubControl.GetStats); memory only, by design."""

from __future__ import annotations

from collections import Counter

HANG = "HANG"
"""Outcome of a call that was never answered (a hang fault or payment token "tok_hang"); counted when it starts."""
CANCELLED = "CANCELLED"
"""Outcome of a call whose caller gave up (deadline, cancel) while it was still being served."""


class CallStats:
    def __init__(self) -> None:
        self._counts: Counter[tuple[str, str]] = Counter()

    def record(self, method: str, code: str) -> None:
        self._counts[(method, code)] += 1

    def snapshot(self) -> list[tuple[str, str, int]]:
        """(method, code, count), sorted by method then code. Safe from another thread (the metrics endpoint)."""
        counts = dict.copy(self._counts)  # one C call under the GIL: never sees the dict mid-update
        return [(method, code, count) for (method, code), count in sorted(counts.items())]
