"""Which ring the router routes by: the committed history (epochs, and its command epochs_cli), kept current from the
file, the shards and the config (reload), as a snapshot calls route by (topology); the shards' health and what they
still hold (shard_health, shard_checks).

May import: shard_router.config, shard_router.errors, shard_router.metrics, common, protos.
"""
