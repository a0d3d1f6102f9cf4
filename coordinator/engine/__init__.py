"""Driving sagas: the engine (write-ahead, retries, compensation, deadlines), the one path by which a saga changes state
(transitions: the guarded journal records of a move), the calls to the services (caller), the poller of long-running
operations, and the operators' dry runs (preview), which follow the engine's own rules.

May import: coordinator.saga, coordinator.journal, coordinator.config, coordinator.metrics, coordinator.clock,
coordinator.logs, coordinator.crashpoints, common, protos. Imported by coordinator.shard.
"""

from coordinator.engine.caller import Caller, GrpcCaller
from coordinator.engine.engine import Engine, SagaRun
from coordinator.engine.poller import Poller

__all__ = ["Caller", "Engine", "GrpcCaller", "Poller", "SagaRun"]
