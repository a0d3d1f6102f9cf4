"""`python -m coordinator`: runs one shard in the foreground until SIGTERM or SIGINT.
`python -m coordinator keys {init,rotate,status,reseal}`: the keys that seal payment details in the journal.
`python -m coordinator retention {run,export,vacuum}`: a retention pass now, one saga's archive record, a vacuum.
`python -m coordinator restore --replica URL`: rebuilds the journal from its Litestream replica."""

from __future__ import annotations

import argparse
import asyncio
import os
import sys
from pathlib import Path

import uvloop
from loguru import logger

from common import logs, process
from common.auth import AuthConfigError, AuthPolicy, add_auth_arguments, auth_policy_from_args
from common.tls import TlsConfigError, TlsFiles, add_tls_arguments, tls_from_args
from coordinator import crashpoints
from coordinator.app import ShardApp
from coordinator.config import ConfigError, ShardConfig, load
from coordinator.journal import Journal
from coordinator.security import sealing


def parse_args(argv: list[str] | None) -> argparse.Namespace:
    p = argparse.ArgumentParser(prog="python -m coordinator", description="Run one saga coordinator shard.")
    p.add_argument("--config", help="TOML config file (see coordinator/config.py for every setting)")
    p.add_argument("--shard-id", help="this shard's id (env SAGA_SHARD_ID)")
    p.add_argument("--listen", help="gRPC listen address host:port (env SAGA_LISTEN)")
    p.add_argument("--journal", help="SQLite journal path (env SAGA_JOURNAL; default $SAGA_DATA_DIR/<shard-id>.db)")
    p.add_argument("--metrics-listen", help="host:port of the Prometheus /metrics endpoint (env SAGA_METRICS_LISTEN)")
    p.add_argument("--services", help="one host:port serving all four downstream services (env SAGA_SERVICES)")
    p.add_argument("--log-json", action="store_true", default=None, help="log JSON lines")
    p.add_argument(
        "--litestream-socket",
        help="control socket of the Litestream replicating the journal, watched for lag (env SAGA_LITESTREAM_SOCKET)",
    )
    add_tls_arguments(p)
    add_auth_arguments(p)
    return p.parse_args(argv)


async def run(cfg: ShardConfig, tls: TlsFiles | None = None, auth: AuthPolicy | None = None) -> None:
    app = await ShardApp.start(cfg, tls=tls, auth=auth)
    stopped = process.stop_event()
    metrics = ""
    if app.metrics_server is not None:
        metrics = f" metrics http://{cfg.metrics_listen.rpartition(':')[0]}:{app.metrics_server.port}/metrics"
    print(f"coordinator {cfg.shard_id} listening on {app.address}{metrics}", flush=True)
    await stopped.wait()
    logger.info("signal received, stopping")
    await app.stop()


def parse_keys_args(argv: list[str]) -> argparse.Namespace:
    p = argparse.ArgumentParser(
        prog="python -m coordinator keys",
        description="The keys that seal payment details in a shard's journal (deploy/README.md, 'Keys and data at "
        "rest'). Journal and key file come from the shard's own settings (flags, environment, --config).",
    )
    p.add_argument(
        "command",
        choices=("init", "rotate", "status", "reseal"),
        help="init: create the key file (its hash key from the legacy secret, if one is configured); rotate: append a "
        "new sealing key (it seals from each shard's next start); status: blobs per key id; reseal: re-seal every blob "
        "not under the newest key (safe while the shard runs)",
    )
    p.add_argument("--config", help="the shard's TOML config file")
    p.add_argument("--shard-id", help="the shard's id, for the default journal path (env SAGA_SHARD_ID)")
    p.add_argument("--journal", help="SQLite journal path (env SAGA_JOURNAL)")
    p.add_argument("--key-file", help="key file (env SAGA_JOURNAL_KEY_FILE; default <journal>.keys)")
    return p.parse_args(argv)


async def keys_command(cfg: ShardConfig, command: str) -> None:
    path = sealing.key_file_path(cfg)
    if command == "init":
        if Path(path).exists():  # noqa: ASYNC240 - a one-shot command, nothing else runs on its loop
            raise sealing.KeyFileError(f"key file {path} already exists")
        legacy = sealing.legacy_secret(cfg)
        sealing.write_key_file(sealing.new_key_ring(path, sealing.legacy_hash_key(legacy) if legacy else None))
        print(f"created {path} (mode 0600){', hash key from the legacy secret' if legacy else ''}; back it up")
        return
    if command == "rotate":
        ring = sealing.rotate_key_file(path)
        print(f"{path}: added key {ring.newest}; it seals from each shard's next start, then run: keys reseal")
        return
    ring = sealing.read_key_file(path)
    if not Path(cfg.journal_path).exists():  # noqa: ASYNC240 - a one-shot command, nothing else runs on its loop
        raise ConfigError(f"journal {cfg.journal_path} does not exist")
    journal = Journal(cfg.journal_path)
    await journal.open()
    try:
        if command == "reseal":
            n = await sealing.reseal(journal, sealing.Sealer(ring, sealing.legacy_secret(cfg)))
            print(f"{cfg.journal_path}: re-sealed {n} blobs under key {ring.newest}")
        usage = await sealing.key_usage(journal)
        stored = await journal.stored_key_fingerprint(sealing.FINGERPRINT_PURPOSE)
    finally:
        await journal.close()
    print(f"{'key id':<12} {'blobs':>9} {'unfinished':>11}  in {path}")
    for kid in sorted(set(usage.all) | {k for k, _ in ring.seal_keys}):
        held = "newest" if kid == ring.newest else "yes" if ring.key(kid) else "NO"
        print(f"{kid:<12} {usage.all[kid]:>9} {usage.unfinished[kid]:>11}  {held}")
    if command == "status":
        # Which backed-up key file is this journal's: the one whose fingerprint the journal holds.
        mine = sealing.Sealer(ring).hash_key_fingerprint()
        verdict = "matches the journal" if stored == mine else f"the journal holds {stored or 'none yet'}"
        print(f"{sealing.HASH_ENTRY} key fingerprint {mine} ({verdict})")


def keys_main(argv: list[str]) -> None:
    args = parse_keys_args(argv)
    try:
        cfg = load(
            args.config,
            overrides={"shard_id": args.shard_id, "journal_path": args.journal, "journal_key_file": args.key_file},
        )
        logs.setup(cfg.shard_id, json_lines=False, level="WARNING")
        asyncio.run(keys_command(cfg, args.command))
    except (ConfigError, sealing.KeyFileError) as e:
        print(f"coordinator keys: {e}", file=sys.stderr)
        sys.exit(2)


def main(argv: list[str] | None = None) -> None:
    argv = sys.argv[1:] if argv is None else argv
    if argv[:1] == ["keys"]:
        keys_main(argv[1:])
        return
    if argv[:1] == ["restore"]:
        from coordinator.operations import restore  # only this command needs it

        sys.exit(restore.main(argv[1:]))
    if argv[:1] == ["retention"]:
        from coordinator.operations import retention_cli  # only this command needs it

        sys.exit(retention_cli.main(argv[1:]))
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
                "litestream_socket": args.litestream_socket,
            },
        )
        crashpoints.arm(os.environ.get("SAGA_CRASH_POINT", ""))
        tls = tls_from_args(args)
        auth = auth_policy_from_args(args)
    except (ConfigError, ValueError) as e:
        print(f"coordinator: bad configuration: {e}", file=sys.stderr)
        sys.exit(2)
    process.setup(
        "coordinator",
        log_name=cfg.shard_id,
        service="saga-coordinator",
        instance=cfg.shard_id,
        json_lines=cfg.log_json,
        level=cfg.log_level.upper(),
    )
    try:
        uvloop.run(run(cfg, tls, auth))
    # Unusable TLS files, plaintext off loopback, no auth policy where one is needed, a key file missing or too open:
    # refused before anything is bound.
    except (TlsConfigError, AuthConfigError, sealing.KeyFileError) as e:
        logger.error("cannot start: {}", e)
        print(f"coordinator: {e}", file=sys.stderr)
        sys.exit(2)


if __name__ == "__main__":
    main()
