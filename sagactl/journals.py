"""`sagactl journals`: each shard's journal as its /metrics reports it (file, WAL, rows, oldest saga, replica).

The figures live on the shards, not behind the router's gRPC API: sagactl reads each shard's Prometheus /metrics (plain
HTTP, as Prometheus and the router's dashboard do), named by --metrics or by the router's shards file (each shard's
`metrics` address, or the [shard_set] metrics template). In Kubernetes, reach them with `kubectl port-forward`.
"""

from __future__ import annotations

import argparse
import asyncio
from typing import Any

from common.scrape import JOURNAL, get_text, journal_figures, parse
from shard_router import ConfigError, load

from . import render
from .client import EXIT_OK, EXIT_UNREACHABLE, Client, UsageError

HEADERS = ["shard", "file", "wal", "sagas", "events", "dedup", "oldest saga", "replica"]


def _bytes(n: float | None) -> str:
    if n is None:
        return "-"
    for unit in ("B", "KB", "MB", "GB"):
        if n < 1024 or unit == "GB":
            return f"{n:.0f}{unit}" if unit == "B" else f"{n:.1f}{unit}"
        n /= 1024
    return "-"


def _count(n: float | None) -> str:
    return "-" if n is None else f"{int(n):,}"


def _replica(j: dict[str, float]) -> str:
    if "replica_up" not in j:
        return "not replicated"
    if j.get("replica_lagging"):
        return (
            f"LAGGING ({render.duration(j.get('replica_sync_age_s'))} since last sync)" if j["replica_up"] else "DOWN"
        )
    return f"synced {render.duration(j.get('replica_sync_age_s'))} ago"


def targets(ns: argparse.Namespace) -> dict[str, str]:
    """Shard id (or address) -> its metrics host:port."""
    if ns.metrics:
        return {address: address for address in ns.metrics}
    if not ns.shards_file:
        raise UsageError("journals: give --metrics HOST:PORT (repeatable) or --shards-file (the router's shards.toml)")
    try:
        ring = load(ns.shards_file, env={}).ring
    except ConfigError as e:
        raise UsageError(f"--shards-file: {e}") from None
    found = ring.metrics_addresses
    if not found:
        raise UsageError(f"--shards-file: {ns.shards_file} names no shard's metrics address")
    return dict(found)


async def _scrape(where: dict[str, str], timeout_s: float) -> dict[str, dict[str, float] | str]:
    async def one(address: str) -> dict[str, float] | str:
        try:
            return journal_figures(parse(await get_text(address, "/metrics", timeout_s), JOURNAL))
        except (OSError, TimeoutError, ValueError) as e:
            return f"unreachable ({e or type(e).__name__})"

    answers = await asyncio.gather(*(one(a) for a in where.values()))
    return dict(zip(where, answers, strict=True))


def run(c: Client, ns: argparse.Namespace) -> int:
    figures = asyncio.run(_scrape(targets(ns), ns.timeout or 5.0))
    if ns.json:
        render.print_json(figures)
    else:
        rows: list[list[Any]] = []
        for shard, j in figures.items():
            if isinstance(j, str):
                rows.append([shard, j, "", "", "", "", "", ""])
                continue
            rows.append(
                [
                    shard,
                    _bytes(j.get("file_bytes")),
                    _bytes(j.get("wal_bytes")),
                    _count(j.get("rows.sagas")),
                    _count(j.get("rows.saga_events")),
                    _count(j.get("rows.order_dedup")),
                    render.duration(j.get("oldest_age_s.sagas")) if j.get("oldest_age_s.sagas") else "-",
                    _replica(j),
                ]
            )
        render.table(rows, HEADERS)
    return EXIT_UNREACHABLE if any(isinstance(j, str) for j in figures.values()) else EXIT_OK
