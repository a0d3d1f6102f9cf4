"""Semantic differences between two checked definitions (`saga-defs diff`, docs/definitions.md "Tooling").

Steps are matched by id (ids are stable: they are in idempotency keys), so a moved step is a reorder, not a removal
and an addition. Policies are compared as each step gets them (its own laid over the file's `defaults`), key by key,
so a change of `defaults` shows on every step it reaches. Each change says what it means for new sagas; sagas that
already started never see it: every saga is pinned to the hash of the definition it started on.

Where a change is, is written like a JSON Pointer with steps named by id: `/steps/award_points/call/request/points`.
"""

from __future__ import annotations

import enum
import json
from collections.abc import Iterator, Mapping
from dataclasses import dataclass
from typing import Any

from common.definitions.model import Call, Definition, Kind, Policy, Step
from common.definitions.problems import pointer

ABSENT: Any = None
"""old of an added thing, new of a removed one."""


class Op(enum.StrEnum):
    ADDED = "added"
    REMOVED = "removed"
    CHANGED = "changed"


@dataclass(frozen=True, slots=True)
class Change:
    where: str
    op: Op
    old: Any
    new: Any
    for_new_sagas: str
    """What the change means for sagas started on B (one sentence, no full stop); "" when it means nothing to them
    (a description, or a name: another type's sagas are not this type's new sagas)."""

    def __str__(self) -> str:
        if self.op is Op.ADDED:
            return f"added   {self.where}: {_show(self.new)}"
        if self.op is Op.REMOVED:
            return f"removed {self.where}: {_show(self.old)}"
        return f"changed {self.where}: {_show(self.old)} -> {_show(self.new)}"

    def as_dict(self) -> dict[str, Any]:
        return {
            "where": self.where,
            "op": self.op.value,
            "old": self.old,
            "new": self.new,
            "for_new_sagas": self.for_new_sagas,
        }


def _show(value: Any) -> str:
    return json.dumps(value, sort_keys=True)


@dataclass(frozen=True, slots=True)
class Diff:
    a: Definition
    b: Definition
    changes: tuple[Change, ...]

    @property
    def same(self) -> bool:
        return self.a.hash == self.b.hash

    @property
    def in_flight(self) -> str:
        """Whether sagas started on A finish while B is the alias's target: always, and why."""
        a, b = self.a, self.b
        pinned = (
            f"every saga is pinned to the hash of the definition it started on, so sagas started on {a.name} "
            f"version {a.version} ({a.hash}) finish on it, with its steps, kinds and policies"
        )
        if a.name != b.name:
            return (
                f"different saga types ({a.name}, {b.name}): committing B moves the alias {b.name}, not {a.name}; "
                + pinned
            )
        return f"sagas started on A can finish while B is the alias {b.name}'s target: " + pinned

    @property
    def new_sagas(self) -> list[str]:
        """What changes for sagas started once B is the alias's target, without repeats."""
        return list(dict.fromkeys(c.for_new_sagas for c in self.changes if c.for_new_sagas))

    def as_dict(self) -> dict[str, Any]:
        return {
            "a": {"name": self.a.name, "version": self.a.version, "hash": self.a.hash},
            "b": {"name": self.b.name, "version": self.b.version, "hash": self.b.hash},
            "same": self.same,
            "changes": [c.as_dict() for c in self.changes],
            "in_flight": self.in_flight,
            "new_sagas": self.new_sagas,
        }

    def lines(self) -> list[str]:
        if self.same:
            return [f"same definition: {self.a.name} version {self.a.version} hash {self.a.hash}"]
        out = [str(c) for c in self.changes]
        if not self.changes:
            # Same documents, different hashes: a message type the definition uses changed (identity.md).
            out.append("the documents are the same; a message type they use differs (the hash covers its fields)")
        out.append(f"in-flight: {self.in_flight}")
        if self.new_sagas:
            out.append("new sagas:")
            out += [f"  - {line}" for line in self.new_sagas]
        return out


def _flatten(value: Any, at: tuple[str | int, ...] = ()) -> Iterator[tuple[str, Any]]:
    """(JSON Pointer, leaf value) of a request mapping: tables and lists are walked, anything else is a leaf."""
    if isinstance(value, Mapping) and value:
        for k in sorted(value):
            yield from _flatten(value[k], (*at, k))
    elif isinstance(value, list) and value:
        for i, item in enumerate(value):
            yield from _flatten(item, (*at, i))
    else:
        yield pointer(*at), value


def _compare(where: str, old: Mapping[str, Any], new: Mapping[str, Any], meaning: str) -> Iterator[Change]:
    """Key by key (old and new: pointer -> value), every change carrying the same meaning for new sagas."""
    for key in sorted(old.keys() | new.keys()):
        if key not in new:
            yield Change(where + key, Op.REMOVED, old[key], ABSENT, meaning)
        elif key not in old:
            yield Change(where + key, Op.ADDED, ABSENT, new[key], meaning)
        elif old[key] != new[key]:
            yield Change(where + key, Op.CHANGED, old[key], new[key], meaning)


def _request(where: str, old: Call, new: Call, meaning: str) -> Iterator[Change]:
    yield from _compare(f"{where}/request", dict(_flatten(old.mapping)), dict(_flatten(new.mapping)), meaning)


def _policy_table(policy: Policy) -> dict[str, Any]:
    table: dict[str, Any] = {}
    for name in ("forward", "compensate", "operations"):
        for key, value in getattr(policy, name).items():
            table[pointer(name, key)] = value
    for cls, codes in policy.codes.items():
        table[pointer("codes", cls)] = sorted(codes)
    return table


_KIND_MEANING = {
    Kind.COMPENSABLE: "is undone by its compensation when a later step fails",
    Kind.PIVOT: "is the point of no return: once it succeeded the saga only goes forward",
    Kind.RETRIABLE: "is never compensated: retried by its policy, then parked for an operator",
}


def _step(a: Step, b: Step) -> Iterator[Change]:
    at = f"/steps/{b.id}"
    if a.kind is not b.kind:
        yield Change(
            f"{at}/kind", Op.CHANGED, a.kind.value, b.kind.value, f"in new sagas {b.id} {_KIND_MEANING[b.kind]}"
        )
    if a.endpoint != b.endpoint:
        yield Change(
            f"{at}/service", Op.CHANGED, a.endpoint, b.endpoint, f"new sagas call {b.id} at the address {b.endpoint}"
        )
    if a.call.method != b.call.method:
        yield Change(
            f"{at}/call/method", Op.CHANGED, a.call.method, b.call.method, f"new sagas call {b.call.method} for {b.id}"
        )
    yield from _request(f"{at}/call", a.call, b.call, f"new sagas send another request for {b.id}")
    ca, cb = a.compensation, b.compensation
    if ca is None and cb is not None:
        yield Change(f"{at}/compensation", Op.ADDED, ABSENT, cb.method, f"new sagas undo {b.id} with {cb.method}")
    elif ca is not None and cb is None:
        yield Change(f"{at}/compensation", Op.REMOVED, ca.method, ABSENT, f"new sagas never undo {b.id}")
    elif ca is not None and cb is not None:
        if ca.method != cb.method:
            yield Change(
                f"{at}/compensation/method", Op.CHANGED, ca.method, cb.method, f"new sagas undo {b.id} with {cb.method}"
            )
        yield from _request(f"{at}/compensation", ca, cb, f"new sagas send another compensation request for {b.id}")
    yield from _compare(
        f"{at}/policy", _policy_table(a.policy), _policy_table(b.policy), f"new sagas retry {b.id} by another policy"
    )


def _summary(s: Step) -> dict[str, Any]:
    return {
        "number": s.number,
        "kind": s.kind.value,
        "method": s.call.method,
        "compensation": s.compensation.method if s.compensation else None,
    }


def diff(a: Definition, b: Definition) -> Diff:
    """What B changes from A, in a stable order: labels, input, TTL, steps removed, added, reordered, each kept step."""
    changes: list[Change] = []
    if a.hash == b.hash:
        return Diff(a, b, ())
    if a.name != b.name:
        changes.append(Change("/name", Op.CHANGED, a.name, b.name, ""))
    if a.version != b.version:
        changes.append(Change("/version", Op.CHANGED, a.version, b.version, f"new sagas report version {b.version}"))
    if a.description != b.description:
        changes.append(Change("/description", Op.CHANGED, a.description, b.description, ""))
    a_input, b_input = a.input_type.DESCRIPTOR.full_name, b.input_type.DESCRIPTOR.full_name
    if a_input != b_input:
        changes.append(Change("/input/type", Op.CHANGED, a_input, b_input, f"new sagas start with a {b_input}"))
    if a.key_field != b.key_field:
        changes.append(
            Change("/input/key", Op.CHANGED, a.key_field, b.key_field, f"new sagas are keyed by {b.key_field}")
        )
    for name, old, new in (("default", a.ttl_default_ms, b.ttl_default_ms), ("max", a.ttl_max_ms, b.ttl_max_ms)):
        if old != new:
            op = Op.ADDED if old is None else Op.REMOVED if new is None else Op.CHANGED
            shown = "the shard's" if new is None else f"{new} ms"
            changes.append(Change(f"/ttl_ms/{name}", op, old, new, f"new sagas get {shown} as the {name} TTL"))

    a_ids, b_ids = [s.id for s in a.steps], [s.id for s in b.steps]
    for s in a.steps:
        if s.id not in b_ids:
            changes.append(Change(f"/steps/{s.id}", Op.REMOVED, _summary(s), ABSENT, f"new sagas skip {s.id}"))
    for s in b.steps:
        if s.id not in a_ids:
            changes.append(
                Change(f"/steps/{s.id}", Op.ADDED, ABSENT, _summary(s), f"new sagas also run {s.id} ({s.call.method})")
            )
    kept_a = [i for i in a_ids if i in b_ids]
    kept_b = [i for i in b_ids if i in a_ids]
    if kept_a != kept_b:
        changes.append(
            Change("/steps", Op.CHANGED, kept_a, kept_b, "new sagas run the steps in the order " + ", ".join(b_ids))
        )
    for step_id in kept_b:
        was, now = a.by_id(step_id), b.by_id(step_id)
        assert was is not None and now is not None
        changes += _step(was, now)
    return Diff(a, b, tuple(changes))
