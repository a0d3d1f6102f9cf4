"""Where definitions find their message and service types: the compiled protos of this project (imported, so their
descriptors are in protobuf's default pool, the one server reflection serves), plus descriptor set files for services
outside the repo (`protoc --descriptor_set_out --include_imports`)."""

from __future__ import annotations

import importlib
import pkgutil
from collections.abc import Iterable
from dataclasses import dataclass
from functools import cache
from pathlib import Path

from google.protobuf import descriptor_pb2, descriptor_pool
from google.protobuf.descriptor import Descriptor, MethodDescriptor, ServiceDescriptor

import protos


@cache
def _import_project_protos() -> None:
    for info in pkgutil.walk_packages(protos.__path__, "protos."):
        if info.name.endswith("_pb2"):
            importlib.import_module(info.name)


@dataclass(frozen=True)
class Catalog:
    pool: descriptor_pool.DescriptorPool

    def message(self, full_name: str) -> Descriptor | None:
        try:
            return self.pool.FindMessageTypeByName(full_name)
        except KeyError:
            return None

    def service(self, full_name: str) -> ServiceDescriptor | None:
        try:
            return self.pool.FindServiceByName(full_name)
        except KeyError:
            return None

    def method(self, service: str, method: str) -> MethodDescriptor | None:
        s = self.service(service)
        return None if s is None else s.methods_by_name.get(method)


def add_descriptor_sets(paths: Iterable[str | Path]) -> None:
    """Adds the files of descriptor sets to the default pool (files already there are skipped)."""
    pool = descriptor_pool.Default()
    for path in paths:
        fds = descriptor_pb2.FileDescriptorSet.FromString(Path(path).read_bytes())
        for f in fds.file:
            try:
                pool.FindFileByName(f.name)
            except KeyError:
                pool.Add(f)


def default_catalog(descriptor_sets: Iterable[str | Path] = ()) -> Catalog:
    """The project's compiled protos, plus the given descriptor set files."""
    _import_project_protos()
    add_descriptor_sets(descriptor_sets)
    return Catalog(descriptor_pool.Default())
