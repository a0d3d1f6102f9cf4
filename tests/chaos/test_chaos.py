"""Short versions of every chaos scenario (3 s of faults each) for `make test`; `make chaos` runs the long ones.

The scenarios run two at a time, each on its own cluster: most of a short scenario is waiting (processes starting,
keepalive noticing a dead connection), so pairs keep the whole set near a minute and a half on two cores. Each prints
its seed; CHAOS_SEED=N replays the schedules, CHAOS_SCENARIOS=a,b picks scenarios.
"""

from __future__ import annotations

import asyncio
import os
import random
from pathlib import Path

import pytest

from tests.chaos.scenarios import SCENARIOS, Result, can_run, run_scenario

SEED = int(os.environ.get("CHAOS_SEED", random.randrange(1 << 30)))
SHORT_S = float(os.environ.get("CHAOS_SHORT_S", "3"))
PARALLEL = int(os.environ.get("CHAOS_PARALLEL", "2"))
# Longest first, so the pairs finish together. lost_replies_blind only measures (it runs lost_replies with asking
# off, for the comparison in make chaos): not in make test.
LONG_ONLY = ("lost_replies_blind",)
ORDER = [
    "network",
    "crash_points",
    *(n for n in SCENARIOS if n not in ("network", "crash_points", *LONG_ONLY)),
]


@pytest.mark.timeout(400)
async def test_every_scenario_short(tmp_path: Path) -> None:
    wanted = os.environ.get("CHAOS_SCENARIOS", "")
    names = [n for n in ORDER if not wanted or n in wanted.split(",")]
    skipped = {n: why for n in names if (why := can_run(n))}
    gate = asyncio.Semaphore(PARALLEL)

    async def one(name: str) -> Result:
        seed = SEED + list(SCENARIOS).index(name)
        async with gate:
            print(f"chaos {name} seed={seed} (CHAOS_SEED={SEED})")
            r = await run_scenario(name, seed, SHORT_S, tmp_path / name, short=True)
        print(f"{name}: {r.sagas} sagas, {r.successes} succeeded, {r.wall_s:.0f} s, faults {dict(r.faults)}")
        return r

    results = await asyncio.gather(*(one(n) for n in names if n not in skipped))
    failed = {r.name: (r.seed, r.violations[:10]) for r in results if r.violations}
    assert not failed, f"CHAOS_SEED={SEED}: {failed}"
    for name, why in skipped.items():
        print(f"{name} skipped: {why}")
