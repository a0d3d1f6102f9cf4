"""What the harness reads from the processes it measures: CPU time from /proc/<pid>/stat, counters from /metrics."""

from __future__ import annotations

import os
import re

_CLK_TCK = os.sysconf("SC_CLK_TCK")


def cpu_seconds(pid: int) -> float:
    """utime + stime of every thread of the process so far (clock-tick resolution, usually 10 ms)."""
    with open(f"/proc/{pid}/stat") as f:
        stat = f.read()
    # The command name (field 2) may hold spaces and parentheses: split after its closing parenthesis.
    fields = stat[stat.rindex(")") + 2 :].split()
    # Fields 14 and 15 of the whole line are utime and stime; after the split, field 3 is fields[0].
    return (int(fields[11]) + int(fields[12])) / _CLK_TCK


def machine_busy_seconds() -> float:
    """CPU seconds all cores spent not idle since boot (/proc/stat: everything but idle and iowait)."""
    with open("/proc/stat") as f:
        fields = [int(x) for x in f.readline().split()[1:]]
    idle = fields[3] + (fields[4] if len(fields) > 4 else 0)
    # guest time is already counted in user: the first 8 fields are the total.
    return (sum(fields[:8]) - idle) / _CLK_TCK


_SAMPLE = re.compile(r"^([a-zA-Z_:][a-zA-Z0-9_:]*)(\{[^}]*\})?\s+([-+0-9.eEinfNa]+)")


def metric_sum(text: str, name: str) -> float:
    """The sum of every sample named `name` (over all label sets) in a Prometheus text exposition."""
    total = 0.0
    for line in text.splitlines():
        if not line.startswith(name):
            continue
        m = _SAMPLE.match(line)
        if m is not None and m.group(1) == name:
            total += float(m.group(3))
    return total
