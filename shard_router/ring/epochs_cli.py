"""`saga-router epochs list|commit|drop`: the ring history routers route by, extended and trimmed by an operator.

`commit` records the config's ring as the next epoch (after a shard is added, marked draining, or vnodes changed): the
one way a re-shard takes effect. Routers only read the epochs file; each picks the new epoch up at its next reload, or
earlier from a shard that another router has shown it to. If there is no epochs file yet, the shards are asked for the
history they hold (routers that started without a file route by it, or made the config's ring epoch 1 when no shard
held one), and the new history is shown to every shard before the file is written.

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
import time
from collections.abc import Sequence

import grpc

from common.ring import Epoch, EpochError, EpochHistory, history_from_message, history_message
from common.tls import ClientTls, TlsConfigError, add_tls_arguments, tls_from_args
from protos.ring.v1 import ring_pb2
from shard_router.channels import ChannelPool
from shard_router.config import ConfigError, RouterConfig, load
from shard_router.ring import epochs
from shard_router.ring.shard_checks import sagas_that_need_routing
from shard_router.ring.topology import Topology

_RPC_TIMEOUT_S = 30.0
_SHOWN = 10


def _parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(prog="saga-router epochs", description=__doc__.splitlines()[0])
    sub = p.add_subparsers(dest="command", required=True)
    for name, text in (
        ("list", "show the retained rings"),
        ("commit", "record the config's ring as the next epoch"),
        ("drop", "forget rings 1..N after checking the shards"),
    ):
        sp = sub.add_parser(name, help=text)
        sp.add_argument("--config", help="the shards TOML file (or $SAGA_ROUTER_CONFIG)")
        sp.add_argument("--epochs", help="the epochs file (default: <config>.epochs.json beside it)")
        if name == "drop":
            sp.add_argument("--through", type=int, required=True, metavar="N", help="drop epochs 1..N")
            sp.add_argument("--force", action="store_true", help="skip the check against the shards")
            sp.add_argument("--retry-window-s", type=int, help="default: [router] place_order_retry_window_s")
        if name == "commit":
            sp.add_argument(
                "--offline", action="store_true", help="without an epochs file, do not ask the shards: start at epoch 1"
            )
        if name != "list":
            # The shards ask for a certificate (role router in their auth policy): the router's own, as a rule.
            add_tls_arguments(sp)
    return p


def main(argv: Sequence[str]) -> int:
    ns = _parser().parse_args(argv)
    try:
        tls = tls_from_args(ns) if ns.command != "list" else None
        config = load(ns.config, epochs_path=ns.epochs, tls=tls)
        history = epochs.read(config.epochs_path)
    except (ConfigError, EpochError, TlsConfigError) as e:
        print(f"saga-router epochs: {e}", file=sys.stderr)
        return 2
    if ns.command == "list":
        _print(history)
        return 0
    if ns.command == "commit":
        return asyncio.run(_commit(config, history, ns.offline))
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


async def _commit(config: RouterConfig, history: EpochHistory, offline: bool) -> int:
    expect = history.number
    first = not history.epochs and not offline
    if first:
        held = await _shards_history(config)
        if held is None:
            return 2
        history = held
    new = epochs.committed(history, config.ring, int(time.time() * 1000))
    if new == history and expect == history.number and history.epochs:
        print(f"nothing to commit: the config's ring is epoch {history.number} already")
        return 0
    # The first file starts from what the shards hold; it is shown to every shard before it is written, so a router
    # that starts without seeing the file (a late copy) learns it, or a newer one, from the shards: none can take its
    # config for an epoch 1 the file contradicts. A shard that refuses it (a router showed it another ring since the
    # shards were asked) stops the commit.
    if first and not await _install_everywhere(config, new):
        return 2
    try:
        epochs.write(config.epochs_path, new, expect=expect)
    except EpochError as e:
        print(f"saga-router epochs: {e}")
        return 2
    current = new.current
    assert current is not None
    print(
        f"recorded epoch {current.number} in {config.epochs_path}: owners {list(current.shard_ids)}, vnodes"
        f" {current.vnodes}; routers pick it up at their next reload (or from a shard another router showed it to)"
    )
    return 0


async def _shards_history(config: RouterConfig) -> EpochHistory | None:
    """The newest history any shard of the config holds (empty if none holds one); None if a shard could not be asked:
    committing without knowing what routers already use could number a second placement 1."""
    try:
        pool = ChannelPool(config.settings.max_message_bytes, 0.0, ClientTls(config.tls))
    except TlsConfigError as e:
        print(f"saga-router epochs: {e}")
        return None
    newest = EpochHistory()
    try:
        for spec in config.ring.shards:
            reply = await pool.get(spec.address).ring.GetRing(ring_pb2.GetRingRequest(), timeout=_RPC_TIMEOUT_S)
            held = history_from_message(reply.history)
            if held.number > newest.number:
                newest = held
    except grpc.aio.AioRpcError as e:
        print(
            f"no epochs file, and a shard cannot be asked which ring it holds ({e.code().name}: {e.details()}); bring"
            " it up, or pass --offline if no router has ever routed by another ring"
        )
        return None
    except EpochError as e:
        print(f"a shard holds a malformed ring history: {e}")
        return None
    finally:
        await pool.close()
    print(f"no epochs file: starting from the shards' history (epoch {newest.number or 'none'})")
    return newest


async def _install_everywhere(config: RouterConfig, history: EpochHistory) -> bool:
    """Shows history to every shard of the config (InstallRing); False, with the reason printed, unless all took it."""
    try:
        pool = ChannelPool(config.settings.max_message_bytes, 0.0, ClientTls(config.tls))
    except TlsConfigError as e:
        print(f"saga-router epochs: {e}")
        return False
    try:
        for spec in config.ring.shards:
            await pool.get(spec.address).ring.InstallRing(
                ring_pb2.InstallRingRequest(history=history_message(history)), timeout=_RPC_TIMEOUT_S
            )
    except grpc.aio.AioRpcError as e:
        print(
            f"nothing written: shard {spec.id} did not take epoch {history.number} ({e.code().name}: {e.details()});"
            " check `saga-router epochs list` against GetRing on the shards, then commit again"
        )
        return False
    finally:
        await pool.close()
    return True


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
        epochs.write(config.epochs_path, remaining, expect=history.number)
    except EpochError as e:
        print(f"saga-router epochs: {e}")
        return 2
    print(f"dropped epochs {[e.number for e in dropped]}; running routers pick this up at their next reload")
    return 0


async def _safe_to_drop(config: RouterConfig, dropped: list[Epoch], after: Topology, window_s: int) -> bool:
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
