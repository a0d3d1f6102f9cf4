"""The local launcher: `python -m deploy.local` runs stubs, shards and router on one machine (see cluster.toml)."""
