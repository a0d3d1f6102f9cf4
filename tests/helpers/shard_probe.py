"""`python -m tests.helpers.shard_probe <coordinator args>`: a real shard process (coordinator.__main__, unchanged) that
also writes its asyncio task count to $SAGA_TASK_PROBE every 100 ms.

The shard exposes no task count of its own (no metric, no admin call), and a leaked task (a hung downstream call
nobody cancelled, a timer that outlives its saga) would not show in saga_in_flight. The chaos suite needs the number
from the live process, so this launcher adds one sampling task to the shard's loop and nothing else.
"""

from __future__ import annotations

import asyncio
import os
from pathlib import Path

import coordinator.__main__ as shard_main

_INTERVAL_S = 0.1


async def _sample(path: Path) -> None:
    tmp = path.with_suffix(".tmp")
    while True:
        # Minus one: this sampler is not the shard's.
        tmp.write_text(f"{len(asyncio.all_tasks()) - 1}\n")
        os.replace(tmp, path)  # readers never see a half-written number
        await asyncio.sleep(_INTERVAL_S)


def main() -> None:
    probe = os.environ.get("SAGA_TASK_PROBE", "")
    if probe:
        original = shard_main.run

        async def run_with_probe(cfg: shard_main.ShardConfig) -> None:
            sampler = asyncio.create_task(_sample(Path(probe)), name="task-probe")
            try:
                await original(cfg)
            finally:
                sampler.cancel()

        shard_main.run = run_with_probe  # type: ignore[assignment]
    shard_main.main()


def read_task_count(path: Path) -> int | None:
    try:
        return int(path.read_text().strip())
    except (OSError, ValueError):
        return None


if __name__ == "__main__":
    main()
