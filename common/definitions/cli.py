"""saga-defs: check saga definition files and print their JSON Schema (docs/definitions.md).

    saga-defs check FILE... [--descriptor-set F]... [--reflect HOST:PORT [--tls-ca ...]]... [--json]
    saga-defs schema > saga-v1.schema.json

`check` reports every problem of every file, one a line, `FILE:/json/pointer: code: message (hint: ...)`; a file
without problems prints its name, version label, hash and steps. Message and service types come from the project's
compiled protos, plus descriptor set files and the reflection of running servers for services outside the repo.

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

from common.definitions import check, reflect
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
    # plan, verify, diff and graph join these as subcommands of their own.
    commands = parser.add_subparsers(dest="command", required=True, metavar="COMMAND")
    c = commands.add_parser(
        "check",
        help="report every problem of the files, or their name, version, hash and steps",
        description="Structure (the JSON Schema), saga rules and types against the message and service descriptors.",
    )
    c.add_argument("files", nargs="+", type=Path, metavar="FILE", help="definition files, YAML or JSON")
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
    c.add_argument("--json", action="store_true", help="print one JSON document: a list with an entry per file")
    commands.add_parser("schema", help="print the JSON Schema of definition files (for editors)")
    return parser


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


def _check(args: argparse.Namespace) -> int:
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
        print(f"saga-defs: {e}", file=sys.stderr)
        return EXIT_CANNOT_RUN
    results = []
    for path, document, problems in read:
        definition = None
        if not problems:
            definition, problems = check.check(document, catalog)
        results.append(Result(str(path), document, definition, problems))
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
    return _check(args)


if __name__ == "__main__":
    sys.exit(main())
