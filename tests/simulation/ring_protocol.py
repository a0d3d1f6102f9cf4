"""A deterministic simulation of the ring protocol: routers that learn ring changes late and in any order, crash and
restart with nothing; clients that retry through any router, several copies at once; shards that fence.

The shards' rule is the product's own (common.ring.fence, EpochHistory); the routers' steps model shard_router.routing
and shard_router.reload one remote call at a time: each call is one atomic step at one shard, as a shard's single
event loop makes it (its fence check and the registration of a new saga happen with no await in between). A seeded
scheduler interleaves every process step by step, so a seed names one schedule and replays it exactly.

Checked after every step: no order is held by two shards, and every PlaceOrder a router answered names the saga the
order's one holder has (so nothing acknowledged was lost or duplicated). `python -m tests.simulation --help`.
"""

from __future__ import annotations

import random
from collections.abc import Callable, Generator
from dataclasses import dataclass, field
from typing import Any

from common import ring as ring_rules
from common.ring import EpochHistory, Refusal

SHARD_IDS = ("A", "B", "C", "D")
VNODES = 8
# The operator's commits, in order: a shard joins, another joins, one is drained out of the ring.
RINGS: tuple[tuple[str, ...], ...] = (("A", "B"), ("A", "B", "C"), ("A", "B", "C", "D"), ("A", "C", "D"))
ATTEMPTS = 5  # routing.RING_ATTEMPTS

Fence = Callable[[int | None, EpochHistory, str, str, bool], Refusal | None]


def _histories() -> list[EpochHistory]:
    """The epochs file after each commit."""
    out, h = [], EpochHistory()
    for n, ids in enumerate(RINGS):
        h = h.advance(VNODES, [(s, s) for s in ids], n)
        out.append(h)
    return out


FILES = _histories()
_OWNERS = [h.current.ring.owner for h in FILES if h.current is not None]
MOVING = [o for o in (f"o{n}" for n in range(2000)) if len({owner(o) for owner in _OWNERS}) >= 2]
"""Orders whose owner changes across the rings: the interesting ones."""
STAYING = [o for o in (f"o{n}" for n in range(200)) if len({owner(o) for owner in _OWNERS}) == 1]


class Violation(AssertionError):
    pass


@dataclass
class Shard:
    id: str
    fence: Fence
    history: EpochHistory = field(default_factory=EpochHistory)
    held: dict[str, str] = field(default_factory=dict)

    def install(self, offered: EpochHistory) -> EpochHistory:
        if self.history.conflict_with(offered) is not None:
            raise Violation(f"shard {self.id} saw two placements under one epoch")
        if offered.number > self.history.number:
            self.history = offered
        return self.history

    def get(self, order: str, epoch: int) -> tuple[str, Any]:
        if order in self.held:
            return "found", self.held[order]
        refusal = self.fence(epoch, self.history, self.id, order, False)
        return ("refused", refusal) if refusal else ("absent", None)

    def place(self, order: str, epoch: int, saga_id: str) -> tuple[str, Any]:
        if order in self.held:
            return "ok", self.held[order]
        refusal = self.fence(epoch, self.history, self.id, order, True)
        if refusal:
            return "refused", refusal
        self.held[order] = saga_id
        return "ok", saga_id


@dataclass
class Router:
    name: str
    history: EpochHistory
    file_version: int

    def adopt(self, offered: EpochHistory) -> None:
        if offered.number > self.history.number and self.history.conflict_with(offered) is None:
            self.history = offered


Request = tuple[Shard, Callable[[Shard], Any]]
Step = Generator[Request, Any, Any]
"""A process: yields (shard, action) for the scheduler to run atomically; is sent the action's result."""


@dataclass
class Proc:
    router: Router
    steps: Step
    order: str | None
    """The client request it serves (None: the router's own announce)."""
    request: Request
    """The remote call it waits to make."""


class World:
    def __init__(self, seed: int, fence: Fence = ring_rules.fence, orders: int = 6, routers: int = 3) -> None:
        self.rng = random.Random(seed)
        self.seed = seed
        self.files = FILES
        self.shards = {sid: Shard(sid, fence) for sid in SHARD_IDS}
        self.routers = [Router(f"r{i}", self.files[0], 0) for i in range(routers)]
        self.published = 0  # the newest file version the operator has committed
        self.saga_seq = 0
        self.acks: dict[str, set[str]] = {}
        self.procs: list[Proc] = []
        self.pending: list[str] = []
        self.orders = [*self.rng.sample(MOVING, orders - 1), self.rng.choice(STAYING)]
        self.steps = 0
        self.trace: list[tuple[Any, ...]] = []
        """(format, args...) per event; rendered only for a replay (lines())."""

    # ---- the router's side (shard_router.routing / reload, one remote call per step) --------------------------------

    def place_order(self, router: Router, order: str) -> Step:
        for _ in range(ATTEMPTS):
            history = router.history
            current = history.current
            assert current is not None
            owner = current.ring.owner(order)
            earlier: list[str] = []
            for e in history.older:
                sid = e.ring.owner(order)
                if sid != owner and sid not in earlier:
                    earlier.append(sid)
            target, refused = owner, None
            for sid in earlier:  # the real router asks them all at once; any order of answers is a schedule here
                result, value = yield self.shards[sid], lambda s, o=order, n=history.number: s.get(o, n)
                if result == "refused":
                    refused = (sid, value)
                    break
                if result == "found":
                    target = sid
                    break
            if refused is None:
                saga_id = f"s{self.saga_seq}"
                self.saga_seq += 1
                result, value = yield (
                    self.shards[target],
                    lambda s, o=order, n=history.number, i=saga_id: s.place(o, n, i),
                )
                if result == "ok":
                    return value
                refused = (target, value)
            sid, refusal = refused
            if refusal is Refusal.UNKNOWN:
                held = yield self.shards[sid], lambda s, h=history: s.install(h)
            else:
                held = yield self.shards[sid], lambda s: s.history
            router.adopt(held)
        return None  # UNAVAILABLE: the client retries

    def announce(self, router: Router) -> Step:
        for sid in self.rng.sample(SHARD_IDS, len(SHARD_IDS)):
            held = yield self.shards[sid], lambda s, h=router.history: s.install(h)
            router.adopt(held)
        return None

    # ---- the schedule ---------------------------------------------------------------------------------------------

    def spawn(self, router: Router, steps: Step, order: str | None) -> None:
        """Starts a process; it runs up to its first remote call now (routers compute locally without yielding)."""
        try:
            request = next(steps)
        except StopIteration as done:
            self._finished(router, order, done.value)
            return
        self.procs.append(Proc(router, steps, order, request))

    def run(self, max_steps: int = 20_000) -> None:
        for router in self.routers:
            self.spawn(router, self.announce(router), None)
        self.pending = [o for o in self.orders for _ in range(self.rng.randint(1, 3))]  # copies of each request
        self.rng.shuffle(self.pending)
        while (self.pending or self.procs) and self.steps < max_steps:
            self.steps += 1
            roll = self.rng.random()
            if self.pending and (roll < 0.25 or not self.procs):
                order = self.pending.pop()
                router = self.rng.choice(self.routers)
                self.trace.append(("client sends %s to %s", order, router.name))
                self.spawn(router, self.place_order(router, order), order)
            elif roll < 0.30 and self.published < len(self.files) - 1:
                self.published += 1
                self.trace.append(("operator commits epoch %s", self.published + 1))
            elif roll < 0.40:
                self._read_file(self.rng.choice(self.routers))
            elif roll < 0.43:
                self._crash(self.rng.choice(self.routers))
            elif self.procs:
                self._step(self.procs[self.rng.randrange(len(self.procs))])
        if self.steps >= max_steps:
            raise Violation(f"seed {self.seed}: no progress after {max_steps} steps")
        self._check(final=True)

    def _read_file(self, router: Router) -> None:
        """The router's copy of the epochs file catches up, by one or more commits (a ConfigMap, late)."""
        if router.file_version >= self.published:
            return
        router.file_version = self.rng.randint(router.file_version + 1, self.published)
        file = self.files[router.file_version]
        self.trace.append(("%s reads epochs file version %s", router.name, router.file_version + 1))
        if file.number > router.history.number:
            router.history = file
            self.spawn(router, self.announce(router), None)

    def _crash(self, router: Router) -> None:
        """The router dies with its calls in flight (their clients retry) and restarts from the file it sees."""
        for proc in [p for p in self.procs if p.router is router]:
            self.procs.remove(proc)
            if proc.order is not None:
                self.pending.append(proc.order)
        router.history = self.files[router.file_version]
        self.trace.append(("%s crashes and restarts on epoch %s", router.name, router.history.number))
        self.spawn(router, self.announce(router), None)

    def _step(self, proc: Proc) -> None:
        """One remote call of proc, run atomically at its shard; then the process runs up to its next one."""
        shard, action = proc.request
        result = action(shard)
        self.trace.append(("  %s -> shard %s: %s", proc.router.name, shard.id, result))
        try:
            proc.request = proc.steps.send(result)
        except StopIteration as done:
            self.procs.remove(proc)
            self._finished(proc.router, proc.order, done.value)
        self._check()

    def _finished(self, router: Router, order: str | None, saga_id: str | None) -> None:
        if order is None:
            return
        if saga_id is None:
            self.pending.append(order)  # UNAVAILABLE: the client tries again, maybe elsewhere
            return
        self.acks.setdefault(order, set()).add(saga_id)
        self.trace.append(("%s answers %s: %s", router.name, order, saga_id))

    def lines(self) -> list[str]:
        """The trace, readable: histories are shown by their epoch number."""

        def show(value: Any) -> Any:
            return f"ring epoch {value.number}" if isinstance(value, EpochHistory) else value

        return [fmt % tuple(show(a) for a in args) for fmt, *args in self.trace]

    def _check(self, final: bool = False) -> None:
        holders: dict[str, list[str]] = {}
        for shard in self.shards.values():
            for order in shard.held:
                holders.setdefault(order, []).append(shard.id)
        for order, where in holders.items():
            if len(where) > 1:
                raise Violation(f"seed {self.seed}: order {order} held by shards {where}")
        for order, answered in self.acks.items():
            held = {self.shards[s].held[order] for s in holders.get(order, [])}
            if len(answered) > 1 or not answered <= held:
                raise Violation(f"seed {self.seed}: order {order} answered {answered}, held as {held}")
        if final:
            missing = [o for o in self.orders if o not in self.acks]
            if missing:
                raise Violation(f"seed {self.seed}: orders never answered: {missing}")


def explore(seeds: range, fence: Fence = ring_rules.fence) -> list[tuple[int, str]]:
    """Runs every seed; returns (seed, violation) for each that broke an invariant."""
    failures = []
    for seed in seeds:
        try:
            World(seed, fence).run()
        except Violation as e:
            failures.append((seed, str(e)))
    return failures
