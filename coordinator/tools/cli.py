"""saga-defs: the console script. common.definitions.cli's commands (check, schema, and any added there) unchanged,
plus the two that run the coordinator itself:

    saga-defs plan FILE [--input JSON] [--fail-at STEP=OUTCOME]... [--json]
    saga-defs verify FILE [--input JSON] [--json]

`plan` prints every call the coordinator makes for one saga when the named steps fail as said; `verify` runs every
step with every outcome and checks the invariants (docs/definitions.md, "Plan and verify"). They live here, not in
common, because common may not import the coordinator (tests/architecture/test_layers.py).

Exit status: 0 the plan ran / verify found nothing; 1 the file has problems (as `check`) / verify found a violation;
2 the command could not run (bad arguments, an unreadable file, an input the shard refuses).
"""

from __future__ import annotations

import argparse
import asyncio
import json
import sys
from collections.abc import Sequence
from pathlib import Path
from typing import Any

from google.protobuf import json_format
from google.protobuf.message import Message

from common.definitions import cli as common_cli
from common.definitions.check import load
from common.definitions.model import Definition
from common.definitions.problems import DefinitionError
from coordinator.tools import plan as planning
from coordinator.tools import verify as verifying
from coordinator.tools.messages import default_input, parse_input
from coordinator.tools.sandbox import SandboxError
from coordinator.tools.services import Outcome

EXIT_OK, EXIT_PROBLEMS, EXIT_CANNOT_RUN = common_cli.EXIT_OK, common_cli.EXIT_PROBLEMS, common_cli.EXIT_CANNOT_RUN
OURS = ("plan", "verify")


class CannotRun(Exception):
    """Exit status 2, with this message."""


def build_parser() -> argparse.ArgumentParser:
    parser = common_cli.build_parser()
    commands = _commands(parser)
    outcomes = ", ".join(o.value for o in Outcome if o is not Outcome.OK)
    p = commands.add_parser(
        "plan",
        help="every call the coordinator makes for one saga when given steps fail, and where it ends",
        description="Runs one saga of the definition through the real engine against fake services (virtual time)"
        " and prints every call it makes: step, action, method, request (payment fields masked), idempotency key,"
        " attempt and answer; then the saga's end state.",
    )
    p.add_argument("file", type=Path, metavar="FILE", help="a definition file, YAML or JSON")
    p.add_argument(
        "--fail-at",
        action=_InOrder,
        dest="injected",
        default=[],
        metavar="STEP=OUTCOME",
        help=f"the step's forward call meets OUTCOME ({outcomes}); repeatable; every other call answers OK",
    )
    p.add_argument(
        "--then",
        action=_InOrder,
        dest="injected",
        metavar="OUTCOME",
        help="after a --fail-at: what the step's next attempt meets (ok, or another outcome); repeatable, in order;"
        " the last one holds for every later attempt (without --then, the failure does)",
    )
    _input_argument(p)
    p.add_argument("--json", action="store_true", help="print one JSON document")
    v = commands.add_parser(
        "verify",
        help="run every step with every outcome and check the invariants on the services' ledger",
        description="For every step and every outcome (ok, rejected, unknown, timeout, applied-then-lost,"
        " accepted-then-failed) runs a saga through the real engine and checks that every effect is undone or kept as"
        " the kinds say, nothing is applied twice, and the saga ends as expected; and that the steps' policies can"
        " finish within the default TTL. Exit status 1 on any violation.",
    )
    v.add_argument("file", type=Path, metavar="FILE", help="a definition file, YAML or JSON")
    _input_argument(v)
    v.add_argument("--json", action="store_true", help="print one JSON document")
    return parser


def _commands(parser: argparse.ArgumentParser) -> argparse._SubParsersAction[argparse.ArgumentParser]:
    """common's subcommands, to add ours to: argparse has no public accessor, and building the parser here instead
    would fork the commands common owns (check, schema, and those still to come there)."""
    for action in parser._actions:
        if isinstance(action, argparse._SubParsersAction):
            return action
    raise AssertionError("common.definitions.cli's parser has no subcommands")


def _input_argument(p: argparse.ArgumentParser) -> None:
    p.add_argument(
        "--input",
        metavar="JSON",
        help="the saga's input as JSON (protobuf's JSON mapping of the definition's input type); default: every"
        f' string "x", number 1, one element per list, the key "{planning.PLAN_KEY}"',
    )


def _definition(path: Path) -> Definition:
    try:
        text = path.read_text(encoding="utf-8")
    except (OSError, UnicodeDecodeError) as e:
        raise CannotRun(f"cannot read {path}: {getattr(e, 'strerror', None) or 'not UTF-8 text'}") from e
    return load(path, text)


def _input(flow: Definition, text: str | None) -> Message:
    if text is None:
        return default_input(flow.input_type, flow.key_field, planning.PLAN_KEY)
    try:
        return parse_input(flow.input_type, text)
    except json_format.ParseError as e:
        raise CannotRun(f"--input is not a {flow.input_type.DESCRIPTOR.full_name} in JSON: {e}") from e


class _InOrder(argparse.Action):
    """Keeps --fail-at and --then in the order given: (option, value) pairs in one list."""

    def __call__(
        self, parser: argparse.ArgumentParser, namespace: argparse.Namespace, values: Any, option: str | None = None
    ) -> None:
        seen = list(getattr(namespace, self.dest, None) or [])
        seen.append((option or "", values))
        setattr(namespace, self.dest, seen)


async def _plan(args: argparse.Namespace) -> tuple[int, Any, str]:
    flow = _definition(args.file)
    failures: dict[str, Outcome] = {}
    then: dict[str, tuple[Outcome, ...]] = {}
    step = ""
    for option, text in args.injected:
        if option == "--then":
            if not step:
                raise CannotRun(f"--then {text}: comes after a --fail-at STEP=OUTCOME")
            try:
                then[step] = (*then.get(step, ()), Outcome(text))
            except ValueError:
                raise CannotRun(f"--then {text}: no outcome {text!r} (one of {', '.join(Outcome)})") from None
            continue
        try:
            step, outcome = planning.parse_failure(text)
        except ValueError as e:
            raise CannotRun(f"--fail-at {e}") from e
        found = flow.by_id(step)
        if found is None:
            steps = ", ".join(s.id for s in flow.steps)
            raise CannotRun(f"--fail-at {text}: {flow.name} has no step {step!r} (its steps: {steps})")
        if not outcome.applies_to(found):
            method = found.call.method
            raise CannotRun(f"--fail-at {text}: {method} cannot be long-running (its response has no `operation`)")
        failures[step] = outcome
    result = await planning.plan(flow, _input(flow, args.input), failures, then=then)
    return EXIT_OK, result.as_dict(), planning.render(result)


async def _verify(args: argparse.Namespace) -> tuple[int, Any, str]:
    flow = _definition(args.file)
    message = _input(flow, args.input) if args.input is not None else None
    report = await verifying.verify(flow, message)
    return (EXIT_OK if report.ok else EXIT_PROBLEMS), report.as_dict(), verifying.render(report)


def main(argv: Sequence[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    if args.command not in OURS:
        return common_cli.main(argv)
    try:
        code, data, text = asyncio.run(_plan(args) if args.command == "plan" else _verify(args))
    except DefinitionError as e:
        if args.json:
            print(json.dumps({"file": str(args.file), "ok": False, "problems": [p.as_dict() for p in e.problems]}))
        for p in e.problems:
            print(f"{args.file}:{p}", file=sys.stderr if args.json else sys.stdout)
        print(f"{len(e.problems)} problem(s) in {args.file}: run `saga-defs check` on it", file=sys.stderr)
        return EXIT_PROBLEMS
    except (CannotRun, SandboxError) as e:
        print(f"saga-defs: {e}", file=sys.stderr)
        return EXIT_CANNOT_RUN
    print(json.dumps(data, indent=2) if args.json else text)
    return code


if __name__ == "__main__":
    sys.exit(main())
