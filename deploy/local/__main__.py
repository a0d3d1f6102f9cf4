"""`python -m deploy.local [--config deploy/local/cluster.toml]` (`make run`): the whole system on this machine.

Starts the processes that cluster.toml lists, one line per process once it is healthy, relays their logs prefixed with
their names, and stops them all on Ctrl-C or SIGTERM (a second Ctrl-C kills what is left). Exits 0 after a requested
stop, 1 if a process failed to start or exited on its own, 2 for a bad config file.
"""

from __future__ import annotations

import argparse
import signal
import sys
from collections.abc import Sequence
from pathlib import Path

from .cluster import DEFAULT_CONFIG, ClusterConfigError, load
from .supervisor import Supervisor


def main(argv: Sequence[str] | None = None) -> int:
    p = argparse.ArgumentParser(prog="python -m deploy.local", description=__doc__.splitlines()[0])
    p.add_argument("--config", type=Path, default=DEFAULT_CONFIG, help="cluster file (default %(default)s)")
    args = p.parse_args(argv)
    try:
        cluster = load(args.config)
    except ClusterConfigError as e:
        print(f"deploy.local: {e}", file=sys.stderr)
        return 2
    supervisor = Supervisor(cluster)
    for sig in (signal.SIGINT, signal.SIGTERM):
        signal.signal(sig, lambda _sig, _frame: supervisor.request_stop())
    return supervisor.run()


if __name__ == "__main__":
    sys.exit(main())
