"""A Python client of the saga coordinator's API (saga.v1): `SagaClient`, its `RetryPolicy`, and typed errors.

async with await SagaClient.connect("127.0.0.1:50051") as client:
    reply = await client.place_order("order-1", "user-1", [("sku-1", 2)], PaymentInfo(...))
"""

from protos.saga.v1.saga_pb2 import PaymentInfo

from .client import NO_RETRY, DeadLetterPage, RetryPolicy, SagaClient, SagaPage, read_token_file
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

__all__ = [
    "ERROR_BY_CODE",
    "NO_RETRY",
    "AlreadyExists",
    "DeadLetterPage",
    "DeadlineExceeded",
    "FailedPrecondition",
    "FieldViolation",
    "InvalidRequest",
    "NotFound",
    "PaymentInfo",
    "PermissionDenied",
    "ResourceExhausted",
    "RetryPolicy",
    "SagaClient",
    "SagaError",
    "SagaPage",
    "ServerError",
    "Unauthenticated",
    "Unavailable",
    "read_token_file",
]
