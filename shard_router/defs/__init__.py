"""Saga definitions as the router keeps them: the committed history beside the epochs file (history), the operator's
`saga-router defs` commands (cli), and showing the history to every shard (push).

May import: shard_router.ring, shard_router.config, shard_router.channels, shard_router.metrics, common, protos.
"""
