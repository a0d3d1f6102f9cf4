"""`saga-router epochs list|drop`: what the router remembers of earlier rings, and forgetting what nobody needs.

Dropping epochs 1..N is safe when no saga depends on them: every saga that one of their shards holds and that a client
may still ask about (unfinished, or terminal but created within the PlaceOrder retry window) is still placed on that
shard by one of the rings that remain. `drop` checks exactly this by listing those sagas on the shards of the dropped
epochs, and refuses (naming some) otherwise; --force skips the check, e.g. for a shard that is gone for good.
"""

from __future__ import annotations

import argparse
import asyncio
import datetime
import sys
from collections.abc import Sequence

import grpc

from common.tls import ClientTls, TlsConfigError, add_tls_arguments, tls_from_args

from . import epochs
from .channels import ChannelPool
from .config import ConfigError, RouterConfig, load
from .epochs import EpochError, EpochHistory
from .shard_checks import sagas_that_need_routing
from .topology import Topology

_RPC_TIMEOUT_S = 30.0
_SHOWN = 10


def _parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(prog="saga-router epochs", description=__doc__.splitlines()[0])
    sub = p.add_subparsers(dest="command", required=True)
    for name, text in (("list", "show the retained rings"), ("drop", "forget rings 1..N after checking the shards")):
        sp = sub.add_parser(name, help=text)
        sp.add_argument("--config", help="the shards TOML file (or $SAGA_ROUTER_CONFIG)")
        sp.add_argument("--epochs", help="the epochs state file (default: <config>.epochs.json beside it)")
        if name == "drop":
            sp.add_argument("--through", type=int, required=True, metavar="N", help="drop epochs 1..N")
            sp.add_argument("--force", action="store_true", help="skip the check against the shards")
            sp.add_argument("--retry-window-s", type=int, help="default: [router] place_order_retry_window_s")
            # The shards ask for a certificate (role router in their auth policy): the router's own, as a rule.
            add_tls_arguments(sp)
    return p


def main(argv: Sequence[str]) -> int:
    ns = _parser().parse_args(argv)
    try:
        tls = tls_from_args(ns) if ns.command == "drop" else None
        config = load(ns.config, epochs_path=ns.epochs, tls=tls)
        history = epochs.read(config.epochs_path)
    except (ConfigError, EpochError, TlsConfigError) as e:
        print(f"saga-router epochs: {e}", file=sys.stderr)
        return 2
    if ns.command == "list":
        _print(history)
        return 0
    return asyncio.run(_drop(config, history, ns.through, ns.force, ns.retry_window_s))


def _print(history: EpochHistory) -> None:
    if not history.epochs:
        print("no epochs recorded yet (the router records the first one when it starts)")
    for e in history.epochs:
        since = datetime.datetime.fromtimestamp(e.created_at_epoch_ms / 1000, datetime.UTC).isoformat(
            timespec="seconds"
        )
        mark = " (current)" if e is history.current else ""
        shards = ", ".join(f"{sid}={addr}" for sid, addr in e.shards)
        print(f"epoch {e.number}{mark}: since {since}, vnodes {e.vnodes}: {shards}")


async def _drop(config: RouterConfig, history: EpochHistory, through: int, force: bool, window_s: int | None) -> int:
    try:
        remaining = history.drop_through(through)
        after = Topology.build(config.ring, remaining)
    except (EpochError, ValueError) as e:
        print(f"saga-router epochs: {e} (if the config was just edited, let the router install it first)")
        return 2
    dropped = [e for e in history.epochs if e.number <= through]
    if not dropped:
        print(f"nothing to drop: the oldest retained epoch is {history.epochs[0].number}")
        return 0
    if not force:
        window = config.settings.place_order_retry_window_s if window_s is None else window_s
        if not await _safe_to_drop(config, dropped, after, window):
            return 1
    try:
        epochs.write(config.epochs_path, remaining)
    except EpochError as e:
        print(f"saga-router epochs: {e}")
        return 2
    print(f"dropped epochs {[e.number for e in dropped]}; running routers pick this up at their next reload")
    return 0


async def _safe_to_drop(config: RouterConfig, dropped: list[epochs.Epoch], after: Topology, window_s: int) -> bool:
    addresses = {sid: addr for e in dropped for sid, addr in e.shards} | dict(config.ring.addresses)
    try:
        pool = ChannelPool(config.settings.max_message_bytes, 0.0, ClientTls(config.tls))
    except TlsConfigError as e:
        print(f"saga-router epochs: {e}")
        return False
    stranded: list[str] = []
    count = 0
    try:
        for sid in sorted({sid for e in dropped for sid in e.shard_ids}):
            stub = pool.get(addresses[sid]).coordinator
            async for saga in sagas_that_need_routing(stub, window_s, _RPC_TIMEOUT_S):
                holders = {after.owner(saga.order_id), *(s for s, _ in after.earlier_owners(saga.order_id))}
                if sid not in holders:
                    count += 1
                    if len(stranded) < _SHOWN:
                        stranded.append(f"  order {saga.order_id!r} on {sid}")
    except grpc.aio.AioRpcError as e:
        print(f"cannot check the shards ({e.code().name}: {e.details()}); nothing dropped (--force skips the check)")
        return False
    finally:
        await pool.close()
    if count:
        print(f"refusing: {count} saga(s) would become unreachable without these epochs (unfinished, or created within")
        print(f"the last {window_s}s so a PlaceOrder retry may still come). For example:")
        print("\n".join(stranded))
        return False
    return True
