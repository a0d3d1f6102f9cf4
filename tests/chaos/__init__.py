"""Chaos suite: seeded faults against the local cluster, invariants checked over what the services applied.

Every scenario (tests/chaos/scenarios.py) starts its own cluster as real processes on free loopback ports (stub
services, three coordinator shards, the router: tests/helpers/cluster.py), drives seeded client load through the
router (tests/helpers/load.py: clients retry the same order_id until answered), injects one kind of fault, heals, lets
everything finish and checks I1-I6 (tests/helpers/cluster_invariants.py) plus its own claims:

    crash_loop       SIGKILL a random shard every 2 s, restart it on its journal
    crash_points     every shard armed with a named crash point (coordinator/crashpoints.py), re-armed at each restart
    lost_replies     stubs apply, then answer DEADLINE_EXCEEDED (reply lost), on every kind of call
    hanging_payment  20% of ChargePayment calls hang; key reuse and asyncio task count back to baseline
    dead_letters     compensations that fail for ever -> dead letters -> heal -> bulk RetryDeadLetter -> all FAILED
    network          TCP proxy (tests/helpers/tcp_proxy.py) between shards and payment: delay, drop, reset, half-open
    router_kills     SIGKILL the router every 1-2 s while two clients place each order: one saga per order
    add_shard        a 4th shard joins through the router's config mid-load; earlier orders replayed
    overload         bursts of 5x capacity: RESOURCE_EXHAUSTED for the excess, bounded memory, recovery
    clock_jumps      shard wall clocks jump by minutes to hours (injected clock): no double expiry, no resurrection
    disk_full        a shard's journal on a tmpfs that fills up, then empties (needs root)
    fuzz             hypothesis: arbitrary PlaceOrder/admin requests and raw bytes, only sane statuses
    isolation        the isolated order flow on scarce stock with declines, shard kills and faults: every isolation
                     countermeasure (tests/helpers/isolation.py) on the ledgers, the stock and a GetOrder reader

`make chaos` runs the long versions and prints one table (python -m tests.chaos --help); test_chaos.py runs short
versions inside `make test`. Seeds are printed; the same seed replays the same fault schedule.
"""
