"""saga-defs: check, compare and draw saga definition files, print their JSON Schema (docs/definitions.md).

    saga-defs check FILE... [--descriptor-set F]... [--reflect HOST:PORT [--tls-ca ...]]... [--json]
    saga-defs diff A B [--json]                         (and the type sources of check)
    saga-defs graph FILE [--format mermaid|dot] [--json]  (likewise)
    saga-defs schema > saga-v1.schema.json

`check` reports every problem of every file, one a line, `FILE:/json/pointer: code: message (hint: ...)`; a file
without problems prints its name, version label, hash and steps. Message and service types come from the project's
compiled protos, plus descriptor set files and the reflection of running servers for services outside the repo.

`diff` and `graph` check their files the same way and print the problems of a file that does not check.

Exit status: 0 every file checks; 1 some file has a problem; 2 the command could not run (bad arguments, an unreadable
descriptor set, a server whose reflection does not answer).
"""

from __future__ import annotations

import argparse
import json
import sys
from collections.abc import Iterable, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from common.definitions import check, diff, graph, reflect
from common.definitions.catalog import CatalogError, add_files, default_catalog
from common.definitions.model import Definition
from common.definitions.problems import DefinitionError, Problem
from common.tls import TlsConfigError, add_tls_arguments, tls_from_args

EXIT_OK, EXIT_PROBLEMS, EXIT_CANNOT_RUN = 0, 1, 2


@dataclass(frozen=True, slots=True)
class Result:
    file: str
    document: Any
    definition: Definition | None
    problems: list[Problem]

    def as_dict(self) -> dict[str, Any]:
        d = self.definition
        doc = self.document if isinstance(self.document, dict) else {}
        name, version = doc.get("name"), doc.get("version")
        out: dict[str, Any] = {
            "file": self.file,
            "ok": d is not None,
            "name": d.name if d else name if isinstance(name, str) else None,
            "version": d.version if d else version if isinstance(version, str) else None,
            "hash": d.hash if d else None,
            "problems": [p.as_dict() for p in self.problems],
        }
        if d is not None:
            out["steps"] = [
                {
                    "number": s.number,
                    "id": s.id,
                    "kind": s.kind.value,
                    "method": s.call.method,
                    "compensation": s.compensation.method if s.compensation else None,
                }
                for s in d.steps
            ]
        return out


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="saga-defs",
        description="Check saga definition files (docs/definitions.md).",
        formatter_class=argparse.RawDescriptionHelpFormatter,
        epilog="Exit status: 0 every file checks, 1 a problem in some file, 2 the command could not run.",
    )
    # plan and verify join these as subcommands of their own.
    commands = parser.add_subparsers(dest="command", required=True, metavar="COMMAND")
    c = commands.add_parser(
        "check",
        help="report every problem of the files, or their name, version, hash and steps",
        description="Structure (the JSON Schema), saga rules and types against the message and service descriptors.",
    )
    c.add_argument("files", nargs="+", type=Path, metavar="FILE", help="definition files, YAML or JSON")
    _add_type_sources(c)
    c.add_argument("--json", action="store_true", help="print one JSON document: a list with an entry per file")
    d = commands.add_parser(
        "diff",
        help="what B changes from A, and what that means for sagas in flight and new ones",
        description="Semantic differences between two definition files: labels, input, TTL, steps by id (added, "
        "removed, reordered), kinds, services, methods, compensations, request fields, policies.",
        epilog="Exit status: 0 both files check, 1 either has a problem (printed), 2 the command could not run.",
    )
    d.add_argument("files", nargs=2, type=Path, metavar="FILE", help="A then B, YAML or JSON")
    _add_type_sources(d)
    d.add_argument("--json", action="store_true", help="print one JSON document")
    g = commands.add_parser(
        "graph",
        help="draw the saga: Mermaid or DOT text, or nodes and edges as JSON",
        description="Steps in order, failures and compensations as dashed edges, the pivot and retriable steps marked.",
        epilog="Exit status: 0 the file checks, 1 it has a problem (printed), 2 the command could not run.",
    )
    g.add_argument("files", nargs=1, type=Path, metavar="FILE", help="a definition file, YAML or JSON")
    g.add_argument("--format", choices=("mermaid", "dot"), default="mermaid", help="the text to print (mermaid)")
    _add_type_sources(g)
    g.add_argument("--json", action="store_true", help="print the nodes and edges as JSON instead")
    commands.add_parser("schema", help="print the JSON Schema of definition files (for editors)")
    return parser


def _add_type_sources(c: argparse.ArgumentParser) -> None:
    """Where message and service types come from besides the project's protos (every command that checks)."""
    c.add_argument(
        "--descriptor-set",
        action="append",
        default=[],
        type=Path,
        metavar="FILE",
        help="a FileDescriptorSet (protoc --include_imports --descriptor_set_out): types outside the repo; repeatable",
    )
    c.add_argument(
        "--reflect",
        action="append",
        default=[],
        metavar="HOST:PORT",
        help="also take the types the definitions name from this server's gRPC reflection; repeatable",
    )
    add_tls_arguments(c)


def _read(path: Path) -> tuple[Any, list[Problem]]:
    try:
        text = path.read_text(encoding="utf-8")
    except (OSError, UnicodeDecodeError) as e:
        why = getattr(e, "strerror", None) or "not UTF-8 text"
        return None, [Problem("file.unreadable", "", f"cannot read {path}: {why}", "check the path")]
    try:
        return check.parse(text, str(path)), []
    except DefinitionError as e:
        return None, e.problems


def symbols(documents: Iterable[Any]) -> list[str]:
    """The message and service names the documents mention, however malformed: what reflection is asked for."""
    found: list[str] = []
    for doc in documents:
        if not isinstance(doc, dict):
            continue
        if isinstance(doc.get("input"), dict) and isinstance(doc["input"].get("type"), str):
            found.append(doc["input"]["type"])
        for step in doc.get("steps") or []:
            if not isinstance(step, dict):
                continue
            for call in (step.get("call"), step.get("compensation")):
                if isinstance(call, dict) and isinstance(call.get("method"), str) and "/" in call["method"]:
                    found.append(call["method"].rpartition("/")[0])
    return list(dict.fromkeys(found))


def _print_text(results: list[Result]) -> None:
    for r in results:
        for p in r.problems:
            print(f"{r.file}:{p}")
        d = r.definition
        if d is None:
            continue
        print(f"{r.file}: {d.name} version {d.version} hash {d.hash}")
        width = max(len(s.id) for s in d.steps)
        method_width = max(len(s.call.method) for s in d.steps)
        for s in d.steps:
            undo = f"  undo {s.compensation.method}" if s.compensation else ""
            print(
                f"  {s.number:>2} {s.id:<{width}}  {s.kind.value:<11}  {s.call.method:<{method_width}}{undo}".rstrip()
            )


class _CannotRun(Exception):
    """A type source (descriptor set, reflection, TLS settings) failed: exit 2."""


def _results(args: argparse.Namespace) -> list[Result]:
    """Every file of args.files read and checked against the project's types plus the sources args names."""
    read = [(path, *_read(path)) for path in args.files]
    try:
        catalog = default_catalog(args.descriptor_set)
        if args.reflect:
            tls = tls_from_args(args)
            wanted = symbols(doc for _, doc, _ in read)
            for address in args.reflect:
                files, _unknown = reflect.fetch(address, wanted, tls)  # an unknown one is reported at its step
                add_files(files, f"reflection of {address}")
    except (CatalogError, reflect.ReflectionError, TlsConfigError) as e:
        raise _CannotRun(str(e)) from e
    results = []
    for path, document, problems in read:
        definition = None
        if not problems:
            definition, problems = check.check(document, catalog)
        results.append(Result(str(path), document, definition, problems))
    return results


def _print_problems(results: list[Result]) -> None:
    for r in results:
        for p in r.problems:
            print(f"{r.file}:{p}")
    failed = [r for r in results if r.problems]
    count = sum(len(r.problems) for r in failed)
    print(f"{count} problem(s) in {len(failed)} of {len(results)} file(s)", file=sys.stderr)


def _diff(args: argparse.Namespace) -> int:
    results = _results(args)
    a, b = (r.definition for r in results)
    found = diff.diff(a, b) if a is not None and b is not None else None
    if args.json:
        out: dict[str, Any] = {"files": [r.as_dict() for r in results]}
        if found is not None:
            out |= found.as_dict()
        print(json.dumps(out, indent=2))
    if found is None:
        if not args.json:
            _print_problems(results)
        return EXIT_PROBLEMS
    if not args.json:
        for label, r, d in (("A", results[0], found.a), ("B", results[1], found.b)):
            print(f"{label}: {r.file}: {d.name} version {d.version} hash {d.hash}")
        print("\n".join(found.lines()))
    return EXIT_OK


def _graph(args: argparse.Namespace) -> int:
    (result,) = _results(args)
    if result.definition is None:
        if args.json:
            print(json.dumps({"files": [result.as_dict()]}, indent=2))
        else:
            _print_problems([result])
        return EXIT_PROBLEMS
    drawn = graph.build(result.definition)
    if args.json:
        print(json.dumps(drawn.as_dict(), indent=2))
    else:
        print(graph.mermaid(drawn) if args.format == "mermaid" else graph.dot(drawn), end="")
    return EXIT_OK


def _check(args: argparse.Namespace) -> int:
    results = _results(args)
    if args.json:
        print(json.dumps([r.as_dict() for r in results], indent=2))
    else:
        _print_text(results)
    failed = [r for r in results if r.problems]
    if failed:
        count = sum(len(r.problems) for r in failed)
        print(f"{count} problem(s) in {len(failed)} of {len(results)} file(s)", file=sys.stderr)
        return EXIT_PROBLEMS
    return EXIT_OK


def main(argv: Sequence[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    if args.command == "schema":
        print(json.dumps(check.schema(), indent=2))
        return EXIT_OK
    run = {"check": _check, "diff": _diff, "graph": _graph}[args.command]
    try:
        return run(args)
    except _CannotRun as e:
        print(f"saga-defs: {e}", file=sys.stderr)
        return EXIT_CANNOT_RUN


if __name__ == "__main__":
    sys.exit(main())
