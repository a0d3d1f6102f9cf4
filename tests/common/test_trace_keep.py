"""Which of a saga's spans leave the process (common.trace_keep through common.tracing.saga): the ratio the SDK's own
variables name is honoured, a saga that goes wrong is exported whole whatever it says, a successful one that was not
sampled leaves nothing, and what is held for the undecided ones is bounded, dropped a saga at a time."""

from __future__ import annotations

import json
import random
from collections.abc import Iterator

import pytest
from opentelemetry.trace import Status, StatusCode

from bench.otlp import OtlpReceiver
from common import tracing
from common.trace_keep import KEPT

UNSAMPLED, SAMPLED = "00", "01"


def kept_context(flags: str, rng: random.Random) -> str:
    """A saga's journaled context as a router's span would leave it: W3C traceparent with the router's decision."""
    return json.dumps({"traceparent": f"00-{rng.getrandbits(128):032x}-{rng.getrandbits(64):016x}-{flags}"})


@pytest.fixture
def receiver(monkeypatch: pytest.MonkeyPatch, request: pytest.FixtureRequest) -> Iterator[OtlpReceiver]:
    """Tracing on in this process with the sampler the test's parameter names (the SDK's own variables)."""
    sampler, arg, held = request.param
    with OtlpReceiver() as r:
        for key, value in r.environment().items():
            monkeypatch.setenv(key, value)
        monkeypatch.setenv("OTEL_TRACES_SAMPLER", sampler)
        monkeypatch.setenv("OTEL_TRACES_SAMPLER_ARG", arg)
        assert tracing.setup("test-keep", held_spans_max=held)
        try:
            yield r
        finally:
            tracing.shutdown()


def attempt(saga: object, step: str, ok: bool = True) -> None:
    with saga.span(f"forward {step}", {"saga.step": step}, client=True) as span:  # type: ignore[attr-defined]
        tracing.outcome(span, "OK" if ok else "FAILED_PRECONDITION", ok)


def exported(receiver: OtlpReceiver) -> list[tuple[str, str, object]]:
    tracing.shutdown()  # flushes the batch processor
    return [(s.attributes["saga.id"], s.name, s.attributes.get(KEPT)) for s in receiver.spans]


@pytest.mark.parametrize("receiver", [("traceidratio", "0.1", 100_000)], indirect=True)
def test_the_ratio_the_sdk_variables_name_is_honoured(receiver: OtlpReceiver) -> None:
    """OTEL_TRACES_SAMPLER=traceidratio, ARG 0.1: about a tenth of 2,000 successful sagas export their spans, each
    whole (both of its spans), none marked kept."""
    rng = random.Random(32)
    for i in range(2000):
        saga = tracing.saga(kept_context(SAMPLED, rng), {"saga.id": f"s{i}"})
        attempt(saga, "create_order")
        saga.drop()
        with saga.span("saga SUCCEEDED", {}):
            pass
    spans = exported(receiver)
    sagas = {saga_id for saga_id, _, _ in spans}
    print(f"seed 32: {len(sagas)} of 2000 sagas exported")
    assert 140 <= len(sagas) <= 260
    assert len(spans) == 2 * len(sagas) and not any(kept for _, _, kept in spans)


@pytest.mark.parametrize("receiver", [("parentbased_traceidratio", "0.01", 100_000)], indirect=True)
def test_a_saga_that_goes_wrong_is_exported_whole_whatever_the_sampler_says(receiver: OtlpReceiver) -> None:
    """The router did not sample the trace (parent-based: neither does the shard). The saga that fails exports the
    spans held before its failure with their own times and status, then its later spans, all marked kept; the one that
    succeeds exports nothing and holds nothing afterwards."""
    rng = random.Random(7)
    ok = tracing.saga(kept_context(UNSAMPLED, rng), {"saga.id": "ok"})
    bad = tracing.saga(kept_context(UNSAMPLED, rng), {"saga.id": "bad"})
    for saga in (ok, bad):
        attempt(saga, "create_order")
    attempt(ok, "process_payment")
    attempt(bad, "process_payment", ok=False)
    ok.drop()
    bad.keep("COMPENSATING")
    with bad.span("saga COMPENSATING", {}):
        pass
    attempt(bad, "create_order")
    assert tracing._state["hold"].spans == 0 and len(tracing._state["hold"]) == 0
    spans = exported(receiver)
    assert sorted(spans) == sorted(
        [
            ("bad", "forward create_order", "COMPENSATING"),
            ("bad", "forward process_payment", "COMPENSATING"),
            ("bad", "saga COMPENSATING", "COMPENSATING"),
            ("bad", "forward create_order", "COMPENSATING"),
        ]
    )
    failed = next(s for s in receiver.spans if s.name == "forward process_payment")
    assert failed.attributes["rpc.grpc.status_code"] == 9 and failed.status_code == StatusCode.ERROR.value
    assert failed.status_message == "FAILED_PRECONDITION"
    assert failed.end_ns > failed.start_ns
    assert len({s.trace_id for s in receiver.spans}) == 1


@pytest.mark.parametrize("receiver", [("parentbased_traceidratio", "0.01", 5)], indirect=True)
def test_the_held_spans_are_bounded_and_dropped_a_saga_at_a_time(receiver: OtlpReceiver) -> None:
    """At most 5 records held: the sixth drops the oldest saga's records whole, and that saga exports nothing, even
    when it fails later (a trace is exported or dropped whole); the others are unaffected."""
    rng = random.Random(11)
    hold = tracing._state["hold"]
    first = tracing.saga(kept_context(UNSAMPLED, rng), {"saga.id": "first"})
    second = tracing.saga(kept_context(UNSAMPLED, rng), {"saga.id": "second"})
    for step in ("create_order", "reserve_inventory", "process_payment"):
        attempt(first, step)
    attempt(second, "create_order")
    attempt(second, "reserve_inventory")
    assert (hold.spans, hold.dropped_sagas) == (5, 0)
    attempt(second, "process_payment")
    assert (hold.spans, hold.dropped_sagas, len(hold)) == (3, 1, 1)
    first.keep("FAILED")
    attempt(first, "create_order")
    second.keep("FAILED")
    assert hold.spans == 0
    spans = exported(receiver)
    assert sorted(spans) == [
        ("second", f"forward {s}", "FAILED") for s in sorted(("create_order", "reserve_inventory", "process_payment"))
    ]


@pytest.mark.parametrize("receiver", [("parentbased_traceidratio", "0.01", 100_000)], indirect=True)
def test_a_sampled_saga_is_exported_as_it_is(receiver: OtlpReceiver) -> None:
    """The router sampled the trace: spans are made at once (nothing held) and a failure marks nothing."""
    saga = tracing.saga(kept_context(SAMPLED, random.Random(3)), {"saga.id": "s"})
    attempt(saga, "create_order", ok=False)
    assert tracing._state["hold"].spans == 0
    saga.keep("FAILED")
    with saga.span("saga FAILED", {}) as span:
        span.set_status(Status(StatusCode.ERROR, "FAILED"))
    assert sorted(exported(receiver)) == [("s", "forward create_order", None), ("s", "saga FAILED", None)]


@pytest.mark.parametrize("receiver", [("parentbased_traceidratio", "0.01", 100_000)], indirect=True)
def test_the_summary_fields_are_on_the_first_and_the_state_spans_only(receiver: OtlpReceiver) -> None:
    """fields go on every span, summary on the saga's first span and its `saga <state>` spans; a saga that succeeds
    under the call waiting for it makes no state span (sampled or not, not even a record: nothing held afterwards),
    and a failed one's state spans carry the summary too."""
    rng = random.Random(5)
    summary = {"saga.type": "order", "saga.shard": "shard-1"}
    sampled = tracing.saga(kept_context(SAMPLED, rng), {"saga.id": "sampled"}, summary=summary)
    dropped = tracing.saga(kept_context(UNSAMPLED, rng), {"saga.id": "dropped"}, summary=summary)
    failed = tracing.saga(kept_context(UNSAMPLED, rng), {"saga.id": "failed"}, summary=summary)
    for saga in (sampled, dropped, failed):
        saga.closes_caller = True  # each created by a PlaceOrder that waits for it
        attempt(saga, "create_order")
        attempt(saga, "reserve_inventory")
    sampled.drop()
    sampled.moved("SUCCEEDED")
    dropped.drop()
    dropped.moved("SUCCEEDED")
    failed.keep("FAILED")
    failed.moved("FAILED")
    assert tracing._state["hold"].spans == 0
    tracing.shutdown()
    by_name = {(s.attributes["saga.id"], s.name): s.attributes for s in receiver.spans}
    assert sorted(by_name) == [
        ("failed", "forward create_order"),
        ("failed", "forward reserve_inventory"),
        ("failed", "saga FAILED"),
        ("sampled", "forward create_order"),
        ("sampled", "forward reserve_inventory"),
    ]
    for (_, name), attributes in by_name.items():
        summarised = name.startswith("saga ") or name == "forward create_order"
        assert ("saga.type" in attributes, "saga.shard" in attributes) == (summarised, summarised), (name, attributes)
    assert by_name[("failed", "saga FAILED")]["saga.state"] == "FAILED"
    assert by_name[("failed", "saga FAILED")][KEPT] == "FAILED"


@pytest.mark.parametrize("receiver", [("parentbased_traceidratio", "0.01", 100_000)], indirect=True)
def test_a_success_has_a_state_span_unless_it_ends_under_the_call_that_waited_for_it(receiver: OtlpReceiver) -> None:
    """closes_caller (set by the shard for a saga whose creating call waits for it): its success makes no state span,
    the caller's span says it. A saga resumed (or answered early: closes_caller False) and a kept one that then
    succeeds (a dead letter retried past its pivot) end with `saga SUCCEEDED`."""
    rng = random.Random(6)
    waited, resumed, kept = (
        tracing.saga(kept_context(SAMPLED if i < 2 else UNSAMPLED, rng), {"saga.id": n})
        for i, n in enumerate(("waited", "resumed", "kept"))
    )
    waited.closes_caller = True
    kept.closes_caller = True
    for saga in (waited, resumed, kept):
        attempt(saga, "create_order")
    kept.keep("DEAD_LETTERED")
    kept.moved("DEAD_LETTERED")
    for saga in (waited, resumed, kept):
        saga.drop()
        saga.moved("SUCCEEDED")
    states = sorted((saga_id, name) for saga_id, name, _ in exported(receiver) if name.startswith("saga "))
    assert states == [("kept", "saga DEAD_LETTERED"), ("kept", "saga SUCCEEDED"), ("resumed", "saga SUCCEEDED")]


@pytest.mark.parametrize("receiver", [("parentbased_always_on", "", 100_000)], indirect=True)
def test_an_exception_leaving_a_saga_span_marks_it_in_every_mode_and_the_context_is_restored(
    receiver: OtlpReceiver,
) -> None:
    """Exported, held and dropped spans alike: the exception goes on (CancelledError too), the span (or the held
    record) is an error named by its type, and the context current before the block is current again."""
    import asyncio

    from opentelemetry import context as otel_context

    rng = random.Random(5)
    before = otel_context.get_current()
    exporting = tracing.saga(kept_context(SAMPLED, rng), {"saga.id": "exporting"})
    holding = tracing.saga(kept_context(UNSAMPLED, rng), {"saga.id": "holding"})
    dropping = tracing.saga(kept_context(UNSAMPLED, rng), {"saga.id": "dropping"})
    dropping.drop()
    for saga, error in ((exporting, ValueError("boom")), (holding, asyncio.CancelledError()), (dropping, KeyError())):
        with pytest.raises(type(error)):
            with saga.span("forward create_order", {"saga.step": "create_order"}, client=True):
                assert otel_context.get_current() is not before
                raise error
        assert otel_context.get_current() is before
    assert holding.held[0].status.status_code is StatusCode.ERROR
    assert holding.held[0].status.description == "CancelledError" and holding.held[0].end_ns
    holding.keep("FAILED")  # its held record becomes a span, with the error
    tracing.shutdown()  # flushes the batch processor
    spans = {s.attributes["saga.id"]: s for s in receiver.spans}
    assert set(spans) == {"exporting", "holding"}  # a dropped saga's spans are not recorded
    assert spans["exporting"].status_message == "ValueError: boom" and spans["exporting"].status_code == 2
    assert spans["holding"].status_message == "CancelledError" and spans["holding"].attributes[KEPT] == "FAILED"
