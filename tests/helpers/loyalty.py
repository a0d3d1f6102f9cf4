"""A second saga type on a running system, for tests of what shows sagas (the dashboard, sagaclient, sagactl): the
order_loyalty definition (docs/definitions/order_loyalty.yaml) committed with `saga-router defs commit`, as an
operator does; and sagas of it started through the router."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import grpc
from google.protobuf import any_pb2

from common.definitions.check import load
from common.definitions.model import Definition
from deploy.local import LocalSystem
from protos.saga.v1 import saga_pb2, saga_pb2_grpc

ROOT = Path(__file__).resolve().parents[2]
LOYALTY_FILE = ROOT / "docs" / "definitions" / "order_loyalty.yaml"
LOYALTY_TYPE = "order_loyalty"


def commit_loyalty(system: LocalSystem) -> Definition:
    """Commits order_loyalty to the system's router (every shard holds it when this returns); the definition."""
    config = ["--config", str(system.router_config), "--epochs", str(system.epochs_file)]
    done = subprocess.run(
        [sys.executable, "-m", "shard_router", "defs", "commit", str(LOYALTY_FILE), *config],
        capture_output=True,
        text=True,
        timeout=60,
        cwd=ROOT,
        check=False,
    )
    assert done.returncode == 0, done.stdout + done.stderr
    return load(LOYALTY_FILE)


def start_loyalty(
    router: str, request: saga_pb2.PlaceOrderRequest, no_wait: bool = False
) -> saga_pb2.StartSagaResponse:
    """StartSaga of type order_loyalty keyed by request.order_id, through the router at this address."""
    packed = any_pb2.Any()
    packed.Pack(request)
    start = saga_pb2.StartSagaRequest(saga_type=LOYALTY_TYPE, key=request.order_id, input=packed, no_wait=no_wait)
    with grpc.insecure_channel(router) as channel:
        return saga_pb2_grpc.SagaCoordinatorStub(channel).StartSaga(start, timeout=30)
