"""Messages as the definition tools show and make them: a default input filled from its descriptor, and requests as
JSON with the payment fields masked."""

from __future__ import annotations

from typing import Any

from google.protobuf import json_format
from google.protobuf.descriptor import FieldDescriptor
from google.protobuf.message import Message

MASK = "***"
SECRET_FIELD = "payment_token"
SECRET_MESSAGE_FIELD = "payment_info"
"""A field with this name is masked, and so is every field under one with the other (what the journal seals)."""

_MAX_DEPTH = 8
"""A recursive message type (a tree) is filled this deep, no deeper."""


def default_input(input_type: Any, key_field: str, key: str) -> Message:
    """A plausible input: strings "x", numbers 1, bools false, enums their first non-zero value, one element in each
    repeated field, every message field filled the same way, and `key` in the key field. Fields with explicit presence
    (proto3 `optional`, oneof members) stay unset: they are choices (PlaceOrderRequest's ttl_ms), not data. A field
    named `currency` gets "XXX", ISO 4217's code for "no currency", so the order flow's input validates as it is."""
    message: Message = input_type()
    _fill(message, 0)
    set_key(message, key_field, key)
    return message


def set_key(message: Message, key_field: str, key: str) -> None:
    """Sets the dotted key path (single message fields, then a string) of `message` to `key`."""
    *parents, last = key_field.split(".")
    target = message
    for name in parents:
        target = getattr(target, name)
    setattr(target, last, key)


def _fill(message: Message, depth: int) -> None:
    for field in message.DESCRIPTOR.fields:
        if field.has_presence and field.type != FieldDescriptor.TYPE_MESSAGE:
            continue
        if field.containing_oneof is not None:
            continue
        if field.type == FieldDescriptor.TYPE_MESSAGE:
            if field.message_type is None or field.message_type.GetOptions().map_entry or depth >= _MAX_DEPTH:
                continue
            if field.is_repeated:
                _fill(getattr(message, field.name).add(), depth + 1)
            else:
                _fill(getattr(message, field.name), depth + 1)
            continue
        value = _scalar(field)
        if value is None:
            continue
        if field.is_repeated:
            getattr(message, field.name).append(value)
        else:
            setattr(message, field.name, value)


def _scalar(field: Any) -> Any:
    t = field.type
    if t == FieldDescriptor.TYPE_STRING:
        return "XXX" if field.name == "currency" else "x"
    if t == FieldDescriptor.TYPE_BYTES:
        return b"x"
    if t == FieldDescriptor.TYPE_BOOL:
        return None
    if t == FieldDescriptor.TYPE_ENUM:
        nonzero = [v.number for v in field.enum_type.values if v.number != 0] if field.enum_type else []
        return nonzero[0] if nonzero else None
    if t in (FieldDescriptor.TYPE_FLOAT, FieldDescriptor.TYPE_DOUBLE):
        return 1.0
    return 1


def parse_input(input_type: Any, text: str) -> Message:
    """The input given as JSON (protobuf's JSON mapping); json_format.ParseError if it is not one."""
    message: Message = input_type()
    json_format.Parse(text, message)
    return message


def masked(message: Message) -> dict[str, Any]:
    """The message as JSON-ready data (field names as in the .proto, every field shown), payment fields masked."""
    data = json_format.MessageToDict(
        message, preserving_proto_field_name=True, always_print_fields_with_no_presence=True
    )
    return dict(_mask(data, False))


def _mask(data: Any, secret: bool) -> Any:
    if isinstance(data, dict):
        out = {}
        for name, value in data.items():
            hidden = secret or name in (SECRET_FIELD, SECRET_MESSAGE_FIELD)
            out[name] = _mask(value, hidden)
        return out
    if isinstance(data, list):
        return [_mask(v, secret) for v in data]
    return MASK if secret else data
