"""The ring protocol under thousands of seeded schedules (tests.simulation.ring_protocol); `make sim` runs more."""

from __future__ import annotations

import time

from loguru import logger

from .ring_protocol import Violation, World, explore

SCHEDULES = 1_500


def unfenced(*args: object) -> None:
    return None


def test_fenced_shards_keep_one_saga_per_order_in_every_schedule() -> None:
    started = time.perf_counter()
    failures = explore(range(SCHEDULES))
    took = time.perf_counter() - started
    logger.info("{} schedules in {:.1f} s ({:.0f}/s)", SCHEDULES, took, SCHEDULES / took)
    assert not failures, failures[:3]


def test_without_fencing_the_simulation_finds_an_order_run_twice() -> None:
    failures = explore(range(300), unfenced)
    assert failures, "the simulation cannot tell a protocol without fencing from one with it"
    assert any("held by shards" in why for _, why in failures)


def test_a_seed_replays_the_same_schedule() -> None:
    seed = explore(range(300), unfenced)[0][0]
    runs = []
    for _ in range(2):
        world = World(seed, unfenced)
        try:
            world.run()
        except Violation as e:
            runs.append((world.lines(), str(e)))
    assert len(runs) == 2 and runs[0] == runs[1]
    fenced = World(seed)
    fenced.run()  # the same seed with fencing: no violation
    assert fenced.acks


BEFORE_THE_FIX = {"first_ring": "config", "peer_check": False, "block_on_conflict": False}
"""The rules before routers without an epochs file asked the shards: the config's ring as epoch 1, a fresh shard taking
any first ring, a router refused as a conflict placing on."""


def test_routers_without_an_epochs_file_and_an_uncommitted_edit_keep_one_saga_per_order() -> None:
    failures = explore(range(SCHEDULES), no_file=True)
    assert not failures, failures[:3]


def test_with_the_rules_before_the_fix_the_simulation_finds_an_order_run_twice_without_an_epochs_file() -> None:
    failures = explore(range(300), no_file=True, **BEFORE_THE_FIX)
    assert any("held by shards" in why for _, why in failures), failures[:3]
    assert not explore(range(300), no_file=True)  # the same schedules with today's rules
