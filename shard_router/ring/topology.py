"""An immutable snapshot of where orders live: the ring history in use, and every shard's address.

A call takes the snapshot once and uses it to the end, so installing a new one (a reload, or a newer ring learnt from a
shard) never changes the routing of a call already in flight. Placement comes from the history's current epoch, never
from the config file directly: a shard list edited without `saga-router epochs commit` routes nothing differently.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass, field
from types import MappingProxyType

from common.ring import EpochHistory, HashRing
from shard_router.config import RingSpec


@dataclass(frozen=True)
class Topology:
    epoch: int
    """Number of the current ring: every routed call carries it (x-saga-ring-epoch)."""
    ring: HashRing
    """The current ring: new orders go to its owner."""
    older: tuple[tuple[int, HashRing], ...]
    """Earlier rings still retained, newest first."""
    addresses: Mapping[str, str]
    """Every known shard id to its address: the config file first, else the address an epoch recorded."""
    shard_ids: tuple[str, ...]
    """Every shard that may hold sagas (ring, draining, and only-in-an-earlier-epoch shards): list calls ask all."""
    history: EpochHistory = field(default_factory=EpochHistory)
    """The history this snapshot routes by (what the router shows shards)."""
    metrics: Mapping[str, str] = field(default_factory=lambda: MappingProxyType({}))
    """Shard id to the host:port of its /metrics, for shards whose config entry names one (the dashboard reads them)."""

    @classmethod
    def build(cls, ring: RingSpec, history: EpochHistory) -> Topology:
        current = history.current
        if current is None:
            raise ValueError("a topology needs at least one epoch")
        addresses: dict[str, str] = {}
        for epoch in history.epochs:
            addresses.update(epoch.shards)
        addresses.update(ring.addresses)  # the file wins: a shard may have moved since an epoch recorded it
        config_ids = [s.id for s in ring.shards]
        others = sorted(set(addresses) - set(config_ids))
        return cls(
            epoch=current.number,
            ring=current.ring,
            older=tuple((e.number, e.ring) for e in history.older),
            addresses=MappingProxyType(addresses),
            shard_ids=(*config_ids, *others),
            history=history,
            metrics=MappingProxyType(ring.metrics_addresses),
        )

    def owner(self, order_id: str) -> str:
        """The shard the current ring assigns order_id to."""
        return self.ring.owner(order_id)

    def earlier_owners(self, order_id: str) -> tuple[tuple[str, int], ...]:
        """(shard id, epoch) of each distinct shard an earlier ring placed order_id on, other than the current owner,
        newest epoch first. Empty for most orders, and always when there is no earlier ring."""
        if not self.older:
            return ()
        current = self.ring.owner(order_id)
        seen = {current}
        found: list[tuple[str, int]] = []
        for number, ring in self.older:
            sid = ring.owner(order_id)
            if sid not in seen:
                seen.add(sid)
                found.append((sid, number))
        return tuple(found)
