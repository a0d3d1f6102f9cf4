"""Tools from outside Python that some tests need (Chromium, kubectl, promtool, Go, buf). `make test` installs them; a
test that finds one missing fails and says why, unless SAGA_ALLOW_MISSING_TOOLS (comma-separated tool names, the same
variable the Makefile reads) names it: then it is skipped, and the reason, shown in pytest's -ra summary, says so.

    require_tool("promtool", shutil.which("promtool") is not None, "promtool not found (Debian package prometheus)")
"""

from __future__ import annotations

import os

import pytest

ALLOW_MISSING = "SAGA_ALLOW_MISSING_TOOLS"
INSTALLED_BY = {
    "chromium": "make browser-deps",
    "kubectl": "make k8s-deps",
    "promtool": "make k8s-deps",
    "go": "make go-deps",
    "buf": "make setup, with npm",
}
"""Each tool the opt-out may name, and the target that installs it."""


def allowed_missing() -> frozenset[str]:
    """The tools SAGA_ALLOW_MISSING_TOOLS lets the suite go without."""
    return frozenset(name.strip() for name in os.environ.get(ALLOW_MISSING, "").split(",") if name.strip())


def require_tool(tool: str, present: bool, why: str) -> None:
    """Returns if `present`; otherwise skips the test when SAGA_ALLOW_MISSING_TOOLS names `tool`, else fails it. `why`
    says what is missing; both outcomes carry it."""
    if tool not in INSTALLED_BY:
        raise ValueError(f"unknown tool {tool!r}; known: {', '.join(INSTALLED_BY)}")
    if present:
        return
    if tool in allowed_missing():
        pytest.skip(f"{why}: skipped because {ALLOW_MISSING} names {tool}")
    pytest.fail(
        f"{why}. `{INSTALLED_BY[tool]}` installs it (`make test` does); to run without it, set {ALLOW_MISSING}={tool}",
        pytrace=False,
    )
