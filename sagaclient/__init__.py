"""A Python client of the saga coordinator's API (saga.v1): `SagaClient` (asyncio) and `SyncSagaClient` (blocking),
with the same methods, their `RetryPolicy`, and typed errors.

async with await SagaClient.connect("127.0.0.1:50051") as client:
    reply = await client.place_order("order-1", "user-1", [("sku-1", 2)], PaymentInfo(...))

with SyncSagaClient.connect("127.0.0.1:50051") as client:
    reply = client.place_order("order-1", "user-1", [("sku-1", 2)], PaymentInfo(...))

Modules: api (every call once, as data), client / sync (sending it over grpc.aio / grpc), base (what both hold,
connect's options), retry (RetryPolicy, backoff honouring retry-after-ms), errors (the hierarchy and ERROR_BY_CODE),
credentials (TlsFiles, channel credentials from PEM files or bytes, the bearer token). The package needs grpc, its
protobuf messages and `backoff`, nothing of the coordinator's processes (no logging or metrics set-up).
"""

from protos.saga.v1.saga_pb2 import PaymentInfo

from .api import DeadLetterPage, RetriedOrders, SagaPage
from .base import ConnectOptions
from .client import SagaClient
from .credentials import PlaintextRefused, TlsConfigError, TlsFiles, read_token_file
from .errors import (
    ERROR_BY_CODE,
    AlreadyExists,
    DeadlineExceeded,
    FailedPrecondition,
    FieldViolation,
    InvalidRequest,
    NotFound,
    PermissionDenied,
    ResourceExhausted,
    SagaError,
    ServerError,
    Unauthenticated,
    Unavailable,
)
from .retry import NO_RETRY, RetryPolicy
from .sync import SyncSagaClient

__all__ = [
    "ERROR_BY_CODE",
    "NO_RETRY",
    "AlreadyExists",
    "ConnectOptions",
    "DeadLetterPage",
    "DeadlineExceeded",
    "FailedPrecondition",
    "FieldViolation",
    "InvalidRequest",
    "NotFound",
    "PaymentInfo",
    "PermissionDenied",
    "PlaintextRefused",
    "ResourceExhausted",
    "RetriedOrders",
    "RetryPolicy",
    "SagaClient",
    "SagaError",
    "SagaPage",
    "ServerError",
    "SyncSagaClient",
    "TlsConfigError",
    "TlsFiles",
    "Unauthenticated",
    "Unavailable",
    "read_token_file",
]
