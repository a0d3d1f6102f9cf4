"""Named crash points for the crash tests: SAGA_CRASH_POINT=name[:n] makes the process SIGKILL itself the n-th time
(default 1st) execution reaches that point. Only tests set it; unset, hit() is one dict lookup.

Points: after_intent_before_rpc, after_reply_before_outcome, mid_compensation, mid_commit.
"""

from __future__ import annotations

import os
import signal

POINTS = frozenset({"after_intent_before_rpc", "after_reply_before_outcome", "mid_compensation", "mid_commit"})
_armed: dict[str, int] = {}


def arm(spec: str) -> None:
    """Parses name[:n]; an unknown name is an error, so a typo in a test cannot silently test nothing."""
    _armed.clear()
    if not spec:
        return
    name, _, n = spec.partition(":")
    if name not in POINTS:
        raise ValueError(f"unknown crash point {name!r}; known: {sorted(POINTS)}")
    _armed[name] = int(n or "1")


def hit(name: str) -> None:
    if not _armed or name not in _armed:
        return
    _armed[name] -= 1
    if _armed[name] <= 0:
        os.kill(os.getpid(), signal.SIGKILL)
