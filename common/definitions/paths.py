"""The request mapping language: a request is built from the saga's input, its identity and earlier steps' outputs,
by paths and literals only, so a definition can be checked completely without running anything.

A mapping is a table of the request message's fields. Each value is:
- a path: `$input.<field>...` (the saga's input), `$steps.<step id>.output.<field>...` (a step's response),
  `$steps.<step id>.key` (the idempotency key of an earlier step's forward call: names the effect it applied),
  `$saga.id`, `$saga.key`, `$forward_key` (a compensation only: the idempotency key of the forward call it undoes);
- a literal: a string (`$$` at its start stands for one `$`), a number, a boolean, or an enum value's name;
- a table: the fields of a message-typed field, mapped the same way;
- a list: the elements of a repeated field, each mapped the same way.

Types are checked against the message descriptors: scalars by type, only where no value is lost (an int32 fits an
int64, not the other way; a double takes an int32, a uint32 or a float, a float only a float), enums by their values,
messages by type or by shape (every field of the source has a field of the same name and a compatible type in the
target: saga.v1.Item -> shop.v1.Item), repeated only to repeated. check_request() reports
every problem with its code and JSON Pointer and compiles the mapping into a builder: attribute getters and message
constructors prepared once, so building a request walks no dict and resolves no name.
"""

from __future__ import annotations

import operator
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from typing import Any

from google.protobuf import message_factory
from google.protobuf.descriptor import Descriptor, EnumDescriptor, FieldDescriptor
from google.protobuf.message import Message

from common.definitions.model import Action, RequestBuilder, Values, idempotency_key
from common.definitions.problems import Problem

_INTS = {
    FieldDescriptor.TYPE_INT32: ("int32", -(2**31), 2**31 - 1),
    FieldDescriptor.TYPE_SINT32: ("int32", -(2**31), 2**31 - 1),
    FieldDescriptor.TYPE_SFIXED32: ("int32", -(2**31), 2**31 - 1),
    FieldDescriptor.TYPE_INT64: ("int64", -(2**63), 2**63 - 1),
    FieldDescriptor.TYPE_SINT64: ("int64", -(2**63), 2**63 - 1),
    FieldDescriptor.TYPE_SFIXED64: ("int64", -(2**63), 2**63 - 1),
    FieldDescriptor.TYPE_UINT32: ("uint32", 0, 2**32 - 1),
    FieldDescriptor.TYPE_FIXED32: ("uint32", 0, 2**32 - 1),
    FieldDescriptor.TYPE_UINT64: ("uint64", 0, 2**64 - 1),
    FieldDescriptor.TYPE_FIXED64: ("uint64", 0, 2**64 - 1),
}
# What each integer kind may receive without losing a value.
_INT_FITS = {
    "int32": {"int32"},
    "int64": {"int32", "int64", "uint32"},
    "uint32": {"uint32"},
    "uint64": {"uint32", "uint64"},
}
_FLOATS = {FieldDescriptor.TYPE_FLOAT: "float", FieldDescriptor.TYPE_DOUBLE: "double"}


@dataclass(frozen=True, slots=True)
class SlotType:
    """The type of a value: a scalar kind, an enum or a message; repeated or not."""

    kind: str
    """"string", "bytes", "bool", "int32", "int64", "uint32", "uint64", "float", "double", "enum", "message"."""
    repeated: bool = False
    message: Descriptor | None = None
    enum: EnumDescriptor | None = None

    @property
    def name(self) -> str:
        base = self.message.full_name if self.message else self.enum.full_name if self.enum else self.kind
        return f"repeated {base}" if self.repeated else base

    def element(self) -> SlotType:
        return SlotType(self.kind, False, self.message, self.enum)


def field_type(f: FieldDescriptor) -> SlotType:
    repeated = f.is_repeated
    t = f.type
    if t in (FieldDescriptor.TYPE_MESSAGE, FieldDescriptor.TYPE_GROUP):
        return SlotType("message", repeated, message=f.message_type)
    if t == FieldDescriptor.TYPE_ENUM:
        return SlotType("enum", repeated, enum=f.enum_type)
    if t == FieldDescriptor.TYPE_STRING:
        return SlotType("string", repeated)
    if t == FieldDescriptor.TYPE_BYTES:
        return SlotType("bytes", repeated)
    if t == FieldDescriptor.TYPE_BOOL:
        return SlotType("bool", repeated)
    if t in _INTS:
        return SlotType(_INTS[t][0], repeated)
    return SlotType(_FLOATS[t], repeated)


_STRING = SlotType("string")


@dataclass(frozen=True, slots=True)
class Scope:
    """What a mapping may read."""

    input_type: Descriptor
    steps: Mapping[str, tuple[int, Descriptor | None]]
    """Every step of the definition: id -> (number, response type); None when the step's method did not resolve (a
    problem reported once, at the method: its paths are not reported again)."""
    current: int
    """The number of the step whose request this is."""
    compensation: bool
    """A compensation request: only the input, the saga's identity, $forward_key and its own step's output."""
    used_outputs: set[int] = field(default_factory=set)
    """Filled by check_request: the steps whose output the mapping reads."""


Producer = Callable[[Values, str], Any]


@dataclass(frozen=True, slots=True)
class _Path:
    type: SlotType
    produce: Producer


def _resolve_fields(message: Descriptor, names: list[str], at: str, ptr: str) -> tuple[SlotType | None, list[Problem]]:
    """The type at names inside message; a path goes through singular message fields only."""
    current: SlotType = SlotType("message", message=message)
    for i, name in enumerate(names):
        if current.repeated or current.message is None:
            through = ".".join(names[:i])
            return None, [
                Problem(
                    "path.not-a-message",
                    ptr,
                    f"{at}: {through} is {current.name}; a path goes on only through a singular message field",
                    "map a repeated field as a whole, or read a field of a singular message",
                )
            ]
        f = current.message.fields_by_name.get(name)
        if f is None:
            known = ", ".join(sorted(current.message.fields_by_name)) or "none"
            return None, [
                Problem(
                    "path.no-such-field",
                    ptr,
                    f"{at}: {current.message.full_name} has no field {name!r}",
                    f"its fields: {known}",
                )
            ]
        if f.message_type is not None and f.message_type.GetOptions().map_entry:
            return None, [
                Problem("path.map-field", ptr, f"{at}: {name} is a map field", "map fields are not supported")
            ]
        current = field_type(f)
    return current, []


def _whole(m: Message) -> Message:
    return m


def check_path(expr: str, scope: Scope, ptr: str) -> tuple[_Path | None, list[Problem]]:
    """A `$...` expression: its type and producer, or the problems."""
    parts = expr[1:].split(".")
    if any(not p for p in parts):
        return None, [Problem("path.syntax", ptr, f"{expr!r} is not a path", "e.g. $input.order_id")]
    root = parts[0]
    if root == "input":
        if len(parts) == 1:
            return _Path(SlotType("message", message=scope.input_type), lambda v, fk: v.input), []
        t, problems = _resolve_fields(scope.input_type, parts[1:], expr, ptr)
        if t is None:
            return None, problems
        read = operator.attrgetter(".".join(parts[1:]))
        return _Path(t, lambda v, fk: read(v.input)), []
    if root == "saga":
        if parts[1:] == ["id"]:
            return _Path(_STRING, lambda v, fk: v.saga_id), []
        if parts[1:] == ["key"]:
            return _Path(_STRING, lambda v, fk: v.key), []
        return None, [
            Problem("path.no-such-field", ptr, f"{expr!r}: the saga has an id and a key", "$saga.id or $saga.key")
        ]
    if root == "forward_key":
        if len(parts) != 1:
            return None, [Problem("path.syntax", ptr, f"{expr!r}: $forward_key has no fields")]
        if not scope.compensation:
            return None, [
                Problem(
                    "path.forward-key-scope",
                    ptr,
                    "$forward_key is the key of the forward call a compensation undoes: only a compensation has it",
                    "a forward call's own key is in its metadata already",
                )
            ]
        return _Path(_STRING, lambda v, fk: fk), []
    if root == "steps":
        keyed = len(parts) == 3 and parts[2] == "key"
        if not keyed and (len(parts) < 3 or parts[2] != "output"):
            return None, [
                Problem(
                    "path.syntax", ptr, f"{expr!r} is not a step path", "$steps.<id>.output.<field> or $steps.<id>.key"
                )
            ]
        step_id = parts[1]
        if step_id not in scope.steps:
            known = ", ".join(scope.steps) or "none"
            return None, [Problem("path.unknown-step", ptr, f"{expr!r}: no step {step_id!r}", f"steps: {known}")]
        number, response = scope.steps[step_id]
        if keyed:
            # Known before the step ran (derived from the saga id): any step, forward or compensation, may name it.
            return _Path(_STRING, lambda v, fk: idempotency_key(v.saga_id, step_id, Action.FORWARD)), []
        if scope.compensation and number != scope.current:
            return None, [
                Problem(
                    "path.compensation-scope",
                    ptr,
                    f"{expr!r}: a compensation may read only the input and its own step's output",
                    "another step may be undone already, or never have run",
                )
            ]
        if not scope.compensation and number >= scope.current:
            return None, [
                Problem(
                    "path.later-step",
                    ptr,
                    f"{expr!r}: step {step_id} has not run when this request is built",
                    "read only the outputs of steps before this one",
                )
            ]
        scope.used_outputs.add(number)
        if response is None:
            return None, []
        names = parts[3:]
        get: Callable[[Message], Any]
        if names:
            t, problems = _resolve_fields(response, names, expr, ptr)
            if t is None:
                return None, problems
            get = operator.attrgetter(".".join(names))
        else:
            t = SlotType("message", message=response)
            get = _whole

        empty = message_factory.GetMessageClass(response)()

        def produce(v: Values, fk: str) -> Any:
            # An output never received (its forward outcome was unknown) reads as the empty response.
            return get(v.outputs.get(number, empty))

        return _Path(t, produce), []
    return None, [
        Problem("path.unknown-root", ptr, f"{expr!r}: unknown root ${root}", "$input, $steps, $saga or $forward_key")
    ]


def _enums_compatible(a: EnumDescriptor, b: EnumDescriptor) -> bool:
    if a.full_name == b.full_name:
        return True
    return {v.name: v.number for v in a.values} == {v.name: v.number for v in b.values}


def _shape_problem(src: Descriptor, dst: Descriptor, seen: frozenset[tuple[str, str]] = frozenset()) -> str:
    """Why a src message does not fit a dst field ("" if it does): same type, or every src field has a same-named dst
    field of a compatible type (recursively)."""
    if src.full_name == dst.full_name or (src.full_name, dst.full_name) in seen:
        return ""
    seen = seen | {(src.full_name, dst.full_name)}
    for f in src.fields:
        g = dst.fields_by_name.get(f.name)
        if g is None:
            return f"{dst.full_name} has no field {f.name!r} for {src.full_name}.{f.name}"
        why = _fits(field_type(f), field_type(g), seen)
        if why:
            return f"{src.full_name}.{f.name}: {why}"
    return ""


def _fits(src: SlotType, dst: SlotType, seen: frozenset[tuple[str, str]] = frozenset()) -> str:
    if src.repeated != dst.repeated:
        return f"{src.name} cannot fill {dst.name}"
    if src.kind == "message" or dst.kind == "message":
        if src.message is None or dst.message is None:
            return f"{src.name} cannot fill {dst.name}"
        return _shape_problem(src.message, dst.message, seen)
    if src.kind == "enum" or dst.kind == "enum":
        if src.enum is None or dst.enum is None or not _enums_compatible(src.enum, dst.enum):
            return f"{src.name} cannot fill {dst.name}"
        return ""
    if src.kind == dst.kind:
        return ""
    if dst.kind in _INT_FITS and src.kind in _INT_FITS[dst.kind]:
        return ""
    # A double holds every 32-bit integer exactly; a 64-bit one or any integer in a float may be rounded.
    if dst.kind == "double" and src.kind in ("int32", "uint32", "float"):
        return ""
    return f"{src.name} cannot fill {dst.name}"


def _each(convert: Callable[[Message], Message]) -> Callable[[Any], list[Message]]:
    return lambda xs: [convert(x) for x in xs]


def _converter(src: Descriptor, dst: Descriptor) -> Callable[[Message], Message]:
    """Copies a src message into a new dst message field by field (a same-typed message passes as it is)."""
    if src.full_name == dst.full_name:
        return lambda m: m
    cls = message_factory.GetMessageClass(dst)
    plan: list[tuple[str, Callable[[Any], Any] | None]] = []
    for f in src.fields:
        g = dst.fields_by_name[f.name]
        if (
            f.message_type is not None
            and g.message_type is not None
            and f.message_type.full_name != g.message_type.full_name
        ):
            inner = _converter(f.message_type, g.message_type)
            if f.is_repeated:
                plan.append((f.name, _each(inner)))
            else:
                plan.append((f.name, inner))
        else:
            plan.append((f.name, None))
    names = tuple(name for name, _ in plan)
    if all(c is None for _, c in plan):

        def copy_plain(m: Message) -> Message:
            return cls(**{n: getattr(m, n) for n in names})

        return copy_plain

    def copy(m: Message) -> Message:
        return cls(**{n: (c(getattr(m, n)) if c else getattr(m, n)) for n, c in plan})

    return copy


def _adapt(src: SlotType, dst: SlotType, produce: Producer) -> Producer:
    """The producer of a value of dst's type from one of src's (already known to fit)."""
    if dst.kind != "message" or src.message is None or dst.message is None:
        return produce
    if src.message.full_name == dst.message.full_name:
        return produce
    conv = _converter(src.message, dst.message)
    if dst.repeated:
        return lambda v, fk: [conv(x) for x in produce(v, fk)]
    return lambda v, fk: conv(produce(v, fk))


def _literal(value: Any, dst: SlotType, ptr: str) -> tuple[Producer | None, list[Problem]]:
    """A literal for a singular non-message field."""
    bad = [Problem("request.literal-type", ptr, f"{value!r} does not fit a field of type {dst.name}")]
    if isinstance(value, str) and value.startswith("$$"):
        value = value[1:]
    kind = dst.kind
    if kind == "string":
        if not isinstance(value, str):
            return None, bad
        return (lambda v, fk: value), []
    if kind == "bytes":
        if not isinstance(value, str):
            return None, bad
        data = value.encode()
        return (lambda v, fk: data), []
    if kind == "bool":
        if not isinstance(value, bool):
            return None, bad
        return (lambda v, fk: value), []
    if kind in _INT_FITS:
        if isinstance(value, bool) or not isinstance(value, int):
            return None, bad
        lo, hi = next((lo, hi) for k, lo, hi in _INTS.values() if k == kind)
        if not lo <= value <= hi:
            return None, [Problem("request.literal-type", ptr, f"{value} is out of range for {kind}")]
        return (lambda v, fk: value), []
    if kind in ("float", "double"):
        if isinstance(value, bool) or not isinstance(value, (int, float)):
            return None, bad
        number = float(value)
        return (lambda v, fk: number), []
    assert dst.enum is not None
    if isinstance(value, str) and value in dst.enum.values_by_name:
        n = dst.enum.values_by_name[value].number
        return (lambda v, fk: n), []
    if isinstance(value, int) and not isinstance(value, bool) and value in dst.enum.values_by_number:
        return (lambda v, fk: value), []
    names = ", ".join(dst.enum.values_by_name)
    return None, [Problem("request.literal-type", ptr, f"{value!r} is not a value of {dst.enum.full_name}", names)]


def _value(value: Any, dst: SlotType, scope: Scope, ptr: str) -> tuple[Producer | None, list[Problem]]:
    """The producer of one mapped value for a field of type dst."""
    if isinstance(value, str) and value.startswith("$") and not value.startswith("$$"):
        path, problems = check_path(value, scope, ptr)
        if path is None:
            return None, problems
        if path.type.repeated != dst.repeated:
            return None, [
                Problem(
                    "request.repeated-mismatch",
                    ptr,
                    f"{value} is {path.type.name}, the field is {dst.name}",
                    "a repeated field takes a repeated path or a list; a single field one value",
                )
            ]
        why = _fits(path.type, dst)
        if why:
            return None, [Problem("request.type-mismatch", ptr, f"{value} is {path.type.name}: {why}")]
        return _adapt(path.type, dst, path.produce), []
    if dst.repeated:
        if not isinstance(value, list):
            return None, [
                Problem(
                    "request.repeated-mismatch",
                    ptr,
                    f"{dst.name} takes a path to a repeated field or a list",
                    "e.g. $input.items",
                )
            ]
        element = dst.element()
        producers: list[Producer] = []
        problems = []
        for i, item in enumerate(value):
            p, more = _value(item, element, scope, f"{ptr}/{i}")
            problems += more
            if p is not None:
                producers.append(p)
        if problems:
            return None, problems
        return (lambda v, fk: [p(v, fk) for p in producers]), []
    if dst.kind == "message":
        assert dst.message is not None
        if not isinstance(value, Mapping):
            return None, [Problem("request.literal-type", ptr, f"{dst.name} takes a table of its fields or a path", "")]
        build, problems = _message(value, dst.message, scope, ptr)
        if build is None:
            return None, problems
        return build, []
    if isinstance(value, list):
        return None, [
            Problem("request.repeated-mismatch", ptr, f"a list for a single field of type {dst.name}", "give one value")
        ]
    if isinstance(value, Mapping):
        return None, [Problem("request.literal-type", ptr, f"a table for a field of type {dst.name}", "give one value")]
    return _literal(value, dst, ptr)


def _message(
    mapping: Mapping[str, Any], message: Descriptor, scope: Scope, ptr: str
) -> tuple[Producer | None, list[Problem]]:
    cls = message_factory.GetMessageClass(message)
    fields: list[tuple[str, Producer]] = []
    problems: list[Problem] = []
    for name, value in mapping.items():
        f = message.fields_by_name.get(name)
        at = f"{ptr}/{name}"
        if f is None:
            known = ", ".join(sorted(message.fields_by_name)) or "none"
            problems.append(
                Problem(
                    "request.no-such-field", at, f"{message.full_name} has no field {name!r}", f"its fields: {known}"
                )
            )
            continue
        if f.message_type is not None and f.message_type.GetOptions().map_entry:
            problems.append(Problem("path.map-field", at, f"{name} is a map field", "map fields are not supported"))
            continue
        p, more = _value(value, field_type(f), scope, at)
        problems += more
        if p is not None:
            fields.append((name, p))
    if problems:
        return None, problems
    return _constructor(cls, tuple(fields)), []


def _constructor(cls: Any, fields: tuple[tuple[str, Producer], ...]) -> Producer:
    if not fields:
        return lambda v, fk: cls()
    if len(fields) == 1:
        ((n1, p1),) = fields
        return lambda v, fk: cls(**{n1: p1(v, fk)})
    return lambda v, fk: cls(**{n: p(v, fk) for n, p in fields})


def check_request(
    mapping: Mapping[str, Any], request_type: Descriptor, scope: Scope, ptr: str
) -> tuple[RequestBuilder | None, list[Problem]]:
    """Checks a request mapping (a table: the JSON Schema pass has checked that) against its message type and compiles
    it; every problem, with its pointer."""
    build, problems = _message(mapping, request_type, scope, ptr)
    if build is None:
        return None, problems
    return build, []


def resolve_input_field(input_type: Descriptor, dotted: str, ptr: str) -> tuple[SlotType | None, list[Problem]]:
    """The type of a dotted field path of the input (the key)."""
    if not dotted or any(not p for p in dotted.split(".")):
        return None, [Problem("path.syntax", ptr, f"{dotted!r} is not a field path", "e.g. order_id")]
    return _resolve_fields(input_type, dotted.split("."), dotted, ptr)
