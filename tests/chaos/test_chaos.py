"""Short versions of every chaos scenario (a few seconds of faults each) for `make test`; `make chaos` runs the long
ones. Each prints its seed; CHAOS_SEED=N replays a schedule."""

from __future__ import annotations

import os
import random
from pathlib import Path

import pytest

from tests.chaos.scenarios import SCENARIOS, can_run, run_scenario

SEED = int(os.environ.get("CHAOS_SEED", random.randrange(1 << 30)))
SHORT_S = float(os.environ.get("CHAOS_SHORT_S", "4"))


@pytest.mark.timeout(240)
@pytest.mark.parametrize("name", list(SCENARIOS))
async def test_scenario_short(name: str, tmp_path: Path) -> None:
    if reason := can_run(name):
        pytest.skip(reason)
    seed = SEED + list(SCENARIOS).index(name)
    print(f"chaos {name} seed={seed} (CHAOS_SEED={SEED})")
    result = await run_scenario(name, seed, SHORT_S, tmp_path, short=True)
    print(f"{name}: {result.sagas} sagas, {result.successes} succeeded, faults {dict(result.faults)}, {result.notes}")
    assert result.violations == [], f"seed={seed}: {result.violations[:20]}"
