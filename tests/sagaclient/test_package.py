"""What `import sagaclient` brings into a service: what a client needs (grpc, the API's messages, backoff) and none of
the coordinator processes' plumbing (common: logging, metrics, servers, certificate parsing); and the PEP 561 marker
that lets a caller's mypy check its calls against the client's types."""

from __future__ import annotations

import json
import subprocess
import sys
from importlib.resources import files
from pathlib import Path

ROOT = Path(__file__).resolve().parents[2]
SERVER_SIDE = ("common", "prometheus_client", "loguru", "cryptography")
"""Top-level packages a client must not load: common (common.grpc_server, common.tls, ...) and what it brings."""


def test_importing_the_client_loads_nothing_server_side() -> None:
    # A fresh interpreter: this test process has long imported all of it.
    code = "import json, sys, sagaclient; print(json.dumps(sorted(sys.modules)))"
    done = subprocess.run(
        [sys.executable, "-c", code], cwd=ROOT, capture_output=True, text=True, timeout=60, check=False
    )
    assert done.returncode == 0, done.stderr
    loaded = json.loads(done.stdout)
    assert "sagaclient.credentials" in loaded and "grpc" in loaded
    assert [m for m in loaded if m.split(".")[0] in SERVER_SIDE] == []


def test_the_package_is_marked_typed() -> None:
    assert files("sagaclient").joinpath("py.typed").is_file()
