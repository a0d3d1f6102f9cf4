"""The web dashboard the router serves on its own port: the page and its JSON API (app), sign-in sessions (auth), the
small HTTP server and client under both (http), and the shards' /metrics read and summed (shard_stats).

May import: shard_router.relay, shard_router.ring, shard_router.config, shard_router.metrics, common, protos.
"""
