"""The request path language's type rules (common.definitions.paths), on message types made for the purpose and on
the project's own: what fits without losing a value, repeated against single, enums, tables, lists, shapes, step
outputs, and what a compiled builder produces."""

from __future__ import annotations

from collections.abc import Iterator
from typing import Any

import pytest
from google.protobuf import message_factory
from google.protobuf.descriptor import Descriptor
from google.protobuf.message import Message

from common.definitions import paths
from common.definitions.catalog import default_catalog
from common.definitions.model import RequestBuilder, Values
from common.definitions.problems import Problem
from protos.saga.v1 import saga_pb2
from tests.definitions.conftest import compile_proto, pool_of, read_set

TYPES_PROTO = """
syntax = "proto3";
package pathtest.v1;

enum Color { COLOR_UNSPECIFIED = 0; RED = 1; GREEN = 2; }

message Inner { string name = 1; int32 count = 2; }

message Source {
  int32 small = 1;
  int64 big = 2;
  uint32 u = 3;
  float f = 4;
  string text = 5;
  repeated string tags = 6;
  map<string, int64> counts = 7;
  Inner inner = 8;
  repeated Inner inners = 9;
}

message Target {
  int32 small = 1;
  int64 big = 2;
  uint64 ubig = 3;
  float f = 4;
  double d = 5;
  string text = 6;
  bytes data = 7;
  bool flag = 8;
  Color color = 9;
  repeated string tags = 10;
  map<string, int64> counts = 11;
  Inner inner = 12;
  repeated Inner inners = 13;
}
"""


@pytest.fixture(scope="module")
def types(tmp_path_factory: pytest.TempPathFactory) -> Iterator[dict[str, Descriptor]]:
    out = compile_proto(tmp_path_factory.mktemp("protos"), "pathtest/v1/types.proto", TYPES_PROTO)
    pool = pool_of(read_set(out))
    yield {n: pool.FindMessageTypeByName(f"pathtest.v1.{n}") for n in ("Source", "Target", "Inner")}


def compile_(
    mapping: dict[str, Any],
    request: Descriptor,
    input_type: Descriptor,
    steps: dict[str, tuple[int, Descriptor | None]] | None = None,
    current: int = 1,
    compensation: bool = False,
) -> tuple[RequestBuilder | None, list[Problem], paths.Scope]:
    scope = paths.Scope(input_type, steps or {}, current, compensation)
    build, problems = paths.check_request(mapping, request, scope, "/request")
    return build, problems, scope


def codes(problems: list[Problem]) -> list[tuple[str, str]]:
    return [(p.code, p.path) for p in problems]


def source(types: dict[str, Descriptor], **fields: Any) -> Message:
    return message_factory.GetMessageClass(types["Source"])(**fields)


def built(types: dict[str, Descriptor], mapping: dict[str, Any], **input_fields: Any) -> Message:
    build, problems, _ = compile_(mapping, types["Target"], types["Source"])
    assert build is not None, problems
    return build(Values("s-1", "k-1", source(types, **input_fields)), "")


@pytest.mark.parametrize(
    ("field", "path", "fits"),
    [
        ("big", "$input.small", True),  # int32 -> int64
        ("small", "$input.big", False),  # int64 -> int32
        ("big", "$input.u", True),  # uint32 -> int64
        ("ubig", "$input.u", True),  # uint32 -> uint64
        ("ubig", "$input.small", False),  # a negative int32 has no uint64
        ("d", "$input.small", True),  # every int32 is a double
        ("d", "$input.f", True),
        ("d", "$input.big", False),  # an int64 may be rounded in a double
        ("f", "$input.small", False),  # an int32 may be rounded in a float
        ("text", "$input.small", False),
        ("small", "$input.text", False),
    ],
)
def test_scalars_fit_only_without_losing_a_value(
    types: dict[str, Descriptor], field: str, path: str, fits: bool
) -> None:
    _, problems, _ = compile_({field: path}, types["Target"], types["Source"])
    assert codes(problems) == ([] if fits else [("request.type-mismatch", f"/request/{field}")])


def test_an_int32_arrives_in_an_int64(types: dict[str, Descriptor]) -> None:
    assert built(types, {"big": "$input.small"}, small=-7).big == -7


def test_repeated_and_single_do_not_mix(types: dict[str, Descriptor]) -> None:
    mapping = {"text": "$input.tags", "tags": "$input.text", "small": [1, 2]}
    _, problems, _ = compile_(mapping, types["Target"], types["Source"])
    assert codes(problems) == [
        ("request.repeated-mismatch", "/request/text"),
        ("request.repeated-mismatch", "/request/tags"),
        ("request.repeated-mismatch", "/request/small"),
    ]


def test_a_list_fills_a_repeated_field_element_by_element(types: dict[str, Descriptor]) -> None:
    target = built(
        types, {"tags": ["$input.text", "fixed"], "inners": [{"name": "a"}, {"name": "$input.text"}]}, text="t"
    )
    assert list(target.tags) == ["t", "fixed"]
    assert [i.name for i in target.inners] == ["a", "t"]
    _, problems, _ = compile_({"tags": ["ok", 5]}, types["Target"], types["Source"])
    assert codes(problems) == [("request.literal-type", "/request/tags/1")]


def test_a_repeated_path_fills_a_repeated_field(types: dict[str, Descriptor]) -> None:
    assert list(built(types, {"tags": "$input.tags"}, tags=["a", "b"]).tags) == ["a", "b"]


def test_an_enum_takes_a_value_name_or_number(types: dict[str, Descriptor]) -> None:
    assert built(types, {"color": "GREEN"}).color == 2
    assert built(types, {"color": 1}).color == 1
    _, problems, _ = compile_({"color": "BLUE"}, types["Target"], types["Source"])
    assert codes(problems) == [("request.literal-type", "/request/color")]
    assert "RED" in problems[0].hint


def test_literals_by_type(types: dict[str, Descriptor]) -> None:
    target = built(types, {"text": "$$5 off", "data": "raw", "flag": True, "d": 2, "f": 1.5, "ubig": 2**64 - 1})
    assert (target.text, target.data, target.flag, target.d, target.f, target.ubig) == (
        "$5 off",
        b"raw",
        True,
        2.0,
        1.5,
        2**64 - 1,
    )
    bad = {"small": 2**31, "flag": "yes", "big": True, "text": 5, "inner": "x", "d": {"x": 1}}
    _, problems, _ = compile_(bad, types["Target"], types["Source"])
    assert codes(problems) == [("request.literal-type", f"/request/{k}") for k in bad]


def test_a_table_fills_a_message_field(types: dict[str, Descriptor]) -> None:
    target = built(types, {"inner": {"name": "$input.text", "count": "$input.small"}}, text="n", small=3)
    assert (target.inner.name, target.inner.count) == ("n", 3)
    _, problems, _ = compile_({"inner": {"nick": "x"}}, types["Target"], types["Source"])
    assert codes(problems) == [("request.no-such-field", "/request/inner/nick")]


def test_a_message_fits_another_by_shape(types: dict[str, Descriptor]) -> None:
    """saga.v1.Item -> shop.v1.Item: same field names, compatible types; the builder converts."""
    catalog = default_catalog()
    request = catalog.message("shop.v1.CreateOrderRequest")
    input_type = catalog.message("saga.v1.PlaceOrderRequest")
    assert request is not None and input_type is not None
    build, problems, _ = compile_({"items": "$input.items"}, request, input_type)
    assert build is not None, problems
    order = saga_pb2.PlaceOrderRequest(items=[saga_pb2.Item(item_id="sku", quantity=2)])
    items = build(Values("s", "k", order), "").items
    assert [(i.item_id, i.quantity, i.DESCRIPTOR.full_name) for i in items] == [("sku", 2, "shop.v1.Item")]
    # Source has fields Inner does not: no shape fits.
    _, problems, _ = compile_({"inner": "$input"}, types["Target"], types["Source"])
    assert codes(problems) == [("request.type-mismatch", "/request/inner")]


def test_an_earlier_step_output_and_one_never_received(types: dict[str, Descriptor]) -> None:
    steps: dict[str, tuple[int, Descriptor | None]] = {"first": (1, types["Target"]), "second": (2, types["Target"])}
    mapping = {"text": "$steps.first.output.text", "inner": "$steps.first.output.inner"}
    build, problems, scope = compile_(mapping, types["Target"], types["Source"], steps, current=2)
    assert build is not None, problems
    assert scope.used_outputs == {1}
    output = message_factory.GetMessageClass(types["Target"])(text="out", inner={"name": "i"})
    got = build(Values("s", "k", source(types), {1: output}), "")
    assert (got.text, got.inner.name) == ("out", "i")
    # An output never received (its outcome unknown) reads as the empty response.
    empty = build(Values("s", "k", source(types), {}), "")
    assert (empty.text, empty.inner.name) == ("", "")
    _, problems, _ = compile_({"text": "$steps.second.output.text"}, types["Target"], types["Source"], steps, current=2)
    assert codes(problems) == [("path.later-step", "/request/text")]


def test_the_saga_identity_and_the_forward_key(types: dict[str, Descriptor]) -> None:
    build, problems, _ = compile_(
        {"text": "$saga.id", "tags": ["$saga.key", "$forward_key"]},
        types["Target"],
        types["Source"],
        compensation=True,
    )
    assert build is not None, problems
    got = build(Values("s-1", "k-1", source(types)), "s-1/x/forward")
    assert (got.text, list(got.tags)) == ("s-1", ["k-1", "s-1/x/forward"])
    _, problems, _ = compile_({"text": "$saga.name"}, types["Target"], types["Source"])
    assert codes(problems) == [("path.no-such-field", "/request/text")]


def test_a_step_s_forward_key_names_the_effect_it_applied(types: dict[str, Descriptor]) -> None:
    """$steps.<id>.key: the idempotency key of that step's forward call, known from the saga id alone (so a later step
    can name exactly the reservation an earlier one made, never another saga's of the same order)."""
    steps: dict[str, tuple[int, Descriptor | None]] = {"first": (1, types["Target"]), "second": (2, types["Target"])}
    build, problems, scope = compile_({"text": "$steps.first.key"}, types["Target"], types["Source"], steps, current=2)
    assert build is not None, problems
    assert scope.used_outputs == set()  # nothing to journal: the key is derived
    assert build(Values("s-1", "k", source(types), {}), "").text == "s-1/first/forward"
    _, problems, _ = compile_({"small": "$steps.first.key"}, types["Target"], types["Source"], steps, current=2)
    assert codes(problems) == [("request.type-mismatch", "/request/small")]
    _, problems, _ = compile_({"text": "$steps.first.keys"}, types["Target"], types["Source"], steps, current=2)
    assert codes(problems) == [("path.syntax", "/request/text")]


def test_map_fields_are_refused(types: dict[str, Descriptor]) -> None:
    _, problems, _ = compile_({"counts": {"a": 1}, "big": "$input.counts"}, types["Target"], types["Source"])
    assert codes(problems) == [("path.map-field", "/request/counts"), ("path.map-field", "/request/big")]


def test_paths_go_on_through_single_messages_only(types: dict[str, Descriptor]) -> None:
    _, problems, _ = compile_(
        {"text": "$input.inners.name", "small": "$input.inner.count"}, types["Target"], types["Source"]
    )
    assert codes(problems) == [("path.not-a-message", "/request/text")]


def test_the_key_is_a_field_path_of_the_input(types: dict[str, Descriptor]) -> None:
    t, problems = paths.resolve_input_field(types["Source"], "inner.name", "/input/key")
    assert t is not None and t.kind == "string" and problems == []
    _, problems = paths.resolve_input_field(types["Source"], "inner.", "/input/key")
    assert codes(problems) == [("path.syntax", "/input/key")]
