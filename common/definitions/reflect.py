"""The file descriptors of a running server's services, through its gRPC server reflection (v1alpha, what grpcurl and
protos/reflection.py speak): how `saga-defs check --reflect` checks a definition that calls a service outside the repo.

One stream per round: a file_containing_symbol request per symbol, then file_by_filename for the imports the server
did not send along, until every file is there or the server says it has none.
"""

from __future__ import annotations

from collections.abc import Iterable

import grpc
from google.protobuf import descriptor_pb2
from grpc_reflection.v1alpha import reflection_pb2, reflection_pb2_grpc

from sagaclient.credentials import TlsFiles, sync_channel

MAX_ROUNDS = 32
"""Import depth bound: each round fetches the files the previous one imported."""


class ReflectionError(RuntimeError):
    """The server cannot be reached or does not serve reflection."""


def fetch(
    address: str, symbols: Iterable[str], tls: TlsFiles | None = None, timeout_s: float = 10.0
) -> tuple[list[descriptor_pb2.FileDescriptorProto], list[str]]:
    """(files defining the symbols with every file they import, the symbols the server does not know)."""
    files: dict[str, descriptor_pb2.FileDescriptorProto] = {}
    missing: list[str] = []
    requests = [reflection_pb2.ServerReflectionRequest(file_containing_symbol=s) for s in dict.fromkeys(symbols)]
    with sync_channel(address, tls or TlsFiles()) as channel:
        stub = reflection_pb2_grpc.ServerReflectionStub(channel)
        for _ in range(MAX_ROUNDS):
            if not requests:
                break
            try:
                responses = list(stub.ServerReflectionInfo(iter(requests), timeout=timeout_s))
            except grpc.RpcError as e:
                raise ReflectionError(f"{address}: server reflection: {e.code().name}: {e.details()}") from None
            for request, response in zip(requests, responses, strict=False):
                if response.HasField("error_response"):
                    missing.append(request.file_containing_symbol or request.file_by_filename)
                    continue
                for raw in response.file_descriptor_response.file_descriptor_proto:
                    f = descriptor_pb2.FileDescriptorProto.FromString(raw)
                    files.setdefault(f.name, f)
            wanted = {dep for f in files.values() for dep in f.dependency if dep not in files}
            requests = [
                reflection_pb2.ServerReflectionRequest(file_by_filename=n) for n in sorted(wanted - set(missing))
            ]
    return list(files.values()), missing
