"""The dashboard: a static page and a JSON API served by the router on its own port (--dashboard-listen).

    GET  /                                  the page (shard_router/dashboard/static/dashboard.html)
    GET  /api/summary                       everything the page's overview shows, one call (polled every 2 s)
    GET  /api/sagas?state=RUNNING&limit=50  sagas, newest first, merged across shards
    GET  /api/dead-letters                  open dead letters, oldest first
    GET  /api/definitions                   the saga definitions the shards hold, merged (ListDefinitions)
    GET  /api/definitions/{hash}/graph      one version's graph (common.definitions.graph) with live counts per step
                                            and its bottleneck step (shard_router.dashboard.step_counts)
    GET  /api/sagas/{key}?type=T            one saga with its steps and event log (the page polls it while open);
                                            T defaults to "order", whose key is the order id
    POST /api/dead-letters/{key}/retry?type=T    {"reason": "..."} (optional)
    POST /api/dead-letters/{key}/resolve?type=T  {"reason": "..."} (required)
         either with "dry_run": true            what it would do (the planned calls, the end state); nothing changes
    GET  /api/whoami                        who is signed in, and whether they may act
    POST /api/session                       {"token": "..."}: sign in (sets an HttpOnly, SameSite=Strict cookie)
    POST /api/logout                        sign out

Lists ask every shard through the router's channels and show what the shards that answer hold (a shard that does not is
named in "errors"); saga detail and actions go through the router's own routing (the rules gRPC clients get); rates,
percentiles and retries come from scraping the shards' /metrics (shard_router.dashboard.shard_stats). Payment details
are not in any of it: shards never return them.

Who may see and act, and the browser-side defences (Host and Origin allow-lists, JSON-only POSTs, session cookies,
Content-Security-Policy): shard_router.dashboard.auth. The dashboard binds to loopback unless allow_remote is set;
its actions reach the shard on behalf of the signed-in operator (the shard's audit names them).
"""

from __future__ import annotations

import asyncio
import json
import re
import time
from collections.abc import Awaitable, Callable
from http import HTTPStatus
from pathlib import Path
from typing import Any, TypeVar

import grpc

from common.auth import Authenticator, forwarded_metadata
from common.definitions import DefinitionError, from_document
from common.definitions.graph import build
from common.tls import is_loopback
from protos.saga.v1 import saga_pb2
from shard_router.channels import ChannelPool, ShardClient
from shard_router.dashboard.auth import DashboardGuard, Session, page_csp
from shard_router.dashboard.http import HttpError, HttpServer, Request, Response
from shard_router.dashboard.shard_stats import ShardStats
from shard_router.dashboard.step_counts import BOTTLENECK_RULE, LIVE_STATES, bottleneck, step_counts
from shard_router.dashboard.step_counts import step_id as _step_id
from shard_router.errors import RouterError
from shard_router.relay.forwarding import GET_SAGA, RESOLVE_DEAD_LETTER, RETRY_DEAD_LETTER, IncomingCall
from shard_router.relay.routing import Router
from shard_router.ring import shard_checks
from shard_router.ring.shard_health import ShardHealth
from shard_router.ring.topology import Topology

PAGE = Path(__file__).with_name("static") / "dashboard.html"
CALL_TIMEOUT_S = 5.0
"""Bound of the gRPC calls one dashboard request makes."""
SCAN_LIMIT = 500
"""Live sagas read per state and shard to find the stuck ones (one page each)."""
RECENT_LIMIT = 200
"""Recent sagas read per shard; the slowest are picked among the newest RECENT_LIMIT overall. Every saga read is
decoded on the router's loop, between relayed calls, so this stays small."""
STUCK_AFTER_S = 10.0
"""A live saga older than this is listed as stuck."""
TOP_N = 10
GRAPHS_KEPT = 64
"""Definition graphs kept built, by hash (a hash names one document forever, so a kept graph never goes stale)."""
DEAD_LETTERS_SHOWN = 100
"""Open dead letters listed (oldest first); the count in the gauges covers all of them."""
T = TypeVar("T")
M = TypeVar("M", saga_pb2.GetSagaRequest, saga_pb2.RetryDeadLetterRequest, saga_pb2.ResolveDeadLetterRequest)
ORDER_TYPE = "order"
"""The saga type whose key is the order id: its sagas are addressed by order_id, as before definitions."""
_ORDER_ID = re.compile(r"^[A-Za-z0-9._:-]{1,128}$")
_NUMBERED = re.compile(r"^[0-9]+(\.[0-9]+)*$")
"""A version label that is a number ("1", "2.1") shows as "v1"; any other label as it is."""
_HASH = re.compile(r"/api/definitions/([0-9a-f]{8,64})/graph")
_SAGA_TYPE = re.compile(r"^[a-z][a-z0-9_]{0,62}$")
_STATUS_HTTP = {
    grpc.StatusCode.NOT_FOUND: HTTPStatus.NOT_FOUND,
    grpc.StatusCode.INVALID_ARGUMENT: HTTPStatus.BAD_REQUEST,
    grpc.StatusCode.FAILED_PRECONDITION: HTTPStatus.CONFLICT,
    grpc.StatusCode.ALREADY_EXISTS: HTTPStatus.CONFLICT,
}


def _enum(enum: Any, value: int, prefix: str) -> str:
    return str(enum.Name(value)).removeprefix(prefix)


def _ts(t: Any) -> float | None:
    return t.seconds + t.nanos / 1e9 if t.seconds or t.nanos else None


def definition_label(saga_type: str, version: str, definition_hash: str) -> str:
    """How the page names a definition version: "order_loyalty v1 · 917436a5"."""
    if not saga_type:
        return ""
    label = f"v{version}" if _NUMBERED.match(version) else version
    return " ".join(x for x in (saga_type, label, f"· {definition_hash[:8]}" if definition_hash else "") if x)


def saga_json(s: saga_pb2.Saga) -> dict[str, Any]:
    created, updated = _ts(s.created_at), _ts(s.updated_at)
    state = _enum(saga_pb2.SagaState, s.state, "SAGA_STATE_")
    live = state in ("RUNNING", "COMPENSATING")
    end = time.time() if live else updated
    saga_type = s.saga_type or ORDER_TYPE
    return {
        "order_id": s.order_id,
        "saga_type": saga_type,
        "key": s.key or s.order_id,
        "definition_hash": s.definition_hash,
        "definition_version": s.definition_version,
        "definition": definition_label(saga_type, s.definition_version, s.definition_hash),
        "saga_id": s.saga_id,
        "shard_id": s.shard_id,
        "user_id": s.user_id,
        "state": state,
        "created_at": created,
        "updated_at": updated,
        "deadline": _ts(s.deadline),
        "age_seconds": None if created is None or end is None else max(0.0, end - created),
        "last_error": s.last_error,
        "parked_note": s.parked_note,
        "items": [{"item_id": i.item_id, "quantity": i.quantity} for i in s.items],
        "steps": [
            {
                "step": _step_id(st.step_id, st.step),
                "kind": st.kind,
                "status": _enum(saga_pb2.StepStatus, st.status, "STEP_STATUS_"),
                "forward_attempts": st.forward_attempts,
                "compensate_attempts": st.compensate_attempts,
                "last_error": st.last_error,
                "started_at": _ts(st.started_at),
                "updated_at": _ts(st.updated_at),
                # A long-running operation: the service accepted the call and is asked again at next_poll_at.
                "waiting": st.waiting,
                "waiting_action": _enum(saga_pb2.Action, st.waiting_action, "ACTION_").lower() if st.waiting else "",
                "waiting_since": _ts(st.waiting_since) if st.waiting else None,
                "next_poll_at": _ts(st.next_poll_at) if st.waiting else None,
            }
            for st in s.steps
        ],
        "events": [
            {
                "seq": e.seq,
                "at": _ts(e.at),
                "kind": e.kind,
                "step": _step_id(e.step_id, e.step),
                "action": _enum(saga_pb2.Action, e.action, "ACTION_").lower() if e.action else "",
                "attempt": e.attempt,
                "code": e.code,
                "detail": e.detail,
                "state": _enum(saga_pb2.SagaState, e.state, "SAGA_STATE_") if e.state else "",
                "next_attempt_at": _ts(e.next_attempt_at),
            }
            for e in s.events
        ],
    }


def preview_json(p: saga_pb2.SagaPreview) -> dict[str, Any]:
    """A dry run's plan for one saga (saga.v1 SagaPreview)."""
    return {
        "order_id": p.order_id,
        "saga_type": p.saga_type or ORDER_TYPE,
        "key": p.key or p.order_id,
        "saga_id": p.saga_id,
        "shard_id": p.shard_id,
        "state_now": _enum(saga_pb2.SagaState, p.state_now, "SAGA_STATE_"),
        "end_state": _enum(saga_pb2.SagaState, p.end_state, "SAGA_STATE_"),
        "calls": [
            {
                "step": _step_id(c.step_id, c.step),
                "action": _enum(saga_pb2.Action, c.action, "ACTION_").lower(),
                "service": c.service,
                "method": c.method,
                "idempotency_key": c.idempotency_key,
                "attempt": c.attempt,
                "retry_of_earlier_attempt": c.retry_of_earlier_attempt,
                "asks_first": c.asks_first,
            }
            for c in p.calls
        ],
    }


def dead_letter_json(d: saga_pb2.DeadLetter) -> dict[str, Any]:
    return {
        "order_id": d.order_id,
        "saga_type": d.saga_type or ORDER_TYPE,
        "key": d.key or d.order_id,
        "saga_id": d.saga_id,
        "shard_id": d.shard_id,
        "step": _step_id(d.step_id, d.step),
        # A compensation that failed for good (retry resumes compensating), or a retriable step after the pivot
        # (retry resumes it forward).
        "action": _enum(saga_pb2.Action, d.action, "ACTION_").lower() if d.action else "compensate",
        "last_error": d.last_error,
        "attempts": d.attempts,
        "parked_at": _ts(d.parked_at),
        "closed": d.closed,
        "closed_note": d.closed_note,
    }


def _http_error(e: RouterError) -> HttpError:
    return HttpError(_STATUS_HTTP.get(e.code, HTTPStatus.BAD_GATEWAY), f"{e.code.name}: {e.details}")


class Dashboard:
    def __init__(
        self,
        topology: Callable[[], Topology],
        router: Router,
        pool: ChannelPool,
        health: ShardHealth,
        stats: ShardStats,
        auth: Authenticator | None = None,
        allow_remote: bool = False,
        hosts: tuple[str, ...] = (),
    ) -> None:
        self._topology = topology
        self._router = router
        self._pool = pool
        self._health = health
        self.stats = stats
        self._http = HttpServer(self.handle)
        self._page = b""
        self._page_csp = ""
        self._allow_remote = allow_remote
        self._hosts = hosts
        self.guard = DashboardGuard(auth, hosts)
        self._graphs: dict[str, dict[str, Any]] = {}

    @property
    def port(self) -> int:
        return self._http.port

    async def start(self, listen: str) -> int:
        """Binds listen; OSError (naming the file) if the page is missing, e.g. package data left out of an install."""
        host = listen.rpartition(":")[0]
        if not is_loopback(host):
            if not self._allow_remote:
                raise OSError(f"dashboard listen {listen} is not loopback: set [router] dashboard_allow_remote = true")
            if self.guard.development:
                raise OSError(f"dashboard listen {listen} is not loopback: serving others needs an auth policy")
            if not self._hosts:
                raise OSError(f"dashboard listen {listen} is not loopback: name it in [router] dashboard_hosts")
            self.guard.secure_cookie = True  # reached through TLS termination: the browser's side is https
        try:
            self._page = PAGE.read_bytes()
        except OSError as e:
            raise OSError(f"dashboard page {PAGE} not readable: {e.strerror}") from e
        self._page_csp = page_csp(self._page)
        port = await self._http.start(listen)
        self.guard.serve_as(host, port)
        return port

    async def close(self) -> None:
        await self._http.close()

    @staticmethod
    def _caller(session: Session | None = None) -> IncomingCall:
        """Reads go under the router's own identity; actions on behalf of the signed-in operator."""
        metadata = forwarded_metadata(session.principal) if session is not None else ()
        return IncomingCall(metadata, time.monotonic() + CALL_TIMEOUT_S)

    async def handle(self, req: Request) -> Response:
        self.guard.check_host(req)
        path = req.path.rstrip("/") or "/"
        if req.method == "GET" and path in ("/", "/index.html"):
            csp = {"Content-Security-Policy": self._page_csp}
            return Response(200, self._page, "text/html; charset=utf-8", csp)
        if path == "/api/whoami" and req.method == "GET":
            session = self.guard.session(req)
            return Response.of_json(
                {
                    "signed_in": session is not None,
                    "name": session.principal.name if session else "",
                    "can_act": bool(session and session.can_act),
                    "auth": "development" if self.guard.development else "required",
                }
            )
        if path in ("/api/session", "/api/logout") and req.method == "POST":
            self.guard.check_origin(req)
            if path == "/api/logout":
                return Response(200, b"{}", headers={"Set-Cookie": self.guard.sign_out(req)})
            body = req.json()
            session, cookie = self.guard.sign_in(body.get("token") if isinstance(body, dict) else None, req.peer)
            answer = {"name": session.principal.name, "can_act": session.can_act}
            return Response(200, Response.of_json(answer).body, headers={"Set-Cookie": cookie})
        if req.method == "GET":
            self.guard.viewer(req)
            if path == "/api/summary":
                return Response.of_json(await self.summary())
            if path == "/api/sagas":
                return Response.of_json(await self.list_sagas(req.query))
            if path == "/api/dead-letters":
                letters, errors = await self.dead_letters()
                return Response.of_json({"dead_letters": letters, "errors": errors})
            if path == "/api/definitions":
                return Response.of_json(await self.definitions())
            if m := _HASH.fullmatch(path):
                return Response.of_json(await self.definition_graph(m.group(1)))
            if path.startswith("/api/sagas/"):
                key = _key(path.removeprefix("/api/sagas/"))
                return Response.of_json(await self.saga(key, _saga_type(req.query)))
            raise HttpError(HTTPStatus.NOT_FOUND, f"no such page: {path}")
        if req.method == "POST":
            m = re.fullmatch(r"/api/dead-letters/([^/]+)/(retry|resolve)", path)
            if m is None:
                raise HttpError(HTTPStatus.NOT_FOUND, f"no such action: {path}")
            self.guard.check_origin(req)
            session = self.guard.operator(req)
            body = req.json()
            reason = body.get("reason", "") if isinstance(body, dict) else ""
            if not isinstance(reason, str) or len(reason) > 1000:
                raise HttpError(HTTPStatus.BAD_REQUEST, "reason: must be a string of at most 1000 characters")
            dry_run = body.get("dry_run", False) if isinstance(body, dict) else False
            if not isinstance(dry_run, bool):
                raise HttpError(HTTPStatus.BAD_REQUEST, "dry_run: must be true or false")
            key, saga_type = _key(m.group(1)), _saga_type(req.query)
            if m.group(2) == "retry":
                return Response.of_json(await self.retry(key, reason, session, dry_run, saga_type))
            if not reason.strip():
                raise HttpError(HTTPStatus.BAD_REQUEST, "reason: required to resolve a dead letter")
            return Response.of_json(await self.resolve(key, reason, session, dry_run, saga_type))
        raise HttpError(HTTPStatus.METHOD_NOT_ALLOWED, f"method {req.method} not allowed")

    # ---- reads ----------------------------------------------------------------------------------------------------
    #
    # Lists ask each shard on its own and merge, rather than through the router's strict fan-out (which fails a page
    # if any shard does not answer, so that no client silently misses sagas): an operator looking at the page while a
    # shard is down should still see every other shard, with the down one named in "errors".

    async def _each_shard(self, call: Callable[[ShardClient], Awaitable[T]]) -> tuple[list[T], dict[str, str]]:
        topo = self._topology()
        ids = topo.shard_ids
        calls = (call(self._pool.get(topo.addresses[sid])) for sid in ids)
        results = await asyncio.gather(*calls, return_exceptions=True)
        out: list[T] = []
        errors: dict[str, str] = {}
        for sid, r in zip(ids, results, strict=True):
            if isinstance(r, grpc.aio.AioRpcError):
                errors[sid] = f"{r.code().name}: {r.details()}"
            elif isinstance(r, BaseException):
                raise r
            else:
                out.append(r)
        return out, errors

    async def _list(self, state: int, page_size: int) -> tuple[list[saga_pb2.Saga], dict[str, str]]:
        """Up to page_size sagas, newest first, from every shard that answers; and {shard: error} for the others."""
        req = saga_pb2.ListSagasRequest(state=state, page_size=page_size)
        pages, errors = await self._each_shard(lambda c: c.coordinator.ListSagas(req, timeout=CALL_TIMEOUT_S))
        sagas = [s for page in pages for s in page.sagas]
        sagas.sort(key=lambda s: (s.created_at.seconds, s.created_at.nanos), reverse=True)
        return sagas[:page_size], errors

    async def list_sagas(self, query: dict[str, str]) -> dict[str, Any]:
        state_name = query.get("state", "").upper()
        state = 0
        if state_name:
            try:
                state = saga_pb2.SagaState.Value(f"SAGA_STATE_{state_name}")
            except ValueError:
                raise HttpError(HTTPStatus.BAD_REQUEST, f"state: unknown state {state_name!r}") from None
        limit_text = query.get("limit", "50")
        if not limit_text.isdigit() or not 1 <= int(limit_text) <= 500:
            raise HttpError(HTTPStatus.BAD_REQUEST, "limit: must be 1-500")
        sagas, errors = await self._list(state, int(limit_text))
        return {"sagas": [saga_json(s) for s in sagas], "errors": errors}

    async def dead_letters(self) -> tuple[list[dict[str, Any]], dict[str, str]]:
        """Open dead letters, oldest first, from every shard that answers; and {shard: error} for the others."""
        req = saga_pb2.ListDeadLettersRequest(page_size=DEAD_LETTERS_SHOWN)
        pages, errors = await self._each_shard(lambda c: c.admin.ListDeadLetters(req, timeout=CALL_TIMEOUT_S))
        letters = [d for page in pages for d in page.dead_letters]
        letters.sort(key=lambda d: (d.parked_at.seconds, d.parked_at.nanos))
        return [dead_letter_json(d) for d in letters[:DEAD_LETTERS_SHOWN]], errors

    async def definitions(self) -> dict[str, Any]:
        """Every definition version any shard that answers holds, merged by hash, in the shards' order (by type,
        oldest first); and {shard: error} for the others."""
        req = saga_pb2.ListDefinitionsRequest()
        answers, errors = await self._each_shard(lambda c: c.admin.ListDefinitions(req, timeout=CALL_TIMEOUT_S))
        return {"definitions": merge_definitions([list(a.definitions) for a in answers]), "errors": errors}

    async def _scan(self, state: int) -> tuple[list[saga_pb2.ListSagasResponse], dict[str, str]]:
        """One page (SCAN_LIMIT) of the sagas in this state from every shard that answers, as they come."""
        req = saga_pb2.ListSagasRequest(state=state, page_size=SCAN_LIMIT)
        return await self._each_shard(lambda c: c.coordinator.ListSagas(req, timeout=CALL_TIMEOUT_S))

    async def _graph(self, definition_hash: str) -> dict[str, Any]:
        """The version's graph as data, built once from the document a shard holds."""
        if (kept := self._graphs.get(definition_hash)) is not None:
            return kept
        req = saga_pb2.ListDefinitionsRequest(include_documents=True)
        answers, errors = await self._each_shard(lambda c: c.admin.ListDefinitions(req, timeout=CALL_TIMEOUT_S))
        found = next((d for a in answers for d in a.definitions if d.hash == definition_hash), None)
        if found is None:
            held = "no shard that answered holds it" + (f" ({len(errors)} did not answer)" if errors else "")
            raise HttpError(HTTPStatus.NOT_FOUND, f"definition {definition_hash}: {held}")
        try:
            definition = from_document(json.loads(found.document_json), f"definition {definition_hash}")
        except (ValueError, DefinitionError) as e:
            raise HttpError(HTTPStatus.BAD_GATEWAY, f"definition {definition_hash}: a shard's document: {e}") from None
        graph = build(definition).as_dict()
        graph["label"] = definition_label(found.name, found.version, found.hash)
        if len(self._graphs) >= GRAPHS_KEPT:
            self._graphs.pop(next(iter(self._graphs)))
        self._graphs[definition_hash] = graph
        return graph

    async def definition_graph(self, definition_hash: str) -> dict[str, Any]:
        """The version's graph with its live sagas counted at their current steps, from one page (SCAN_LIMIT) of each
        live state per shard: "complete" is false if a page was full (the counts are then a lower bound)."""
        graph = await self._graph(definition_hash)
        scans = await asyncio.gather(*(self._scan(state) for state in LIVE_STATES))
        pages = [page for answers, _ in scans for page in answers]
        errors = {f"shard {sid}": message for _, e in scans for sid, message in e.items()}
        step_ids = [n["step"] for n in graph["nodes"] if n["type"] == "step"]
        counts = step_counts((s for page in pages for s in page.sagas), definition_hash, step_ids)
        return {
            **graph,
            "counts": counts,
            "bottleneck": bottleneck(counts),
            "bottleneck_rule": BOTTLENECK_RULE,
            "scanned": sum(len(page.sagas) for page in pages),
            "complete": not any(page.next_page_token for page in pages),
            "errors": errors,
        }

    async def saga(self, key: str, saga_type: str = ORDER_TYPE) -> dict[str, Any]:
        req = _named(saga_pb2.GetSagaRequest(include_events=True), key, saga_type).SerializeToString()
        try:
            # The ring hashes a saga's key, whatever its type.
            reply = await self._router.to_holder(key, GET_SAGA, req, self._caller())
        except RouterError as e:
            raise _http_error(e) from None
        return saga_json(saga_pb2.Saga.FromString(reply.body))

    async def summary(self) -> dict[str, Any]:
        """The overview. A shard that does not answer is named in "errors"; the rest is shown all the same."""
        topo = self._topology()
        (recent, e1), (running, e2), (compensating, e3), (dead, e4) = await asyncio.gather(
            self._list(0, RECENT_LIMIT),
            self._list(saga_pb2.SAGA_STATE_RUNNING, SCAN_LIMIT),
            self._list(saga_pb2.SAGA_STATE_COMPENSATING, SCAN_LIMIT),
            self.dead_letters(),
        )
        errors = {f"shard {sid}": message for e in (e4, e3, e2, e1) for sid, message in e.items()}
        now = time.time()
        # Sort on the protos and convert only what is shown: this runs on the router's loop, between relayed calls.
        live = sorted([*running, *compensating], key=lambda s: _ts(s.created_at) or now)
        stuck = [saga_json(s) for s in live[:TOP_N] if now - (_ts(s.created_at) or now) >= STUCK_AFTER_S]
        done = [s for s in recent if s.state not in shard_checks.UNFINISHED[:2]]
        done.sort(key=lambda s: (_ts(s.created_at) or 0) - (_ts(s.updated_at) or 0))
        slowest = [saga_json(s) for s in done[:TOP_N]]
        return {
            "now": now,
            "epoch": topo.epoch,
            "shards": [
                {
                    "id": sid,
                    "address": topo.addresses[sid],
                    "up": self._health.up.get(sid),
                    "metrics": topo.metrics.get(sid),
                    "metrics_ok": (st.ok if (st := self.stats.status.get(sid)) else None),
                    "metrics_error": st.error if st else "",
                    "journal": (st.journal or {}) if st else {},
                }
                for sid in topo.shard_ids
            ],
            "gauges": self.stats.now(),
            "throughput": self.stats.throughput(),
            "latency": self.stats.step_latency(),
            "retries": self.stats.retries(),
            "recent": [saga_json(s) for s in recent[:20]],
            "stuck": stuck[:TOP_N],
            "stuck_after_seconds": STUCK_AFTER_S,
            "live_count": {
                "running": len(running),
                "compensating": len(compensating),
                # Of those, the ones a service is finishing a call of (a long-running operation): not stuck, waiting.
                "waiting": sum(1 for s in live if any(st.waiting for st in s.steps)),
            },
            "slowest": slowest,
            "dead_letters": dead,
            "errors": errors,
        }

    # ---- actions --------------------------------------------------------------------------------------------------

    # A dry run is the same call with dry_run set, on behalf of the same operator: the shard checks and refuses it as
    # it would the action, and changes nothing.

    async def retry(
        self, key: str, reason: str, session: Session, dry_run: bool = False, saga_type: str = ORDER_TYPE
    ) -> dict[str, Any]:
        req = _named(
            saga_pb2.RetryDeadLetterRequest(reason=reason or "retried from the dashboard", dry_run=dry_run),
            key,
            saga_type,
        )
        try:
            body = req.SerializeToString()
            reply = await self._router.to_holder(key, RETRY_DEAD_LETTER, body, self._caller(session))
        except RouterError as e:
            raise _http_error(e) from None
        answer = saga_pb2.RetryDeadLetterResponse.FromString(reply.body)
        if dry_run:
            return {
                "dry_run": True,
                "order_ids": list(answer.order_ids),
                "previews": [preview_json(p) for p in answer.previews],
            }
        return {"order_ids": list(answer.order_ids)}

    async def resolve(
        self, key: str, reason: str, session: Session, dry_run: bool = False, saga_type: str = ORDER_TYPE
    ) -> dict[str, Any]:
        req = _named(saga_pb2.ResolveDeadLetterRequest(reason=reason, dry_run=dry_run), key, saga_type)
        try:
            body = req.SerializeToString()
            reply = await self._router.to_holder(key, RESOLVE_DEAD_LETTER, body, self._caller(session))
        except RouterError as e:
            raise _http_error(e) from None
        answer = saga_pb2.ResolveDeadLetterResponse.FromString(reply.body)
        if dry_run:
            return {"dry_run": True, "preview": preview_json(answer.preview), "saga": saga_json(answer.saga)}
        return {"saga": saga_json(answer.saga)}


def merge_definitions(answers: list[list[saga_pb2.DefinitionVersion]]) -> list[dict[str, Any]]:
    """The shards' ListDefinitions answers as one list, by hash: the sagas that need a version summed, `active` only
    if every answering shard starts new sagas of its type on it, `shards` how many hold it."""
    merged: dict[str, dict[str, Any]] = {}
    for versions in answers:
        for d in versions:
            row = merged.setdefault(
                d.hash,
                {
                    "name": d.name,
                    "version": d.version,
                    "hash": d.hash,
                    "label": definition_label(d.name, d.version, d.hash),
                    "active": True,
                    "sagas": 0,
                    "shards": 0,
                    "step_ids": list(d.step_ids),
                },
            )
            row["active"] = row["active"] and d.active
            row["sagas"] += d.sagas
            row["shards"] += 1
    for row in merged.values():
        # A shard that does not hold a version does not start new sagas on it.
        row["active"] = row["active"] and row["shards"] == len(answers)
    return sorted(merged.values(), key=lambda r: r["name"])


def _named(request: M, key: str, saga_type: str) -> M:
    """The request naming one saga: by order_id for the order flow (as always), else by saga_type and key."""
    if saga_type == ORDER_TYPE:
        request.order_id = key
    else:
        request.saga_type, request.key = saga_type, key
    return request


def _key(raw: str) -> str:
    if not _ORDER_ID.match(raw):
        raise HttpError(HTTPStatus.BAD_REQUEST, "key: 1-128 characters of [A-Za-z0-9._:-]")
    return raw


def _saga_type(query: dict[str, str]) -> str:
    saga_type = query.get("type", "") or ORDER_TYPE
    if not _SAGA_TYPE.match(saga_type):
        raise HttpError(HTTPStatus.BAD_REQUEST, "type: a definition name (a lowercase letter, then a-z, 0-9 or _)")
    return saga_type


__all__ = ["Dashboard", "dead_letter_json", "definition_label", "merge_definitions", "preview_json", "saga_json"]
