"""saga-router: the shard router process, and the `epochs` admin command.

    python -m shard_router --listen 127.0.0.1:50051 --config deploy/local/shards.toml [--epochs PATH] [--log-json]
        [--metrics-listen 127.0.0.1:9051] [--dashboard-listen 127.0.0.1:8051]
        [--tls-cert router.pem --tls-key router-key.pem --tls-ca ca.pem | --insecure] [--auth-policy PATH]
    python -m shard_router epochs list --config deploy/local/shards.toml [--epochs PATH]
    python -m shard_router epochs commit --config deploy/local/shards.toml [--epochs PATH]
    python -m shard_router epochs drop --through N --config deploy/local/shards.toml [--epochs PATH] [--force]
    python -m shard_router defs list|commit FILE...|drop HASH --config deploy/local/shards.toml [--epochs PATH]

SIGTERM/SIGINT stop the router gracefully; SIGHUP reloads the config now (it is also polled about once a second).
"""

from __future__ import annotations

import argparse
import asyncio
import sys
from collections.abc import Sequence

import uvloop
from loguru import logger

from common import process
from common.auth import AuthConfigError, AuthPolicy, add_auth_arguments, auth_policy_from_args
from common.ring import EpochError
from common.tls import TlsConfigError, add_tls_arguments, tls_from_args
from shard_router.config import ConfigError, RouterConfig, load
from shard_router.defs import cli as defs_cli
from shard_router.ring import epochs_cli
from shard_router.ring.reload import RingChangeRefused
from shard_router.server import RouterServer


def _parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(
        prog="saga-router",
        description="Routes saga.v1 calls to coordinator shards by consistent hashing of order_id.",
        epilog="Subcommands: `saga-router epochs {list,commit,drop} ...` shows, extends or trims the ring history;"
        " `saga-router defs {list,commit,drop} ...` the saga definitions history.",
    )
    p.add_argument("--listen", help="host:port to serve on (default 127.0.0.1:50051, or $SAGA_ROUTER_LISTEN)")
    p.add_argument("--config", help="the shards TOML file (or $SAGA_ROUTER_CONFIG)")
    p.add_argument("--epochs", help="the ring history, read only (default: <config>.epochs.json beside it)")
    p.add_argument("--log-json", action="store_true", default=None, help="log JSON lines")
    p.add_argument(
        "--metrics-listen", help="host:port of the Prometheus /metrics endpoint (or $SAGA_ROUTER_METRICS_LISTEN)"
    )
    p.add_argument(
        "--dashboard-listen", help="host:port of the web dashboard and its JSON API (or $SAGA_ROUTER_DASHBOARD_LISTEN)"
    )
    add_tls_arguments(p)  # override the config file's [tls] table
    add_auth_arguments(p)
    return p


async def _serve(config: RouterConfig, auth: AuthPolicy | None) -> int:
    try:
        server = RouterServer(config, auth=auth)
        port = await server.start()
    except (ConfigError, EpochError, RingChangeRefused, TlsConfigError) as e:
        logger.error("cannot start: {}", e)
        return 2
    stopped = process.stop_event(on_hangup=server.request_reload)
    host = config.listen.rpartition(":")[0]
    logger.info("config {}, epochs {}", config.config_path, config.epochs_path)
    # One line on stdout, flushed, like the shards and stubs print: launchers and scripts read it to know where.
    extra = ""
    if server.metrics_port is not None and config.metrics_listen:
        extra += f" metrics http://{config.metrics_listen.rpartition(':')[0]}:{server.metrics_port}/metrics"
    if server.dashboard_port is not None and config.dashboard_listen:
        extra += f" dashboard http://{config.dashboard_listen.rpartition(':')[0]}:{server.dashboard_port}/"
    print(f"shard_router listening on {host}:{port}{extra}", flush=True)
    await stopped.wait()
    logger.info("stopping: draining in-flight calls for up to {}s", config.settings.shutdown_grace_s)
    await server.stop()
    logger.info("stopped")
    return 0


def main(argv: Sequence[str] | None = None) -> int:
    args = list(sys.argv[1:] if argv is None else argv)
    if args[:1] == ["epochs"]:
        return epochs_cli.main(args[1:])
    if args[:1] == ["defs"]:
        return defs_cli.main(args[1:])
    ns = _parser().parse_args(args)
    try:
        config = load(
            ns.config,
            listen=ns.listen,
            epochs_path=ns.epochs,
            log_json=ns.log_json,
            metrics_listen=ns.metrics_listen,
            dashboard_listen=ns.dashboard_listen,
            tls=tls_from_args(ns),
        )
        auth = auth_policy_from_args(ns)
    except (ConfigError, TlsConfigError, AuthConfigError) as e:
        print(f"saga-router: {e}", file=sys.stderr)
        return 2
    process.setup("saga-router", log_name="router", service="saga-router", json_lines=config.log_json)
    with asyncio.Runner(loop_factory=uvloop.new_event_loop) as runner:
        return runner.run(_serve(config, auth))


if __name__ == "__main__":
    sys.exit(main())
