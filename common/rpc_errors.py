"""Bad input as a gRPC status, built one way by every server (google.rpc error model, through grpcio-status).

Contract: bad_request(field, description) is the grpc.Status of an INVALID_ARGUMENT answer whose message is
"<field>: <description>" and whose google.rpc.Status details hold one google.rpc.BadRequest field violation naming the
field, carried in the "grpc-status-details-bin" trailer. with_reason(code, message, reason, domain) is a status with
a google.rpc.ErrorInfo saying why (a machine-readable reason, e.g. TOMBSTONED); error_reason(error) reads it back. A
servicer ends the call with `await context.abort_with_status(bad_request(...))`; a relay that sends code, details and
trailers itself reads .code, .details and .trailing_metadata. Clients read the violation with
grpc_status.rpc_status.from_call().
"""

from __future__ import annotations

import grpc
from google.rpc import code_pb2, error_details_pb2, status_pb2
from grpc_status import rpc_status


def bad_request(field: str, description: str) -> grpc.Status:
    """INVALID_ARGUMENT naming `field` (a request field, a metadata key, or a path such as "items[2].quantity")."""
    violation = error_details_pb2.BadRequest.FieldViolation(field=field, description=description)
    status = status_pb2.Status(code=code_pb2.INVALID_ARGUMENT, message=f"{field}: {description}")
    status.details.add().Pack(error_details_pb2.BadRequest(field_violations=[violation]))
    return rpc_status.to_status(status)


TOMBSTONED = "TOMBSTONED"
"""ErrorInfo reason of a forward call refused because its compensation came first (DESIGN contract 3): final."""
SHOP_DOMAIN = "shop.v1"


def with_reason(code: grpc.StatusCode, message: str, reason: str, domain: str) -> grpc.Status:
    """`code` with `message`, its details holding one google.rpc.ErrorInfo(reason, domain)."""
    status = status_pb2.Status(code=code.value[0], message=message)
    status.details.add().Pack(error_details_pb2.ErrorInfo(reason=reason, domain=domain))
    return rpc_status.to_status(status)


def error_reason(error: grpc.RpcError) -> str:
    """The google.rpc.ErrorInfo reason in a failed call's status details ("" if none, or unreadable)."""
    try:
        status = rpc_status.from_call(error)
    except ValueError:
        return ""
    for detail in status.details if status is not None else ():
        if detail.Is(error_details_pb2.ErrorInfo.DESCRIPTOR):
            info = error_details_pb2.ErrorInfo()
            detail.Unpack(info)
            return str(info.reason)
    return ""
