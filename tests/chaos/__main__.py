"""`python -m tests.chaos` (`make chaos`): every chaos scenario, the long version, then one table; exit 1 on any
invariant violation.

    make chaos                                                   # every scenario, 60 s of faults each
    make chaos CHAOS_ARGS="--scenarios crash_loop,network --duration 90 --seed 1234"
    make chaos CHAOS_ARGS="--list"

Each scenario prints its seed; `--seed N` replays that fault schedule (with several scenarios, scenario k gets N + k).
"""

from __future__ import annotations

import argparse
import asyncio
import random
import shutil
import sys
import tempfile
from pathlib import Path

from tests.chaos.scenarios import SCENARIOS, Result, can_run, run_scenario


def parse(argv: list[str]) -> argparse.Namespace:
    p = argparse.ArgumentParser(prog="python -m tests.chaos", description=__doc__.split("\n")[0])
    p.add_argument(
        "--scenarios", default="all", help=f"comma-separated subset of: {', '.join(SCENARIOS)} (default all)"
    )
    p.add_argument("--duration", type=float, default=60.0, help="seconds of faults per scenario (default 60)")
    p.add_argument("--seed", type=int, default=None, help="base seed (default random; printed)")
    p.add_argument("--short", action="store_true", help="the short versions' pacing (as in make test)")
    p.add_argument("--keep", action="store_true", help="keep every scenario's data and logs (kept anyway on failure)")
    p.add_argument("--list", action="store_true", help="list the scenarios and exit")
    ns = p.parse_args(argv)
    names = list(SCENARIOS) if ns.scenarios == "all" else [n.strip() for n in ns.scenarios.split(",") if n.strip()]
    unknown = [n for n in names if n not in SCENARIOS]
    if unknown or not names:
        p.error(f"--scenarios: unknown {unknown or '(empty)'}; known: {', '.join(SCENARIOS)}")
    if ns.duration <= 0:
        p.error("--duration must be > 0")
    ns.names = names
    return ns


def fmt_faults(r: Result) -> str:
    return " ".join(f"{k}={v}" for k, v in sorted(r.faults.items()) if v and k != "journal_checks")


def table(results: list[Result]) -> str:
    head = ["scenario", "seed", "sagas", "ok", "failed", "dlq", "stuck", "viol", "tput during/after /s", "journal ok"]
    rows = []
    for r in results:
        dlq = r.outcomes.get("dead_lettered", 0)
        rows.append(
            [
                r.name,
                str(r.seed),
                str(r.sagas),
                f"{r.successes} (>={r.min_success})",
                str(r.outcomes.get("failed", 0)),
                str(dlq),
                str(r.stuck),
                str(len(r.violations)),
                f"{r.tput_during:.1f} / {r.tput_after:.1f}",
                f"{r.faults.get('journal_checks', 0)} checks",
            ]
        )
    widths = [max(len(h), *(len(row[i]) for row in rows)) for i, h in enumerate(head)]
    line = "  ".join(h.ljust(w) for h, w in zip(head, widths, strict=True))
    out = [line, "-" * len(line)]
    out += ["  ".join(c.ljust(w) for c, w in zip(row, widths, strict=True)) for row in rows]
    out.append("")
    out.append("faults injected:")
    out += [f"  {r.name:<16} {fmt_faults(r)}" for r in results]
    return "\n".join(out)


async def main_async(ns: argparse.Namespace) -> int:
    base = ns.seed if ns.seed is not None else random.randrange(1 << 30)
    print(f"chaos: base seed {base}, {ns.duration:g} s of faults per scenario", flush=True)
    results = []
    skipped: list[str] = []
    for k, name in enumerate(ns.names):
        seed = base + k
        if reason := can_run(name):
            print(f"== {name} SKIPPED: {reason}", flush=True)
            skipped.append(name)
            continue
        root = Path(tempfile.mkdtemp(prefix=f"chaos-{name}-"))
        print(f"== {name} seed={seed} data={root}", flush=True)
        r = await run_scenario(name, seed, ns.duration, root, short=ns.short)
        results.append(r)
        status = "ok" if r.passed else f"{len(r.violations)} VIOLATIONS"
        print(f"   {status}: {r.sagas} sagas, {r.successes} succeeded, {r.wall_s:.0f} s; {fmt_faults(r)}", flush=True)
        for note in r.notes:
            print(f"   note: {note}", flush=True)
        for v in r.violations[:30]:
            print(f"   VIOLATION {v}", flush=True)
        if r.passed and not ns.keep:
            shutil.rmtree(root, ignore_errors=True)
        elif not r.passed:
            print(f"   data and logs kept in {root}", flush=True)
    print()
    print(table(results))
    bad = [r.name for r in results if not r.passed]
    print(f"\n{'FAIL: ' + ', '.join(bad) if bad else 'PASS'}: {len(results)} scenarios, base seed {base}")
    if skipped:
        print(f"skipped (see above why): {', '.join(skipped)}")
    return 1 if bad else 0


def main(argv: list[str] | None = None) -> int:
    ns = parse(sys.argv[1:] if argv is None else argv)
    if ns.list:
        for name, spec in SCENARIOS.items():
            print(f"{name:<16} {(spec.body.__doc__ or '').split(chr(10))[0]}")
        return 0
    return asyncio.run(main_async(ns))


if __name__ == "__main__":
    sys.exit(main())
