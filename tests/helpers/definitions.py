"""Committing a saga definition on a running system as an operator does: `saga-router defs commit <file>` against its
router's files (every shard holds the definition when this returns)."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

from common.definitions.check import load
from common.definitions.model import Definition
from deploy.local import LocalSystem

ROOT = Path(__file__).resolve().parents[2]


def commit_definition(system: LocalSystem, path: Path) -> Definition:
    """Commits the definition in `path` to the system's router; the definition, compiled."""
    config = ["--config", str(system.router_config), "--epochs", str(system.epochs_file)]
    done = subprocess.run(
        [sys.executable, "-m", "shard_router", "defs", "commit", str(path), *config],
        capture_output=True,
        text=True,
        timeout=60,
        cwd=ROOT,
        check=False,
    )
    assert done.returncode == 0, done.stdout + done.stderr
    return load(path)


__all__ = ["commit_definition"]
