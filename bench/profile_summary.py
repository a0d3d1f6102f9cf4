"""Summarises py-spy raw recordings (collapsed stacks, `frame;frame;... count`): the functions with the most samples
on CPU, by self time (the frame on top) and by total time (anywhere on the stack), as % of the process's samples.

py-spy is meant to drop idle threads, but on this machine it keeps threads blocked in select(), Condition.wait(),
queue.get() and native waits: those samples are set aside (`idle`), and so are samples whose only Python frame is the
event loop's run() or a thread's run() (`native`: uvloop and gRPC core working, or waiting; py-spy cannot tell which,
use perf for that split). The percentages are shares of the remaining samples: Python code running.
"""

from __future__ import annotations

import re
from collections import Counter
from dataclasses import dataclass
from pathlib import Path

_LINE = re.compile(r"^(.*) (\d+)$")
_LINE_NO = re.compile(r":\d+\)$")
_IDLE_LEAVES = (
    "_PollLikeSelector.select (",
    "Condition.wait (",
    "_connection_worker_thread (aiosqlite/core.py:59)",
    "_worker (concurrent/futures/thread.py:81)",
    "Event.wait (",
    "Thread.join (",
)
_NATIVE_LEAVES = ("Runner.run (", "Thread.run (", "run (uvloop/__init__.py")


@dataclass
class Summary:
    name: str
    samples: int
    idle: int
    native: int
    self_top: list[tuple[str, int]]
    total_top: list[tuple[str, int]]
    by_file: list[tuple[str, int]]


def _short(frame: str) -> str:
    # "fn (/abs/path/.venv/lib/python3.11/site-packages/grpc/aio/_call.py:123)" -> "fn (grpc/aio/_call.py:123)"
    for marker in ("site-packages/", "/work/main/", "lib/python3.11/"):
        i = frame.find(marker)
        if i >= 0:
            start = frame.rfind("(", 0, i) + 1
            return frame[:start] + frame[i + len(marker) :]
    return frame


def _file_of(frame: str) -> str:
    inside = frame[frame.rfind("(") + 1 : -1] if frame.endswith(")") else frame
    return _LINE_NO.sub("", inside + ")").rstrip(")") or frame


def summarise(path: Path, top: int = 15) -> Summary:
    self_counts: Counter[str] = Counter()
    total_counts: Counter[str] = Counter()
    file_counts: Counter[str] = Counter()
    samples = idle = native = 0
    for line in path.read_text(errors="replace").splitlines():
        m = _LINE.match(line)
        if m is None:
            continue
        frames = [_short(f) for f in m.group(1).split(";")]
        if frames and frames[0].startswith(("thread ", "process ")):
            frames = frames[1:]
        while frames and frames[0].startswith(("thread ", "process ")):
            frames = frames[1:]
        if not frames:
            continue
        n = int(m.group(2))
        if frames[-1].startswith(_IDLE_LEAVES):
            idle += n
            continue
        if frames[-1].startswith(_NATIVE_LEAVES):
            native += n
            continue
        samples += n
        self_counts[frames[-1]] += n
        file_counts[_file_of(frames[-1])] += n
        for f in set(frames):
            total_counts[f] += n
    return Summary(
        path.stem,
        samples,
        idle,
        native,
        self_counts.most_common(top),
        total_counts.most_common(top),
        file_counts.most_common(top),
    )


def render(s: Summary) -> str:
    lines = [f"== {s.name}: {s.samples} samples in Python code ({s.native} native/loop, {s.idle} idle set aside)"]
    for title, rows in (("self", s.self_top), ("total", s.total_top), ("self by file", s.by_file)):
        lines.append(f"  -- {title}")
        for frame, n in rows:
            lines.append(f"  {100 * n / max(s.samples, 1):5.1f}%  {frame}")
    return "\n".join(lines)
