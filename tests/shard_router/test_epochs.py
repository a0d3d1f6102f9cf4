"""Earlier rings: when a new epoch starts, how it is persisted, and which earlier owners a topology reports."""

from __future__ import annotations

from pathlib import Path

import pytest

from shard_router import EpochError, EpochHistory, RingSpec, ShardSpec, Topology, epochs


def _ring(*ids: str, draining: tuple[str, ...] = (), vnodes: int = 64, port0: int = 50070) -> RingSpec:
    shards = [ShardSpec(sid, f"127.0.0.1:{port0 + ord(sid) - ord('a')}", sid in draining) for sid in ids]
    return RingSpec(vnodes=vnodes, shards=tuple(shards))


def test_a_new_epoch_only_when_placement_changes() -> None:
    h1 = epochs.committed(EpochHistory(), _ring("a", "b"), 1)
    assert [e.number for e in h1.epochs] == [1]
    assert epochs.committed(h1, _ring("b", "a"), 2) is h1  # file order does not matter
    moved = epochs.committed(h1, _ring("a", "b", port0=60000), 3)  # addresses alone: same epoch, addresses refreshed
    assert [e.number for e in moved.epochs] == [1]
    assert moved.current is not None and moved.current.shards == (("a", "127.0.0.1:60000"), ("b", "127.0.0.1:60001"))
    h2 = epochs.committed(h1, _ring("a", "b", "c"), 4)
    assert [e.number for e in h2.epochs] == [1, 2]
    h3 = epochs.committed(h2, _ring("a", "b", "c", draining=("c",)), 5)  # draining takes c out of placement
    assert [e.number for e in h3.epochs] == [1, 2, 3]
    assert epochs.committed(h3, _ring("a", "b", "c", vnodes=128), 6).current.number == 4  # type: ignore[union-attr]
    assert [e.number for e in h3.older] == [2, 1]


def test_round_trip_and_atomic_write(tmp_path: Path) -> None:
    path = tmp_path / "sub" / "e.json"
    assert epochs.read(path) == EpochHistory()
    history = epochs.committed(epochs.committed(EpochHistory(), _ring("a"), 10), _ring("a", "b"), 20)
    epochs.write(path, history)
    assert epochs.read(path) == history
    assert [p.name for p in path.parent.iterdir()] == ["e.json"]  # no temporary file left behind


def test_a_corrupt_file_is_an_error_never_a_fresh_start(tmp_path: Path) -> None:
    path = tmp_path / "e.json"
    path.write_text("{not json")
    with pytest.raises(EpochError, match="corrupt"):
        epochs.read(path)
    path.write_text('{"version": 1, "epochs": [{"epoch": 2}]}')
    with pytest.raises(EpochError, match="corrupt"):
        epochs.read(path)


def test_drop_keeps_the_current_epoch() -> None:
    history = epochs.committed(
        epochs.committed(epochs.committed(EpochHistory(), _ring("a"), 1), _ring("a", "b"), 2), _ring("a", "b", "c"), 3
    )
    assert [e.number for e in history.drop_through(2).epochs] == [3]
    with pytest.raises(EpochError, match="current epoch is 3"):
        history.drop_through(3)


def test_topology_reports_earlier_owners_newest_first() -> None:
    history = epochs.committed(
        epochs.committed(epochs.committed(EpochHistory(), _ring("a"), 1), _ring("a", "b"), 2), _ring("a", "b", "c"), 3
    )
    topo = Topology.build(_ring("a", "b", "c"), history)
    assert topo.epoch == 3 and topo.shard_ids == ("a", "b", "c")
    keys = [f"k{i}" for i in range(3000)]
    for key in keys:
        owners = topo.earlier_owners(key)
        assert topo.owner(key) not in [sid for sid, _ in owners]
        assert len({sid for sid, _ in owners}) == len(owners)
    # a key now on c was on b in epoch 2 or on a in epoch 1
    on_c = [k for k in keys if topo.owner(k) == "c"]
    assert on_c and all(topo.earlier_owners(k)[0][0] in ("a", "b") for k in on_c)
    assert Topology.build(_ring("a"), epochs.committed(EpochHistory(), _ring("a"), 1)).earlier_owners("k1") == ()


def test_a_shard_known_only_from_an_epoch_keeps_its_recorded_address() -> None:
    history = epochs.committed(epochs.committed(EpochHistory(), _ring("a", "b"), 1), _ring("a"), 2)
    topo = Topology.build(_ring("a"), history)
    assert topo.shard_ids == ("a", "b")
    assert topo.addresses["b"] == "127.0.0.1:50071"


def test_an_unwritable_epochs_file_is_an_epoch_error(tmp_path: Path) -> None:
    blocker = tmp_path / "file"
    blocker.write_text("")
    with pytest.raises(EpochError, match="cannot write epochs file"):
        epochs.write(blocker / "e.json", epochs.committed(EpochHistory(), _ring("a"), 1))
