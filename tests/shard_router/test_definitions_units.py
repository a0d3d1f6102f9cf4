"""The pure parts of the router's definitions: merging the shards' ListDefinitions, the history file, its path."""

from __future__ import annotations

from pathlib import Path

import pytest

from common.definitions import order_flow
from protos.saga.v1 import saga_pb2
from shard_router.config import definitions_path_for
from shard_router.defs import history
from shard_router.defs.history import DefinitionsFileError, DefinitionsHistory
from shard_router.relay.fanout import merge_definitions


def _answer(*versions: tuple[str, str, bool, int]) -> saga_pb2.ListDefinitionsResponse:
    return saga_pb2.ListDefinitionsResponse(
        definitions=[saga_pb2.DefinitionVersion(name=n, hash=h, active=a, sagas=s) for n, h, a, s in versions]
    )


def test_merge_sums_sagas_and_is_active_only_where_every_shard_says_so() -> None:
    merged = merge_definitions(
        [
            _answer(("order", "o1", True, 2), ("returns", "r1", True, 1)),
            _answer(("order", "o1", True, 3), ("returns", "r1", False, 0), ("returns", "r2", True, 0)),
        ]
    )
    assert [(d.name, d.hash, d.active, d.sagas) for d in merged.definitions] == [
        ("order", "o1", True, 5),
        ("returns", "r1", False, 1),  # one shard starts new returns on r2 already
        ("returns", "r2", False, 0),  # and one does not hold it yet
    ]


def test_the_history_file_round_trips_and_refuses_a_stale_write(tmp_path: Path) -> None:
    path = tmp_path / "shards.defs.json"
    assert history.read(path) == DefinitionsHistory()
    flow = order_flow()
    first = DefinitionsHistory().committed([flow])
    assert first.version == 1 and first.aliases == {"order": flow.hash}
    assert first.committed([flow]) is first  # committing it again changes nothing
    history.write(path, first, expect=0)
    assert history.read(path) == first
    with pytest.raises(DefinitionsFileError, match="changed meanwhile"):
        history.write(path, first, expect=0)
    assert first.resolve(flow.hash[:6]) == flow.hash
    request = first.install_request()
    assert request.history_version == 1 and request.definitions[0].hash == flow.hash
    path.write_text("{")
    with pytest.raises(DefinitionsFileError, match="corrupt"):
        history.read(path)


def test_the_definitions_file_sits_beside_the_epochs_file() -> None:
    assert definitions_path_for(Path("/etc/saga/shards.epochs.json")) == Path("/etc/saga/shards.defs.json")
    assert definitions_path_for(Path("/var/ring.json")) == Path("/var/ring.defs.json")
