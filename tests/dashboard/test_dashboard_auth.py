"""The dashboard with authentication on: sign-in by token for a session cookie, viewers read-only, operators act on
their own behalf, and the browser-side defences. The dashboard's HTTP server is real (127.0.0.1, a free port); the
router behind it is a fake that records the calls the actions would forward (the whole system with mutual TLS and a
policy is in tests/security)."""

from __future__ import annotations

import hashlib
import http.client
import json
import time
from collections.abc import AsyncIterator
from pathlib import Path
from typing import Any

import grpc
import jwt
import pytest

from common.auth import PRINCIPAL_KEY, Authenticator, AuthPolicy, JwtSettings, Role, StaticToken
from protos.saga.v1 import saga_pb2
from shard_router.dashboard.app import Dashboard
from shard_router.dashboard.auth import DashboardGuard
from shard_router.dashboard.http import HttpError
from shard_router.errors import RouterError

VIEWER, OPERATOR = "viewer-token-0123456789", "operator-token-9876543210"


class FakeRouter:
    """Stands in for shard_router.relay.routing.Router: records what an action would send to the shard."""

    def __init__(self) -> None:
        self.calls: list[tuple[str, str, dict[str, str]]] = []
        self.bodies: list[bytes] = []

    async def to_holder(self, order_id: str, method: Any, body: bytes, caller: Any) -> Any:
        self.calls.append((order_id, str(method).rsplit("/", 1)[-1], dict(caller.metadata)))
        self.bodies.append(body)
        raise RouterError(grpc.StatusCode.FAILED_PRECONDITION, "not dead-lettered")


@pytest.fixture
async def dashboard() -> AsyncIterator[tuple[int, FakeRouter]]:
    policy = AuthPolicy(
        tokens=(
            StaticToken("vera", hashlib.sha256(VIEWER.encode()).hexdigest(), frozenset({Role.CLIENT})),
            StaticToken("otto", hashlib.sha256(OPERATOR.encode()).hexdigest(), frozenset({Role.OPERATOR})),
        )
    )
    router = FakeRouter()
    board = Dashboard(lambda: None, router, None, None, None, auth=Authenticator(policy))  # type: ignore[arg-type]
    port = await board.start("127.0.0.1:0")
    try:
        yield port, router
    finally:
        await board.close()


async def _http(
    port: int, method: str, path: str, body: Any = None, cookie: str = "", origin: str | None = None, host: str = ""
) -> tuple[int, dict[str, str], Any]:
    """One request from a thread (http.client blocks) so the dashboard's loop keeps serving."""
    import asyncio

    def call() -> tuple[int, dict[str, str], Any]:
        conn = http.client.HTTPConnection("127.0.0.1", port, timeout=10)
        headers = {"Host": host or f"127.0.0.1:{port}"}
        data = None
        if body is not None:
            data = json.dumps(body).encode()
            headers["Content-Type"] = "application/json"
            headers["Origin"] = origin if origin is not None else f"http://127.0.0.1:{port}"
        if cookie:
            headers["Cookie"] = cookie
        conn.request(method, path, body=data, headers=headers)
        r = conn.getresponse()
        raw = r.read()
        return r.status, {k.lower(): v for k, v in r.getheaders()}, json.loads(raw) if raw.startswith(b"{") else raw

    return await asyncio.to_thread(call)


async def _sign_in(port: int, token: str) -> str:
    status, headers, _ = await _http(port, "POST", "/api/session", {"token": token})
    assert status == 200
    cookie = headers["set-cookie"]
    assert "HttpOnly" in cookie and "SameSite=Strict" in cookie and token not in cookie
    return cookie.split(";")[0]


async def test_nothing_without_signing_in(dashboard: tuple[int, FakeRouter]) -> None:
    port, _ = dashboard
    status, _, body = await _http(port, "GET", "/api/summary")
    assert status == 401 and "sign in" in body["error"]
    status, _, me = await _http(port, "GET", "/api/whoami")
    assert me == {"signed_in": False, "name": "", "can_act": False, "auth": "required"}
    status, _, body = await _http(port, "POST", "/api/session", {"token": "guessed-token"})
    assert status == 401 and "guessed-token" not in json.dumps(body)
    assert (await _http(port, "POST", "/api/dead-letters/o-1/retry", {}))[0] == 401
    # The page itself loads (it shows the sign-in form), under a CSP that forbids framing.
    status, headers, _ = await _http(port, "GET", "/")
    assert status == 200 and "frame-ancestors 'none'" in headers["content-security-policy"]


async def test_a_viewer_sees_but_cannot_act(dashboard: tuple[int, FakeRouter]) -> None:
    port, router = dashboard
    cookie = await _sign_in(port, VIEWER)
    status, _, me = await _http(port, "GET", "/api/whoami", cookie=cookie)
    assert me == {"signed_in": True, "name": "vera", "can_act": False, "auth": "required"}
    status, _, body = await _http(port, "POST", "/api/dead-letters/o-1/retry", {}, cookie=cookie)
    assert status == 403 and "read-only" in body["error"]
    # A dry run is an operator's action too: a viewer may not even see what a retry would do.
    for action, request in (("retry", {"dry_run": True}), ("resolve", {"reason": "r", "dry_run": True})):
        status, _, body = await _http(port, "POST", f"/api/dead-letters/o-1/{action}", request, cookie=cookie)
        assert status == 403 and "read-only" in body["error"]
    assert router.calls == []


async def test_an_operator_acts_on_their_own_behalf(dashboard: tuple[int, FakeRouter]) -> None:
    port, router = dashboard
    cookie = await _sign_in(port, OPERATOR)
    status, _, body = await _http(port, "POST", "/api/dead-letters/o-1/retry", {}, cookie=cookie)
    assert status == 409 and "FAILED_PRECONDITION" in body["error"]  # the (fake) shard's answer came back
    ((order_id, method, metadata),) = router.calls
    assert (order_id, method, metadata[PRINCIPAL_KEY]) == ("o-1", "RetryDeadLetter", "otto")
    assert not saga_pb2.RetryDeadLetterRequest.FromString(router.bodies[0]).dry_run
    # Dry runs go the same way, on the operator's behalf, marked dry_run; the shard's refusal comes back alike.
    status, _, body = await _http(port, "POST", "/api/dead-letters/o-1/retry", {"dry_run": True}, cookie=cookie)
    assert status == 409 and "FAILED_PRECONDITION" in body["error"]
    status, _, _ = await _http(
        port, "POST", "/api/dead-letters/o-1/resolve", {"reason": "by hand", "dry_run": True}, cookie=cookie
    )
    assert status == 409
    assert [(c[1], c[2][PRINCIPAL_KEY]) for c in router.calls[1:]] == [
        ("RetryDeadLetter", "otto"),
        ("ResolveDeadLetter", "otto"),
    ]
    assert saga_pb2.RetryDeadLetterRequest.FromString(router.bodies[1]).dry_run
    assert saga_pb2.ResolveDeadLetterRequest.FromString(router.bodies[2]).dry_run
    status, _, body = await _http(port, "POST", "/api/dead-letters/o-1/retry", {"dry_run": "yes"}, cookie=cookie)
    assert status == 400 and "dry_run" in body["error"] and len(router.calls) == 3
    # Signed out: the cookie no longer opens anything.
    status, headers, _ = await _http(port, "POST", "/api/logout", {}, cookie=cookie)
    assert status == 200 and "Max-Age=0" in headers["set-cookie"]
    assert (await _http(port, "GET", "/api/whoami", cookie=cookie))[2]["signed_in"] is False


async def test_guessing_tokens_is_slowed_down(dashboard: tuple[int, FakeRouter]) -> None:
    port, _ = dashboard
    for i in range(10):
        assert (await _http(port, "POST", "/api/session", {"token": f"guess-{i}"}))[0] == 401
    status, _, body = await _http(port, "POST", "/api/session", {"token": OPERATOR})
    assert status == 429 and "wait a minute" in body["error"]  # even the right token, from this address, for now


async def test_cross_site_and_rebinding_are_refused(dashboard: tuple[int, FakeRouter]) -> None:
    port, router = dashboard
    cookie = await _sign_in(port, OPERATOR)
    status, _, body = await _http(
        port, "POST", "/api/dead-letters/o-1/retry", {}, cookie=cookie, origin="http://evil.example"
    )
    assert status == 403 and "origin" in body["error"]
    status, _, _ = await _http(port, "POST", "/api/session", {"token": OPERATOR}, origin="")
    assert status == 403
    assert (await _http(port, "GET", "/api/whoami", cookie=cookie, host="evil.example"))[0] == 421
    assert router.calls == []


async def test_only_loopback_unless_allowed() -> None:
    board = Dashboard(lambda: None, None, None, None, None)  # type: ignore[arg-type]
    with pytest.raises(OSError, match="is not loopback"):
        await board.start("0.0.0.0:0")


def test_a_session_never_outlives_its_token(tmp_path: Path) -> None:
    secret = tmp_path / "jwt.secret"
    secret.write_text("a-shared-secret-for-tests-only-32bytes!")
    policy = AuthPolicy(jwt=JwtSettings(str(secret), algorithms=("HS256",)))
    guard = DashboardGuard(Authenticator(policy))
    short = jwt.encode({"sub": "alice", "roles": ["operator"], "exp": int(time.time()) + 60}, secret.read_text())
    session, _ = guard.sign_in(short)
    assert session.expires_mono - time.monotonic() <= 61  # not the 8 h a session may last
    with pytest.raises(HttpError):  # signed with another secret
        guard.sign_in(jwt.encode({"sub": "bob", "roles": ["client"], "exp": int(time.time()) + 10**6}, "x" * 40))


async def test_a_remote_dashboard_needs_its_names_and_marks_its_cookie_secure() -> None:
    policy = AuthPolicy(tokens=(StaticToken("otto", hashlib.sha256(OPERATOR.encode()).hexdigest(), frozenset(Role)),))
    board = Dashboard(lambda: None, None, None, None, None, auth=Authenticator(policy), allow_remote=True)  # type: ignore[arg-type]
    with pytest.raises(OSError, match="dashboard_hosts"):
        await board.start("0.0.0.0:0")
    board = Dashboard(
        lambda: None, None, None, None, None, auth=Authenticator(policy), allow_remote=True, hosts=("saga.example.com",)
    )  # type: ignore[arg-type]
    await board.start("0.0.0.0:0")
    try:
        _, cookie = board.guard.sign_in(OPERATOR)
        assert "; Secure" in cookie
    finally:
        await board.close()
