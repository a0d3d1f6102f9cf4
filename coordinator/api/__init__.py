"""The shard's gRPC face: the saga.v1 servicers (server) and the conversions between records and saga.v1 messages
(convert).

May import: coordinator.shard and everything below it, common, protos. Imported by coordinator.app.
"""

from coordinator.api.server import build_server

__all__ = ["build_server"]
