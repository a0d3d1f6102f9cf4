"""Scenario 12's fuzzer: hypothesis draws saga.v1 requests (and raw bytes) and sends them through the router with a
blocking gRPC client (hypothesis drives a plain function; the scenario runs it in a thread).

Allowed answers: OK, INVALID_ARGUMENT, ALREADY_EXISTS, FAILED_PRECONDITION, RESOURCE_EXHAUSTED, and NOT_FOUND for the
calls that name an existing order (GetSaga, RetryDeadLetter, ResolveDeadLetter: "no such order" is their answer).
Never UNKNOWN or INTERNAL (nor anything else). A PlaceOrder refused with INVALID_ARGUMENT must leave nothing behind: a
GetSaga for its order id answers NOT_FOUND (or INVALID_ARGUMENT), unless an earlier example placed that order.

run_credential_fuzz does the same with credentials, against a TLS+auth system (deploy.local.LocalSystem(tls=True)):
hypothesis draws bearer tokens (random text, truncated or bit-flipped real ones, expired, signed by another key, for
another audience, alg "none", roles nobody has) and client certificates from another CA. Allowed answers:
UNAUTHENTICATED, PERMISSION_DENIED, INVALID_ARGUMENT, or a failed handshake (UNAVAILABLE) for a foreign certificate;
and nothing written: no saga for any of those order ids on any shard (asked as an operator afterwards).
"""

from __future__ import annotations

import time
from collections import Counter
from collections.abc import Callable

import grpc
import jwt
from hypothesis import HealthCheck, given, seed, settings
from hypothesis import strategies as st

from common.tls import TlsFiles, sync_channel
from protos.saga.v1 import saga_pb2, saga_pb2_grpc

OK_CODES = frozenset(
    {
        grpc.StatusCode.OK,
        grpc.StatusCode.INVALID_ARGUMENT,
        grpc.StatusCode.ALREADY_EXISTS,
        grpc.StatusCode.FAILED_PRECONDITION,
        grpc.StatusCode.RESOURCE_EXHAUSTED,
    }
)
LOOKUP_CODES = OK_CODES | {grpc.StatusCode.NOT_FOUND}

INT32 = st.integers(-(2**31), 2**31 - 1)
INT64 = st.integers(-(2**63), 2**63 - 1)
HUGE = st.integers(10_000, 200_000).map(lambda n: "x" * n)
TEXT = st.one_of(st.text(max_size=40), st.text(alphabet=st.characters(codec="utf-8"), max_size=300), HUGE)
ORDER_ID = st.one_of(st.text(min_size=1, max_size=20), TEXT, st.just(""))
TOKEN = st.one_of(st.sampled_from(["tok_ok", "tok_declined", "tok_slow"]), TEXT)

ITEMS = st.one_of(
    st.lists(st.builds(saga_pb2.Item, item_id=TEXT, quantity=INT32), max_size=5),
    st.integers(0, 10_000).map(lambda n: [saga_pb2.Item(item_id=f"sku-{i}", quantity=1) for i in range(n)]),
)
# Near-valid requests too, so that many examples pass validation and exercise acceptance, not only rejection.
FAIR_ID = st.from_regex(r"f-[a-z0-9]{1,12}", fullmatch=True)
FAIR_ITEMS = st.lists(
    st.builds(saga_pb2.Item, item_id=st.sampled_from(["sku-a", "sku-b", "sold-out-x"]), quantity=st.integers(1, 9)),
    min_size=1,
    max_size=3,
)
FAIR_PLACE = st.builds(
    saga_pb2.PlaceOrderRequest,
    order_id=FAIR_ID,
    user_id=st.just("u-1"),
    items=FAIR_ITEMS,
    payment_info=st.builds(
        saga_pb2.PaymentInfo,
        payment_token=st.sampled_from(["tok_ok", "tok_declined"]),
        amount_cents=st.integers(1, 10**6),
        currency=st.just("EUR"),
    ),
    no_wait=st.just(True),
    ttl_ms=st.one_of(st.none(), st.integers(1, 60_000)),
)
WILD_PLACE = st.builds(
    saga_pb2.PlaceOrderRequest,
    order_id=ORDER_ID,
    user_id=TEXT,
    items=ITEMS,
    payment_info=st.builds(saga_pb2.PaymentInfo, payment_token=TOKEN, amount_cents=INT64, currency=TEXT),
    # Accepted orders answer at once (they run on; the scenario waits for them before checking invariants).
    no_wait=st.just(True),
    ttl_ms=st.one_of(st.none(), INT64),
)
PLACE = st.one_of(FAIR_PLACE, WILD_PLACE)


def _code(fn: object, request: object) -> grpc.StatusCode:
    try:
        fn(request, timeout=30)  # type: ignore[operator]
    except grpc.RpcError as e:
        return e.code()  # type: ignore[no-any-return,attr-defined]
    return grpc.StatusCode.OK


def run_fuzz(router: str, seed_value: int, examples: int) -> tuple[list[str], Counter[str]]:
    """Returns (violations, answers by call:code)."""
    found: list[str] = []
    counts: Counter[str] = Counter()
    placed: set[str] = set()
    channel = grpc.insecure_channel(
        router, options=[("grpc.max_send_message_length", 64 << 20), ("grpc.max_receive_message_length", 64 << 20)]
    )
    saga = saga_pb2_grpc.SagaCoordinatorStub(channel)
    admin = saga_pb2_grpc.SagaAdminStub(channel)
    raw = channel.unary_unary("/saga.v1.SagaCoordinator/PlaceOrder")  # bytes in, bytes out

    def expect(call: str, code: grpc.StatusCode, allowed: frozenset[grpc.StatusCode], what: str) -> None:
        counts[f"{call}:{code.name}"] += 1
        if code not in allowed:
            found.append(f"{call} answered {code.name} to {what[:160]}")

    fuzz_settings = settings(
        max_examples=examples,
        deadline=None,
        database=None,
        suppress_health_check=list(HealthCheck),
        derandomize=False,
    )

    @seed(seed_value)
    @fuzz_settings
    @given(
        request=PLACE,
        junk=st.binary(max_size=2_000),
        retry=st.builds(saga_pb2.RetryDeadLetterRequest, order_id=ORDER_ID, all=st.booleans(), step=INT32, reason=TEXT),
        resolve=st.builds(saga_pb2.ResolveDeadLetterRequest, order_id=ORDER_ID, reason=TEXT),
        which=st.integers(0, 3),
    )
    def one(
        request: saga_pb2.PlaceOrderRequest,
        junk: bytes,
        retry: saga_pb2.RetryDeadLetterRequest,
        resolve: saga_pb2.ResolveDeadLetterRequest,
        which: int,
    ) -> None:
        if which <= 1:
            code = _code(saga.PlaceOrder, request)
            expect("PlaceOrder", code, OK_CODES, repr(request.order_id))
            if code is grpc.StatusCode.OK:
                placed.add(request.order_id)
            elif code is grpc.StatusCode.INVALID_ARGUMENT and request.order_id not in placed:
                after = _code(saga.GetSaga, saga_pb2.GetSagaRequest(order_id=request.order_id))
                if after not in (grpc.StatusCode.NOT_FOUND, grpc.StatusCode.INVALID_ARGUMENT):
                    found.append(f"rejected PlaceOrder {request.order_id[:40]!r} left a saga (GetSaga: {after.name})")
        elif which == 2:
            expect("raw bytes", _code(raw, junk), OK_CODES, repr(junk[:40]))
        elif retry.all or len(retry.order_id) % 2:
            expect("RetryDeadLetter", _code(admin.RetryDeadLetter, retry), LOOKUP_CODES, repr(retry.order_id))
        else:
            expect("ResolveDeadLetter", _code(admin.ResolveDeadLetter, resolve), LOOKUP_CODES, repr(resolve.order_id))
        expect(
            "GetSaga",
            _code(saga.GetSaga, saga_pb2.GetSagaRequest(order_id=request.order_id)),
            LOOKUP_CODES,
            repr(request.order_id),
        )

    try:
        one()
    finally:
        channel.close()
    return found, counts


REFUSED = frozenset(
    {grpc.StatusCode.UNAUTHENTICATED, grpc.StatusCode.PERMISSION_DENIED, grpc.StatusCode.INVALID_ARGUMENT}
)
HANDSHAKE_FAILED = frozenset({grpc.StatusCode.UNAVAILABLE})


def _claims(sub: str, roles: list[str], exp_s: int, aud: str) -> dict[str, object]:
    return {"sub": sub, "roles": roles, "aud": aud, "iss": "deploy.local", "exp": int(time.time()) + exp_s}


def run_credential_fuzz(
    router: str,
    anonymous: TlsFiles,
    foreign: TlsFiles,
    mint: Callable[[list[str], int, str], str],
    foreign_key: object,
    operator: TlsFiles,
    seed_value: int,
    examples: int,
) -> tuple[list[str], Counter[str]]:
    """Returns (violations, answers by credential kind:code). anonymous: a certificate of the system's CA with no role
    (carries the connection; the token is the credential under test); foreign: one from another CA; mint(roles,
    ttl_s, audience): a token signed with the router's real key; foreign_key: a private key the router does not know;
    operator: who checks afterwards that nothing was written."""
    found: list[str] = []
    counts: Counter[str] = Counter()
    tried: set[str] = set()
    channel = sync_channel(router, anonymous)
    foreign_channel = sync_channel(router, foreign)
    stubs = {
        "anonymous": (saga_pb2_grpc.SagaCoordinatorStub(channel), saga_pb2_grpc.SagaAdminStub(channel)),
        "foreign": (saga_pb2_grpc.SagaCoordinatorStub(foreign_channel), saga_pb2_grpc.SagaAdminStub(foreign_channel)),
    }
    good = mint(["client"], 600, "saga")
    roles = st.lists(st.sampled_from(["client", "operator", "router", "coordinator", "root", ""]), max_size=3)
    tokens = st.one_of(
        st.text(max_size=200).map(lambda t: ("random", t)),
        st.binary(max_size=120).map(lambda b: ("random", b.hex())),
        st.integers(1, len(good) - 1).map(lambda n: ("truncated", good[:n])),
        st.integers(0, len(good) - 2).map(  # not the last character: its low bits are padding
            lambda i: ("flipped", good[:i] + ("B" if good[i] == "A" else "A") + good[i + 1 :])
        ),
        st.integers(60, 10**6).map(lambda s: ("expired", mint(["operator", "client"], -s, "saga"))),
        roles.map(lambda r: ("foreign key", jwt.encode(_claims("fuzz", r, 600, "saga"), foreign_key, "ES256"))),  # type: ignore[arg-type]
        st.text(max_size=20).map(lambda a: ("audience", mint(["operator", "client"], 600, a or "x"))),
        roles.map(lambda r: ("alg none", jwt.encode(_claims("fuzz", r, 600, "saga"), None, "none"))),  # type: ignore[arg-type]
        st.sampled_from(["root", "router", "coordinator", ""]).map(lambda r: ("no such role", mint([r], 600, "saga"))),
    )
    schemes = st.sampled_from(["Bearer ", "bearer ", "Basic ", "", "Bearer  "])

    fuzz_settings = settings(
        max_examples=examples, deadline=None, database=None, suppress_health_check=list(HealthCheck)
    )

    @seed(seed_value)
    @fuzz_settings
    @given(
        token=tokens,
        scheme=schemes,
        order_id=FAIR_ID,
        which=st.integers(0, 3),
        via=st.sampled_from(["anonymous", "anonymous", "anonymous", "foreign"]),
    )
    def one(token: tuple[str, str], scheme: str, order_id: str, which: int, via: str) -> None:
        kind, value = token
        order_id = f"cred-{order_id}"
        header = f"{scheme}{value}"
        metadata = (("authorization", header),) if header.isprintable() and header.isascii() else ()
        saga, admin = stubs[via]
        request: object
        if which == 0:
            call, request, name = saga.PlaceOrder, _place(order_id), "PlaceOrder"
        elif which == 1:
            call, request, name = saga.GetSaga, saga_pb2.GetSagaRequest(order_id=order_id), "GetSaga"
        elif which == 2:
            call, request, name = admin.RetryDeadLetter, saga_pb2.RetryDeadLetterRequest(all=True), "RetryDeadLetter"
        else:
            resolve = saga_pb2.ResolveDeadLetterRequest(order_id=order_id, reason="fuzz")
            call, request, name = admin.ResolveDeadLetter, resolve, "ResolveDeadLetter"
        tried.add(order_id)
        try:
            call(request, metadata=metadata, timeout=30)
            code = grpc.StatusCode.OK
        except grpc.RpcError as e:
            code = e.code()
        label = "foreign certificate" if via == "foreign" else kind
        counts[f"{label}:{code.name}"] += 1
        allowed = HANDSHAKE_FAILED if via == "foreign" else REFUSED
        if code not in allowed:
            found.append(f"{name} with {label} credentials answered {code.name} ({header[:40]!r})")

    try:
        one()
    finally:
        channel.close()
        foreign_channel.close()
    with sync_channel(router, operator) as checker:
        get = saga_pb2_grpc.SagaCoordinatorStub(checker).GetSaga
        for order_id in sorted(tried):
            try:
                get(saga_pb2.GetSagaRequest(order_id=order_id), timeout=30)
                found.append(f"refused credentials left a saga for {order_id!r}")
            except grpc.RpcError as e:
                if e.code() is not grpc.StatusCode.NOT_FOUND:
                    found.append(f"GetSaga {order_id!r} as operator answered {e.code().name}")
    return found, counts


def _place(order_id: str) -> saga_pb2.PlaceOrderRequest:
    return saga_pb2.PlaceOrderRequest(
        order_id=order_id,
        user_id="u-fuzz",
        items=[saga_pb2.Item(item_id="sku-a", quantity=1)],
        payment_info=saga_pb2.PaymentInfo(payment_token="tok_ok", amount_cents=100, currency="EUR"),
    )


__all__ = ["run_credential_fuzz", "run_fuzz"]
