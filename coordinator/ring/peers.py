"""Asking another shard which ring history it holds (ring.v1.RingService/GetRing), as coordinator.ring.ownership does
when its own history may be behind theirs: a journal restored from a replica, or a shard's first history.

One short-lived channel per question: these are rare (a restore, a shard's first ring), never on the hot path.
"""

from __future__ import annotations

from typing import Protocol

import grpc

from common.ring import EpochHistory, history_from_message
from common.tls import ClientTls
from protos.ring.v1 import ring_pb2, ring_pb2_grpc

PEER_TIMEOUT_S = 2.0
"""Bound on one GetRing to a peer; a peer that does not answer in time is asked again later (or skipped)."""


class PeerUnanswered(Exception):
    """The peer could not be asked, or answered with something that is not a history; the message says which."""


class PeerRings(Protocol):
    async def get(self, address: str) -> EpochHistory:
        """The history the shard at address holds; raises PeerUnanswered."""
        ...


class GrpcPeerRings:
    def __init__(self, tls: ClientTls) -> None:
        self._tls = tls

    async def get(self, address: str) -> EpochHistory:
        async with self._tls.channel(address) as channel:
            try:
                reply = await ring_pb2_grpc.RingServiceStub(channel).GetRing(
                    ring_pb2.GetRingRequest(), timeout=PEER_TIMEOUT_S
                )
            except grpc.aio.AioRpcError as e:
                raise PeerUnanswered(f"{address}: {e.code().name} {e.details()}") from None
        try:
            return history_from_message(reply.history)
        except ValueError as e:  # EpochError
            raise PeerUnanswered(f"{address} sent a malformed ring history: {e}") from None
