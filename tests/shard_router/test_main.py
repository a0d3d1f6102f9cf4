"""The router as a process: `python -m shard_router` checks its config, serves, reloads on SIGHUP, stops on SIGTERM."""

from __future__ import annotations

import signal
import subprocess
import sys
import time
from pathlib import Path

from tests.helpers.net import free_port, wait_for_grpc

from .conftest import write_shards

SHARDS = [("shard-1", "127.0.0.1:1"), ("shard-2", "127.0.0.1:2")]


def _router(tmp_path: Path, port: int, log: Path) -> subprocess.Popen[bytes]:
    cmd = [sys.executable, "-m", "shard_router", "--listen", f"127.0.0.1:{port}", "--config", str(tmp_path / "s.toml")]
    return subprocess.Popen(cmd, stdout=subprocess.DEVNULL, stderr=log.open("wb"))


def _wait_for_line(log: Path, text: str, timeout_s: float = 10.0) -> None:
    deadline = time.monotonic() + timeout_s
    while text not in log.read_text():
        if time.monotonic() > deadline:
            raise AssertionError(f"{text!r} not logged within {timeout_s}s:\n{log.read_text()}")
        time.sleep(0.05)


def test_a_bad_config_stops_the_router_at_start_with_the_reason(tmp_path: Path) -> None:
    (tmp_path / "s.toml").write_text("[[shards]]\nid = 'shard-1'\n")
    result = subprocess.run(
        [sys.executable, "-m", "shard_router", "--config", str(tmp_path / "s.toml")],
        capture_output=True,
        text=True,
        timeout=30,
    )
    assert result.returncode == 2
    assert "s.toml: shards[0].address is required (host:port)" in result.stderr


def test_serves_reloads_on_sighup_and_stops_on_sigterm(tmp_path: Path) -> None:
    # A long poll interval, so only SIGHUP can explain the reload.
    write_shards(tmp_path / "s.toml", SHARDS, "[router]\nreload_interval_s = 600.0", tmp_path / "s.epochs.json")
    port = free_port()
    log = tmp_path / "router.log"
    proc = _router(tmp_path, port, log)
    try:
        wait_for_grpc(f"127.0.0.1:{port}")
        _wait_for_line(log, "ring epoch 1 installed")

        second = _router(tmp_path, port, tmp_path / "second.log")  # the port is taken: a clear error, not a share
        assert second.wait(timeout=30) == 2
        assert f"cannot listen on 127.0.0.1:{port}" in (tmp_path / "second.log").read_text()

        write_shards(tmp_path / "s.toml", [*SHARDS, ("shard-3", "127.0.0.1:3")], "[router]\nreload_interval_s = 600.0")
        # The router reads the epochs file only: the operator's command makes the new ring an epoch.
        commit = subprocess.run(
            [sys.executable, "-m", "shard_router", "epochs", "commit", "--config", str(tmp_path / "s.toml")],
            capture_output=True,
            text=True,
            timeout=30,
        )
        assert commit.returncode == 0, commit.stdout + commit.stderr
        assert "recorded epoch 2" in commit.stdout
        proc.send_signal(signal.SIGHUP)
        _wait_for_line(log, "ring epoch 2 installed")
        proc.send_signal(signal.SIGTERM)
        assert proc.wait(timeout=15) == 0
        assert "stopped" in log.read_text()
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.wait()
