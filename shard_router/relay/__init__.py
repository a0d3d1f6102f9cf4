"""Relaying calls to the shards: one call to the shard that owns the order (routing, with the probes of earlier
owners), list calls fanned out and merged (fanout), the bytes passed on with the caller's principal and the ring epoch
(forwarding), over one channel per shard (channels).

May import: shard_router.ring, shard_router.config, shard_router.errors, shard_router.metrics, common, protos.
"""
