"""Log set-up of a process: loguru, one line per event on stderr, human-readable by default or JSON lines.

Contract:

- setup(process, json_lines, level) replaces every loguru sink with one. In both modes diagnose and backtrace are off: a
  logged traceback shows the code of each frame but never the values of its variables (a request handler's frames hold
  raw request bytes, payment tokens included), and only the frames between the raise and the catch.
- Every record carries extra["process"] (the name given to setup), plus the fields of the innermost context_fields()
  block open where it is logged. Fields live in a contextvar: they follow the task that opened the block, are inherited
  by tasks started inside it, and never leak into other tasks. Text mode appends them to the line as key=value; JSON
  mode has them under record.extra.
- With tracing on (common.tracing), a line logged inside a span also carries trace_id, the id to look the trace up by.
- Nothing here scrubs messages: what must not be logged (payment details) is never put in a log call.
"""

from __future__ import annotations

import contextlib
import contextvars
import sys
from collections.abc import Iterator, Mapping
from typing import Any, TextIO

from loguru import logger

from . import tracing

_FIELDS: contextvars.ContextVar[Mapping[str, Any] | None] = contextvars.ContextVar("log_context_fields", default=None)
_RENDERED = "_context_text"
"""The extra key the text format reads the rendered fields from (a key no caller would choose)."""

TEXT_FORMAT = (
    "<green>{time:HH:mm:ss.SSS}</green> {level: <7} <cyan>{extra[process]}</cyan> {message}{extra[" + _RENDERED + "]}"
)


@contextlib.contextmanager
def context_fields(fields: Mapping[str, Any], *, keep_outer: bool = True) -> Iterator[None]:
    """Every line logged inside the block (by this task, and by tasks started inside it) carries `fields`, on top of an
    outer block's fields unless keep_outer is False. The outer block's fields are back when the block ends."""
    outer = _FIELDS.get() if keep_outer else None
    token = _FIELDS.set({**outer, **fields} if outer else dict(fields))
    try:
        yield
    finally:
        _FIELDS.reset(token)


def add_context_fields(fields: Mapping[str, Any]) -> bool:
    """Adds `fields` to the innermost open context_fields() block, for the rest of it, in this task only. Outside any
    block it does nothing and returns False: a stray call must not tag unrelated lines."""
    current = _FIELDS.get()
    if current is None:
        return False
    _FIELDS.set({**current, **fields})
    return True


def _merge_context(record: Any) -> None:
    fields = _FIELDS.get()
    if fields:
        record["extra"].update(fields)
    if tracing.enabled() and "trace_id" not in record["extra"]:
        trace_id = tracing.current_trace_id()
        if trace_id:
            record["extra"]["trace_id"] = trace_id


def _merge_and_render(record: Any) -> None:
    _merge_context(record)
    extra = record["extra"]
    shown = " ".join(f"{k}={v}" for k, v in extra.items() if k not in ("process", _RENDERED))
    extra[_RENDERED] = " " + shown if shown else ""


def setup(process: str, json_lines: bool = False, level: str = "INFO", *, sink: TextIO | None = None) -> None:
    """Sends this process's log lines to `sink` (stderr by default) at `level` and above, as JSON lines or as text,
    each tagged with process=`process`. Replaces whatever loguru was configured with before."""
    logger.remove()
    logger.configure(
        patcher=_merge_context if json_lines else _merge_and_render,
        extra={"process": process},
    )
    out = sys.stderr if sink is None else sink
    # diagnose=False: variable values in tracebacks could carry request bytes and payment details.
    # backtrace=False: frames above the catch add nothing for us and more places for such values to be.
    if json_lines:
        logger.add(out, level=level, serialize=True, diagnose=False, backtrace=False)
    else:
        logger.add(out, level=level, format=TEXT_FORMAT, colorize=None, diagnose=False, backtrace=False)
