"""Shared by the definition tests: the shipped order flow as data, the broken files, and message types made on the
spot (a .proto compiled with grpc_tools into a descriptor set, loaded into a pool of its own)."""

from __future__ import annotations

import copy
import subprocess
import sys
from collections.abc import Iterable
from functools import cache
from importlib import resources
from pathlib import Path
from typing import Any

import yaml
from google.protobuf import descriptor_pb2, descriptor_pool
from grpc_tools import protoc

from common.definitions import check

REPO_ROOT = Path(__file__).resolve().parents[2]
BROKEN = Path(__file__).parent / "broken"
ORDER = check.shipped("order")

LOYALTY_PROTO = """
syntax = "proto3";
package loyalty.v1;
import "protos/shop/v1/common.proto";

// Points for an order, outside the repo's protos: what --descriptor-set and --reflect are for.
service LoyaltyService {
  rpc AwardPoints(AwardPointsRequest) returns (AwardPointsResponse);
  rpc RevokePoints(shop.v1.CompensationRequest) returns (shop.v1.CompensationResponse);
}
message AwardPointsRequest {
  string order_id = 1;
  string user_id = 2;
  int64 points = 3;
}
message AwardPointsResponse {
  int64 balance = 1;
}
"""

LOYALTY_STEP = {
    "id": "award_points",
    "kind": "retriable",
    "service": "loyalty",
    "call": {
        "method": "loyalty.v1.LoyaltyService/AwardPoints",
        "request": {
            "order_id": "$input.order_id",
            "user_id": "$input.user_id",
            "points": "$input.payment_info.amount_cents",
        },
    },
}


@cache
def _order_text() -> str:
    return ORDER.read_text()


def order_doc() -> dict[str, Any]:
    """The shipped order flow as data (a fresh copy: change it freely)."""
    return copy.deepcopy(yaml.safe_load(_order_text()))


def loyalty_doc() -> dict[str, Any]:
    """The order flow with shipping as its pivot and a loyalty step after it, on a service outside the repo."""
    doc = order_doc()
    doc["name"] = "order_loyalty"
    doc["steps"][3]["kind"] = "pivot"
    doc["steps"].append(copy.deepcopy(LOYALTY_STEP))
    return doc


def compile_proto(directory: Path, name: str, text: str) -> Path:
    """`name` (e.g. loyalty/v1/loyalty.proto) written under directory and compiled, its imports included, into
    directory/<stem>.binpb; the repo root is on the include path (protos/shop/v1/..., google/protobuf/...)."""
    source = directory / name
    source.parent.mkdir(parents=True, exist_ok=True)
    source.write_text(text)
    out = directory / f"{source.stem}.binpb"
    include = resources.files("grpc_tools").joinpath("_proto")
    rc = protoc.main(
        [
            "protoc",
            f"-I{directory}",
            f"-I{REPO_ROOT}",
            f"-I{include}",
            "--include_imports",
            f"--descriptor_set_out={out}",
            str(source),
        ]
    )
    assert rc == 0, f"protoc failed on {name}"
    return out


def read_set(path: Path) -> list[descriptor_pb2.FileDescriptorProto]:
    return list(descriptor_pb2.FileDescriptorSet.FromString(path.read_bytes()).file)


def project_files() -> list[descriptor_pb2.FileDescriptorProto]:
    """The project's protos as protoc wrote them (make proto), imports first."""
    return read_set(REPO_ROOT / "protos" / "descriptor_set.binpb")


def pool_of(files: Iterable[descriptor_pb2.FileDescriptorProto]) -> descriptor_pool.DescriptorPool:
    """A pool of its own (not the default one the project's classes live in), the files added in the order given."""
    pool = descriptor_pool.DescriptorPool()
    for f in files:
        pool.Add(f)
    return pool


def saga_defs(*args: str | Path) -> subprocess.CompletedProcess[str]:
    """The command line in a process of its own, as users run it (python -m common.definitions.cli)."""
    return subprocess.run(
        [sys.executable, "-m", "common.definitions.cli", *map(str, args)],
        cwd=REPO_ROOT,
        capture_output=True,
        text=True,
        timeout=60,
    )
