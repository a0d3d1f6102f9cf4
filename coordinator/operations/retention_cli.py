"""`python -m coordinator.operations.retention_cli {run,export,vacuum}`: journal retention by hand
(coordinator/operations/retention.py).

A module of its own, not retention.py's __main__: `coordinator` imports retention (through shard), and running an
already imported module with -m makes runpy warn and execute it a second time.
"""

from __future__ import annotations

import argparse
import asyncio
import dataclasses
import json
import sqlite3
import sys

from coordinator.clock import SystemClock
from coordinator.config import ConfigError, ShardConfig, load
from coordinator.journal import Journal
from coordinator.operations.retention import Upkeep, archive_line, find_in_archive


def _parse(argv: list[str] | None) -> argparse.Namespace:
    p = argparse.ArgumentParser(
        prog="python -m coordinator retention",
        description="Journal retention of one shard (settings: [retention] in its config, see coordinator/config.py).",
    )
    p.add_argument(
        "command",
        choices=("run", "export", "vacuum"),
        help="run: one retention pass now (safe while the "
        "shard runs); export ORDER_ID: that saga's archive line; vacuum: convert an older journal to "
        "incremental auto-vacuum (shard stopped; rewrites the file)",
    )
    p.add_argument("order_id", nargs="?", help="export: the order id")
    p.add_argument("--config", help="the shard's TOML config file")
    p.add_argument("--shard-id", help="the shard's id, for the default journal path (env SAGA_SHARD_ID)")
    p.add_argument("--journal", help="SQLite journal path (env SAGA_JOURNAL)")
    return p.parse_args(argv)


async def _command(cfg: ShardConfig, args: argparse.Namespace) -> int:
    if args.command == "vacuum":
        db = sqlite3.connect(cfg.journal_path, isolation_level=None)
        try:
            db.execute("PRAGMA auto_vacuum=INCREMENTAL")
            db.execute("VACUUM")
            print(f"{cfg.journal_path}: auto_vacuum={db.execute('PRAGMA auto_vacuum').fetchone()[0]}")
        finally:
            db.close()
        return 0
    journal = Journal(cfg.journal_path)
    await journal.open()
    try:
        if args.command == "run":
            report = await Upkeep(cfg, journal, SystemClock()).run_pass()
            print(json.dumps(dataclasses.asdict(report)))
            return 0
        if not args.order_id:
            print("export needs an ORDER_ID", file=sys.stderr)
            return 2
        found = await journal.get_by_order(args.order_id, with_events=False)
        if found is not None:
            print(json.dumps(archive_line((await journal.archived([found.saga_id]))[0])))
            return 0
    finally:
        await journal.close()
    if cfg.retention.archive_dir:
        last = await asyncio.to_thread(find_in_archive, cfg.retention.archive_dir, cfg.shard_id, args.order_id)
        if last is not None:
            print(json.dumps(last))
            return 0
    print(f"order {args.order_id} is neither in the journal nor in the archive", file=sys.stderr)
    return 1


def main(argv: list[str] | None = None) -> int:
    args = _parse(argv)
    try:
        cfg = load(args.config, overrides={"shard_id": args.shard_id, "journal_path": args.journal})
    except ConfigError as e:
        print(f"config: {e}", file=sys.stderr)
        return 2
    return asyncio.run(_command(cfg, args))


if __name__ == "__main__":
    sys.exit(main())
