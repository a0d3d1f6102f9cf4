"""Bad input as a gRPC status, built one way by every server (google.rpc error model, through grpcio-status).

Contract: bad_request(field, description) is the grpc.Status of an INVALID_ARGUMENT answer whose message is
"<field>: <description>" and whose google.rpc.Status details hold one google.rpc.BadRequest field violation naming the
field, carried in the "grpc-status-details-bin" trailer. A servicer ends the call with
`await context.abort_with_status(bad_request(...))`; a relay that sends code, details and trailers itself reads
.code, .details and .trailing_metadata. Clients read the violation with grpc_status.rpc_status.from_call().
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
