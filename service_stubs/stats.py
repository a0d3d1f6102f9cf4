"""Calls per method and outcome, and long-running operations per method, since the process started
(StubControl.GetStats); memory only, by design."""

from __future__ import annotations

import enum
from collections import Counter

HANG = "HANG"
"""Outcome of a call that was never answered (a hang fault or payment token "tok_hang"); counted when it starts."""
CANCELLED = "CANCELLED"
"""Outcome of a call whose caller gave up (deadline, cancel) while it was still being served."""


class OperationEvent(enum.Enum):
    """What happened to a long-running operation (control.proto OperationStat)."""

    ACCEPTED = "accepted"
    """A call was accepted as an operation (its first answer, done=false)."""
    COMPLETED = "completed"
    """It finished by itself: applied, or rejected by a business rule."""
    CANCELLED = "cancelled"
    """A forward operation was cancelled by its compensation before it finished."""


class CallStats:
    def __init__(self) -> None:
        self._counts: Counter[tuple[str, str]] = Counter()
        self._operations: Counter[tuple[str, OperationEvent]] = Counter()

    def record(self, method: str, code: str) -> None:
        self._counts[(method, code)] += 1

    def operation(self, method: str, event: OperationEvent) -> None:
        self._operations[(method, event)] += 1

    def snapshot(self) -> list[tuple[str, str, int]]:
        """(method, code, count), sorted by method then code. Safe from another thread (the metrics endpoint)."""
        counts = dict.copy(self._counts)  # one C call under the GIL: never sees the dict mid-update
        return [(method, code, count) for (method, code), count in sorted(counts.items())]

    def operations(self) -> dict[str, dict[OperationEvent, int]]:
        """method -> event -> count, sorted by method; only methods that had an operation. Safe from another thread."""
        counts = dict.copy(self._operations)
        out: dict[str, dict[OperationEvent, int]] = {}
        for (method, event), count in sorted(counts.items(), key=lambda item: (item[0][0], item[0][1].value)):
            out.setdefault(method, dict.fromkeys(OperationEvent, 0))[event] = count
        return out
