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
from google.protobuf.message import DecodeError

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


class CatalogError(ValueError):
    """A descriptor set that cannot be read, or files that clash with those already known."""


def add_files(files: Iterable[descriptor_pb2.FileDescriptorProto], source: str) -> None:
    """Adds file descriptors to the default pool, each after the files it imports; a file already there (by name) is
    kept as it is: the project's compiled protos win over a copy of them."""
    pool = descriptor_pool.Default()
    pending = {f.name: f for f in files}

    def known(name: str) -> bool:
        try:
            pool.FindFileByName(name)
            return True
        except KeyError:
            return False

    def add(name: str, chain: tuple[str, ...]) -> None:
        f = pending.pop(name, None)
        if f is None or known(name):
            return
        if name in chain:
            raise CatalogError(f"{source}: {name} imports itself through {' -> '.join(chain)}")
        for dep in f.dependency:
            add(dep, (*chain, name))
        try:
            pool.Add(f)
        except (TypeError, ValueError) as e:
            raise CatalogError(f"{source}: {name} cannot be added: {e}") from None

    for name in list(pending):
        add(name, ())


def add_descriptor_sets(paths: Iterable[str | Path]) -> None:
    """Adds the files of descriptor sets (`protoc --include_imports --descriptor_set_out`) to the default pool."""
    for path in paths:
        try:
            fds = descriptor_pb2.FileDescriptorSet.FromString(Path(path).read_bytes())
        except OSError as e:
            raise CatalogError(f"{path}: cannot read: {e.strerror}") from None
        except DecodeError:
            raise CatalogError(f"{path}: not a FileDescriptorSet") from None
        add_files(fds.file, str(path))


def default_catalog(descriptor_sets: Iterable[str | Path] = ()) -> Catalog:
    """The project's compiled protos, plus the given descriptor set files."""
    _import_project_protos()
    add_descriptor_sets(descriptor_sets)
    return Catalog(descriptor_pool.Default())
