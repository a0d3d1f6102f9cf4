"""Saga definitions as data (docs/definitions.md): a file checked at load with every problem reported at once, and
compiled into plain objects the coordinator runs.

    definition = load("flow.yaml")                   # DefinitionError with every problem, else a Definition
    definition, problems = check.check(document)     # the same from parsed data

(`check` here is the module: its function of the same name is not re-exported, so `from common.definitions import
check` always means the module.)

`saga-defs` (common.definitions.cli) is the command line over the same check.
"""

from common.definitions.check import from_document, identity, load, order_flow, parse, schema, shipped
from common.definitions.model import Action, Call, Definition, Kind, Policy, Step, Values, idempotency_key
from common.definitions.problems import CODES, DefinitionError, Problem

__all__ = [
    "CODES",
    "Action",
    "Call",
    "Definition",
    "DefinitionError",
    "Kind",
    "Policy",
    "Problem",
    "Step",
    "Values",
    "from_document",
    "idempotency_key",
    "identity",
    "load",
    "order_flow",
    "parse",
    "schema",
    "shipped",
]
