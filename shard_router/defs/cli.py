"""`saga-router defs commit FILE... | list | drop HASH`: the saga definitions the cluster runs, committed like rings.

`commit` checks each file (common.definitions: every problem printed, nothing done on any), adds its definition to
the history (shard_router.defs.history) and, unless --no-activate, points the alias of its name at it, so new sagas of
that type start on it; sagas already running keep the version they started on. The whole new history is shown to
every shard (ring.v1 InstallDefinitions): the config's, and every shard of every ring epoch the epochs file still
retains, since any of them may hold sagas. Only once every one accepted is the file written; a shard that refuses
(it cannot reach a service the definition names, a policy is out of its range, it holds a newer history) is printed
with its reason, and nothing is written. Committing a file already committed changes nothing.

`drop HASH` (or a unique prefix) forgets a version no saga needs: refused while an alias points at it, or while any
shard has a saga (unfinished, dead-lettered or retained) on it, naming some; then every shard forgets it, then the file.

`list` prints the history and, if the shards answer, how many sagas each version still has.
"""

from __future__ import annotations

import argparse
import asyncio
import sys
from collections.abc import Awaitable, Callable, Sequence
from pathlib import Path
from typing import TypeVar

import grpc

from common.definitions import DefinitionError, load
from common.ring import EpochError
from common.tls import ClientTls, TlsConfigError, add_tls_arguments, tls_from_args
from protos.ring.v1 import ring_pb2, ring_pb2_grpc
from shard_router.channels import ChannelPool
from shard_router.config import ConfigError, RouterConfig
from shard_router.config import load as load_config
from shard_router.defs import history as defs_file
from shard_router.defs.history import DefinitionsFileError, DefinitionsHistory
from shard_router.ring import epochs
from shard_router.ring.topology import Topology

RPC_TIMEOUT_S = 30.0
"""Bound on one call to a shard (storing definitions compiles and journals them)."""
SHOWN_KEYS = 5
"""Saga keys named when a drop is refused."""

T = TypeVar("T")


def _parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(prog="saga-router defs", description=__doc__.splitlines()[0])
    sub = p.add_subparsers(dest="command", required=True)
    for name, text in (
        ("list", "show the committed definitions (and, if the shards answer, their sagas)"),
        ("commit", "check definition files, show them to every shard, then record them"),
        ("drop", "forget a definition version no saga needs"),
    ):
        sp = sub.add_parser(name, help=text)
        sp.add_argument("--config", help="the shards TOML file (or $SAGA_ROUTER_CONFIG)")
        sp.add_argument("--epochs", help="the epochs file (default: <config>.epochs.json); definitions live beside it")
        if name == "commit":
            sp.add_argument("files", nargs="+", metavar="FILE", help="definition files (YAML or JSON)")
            sp.add_argument(
                "--no-activate", action="store_true", help="store the versions without pointing their aliases at them"
            )
        if name == "drop":
            sp.add_argument("hash", metavar="HASH", help="the version's hash (or a unique prefix)")
        if name != "list":
            sp.add_argument(
                "--expect-version", type=int, metavar="N", help="refuse unless the definitions file is at version N"
            )
        # The shards ask for a certificate (role router in their auth policy): the router's own, as a rule.
        add_tls_arguments(sp)
    return p


def main(argv: Sequence[str]) -> int:
    ns = _parser().parse_args(argv)
    try:
        config = load_config(ns.config, epochs_path=ns.epochs, tls=tls_from_args(ns))
        history = defs_file.read(config.definitions_path)
        shards = shard_addresses(config)
    except (ConfigError, EpochError, TlsConfigError, DefinitionsFileError) as e:
        print(f"saga-router defs: {e}", file=sys.stderr)
        return 2
    expect = getattr(ns, "expect_version", None)
    if expect is not None and expect != history.version:
        print(f"refusing: {config.definitions_path} is at version {history.version}, not {expect}")
        return 2
    if ns.command == "list":
        return asyncio.run(_list(config, history, shards))
    if ns.command == "commit":
        return asyncio.run(_commit(config, history, shards, ns.files, not ns.no_activate))
    return asyncio.run(_drop(config, history, shards, ns.hash))


def shard_addresses(config: RouterConfig) -> dict[str, str]:
    """Every shard that may hold sagas: the config's, and those of the ring epochs the epochs file retains."""
    ring_history = epochs.read(config.epochs_path)
    if not ring_history.epochs:
        return dict(config.ring.addresses)
    topo = Topology.build(config.ring, ring_history)
    return {sid: topo.addresses[sid] for sid in topo.shard_ids}


async def each_shard(
    config: RouterConfig, shards: dict[str, str], call: Callable[[ring_pb2_grpc.RingServiceStub, str], Awaitable[T]]
) -> dict[str, T | grpc.aio.AioRpcError]:
    """call(stub, shard id) on every shard at once: its answer, or the error it failed with."""
    pool = ChannelPool(config.settings.max_message_bytes, 0.0, ClientTls(config.tls))

    async def one(sid: str) -> T | grpc.aio.AioRpcError:
        try:
            return await call(pool.get(shards[sid]).ring, sid)
        except grpc.aio.AioRpcError as e:
            return e

    try:
        answers = await asyncio.gather(*(one(sid) for sid in shards))
    finally:
        await pool.close()
    return dict(zip(shards, answers, strict=True))


def _failures(answers: dict[str, T | grpc.aio.AioRpcError]) -> list[str]:
    return [
        f"  shard {sid}: {a.code().name}: {a.details()}"
        for sid, a in answers.items()
        if isinstance(a, grpc.aio.AioRpcError)
    ]


async def _install(
    config: RouterConfig, shards: dict[str, str], new: DefinitionsHistory, drop: Sequence[str] = ()
) -> bool:
    """Shows new to every shard; True if every one took it, else prints why not."""
    request = new.install_request(drop)

    async def install(stub: ring_pb2_grpc.RingServiceStub, sid: str) -> ring_pb2.InstallDefinitionsResponse:
        reply: ring_pb2.InstallDefinitionsResponse = await stub.InstallDefinitions(request, timeout=RPC_TIMEOUT_S)
        return reply

    answers = await each_shard(config, shards, install)
    problems = _failures(answers)
    for sid, a in answers.items():
        # A shard ignores a history older than the one it holds: this file is behind what some commit showed it.
        if isinstance(a, ring_pb2.InstallDefinitionsResponse) and a.state.history_version > new.version:
            problems.append(
                f"  shard {sid}: holds definitions history version {a.state.history_version}, newer than this one"
                f" ({new.version}): {config.definitions_path} is stale; restore it from where it was committed"
            )
    if problems:
        print("nothing written: not every shard took the definitions")
        print("\n".join(problems))
        return False
    return True


async def _commit(
    config: RouterConfig, history: DefinitionsHistory, shards: dict[str, str], files: Sequence[str], activate: bool
) -> int:
    loaded = []
    failed = False
    for f in files:
        try:
            loaded.append(load(Path(f)))
        except DefinitionError as e:
            print(e)
            failed = True
        except OSError as e:
            print(f"{f}: {e}")
            failed = True
    if failed:
        print("nothing committed: fix the problems above (saga-defs check FILE shows the same)")
        return 2
    new = history.committed(loaded, activate)
    if new is history:
        print(f"nothing to commit: version {history.version} of {config.definitions_path} holds these already")
        return 0
    if not await _install(config, shards, new):
        return 2
    try:
        defs_file.write(config.definitions_path, new, expect=history.version)
    except DefinitionsFileError as e:
        # The shards were shown this history already; the routers show them the file's again (same version number,
        # the file's aliases win), so committing again after reading the file is safe.
        print(f"saga-router defs: {e}")
        return 2
    for d in loaded:
        active = " (active)" if new.aliases.get(d.name) == d.hash else ""
        print(f"committed {d.name} version {d.version} {d.hash}{active}")
    print(f"{config.definitions_path} is at version {new.version}; {len(shards)} shard(s) hold it")
    return 0


async def _usage(
    config: RouterConfig, shards: dict[str, str]
) -> dict[str, ring_pb2.GetDefinitionsResponse | grpc.aio.AioRpcError]:
    async def get(stub: ring_pb2_grpc.RingServiceStub, sid: str) -> ring_pb2.GetDefinitionsResponse:
        reply: ring_pb2.GetDefinitionsResponse = await stub.GetDefinitions(
            ring_pb2.GetDefinitionsRequest(with_usage=True), timeout=RPC_TIMEOUT_S
        )
        return reply

    return await each_shard(config, shards, get)


async def _list(config: RouterConfig, history: DefinitionsHistory, shards: dict[str, str]) -> int:
    if not history.definitions:
        print(f"no definitions committed in {config.definitions_path} (the shards run the shipped order flow)")
        return 0
    answers = await _usage(config, shards)
    missing = _failures(answers)
    counts: dict[str, int] = {}
    for a in answers.values():
        if isinstance(a, ring_pb2.GetDefinitionsResponse):
            for h, n in a.state.usage.items():
                counts[h] = counts.get(h, 0) + n
    print(f"{config.definitions_path}: version {history.version}")
    print(f"{'TYPE':<20} {'VERSION':<10} {'HASH':<34} {'ACTIVE':<7} SAGAS")
    for h, v in history.definitions.items():
        active = "yes" if history.aliases.get(v.name) == h else ""
        sagas = str(counts.get(h, 0)) + ("+?" if missing else "")
        print(f"{v.name:<20} {v.version:<10} {h:<34} {active:<7} {sagas}")
    if missing:
        print("saga counts leave out shards that did not answer:")
        print("\n".join(missing))
    return 0


async def _drop(config: RouterConfig, history: DefinitionsHistory, shards: dict[str, str], prefix: str) -> int:
    try:
        target = history.resolve(prefix)
    except DefinitionsFileError as e:
        print(f"saga-router defs: {e}")
        return 2
    name = history.definitions[target].name
    if history.aliases.get(name) == target:
        print(f"refusing: {target} is what alias {name!r} starts new sagas on; commit another version of it first")
        return 1
    answers = await _usage(config, shards)
    if problems := _failures(answers):
        print("refusing: not every shard could be asked whether its sagas need this version")
        print("\n".join(problems))
        return 2
    users: list[str] = []
    count = 0
    for sid, a in answers.items():
        assert isinstance(a, ring_pb2.GetDefinitionsResponse)
        count += a.state.usage.get(target, 0)
        users += [f"{k} (on {sid})" for k in a.state.users[target].keys] if target in a.state.users else []
    if count:
        print(f"refusing: {count} saga(s) still need {name} {target} (unfinished, dead-lettered or retained), e.g.:")
        print("\n".join(f"  {u}" for u in users[:SHOWN_KEYS]))
        return 1
    new = history.without(target)
    if not await _install(config, shards, new, drop=[target]):
        return 2
    try:
        defs_file.write(config.definitions_path, new, expect=history.version)
    except DefinitionsFileError as e:
        print(f"saga-router defs: {e}")
        return 2
    print(f"dropped {name} {target}; {config.definitions_path} is at version {new.version}")
    return 0
