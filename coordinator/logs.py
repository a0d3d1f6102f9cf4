"""Structured logging with loguru: one line per event, human-readable by default or JSON lines.

Saga fields (saga_id, order_id, step, action, attempt) travel in contextvars, so every line logged inside a saga's task
carries them without being passed by hand. Payment details are never put in a log call; scrub() is a last guard.
"""

from __future__ import annotations

import contextlib
import contextvars
import sys
from collections.abc import Iterator
from typing import Any

from loguru import logger

_saga: contextvars.ContextVar[dict[str, Any] | None] = contextvars.ContextVar("saga_log_fields", default=None)


@contextlib.contextmanager
def saga_context(saga_id: str, order_id: str, **fields: Any) -> Iterator[None]:
    token = _saga.set({"saga_id": saga_id, "order_id": order_id, **fields})
    try:
        yield
    finally:
        _saga.reset(token)


def at_step(step: str, action: str, attempt: int) -> None:
    """Marks the rest of this saga task's lines with the step, action and attempt it is on (task-local)."""
    current = _saga.get()
    if current is not None:
        _saga.set({**current, "step": step, "action": action, "attempt": attempt})


def _patch(record: Any) -> None:
    fields = _saga.get()
    if fields:
        record["extra"].update(fields)


def setup(process: str, json_lines: bool = False, level: str = "INFO") -> None:
    logger.remove()
    logger.configure(patcher=_patch, extra={"process": process})
    if json_lines:
        # diagnose=False: variable values in tracebacks could carry payment details.
        logger.add(sys.stderr, level=level, serialize=True, diagnose=False, backtrace=False)
    else:
        fmt = (
            "<green>{time:HH:mm:ss.SSS}</green> {level: <7} <cyan>{extra[process]}</cyan> {message}{extra[saga_fields]}"
        )

        def fields(record: Any) -> None:
            extra = {k: v for k, v in record["extra"].items() if k not in ("process", "saga_fields")}
            record["extra"]["saga_fields"] = (" " + " ".join(f"{k}={v}" for k, v in extra.items())) if extra else ""

        def patch_and_render(record: Any) -> None:
            _patch(record)
            fields(record)

        logger.configure(patcher=patch_and_render)
        logger.add(sys.stderr, level=level, format=fmt, colorize=None, diagnose=False, backtrace=False)
