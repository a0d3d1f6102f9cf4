"""common.rpc_errors, common.tomlfile and common.metrics_http."""

from __future__ import annotations

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
