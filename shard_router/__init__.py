"""The shard router: a thin, stateless gRPC front that consistent-hashes order_id onto coordinator shards.

    config, errors, metrics, channels   the router's settings (the shards file), its errors, its metrics, one channel
                                        per shard
    ring/        which ring it routes by: the epochs file and `saga-router epochs`, live reloads, the routing snapshot,
                 the shards' health and what they still hold (hashing, epochs and fencing are common.ring)
    relay/       calls relayed as bytes to the owner (routing), list calls fanned out and merged (fanout)
    dashboard/   the web dashboard, its sign-in and the shards' /metrics summed
    server       the gRPC server that puts them together

A part imports only parts listed above it (tests/architecture). Log set-up, the /metrics server and the periodic loops
come from `common`. The public surface below is what the launcher and sagactl use: the shards file (load) and the
epochs file (epochs).
"""

from common.ring import Epoch, EpochError, EpochHistory, HashRing, stable_hash
from shard_router.config import ConfigError, RingSpec, RouterConfig, RouterSettings, ShardSpec, load
from shard_router.ring import epochs
from shard_router.ring.topology import Topology
from shard_router.server import RouterServer

__all__ = [
    "ConfigError",
    "Epoch",
    "EpochError",
    "EpochHistory",
    "HashRing",
    "RingSpec",
    "RouterConfig",
    "RouterServer",
    "RouterSettings",
    "ShardSpec",
    "Topology",
    "epochs",
    "load",
    "stable_hash",
]
