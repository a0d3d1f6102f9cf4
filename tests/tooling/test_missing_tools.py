"""A tool `make test` needs but cannot install fails the run with the reason, in the Makefile and in the tests that use
it; SAGA_ALLOW_MISSING_TOOLS, naming the tool, turns that into a skip that says so. The tools are hidden by running
make and pytest with a PATH that has none of them (and no apt-get or npm to install them)."""

from __future__ import annotations

import os
import shutil
import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[2]
ALLOW = "SAGA_ALLOW_MISSING_TOOLS"
# Make's own $(shell ...) calls use these; none of them installs anything.
HELPERS = ("id", "find", "sort")
# One test per tool that a missing tool used to skip silently (buf is a file under node_modules, not a PATH lookup:
# its Makefile side is checked below).
NEEDS = {
    "chromium": "tests/dashboard/test_dashboard_browser_auth.py",
    "kubectl": "tests/deploy/test_manifests.py::test_the_schema_check_catches_a_misspelt_field",
    "promtool": "tests/deploy/test_replication.py::test_promtool_accepts_the_alerts",
    "go": "tests/protos/test_api.py::test_go_and_typescript_clients_generate_and_build",
}


@pytest.fixture
def bare_path(tmp_path: Path) -> str:
    """A PATH with a few basic programs and none of the tools, nor apt-get or npm."""
    bin_dir = tmp_path / "bin"
    bin_dir.mkdir()
    for name in HELPERS:
        found = shutil.which(name)
        assert found is not None, name
        (bin_dir / name).symlink_to(found)
    return str(bin_dir)


def _env(path: str, allow: str | None) -> dict[str, str]:
    # Not inside the caller's make: its jobserver descriptors mean nothing here.
    env = {k: v for k, v in os.environ.items() if k not in (ALLOW, "MAKEFLAGS", "MAKELEVEL", "MFLAGS")}
    env["PATH"] = path
    if allow is not None:
        env[ALLOW] = allow
    return env


def _make(path: str, allow: str | None, *targets: str) -> subprocess.CompletedProcess[str]:
    make = shutil.which("make")
    assert make is not None
    return subprocess.run(
        [make, "-s", *targets], cwd=ROOT, env=_env(path, allow), capture_output=True, text=True, timeout=120
    )


# (make's arguments, the tools it needs, in the order it checks them). -W: the buf rule runs as if the lock had
# changed, without touching anything (npm is not on the PATH, so nothing is installed).
TARGETS = [
    (("browser-deps",), ("chromium",)),
    (("k8s-deps",), ("kubectl", "promtool")),
    (("go-deps",), ("go",)),
    (("-W", "package-lock.json", "node_modules/.bin/buf"), ("buf",)),
]


@pytest.mark.parametrize(("args", "tools"), TARGETS, ids=[t[0][-1] for t in TARGETS])
def test_a_tool_make_cannot_install_fails_it_with_the_reason(
    bare_path: str, args: tuple[str, ...], tools: tuple[str, ...]
) -> None:
    for i, tool in enumerate(tools):
        allowed = ",".join(tools[:i]) or None  # the tools checked before this one are let go
        done = _make(bare_path, allowed, *args)
        assert done.returncode != 0, done.stdout + done.stderr
        assert f"{tool} unavailable: " in done.stderr, done.stderr
        assert f"{ALLOW}={tool}" in done.stderr, done.stderr  # the way out is named


@pytest.mark.parametrize(("args", "tools"), TARGETS, ids=[t[0][-1] for t in TARGETS])
def test_the_opt_out_lets_make_go_without_a_tool_and_says_so(
    bare_path: str, args: tuple[str, ...], tools: tuple[str, ...]
) -> None:
    done = _make(bare_path, ",".join(tools), *args)
    assert done.returncode == 0, done.stdout + done.stderr
    for tool in tools:
        assert f"{tool} unavailable: " in done.stdout and f"{ALLOW} names it" in done.stdout, done.stdout


def _pytest(path: str, allow: str | None) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [sys.executable, "-m", "pytest", "-q", "-p", "no:cacheprovider", *NEEDS.values()],
        cwd=ROOT,
        env=_env(path, allow),
        capture_output=True,
        text=True,
        timeout=300,
    )


def test_a_test_that_needs_a_missing_tool_fails_with_the_reason(bare_path: str) -> None:
    done = _pytest(bare_path, None)
    out = done.stdout + done.stderr
    assert done.returncode == 1, out
    assert " skipped" not in out, out
    for tool in NEEDS:
        assert f"set {ALLOW}={tool}" in out, (tool, out)


def test_with_the_opt_out_it_is_skipped_and_the_summary_says_why(bare_path: str) -> None:
    done = _pytest(bare_path, ",".join(NEEDS))
    out = done.stdout + done.stderr
    assert done.returncode == 0, out
    assert " failed" not in out and " error" not in out, out
    summary = [line for line in out.splitlines() if line.startswith("SKIPPED")]  # pytest's -ra lines
    for tool in NEEDS:
        assert any(f"skipped because {ALLOW} names {tool}" in line for line in summary), (tool, out)
