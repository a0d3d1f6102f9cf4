"""common.auth: who a caller is and what they may call. Pure rules first (real PyJWT tokens, real key files), then the
interceptor on a real gRPC server on 127.0.0.1 (the peer certificate's identities come from an injected function
here; the TLS tests in tests/security give them from real certificates)."""

from __future__ import annotations

import hashlib
import time
from collections.abc import AsyncIterator
from pathlib import Path
from typing import Any

import grpc
import jwt
import pytest
from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.asymmetric import ec
from grpc_health.v1 import health, health_pb2, health_pb2_grpc

from common.auth import (
    AuthConfigError,
    Authenticator,
    AuthError,
    AuthInterceptor,
    AuthPolicy,
    JwtSettings,
    Principal,
    Role,
    StaticToken,
    current_principal,
    forwarded_metadata,
    load_policy,
    strip_claimed,
)

ROUTER = "spiffe://saga/router"
SHARD = "spiffe://saga/shard-1"
PLACE = "/saga.v1.SagaCoordinator/PlaceOrder"
GET = "/saga.v1.SagaCoordinator/GetSaga"
RETRY = "/saga.v1.SagaAdmin/RetryDeadLetter"


def _es256(tmp_path: Path) -> tuple[ec.EllipticCurvePrivateKey, Path]:
    key = ec.generate_private_key(ec.SECP256R1())
    pem = key.public_key().public_bytes(serialization.Encoding.PEM, serialization.PublicFormat.SubjectPublicKeyInfo)
    path = tmp_path / "jwt.pem"
    path.write_bytes(pem)
    return key, path


def _token(key: Any, sub: str, roles: list[str], exp_s: float = 300, alg: str = "ES256", **claims: Any) -> str:
    payload = {"sub": sub, "roles": roles, "exp": int(time.time() + exp_s), **claims}
    return jwt.encode(payload, key, algorithm=alg)


def _policy(tmp_path: Path) -> tuple[AuthPolicy, ec.EllipticCurvePrivateKey]:
    key, path = _es256(tmp_path)
    policy = AuthPolicy(
        identities={ROUTER: frozenset({Role.ROUTER}), SHARD: frozenset({Role.COORDINATOR})},
        tokens=(StaticToken("ci-bot", hashlib.sha256(b"s3cret-token").hexdigest(), frozenset({Role.CLIENT})),),
        jwt=JwtSettings(str(path), algorithms=("ES256",), audience="saga"),
    )
    return policy, key


def test_jwt_static_token_and_certificate_identify_callers(tmp_path: Path) -> None:
    policy, key = _policy(tmp_path)
    auth = Authenticator(policy)
    alice = auth.authenticate({"authorization": f"Bearer {_token(key, 'alice', ['operator'], aud='saga')}"}, [])
    assert alice == Principal("alice", frozenset({Role.OPERATOR}), "jwt")
    assert auth.authenticate({"authorization": "Bearer s3cret-token"}, []).name == "ci-bot"
    assert auth.authenticate({}, [ROUTER]) == Principal(ROUTER, frozenset({Role.ROUTER}), "certificate")
    auth.authorize(alice, RETRY)
    with pytest.raises(AuthError) as denied:
        auth.authorize(alice, PLACE)
    assert denied.value.code is grpc.StatusCode.PERMISSION_DENIED and denied.value.reason == "wrong_role"


def test_a_token_cannot_claim_a_process_role(tmp_path: Path) -> None:
    """router and coordinator name processes, granted by their certificates only: a token claiming them (a JWT, or a
    static token listed with them) carries only the person roles it also names."""
    key, path = _es256(tmp_path)
    policy = AuthPolicy(
        tokens=(StaticToken("bot", hashlib.sha256(b"bot-token").hexdigest(), frozenset({Role.ROUTER, Role.CLIENT})),),
        jwt=JwtSettings(str(path), algorithms=("ES256",), audience="saga"),
    )
    auth = Authenticator(policy)
    mallory = auth.authenticate(
        {"authorization": f"Bearer {_token(key, 'm', ['router', 'coordinator'], aud='saga')}"}, []
    )
    assert mallory.roles == frozenset()
    with pytest.raises(AuthError) as denied:
        auth.authorize(mallory, GET)
    assert denied.value.code is grpc.StatusCode.PERMISSION_DENIED
    assert auth.authenticate({"authorization": "Bearer bot-token"}, []).roles == frozenset({Role.CLIENT})


@pytest.mark.parametrize(
    ("make", "reason"),
    [
        (lambda key, other: "", "no_credentials"),
        (lambda key, other: _token(key, "bob", ["client"], exp_s=-600, aud="saga"), "expired_token"),
        (lambda key, other: _token(other, "bob", ["client"], aud="saga"), "bad_token"),  # signed by another key
        (lambda key, other: _token(key, "bob", ["client"], aud="other"), "bad_token"),
        (lambda key, other: _token(key, "bob", ["client"], aud="saga")[:-5], "bad_token"),  # truncated
        (
            lambda key, other: _token(
                b"guess-a-shared-secret-of-32-bytes!!", "bob", ["client"], alg="HS256", aud="saga"
            ),
            "bad_token",
        ),
        (lambda key, other: "not-a-token", "bad_token"),
    ],
)
def test_bad_credentials_are_unauthenticated_and_never_echoed(tmp_path: Path, make: Any, reason: str) -> None:
    policy, key = _policy(tmp_path)
    token = make(key, ec.generate_private_key(ec.SECP256R1()))
    metadata = {"authorization": f"Bearer {token}"} if token else {}
    with pytest.raises(AuthError) as refused:
        Authenticator(policy).check(PLACE, metadata, [])
    assert refused.value.code is grpc.StatusCode.UNAUTHENTICATED and refused.value.reason == reason
    assert not token or token not in refused.value.message


def test_only_the_router_may_speak_for_someone_else(tmp_path: Path) -> None:
    policy, _ = _policy(tmp_path)
    auth = Authenticator(policy)
    alice = Principal("alice", frozenset({Role.OPERATOR}), "jwt")
    metadata = dict(forwarded_metadata(alice))
    assert auth.authenticate(metadata, [ROUTER]) == Principal("alice", frozenset({Role.OPERATOR}), "router")
    # The same claim from a shard's certificate (or no certificate) is ignored: the peer is who it is.
    assert auth.authenticate(metadata, [SHARD]).name == SHARD
    with pytest.raises(AuthError):
        auth.authenticate({**metadata, "x-operator": "mallory"}, [])
    assert strip_claimed([("x-operator", "m"), ("x-user", "m"), ("authorization", "t"), ("a", "b")]) == [("a", "b")]


def test_method_table_and_public_methods() -> None:
    policy = AuthPolicy()
    assert policy.roles_for_method("/grpc.health.v1.Health/Check") == frozenset()
    assert policy.roles_for_method(PLACE) == frozenset({Role.CLIENT})
    assert Role.ROUTER in (policy.roles_for_method(GET) or ())
    assert policy.roles_for_method("/shop.v1.PaymentService/ChargePayment") == frozenset({Role.COORDINATOR})
    assert policy.roles_for_method("/evil.v1.X/Y") is None
    with pytest.raises(AuthError) as e:
        Authenticator(policy).authorize(Principal("p", frozenset(Role), "jwt"), "/evil.v1.X/Y")
    assert e.value.code is grpc.StatusCode.PERMISSION_DENIED


def test_jwt_key_file_rotation_is_picked_up(tmp_path: Path) -> None:
    policy, old = _policy(tmp_path)
    auth = Authenticator(policy)
    assert auth.authenticate({"authorization": f"Bearer {_token(old, 'a', ['client'], aud='saga')}"}, []).name == "a"
    new, _ = _es256(tmp_path)  # rewrites jwt.pem with a new key
    with pytest.raises(AuthError):
        auth.authenticate({"authorization": f"Bearer {_token(old, 'a', ['client'], aud='saga')}"}, [])
    assert auth.authenticate({"authorization": f"Bearer {_token(new, 'b', ['client'], aud='saga')}"}, []).name == "b"


def test_policy_file(tmp_path: Path) -> None:
    path = tmp_path / "auth.toml"
    path.write_text(
        f"""
[[identity]]
san = "{ROUTER}"
roles = ["router"]
[[token]]
name = "ops"
sha256 = "{hashlib.sha256(b"t").hexdigest()}"
roles = ["operator"]
[jwt]
key_file = "/etc/saga/jwt.pem"
algorithms = ["ES256"]
"""
    )
    policy = load_policy(path)
    assert policy.identities[ROUTER] == frozenset({Role.ROUTER})
    assert policy.tokens[0].name == "ops" and policy.jwt is not None and policy.jwt.algorithms == ("ES256",)
    path.write_text('[[identity]]\nsan = "x"\nroles = ["superuser"]\n')
    with pytest.raises(AuthConfigError, match="unknown role 'superuser'"):
        load_policy(path)
    path.write_text('[[token]]\nname = "x"\nsha256 = "plaintext-token"\nroles = ["client"]\n')
    with pytest.raises(AuthConfigError, match="64 hex digits"):
        load_policy(path)


# ---- the interceptor on a real server ---------------------------------------------------------------------------


class _Health(health.aio.HealthServicer):
    """A servicer whose Check also reports who the interceptor said was calling."""

    async def Check(self, request: Any, context: Any) -> Any:
        principal = current_principal()
        await context.send_initial_metadata((("who", principal.name if principal else "-"),))
        return health_pb2.HealthCheckResponse(status=health_pb2.HealthCheckResponse.SERVING)


@pytest.fixture
async def guarded(tmp_path: Path) -> AsyncIterator[tuple[str, list[tuple[str, str]], ec.EllipticCurvePrivateKey]]:
    policy, key = _policy(tmp_path)
    # Health is public; to exercise the guard, this test server treats it as an operator-only method.
    policy = AuthPolicy(
        identities=policy.identities,
        tokens=policy.tokens,
        jwt=policy.jwt,
        method_roles=(("/grpc.health.v1.Health/", frozenset({Role.OPERATOR})),),
    )
    denied: list[tuple[str, str]] = []
    interceptor = AuthInterceptor(Authenticator(policy), on_denied=lambda code, reason: denied.append((code, reason)))
    server = grpc.aio.server(interceptors=[interceptor])
    health_pb2_grpc.add_HealthServicer_to_server(_Health(), server)
    port = server.add_insecure_port("127.0.0.1:0")
    await server.start()
    try:
        yield f"127.0.0.1:{port}", denied, key
    finally:
        await server.stop(0)


async def test_interceptor_admits_refuses_and_counts(
    guarded: tuple[str, list[tuple[str, str]], ec.EllipticCurvePrivateKey], monkeypatch: pytest.MonkeyPatch
) -> None:
    address, denied, key = guarded
    monkeypatch.setattr("common.auth.PUBLIC_PREFIXES", ("/nothing-public/",))  # health is guarded on this server
    async with grpc.aio.insecure_channel(address) as channel:
        stub = health_pb2_grpc.HealthStub(channel)
        call = stub.Check(
            health_pb2.HealthCheckRequest(),
            metadata=(("authorization", f"Bearer {_token(key, 'alice', ['operator'], aud='saga')}"),),
            timeout=5,
        )
        await call
        assert dict(await call.initial_metadata())["who"] == "alice"
        with pytest.raises(grpc.aio.AioRpcError) as e:
            await stub.Check(health_pb2.HealthCheckRequest(), metadata=(("x-operator", "alice"),), timeout=5)
        assert e.value.code() is grpc.StatusCode.UNAUTHENTICATED
        client = _token(key, "bob", ["client"], aud="saga")
        with pytest.raises(grpc.aio.AioRpcError) as e:
            await stub.Check(health_pb2.HealthCheckRequest(), metadata=(("authorization", f"Bearer {client}"),))
        assert e.value.code() is grpc.StatusCode.PERMISSION_DENIED and client not in (e.value.details() or "")
    assert denied == [("UNAUTHENTICATED", "no_credentials"), ("PERMISSION_DENIED", "wrong_role")]


def test_auth_may_be_off_only_in_plaintext_on_loopback() -> None:
    from common.auth import resolve_policy
    from common.tls import PlaintextRefused, TlsFiles

    assert resolve_policy(None, "127.0.0.1:0", TlsFiles(), "test").development
    tls = TlsFiles(cert=Path("c.pem"), key=Path("k.pem"), ca=Path("ca.pem"))
    for listen, files in (("127.0.0.1:0", tls), ("0.0.0.0:0", TlsFiles(insecure=True))):
        with pytest.raises(AuthConfigError, match="no --auth-policy"):
            resolve_policy(None, listen, files, "test")
        with pytest.raises(AuthConfigError):
            resolve_policy(AuthPolicy.open_for_development(), listen, files, "test")
    with pytest.raises(PlaintextRefused):  # the plaintext refusal is named first, as listen() would
        resolve_policy(None, "0.0.0.0:0", TlsFiles(), "test")
    given = AuthPolicy(identities={ROUTER: frozenset({Role.ROUTER})})
    assert resolve_policy(given, "0.0.0.0:0", tls, "test") is given


def test_a_trailing_star_matches_identities_by_prefix() -> None:
    auth = Authenticator(
        AuthPolicy(
            identities={
                "spiffe://saga/shard-*": frozenset({Role.COORDINATOR}),
                "spiffe://saga/shard-9": frozenset({Role.OPERATOR}),
            }
        )
    )
    assert auth.authenticate({}, [SHARD]).roles == {Role.COORDINATOR}
    assert auth.authenticate({}, ["spiffe://saga/shard-9"]).roles == {Role.OPERATOR}
    with pytest.raises(AuthError):
        auth.authenticate({}, ["spiffe://saga/router"])


def test_denials_are_counted_by_code_and_reason() -> None:
    from prometheus_client import CollectorRegistry

    from common.auth import denied_counter

    registry = CollectorRegistry()
    on_denied = denied_counter(registry, "saga_test_auth_denied")
    on_denied("UNAUTHENTICATED", "no_credentials")
    on_denied("UNAUTHENTICATED", "no_credentials")
    labels = {"code": "UNAUTHENTICATED", "reason": "no_credentials"}
    assert registry.get_sample_value("saga_test_auth_denied_total", labels) == 2
