"""The policies of one step of one definition: the step's own (its definition's `policy:`, laid over its `defaults:`),
laid over the shard's configuration ([forward], [compensate], [operations], [operations.steps.<step id>]). Built once
per (definition, step) and kept: the engine reads them on every attempt."""

from __future__ import annotations

import dataclasses
from collections.abc import Mapping
from dataclasses import dataclass

import grpc

from common.definitions.model import Definition
from common.definitions.model import Step as StepDef
from coordinator.config import ConfigError, OperationPolicy, RetryPolicy, ShardConfig
from coordinator.saga.errors import CallClass, rejected_codes, step_classes


@dataclass(frozen=True, slots=True)
class StepPolicies:
    forward: RetryPolicy
    compensate: RetryPolicy
    operations: OperationPolicy
    classes: Mapping[grpc.StatusCode, CallClass] | None
    """The step's classification of status codes; None: the default table (coordinator.saga.errors)."""
    rejected: frozenset[str] | None
    """Names of the codes that mean "refused, nothing applied" for this step; None: the default table's."""


class Policies:
    """Every step's policies, per definition, under one shard configuration."""

    def __init__(self, cfg: ShardConfig) -> None:
        self._cfg = cfg
        self._built: dict[tuple[str, int], StepPolicies] = {}

    def of(self, flow: Definition, step: StepDef) -> StepPolicies:
        found = self._built.get((flow.hash, step.number))
        if found is None:
            found = self._built[(flow.hash, step.number)] = self._build(flow, step)
        return found

    def check(self, flow: Definition) -> None:
        """Builds every step's policies now: ConfigError naming the step if one is out of range."""
        for step in flow.steps:
            self.of(flow, step)

    def _build(self, flow: Definition, step: StepDef) -> StepPolicies:
        cfg = self._cfg
        where = f"definition {flow.name} ({flow.hash[:12]}) step {step.id}"
        try:
            forward = dataclasses.replace(cfg.forward, **step.policy.forward)
            compensate = dataclasses.replace(cfg.compensate, **step.policy.compensate)
            operations = dataclasses.replace(cfg.operation_policy(step.id), **step.policy.operations)
        except TypeError as e:
            raise ConfigError(f"{where}: {e}") from e
        forward.validate(f"{where} forward")
        compensate.validate(f"{where} compensate")
        operations.validate(f"{where} operations")
        classes = step_classes(step.policy.codes)
        return StepPolicies(forward, compensate, operations, classes, rejected_codes(classes))
