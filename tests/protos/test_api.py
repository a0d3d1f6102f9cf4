"""The API as a product: protos/ lints clean, stays compatible with saga.v1's promise, and the clients buf.gen.yaml
describes for other languages generate and build. Each test runs the Makefile target CI and developers run, so the
rules live in one place (Makefile, buf.yaml, buf.gen.yaml)."""

from __future__ import annotations

import os
import shutil
import subprocess
from pathlib import Path

import pytest

from tests.helpers.tools import require_tool

ROOT = Path(__file__).resolve().parents[2]
BUF = ROOT / "node_modules" / ".bin" / "buf"


@pytest.fixture(autouse=True)
def _buf() -> None:
    require_tool("buf", BUF.exists(), f"buf is missing ({BUF}): npm was not found when `make setup` ran")


def _make(target: str) -> subprocess.CompletedProcess[str]:
    # Not inside the caller's make: its jobserver descriptors mean nothing here.
    env = {k: v for k, v in os.environ.items() if k not in ("MAKEFLAGS", "MAKELEVEL", "MFLAGS")}
    return subprocess.run(
        ["make", "-s", target], cwd=ROOT, env=env, capture_output=True, text=True, timeout=300, check=False
    )


def _ok(proc: subprocess.CompletedProcess[str]) -> str:
    assert proc.returncode == 0, proc.stdout + proc.stderr
    return proc.stdout


def test_the_protos_lint_clean() -> None:
    _ok(_make("buf-lint"))


def test_the_api_is_compatible_with_its_baseline_and_the_previous_commit() -> None:
    if subprocess.run(["git", "rev-parse", "HEAD~1"], cwd=ROOT, capture_output=True, check=False).returncode:
        pytest.skip("a clone without history (git fetch --unshallow): nothing to compare with")
    out = _ok(_make("buf-breaking"))
    assert "saga.v1 compatible with" in out


def test_the_breaking_check_catches_a_renamed_field(tmp_path: Path) -> None:
    """The check can fail: a field renamed in a copy of the protos is reported against the repository's."""
    changed = tmp_path / "changed"
    shutil.copytree(ROOT / "protos", changed / "protos", ignore=shutil.ignore_patterns("*.py", "*.pyi", "__pycache__"))
    shutil.copy(ROOT / "buf.yaml", changed / "buf.yaml")
    proto = changed / "protos" / "saga" / "v1" / "saga.proto"
    text = proto.read_text()
    assert "string order_id = 1;" in text
    proto.write_text(text.replace("string order_id = 1;", "string order_ref = 1;", 1))
    proc = subprocess.run(
        [str(BUF), "breaking", str(changed), "--against", str(ROOT)],
        cwd=ROOT,
        capture_output=True,
        text=True,
        timeout=120,
        check=False,
    )
    assert proc.returncode != 0
    assert "order_id" in proc.stdout + proc.stderr


def test_go_and_typescript_clients_generate_and_build() -> None:
    plugins = shutil.which("protoc-gen-go") is not None and shutil.which("protoc-gen-go-grpc") is not None
    require_tool("go", plugins, "Go's protoc plugins are missing (Debian packages protoc-gen-go protoc-gen-go-grpc)")
    out = _ok(_make("buf-generate-check"))
    assert "TypeScript client generated and type-checked" in out
    go = shutil.which("go") is not None
    require_tool("go", go, "the Go toolchain is missing (Debian package golang-go): the client was generated not built")
    assert "Go client generated, built and vetted" in out
    generated = ROOT / "build" / "gopath" / "src" / "example.com" / "yourteam" / "sagaapi" / "gen"
    assert (generated / "go" / "protos" / "saga" / "v1" / "saga_grpc.pb.go").exists()
