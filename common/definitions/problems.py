"""What `saga-defs check` (and the shard and router at start) report about a definition: every problem at once, each
with a stable code, a JSON Pointer into the file and a hint."""

from __future__ import annotations

from dataclasses import dataclass


@dataclass(frozen=True, slots=True)
class Problem:
    code: str
    """Stable: tools and tests match on it (docs/definitions.md lists them all)."""
    path: str
    """JSON Pointer into the document, e.g. "/steps/2/call/request/items"; "" for the whole file."""
    message: str
    hint: str = ""

    def __str__(self) -> str:
        where = self.path or "/"
        hint = f" (hint: {self.hint})" if self.hint else ""
        return f"{where}: {self.code}: {self.message}{hint}"

    def as_dict(self) -> dict[str, str]:
        return {"code": self.code, "path": self.path, "message": self.message, "hint": self.hint}


class DefinitionError(ValueError):
    """A definition that does not check: carries every problem found."""

    def __init__(self, source: str, problems: list[Problem]) -> None:
        self.source = source
        self.problems = problems
        lines = "\n  ".join(str(p) for p in problems)
        super().__init__(f"{source}: {len(problems)} problem(s):\n  {lines}")


def pointer(*parts: str | int) -> str:
    """A JSON Pointer (RFC 6901) from its parts."""
    return "".join("/" + str(p).replace("~", "~0").replace("/", "~1") for p in parts)


CODES: dict[str, tuple[str, str]] = {
    # code: (what it means, how to fix it); docs/definitions.md has the same table, tests/definitions one file each.
    "file.unreadable": ("the file cannot be read (missing, a directory, not UTF-8)", "check the path"),
    "file.syntax": ("the file is neither YAML nor JSON", "fix the syntax at the line and column given"),
    "schema.*": (
        "the document breaks the JSON Schema; the suffix is the rule (schema.required, schema.additionalProperties, "
        "schema.type, schema.pattern, schema.enum, schema.const, schema.oneOf, schema.minimum, ...)",
        "see the message; an editor pointed at the schema underlines these as you type",
    ),
    "step.duplicate-id": ("two steps have the same id", "give every step its own id (ids are in idempotency keys)"),
    "pivot.more-than-one": ("more than one step is kind pivot", "keep one pivot; the others compensable or retriable"),
    "pivot.not-retriable-after": ("a step after the pivot is not retriable", "make it kind retriable"),
    "retriable.before-pivot": ("a retriable step comes before the pivot", "make it compensable, or move it after"),
    "retriable.no-pivot": ("a retriable step in a definition without a pivot", "mark the step before it as pivot"),
    "compensation.missing": ("a compensable step has no compensation", "add one, or make the step pivot/retriable"),
    "compensation.never-runs": ("a retriable step has a compensation", "remove it: retriable steps are never undone"),
    "compensation.other-service": (
        "the compensation's method is on another service than the call's",
        "use a method of the step's service (it shares the address and GetOperation)",
    ),
    "policy.code-conflict": ("a status code is in two classes of one codes table", "classify each code once"),
    "policy.inconsistent": (
        "a lower bound above its upper bound (initial_backoff_ms > max_backoff_ms, poll_min_ms > poll_max_ms)",
        "order the two settings",
    ),
    "ttl.default-above-max": ("ttl_ms.default is above ttl_ms.max", "lower the default or raise the max"),
    "ttl.retries-exceed": (
        "the steps up to the pivot may retry longer than the longest TTL",
        "shorten their forward retry windows, or raise ttl_ms.max",
    ),
    "method.unknown-service": ("no such gRPC service in the catalog", "check the package; --descriptor-set/--reflect"),
    "method.unknown-method": ("the service has no such method", "the hint lists its methods"),
    "method.streaming": ("the method streams", "steps call unary methods"),
    "input.unknown-type": ("no such message type in the catalog", "a full name, e.g. saga.v1.PlaceOrderRequest"),
    "input.key-not-string": ("the key field is not a single string", "name a string field of the input"),
    "path.syntax": ("not a path: an empty part, or a step path without .output", "e.g. $steps.<id>.output.<field>"),
    "path.unknown-root": ("a path starts with an unknown $root", "$input, $steps, $saga or $forward_key"),
    "path.no-such-field": ("a path names a field its message does not have", "the hint lists the fields"),
    "path.not-a-message": ("a path goes on through a scalar or repeated field", "map the field as a whole"),
    "path.map-field": ("a path or request field is a protobuf map", "map fields are not supported"),
    "path.unknown-step": ("$steps.<id> names no step", "the hint lists the step ids"),
    "path.later-step": ("a forward request reads this step's or a later step's output", "read earlier steps only"),
    "path.compensation-scope": (
        "a compensation reads another step's output",
        "a compensation reads the input, the saga's id and key, $forward_key and its own step's output",
    ),
    "path.forward-key-scope": ("$forward_key outside a compensation", "only a compensation has a forward key"),
    "request.no-such-field": ("the request message has no such field", "the hint lists the fields"),
    "request.type-mismatch": ("the path's type cannot fill the field", "see the type rules"),
    "request.literal-type": ("a literal (or a table) does not fit the field's type", "see the type rules"),
    "request.repeated-mismatch": (
        "a repeated value for a single field, or a single one for a repeated field",
        "a repeated field takes a repeated path or a list",
    ),
}
"""Every code a check can report."""
