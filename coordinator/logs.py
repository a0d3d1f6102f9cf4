"""The saga fields of the coordinator's log lines, on common.logs's context fields.

Saga fields (saga_id, order_id, step, action, attempt) travel in a contextvar, so every line logged inside a saga's task
carries them without being passed by hand. The log set-up itself (sinks, text or JSON lines, no variable values in
tracebacks) is common.logs.setup, the same for every process. Payment details are never put in a log call.
"""

from __future__ import annotations

import contextlib
from collections.abc import Iterator
from typing import Any

from common.logs import add_context_fields, context_fields


@contextlib.contextmanager
def saga_context(saga_id: str, order_id: str, **fields: Any) -> Iterator[None]:
    """Marks every line of the block (and of tasks started in it) with this saga's fields, and no other saga's."""
    with context_fields({"saga_id": saga_id, "order_id": order_id, **fields}, keep_outer=False):
        yield


def at_step(step: str, action: str, attempt: int) -> None:
    """Marks the rest of this saga task's lines with the step, action and attempt it is on (task-local)."""
    add_context_fields({"step": step, "action": action, "attempt": attempt})
