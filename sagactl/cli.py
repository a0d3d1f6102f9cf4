"""sagactl's commands and exit codes.

    sagactl place [ORDER_ID] --item sku-1=2 [--token tok_ok] [--amount-cents 2500] [--no-wait]
    sagactl start --type T --key K --input-json '{...}' [--input-type NAME] [--ttl-ms N] [--no-wait]
    sagactl get ORDER_ID [--events]              |  sagactl get --type T --key K [--events]
    sagactl list [--state running] [--page-size 50] [--limit N]
    sagactl watch ORDER_ID                       |  sagactl watch --type T --key K
    sagactl dlq list [--step process_payment] [--include-closed]
    sagactl dlq retry ORDER_ID [--reason R]      |  sagactl dlq retry --all [--step S] [--reason R]
    sagactl dlq resolve ORDER_ID --reason R
    (dlq retry and dlq resolve take --type T --key K instead of ORDER_ID too: a saga of any type)
    sagactl dlq retry|resolve ... --dry-run      what it would do (every call, its key, the end state); changes nothing
    sagactl top [--interval 2] [--once]
    sagactl defs list                            saga definition versions: type, version, hash, active, sagas

Target: --router HOST:PORT, else $SAGA_ROUTER, else 127.0.0.1:50051. With --tls-cert, --tls-key and --tls-ca, sagactl
speaks mutual TLS (the router's certificate must name the host dialled); without them plaintext, which is refused to a
non-loopback router unless --insecure. --token-file PATH sends the token in it as `authorization: Bearer ...` on every
call (who the caller is, when the certificate names only a machine). --json prints JSON (proto field names) instead of
tables. Calls are not retried: a router that is down is exit code 3 at once. --retry retries the calls that are safe to
repeat (all but watch, and dlq retry and dlq resolve unless --dry-run) through UNAVAILABLE and RESOURCE_EXHAUSTED, with
backoff (at least the server's retry-after-ms), within --timeout.

Every saga call goes through the Python client library (sagaclient.SyncSagaClient); `journals` reads the shards'
/metrics instead.

Exit codes (EXIT_CODES): 0 ok; 1 the saga did not succeed (place answered FAILED, watch ended other than SUCCEEDED); 2
usage or a request the server called invalid; 3 unavailable: the router is unreachable, or a shard behind it, or no
answer in time (retry later); 4 not found; 5 refused by the server (e.g. retrying a saga that is not dead-lettered,
ALREADY_EXISTS, RESOURCE_EXHAUSTED, UNAUTHENTICATED, PERMISSION_DENIED).
"""

from __future__ import annotations

import argparse
import json
import os
import sys
import uuid
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

from google.protobuf import json_format, symbol_database
from google.protobuf.message import Message

from common.tls import TlsConfigError, add_tls_arguments, tls_from_args
from protos.saga.v1 import saga_pb2
from sagaclient import NO_RETRY, PaymentInfo, RetryPolicy

from . import journals, render, top
from .client import (
    EXIT_NOT_FOUND,
    EXIT_OK,
    EXIT_REFUSED,
    EXIT_SAGA_FAILED,
    EXIT_UNREACHABLE,
    EXIT_USAGE,
    CallFailed,
    Client,
    UsageError,
    read_token,
)

DEFAULT_ROUTER = "127.0.0.1:50051"
CALL_TIMEOUT_S = 10.0
PLACE_TIMEOUT_S = 60.0
"""PlaceOrder waits for the whole saga (a slow payment, retries)."""
EXIT_CODES = {
    EXIT_OK: "ok",
    EXIT_SAGA_FAILED: "the saga did not succeed",
    EXIT_USAGE: "usage error or invalid request",
    EXIT_UNREACHABLE: "unavailable (router or a shard unreachable, or no answer in time)",
    EXIT_NOT_FOUND: "not found",
    EXIT_REFUSED: "refused by the server",
}
DRY_RUN_HELP = "only show what it would do (the calls, their idempotency keys, the end state); change nothing"
_STATES = {n.removeprefix("SAGA_STATE_").lower(): v for n, v in saga_pb2.SagaState.items() if v}
_STEPS = {n.removeprefix("STEP_").lower(): v for n, v in saga_pb2.Step.items() if v}


def _named_by_type(parser: argparse.ArgumentParser) -> None:
    """--type and --key: a saga of any type, instead of an order id (a saga of type order)."""
    parser.add_argument("--type", dest="saga_type", default="", metavar="T", help="the saga type (with --key)")
    parser.add_argument("--key", default="", metavar="K", help="the saga's key (instead of ORDER_ID)")


def _common(suppress: bool) -> argparse.ArgumentParser:
    """The flags every command takes, before or after the command name. After it, their defaults are suppressed so
    they do not overwrite a value given before it (argparse copies subparser defaults over the parent's)."""
    common = argparse.ArgumentParser(add_help=False)

    def default(value: object) -> object:
        return argparse.SUPPRESS if suppress else value

    common.add_argument(
        "--router", default=default(None), help=f"router host:port (default $SAGA_ROUTER or {DEFAULT_ROUTER})"
    )
    common.add_argument("--json", action="store_true", default=default(False), help="print JSON instead of tables")
    common.add_argument("--timeout", type=float, default=default(None), help="seconds per call (default 10; place: 60)")
    common.add_argument(
        "--retry",
        action="store_true",
        default=default(False),
        help="retry UNAVAILABLE and RESOURCE_EXHAUSTED within --timeout (not watch; dlq retry/resolve only --dry-run)",
    )
    add_tls_arguments(common, suppress_defaults=suppress)
    common.add_argument(
        "--token-file",
        type=Path,
        default=default(None),
        metavar="PATH",
        help="send the bearer token in this file (a JWT or a static token; never printed)",
    )
    return common


def _parser() -> argparse.ArgumentParser:
    common = _common(suppress=True)
    epilog = "exit codes: " + "; ".join(f"{k} {v}" for k, v in EXIT_CODES.items())
    p = argparse.ArgumentParser(
        prog="sagactl",
        description="Operate the saga coordinator through its router.",
        epilog=epilog,
        parents=[_common(suppress=False)],
    )
    sub = p.add_subparsers(dest="command", required=True, metavar="COMMAND")

    place = sub.add_parser("place", parents=[common], help="place an order (runs its saga)", epilog=epilog)
    place.add_argument("order_id", nargs="?", help="order id (default: a fresh ctl-<random> id)")
    place.add_argument("--user", default="sagactl", help="buyer id (default sagactl)")
    place.add_argument(
        "--item", action="append", metavar="ITEM=QTY", help="an order line, repeatable (default sku-1=1)"
    )
    place.add_argument("--token", default="tok_ok", help="payment token (default tok_ok; never printed)")
    place.add_argument("--amount-cents", type=int, default=2500, help="amount in minor units (default 2500)")
    place.add_argument("--currency", default="EUR", help="ISO 4217 code (default EUR)")
    place.add_argument("--ttl-ms", type=int, help="saga deadline in ms (default: the shard's)")
    place.add_argument("--no-wait", action="store_true", help="answer PENDING once accepted; then `sagactl watch`")

    start = sub.add_parser("start", parents=[common], help="start a saga of any defined type", epilog=epilog)
    start.add_argument("--type", dest="saga_type", required=True, metavar="T", help="the saga type, e.g. order_loyalty")
    start.add_argument("--key", required=True, metavar="K", help="the saga's key (the input's key field)")
    start.add_argument("--input-json", required=True, metavar="JSON", help="the input, as the JSON of its message")
    start.add_argument(
        "--input-type",
        metavar="NAME",
        help="the input's message type (default: the active definition's, from ListDefinitions)",
    )
    start.add_argument("--ttl-ms", type=int, help="saga deadline in ms (default: the definition's, else the shard's)")
    start.add_argument("--no-wait", action="store_true", help="answer once accepted; then `sagactl watch`")

    get = sub.add_parser("get", parents=[common], help="one saga, its steps (and --events)", epilog=epilog)
    get.add_argument("order_id", nargs="?")
    _named_by_type(get)
    get.add_argument("--events", action="store_true", help="also show the saga's event log")

    ls = sub.add_parser("list", parents=[common], help="sagas, newest first", epilog=epilog)
    ls.add_argument("--state", type=str.lower, choices=sorted(_STATES), help="only sagas in this state (any case)")
    ls.add_argument("--page-size", type=int, default=50, help="sagas per call, 1-500 (default 50)")
    ls.add_argument("--limit", type=int, help="follow pages up to this many sagas (default: one page)")

    watch = sub.add_parser("watch", parents=[common], help="follow a saga until it ends", epilog=epilog)
    watch.add_argument("order_id", nargs="?")
    _named_by_type(watch)

    dlq = sub.add_parser("dlq", help="dead letters: sagas parked for an operator (a step failed for good)")
    dsub = dlq.add_subparsers(dest="dlq_command", required=True, metavar="ACTION")
    dl = dsub.add_parser("list", parents=[common], help="open dead letters, oldest first", epilog=epilog)
    dl.add_argument("--step", type=str.lower, choices=sorted(_STEPS), help="only this step's")
    dl.add_argument("--include-closed", action="store_true", help="also retried and resolved ones")
    dl.add_argument("--page-size", type=int, default=100, help="at most this many, 1-500 (default 100)")
    dr = dsub.add_parser("retry", parents=[common], help="resume one parked saga (or --all)", epilog=epilog)
    dr.add_argument("order_id", nargs="?")
    _named_by_type(dr)
    dr.add_argument("--all", action="store_true", help="every open dead letter (of --step)")
    dr.add_argument("--step", type=str.lower, choices=sorted(_STEPS), help="with --all: only this step's")
    dr.add_argument("--reason", default="", help="written to the saga's event log")
    dr.add_argument("--dry-run", action="store_true", help=DRY_RUN_HELP)
    dv = dsub.add_parser("resolve", parents=[common], help="mark one as fixed by hand", epilog=epilog)
    dv.add_argument("order_id", nargs="?")
    _named_by_type(dv)
    dv.add_argument("--reason", required=True, help="what was done (required; written to the saga's event log)")
    dv.add_argument("--dry-run", action="store_true", help=DRY_RUN_HELP)

    defs = sub.add_parser("defs", help="saga definitions (committed with `saga-router defs commit`)")
    defsub = defs.add_subparsers(dest="defs_command", required=True, metavar="ACTION")
    defsub.add_parser(
        "list",
        parents=[common],
        help="every version the shards hold, whether new sagas start on it, its sagas",
        epilog=epilog,
    )

    j = sub.add_parser(
        "journals", parents=[common], help="each shard's journal and replica (its /metrics)", epilog=epilog
    )
    j.add_argument("--metrics", action="append", metavar="HOST:PORT", help="a shard's /metrics address (repeatable)")
    j.add_argument("--shards-file", metavar="PATH", help="the router's shards.toml: every shard's metrics address")

    t = sub.add_parser("top", parents=[common], help="live view of in-flight sagas and step latencies", epilog=epilog)
    t.add_argument("--interval", type=float, default=2.0, help="seconds between refreshes (default 2)")
    t.add_argument("--once", action="store_true", help="print one frame and exit (with --json: one JSON object)")
    t.add_argument("--rows", type=int, default=15, help="in-flight sagas shown (default 15)")
    return p


def _items(specs: Sequence[str] | None) -> list[saga_pb2.Item]:
    out = []
    for spec in specs or ["sku-1=1"]:
        item_id, sep, qty = spec.rpartition("=")
        if not sep or not item_id or not qty.isdigit():
            raise UsageError(f"--item: expected ITEM=QTY (e.g. sku-1=2), got {spec!r}")
        out.append(saga_pb2.Item(item_id=item_id, quantity=int(qty)))
    return out


def _place(c: Client, ns: argparse.Namespace) -> int:
    order_id = ns.order_id or f"ctl-{uuid.uuid4().hex[:12]}"
    items = _items(ns.item)
    payment = PaymentInfo(payment_token=ns.token, amount_cents=ns.amount_cents, currency=ns.currency)
    with c.calling(f"place {order_id}"):
        resp = c.sagas.place_order(
            order_id,
            ns.user,
            items,
            payment,
            ttl_ms=ns.ttl_ms,
            no_wait=ns.no_wait,
            timeout_s=ns.timeout or PLACE_TIMEOUT_S,
        )
    status = str(saga_pb2.PlaceOrderStatus.Name(resp.status))
    if ns.json:
        render.print_json(render.to_dict(resp))
    else:
        line = f"{order_id}: {status} (saga {resp.saga_id}, {render.state(resp.state)})"
        print(line + (f": {resp.error_message}" if resp.error_message else ""))
    return EXIT_SAGA_FAILED if resp.status == saga_pb2.FAILED else EXIT_OK


def _saga(ns: argparse.Namespace) -> tuple[str, str, str]:
    """(order_id, saga_type, key): the saga a command names, by ORDER_ID or by --type and --key (type default
    order)."""
    if bool(ns.order_id) == bool(ns.key):
        raise UsageError("name the saga by ORDER_ID, or by --type T --key K (not both)")
    if ns.saga_type and not ns.key:
        raise UsageError("--type: goes with --key")
    return (ns.order_id or "", ns.saga_type, ns.key)


def _name(ns: argparse.Namespace) -> str:
    return render.saga_name(ns.saga_type, ns.key, ns.order_id or "")


def _input_type(c: Client, saga_type: str) -> str:
    """The input message type of the version new sagas of saga_type start on (ListDefinitions' documents)."""
    with c.calling("list definitions"):
        versions = c.sagas.list_definitions(include_documents=True)
    for d in versions:
        if d.name == saga_type and d.active:
            return str(json.loads(d.document_json)["input"]["type"])
    known = sorted({d.name for d in versions})
    raise UsageError(f"--type: no active definition of {saga_type!r} (defined: {', '.join(known) or 'none'})")


def _input(type_name: str, text: str) -> Message:
    """The --input-json text parsed into the message type (one of the protos sagactl knows)."""
    try:
        cls: Any = symbol_database.Default().GetSymbol(type_name)
    except KeyError:
        raise UsageError(f"--input-type: {type_name} is not a message type sagactl knows") from None
    try:
        message: Message = json_format.Parse(text, cls())
    except json_format.ParseError as e:
        raise UsageError(f"--input-json: not a {type_name}: {e}") from None
    return message


def _start(c: Client, ns: argparse.Namespace) -> int:
    message = _input(ns.input_type or _input_type(c, ns.saga_type), ns.input_json)
    name = render.saga_name(ns.saga_type, ns.key)
    with c.calling(f"start {name}"):
        resp = c.sagas.start_saga(
            ns.saga_type, ns.key, message, ttl_ms=ns.ttl_ms, no_wait=ns.no_wait, timeout_s=ns.timeout or PLACE_TIMEOUT_S
        )
    if ns.json:
        render.print_json(render.to_dict(resp))
    else:
        version = render.definition(resp.saga_type, resp.definition_version, resp.definition_hash)
        line = f"{name}: {render.state(resp.state)} (saga {resp.saga_id}, {version})"
        print(line + (f": {resp.error_message}" if resp.error_message else ""))
    done_badly = resp.state not in (saga_pb2.SAGA_STATE_SUCCEEDED, saga_pb2.SAGA_STATE_RUNNING)
    return EXIT_SAGA_FAILED if done_badly else EXIT_OK


def _get(c: Client, ns: argparse.Namespace) -> int:
    with c.calling(f"get {_name(ns)}"):
        order_id, saga_type, key = _saga(ns)
        s = c.sagas.get_saga(order_id, saga_type=saga_type, key=key, include_events=ns.events)
    if ns.json:
        render.print_json(render.to_dict(s))
    else:
        render.saga_detail(s)
    return EXIT_OK


def _list(c: Client, ns: argparse.Namespace) -> int:
    if not 1 <= ns.page_size <= 500:
        raise UsageError("--page-size: must be 1-500")
    if ns.limit is not None and ns.limit < 1:
        raise UsageError("--limit: must be >= 1")
    sagas, token = c.list_sagas(_STATES.get(ns.state or "", 0), ns.page_size, ns.limit)
    if ns.json:
        render.print_json({"sagas": [render.to_dict(s) for s in sagas], "next_page_token": token})
    else:
        render.table(render.saga_rows(sagas), render.SAGA_HEADERS)
        if token:
            print(f"(more: --limit {len(sagas) + ns.page_size} shows the next page)", file=sys.stderr)
    return EXIT_OK


def _watch(c: Client, ns: argparse.Namespace) -> int:
    last: saga_pb2.Saga | None = None
    t0: float | None = None
    name = _name(ns)
    order_id, saga_type, key = _saga(ns)
    with c.calling(f"watch {name}"):
        for update in c.sagas.watch_saga(order_id, saga_type=saga_type, key=key):
            last = update.saga
            if t0 is None:
                t0 = render.seconds(update.saga.created_at)
            if ns.json:
                print(render.json_line(update), flush=True)
            elif not update.HasField("event"):
                s = update.saga
                version = render.definition(s.saga_type, s.definition_version, s.definition_hash)
                print(f"{name}: {render.state(s.state)} on {s.shard_id} ({version})", flush=True)
            else:
                row = render.event_row(update.event, t0)
                print("  ".join(str(cell) for cell in row if cell != ""), flush=True)
    if last is None:
        return EXIT_NOT_FOUND
    if not ns.json:
        print(f"{name}: {render.state(last.state)}" + (f": {last.last_error}" if last.last_error else ""))
    return EXIT_OK if last.state == saga_pb2.SAGA_STATE_SUCCEEDED else EXIT_SAGA_FAILED


def _dlq(c: Client, ns: argparse.Namespace) -> int:
    if ns.dlq_command == "list":
        if not 1 <= ns.page_size <= 500:
            raise UsageError("--page-size: must be 1-500")
        with c.calling("dlq list"):
            (page,) = c.sagas.list_dead_letters(
                step=_STEPS.get(ns.step or "", 0), include_closed=ns.include_closed, page_size=ns.page_size, max_pages=1
            )
        if ns.json:
            render.print_json({"dead_letters": [render.to_dict(d) for d in page.dead_letters]})
        else:
            render.table(render.dead_letter_rows(page.dead_letters), render.DEAD_LETTER_HEADERS)
        return EXIT_OK
    if ns.dlq_command == "retry":
        if bool(ns.order_id or ns.key) == bool(ns.all):
            raise UsageError("dlq retry: give one ORDER_ID (or --type T --key K), or --all (not both)")
        if ns.step and not ns.all:
            raise UsageError("--step: only with --all")
        with c.calling("dlq retry" + (" --dry-run" if ns.dry_run else "")):
            if ns.all:
                ids = c.sagas.retry_all_dead_letters(ns.reason, step=_STEPS.get(ns.step or "", 0), dry_run=ns.dry_run)
            else:
                order_id, saga_type, key = _saga(ns)
                ids = c.sagas.retry_dead_letter(order_id, ns.reason, saga_type=saga_type, key=key, dry_run=ns.dry_run)
        if ns.dry_run:
            return _dry_run(ns, list(ids), ids.previews)
        if ns.json:
            render.print_json({"order_ids": ids})
        else:
            print(f"resumed {len(ids)} saga(s)" + (": " + ", ".join(ids) if ids else ""))
        return EXIT_OK
    if not ns.reason.strip():
        raise UsageError("--reason: required (what was fixed by hand)")
    order_id, saga_type, key = _saga(ns)
    with c.calling(f"dlq resolve {_name(ns)}" + (" --dry-run" if ns.dry_run else "")):
        saga = c.sagas.resolve_dead_letter(order_id, ns.reason, saga_type=saga_type, key=key, dry_run=ns.dry_run)
    if ns.dry_run:
        # Resolving calls no service: the shard's answer is the saga as it stands, which says all there is to say.
        plan = saga_pb2.SagaPreview(
            order_id=saga.order_id,
            saga_type=saga.saga_type,
            key=saga.key,
            saga_id=saga.saga_id,
            shard_id=saga.shard_id,
            state_now=saga.state,
            end_state=saga_pb2.SAGA_STATE_RESOLVED,
        )
        return _dry_run(ns, [saga.key or saga.order_id], [plan])
    if ns.json:
        render.print_json({"saga": render.to_dict(saga)})
    else:
        print(f"{_name(ns)}: {render.state(saga.state)}")
    return EXIT_OK


def _defs(c: Client, ns: argparse.Namespace) -> int:
    listed = c.list_definitions()
    if ns.json:
        render.print_json({"definitions": [render.to_dict(d) for d in listed.definitions]})
    else:
        render.table(render.definition_rows(listed.definitions), render.DEFINITION_HEADERS)
    return EXIT_OK


def _dry_run(ns: argparse.Namespace, order_ids: list[str], previews: Sequence[saga_pb2.SagaPreview]) -> int:
    """Prints what `dlq retry` or `dlq resolve` would do; nothing was changed, so this is always exit code 0."""
    if ns.json:
        render.print_json({"dry_run": True, "order_ids": order_ids, "previews": [render.to_dict(p) for p in previews]})
        return EXIT_OK
    # A saga parked past its pivot resumes forward (its retriable step); any other resumes its compensation.
    forward = any(c.action == saga_pb2.ACTION_FORWARD for p in previews for c in p.calls)
    what = ("resume" if forward else "resume compensation of") if ns.dlq_command == "retry" else "resolve"
    print(f"dry run, nothing was changed: without --dry-run this would {what} {len(previews)} saga(s)")
    for p in previews:
        print()
        render.preview(p)
    return EXIT_OK


def run(argv: Sequence[str], env: Mapping[str, str]) -> int:
    parser = _parser()
    ns = parser.parse_args(argv)  # exits 2 with a usage message on bad arguments
    router = ns.router or env.get("SAGA_ROUTER") or DEFAULT_ROUTER
    host, sep, port = router.rpartition(":")
    if not sep or not host or not port.isdigit():
        print(f"sagactl: --router: expected HOST:PORT, got {router!r}", file=sys.stderr)
        return EXIT_USAGE
    if ns.timeout is not None and ns.timeout <= 0:
        print("sagactl: --timeout: must be > 0", file=sys.stderr)
        return EXIT_USAGE
    try:
        token = read_token(ns.token_file) if ns.token_file is not None else None
        retry = RetryPolicy() if ns.retry else NO_RETRY
        client = Client(router, ns.timeout or CALL_TIMEOUT_S, tls_from_args(ns), token, retry)
    except (TlsConfigError, UsageError) as e:
        print(f"sagactl: {e}", file=sys.stderr)
        return EXIT_USAGE
    commands = {
        "place": _place,
        "start": _start,
        "get": _get,
        "list": _list,
        "watch": _watch,
        "dlq": _dlq,
        "defs": _defs,
        "top": top.run,
        "journals": journals.run,
    }
    try:
        return commands[ns.command](client, ns)
    except UsageError as e:
        print(f"sagactl: {e}", file=sys.stderr)
        return EXIT_USAGE
    except CallFailed as e:
        if ns.json:
            render.print_json({"error": e.message, "code": e.code, "exit_code": e.exit_code}, sys.stderr)
        else:
            print(f"sagactl: {e.message}", file=sys.stderr)
        return e.exit_code
    except KeyboardInterrupt:
        return 130
    finally:
        client.close()


def main(argv: Sequence[str] | None = None) -> int:
    try:
        return run(list(sys.argv[1:] if argv is None else argv), os.environ)
    except BrokenPipeError:
        # `sagactl list | head`: the reader left. Point stdout at /dev/null so the exit flush does not fail again.
        os.dup2(os.open(os.devnull, os.O_WRONLY), sys.stdout.fileno())
        return EXIT_OK


__all__ = ["EXIT_CODES", "EXIT_NOT_FOUND", "EXIT_REFUSED", "EXIT_UNREACHABLE", "main", "run"]
