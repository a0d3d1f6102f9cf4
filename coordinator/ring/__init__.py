"""Which orders this shard may start: the ring history routers showed it, the fencing rule (ownership), and what the
other shards hold (peers), asked before a fresh or restored shard trusts its own history.

May import: coordinator.journal, coordinator.saga, coordinator.metrics, common, protos. Imported by coordinator.shard.
"""

from coordinator.ring.ownership import Ownership, RingRefused
from coordinator.ring.peers import PeerRings

__all__ = ["Ownership", "PeerRings", "RingRefused"]
