"""Reading another process's Prometheus /metrics: a bounded GET over plain HTTP (get_text) and a line-level parser
for the few series a reader keeps (parse). The router's dashboard and `sagactl journals` read the shards' pages this
way; JOURNAL and journal_figures() are the journal and replica figures both show.
"""

from __future__ import annotations

import asyncio
import re
from collections.abc import Mapping

MAX_SCRAPE_BYTES = 8 * 1024 * 1024
"""The largest /metrics page read; a larger one is refused (OSError)."""

Key = tuple[str, tuple[tuple[str, str], ...]]
"""(sample name, sorted labels)."""

JOURNAL = frozenset(
    {
        "saga_journal_file_bytes",
        "saga_journal_wal_bytes",
        "saga_journal_rows",
        "saga_journal_oldest_row_age_seconds",
        "saga_replica_up",
        "saga_replica_last_sync_age_seconds",
        "saga_replica_lagging",
    }
)
"""Per shard, never summed: each shard's own journal (its size, WAL, rows and oldest row per table) and its replica
(whether Litestream replicates it, its last sync, whether it lags)."""

_LABEL = re.compile(r'([a-zA-Z_][a-zA-Z0-9_]*)="((?:[^"\\]|\\.)*)"')


async def get_text(address: str, path: str, timeout_s: float) -> str:
    """GET http://address/path; its body as text. Raises OSError (or TimeoutError) if it cannot, with the reason."""

    async def fetch() -> str:
        host, _, port = address.rpartition(":")
        reader, writer = await asyncio.open_connection(host, int(port))
        try:
            writer.write(f"GET {path} HTTP/1.0\r\nHost: {address}\r\nAccept: text/plain\r\n\r\n".encode())
            await writer.drain()
            data = await reader.read(MAX_SCRAPE_BYTES + 1)
            while len(data) <= MAX_SCRAPE_BYTES:
                more = await reader.read(MAX_SCRAPE_BYTES + 1 - len(data))
                if not more:
                    break
                data += more
        finally:
            writer.close()
        if len(data) > MAX_SCRAPE_BYTES:
            raise OSError(f"{address}{path}: response larger than {MAX_SCRAPE_BYTES} bytes")
        head, _, body = data.partition(b"\r\n\r\n")
        status = head.split(b"\r\n", 1)[0].split(b" ")
        if len(status) < 2 or status[1] != b"200":
            raise OSError(f"{address}{path}: HTTP {status[1:2]!r}")
        return body.decode("utf-8", errors="replace")

    return await asyncio.wait_for(fetch(), timeout_s)


def parse(text: str, names: frozenset[str], prefixes: tuple[str, ...] | None = None) -> dict[Key, float]:
    """The samples of series `names` in one /metrics text (Prometheus text format 0.0.4); `prefixes`: tuple(names),
    computed once by a caller that parses often.

    A line-level parser for the few series we keep: prometheus_client's full parser took ~14 ms for one shard's page,
    and this runs on the router's event loop, between relayed calls; this takes well under a millisecond."""
    prefixes = prefixes or tuple(names)
    out: dict[Key, float] = {}
    for line in text.splitlines():
        if not line.startswith(prefixes):
            continue
        brace = line.find("{")
        if brace == -1:
            name, _, rest = line.partition(" ")
            labels: tuple[tuple[str, str], ...] = ()
        else:
            name = line[:brace]
            close = line.rfind("}")
            if close == -1:
                continue
            labels = tuple(sorted((k, _unescape(v)) for k, v in _LABEL.findall(line[brace + 1 : close])))
            rest = line[close + 1 :]
        if name not in names:
            continue
        try:
            out[(name, labels)] = float(rest.split()[0])
        except (ValueError, IndexError):
            continue
    return out


def journal_figures(values: Mapping[Key, float]) -> dict[str, float]:
    """One shard's journal and replica figures from its parsed /metrics (the dashboard's Journals table, and
    `sagactl journals`)."""
    short = {
        "saga_journal_file_bytes": "file_bytes",
        "saga_journal_wal_bytes": "wal_bytes",
        "saga_journal_rows": "rows",
        "saga_journal_oldest_row_age_seconds": "oldest_age_s",
        "saga_replica_up": "replica_up",
        "saga_replica_last_sync_age_seconds": "replica_sync_age_s",
        "saga_replica_lagging": "replica_lagging",
    }
    out: dict[str, float] = {}
    for (name, labels), value in values.items():
        if name in short:
            table = dict(labels).get("table")
            out[f"{short[name]}.{table}" if table else short[name]] = value
    return out


def _unescape(value: str) -> str:
    return value.replace("\\n", "\n").replace('\\"', '"').replace("\\\\", "\\") if "\\" in value else value
