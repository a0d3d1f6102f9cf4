"""common.tracing's pure rules: when the environment turns traces on, and what it answers while they are off (the
traces themselves are tested against real processes in tests/tracing)."""

from __future__ import annotations

import pytest

from common import tracing

ENDPOINT = {"OTEL_EXPORTER_OTLP_ENDPOINT": "http://collector:4317"}


@pytest.mark.parametrize(
    ("environ", "on"),
    [
        ({}, False),
        (ENDPOINT, True),
        ({"OTEL_EXPORTER_OTLP_TRACES_ENDPOINT": "http://collector:4317"}, True),
        ({"OTEL_EXPORTER_OTLP_ENDPOINT": "  "}, False),
        ({**ENDPOINT, "OTEL_SDK_DISABLED": "true"}, False),
        ({**ENDPOINT, "OTEL_SDK_DISABLED": "TRUE"}, False),
        ({**ENDPOINT, "OTEL_SDK_DISABLED": "false"}, True),
        ({**ENDPOINT, "OTEL_TRACES_EXPORTER": "none"}, False),
        ({**ENDPOINT, "OTEL_TRACES_EXPORTER": "otlp"}, True),
        ({**ENDPOINT, "OTEL_TRACES_EXPORTER": "console"}, False),
        ({"OTEL_TRACES_EXPORTER": "otlp"}, False),
    ],
)
def test_traces_are_on_only_when_an_otlp_endpoint_is_named(environ: dict[str, str], on: bool) -> None:
    assert tracing.wanted(environ) is on


def test_off_it_installs_nothing_and_reads_nothing() -> None:
    assert not tracing.enabled()
    assert tracing.setup("test", environ={}) is False
    assert tracing.server_interceptors() == [] and tracing.client_interceptors() == []
    assert tracing.carrier() == "" and tracing.restore("00-" + "1" * 32 + "-" + "2" * 16 + "-01") is None
    assert tracing.remote_parent((("traceparent", "00-x"),)) == "" and tracing.current_trace_id() == ""
    with tracing.span("x", None, {"a": 1}) as span:
        assert span is None
    tracing.outcome(None, "OK", True)


def test_the_trace_id_of_a_kept_context() -> None:
    trace_id = "4bf92f3577b34da6a3ce929d0e0e4736"
    assert tracing.trace_id_of(f"00-{trace_id}-00f067aa0ba902b7-01") == trace_id
    assert tracing.trace_id_of(f"00-{trace_id}-00f067aa0ba902b7-01\nvendor=x") == trace_id
    assert tracing.trace_id_of("") == "" and tracing.trace_id_of("garbage") == ""
