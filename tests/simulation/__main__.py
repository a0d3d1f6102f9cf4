"""Explores the ring protocol's schedules, or replays one seed with its trace.

python -m tests.simulation --seeds 20000            # explore; prints schedules/s and any failing seed
python -m tests.simulation --replay 1234            # one schedule, step by step
python -m tests.simulation --seeds 2000 --unfenced  # the variant without fencing (it must fail)
python -m tests.simulation --no-file [--before-fix]  # routers without an epochs file, uncommitted edits
python -m tests.simulation --probe fence_at_answer  # the shards' GetSaga rule before the re-read fix (it must fail)
"""

from __future__ import annotations

import argparse
import sys
import time

from .ring_protocol import PROBES, Violation, World, explore


def main() -> int:
    p = argparse.ArgumentParser(prog="python -m tests.simulation", description=__doc__.splitlines()[0])
    p.add_argument("--seeds", type=int, default=5000, help="how many schedules (seeds 0..N-1)")
    p.add_argument("--first", type=int, default=0, help="first seed")
    p.add_argument("--replay", type=int, help="run this seed and print its trace")
    p.add_argument("--unfenced", action="store_true", help="shards do not fence (shows the bug the fence prevents)")
    p.add_argument("--no-file", action="store_true", help="start without an epochs file; edits precede commits")
    p.add_argument(
        "--before-fix",
        action="store_true",
        help="with --no-file: a router without a file takes its config as epoch 1, fresh shards check no peers",
    )
    p.add_argument(
        "--probe",
        choices=PROBES,
        default=PROBES[0],
        help="a shard's GetSaga to an earlier owner: read then answer, NOT_FOUND only from a read begun under the "
        "call's epoch (reread, the shard's rule); read then answer, fenced when answering (fence_at_answer, the rule "
        "before the fix); one atomic step (atomic)",
    )
    ns = p.parse_args()
    fence = (lambda *a: None) if ns.unfenced else None
    world_args: dict[str, object] = {"no_file": ns.no_file, "probe": ns.probe}
    if ns.before_fix:
        world_args.update(first_ring="config", peer_check=False, block_on_conflict=False)
    if ns.replay is not None:
        world = World(ns.replay, fence, **world_args) if fence else World(ns.replay, **world_args)  # type: ignore[arg-type]
        try:
            world.run()
        except Violation as e:
            print("\n".join(world.lines()))
            print(f"VIOLATION: {e}")
            return 1
        print("\n".join(world.lines()))
        print(f"ok: {world.steps} steps")
        return 0
    started = time.perf_counter()
    seeds = range(ns.first, ns.first + ns.seeds)
    failures = explore(seeds, fence, **world_args) if fence else explore(seeds, **world_args)
    took = time.perf_counter() - started
    print(f"{len(seeds)} schedules in {took:.1f} s ({len(seeds) / took:.0f}/s), {len(failures)} violated an invariant")
    for seed, why in failures[:10]:
        flags = "".join(
            f" --{f}"
            for f, on in (("unfenced", ns.unfenced), ("no-file", ns.no_file), ("before-fix", ns.before_fix))
            if on
        )
        if ns.probe != PROBES[0]:
            flags += f" --probe {ns.probe}"
        print(f"  {why}  (replay: python -m tests.simulation --replay {seed}{flags})")
    return 1 if failures else 0


if __name__ == "__main__":
    sys.exit(main())
