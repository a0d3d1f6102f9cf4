"""The definition tools that need the coordinator itself: `saga-defs plan` and `saga-defs verify` run a definition
through the real Shard and Engine, in process, against fake services generated from its descriptors, in virtual time
(docs/definitions.md, "Plan and verify"). `check` and `schema` stay in common.definitions, which cannot import the
coordinator; coordinator.tools.cli adds these two to its parser.

May import: every other part of the coordinator (it sits above the shard), common, protos.
"""

from coordinator.tools.sandbox import Ran, Sandbox, SandboxError
from coordinator.tools.services import CallRecord, Effect, FakeServices, Outcome, Tombstone

__all__ = ["CallRecord", "Effect", "FakeServices", "Outcome", "Ran", "Sandbox", "SandboxError", "Tombstone"]
