"""A second saga type on running shards, for tests of what shows sagas (the dashboard, sagaclient, sagactl): the
order_loyalty definition (docs/definitions/order_loyalty.yaml) installed on each shard beside the order flow, through
the shards' own RingService.InstallDefinitions, as the router's definitions history would; and sagas of it started
on the shard that owns their key by the ring."""

from __future__ import annotations

import json
from collections.abc import Iterable
from pathlib import Path

import grpc
from google.protobuf import any_pb2

from common.definitions.check import load, order_flow
from common.definitions.model import Definition
from common.ring import history_from_message
from protos.ring.v1 import ring_pb2, ring_pb2_grpc
from protos.saga.v1 import saga_pb2, saga_pb2_grpc

LOYALTY_FILE = Path(__file__).resolve().parents[2] / "docs" / "definitions" / "order_loyalty.yaml"
LOYALTY_TYPE = "order_loyalty"


def install_loyalty(shard_addresses: Iterable[str], history_version: int = 1) -> Definition:
    """Installs order_loyalty (and keeps "order" on the shipped flow) on each shard; returns the definition."""
    loyalty, order = load(LOYALTY_FILE), order_flow()
    request = ring_pb2.InstallDefinitionsRequest(
        history_version=history_version,
        definitions=[
            ring_pb2.Definition(
                hash=d.hash, name=d.name, version=d.version, document_json=json.dumps(d.document, sort_keys=True)
            )
            for d in (order, loyalty)
        ],
        aliases={order.name: order.hash, loyalty.name: loyalty.hash},
    )
    for address in shard_addresses:
        with grpc.insecure_channel(address) as channel:
            ring_pb2_grpc.RingServiceStub(channel).InstallDefinitions(request, timeout=10)
    return loyalty


def owner_address(shards: dict[str, str], key: str) -> str:
    """The address of the shard the current ring places key on (it hashes a saga's key whatever its type).
    shards: shard id -> address."""
    with grpc.insecure_channel(next(iter(shards.values()))) as channel:
        reply = ring_pb2_grpc.RingServiceStub(channel).GetRing(ring_pb2.GetRingRequest(), timeout=10)
    epoch = history_from_message(reply.history).current
    assert epoch is not None, "the shards hold no ring yet"
    return shards[epoch.ring.owner(key)]


def start_loyalty(
    shards: dict[str, str], request: saga_pb2.PlaceOrderRequest, no_wait: bool = False
) -> saga_pb2.StartSagaResponse:
    """StartSaga of type order_loyalty keyed by request.order_id, sent to the shard that owns that key (owner_address).
    shards: shard id -> address."""
    packed = any_pb2.Any()
    packed.Pack(request)
    start = saga_pb2.StartSagaRequest(saga_type=LOYALTY_TYPE, key=request.order_id, input=packed, no_wait=no_wait)
    with grpc.insecure_channel(owner_address(shards, request.order_id)) as channel:
        return saga_pb2_grpc.SagaCoordinatorStub(channel).StartSaga(start, timeout=30)
