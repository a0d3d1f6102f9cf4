"""Keeping a shard's journal healthy over time: retention and upkeep (retention, and its command retention_cli), the
replica's watch (replication) and rebuilding a journal from its replica (restore).

May import: coordinator.journal, coordinator.saga, coordinator.security, coordinator.config, coordinator.metrics,
common. Imported by coordinator.shard, coordinator.app and coordinator.__main__.
"""
