"""A deterministic simulation of the ring protocol: routers that learn ring changes late and in any order, crash and
restart with nothing; clients that retry through any router, several copies at once; shards that fence.

The shards' rule is the product's own (common.ring.fence, EpochHistory); the routers' steps model
shard_router.relay.routing and shard_router.ring.reload one remote call at a time: each call is one atomic step at one
shard, as a shard's single event loop makes it (its fence check and the registration of a new saga happen with no await
in between), except the probe. A router's GetSaga to an earlier owner of the order is two steps at that shard, as in
coordinator.shard.Shard.get: a read (the journal, on a reader thread: it snapshots whether the shard holds the order and
whether the fence would allow NOT_FOUND at that moment), then the answer, with any other process's steps in between.
With probe="reread" (the shard's rule today) an empty read answers NOT_FOUND only if the fence allowed it before the
read and no saga of the order was registered since; otherwise the shard reads again (another two steps). (A saga's
creation is one step here, so a probe never meets one in flight, which the shard's GetSaga waits for.)
probe="fence_at_answer" models the rule before that fix (NOT_FOUND if the read was empty and the fence passes when
answering), and probe="atomic" the probe as one step. A seeded scheduler interleaves every process step by step, so a
seed names one schedule and replays it exactly.

Checked after every step: no order is held by two shards, and every PlaceOrder a router answered names the saga the
order's one holder has (so nothing acknowledged was lost or duplicated). `python -m tests.simulation --help`.

With no_file, the cluster starts as `make run` does before any commit: no epochs file. The operator first lists the next
ring in the shards file (uncommitted: routers must not route by it), later commits it; routers (re)start from the file
they see, or without one: they ask every shard of their config for its history, one call a step, and route by the newest
(the config's ring as epoch 1 only if no shard holds one: shard_router.ring.reload). A shard's first history is checked
against its peers' (coordinator.ring.ownership; atomic here, one step), and a router that a shard refuses as a conflict
places nothing until the shards agree with it. first_ring="config", peer_check=False and block_on_conflict=False model
the rules before that fix (a router without a file took its config as epoch 1, a fresh shard took any first history, a
refused router went on placing): the simulation must find orders run twice there, as with probe="fence_at_answer"
(a router still on the older ring starts the order at the probed shard during the read, the shard then learns the
probe's ring, the empty read answers NOT_FOUND and the order is placed on its newer owner too)."""

from __future__ import annotations

import random
from collections.abc import Callable, Generator
from dataclasses import dataclass, field
from typing import Any, NamedTuple

from common import ring as ring_rules
from common.ring import EpochHistory, Refusal

SHARD_IDS = ("A", "B", "C", "D")
VNODES = 8
# The operator's commits, in order: a shard joins, another joins, one is drained out of the ring.
RINGS: tuple[tuple[str, ...], ...] = (("A", "B"), ("A", "B", "C"), ("A", "B", "C", "D"), ("A", "C", "D"))
ATTEMPTS = 5  # routing.RING_ATTEMPTS

Fence = Callable[[int | None, EpochHistory, str, str, bool], Refusal | None]
PROBES = ("reread", "fence_at_answer", "atomic")
"""How a shard answers a probe (GetSaga): see the module's docstring."""


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


class Read(NamedTuple):
    """What a probe's journal read saw: the order's saga (None: none), and whether the fence allowed NOT_FOUND then."""

    held: str | None
    settled: bool


@dataclass
class Shard:
    id: str
    fence: Fence
    history: EpochHistory = field(default_factory=EpochHistory)
    held: dict[str, str] = field(default_factory=dict)
    peers: dict[str, Shard] = field(default_factory=dict)
    """Every shard; with peer_check, a shard's first history is checked against the owners it names."""
    peer_check: bool = True

    def install(self, offered: EpochHistory) -> tuple[str, EpochHistory]:
        """("ok", what the shard holds now) or ("conflict", what it holds): coordinator.ring.ownership.install."""
        if self.history.conflict_with(offered) is not None:
            return "conflict", self.history
        if not self.history.epochs and offered.epochs and self.peer_check:
            current = offered.current
            assert current is not None
            for sid in current.shard_ids:
                peer = self.peers[sid].history
                if sid == self.id or not peer.epochs:
                    continue
                if peer.conflict_with(offered) is not None:
                    return "conflict", self.history
                if peer.number > offered.number:
                    offered = peer
        if offered.number > self.history.number:
            self.history = offered
        return "ok", self.history

    def get(self, order: str, epoch: int) -> tuple[str, Any]:
        if order in self.held:
            return "found", self.held[order]
        refusal = self.fence(epoch, self.history, self.id, order, False)
        return ("refused", refusal) if refusal else ("absent", None)

    def read(self, order: str, epoch: int) -> Read:
        """A probe's first step: the journal read, with whether the fence allowed NOT_FOUND when it began."""
        return Read(self.held.get(order), self.fence(epoch, self.history, self.id, order, False) is None)

    def answer(self, order: str, epoch: int, read: Read, rule: str) -> tuple[str, Any]:
        """A probe's second step, after its read: ("reread", None) if the shard reads again."""
        if read.held is not None:
            return "found", read.held
        if rule == "reread":
            allowed_now = self.fence(epoch, self.history, self.id, order, False) is None
            if order in self.held or (not read.settled and allowed_now):
                return "reread", None
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
    """Index into the published files of the copy it reads; -1: it sees no epochs file."""
    conflicts: set[str] = field(default_factory=set)
    """Shards that refused its history as a conflict: it places nothing while there are any."""

    def adopt(self, offered: EpochHistory, shard: str) -> None:
        if self.history.conflict_with(offered) is not None:
            self.conflicts.add(shard)
            return
        self.conflicts.discard(shard)
        if offered.number > self.history.number:
            self.history = offered

    def installed(self, answer: tuple[str, EpochHistory], shard: str) -> None:
        verdict, held = answer
        if verdict == "conflict":
            self.conflicts.add(shard)
        else:
            self.adopt(held, shard)


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
    def __init__(
        self,
        seed: int,
        fence: Fence = ring_rules.fence,
        orders: int = 6,
        routers: int = 3,
        no_file: bool = False,
        first_ring: str = "shards",
        peer_check: bool = True,
        block_on_conflict: bool = True,
        probe: str = "reread",
    ) -> None:
        assert probe in PROBES, probe
        self.probe_rule = probe
        self.rng = random.Random(seed)
        self.seed = seed
        self.files: list[EpochHistory] = FILES
        self.shards = {sid: Shard(sid, fence, peer_check=peer_check) for sid in SHARD_IDS}
        for shard in self.shards.values():
            shard.peers = self.shards
        self.no_file = no_file
        self.first_ring = first_ring
        self.block_on_conflict = block_on_conflict
        self.routers = [
            Router(f"r{i}", EpochHistory(), -1) if no_file else Router(f"r{i}", self.files[0], 0)
            for i in range(routers)
        ]
        if no_file:
            self.files = []  # written by the operator's commits (_operator)
        self.published = len(self.files) - 1 if no_file else 0  # the newest file version committed (-1: none yet)
        self.listed = 0
        """no_file: the ring the shards file lists (RINGS index); one ahead of committed while an edit waits."""
        self.committed = 0
        """no_file: the ring last committed (RINGS index; 0, the ring the routers start with, counts as committed)."""
        self.saga_seq = 0
        self.acks: dict[str, set[str]] = {}
        self.procs: list[Proc] = []
        self.pending: list[str] = []
        self.orders = [*self.rng.sample(MOVING, orders - 1), self.rng.choice(STAYING)]
        self.steps = 0
        self.trace: list[tuple[Any, ...]] = []
        """(format, args...) per event; rendered only for a replay (lines())."""

    # ---- the router's side (shard_router.relay.routing / reload, one remote call per step)
    # --------------------------------

    def place_order(self, router: Router, order: str) -> Step:
        for _ in range(ATTEMPTS):
            if router.conflicts and self.block_on_conflict:
                return None  # RingDisagreement: UNAVAILABLE, the client retries (maybe elsewhere)
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
                result, value = yield from self.probe(self.shards[sid], order, history.number)
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
                answer = yield self.shards[sid], lambda s, h=history: s.install(h)
                router.installed(answer, sid)
            else:
                held = yield self.shards[sid], lambda s: s.history
                router.adopt(held, sid)
        return None  # UNAVAILABLE: the client retries

    def probe(self, shard: Shard, order: str, epoch: int) -> Step:
        """GetSaga(order) at an earlier owner: one step (probe="atomic"), or a read step and an answer step, again
        while the shard reads again."""
        if self.probe_rule == "atomic":
            return (yield shard, lambda s: s.get(order, epoch))
        while True:
            read = yield shard, lambda s: s.read(order, epoch)
            answer = yield shard, lambda s, r=read: s.answer(order, epoch, r, self.probe_rule)
            if answer[0] != "reread":
                return answer

    def announce(self, router: Router) -> Step:
        """Shows the router's history to every shard of its topology: its epochs' and its config's."""
        known = {sid for e in router.history.epochs for sid in e.shard_ids} | set(RINGS[self.listed])
        for sid in self.rng.sample(sorted(known), len(known)):
            answer = yield self.shards[sid], lambda s, h=router.history: s.install(h)
            router.installed(answer, sid)
        return None

    def first_history(self, router: Router) -> Step:
        """A start without an epochs file (shard_router.ring.reload): with first_ring="shards", ask every shard of the
        config, then route by the newest history one holds (the config's ring as epoch 1 if none holds one); with
        "config", the config's ring as epoch 1 at once. Then the history is shown to every shard."""
        config = EpochHistory().advance(VNODES, [(s, s) for s in RINGS[self.listed]], 0)
        found = EpochHistory()
        if self.first_ring == "shards":
            for sid in self.rng.sample(RINGS[self.listed], len(RINGS[self.listed])):
                held = yield self.shards[sid], lambda s: s.history
                if held.number > found.number:
                    found = held
        router.history = found if found.epochs else config
        self.trace.append(("%s routes by %s (no epochs file)", router.name, router.history))
        yield from self.announce(router)
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

    def _start(self, router: Router) -> None:
        """A router starts (or restarts) from the epochs file it sees, or without one."""
        if router.file_version < 0:
            router.history = EpochHistory()  # serves nothing until it knows a ring (start() blocks)
            self.spawn(router, self.first_history(router), None)
        else:
            self.spawn(router, self.announce(router), None)

    def run(self, max_steps: int = 20_000) -> None:
        for router in self.routers:
            self._start(router)
        self.pending = [o for o in self.orders for _ in range(self.rng.randint(1, 3))]  # copies of each request
        self.rng.shuffle(self.pending)
        while (self.pending or self.procs) and self.steps < max_steps:
            self.steps += 1
            roll = self.rng.random()
            ready = [r for r in self.routers if r.history.epochs]
            if self.pending and ready and (roll < 0.25 or not self.procs):
                order = self.pending.pop()
                router = self.rng.choice(ready)
                self.trace.append(("client sends %s to %s", order, router.name))
                self.spawn(router, self.place_order(router, order), order)
            elif roll < 0.30 and self.no_file:
                self._operator()
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

    def _operator(self) -> None:
        """no_file: lists the next ring in the shards file (uncommitted), or commits the listed one as `saga-router
        epochs commit` does (shard_router.ring.epochs_cli): the file's history, or with no file yet the newest history a
        shard holds, with the listed ring as its next epoch; the first one is shown to every shard before it is
        written, and not written if one refuses it. (Each shard's answer is one atomic step here.)"""
        if not any(s.history.epochs for s in self.shards.values()):
            return  # the cluster's first start is not over: the README's procedures start from a running system
        if self.listed == self.committed and self.listed < len(RINGS) - 1:
            self.listed += 1
            self.trace.append(("operator lists ring %s in the shards file, uncommitted", list(RINGS[self.listed])))
            return
        if self.listed == self.committed:
            return
        base = self.files[-1] if self.files else max((s.history for s in self.shards.values()), key=lambda h: h.number)
        new = base.advance(VNODES, [(s, s) for s in RINGS[self.listed]], len(self.files) + 1)
        if not self.files:
            for sid in RINGS[self.listed]:
                if self.shards[sid].install(new)[0] == "conflict":
                    self.trace.append(("operator's commit refused by shard %s: nothing written", sid))
                    return
        self.files.append(new)
        self.published = len(self.files) - 1
        self.committed = self.listed
        self.trace.append(("operator commits %s", new))

    def _read_file(self, router: Router) -> None:
        """The router's copy of the epochs file catches up, by one or more commits (a ConfigMap, late)."""
        if router.file_version >= self.published:
            return
        if not router.history.epochs:
            return  # still starting: it reads the file when it restarts
        router.file_version = self.rng.randint(router.file_version + 1, self.published)
        file = self.files[router.file_version]
        self.trace.append(("%s reads epochs file version %s", router.name, router.file_version + 1))
        if router.history.conflict_with(file) is not None:
            return  # RingChangeRefused: the ring in use stays, an error is logged
        if file.number > router.history.number:
            router.history = file
            self.spawn(router, self.announce(router), None)

    def _crash(self, router: Router) -> None:
        """The router dies with its calls in flight (their clients retry) and restarts from the file it sees."""
        for proc in [p for p in self.procs if p.router is router]:
            self.procs.remove(proc)
            if proc.order is not None:
                self.pending.append(proc.order)
        router.conflicts.clear()
        if router.file_version >= 0:
            router.history = self.files[router.file_version]
        self.trace.append(("%s crashes and restarts on epoch %s", router.name, router.history.number))
        self._start(router)

    def _step(self, proc: Proc) -> None:
        """One remote call of proc, run atomically at its shard; then the process runs up to its next one."""
        shard, action = proc.request
        result = action(shard)
        who = proc.router.name if proc.order is None else f"{proc.router.name} ({proc.order})"
        self.trace.append(("  %s -> shard %s: %s", who, shard.id, result))
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
            if isinstance(value, EpochHistory):
                return f"ring epoch {value.number}"
            if type(value) is tuple:
                return "(" + ", ".join(str(show(v)) for v in value) + ")"
            return value

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


def explore(seeds: range, fence: Fence = ring_rules.fence, **world: Any) -> list[tuple[int, str]]:
    """Runs every seed (World's keyword arguments: no_file, first_ring, peer_check, block_on_conflict, probe); returns
    (seed, violation) for each that broke an invariant."""
    failures = []
    for seed in seeds:
        try:
            World(seed, fence, **world).run()
        except Violation as e:
            failures.append((seed, str(e)))
    return failures
