"""The shard router: a thin, stateless gRPC front that consistent-hashes order_id onto coordinator shards.

Modules, one concept each: config (the shards file), epochs (the epochs file; hashing, epochs and fencing are
common.ring, shared with the shards),
topology (one routing snapshot), channels (one channel per shard), forwarding (relaying a call as bytes), routing (the
epoch rule: which shard gets a call about an order), fanout (merged list pages, bulk retry), reload (installing rings
live), shard_checks (asking shards about their sagas before forgetting anything), server (the gRPC server), metrics
(the seam for Prometheus), epochs_cli (`saga-router epochs`). Log set-up, the /metrics server and the periodic
loops come from `common`.
"""

from common.ring import Epoch, EpochError, EpochHistory, HashRing, stable_hash

from .config import ConfigError, RingSpec, RouterConfig, RouterSettings, ShardSpec, load
from .server import RouterServer
from .topology import Topology

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
    "load",
    "stable_hash",
]
