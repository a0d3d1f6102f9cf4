"""common.rpc_errors, common.tomlfile and common.metrics_http."""

from __future__ import annotations

import re
import urllib.request
from pathlib import Path

import grpc
import pytest
from google.rpc import error_details_pb2, status_pb2
from prometheus_client import CollectorRegistry, Counter

from common.metrics_http import MetricsServer
from common.rpc_errors import bad_request
from common.tomlfile import TomlFileError, read_toml


def test_bad_request_names_the_field_in_the_details_trailer() -> None:
    status = bad_request("items[0].quantity", "must be at least 1")
    assert status.code == grpc.StatusCode.INVALID_ARGUMENT
    assert status.details == "items[0].quantity: must be at least 1"
    ((key, value),) = status.trailing_metadata
    assert key == "grpc-status-details-bin"
    rich = status_pb2.Status.FromString(value)
    assert rich.code == grpc.StatusCode.INVALID_ARGUMENT.value[0] and rich.message == status.details
    bad = error_details_pb2.BadRequest()
    assert rich.details[0].Unpack(bad)
    assert [(v.field, v.description) for v in bad.field_violations] == [("items[0].quantity", "must be at least 1")]


class MyConfigError(ValueError):
    pass


def test_read_toml(tmp_path: Path) -> None:
    good = tmp_path / "good.toml"
    good.write_text('vnodes = 8\n[router]\nname = "r"\n')
    assert read_toml(good) == {"vnodes": 8, "router": {"name": "r"}}

    bad = tmp_path / "bad.toml"
    bad.write_text("x = [\n")
    with pytest.raises(MyConfigError, match=r"^shards config .*bad.toml is not valid TOML: ") as e:
        read_toml(bad, what="shards config", error=MyConfigError)
    assert e.value.__cause__ is not None
    with pytest.raises(TomlFileError, match=r"^cannot read config .*missing.toml: "):
        read_toml(tmp_path / "missing.toml")


def test_metrics_server_serves_its_registry_and_frees_the_port() -> None:
    registry = CollectorRegistry()
    Counter("plumbing_test_events", "Events", registry=registry).inc(3)
    server = MetricsServer("127.0.0.1:0", registry)
    try:
        with urllib.request.urlopen(f"http://127.0.0.1:{server.port}/metrics", timeout=5) as reply:
            assert "plumbing_test_events_total 3.0" in reply.read().decode()
    finally:
        server.close()
    again = MetricsServer(f"127.0.0.1:{server.port}", CollectorRegistry())  # the port was released
    again.close()


def test_build_lays_a_table_over_settings_and_names_what_is_wrong() -> None:
    import dataclasses

    from common.tomlfile import TomlFileError, build, check_keys

    @dataclasses.dataclass(frozen=True)
    class Inner:
        n: int = 1
        ratio: float = 0.5

    @dataclasses.dataclass(frozen=True)
    class Outer:
        names: tuple[str, ...] = ()
        inner: Inner = Inner(n=7)

    built = build(Outer, {"names": ["a", "b"], "inner": {"ratio": 2}}, "[x] ")
    assert built == Outer(("a", "b"), Inner(n=7, ratio=2.0))  # the nested default (n=7) kept, 2 taken as 2.0
    for data, message in (
        ({"nope": 1}, "unknown setting [x] nope; known: inner, names"),
        ({"inner": 3}, "[x] inner must be a table"),
        ({"inner": {"n": True}}, "[x] inner.n must be int, got True"),
        ({"names": ["a", 1]}, "[x] names must be a list of strings"),
    ):
        with pytest.raises(TomlFileError, match=re.escape(message)):
            build(Outer, data, "[x] ")
    with pytest.raises(TomlFileError, match=re.escape("[tls] unknown setting(s) ['port']; known: cert, key")):
        check_keys({"cert": "a", "port": 1}, ("cert", "key"), "[tls] ")
