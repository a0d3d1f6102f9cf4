"""One saga coordinator shard: a durable saga engine over a WAL-mode SQLite journal, served over gRPC."""

from coordinator.app import ShardApp
from coordinator.clock import Clock, SystemClock
from coordinator.config import ConfigError, Limits, RetryPolicy, Services, ShardConfig, load
from coordinator.saga.model import TRANSITIONS, Action, SagaState, StepStatus, idempotency_key

__all__ = [
    "TRANSITIONS",
    "Action",
    "Clock",
    "ConfigError",
    "Limits",
    "RetryPolicy",
    "SagaState",
    "Services",
    "ShardApp",
    "ShardConfig",
    "StepStatus",
    "SystemClock",
    "idempotency_key",
    "load",
]
