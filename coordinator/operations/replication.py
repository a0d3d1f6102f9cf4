"""Watching the Litestream that replicates this shard's journal (deploy/README.md, "Availability and recovery").

Replication itself is Litestream's (a sidecar in Kubernetes, a process of its own under `make run`): it ships the WAL
to a replica (a file directory, S3, ...) every sync interval, and the shard copies nothing. What the shard adds is
knowing how far behind the replica is, where operators look: every replication.check_interval_s it asks Litestream's
control socket (GET /list over the unix socket) when it last synced this journal, and exports

    saga_replica_up                         1 while Litestream answers and replicates this journal
    saga_replica_last_sync_age_seconds      seconds since its last successful sync (the window a lost disk would lose)
    saga_replica_txid                       the last transaction Litestream has taken from the journal
    saga_replica_lagging                    1 once the last sync is older than replication.max_lag_s (or it is down)

and the health of the service "saga.replication" (SERVING, or NOT_SERVING while lagging): a detail for operators and
alerts, not a readiness gate (the shard still works; what a machine loss would cost grows).
"""

from __future__ import annotations

import asyncio
import datetime
import http.client
import json
import os
import socket
import time
from dataclasses import dataclass
from typing import Any

from loguru import logger
from prometheus_client import Gauge

from common.loops import run_every
from coordinator.config import Replication
from coordinator.metrics import ShardMetrics

HEALTH_SERVICE = "saga.replication"
_TIMEOUT_S = 2.0


class _UnixConnection(http.client.HTTPConnection):
    """HTTP over Litestream's control socket."""

    def __init__(self, path: str) -> None:
        super().__init__("localhost", timeout=_TIMEOUT_S)
        self._path = path

    def connect(self) -> None:
        sock = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
        sock.settimeout(_TIMEOUT_S)
        sock.connect(self._path)
        self.sock = sock


def ask(socket_path: str, path: str) -> Any:
    """GET path on the control socket, decoded JSON; OSError or ValueError if it does not answer sensibly."""
    conn = _UnixConnection(socket_path)
    try:
        conn.request("GET", path)
        reply = conn.getresponse()
        body = reply.read()
        if reply.status != 200:
            raise ValueError(f"{path}: HTTP {reply.status}: {body[:200]!r}")
        return json.loads(body)
    finally:
        conn.close()


@dataclass(frozen=True)
class ReplicaStatus:
    up: bool
    """Litestream answered and lists this journal as replicating."""
    last_sync_age_s: float | None
    """Seconds since its last successful sync; None if never (or not up)."""
    txid: int | None
    why: str = ""
    """What is wrong, when it is not up."""


def read_status(socket_path: str, journal_path: str, now: datetime.datetime) -> ReplicaStatus:
    """Blocking: run it in a thread."""
    journal = os.path.realpath(journal_path)
    try:
        listed = ask(socket_path, "/list")
        entry = next(
            (d for d in listed.get("databases", []) if os.path.realpath(str(d.get("path", ""))) == journal), None
        )
        if entry is None:
            return ReplicaStatus(False, None, None, f"Litestream does not replicate {journal}")
        age = None
        if entry.get("last_sync_at"):
            synced = datetime.datetime.fromisoformat(str(entry["last_sync_at"]).replace("Z", "+00:00"))
            age = max(0.0, (now - synced).total_seconds())
        txid = ask(socket_path, f"/txid?path={journal}").get("txid")
        up = entry.get("status") == "replicating"
        return ReplicaStatus(up, age, int(txid) if txid is not None else None, "" if up else str(entry.get("status")))
    except (OSError, ValueError, AttributeError) as e:
        return ReplicaStatus(False, None, None, f"Litestream's socket {socket_path} does not answer: {e}")


class ReplicaMonitor:
    def __init__(self, cfg: Replication, journal_path: str, metrics: ShardMetrics, on_lagging: Any) -> None:
        """on_lagging(bool): awaited whenever the replica starts or stops lagging (the health detail)."""
        self._cfg = cfg
        self._journal_path = journal_path
        r = metrics.registry
        # Registered only on a shard that has a replica: elsewhere their absence says "not replicated".
        self._up = Gauge("saga_replica_up", "Litestream replicates the journal", registry=r)
        self._sync_age = Gauge(
            "saga_replica_last_sync_age_seconds", "Seconds since the replica's last successful sync", registry=r
        )
        self._txid = Gauge("saga_replica_txid", "Last journal transaction Litestream has taken", registry=r)
        self._lagging = Gauge("saga_replica_lagging", "The replica is behind its bound", registry=r)
        self._on_lagging = on_lagging
        self.lagging: bool | None = None
        self.last: ReplicaStatus | None = None
        self._said = ""
        """What the log last said of the replica: "", "starting", "lagging" or "ok" (one line per change)."""
        self._grace_until_mono = time.monotonic() + cfg.max_lag_s
        """Until then, a replica not yet up or never synced is a start (Litestream comes up beside the shard and syncs
        within its interval), said at INFO; past it, or once it was up, lagging is a WARNING."""

    async def check_once(self) -> ReplicaStatus:
        now = datetime.datetime.now(datetime.UTC)
        status = await asyncio.to_thread(read_status, self._cfg.litestream_socket, self._journal_path, now)
        self._up.set(1 if status.up else 0)
        if status.last_sync_age_s is not None:
            self._sync_age.set(status.last_sync_age_s)
        if status.txid is not None:
            self._txid.set(status.txid)
        age = status.last_sync_age_s
        lagging = not status.up or age is None or age > self._cfg.max_lag_s
        self._lagging.set(1 if lagging else 0)
        self._say(status, lagging)
        if lagging != self.lagging:
            await self._on_lagging(lagging)
            self.lagging = lagging
        self.last = status
        return status

    def _say(self, status: ReplicaStatus, lagging: bool) -> None:
        """One log line per change of what there is to say; never fails (a None age is "never synced")."""
        age = status.last_sync_age_s
        if not lagging:
            said = "ok"
        elif self._said in ("", "starting") and time.monotonic() < self._grace_until_mono:
            said = "starting"
        else:
            said = "lagging"
        if said == self._said:
            return
        if age is None:
            why = status.why or "no successful sync yet"
        else:
            why = status.why or f"last successful sync {age:.0f} s ago (bound {self._cfg.max_lag_s:.0f} s)"
        if said == "starting":
            logger.info("journal replica not synced yet: {}", why)
        elif said == "lagging":
            logger.warning("journal replica is lagging: {}", why)
        elif self._said:
            logger.info("journal replica caught up (last sync {:.1f} s ago)", age or 0.0)
        self._said = said

    async def run(self) -> None:
        await run_every(self._cfg.check_interval_s, self.check_once, name="replica check")
