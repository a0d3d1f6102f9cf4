"""Who may look at the dashboard and who may press its buttons, and the browser-side defences around both.

- Sign-in: the page posts a bearer token (a JWT or static token of the router's auth policy, common.auth) once; the
  dashboard answers with a random session id in a cookie that is HttpOnly (scripts cannot read it) and SameSite=Strict
  (another site's page cannot make the browser send it). The token itself is never stored or echoed.
- Roles: any authenticated principal may view (read-only); Retry and Resolve need the operator role. In the router's
  development mode (plaintext on loopback, no policy) everyone is local-dev, an operator.
- CSRF and DNS rebinding: every request's Host must be one the dashboard serves as, and every POST's Origin one of its
  own origins; JSON bodies only (a form cannot send them without a CORS preflight, which is never granted).
- Content-Security-Policy: the page's one inline script and one inline style are allowed by their SHA-256, nothing
  else runs; frame-ancestors 'none' (no clickjacking); JSON answers get default-src 'none'.
"""

from __future__ import annotations

import base64
import hashlib
import re
import secrets
import time
from collections import OrderedDict
from collections.abc import Callable, Iterable
from dataclasses import dataclass
from http import HTTPStatus

import jwt

from common.auth import Authenticator, AuthError, Principal, Role
from shard_router.dashboard.http import HttpError, Request

COOKIE = "saga_session"
SESSION_TTL_S = 8 * 3600.0
"""A session lasts a working day; signing out ends it at once."""
MAX_SESSIONS = 1_000
"""Sessions kept at once; the oldest goes first past it."""
MAX_TOKEN_CHARS = 8_192
"""Longest token accepted at sign-in."""
SIGN_IN_FAILURES_PER_MINUTE = 10
"""Failed sign-ins one client address may make per minute; past it, 429 until the minute is over (guessing tokens)."""
MAX_TRACKED_CLIENTS = 10_000
"""Client addresses whose recent failures are remembered; the oldest are forgotten first."""


@dataclass(frozen=True, slots=True)
class Session:
    principal: Principal
    expires_mono: float

    @property
    def can_act(self) -> bool:
        return Role.OPERATOR in self.principal.roles


class Sessions:
    """Server-side sessions: the cookie holds only a random id (256 bits)."""

    def __init__(self, clock: Callable[[], float] = time.monotonic) -> None:
        self._clock = clock
        self._by_id: OrderedDict[str, Session] = OrderedDict()

    def open(self, principal: Principal, ttl_s: float = SESSION_TTL_S) -> str:
        while len(self._by_id) >= MAX_SESSIONS:
            self._by_id.popitem(last=False)
        sid = secrets.token_urlsafe(32)
        self._by_id[sid] = Session(principal, self._clock() + min(ttl_s, SESSION_TTL_S))
        return sid

    def get(self, sid: str) -> Session | None:
        session = self._by_id.get(sid)
        if session is None:
            return None
        if session.expires_mono <= self._clock():
            del self._by_id[sid]
            return None
        return session

    def close(self, sid: str) -> None:
        self._by_id.pop(sid, None)


class DashboardGuard:
    """The checks every dashboard request goes through (see the module docstring)."""

    def __init__(self, auth: Authenticator | None, hosts: Iterable[str] = (), secure_cookie: bool = False) -> None:
        self.auth = auth
        self.development = auth is None or auth.policy.development
        self.sessions = Sessions()
        self._failures: OrderedDict[str, tuple[float, int]] = OrderedDict()  # client -> (window start, failures)
        self._hosts = {h.lower() for h in hosts}
        self.secure_cookie = secure_cookie
        """Mark the cookie Secure: the dashboard is reached through TLS termination (it serves plain HTTP itself)."""

    def serve_as(self, listen_host: str, port: int) -> None:
        """Adds the names the dashboard answers to once its port is known: its listen address, and localhost for a
        loopback one (what a browser on the same machine or through a port-forward sends as Host)."""
        names = {listen_host, "localhost", "127.0.0.1"} if listen_host in ("127.0.0.1", "localhost") else {listen_host}
        self._hosts |= {f"{name}:{port}".lower() for name in names}

    # ---- per request --------------------------------------------------------------------------------------------

    def check_host(self, req: Request) -> None:
        if req.headers.get("host", "").lower() not in self._hosts:
            raise HttpError(HTTPStatus.MISDIRECTED_REQUEST, "host: not a name this dashboard serves as")

    def check_origin(self, req: Request) -> None:
        """A POST must come from a page of this dashboard (the Origin header browsers send and pages cannot set)."""
        origin = req.headers.get("origin", "")
        if origin.lower() not in {f"http://{h}" for h in self._hosts} | {f"https://{h}" for h in self._hosts}:
            raise HttpError(HTTPStatus.FORBIDDEN, "origin: cross-site requests are refused")
        if req.headers.get("content-type", "").split(";")[0].strip() != "application/json":
            raise HttpError(HTTPStatus.UNSUPPORTED_MEDIA_TYPE, "content-type must be application/json")

    def session(self, req: Request) -> Session | None:
        if self.development:
            return Session(Principal("local-dev", frozenset(Role), "development"), float("inf"))
        sid = _cookie(req.headers.get("cookie", ""), COOKIE)
        return self.sessions.get(sid) if sid else None

    def viewer(self, req: Request) -> Session:
        session = self.session(req)
        if session is None:
            raise HttpError(HTTPStatus.UNAUTHORIZED, "sign in with a token to see the dashboard")
        return session

    def operator(self, req: Request) -> Session:
        session = self.viewer(req)
        if not session.can_act:
            who = session.principal.name
            raise HttpError(HTTPStatus.FORBIDDEN, f"{who} is read-only: acting needs the operator role")
        return session

    def sign_in(self, token: object, client: str = "") -> tuple[Session, str]:
        """The session for a bearer token and its Set-Cookie value; 401 without a word about the token, 429 after
        SIGN_IN_FAILURES_PER_MINUTE failures from one client address."""
        now = time.monotonic()
        start, failures = self._failures.get(client, (now, 0))
        if now - start >= 60:
            start, failures = now, 0
        if failures >= SIGN_IN_FAILURES_PER_MINUTE:
            raise HttpError(HTTPStatus.TOO_MANY_REQUESTS, "too many failed sign-ins from this address: wait a minute")
        try:
            return self._sign_in(token)
        except HttpError as e:
            if e.status == HTTPStatus.UNAUTHORIZED:
                self._failures[client] = (start, failures + 1)
                self._failures.move_to_end(client)
                while len(self._failures) > MAX_TRACKED_CLIENTS:
                    self._failures.popitem(last=False)
            raise

    def _sign_in(self, token: object) -> tuple[Session, str]:
        if self.auth is None or self.development:
            raise HttpError(HTTPStatus.CONFLICT, "authentication is off (development mode): nothing to sign in to")
        if not isinstance(token, str) or not token or len(token) > MAX_TOKEN_CHARS:
            raise HttpError(HTTPStatus.BAD_REQUEST, "token: a bearer token is required")
        try:
            principal = self.auth.authenticate({"authorization": f"Bearer {token}"}, ())
        except AuthError:
            raise HttpError(HTTPStatus.UNAUTHORIZED, "that token is not valid") from None
        if not principal.roles:
            raise HttpError(HTTPStatus.FORBIDDEN, f"{principal.name} has no role here")
        # A session never outlives the token it was opened with (the signature was checked just above).
        ttl_s = SESSION_TTL_S
        if token.count(".") == 2:
            expires = jwt.decode(token, options={"verify_signature": False}).get("exp")
            if isinstance(expires, int | float):
                ttl_s = min(ttl_s, expires - time.time())
        sid = self.sessions.open(principal, ttl_s)
        session = self.sessions.get(sid)
        assert session is not None
        return session, self.cookie(sid, int(SESSION_TTL_S))

    def sign_out(self, req: Request) -> str:
        sid = _cookie(req.headers.get("cookie", ""), COOKIE)
        if sid:
            self.sessions.close(sid)
        return self.cookie("", 0)

    def cookie(self, value: str, max_age_s: int) -> str:
        secure = "; Secure" if self.secure_cookie else ""
        return f"{COOKIE}={value}; Path=/; HttpOnly; SameSite=Strict; Max-Age={max_age_s}{secure}"


def page_csp(page: bytes) -> str:
    """The page's CSP: its inline <script> and <style> blocks by hash, same-origin fetches only."""

    def hashes(tag: str) -> str:
        blocks = re.findall(rf"<{tag}>(.*?)</{tag}>".encode(), page, flags=re.S)
        return " ".join(f"'sha256-{base64.b64encode(hashlib.sha256(b).digest()).decode()}'" for b in blocks)

    return (
        f"default-src 'none'; script-src {hashes('script')}; style-src {hashes('style')}; connect-src 'self'; "
        "img-src 'self' data:; base-uri 'none'; form-action 'self'; frame-ancestors 'none'"
    )


def _cookie(header: str, name: str) -> str:
    for part in header.split(";"):
        key, _, value = part.strip().partition("=")
        if key == name:
            return value
    return ""
