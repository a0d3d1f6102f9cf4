"""Runs a Markdown page's shell walkthrough as written: its ```sh blocks, command by command, against a real local
system, each command checked against the output the page shows under it.

The page's own first lines set R (a router), S (the stubs) and G (grpcurl); they are run with R and S pointed at the
system the test started. What a command's comment lines show is its expectation:
- `#  ERROR: Code: X ...`: the command fails, with gRPC code X;
- `#  {"key": "value", ...}`: it succeeds, and its JSON answer has each key with that value (a value with "..." or
  "…" in it, or cut off at the line's end, is a prefix);
- nothing: it succeeds (exit 0).
"""

from __future__ import annotations

import json
import os
import re
import subprocess
import sys
from dataclasses import dataclass, field
from pathlib import Path

ENV_LINE = re.compile(r"^R=\S+; S=\S+; (D=\S+; )?G=")


@dataclass
class Command:
    text: str
    line: int
    shows: list[str] = field(default_factory=list)


@dataclass
class Walkthrough:
    prelude: list[str]
    commands: list[Command]


def parse(page: Path) -> Walkthrough:
    """The sh blocks of `page`: the prelude (export and variable lines) and the commands with what each shows."""
    prelude: list[str] = []
    commands: list[Command] = []
    in_block = False
    pending = ""
    start = 0
    for n, raw in enumerate(page.read_text().splitlines(), 1):
        if raw.startswith("```"):
            in_block = raw.strip() == "```sh" if not in_block else False
            continue
        if not in_block:
            continue
        line = raw.rstrip()
        if pending:
            pending += "\n" + line
            if not _continues(pending):
                commands.append(Command(pending, start))
                pending = ""
            continue
        if not line.strip():
            continue
        if line.startswith("#  ") and commands:
            if line.startswith("#   ") and commands[-1].shows:  # a shown answer's next line
                commands[-1].shows[-1] += " " + line[4:].strip()
            else:
                commands[-1].shows.append(line[3:].strip())
            continue
        if line.startswith("#"):
            continue
        if line.startswith("export ") or ENV_LINE.match(line):
            prelude.append(line)
            continue
        if _continues(line):
            pending, start = line, n
        else:
            commands.append(Command(line, n))
    return Walkthrough(prelude, commands)


def _continues(text: str) -> bool:
    """A command goes on past this line: a trailing backslash, or a quoted argument (JSON) still open."""
    return text.endswith("\\") or text.count("'") % 2 == 1


def _expected_pairs(shown: str) -> list[tuple[str, str, bool]]:
    """(key, value, exact) of each "key": "value" a shown answer holds; not exact: a prefix."""
    pairs = []
    for m in re.finditer(r'"(\w+)":\s*"([^"]*)("?)', shown):
        key, value, closed = m.group(1), m.group(2), m.group(3)
        cut = not closed or "..." in value or "…" in value
        value = re.split(r"\.\.\.|…", value)[0]
        pairs.append((key, value, not cut))
    return pairs


def run(
    walk: Walkthrough, router: str, stubs: str, workdir: Path, timeout_s: float = 120.0, data_dir: Path | None = None
) -> list[str]:
    """Runs every command; returns what did not match the page (empty: the page is true). data_dir: what the page's D
    (the data directory of `make run`) stands for."""
    prelude = [re.sub(r"^R=\S+; S=\S+;", f"R={router}; S={stubs};", p) for p in walk.prelude]
    if data_dir is not None:
        prelude = [re.sub(r"; D=\S+;", f"; D={data_dir};", p) for p in prelude]
    env = {**os.environ, "PATH": f"{Path(sys.executable).parent}:{os.environ.get('PATH', '')}", "PWD": str(workdir)}
    problems = []
    for cmd in walk.commands:
        script = "\n".join([*prelude, cmd.text])
        done = subprocess.run(
            ["bash", "-c", script], capture_output=True, text=True, timeout=timeout_s, env=env, cwd=workdir
        )
        out = done.stdout + done.stderr
        where = f"line {cmd.line}: {cmd.text.splitlines()[0][:90]}"
        errors = [s for s in cmd.shows if s.startswith("ERROR:")]
        if errors:
            code = re.search(r"Code: (\w+)", errors[0])
            if done.returncode == 0 or (code and f"Code: {code.group(1)}" not in out):
                problems.append(f"{where}: expected {errors[0]!r}, got exit {done.returncode}: {out[:400]}")
            continue
        if done.returncode != 0:
            problems.append(f"{where}: exit {done.returncode}: {out[:400]}")
            continue
        for shown in (s for s in cmd.shows if s.startswith("{")):
            try:
                answer = json.loads(done.stdout)
            except ValueError:
                problems.append(f"{where}: not a JSON answer: {done.stdout[:200]}")
                continue
            for key, value, exact in _expected_pairs(shown):
                got = str(answer.get(key, ""))
                if (got != value) if exact else not got.startswith(value):
                    problems.append(f"{where}: {key} is {got!r}, the page shows {value!r}")
    return problems
