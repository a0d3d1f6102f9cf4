"""Checks a definition and compiles it, reporting every problem at once, in three passes:

1. structure: the JSON Schema (schema.json, the one published for editors), every violation;
2. saga rules: ids unique, at most one pivot, only retriable steps after it, a compensation for every compensable
   step and none for a retriable one, worst-case forward retry time within the TTL;
3. types: every method in the catalog, every request field path and type (common.definitions.paths), the key a string
   field of the input.

A document that passes all three becomes a Definition whose identity (identity()) is the BLAKE2b of its normalised
content plus the fingerprints of every message type it uses.
"""

from __future__ import annotations

import hashlib
import json
import operator
from collections.abc import Mapping
from functools import cache
from importlib import resources
from pathlib import Path
from typing import Any

import jsonschema
import yaml
from google.protobuf import descriptor_pb2, message_factory
from google.protobuf.descriptor import Descriptor, MethodDescriptor

from common.definitions import paths
from common.definitions.catalog import Catalog, default_catalog
from common.definitions.model import Call, Definition, Kind, Policy, Step
from common.definitions.problems import DefinitionError, Problem, pointer

# The built-in table of retry settings (coordinator.config.RetryPolicy's defaults), for the TTL rule when neither the
# file nor a shard says otherwise. The shard checks again with its own configuration at load.
DEFAULT_FORWARD = {"max_attempts": 30, "attempt_timeout_ms": 3_000, "max_elapsed_ms": 10_000, "max_backoff_ms": 1_000}
DEFAULT_TTL_MAX_MS = 3_600_000
_RETRY_KEYS = ("max_attempts", "initial_backoff_ms", "max_backoff_ms", "multiplier", "attempt_timeout_ms")


@cache
def schema() -> dict[str, Any]:
    """The published JSON Schema of definition files."""
    loaded: dict[str, Any] = json.loads(resources.files(__package__).joinpath("schema.json").read_text())
    return loaded


class _Loader(yaml.SafeLoader):
    """Safe YAML without implicit timestamps: `2026-01-31` stays the string it reads as, as it would in JSON (a
    date object is no JSON value: it could be neither checked, hashed nor stored)."""


_Loader.yaml_implicit_resolvers = {
    first: [(tag, rx) for tag, rx in resolvers if tag != "tag:yaml.org,2002:timestamp"]
    for first, resolvers in yaml.SafeLoader.yaml_implicit_resolvers.items()
}


def parse(text: str, source: str = "<definition>") -> Any:
    """A definition file's text as data: YAML (JSON is YAML too). Raises DefinitionError on a syntax error."""
    try:
        return yaml.load(text, Loader=_Loader)
    except yaml.YAMLError as e:
        mark = getattr(e, "problem_mark", None)
        where = f" (line {mark.line + 1}, column {mark.column + 1})" if mark else ""
        raise DefinitionError(source, [Problem("file.syntax", "", f"not YAML or JSON{where}: {e}")]) from e


def normalise(document: Mapping[str, Any]) -> dict[str, Any]:
    """The document with defaults written out (kind, compensation), as hashed, stored and shown: two files that
    differ only in layout, key order, anchors or defaults left implicit are the same definition."""
    doc: dict[str, Any] = json.loads(json.dumps(document))
    for step in doc.get("steps", []):
        if isinstance(step, dict):
            step.setdefault("kind", Kind.COMPENSABLE.value)
            step.setdefault("compensation", "none")
    return doc


def _structure(document: Any) -> list[Problem]:
    validator = jsonschema.Draft202012Validator(schema())
    problems = []
    for error in sorted(validator.iter_errors(document), key=lambda e: list(map(str, e.absolute_path))):
        hint = ""
        if error.validator == "additionalProperties":
            hint = "known: " + ", ".join(sorted(error.schema.get("properties", {})))
        problems.append(Problem(f"schema.{error.validator}", pointer(*error.absolute_path), error.message, hint))
    return problems


def _retry(policy: Mapping[str, Any], defaults: Mapping[str, Any], key: str) -> Mapping[str, Any]:
    return {**DEFAULT_FORWARD, **defaults.get(key, {}), **policy.get(key, {})}


def merge_policy(defaults: Mapping[str, Any], own: Mapping[str, Any]) -> Policy:
    """A step's policy: its own settings laid over the file's defaults, key by key. A status code the step classifies
    leaves the class the defaults gave it."""
    classes: dict[str, str] = {}
    for table in (defaults.get("codes", {}), own.get("codes", {})):
        # A code the table names is classified by the table alone: drop it from every class it had before.
        named = {code for codes in table.values() for code in codes}
        classes = {code: cls for code, cls in classes.items() if code not in named}
        for cls, codes in table.items():
            classes.update(dict.fromkeys(codes, cls))
    by_class: dict[str, tuple[str, ...]] = {}
    for code, cls in classes.items():
        by_class[cls] = (*by_class.get(cls, ()), code)
    return Policy(
        forward={**defaults.get("forward", {}), **own.get("forward", {})},
        compensate={**defaults.get("compensate", {}), **own.get("compensate", {})},
        operations={**defaults.get("operations", {}), **own.get("operations", {})},
        codes=by_class,
    )


# Pairs of settings that must be ordered (coordinator.config's RetryPolicy and OperationPolicy validate the same).
_ORDERED = {
    "forward": ("initial_backoff_ms", "max_backoff_ms"),
    "compensate": ("initial_backoff_ms", "max_backoff_ms"),
    "operations": ("poll_min_ms", "poll_max_ms"),
}


def _policy_problems(
    policy: Mapping[str, Any], defaults: Mapping[str, Any], at: tuple[str | int, ...]
) -> list[Problem]:
    """A policy table's own problems (the file's defaults when `defaults` is empty): a status code in two classes, a
    lower bound above its upper bound once laid over the defaults."""
    problems = []
    seen: dict[str, str] = {}
    for cls in ("transient", "rejected", "unknown"):
        for n, code in enumerate(policy.get("codes", {}).get(cls, ())):
            if code in seen:
                problems.append(
                    Problem(
                        "policy.code-conflict",
                        pointer(*at, "codes", cls, n),
                        f"{code} is both {seen[code]} and {cls}",
                        "classify each status code once",
                    )
                )
            seen.setdefault(code, cls)
    for section, (low, high) in _ORDERED.items():
        if section not in policy:
            continue
        merged = {**defaults.get(section, {}), **policy[section]}
        if low in merged and high in merged and merged[low] > merged[high]:
            problems.append(
                Problem(
                    "policy.inconsistent",
                    pointer(*at, section, low if low in policy[section] else high),
                    f"{section}.{low} ({merged[low]}) is above {section}.{high} ({merged[high]})",
                    f"need {low} <= {high}",
                )
            )
    return problems


def worst_case_forward_ms(retry: Mapping[str, Any]) -> int:
    """The longest a forward step may take by its policy: its retry window, or (with none) every attempt timing out
    with the longest wait between."""
    if retry.get("max_elapsed_ms", 0) > 0:
        return int(retry["max_elapsed_ms"]) + int(retry["attempt_timeout_ms"])
    return int(retry["max_attempts"]) * (int(retry["attempt_timeout_ms"]) + int(retry.get("max_backoff_ms", 0)))


def _rules(doc: Mapping[str, Any]) -> list[Problem]:
    problems: list[Problem] = []
    steps = doc["steps"]
    seen: dict[str, int] = {}
    pivots = [i for i, s in enumerate(steps) if s["kind"] == Kind.PIVOT]
    for i, step in enumerate(steps):
        if step["id"] in seen:
            problems.append(
                Problem(
                    "step.duplicate-id",
                    pointer("steps", i, "id"),
                    f"{step['id']!r} is already the id of step {seen[step['id']] + 1}",
                )
            )
        seen.setdefault(step["id"], i)
    if len(pivots) > 1:
        for i in pivots[1:]:
            problems.append(
                Problem(
                    "pivot.more-than-one",
                    pointer("steps", i, "kind"),
                    f"a second pivot (the first is {steps[pivots[0]]['id']})",
                    "a saga has one point of no return: mark the others compensable or retriable",
                )
            )
    first_pivot = pivots[0] if pivots else len(steps)
    for i, step in enumerate(steps):
        kind = step["kind"]
        undo = step["compensation"]
        # A second pivot is reported as such (pivot.more-than-one), not again as a step that should be retriable.
        if i > first_pivot and kind == Kind.COMPENSABLE:
            problems.append(
                Problem(
                    "pivot.not-retriable-after",
                    pointer("steps", i, "kind"),
                    f"{step['id']} comes after the pivot {steps[first_pivot]['id']} but is {kind}",
                    "after the point of no return a step can only be retried: kind retriable",
                )
            )
        if kind == Kind.RETRIABLE and i < first_pivot and pivots:
            problems.append(
                Problem(
                    "retriable.before-pivot",
                    pointer("steps", i, "kind"),
                    f"{step['id']} is retriable but comes before the pivot {steps[first_pivot]['id']}",
                    "a step before the pivot may have to be undone: kind compensable",
                )
            )
        if kind == Kind.RETRIABLE and not pivots:
            problems.append(
                Problem(
                    "retriable.no-pivot",
                    pointer("steps", i, "kind"),
                    f"{step['id']} is retriable but the definition has no pivot",
                    "mark the step before the retriable ones as the pivot",
                )
            )
        if kind == Kind.COMPENSABLE and undo == "none":
            problems.append(
                Problem(
                    "compensation.missing",
                    pointer("steps", i, "compensation"),
                    f"{step['id']} is compensable and has no compensation",
                    "give it a compensation, or make it the pivot or a retriable step",
                )
            )
        if kind == Kind.RETRIABLE and undo != "none":
            problems.append(
                Problem(
                    "compensation.never-runs",
                    pointer("steps", i, "compensation"),
                    f"{step['id']} is retriable: it is never compensated",
                    "remove the compensation, or make the step compensable (before the pivot)",
                )
            )
    defaults = doc.get("defaults", {})
    problems += _policy_problems(defaults, {}, ("defaults",))
    for i, step in enumerate(steps):
        if "policy" in step:
            problems += _policy_problems(step["policy"], defaults, ("steps", i, "policy"))
    ttl = doc.get("ttl_ms", {})
    if "default" in ttl and "max" in ttl and ttl["default"] > ttl["max"]:
        problems.append(
            Problem("ttl.default-above-max", pointer("ttl_ms", "default"), "the default TTL exceeds the max")
        )
    ttl_max = ttl.get("max", DEFAULT_TTL_MAX_MS)
    worst = 0
    for step in steps[: first_pivot + 1]:
        worst += worst_case_forward_ms(_retry(step.get("policy", {}), defaults, "forward"))
    if worst > ttl_max:
        problems.append(
            Problem(
                "ttl.retries-exceed",
                pointer("ttl_ms", "max") if "max" in ttl else "",
                f"the steps up to the pivot may retry for {worst} ms, more than the longest TTL ({ttl_max} ms)",
                "shorten the steps' forward retry windows, or raise ttl_ms.max",
            )
        )
    return problems


def _drop_json_names(message: descriptor_pb2.DescriptorProto) -> None:
    """json_name is in a descriptor read from a descriptor set or reflection, not in one compiled into Python: it
    does not change the wire, so a type has one fingerprint wherever its descriptor came from."""
    for f in message.field:
        f.ClearField("json_name")
    for nested in message.nested_type:
        _drop_json_names(nested)


def _fingerprint(message: Descriptor, into: dict[str, str]) -> None:
    """BLAKE2b of the message type's descriptor (field names, numbers, types; not comments), for it and every message
    type it contains."""
    if message.full_name in into:
        return
    proto = descriptor_pb2.DescriptorProto()
    message.CopyToProto(proto)
    _drop_json_names(proto)
    into[message.full_name] = hashlib.blake2b(proto.SerializeToString(deterministic=True), digest_size=16).hexdigest()
    for f in message.fields:
        if f.message_type is not None:
            _fingerprint(f.message_type, into)
        if f.enum_type is not None and f.enum_type.full_name not in into:
            enum = descriptor_pb2.EnumDescriptorProto()
            f.enum_type.CopyToProto(enum)
            into[f.enum_type.full_name] = hashlib.blake2b(
                enum.SerializeToString(deterministic=True), digest_size=16
            ).hexdigest()


def identity(doc: Mapping[str, Any], types: list[Descriptor]) -> str:
    """The definition's hash: its normalised content and the fingerprints of the message types it uses."""
    fingerprints: dict[str, str] = {}
    for t in types:
        _fingerprint(t, fingerprints)
    canonical = json.dumps({"definition": doc, "types": fingerprints}, sort_keys=True, separators=(",", ":"))
    return hashlib.blake2b(canonical.encode(), digest_size=16).hexdigest()


def _method(catalog: Catalog, spelled: str, ptr: str) -> tuple[MethodDescriptor | None, list[Problem]]:
    service_name, _, method_name = spelled.rpartition("/")
    service = catalog.service(service_name)
    if service is None:
        return None, [
            Problem(
                "method.unknown-service",
                ptr,
                f"no service {service_name!r} is known",
                "check the package; a service outside the repo needs --descriptor-set",
            )
        ]
    method = service.methods_by_name.get(method_name)
    if method is None:
        known = ", ".join(service.methods_by_name)
        return None, [
            Problem(
                "method.unknown-method", ptr, f"{service_name} has no method {method_name!r}", f"its methods: {known}"
            )
        ]
    if method.client_streaming or method.server_streaming:
        return None, [Problem("method.streaming", ptr, f"{spelled} is a streaming method", "steps call unary methods")]
    return method, []


def _long_running(response: Descriptor) -> bool:
    f = response.fields_by_name.get("operation")
    return f is not None and f.message_type is not None and f.message_type.full_name == "shop.v1.Operation"


def _types(doc: Mapping[str, Any], catalog: Catalog) -> tuple[Definition | None, list[Problem]]:
    problems: list[Problem] = []
    input_type = catalog.message(doc["input"]["type"])
    if input_type is None:
        problems.append(
            Problem(
                "input.unknown-type", pointer("input", "type"), f"no message type {doc['input']['type']!r} is known"
            )
        )
    else:
        key_type, more = paths.resolve_input_field(input_type, doc["input"]["key"], pointer("input", "key"))
        problems += more
        if key_type is not None and (key_type.kind != "string" or key_type.repeated):
            problems.append(
                Problem(
                    "input.key-not-string",
                    pointer("input", "key"),
                    f"the key is {key_type.name}",
                    "the key is a string field",
                )
            )
    # Every step's response type first: a mapping may read a later one's only to be told it is later. A step whose
    # method did not resolve is still known (its response type None), so its id is not reported again as unknown.
    methods: list[tuple[MethodDescriptor | None, MethodDescriptor | None]] = []
    step_types: dict[str, tuple[int, Descriptor | None]] = {}
    for i, step in enumerate(doc["steps"]):
        call, more = _method(catalog, step["call"]["method"], pointer("steps", i, "call", "method"))
        problems += more
        undo = None
        if step["compensation"] != "none":
            undo, more = _method(catalog, step["compensation"]["method"], pointer("steps", i, "compensation", "method"))
            problems += more
            if (
                call is not None
                and undo is not None
                and undo.containing_service.full_name != call.containing_service.full_name
            ):
                problems.append(
                    Problem(
                        "compensation.other-service",
                        pointer("steps", i, "compensation", "method"),
                        f"the compensation is on {undo.containing_service.full_name}, "
                        f"the call on {call.containing_service.full_name}",
                        "a compensation is a method of the step's service (it shares its address and GetOperation)",
                    )
                )
        methods.append((call, undo))
        step_types.setdefault(step["id"], (i + 1, call.output_type if call is not None else None))
    if input_type is None:
        return None, problems
    built: list[tuple[Call | None, Call | None]] = []
    used: set[int] = set()
    for i, step in enumerate(doc["steps"]):
        calls: list[Call | None] = []
        for which, method in (("call", methods[i][0]), ("compensation", methods[i][1])):
            if method is None:
                calls.append(None)
                continue
            scope = paths.Scope(input_type, step_types, i + 1, compensation=which == "compensation")
            spec = step[which]
            where = pointer("steps", i, which, "request")
            build, more = paths.check_request(spec["request"], method.input_type, scope, where)
            problems += more
            used |= scope.used_outputs
            if build is None:
                calls.append(None)
                continue
            calls.append(
                Call(
                    method=spec["method"],
                    path=f"/{method.containing_service.full_name}/{method.name}",
                    service=method.containing_service.full_name,
                    request_type=message_factory.GetMessageClass(method.input_type),
                    response_type=message_factory.GetMessageClass(method.output_type),
                    build=build,
                    long_running=_long_running(method.output_type),
                    mapping=spec["request"],
                )
            )
        built.append((calls[0], calls[1]))
    if problems:
        return None, problems
    defaults = doc.get("defaults", {})
    steps = []
    types: list[Descriptor] = [input_type]
    for i, step in enumerate(doc["steps"]):
        forward, back = built[i]
        assert forward is not None  # no problem: every call compiled
        types += [forward.request_type.DESCRIPTOR, forward.response_type.DESCRIPTOR]
        if back is not None:
            types += [back.request_type.DESCRIPTOR, back.response_type.DESCRIPTOR]
        policy = merge_policy(defaults, step.get("policy", {}))
        service = catalog.service(forward.service)
        assert service is not None
        get_op = f"/{service.full_name}/GetOperation" if "GetOperation" in service.methods_by_name else ""
        steps.append(
            Step(
                number=i + 1,
                id=step["id"],
                kind=Kind(step["kind"]),
                endpoint=step["service"],
                call=forward,
                compensation=back,
                policy=policy,
                get_operation=get_op,
                output_used=(i + 1) in used,
            )
        )
    ttl = doc.get("ttl_ms", {})
    definition = Definition(
        name=doc["name"],
        version=doc["version"],
        hash=identity(doc, types),
        input_type=message_factory.GetMessageClass(input_type),
        key_field=doc["input"]["key"],
        key_of=operator.attrgetter(doc["input"]["key"]),
        steps=tuple(steps),
        ttl_default_ms=ttl.get("default"),
        ttl_max_ms=ttl.get("max"),
        document=doc,
        description=doc.get("description", ""),
    )
    return definition, []


def _not_json(value: Any, at: tuple[str | int, ...] = ()) -> list[Problem]:
    """What YAML can say and JSON cannot (binary, sets, explicit timestamps, keys that are not strings): each is a
    schema.type problem, before the schema is asked (it would not know what to say)."""
    if isinstance(value, dict):
        problems = []
        for k, v in value.items():
            if not isinstance(k, str):
                problems.append(
                    Problem(
                        "schema.type",
                        pointer(*at, str(k)),
                        f"the key {k!r} is a {type(k).__name__}, not a string",
                        "quote it: YAML reads yes, no, on, off and numbers as other types",
                    )
                )
            problems += _not_json(v, (*at, str(k)))
        return problems
    if isinstance(value, list):
        return [p for i, v in enumerate(value) for p in _not_json(v, (*at, i))]
    if value is None or isinstance(value, str | int | float):
        return []
    return [
        Problem("schema.type", pointer(*at), f"a {type(value).__name__} is not a JSON value", "write it as a string")
    ]


def check(document: Any, catalog: Catalog | None = None) -> tuple[Definition | None, list[Problem]]:
    """Every problem of a parsed document; the Definition when there is none."""
    problems = _not_json(document) or _structure(document)
    if problems:
        return None, problems
    doc = normalise(document)
    problems = _rules(doc)
    definition, more = _types(doc, catalog or default_catalog())
    problems += more
    if problems:
        return None, problems
    return definition, []


def load(source: str | Path, text: str | None = None, catalog: Catalog | None = None) -> Definition:
    """A checked definition from a file (or its text); DefinitionError with every problem otherwise."""
    name = str(source)
    if text is None:
        text = Path(source).read_text()
    definition, problems = check(parse(text, name), catalog)
    if definition is None:
        raise DefinitionError(name, problems)
    return definition


def from_document(document: Mapping[str, Any], source: str, catalog: Catalog | None = None) -> Definition:
    """A definition from its stored (normalised) document, as a journal keeps it."""
    definition, problems = check(document, catalog)
    if definition is None:
        raise DefinitionError(source, problems)
    return definition


def shipped(name: str) -> Path:
    """A definition file shipped with the coordinator (common/definitions/shipped/<name>.yaml)."""
    return Path(str(resources.files(__package__).joinpath("shipped", f"{name}.yaml")))


@cache
def order_flow() -> Definition:
    """The order flow as shipped: what PlaceOrder runs on a journal that holds no other version of it."""
    return load(shipped("order"))
