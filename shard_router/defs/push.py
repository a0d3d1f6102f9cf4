"""Every shard holds the committed definitions: the router shows the definitions file to each shard of its topology
(ring.v1 InstallDefinitions), at start, whenever the file changes, and to every shard that joins the topology; and it
checks again now and then (GetDefinitions, RECHECK_S) so a shard restored from a replica or a backup, or started on a
fresh journal at the same address, gets back every version and the aliases.

All in the background, per shard, with retries: a shard that is down is tried again (backoff up to MAX_BACKOFF_S), one
that refuses is logged at ERROR with its reason (once per version and reason: the refusal repeats until the shard's
configuration or the file changes) and tried again too. `saga_router_definitions_installed{shard}` is the history
version each shard was last seen to hold. The router's calls never wait for any of this: a shard that lacks a type
answers StartSaga NOT_FOUND until it has it.
"""

from __future__ import annotations

import asyncio
import os
import time
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

import grpc
from loguru import logger

from common.loops import run_every
from protos.ring.v1 import ring_pb2
from shard_router.channels import ChannelPool
from shard_router.defs import history as defs_file
from shard_router.defs.history import DefinitionsFileError, DefinitionsHistory
from shard_router.metrics import Metrics
from shard_router.ring.topology import Topology

CALL_TIMEOUT_S = 5.0
"""Bound on one GetDefinitions/InstallDefinitions call to a shard."""
RECHECK_S = 30.0
"""How often a shard that holds the history is asked again (it may have been restored from an older journal)."""
MAX_BACKOFF_S = 30.0
"""Longest wait between two attempts on a shard that is down or refuses."""


@dataclass
class _Shard:
    address: str = ""
    version: int = -1
    """The history version this shard was last seen to hold (at least), at `address`."""
    due_at: float = 0.0
    """Monotonic time of the next check."""
    failures: int = 0
    logged: str = ""
    """The last refusal logged at ERROR (logged once until it changes)."""


class DefinitionsPusher:
    def __init__(
        self,
        path: Path,
        topology: Callable[[], Topology],
        pool: ChannelPool,
        metrics: Metrics,
        now: Callable[[], float] = time.monotonic,
    ) -> None:
        self._path = path
        self._topology = topology
        self._pool = pool
        self._metrics = metrics
        self._now = now
        self._history = DefinitionsHistory()
        self._signature: tuple[int, int, int] | None = None
        self._shards: dict[str, _Shard] = {}

    async def run(self, interval_s: float) -> None:
        """One round every interval_s, until cancelled."""
        await run_every(interval_s, self.round, name="definitions push")

    async def round(self) -> None:
        """Re-reads the file if it changed, then checks every shard that is due."""
        self._read_if_changed()
        if not self._history.version:
            return  # no file: the shards run the shipped order flow, nothing to show them
        topo = self._topology()
        for gone in set(self._shards) - set(topo.shard_ids):
            del self._shards[gone]
        now = self._now()
        due = []
        for sid in topo.shard_ids:
            shard = self._shards.setdefault(sid, _Shard())
            address = topo.addresses[sid]
            if shard.address != address:
                shard.address, shard.version, shard.due_at = address, -1, 0.0  # another process now: check it
            if now >= shard.due_at:
                due.append((sid, shard))
        await asyncio.gather(*(self._check(sid, shard, self._history) for sid, shard in due))

    def _read_if_changed(self) -> None:
        try:
            st = os.stat(self._path)
            signature: tuple[int, int, int] | None = (st.st_mtime_ns, st.st_size, st.st_ino)
        except OSError:
            signature = None
        if signature == self._signature:
            return
        self._signature = signature
        try:
            history = defs_file.read(self._path)
        except DefinitionsFileError as e:
            logger.error("definitions not pushed, the shards keep what they hold: {}", e)
            return
        if history != self._history:
            logger.info("definitions history version {} from {}", history.version, self._path)
            for shard in self._shards.values():
                shard.due_at = 0.0  # every shard is shown the new history at once
        self._history = history

    async def _check(self, sid: str, shard: _Shard, history: DefinitionsHistory) -> None:
        """Asks the shard what it holds and shows it the history if it lacks any of it."""
        ring = self._pool.get(shard.address).ring
        try:
            held = (await ring.GetDefinitions(ring_pb2.GetDefinitionsRequest(), timeout=CALL_TIMEOUT_S)).state
            if not self._holds(held, history):
                reply = await ring.InstallDefinitions(history.install_request(), timeout=CALL_TIMEOUT_S)
                held = reply.state
                logger.info("shard {} took definitions history version {}", sid, history.version)
        except grpc.aio.AioRpcError as e:
            self._failed(sid, shard, history, e)
            return
        if held.history_version > history.version and shard.version < held.history_version:
            # Normal while `defs commit` runs (it shows the shards the new history before it writes the file); if it
            # lasts, this router's file is behind the one the commit wrote.
            logger.info(
                "shard {} holds definitions history version {}, newer than {} in {}: waiting for the file",
                sid,
                held.history_version,
                history.version,
                self._path,
            )
        shard.version = max(history.version, held.history_version)
        shard.failures = 0
        shard.due_at = self._now() + RECHECK_S
        self._metrics.definitions_installed(sid, held.history_version)

    @staticmethod
    def _holds(held: ring_pb2.DefinitionsState, history: DefinitionsHistory) -> bool:
        """Whether the shard holds every version of the history and, at the same history version, its aliases (two
        racing commits may both have shown the shards a version N+1: the file's is the one that counts)."""
        hashes = {d.hash for d in held.definitions}
        if not all(h in hashes for h in history.definitions):
            return False
        if held.history_version != history.version:
            return bool(held.history_version > history.version)
        return all(held.aliases.get(name) == h for name, h in history.aliases.items())

    def _failed(self, sid: str, shard: _Shard, history: DefinitionsHistory, e: grpc.aio.AioRpcError) -> None:
        shard.failures += 1
        shard.due_at = self._now() + min(MAX_BACKOFF_S, 0.5 * 2**shard.failures)
        if e.code() in (grpc.StatusCode.UNAVAILABLE, grpc.StatusCode.DEADLINE_EXCEEDED):
            logger.debug("definitions for shard {}: {} {}; retrying", sid, e.code().name, e.details())
            return
        self._refused(sid, shard, f"{e.code().name}: {e.details()}")

    def _refused(self, sid: str, shard: _Shard, reason: str) -> None:
        key = f"{self._history.version}:{reason}"
        if shard.logged != key:
            shard.logged = key
            logger.error("shard {} refused definitions history version {}: {}", sid, self._history.version, reason)
