"""Who is calling, and may they: authentication and authorisation for every gRPC server, in one interceptor.

A caller is identified by its client certificate (a URI or DNS SAN mapped to roles in the policy file) and/or a bearer
token in the `authorization` metadata: a JWT checked with PyJWT (keys from a PEM, JWKS or secret file, re-read when
it changes) or a static token whose SHA-256 is listed in the policy file. The token names the person or program; the
certificate names the process that connected. Roles:

    client      PlaceOrder, StartSaga, GetSaga, ListSagas, WatchSaga
    operator    the read calls, SagaAdmin (dead letters), StubControl (development stubs), RingService.GetRing
    router      the read calls, ListDeadLetters (for its dashboard), RingService, and it may speak for another
                principal (below)
    coordinator a shard, towards the four services

The router authenticates its caller once and forwards the verified principal to the shard in metadata
(x-saga-principal, x-saga-principal-roles). A server believes that metadata only from a peer whose certificate maps to
the router role; from anyone else it is ignored, as is a client-sent x-operator or x-user. Health and reflection are
open to everyone. Unauthenticated → UNAUTHENTICATED, wrong role → PERMISSION_DENIED, both before any handler runs,
both counted (on_denied), and no message or log line ever carries the credential.

Development mode (AuthPolicy.open_for_development): every caller is the principal "local-dev" with every role. The
servers allow it only while they listen in plaintext on loopback (the safe default of common.tls).
"""

from __future__ import annotations

import argparse
import contextvars
import enum
import hashlib
import json
import os
from collections.abc import Awaitable, Callable, Iterable, Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import grpc
import jwt
from loguru import logger
from prometheus_client import CollectorRegistry, Counter

from .grpc_server import stream_items
from .tls import TlsFiles, check_plaintext, is_loopback, peer_identities
from .tomlfile import read_toml

PRINCIPAL_KEY = "x-saga-principal"
ROLES_KEY = "x-saga-principal-roles"
# Metadata a client may send but no server believes from it: identity is established here, never claimed.
_CLAIMED_KEYS = frozenset({PRINCIPAL_KEY, ROLES_KEY, "x-operator", "x-user"})


class Role(enum.StrEnum):
    CLIENT = "client"
    OPERATOR = "operator"
    ROUTER = "router"
    COORDINATOR = "coordinator"


ALL_ROLES = frozenset(Role)
PERSON_ROLES = frozenset({Role.CLIENT, Role.OPERATOR})
"""The roles a bearer token may carry. router and coordinator name processes: only their certificates grant them
(a token claiming router could otherwise speak for others, and install rings on a shard)."""
_READERS = frozenset({Role.CLIENT, Role.OPERATOR, Role.ROUTER})

# Who may call what, by full method name or by service ("/pkg.Service/"); the first match wins, else denied.
DEFAULT_METHOD_ROLES: tuple[tuple[str, frozenset[Role]], ...] = (
    ("/saga.v1.SagaCoordinator/PlaceOrder", frozenset({Role.CLIENT})),
    ("/saga.v1.SagaCoordinator/StartSaga", frozenset({Role.CLIENT})),
    ("/saga.v1.SagaCoordinator/", _READERS),
    # Listing dead letters changes nothing: the router's dashboard shows them to its signed-in viewers.
    ("/saga.v1.SagaAdmin/ListDeadLetters", frozenset({Role.OPERATOR, Role.ROUTER})),
    ("/saga.v1.SagaAdmin/ListDefinitions", frozenset({Role.OPERATOR, Role.ROUTER})),
    ("/saga.v1.SagaAdmin/", frozenset({Role.OPERATOR})),
    ("/service_stubs.v1.StubControl/", frozenset({Role.OPERATOR})),
    # Ring epochs (coordinator.ring.ownership): routers install them; operators may look, and shards read their peers'
    # (a restored or fresh shard catches up with, or checks against, what its peers hold).
    ("/ring.v1.RingService/GetRing", frozenset({Role.ROUTER, Role.OPERATOR, Role.COORDINATOR})),
    ("/ring.v1.RingService/", frozenset({Role.ROUTER})),
    ("/shop.v1.", frozenset({Role.COORDINATOR})),
)
PUBLIC_PREFIXES = ("/grpc.health.v1.Health/", "/grpc.reflection.v1alpha.ServerReflection/", "/grpc.reflection.v1.")


class AuthError(Exception):
    """Refused: `code` is UNAUTHENTICATED or PERMISSION_DENIED, `reason` a bounded label for metrics."""

    def __init__(self, code: grpc.StatusCode, reason: str, message: str) -> None:
        super().__init__(message)
        self.code = code
        self.reason = reason
        self.message = message


class AuthConfigError(ValueError):
    """The policy file or a key file is missing or wrong; the message names it."""


@dataclass(frozen=True, slots=True)
class Principal:
    name: str
    roles: frozenset[Role]
    source: str
    """How it was established: certificate, jwt, token, router (forwarded), development."""


@dataclass(frozen=True, slots=True)
class StaticToken:
    name: str
    sha256: str
    roles: frozenset[Role]


@dataclass(frozen=True)
class JwtSettings:
    """Bearer JWTs: checked with PyJWT against the key file; `exp` and `sub` are required."""

    key_file: str
    """A PEM public key, a JWKS (JSON with "keys"), or a shared secret (HS*): re-read when the file changes."""
    algorithms: tuple[str, ...] = ("ES256", "RS256")
    """Accepted algorithms (never taken from the token itself)."""
    audience: str = ""
    """Required `aud`, if set."""
    issuer: str = ""
    """Required `iss`, if set."""
    roles_claim: str = "roles"
    """Claim listing the subject's roles."""
    leeway_s: int = 30
    """Clock skew tolerated on exp/nbf."""


@dataclass(frozen=True)
class AuthPolicy:
    """Who is who and may do what. Read from a TOML file by load_policy()."""

    identities: Mapping[str, frozenset[Role]] = field(default_factory=dict)
    """Certificate identity (URI or DNS SAN, e.g. spiffe://saga/router) -> roles; a trailing * matches by prefix
    (spiffe://saga/shard-*), an exact entry first."""
    tokens: tuple[StaticToken, ...] = ()
    """Static bearer tokens, by SHA-256 (hex) of the token: the file never holds a token itself."""
    jwt: JwtSettings | None = None
    method_roles: tuple[tuple[str, frozenset[Role]], ...] = DEFAULT_METHOD_ROLES
    development: bool = False
    """Everyone is local-dev with every role (plaintext loopback only)."""

    @classmethod
    def open_for_development(cls) -> AuthPolicy:
        return cls(development=True)

    def roles_for_method(self, method: str) -> frozenset[Role] | None:
        """The roles allowed to call `method`, frozenset() for anyone, None if no rule names it."""
        if method.startswith(PUBLIC_PREFIXES):
            return frozenset()
        for prefix, roles in self.method_roles:
            if method == prefix or (prefix.endswith(("/", ".")) and method.startswith(prefix)):
                return roles
        return None


def _roles(values: Iterable[object], where: str) -> frozenset[Role]:
    out = set()
    for value in values:
        try:
            out.add(Role(str(value)))
        except ValueError:
            known = ", ".join(r.value for r in Role)
            raise AuthConfigError(f"{where}: unknown role {value!r} (known: {known})") from None
    return frozenset(out)


def load_policy(path: str | os.PathLike[str]) -> AuthPolicy:
    """Reads the policy file:

    [[identity]]                      # client certificates
    san = "spiffe://saga/router"
    roles = ["router"]
    [[identity]]                      # a trailing * matches by prefix: every shard
    san = "spiffe://saga/shard-*"
    roles = ["coordinator"]
    [[token]]                         # static bearer tokens, by hash: sha256sum of the token
    name = "ci-bot"
    sha256 = "9f86d0..."
    roles = ["client"]
    [jwt]                             # optional
    key_file = "/etc/saga/jwt.pem"
    algorithms = ["ES256"]
    audience = "saga"
    """
    data = read_toml(path, what="auth policy", error=AuthConfigError)
    unknown = set(data) - {"identity", "token", "jwt"}
    if unknown:
        raise AuthConfigError(f"auth policy {path}: unknown table(s) {sorted(unknown)}")
    identities: dict[str, frozenset[Role]] = {}
    for i, entry in enumerate(data.get("identity", [])):
        san = str(entry.get("san", ""))
        if not san:
            raise AuthConfigError(f"auth policy {path}: identity[{i}].san is required")
        identities[san] = _roles(entry.get("roles", []), f"identity[{i}].roles")
    tokens = []
    for i, entry in enumerate(data.get("token", [])):
        digest = str(entry.get("sha256", "")).lower()
        if len(digest) != 64 or any(c not in "0123456789abcdef" for c in digest):
            raise AuthConfigError(f"auth policy {path}: token[{i}].sha256 must be 64 hex digits")
        name = str(entry.get("name", ""))
        if not name:
            raise AuthConfigError(f"auth policy {path}: token[{i}].name is required")
        tokens.append(StaticToken(name, digest, _roles(entry.get("roles", []), f"token[{i}].roles")))
    jwt_settings = None
    if "jwt" in data:
        table = dict(data["jwt"])
        if not table.get("key_file"):
            raise AuthConfigError(f"auth policy {path}: jwt.key_file is required")
        if "algorithms" in table:
            table["algorithms"] = tuple(str(a) for a in table["algorithms"])
        # A relative key file is relative to the policy file, as a [tls] table's paths are to theirs.
        table["key_file"] = str(Path(path).parent / Path(str(table["key_file"])).expanduser())
        try:
            jwt_settings = JwtSettings(**table)
        except TypeError as e:
            raise AuthConfigError(f"auth policy {path}: jwt: {e}") from None
    return AuthPolicy(identities=identities, tokens=tuple(tokens), jwt=jwt_settings)


class _JwtKeys:
    """The JWT verification key(s), re-read when the key file changes (rotation without restart)."""

    def __init__(self, settings: JwtSettings) -> None:
        self._settings = settings
        self._stamp: tuple[int, int] | None = None
        self._keys: Any = None

    def key_for(self, token: str) -> Any:
        path = Path(self._settings.key_file)
        try:
            st = path.stat()
        except OSError as e:
            raise AuthConfigError(f"jwt key file {path}: {e.strerror}") from None
        if self._stamp != (st.st_mtime_ns, st.st_size):
            raw = path.read_bytes()
            text = raw.strip()
            if text.startswith(b"{"):
                self._keys = jwt.PyJWKSet.from_json(text.decode())
            elif text.startswith(b"-----BEGIN"):
                self._keys = text
            else:
                self._keys = text  # a shared secret (HS256 and friends)
            self._stamp = (st.st_mtime_ns, st.st_size)
        if isinstance(self._keys, jwt.PyJWKSet):
            kid = jwt.get_unverified_header(token).get("kid")
            for key in self._keys.keys:
                if key.key_id == kid:
                    return key.key
            raise jwt.InvalidTokenError("no key for the token's kid")
        return self._keys


class Authenticator:
    """Turns what a call presents (metadata, the peer certificate's identities) into a Principal, or refuses."""

    def __init__(self, policy: AuthPolicy) -> None:
        self.policy = policy
        self._jwt_keys = _JwtKeys(policy.jwt) if policy.jwt else None
        self._token_hashes = {t.sha256: t for t in policy.tokens}
        # "spiffe://saga/shard-*": every shard of a StatefulSet or an autoscaled set; the longest prefix wins.
        self._san_prefixes = sorted(
            ((san[:-1], roles) for san, roles in policy.identities.items() if san.endswith("*")),
            key=lambda entry: -len(entry[0]),
        )

    def authenticate(self, metadata: Mapping[str, str], peer_identities: Sequence[str]) -> Principal:
        if self.policy.development:
            return Principal("local-dev", ALL_ROLES, "development")
        peer = self._peer(peer_identities)
        forwarded = metadata.get(PRINCIPAL_KEY)
        if forwarded and peer is not None and Role.ROUTER in peer.roles:
            roles = frozenset(Role(r) for r in metadata.get(ROLES_KEY, "").split(",") if r in Role.__members__.values())
            return Principal(forwarded[:128], roles, "router")
        authorization = metadata.get("authorization", "")
        if authorization:
            scheme, _, credential = authorization.partition(" ")
            if scheme.lower() != "bearer" or not credential.strip():
                raise AuthError(grpc.StatusCode.UNAUTHENTICATED, "bad_scheme", "authorization must be 'Bearer <token>'")
            return self._bearer(credential.strip())
        if peer is not None:
            return peer
        raise AuthError(
            grpc.StatusCode.UNAUTHENTICATED, "no_credentials", "no credentials: a client certificate or a bearer token"
        )

    def _peer(self, peer_identities: Sequence[str]) -> Principal | None:
        for identity in peer_identities:
            roles = self.policy.identities.get(identity)
            if roles is None:
                roles = next((r for prefix, r in self._san_prefixes if identity.startswith(prefix)), None)
            if roles is not None:
                return Principal(identity, roles, "certificate")
        return None

    def _bearer(self, token: str) -> Principal:
        # Looked up by its hash: the lookup's timing can only tell an attacker about hashes, never about a token.
        static = self._token_hashes.get(hashlib.sha256(token.encode()).hexdigest())
        if static is not None:
            return Principal(static.name, static.roles & PERSON_ROLES, "token")
        if self._jwt_keys is None or token.count(".") != 2:
            raise AuthError(grpc.StatusCode.UNAUTHENTICATED, "bad_token", "the bearer token is not valid")
        settings = self.policy.jwt
        assert settings is not None
        try:
            claims = jwt.decode(
                token,
                self._jwt_keys.key_for(token),
                algorithms=list(settings.algorithms),
                audience=settings.audience or None,
                issuer=settings.issuer or None,
                leeway=settings.leeway_s,
                options={"require": ["exp", "sub"], "verify_aud": bool(settings.audience)},
            )
        except jwt.ExpiredSignatureError:
            raise AuthError(grpc.StatusCode.UNAUTHENTICATED, "expired_token", "the bearer token has expired") from None
        except (jwt.PyJWTError, ValueError, json.JSONDecodeError):
            raise AuthError(grpc.StatusCode.UNAUTHENTICATED, "bad_token", "the bearer token is not valid") from None
        raw_roles = claims.get(settings.roles_claim, [])
        if isinstance(raw_roles, str):
            raw_roles = raw_roles.split()
        roles = frozenset(Role(r) for r in raw_roles if r in Role.__members__.values()) & PERSON_ROLES
        return Principal(str(claims["sub"])[:128], roles, "jwt")

    def authorize(self, principal: Principal, method: str) -> None:
        allowed = self.policy.roles_for_method(method)
        if allowed is None:
            raise AuthError(grpc.StatusCode.PERMISSION_DENIED, "unknown_method", f"{method} is not open to callers")
        if allowed and not (principal.roles & allowed):
            needed = " or ".join(sorted(r.value for r in allowed))
            raise AuthError(
                grpc.StatusCode.PERMISSION_DENIED,
                "wrong_role",
                f"{principal.name} may not call {method}: needs {needed}",
            )

    def check(self, method: str, metadata: Mapping[str, str], peer_identities: Sequence[str]) -> Principal | None:
        """Authenticates and authorises one call; None for a public method (health, reflection)."""
        allowed = self.policy.roles_for_method(method)
        if allowed is not None and not allowed:
            return None
        principal = self.authenticate(metadata, peer_identities)
        self.authorize(principal, method)
        return principal


_current: contextvars.ContextVar[Principal | None] = contextvars.ContextVar("saga_principal", default=None)


def current_principal() -> Principal | None:
    """The authenticated principal of the call being handled (None outside a call, or on a public method)."""
    return _current.get()


def forwarded_metadata(principal: Principal) -> tuple[tuple[str, str], ...]:
    """What the router adds to a call it forwards, so the shard knows on whose behalf it acts."""
    return ((PRINCIPAL_KEY, principal.name), (ROLES_KEY, ",".join(sorted(r.value for r in principal.roles))))


def strip_claimed(metadata: Iterable[tuple[str, Any]]) -> list[tuple[str, Any]]:
    """Metadata without what only an authenticated hop may assert (and without the caller's bearer token)."""
    return [(k, v) for k, v in metadata if k not in _CLAIMED_KEYS and k != "authorization"]


OnDenied = Callable[[str, str], None]
"""Called with (status code name, reason) for every refused call: the process counts it in its metrics."""


class AuthInterceptor(grpc.aio.ServerInterceptor):
    """Wraps every handler: the call is authenticated and authorised before the handler runs (the peer certificate is
    only known from the handler's context, so the check sits in the wrapped handler, not in intercept_service)."""

    def __init__(
        self,
        authenticator: Authenticator,
        on_denied: OnDenied | None = None,
        identify: Callable[[grpc.aio.ServicerContext[Any, Any]], Sequence[str]] = peer_identities,
    ) -> None:
        self._auth = authenticator
        self._on_denied = on_denied
        self._identify = identify
        self._wrapped: dict[str, tuple[grpc.RpcMethodHandler, grpc.RpcMethodHandler]] = {}

    async def intercept_service(
        self,
        continuation: Callable[[grpc.HandlerCallDetails], Awaitable[grpc.RpcMethodHandler]],
        details: grpc.HandlerCallDetails,
    ) -> grpc.RpcMethodHandler:
        handler = await continuation(details)
        method = details.method
        cached = self._wrapped.get(method)
        if cached is not None and cached[0] is handler:
            return cached[1]  # the same handler wrapped the same way: not rebuilt on every call
        if handler is None or self._auth.policy.roles_for_method(method) == frozenset():
            return handler  # unknown method (gRPC answers UNIMPLEMENTED), or open to all: health, reflection

        async def admit(context: grpc.aio.ServicerContext[Any, Any]) -> None:
            metadata = {k: v for k, v in context.invocation_metadata() or () if isinstance(v, str)}
            try:
                principal = self._auth.check(method, metadata, self._identify(context))
            except AuthError as e:
                if self._on_denied is not None:
                    self._on_denied(e.code.name, e.reason)
                await context.abort(e.code, e.message)
            _current.set(principal)

        wrapped = _wrap(handler, admit)
        self._wrapped[method] = (handler, wrapped)
        return wrapped


def _wrap(
    handler: grpc.RpcMethodHandler, admit: Callable[[grpc.aio.ServicerContext[Any, Any]], Awaitable[None]]
) -> grpc.RpcMethodHandler:
    if handler.unary_unary:
        inner_uu = handler.unary_unary

        async def unary_unary(request: Any, context: grpc.aio.ServicerContext[Any, Any]) -> Any:
            await admit(context)
            return await inner_uu(request, context)

        return grpc.unary_unary_rpc_method_handler(
            unary_unary, handler.request_deserializer, handler.response_serializer
        )
    if handler.unary_stream:
        inner_us = handler.unary_stream

        async def unary_stream(request: Any, context: grpc.aio.ServicerContext[Any, Any]) -> Any:
            await admit(context)
            async for item in stream_items(inner_us(request, context)):
                yield item

        return grpc.unary_stream_rpc_method_handler(
            unary_stream, handler.request_deserializer, handler.response_serializer
        )
    if handler.stream_unary:
        inner_su = handler.stream_unary

        async def stream_unary(requests: Any, context: grpc.aio.ServicerContext[Any, Any]) -> Any:
            await admit(context)
            return await inner_su(requests, context)

        return grpc.stream_unary_rpc_method_handler(
            stream_unary, handler.request_deserializer, handler.response_serializer
        )
    inner_ss = handler.stream_stream

    async def stream_stream(requests: Any, context: grpc.aio.ServicerContext[Any, Any]) -> Any:
        await admit(context)
        async for item in stream_items(inner_ss(requests, context)):
            yield item

    return grpc.stream_stream_rpc_method_handler(
        stream_stream, handler.request_deserializer, handler.response_serializer
    )


def add_auth_arguments(parser: argparse.ArgumentParser) -> None:
    """--auth-policy, spelled and explained the same in every process (as common.tls.add_tls_arguments)."""
    parser.add_argument(
        "--auth-policy",
        type=Path,
        default=None,
        metavar="PATH",
        help="TOML auth policy (certificate identities, token hashes, JWT key; see deploy/README.md). Without it the "
        "process runs with auth off, which it allows only in plaintext on loopback",
    )


def auth_policy_from_args(ns: argparse.Namespace) -> AuthPolicy | None:
    """The policy --auth-policy names, loaded (AuthConfigError if it cannot be); None without the flag."""
    path = getattr(ns, "auth_policy", None)
    return load_policy(path) if path is not None else None


def resolve_policy(policy: AuthPolicy | None, listen: str, tls: TlsFiles, process: str) -> AuthPolicy:
    """The policy a server at `listen` runs with. None (no --auth-policy) is development mode, allowed only in
    plaintext on loopback, and said in one warning line; with TLS on or off loopback it is refused (AuthConfigError),
    so a deployed process never runs open because a flag was forgotten. A development policy is held to the same rule.
    Plaintext off loopback without --insecure is refused first (common.tls.PlaintextRefused), as listen() would."""
    if not tls.enabled:  # plaintext off loopback without --insecure is the first thing to name, if it is the case
        check_plaintext(listen, tls, "on")
    if policy is not None and not policy.development:
        return policy
    host = listen.rpartition(":")[0]
    if tls.enabled or not is_loopback(host):
        why = "it serves TLS" if tls.enabled else f"{listen} is not a loopback address"
        raise AuthConfigError(
            f"{process}: no --auth-policy and {why}: refusing to start with auth off. Give --auth-policy PATH "
            "(deploy/README.md, 'Auth policy'); auth may be off only in plaintext on loopback"
        )
    logger.warning(
        "{}: auth is off (no --auth-policy): every caller is local-dev with every role; plaintext loopback only",
        process,
    )
    return AuthPolicy.open_for_development()


def denied_counter(registry: CollectorRegistry, name: str = "saga_auth_denied") -> OnDenied:
    """An OnDenied that counts refusals in `registry` as <name>_total{code,reason} (both bounded labels)."""
    counter = Counter(
        name, "Calls refused before any handler ran, by status code and reason", ["code", "reason"], registry=registry
    )

    def on_denied(code: str, reason: str) -> None:
        counter.labels(code, reason).inc()

    return on_denied


def server_interceptor(auth: AuthPolicy | Authenticator, on_denied: OnDenied | None = None) -> AuthInterceptor:
    """The one AuthInterceptor of a server, for the policy resolve_policy() returned (or an Authenticator the process
    shares with another front door, e.g. the router's dashboard)."""
    return AuthInterceptor(auth if isinstance(auth, Authenticator) else Authenticator(auth), on_denied)
