"""The definitions history file: every saga definition version committed to the cluster and the aliases that say
which version new sagas of each type start on, as JSON beside the epochs file (RouterConfig.definitions_path)::

    {"version": 3,
     "definitions": {"<hash>": {"name": "order", "version": "1", "document": {...normalised...}}},
     "aliases": {"order": "<hash>"}}

`version` numbers the history: each change (`saga-router defs commit`, `defs drop`) adds one, and that number is the
history_version shards are shown (ring.v1 InstallDefinitions), so a shard never goes back to an older set of aliases.
Routers only read it, and push it to every shard at start and when it changes (shard_router.defs.push). Written
atomically with a version check, like the epochs file; a file that exists but cannot be parsed is an error, never
silently replaced.
"""

from __future__ import annotations

import json
from collections.abc import Iterable, Mapping
from dataclasses import dataclass, field
from pathlib import Path
from types import MappingProxyType
from typing import Any

from common.definitions import Definition
from protos.ring.v1 import ring_pb2
from shard_router.ring.epochs import read_history, replace_file


class DefinitionsFileError(Exception):
    """The definitions file cannot be read, parsed or written, or changed meanwhile; the message says what to do."""


@dataclass(frozen=True)
class Version:
    """One committed definition version."""

    name: str
    """The saga type it defines."""
    version: str
    """Its version label."""
    document: Mapping[str, Any]
    """The normalised document (what the shards compile and store)."""

    def message(self, definition_hash: str) -> ring_pb2.Definition:
        return ring_pb2.Definition(
            hash=definition_hash,
            name=self.name,
            version=self.version,
            document_json=json.dumps(self.document, sort_keys=True),
        )


@dataclass(frozen=True)
class DefinitionsHistory:
    version: int = 0
    """0: no file yet (the shards hold only the shipped order flow)."""
    definitions: Mapping[str, Version] = field(default_factory=lambda: MappingProxyType({}))
    """Hash -> the version, in commit order."""
    aliases: Mapping[str, str] = field(default_factory=lambda: MappingProxyType({}))
    """Saga type -> the hash new sagas of it start on."""

    def committed(self, definitions: Iterable[Definition], activate: bool = True) -> DefinitionsHistory:
        """This history with the definitions added (each alias pointed at its file's definition unless not
        activate); itself, unchanged, if that changes nothing (committing a file again)."""
        defs = dict(self.definitions)
        aliases = dict(self.aliases)
        for d in definitions:
            defs.setdefault(d.hash, Version(d.name, d.version, json.loads(json.dumps(d.document))))
            if activate:
                aliases[d.name] = d.hash
        if defs == dict(self.definitions) and aliases == dict(self.aliases):
            return self
        return DefinitionsHistory(self.version + 1, MappingProxyType(defs), MappingProxyType(aliases))

    def without(self, definition_hash: str) -> DefinitionsHistory:
        defs = {h: v for h, v in self.definitions.items() if h != definition_hash}
        return DefinitionsHistory(self.version + 1, MappingProxyType(defs), self.aliases)

    def resolve(self, prefix: str) -> str:
        """The hash a (unique) prefix names; DefinitionsFileError otherwise."""
        found = [h for h in self.definitions if h.startswith(prefix)] if prefix else []
        if len(found) != 1:
            what = "no" if not found else "more than one"
            raise DefinitionsFileError(f"{what} definition in the history has a hash starting with {prefix!r}")
        return found[0]

    def install_request(self, drop: Iterable[str] = ()) -> ring_pb2.InstallDefinitionsRequest:
        """What shards are shown: every version of the history, the aliases, under this history's version."""
        return ring_pb2.InstallDefinitionsRequest(
            history_version=self.version,
            definitions=[v.message(h) for h, v in self.definitions.items()],
            aliases=dict(self.aliases),
            drop=list(drop),
        )

    def to_json(self) -> dict[str, Any]:
        return {
            "version": self.version,
            "definitions": {
                h: {"name": v.name, "version": v.version, "document": v.document} for h, v in self.definitions.items()
            },
            "aliases": dict(self.aliases),
        }

    @classmethod
    def from_json(cls, data: Any) -> DefinitionsHistory:
        if not isinstance(data, dict) or set(data) != {"version", "definitions", "aliases"}:
            raise ValueError('expected an object with "version", "definitions" and "aliases"')
        version, raw, aliases = data["version"], data["definitions"], data["aliases"]
        if not isinstance(version, int) or isinstance(version, bool) or version < 0:
            raise ValueError(f"version must be a whole number, got {version!r}")
        if not isinstance(raw, dict) or not isinstance(aliases, dict):
            raise ValueError("definitions and aliases must be objects")
        defs: dict[str, Version] = {}
        for h, entry in raw.items():
            if not isinstance(entry, dict) or not isinstance(entry.get("document"), dict):
                raise ValueError(f"definition {h}: expected name, version and document")
            defs[h] = Version(str(entry["name"]), str(entry["version"]), entry["document"])
        for name, target in aliases.items():
            if target not in defs:
                raise ValueError(f"alias {name} points at {target}, which the file does not hold")
        return cls(version, MappingProxyType(defs), MappingProxyType({str(k): str(v) for k, v in aliases.items()}))


def read(path: Path) -> DefinitionsHistory:
    """The history in path; an empty one (version 0) if the file does not exist."""
    return read_history(path, "definitions", DefinitionsHistory, DefinitionsHistory.from_json, DefinitionsFileError)


def write(path: Path, history: DefinitionsHistory, expect: int) -> None:
    """Replaces path atomically with history, unless the file's version is no longer `expect` (0: no file)."""

    def check() -> None:
        if (found := read(path).version) != expect:
            raise DefinitionsFileError(
                f"definitions file {path} changed meanwhile (version {found}, expected {expect}): nothing written;"
                " run the command again"
            )

    try:
        replace_file(path, json.dumps(history.to_json(), indent=2, sort_keys=False) + "\n", check)
    except OSError as e:
        raise DefinitionsFileError(f"cannot write definitions file {path}: {e}") from e
