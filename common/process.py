"""What every server process's `main` does around its own work, written once: set up its logs and traces (a bad
tracing environment stops it with exit code 2, before anything is bound), then serve until SIGTERM or SIGINT.

    setup("coordinator", log_name=cfg.shard_id, service="saga-coordinator", instance=cfg.shard_id, ...)
    stopped = stop_event(on_hangup=server.request_reload)   # in the process's loop, before saying it is ready
    print("... listening on ...", flush=True)
    await stopped.wait()
"""

from __future__ import annotations

import asyncio
import signal
import sys
from collections.abc import Callable

from . import logs, tracing


def setup(
    prog: str, *, log_name: str, service: str, instance: str = "", json_lines: bool = False, level: str = "INFO"
) -> None:
    """Logs tagged `log_name` at `level`; traces as `service` (and `instance`) when the environment turns them on.
    An unusable tracing environment is a configuration error: "<prog>: <why>" on stderr, exit code 2."""
    logs.setup(log_name, json_lines=json_lines, level=level)
    try:
        tracing.setup(service, instance=instance)
    except tracing.TracingConfigError as e:
        print(f"{prog}: bad configuration: {e}", file=sys.stderr)
        raise SystemExit(2) from e


def stop_event(on_hangup: Callable[[], None] | None = None) -> asyncio.Event:
    """An event set at the first SIGTERM or SIGINT, handled from now on (so install it before the process says it is
    ready: a launcher may stop it at once); SIGHUP calls `on_hangup` (a reload) when given."""
    loop = asyncio.get_running_loop()
    stop = asyncio.Event()
    for sig in (signal.SIGTERM, signal.SIGINT):
        loop.add_signal_handler(sig, stop.set)
    if on_hangup is not None:
        loop.add_signal_handler(signal.SIGHUP, on_hangup)
    return stop
