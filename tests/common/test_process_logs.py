"""Every process's own log set-up keeps variable values out of tracebacks.

Each case runs a real process: its real main() parses real flags and sets up logging as it does in production; only the
serving part (what main() runs once logging is set up) is replaced by a "handler" that hits a bug while a frame holds a
payment token and the raw request bytes, and logs it the way the processes' handlers do (logger.exception). With
loguru's diagnose on, the traceback would print those values; it must show the code and the error, never them.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest

REPO_ROOT = Path(__file__).resolve().parents[2]
SECRET = "tok_live_9876543210987654"

_DRIVER = """
import importlib, sys
from loguru import logger

module = importlib.import_module(sys.argv[1])
secret = sys.argv[3]

def charge(payment_token, raw_request):
    if b"amount=" not in raw_request:
        raise ValueError("no amount in the request")

async def provoked(*args, **kwargs):
    payment_token = secret
    raw_request = b"token=" + payment_token.encode()
    try:
        charge(payment_token, raw_request)
    except ValueError:
        logger.exception("unexpected error in a handler")
    return 0

setattr(module, sys.argv[2], provoked)  # what main() runs once logging is set up
sys.exit(module.main(sys.argv[4:]))
"""


def _run(tmp_path: Path, module: str, serve: str, args: list[str], env: dict[str, str]) -> str:
    clean = {k: v for k, v in os.environ.items() if not k.startswith("SAGA_")}
    driver = tmp_path / "driver.py"  # a file, not -c: tracebacks show source lines only for code in files
    driver.write_text(_DRIVER)
    proc = subprocess.run(
        [sys.executable, str(driver), module, serve, SECRET, *args],
        cwd=REPO_ROOT,
        env={**clean, **env, "PYTHONPATH": str(REPO_ROOT)},
        capture_output=True,
        text=True,
        timeout=60,
    )
    assert proc.returncode == 0, proc.stderr
    assert SECRET not in proc.stdout
    return proc.stderr


def _check_no_values(stderr: str) -> None:
    assert "unexpected error in a handler" in stderr, stderr
    assert "ValueError: no amount in the request" in stderr, stderr  # the traceback is there...
    assert "charge(payment_token, raw_request)" in stderr, stderr
    assert SECRET not in stderr, stderr  # ...without the values of the variables in it


def _shards_toml(tmp_path: Path) -> Path:
    path = tmp_path / "shards.toml"
    path.write_text('[[shards]]\nid = "shard-1"\naddress = "127.0.0.1:1"\n')
    return path


def _coordinator_args(tmp_path: Path) -> list[str]:
    return ["--shard-id", "shard-x", "--listen", "127.0.0.1:0", "--journal", str(tmp_path / "j.db")]


@pytest.mark.parametrize("json_lines", [False, True], ids=["text", "json"])
def test_coordinator(tmp_path: Path, json_lines: bool) -> None:
    env = {"SAGA_LOG_JSON": "1"} if json_lines else {}
    stderr = _run(tmp_path, "coordinator.__main__", "run", _coordinator_args(tmp_path), env)
    _check_no_values(stderr)
    _check_process(stderr, "shard-x", json_lines)


@pytest.mark.parametrize("json_lines", [False, True], ids=["text", "json"])
def test_router(tmp_path: Path, json_lines: bool) -> None:
    args = ["--config", str(_shards_toml(tmp_path)), "--listen", "127.0.0.1:0"] + (["--log-json"] if json_lines else [])
    stderr = _run(tmp_path, "shard_router.__main__", "_serve", args, {})
    _check_no_values(stderr)
    _check_process(stderr, "router", json_lines)


def test_stubs(tmp_path: Path) -> None:
    args = ["--listen", "127.0.0.1:0", "--data-dir", str(tmp_path / "stubs")]
    stderr = _run(tmp_path, "service_stubs.__main__", "run", args, {})
    _check_no_values(stderr)
    _check_process(stderr, "stubs", json_lines=False)


def _check_process(stderr: str, process: str, json_lines: bool) -> None:
    if json_lines:
        (record,) = (json.loads(line)["record"] for line in stderr.splitlines() if line.startswith("{"))
        assert record["extra"]["process"] == process and record["exception"]["type"] == "ValueError"
    else:
        assert f" {process} unexpected error in a handler" in stderr, stderr
