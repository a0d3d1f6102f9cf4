"""What `saga-defs check` (and the shard and router at start) report about a definition: every problem at once, each
with a stable code, a JSON Pointer into the file and a hint."""

from __future__ import annotations

from dataclasses import dataclass


@dataclass(frozen=True, slots=True)
class Problem:
    code: str
    """Stable: tools and tests match on it (docs/definitions.md lists them all)."""
    path: str
    """JSON Pointer into the document, e.g. "/steps/2/call/request/items"; "" for the whole file."""
    message: str
    hint: str = ""

    def __str__(self) -> str:
        where = self.path or "/"
        hint = f" (hint: {self.hint})" if self.hint else ""
        return f"{where}: {self.code}: {self.message}{hint}"

    def as_dict(self) -> dict[str, str]:
        return {"code": self.code, "path": self.path, "message": self.message, "hint": self.hint}


class DefinitionError(ValueError):
    """A definition that does not check: carries every problem found."""

    def __init__(self, source: str, problems: list[Problem]) -> None:
        self.source = source
        self.problems = problems
        lines = "\n  ".join(str(p) for p in problems)
        super().__init__(f"{source}: {len(problems)} problem(s):\n  {lines}")


def pointer(*parts: str | int) -> str:
    """A JSON Pointer (RFC 6901) from its parts."""
    return "".join("/" + str(p).replace("~", "~0").replace("/", "~1") for p in parts)
