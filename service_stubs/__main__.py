"""`python -m service_stubs` / `saga-stubs`: run stub services until SIGTERM or SIGINT."""

from __future__ import annotations

import argparse
import gc
from collections.abc import Sequence
from pathlib import Path

import uvloop
from loguru import logger

from common import process
from common.auth import AuthConfigError, add_auth_arguments, auth_policy_from_args
from common.tls import TlsConfigError, add_tls_arguments, tls_from_args
from service_stubs.config import ALL_SERVICES, StubConfig, default_data_dir, parse_services, parse_stock
from service_stubs.server import serve


def parse_args(argv: Sequence[str] | None = None) -> tuple[StubConfig, str]:
    """The config and log level the command line asks for; exits with usage on bad flags."""
    parser = argparse.ArgumentParser(
        prog="saga-stubs",
        description=(
            "Order, Inventory, Payment, Shipping and Loyalty stub services with durable state and fault injection."
        ),
    )
    parser.add_argument("--listen", default="127.0.0.1:50061", help="host:port (default %(default)s; port 0: any)")
    parser.add_argument(
        "--data-dir",
        type=Path,
        default=None,
        help="where order.db, inventory.db, ... live (default $SAGA_DATA_DIR/stubs, else ./.data/stubs)",
    )
    parser.add_argument(
        "--services",
        default=",".join(ALL_SERVICES),
        help="comma-separated subset of %(default)s",
    )
    parser.add_argument(
        "--no-control",
        action="store_true",
        help="do not serve StubControl (fault injection, ledgers, stock): for anything but development and tests",
    )
    parser.add_argument(
        "--stock",
        action="append",
        default=[],
        metavar="ITEM=QTY",
        help="starting stock of an item the data dir has no level for yet (repeatable)",
    )
    parser.add_argument("--metrics-listen", default=None, help="host:port for Prometheus /metrics (default: none)")
    parser.add_argument("--log-level", default="INFO", help="loguru level (default %(default)s)")
    add_tls_arguments(parser)
    add_auth_arguments(parser)
    args = parser.parse_args(argv)
    try:
        services = parse_services(args.services)
        if args.no_control:
            services = tuple(s for s in services if s != "control")
        config = StubConfig(
            listen=args.listen,
            data_dir=args.data_dir if args.data_dir is not None else default_data_dir(),
            services=services,
            initial_stock=parse_stock(args.stock),
            metrics_listen=args.metrics_listen,
            tls=tls_from_args(args),
            auth=auth_policy_from_args(args),
        )
    except ValueError as e:  # AuthConfigError and TlsConfigError are ValueErrors too
        parser.error(str(e))
    return config, str(args.log_level).upper()


async def run(config: StubConfig) -> None:
    """Serves until SIGTERM/SIGINT, then stops gracefully."""
    server = await serve(config)
    stopped = process.stop_event()
    # Everything loaded from the stores lives as long as the process: out of the collector's sight for good.
    gc.freeze()
    # One line on stdout, flushed: launchers and tests read it to know the process is ready and where.
    metrics = f" metrics=:{server.metrics.port}" if server.metrics is not None else ""
    print(
        f"service_stubs listening on {server.address} services={','.join(config.services)} "
        f"data_dir={config.data_dir}{metrics}",
        flush=True,
    )
    try:
        await stopped.wait()
        logger.info("signal received, stopping")
    finally:
        await server.stop()


def main(argv: Sequence[str] | None = None) -> None:
    config, log_level = parse_args(argv)
    # The key tables only grow, and every call allocates a few hundred short-lived objects (gRPC, protobuf, asyncio):
    # with the default thresholds (700, 10, 10) the collector runs every few calls and keeps re-walking the tables.
    # Measured with `make bench BENCH_ARGS="stubs"`: see the commit that set this.
    gc.set_threshold(50_000, 50, 100)
    process.setup("service_stubs", log_name="stubs", service="saga-stubs", level=log_level)
    try:
        uvloop.run(run(config))
    # Unusable TLS files, plaintext off loopback, no auth policy where one is needed: found before anything is bound.
    except (TlsConfigError, AuthConfigError) as e:
        logger.error("cannot start: {}", e)
        raise SystemExit(2) from e
    except (OSError, RuntimeError) as e:
        logger.error("stubs failed: {}", e)
        raise SystemExit(1) from e


if __name__ == "__main__":
    main()
