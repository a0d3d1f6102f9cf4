"""Server reflection that serves the .proto comments, so `grpcurl describe` shows the documentation.

grpcio-reflection serializes descriptors with CopyToProto(), which drops source info (comments). `make proto` also
writes descriptor_set.binpb (protoc --include_source_info); this pool hands reflection those richer file descriptors.
"""

from __future__ import annotations

from collections.abc import Iterable
from functools import cache
from importlib import resources
from typing import Any

import grpc
from google.protobuf import descriptor_pb2, descriptor_pool
from grpc_reflection.v1alpha import reflection

SERVICE_NAME = reflection.SERVICE_NAME


@cache
def _commented_files() -> dict[str, descriptor_pb2.FileDescriptorProto]:
    data = resources.files(__package__).joinpath("descriptor_set.binpb").read_bytes()
    return {f.name: f for f in descriptor_pb2.FileDescriptorSet.FromString(data).file}


class _CommentedFile:
    """A FileDescriptor whose CopyToProto() includes the comments."""

    def __init__(self, real: Any) -> None:
        self._real = real
        self.name = real.name

    @property
    def dependencies(self) -> list[_CommentedFile]:
        return [_CommentedFile(d) for d in self._real.dependencies]

    def CopyToProto(self, proto: descriptor_pb2.FileDescriptorProto) -> None:
        commented = _commented_files().get(self.name)
        if commented is not None:
            proto.CopyFrom(commented)
        else:
            self._real.CopyToProto(proto)


class _CommentedPool:
    def __init__(self, base: descriptor_pool.DescriptorPool) -> None:
        self._base = base

    def FindFileByName(self, name: str) -> _CommentedFile:
        return _CommentedFile(self._base.FindFileByName(name))

    def FindFileContainingSymbol(self, symbol: str) -> _CommentedFile:
        return _CommentedFile(self._base.FindFileContainingSymbol(symbol))

    def __getattr__(self, name: str) -> Any:
        return getattr(self._base, name)


def enable_reflection(service_names: Iterable[str], server: grpc.aio.Server) -> None:
    """Adds the reflection service (itself included in the list) to a grpc.aio server."""
    names = (*service_names, SERVICE_NAME)
    reflection.enable_server_reflection(names, server, pool=_CommentedPool(descriptor_pool.Default()))
