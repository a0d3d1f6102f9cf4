"""`python -m coordinator`: runs one shard in the foreground until SIGTERM or SIGINT."""

from __future__ import annotations

import argparse
import asyncio
import os
import signal
import sys

import uvloop
from loguru import logger

from common import logs
from common.tls import TlsConfigError, TlsFiles, add_tls_arguments, tls_from_args

from . import crashpoints
from .app import ShardApp
from .config import ConfigError, ShardConfig, load


def parse_args(argv: list[str] | None) -> argparse.Namespace:
    p = argparse.ArgumentParser(prog="python -m coordinator", description="Run one saga coordinator shard.")
    p.add_argument("--config", help="TOML config file (see coordinator/config.py for every setting)")
    p.add_argument("--shard-id", help="this shard's id (env SAGA_SHARD_ID)")
    p.add_argument("--listen", help="gRPC listen address host:port (env SAGA_LISTEN)")
    p.add_argument("--journal", help="SQLite journal path (env SAGA_JOURNAL; default $SAGA_DATA_DIR/<shard-id>.db)")
    p.add_argument("--metrics-listen", help="host:port of the Prometheus /metrics endpoint (env SAGA_METRICS_LISTEN)")
    p.add_argument("--services", help="one host:port serving all four downstream services (env SAGA_SERVICES)")
    p.add_argument("--log-json", action="store_true", default=None, help="log JSON lines")
    add_tls_arguments(p)
    return p.parse_args(argv)


async def run(cfg: ShardConfig, tls: TlsFiles | None = None) -> None:
    app = await ShardApp.start(cfg, tls=tls)
    stop = asyncio.Event()
    loop = asyncio.get_running_loop()
    for sig in (signal.SIGTERM, signal.SIGINT):
        loop.add_signal_handler(sig, stop.set)
    metrics = ""
    if app.metrics_server is not None:
        metrics = f" metrics http://{cfg.metrics_listen.rpartition(':')[0]}:{app.metrics_server.port}/metrics"
    print(f"coordinator {cfg.shard_id} listening on {app.address}{metrics}", flush=True)
    await stop.wait()
    logger.info("signal received, stopping")
    await app.stop()


def main(argv: list[str] | None = None) -> None:
    args = parse_args(argv)
    try:
        cfg = load(
            args.config,
            overrides={
                "shard_id": args.shard_id,
                "listen": args.listen,
                "metrics_listen": args.metrics_listen,
                "journal_path": args.journal,
                "services": args.services,
                "log_json": args.log_json,
            },
        )
        crashpoints.arm(os.environ.get("SAGA_CRASH_POINT", ""))
        tls = tls_from_args(args)
    except (ConfigError, ValueError) as e:
        print(f"coordinator: bad configuration: {e}", file=sys.stderr)
        sys.exit(2)
    logs.setup(cfg.shard_id, json_lines=cfg.log_json, level=cfg.log_level.upper())
    try:
        uvloop.run(run(cfg, tls))
    except TlsConfigError as e:  # unusable TLS files, or plaintext off loopback: refused before anything is bound
        logger.error("cannot start: {}", e)
        print(f"coordinator: {e}", file=sys.stderr)
        sys.exit(2)


if __name__ == "__main__":
    main()
