"""What the dashboard's Journals table reads from a shard's /metrics: its journal, and its replica when Litestream
replicates it."""

from __future__ import annotations

from common.scrape import journal_figures
from shard_router.dashboard.shard_stats import parse

PAGE = """\
# HELP saga_journal_wal_bytes Size of the -wal file
saga_journal_wal_bytes 4096.0
saga_journal_rows{table="sagas"} 12.0
saga_replica_up 1.0
saga_replica_last_sync_age_seconds 0.4
saga_replica_lagging 0.0
saga_replica_txid 77.0
"""


def test_the_journal_row_carries_the_replica_state() -> None:
    journal = journal_figures(parse(PAGE))
    assert journal == {
        "wal_bytes": 4096.0,
        "rows.sagas": 12.0,
        "replica_up": 1.0,
        "replica_sync_age_s": 0.4,
        "replica_lagging": 0.0,
    }


def test_a_shard_without_a_replica_has_no_replica_fields() -> None:
    assert "replica_up" not in journal_figures(parse("saga_journal_wal_bytes 1.0\n"))
