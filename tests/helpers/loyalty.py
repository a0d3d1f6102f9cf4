"""A second saga type on a running system, for tests of what shows sagas (the dashboard, sagaclient, sagactl): the
order_loyalty definition (docs/definitions/order_loyalty.yaml) committed with `saga-router defs commit`, as an
operator does; and sagas of it started through the router."""

from __future__ import annotations

from pathlib import Path

import grpc
from google.protobuf import any_pb2

from common.definitions.model import Definition
from deploy.local import LocalSystem
from protos.saga.v1 import saga_pb2, saga_pb2_grpc
from tests.helpers.definitions import commit_definition

ROOT = Path(__file__).resolve().parents[2]
LOYALTY_FILE = ROOT / "docs" / "definitions" / "order_loyalty.yaml"
LOYALTY_TYPE = "order_loyalty"


def commit_loyalty(system: LocalSystem) -> Definition:
    """Commits order_loyalty to the system's router (every shard holds it when this returns); the definition."""
    return commit_definition(system, LOYALTY_FILE)


def start_loyalty(
    router: str, request: saga_pb2.PlaceOrderRequest, no_wait: bool = False
) -> saga_pb2.StartSagaResponse:
    """StartSaga of type order_loyalty keyed by request.order_id, through the router at this address."""
    packed = any_pb2.Any()
    packed.Pack(request)
    start = saga_pb2.StartSagaRequest(saga_type=LOYALTY_TYPE, key=request.order_id, input=packed, no_wait=no_wait)
    with grpc.insecure_channel(router) as channel:
        return saga_pb2_grpc.SagaCoordinatorStub(channel).StartSaga(start, timeout=30)
