"""Shard configuration: frozen dataclasses with defaults, read from one TOML file plus environment and flag overrides,
validated once at load. Nothing else in the coordinator reads files for configuration or touches os.environ.

Environment overrides (each optional): SAGA_SHARD_ID, SAGA_LISTEN, SAGA_METRICS_LISTEN, SAGA_JOURNAL,
SAGA_SERVICES (one address for every service: the five the stubs serve and the other names of [services]),
SAGA_ORDER_ADDR, SAGA_INVENTORY_ADDR, SAGA_PAYMENT_ADDR, SAGA_LOYALTY_ADDR,
SAGA_SHIPPING_ADDR, SAGA_DATA_DIR, SAGA_JOURNAL_KEY_FILE (the keys that seal payment details in the journal),
SAGA_JOURNAL_KEY (the secret of older builds, to open what they sealed), SAGA_LOG_JSON=1, SAGA_LOG_LEVEL,
SAGA_ARCHIVE_DIR (retention.archive_dir).
"""

from __future__ import annotations

import dataclasses
import os
from collections.abc import Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from common.tomlfile import build, read_toml


class ConfigError(ValueError):
    """A configuration value is missing or out of range; the message names it."""


@dataclass(frozen=True)
class RetryPolicy:
    """How one kind of call is retried: exponential backoff with full jitter, bounded by attempts and by retry time
    (and, going forward, by the saga deadline). Both bounds are counted from the journal, so restarts do not reset them.

    The defaults are the forward steps': they ride out an outage of a downstream service of up to about 9 s (the
    10 s window less the last wait) within the saga's 30 s deadline."""

    max_attempts: int = 30
    """Attempts in all, the first included (an upper bound; max_elapsed_ms usually ends the retries first)."""
    initial_backoff_ms: int = 50
    """Upper bound of the first jittered wait."""
    max_backoff_ms: int = 1_000
    """Cap of the exponential bound."""
    multiplier: float = 2.0
    """Growth of the bound per attempt."""
    attempt_timeout_ms: int = 3_000
    """gRPC deadline of one attempt."""
    max_elapsed_ms: int = 10_000
    """Retry window: no further attempt once the time spent on attempts and waits would pass it (0: attempts only).
    Time while no shard process runs does not count."""

    def validate(self, name: str) -> None:
        if self.max_attempts < 1:
            raise ConfigError(f"{name}.max_attempts must be >= 1")
        if self.max_elapsed_ms < 0:
            raise ConfigError(f"{name}.max_elapsed_ms must be >= 0 (0: bounded by attempts only)")
        if self.initial_backoff_ms < 0 or self.max_backoff_ms < self.initial_backoff_ms:
            raise ConfigError(f"{name}: need 0 <= initial_backoff_ms <= max_backoff_ms")
        if self.multiplier < 1.0:
            raise ConfigError(f"{name}.multiplier must be >= 1")
        if self.attempt_timeout_ms < 1:
            raise ConfigError(f"{name}.attempt_timeout_ms must be >= 1")


@dataclass(frozen=True)
class OperationPolicy:
    """Long-running operations of one step: a service that answers a call with "accepted, in progress" (shop.v1
    Operation) is asked GetOperation until it is done. The [operations] table sets every step's; a table
    [operations.steps.<step>] (create_order, reserve_inventory, process_payment, schedule_shipment) changes one."""

    forward_max_ms: int = 600_000
    """Longest a forward call may stay in progress; past it (or past the saga's deadline, whichever comes first) the
    step fails and the saga compensates (the compensation cancels the operation at the service)."""
    compensate_max_ms: int = 86_400_000
    """Longest a compensation may stay in progress (not bounded by the saga's deadline); past it the saga is
    dead-lettered for an operator."""
    poll_min_ms: int = 200
    """Shortest wait between two polls; also the first wait when the service suggests none."""
    poll_max_ms: int = 30_000
    """Longest wait between two polls: waits grow from poll_min_ms by doubling unless the service suggests one."""
    heartbeat_ms: int = 120_000
    """A waiting call the service has not answered about (GetOperation failing or UNKNOWN) for this long is sent again
    with the same idempotency key, as a fresh attempt."""
    ask_unknown: bool = True
    """Before retrying or compensating a call whose outcome is unknown (deadline, lost connection, INTERNAL), ask the
    service GetOperation what became of it (applied: go on; not applied: retry; in progress: wait)."""

    def validate(self, name: str) -> None:
        for key in ("forward_max_ms", "compensate_max_ms", "poll_min_ms", "poll_max_ms", "heartbeat_ms"):
            if getattr(self, key) < 1:
                raise ConfigError(f"{name}.{key} must be >= 1")
        if self.poll_max_ms < self.poll_min_ms:
            raise ConfigError(f"{name}: need poll_min_ms <= poll_max_ms")


@dataclass(frozen=True)
class Limits:
    """Bounds on every input and queue of a shard."""

    id_max_len: int = 128
    """Longest order_id / user_id / item_id."""
    max_items: int = 100
    """Most items per order."""
    max_quantity: int = 10_000
    """Most units per item."""
    max_amount_cents: int = 10**10
    """Largest charge."""
    max_in_flight: int = 2_000
    """Non-terminal sagas running at once; past it PlaceOrder is shed with RESOURCE_EXHAUSTED."""
    shed_retry_after_ms: int = 200
    """Retry hint sent with a shed request."""
    page_size_default: int = 50
    """ListSagas / ListDeadLetters page size when the request says 0."""
    page_size_max: int = 500
    """Largest page a list call returns."""
    journal_max_batch: int = 4_096
    """Most records committed in one journal transaction."""
    watchers_per_saga: int = 32
    """Most concurrent WatchSaga streams on one saga."""
    watch_queue: int = 256
    """Events buffered per WatchSaga stream before it is ended as too slow."""
    bulk_retry_max: int = 500
    """Most dead letters one RetryDeadLetter(all) call resumes."""
    max_concurrent_rpcs: int = 20_000
    """Most RPCs the gRPC server handles at once (PlaceOrder joiners and watchers included); gRPC sheds the rest."""
    reason_max_len: int = 1_000
    """Longest operator reason on RetryDeadLetter / ResolveDeadLetter (it is stored in the audit trail)."""
    resume_per_s: int = 500
    """Unfinished sagas a restarted shard resumes per second at most (a tenth of it every tenth of a second): no
    stampede on the services after a restart with thousands of them. Polls overdue at a restart are spread the same
    way."""
    max_concurrent_polls: int = 64
    """GetOperation calls of waiting sagas in flight at once; the rest wait for their turn."""

    def validate(self) -> None:
        for f in dataclasses.fields(self):
            if getattr(self, f.name) < 1:
                raise ConfigError(f"limits.{f.name} must be >= 1")
        if self.page_size_default > self.page_size_max:
            raise ConfigError("limits.page_size_default must be <= limits.page_size_max")


@dataclass(frozen=True)
class Retention:
    """How finished sagas leave the journal (coordinator/operations/retention.py). A finished saga's rows go once it has
    been finished for finished_after_s; a compact record of its outcome stays until dedup_after_s, so a PlaceOrder retry
    still gets the original answer. Past dedup_after_s the order id is forgotten: a retry then re-creates its saga
    (docs/operations.md "Retention" says what the services then do). Operators' actions on dead letters (who retried or
    resolved what, and why) are the audit trail: they stay until audit_after_s."""

    finished_after_s: int = 7 * 86_400
    """Age (since it finished) at which a SUCCEEDED, FAILED or RESOLVED saga is removed with its events."""
    dedup_after_s: int = 30 * 86_400
    """Age (since it finished) at which the order id is forgotten; at least finished_after_s."""
    audit_after_s: int = 400 * 86_400
    """Age at which an operator's action leaves the journal: a closed dead letter (who retried or resolved it, and why;
    only once its saga is gone) and the ADMIN_RETRY / ADMIN_RESOLVE event of a removed saga. At least dedup_after_s;
    the default, 400 days, keeps a year of audit with a month to spare."""
    interval_s: int = 60
    """Seconds between retention passes; 0 turns retention off (nothing is ever removed)."""
    batch_sagas: int = 20
    """Sagas removed per writer transaction. Its cost is the pages it dirties (about 6 per saga: its events, its row,
    four indexes, the dedup record), written and fsynced at commit: 20 keeps a batch to a few milliseconds."""
    max_batches_per_pass: int = 5_000
    """Batches one pass runs at most (the rest waits for the next pass): up to 100,000 sagas a minute by default."""
    archive_dir: str = ""
    """Directory of the archive (gzip JSON lines, one file per UTC day the sagas finished); empty: no archive."""
    vacuum_pages: int = 128
    """Free pages handed back to the file system per vacuum step after a pass (auto_vacuum=INCREMENTAL journals); a
    step holds the writer about 3 ms per 128 pages here (2,048 took 73 ms)."""
    stats_interval_s: int = 60
    """Seconds between refreshes of the row-count and oldest-row metrics (counting reads whole tables); 0: never."""


@dataclass(frozen=True)
class Wal:
    """Bounds on the journal's write-ahead log. SQLite checkpoints every 1,000 pages by itself, but a reader of an
    old snapshot can keep the WAL from restarting; the shard checkpoints from the writer to keep it bounded."""

    limit_bytes: int = 64 * 1024 * 1024
    """The -wal file is truncated back to this after a checkpoint (PRAGMA journal_size_limit), and a checkpoint is
    forced, busy or not, once it is past it."""
    checkpoint_interval_s: float = 1.0
    """Seconds between checkpoint checks (a passive checkpoint beside the writer each time the WAL has frames)."""
    idle_queue: int = 2
    """A check runs a TRUNCATE checkpoint only if at most this many submissions wait for the writer (or the WAL is past
    limit_bytes)."""
    checkpoint_busy_ms: int = 20
    """Longest a checkpoint waits for readers of older snapshots (it holds the writer meanwhile)."""


@dataclass(frozen=True)
class GroupCommit:
    """The journal's commit window ([group_commit]), after PostgreSQL's commit_delay/commit_siblings. Each commit is
    one fsync, and each step of a saga waits for one (its intent is durable before its call). The writer commits
    together whatever piled up during the previous commit, but with 20 sagas in flight a shard still made 1.4 commits
    a saga. While the shard has more work than CPU (its event loop runs `busy_lag_ms` late or more) and at least
    `siblings` sagas are running, the writer waits up to `window_ms` until every saga running has submitted what it
    waits for: its next intent or its end (a step's outcome, queued unwaited just before, is not counted). See
    bench/README.md "commit window" for fsyncs a saga, CPU, and what it costs in latency: nothing measurable when it
    applies, since the sagas would have waited for CPU anyway. An idle or lightly loaded shard never waits."""

    window_ms: float = 25.0
    """Longest a commit waits for more writers; 0 turns the window off."""
    siblings: int = 4
    """Sagas running from which the window applies."""
    busy_lag_ms: float = 0.5
    """The window applies only while the shard's timers wake at least this late on average (a 20 ms sleep: about 0.2
    ms late when idle; later when the process waits for CPU). 0: whenever `siblings` sagas are running, loaded or not:
    then commits also wait for sagas still in calls to slow services (up to `window_ms` a step)."""


@dataclass(frozen=True)
class Replication:
    """The journal's continuous replication by Litestream (coordinator/operations/replication.py, deploy/README.md
    "Availability and recovery"): the shard does not copy anything itself, it watches the Litestream that does."""

    litestream_socket: str = ""
    """Control socket of the Litestream replicating this journal; empty: not replicated (nothing watched). While set,
    the shard leaves WAL checkpoints to Litestream (its own only past 4 x wal.limit_bytes, e.g. Litestream is down)."""
    max_lag_s: float = 30.0
    """A last successful sync older than this is a lagging replica: a warning, saga_replica_lagging 1 and the health
    of "saga.replication" NOT_SERVING (the saga services stay SERVING: the shard still works, its RPO grows)."""
    check_interval_s: float = 1.0
    """How often Litestream is asked."""


@dataclass(frozen=True)
class Services:
    """Addresses (host:port) of the downstream services, by the names definitions give them (a step's `service:`).
    The development stubs' five have defaults; any other name is a key of the [services] table (`fraud = "h:p"`)."""

    order: str = "127.0.0.1:50061"
    inventory: str = "127.0.0.1:50061"
    payment: str = "127.0.0.1:50061"
    shipping: str = "127.0.0.1:50061"
    loyalty: str = "127.0.0.1:50061"
    others: Mapping[str, str] = field(default_factory=dict)
    """Every other name of the [services] table."""

    @classmethod
    def all_at(cls, address: str, others: Mapping[str, str] | None = None) -> Services:
        """Every service at one address (SAGA_SERVICES, --services: the stubs serve all of them on one port)."""
        return cls(address, address, address, address, address, {k: address for k in (others or {})})

    def address(self, name: str) -> str | None:
        """The address of the service a definition names; None if the table has no such name."""
        if name in _SERVICE_FIELDS:
            return str(getattr(self, name))
        return self.others.get(name)

    def names(self) -> dict[str, str]:
        return {**{n: str(getattr(self, n)) for n in _SERVICE_FIELDS}, **self.others}


_SERVICE_FIELDS = ("order", "inventory", "payment", "shipping", "loyalty")


@dataclass(frozen=True)
class ShardConfig:
    shard_id: str = "shard-1"
    """This shard's name, shown in sagas and logs."""
    listen: str = "127.0.0.1:50071"
    """gRPC listen address."""
    metrics_listen: str = ""
    """host:port of the Prometheus /metrics endpoint; empty: none."""
    journal_path: str = ""
    """SQLite journal file; default $SAGA_DATA_DIR/<shard_id>.db."""
    journal_key_file: str = ""
    """Key file sealing payment details in the journal (format: coordinator/security/sealing.py); keep it, and back it
    up, apart from the journal. Default: <journal>.keys, created (mode 0600) at the first start of a new journal."""
    journal_key: str = ""
    """Secret of builds before key files; only opens blobs they sealed (re-sealed at start); default <journal>.key."""
    services: Services = field(default_factory=Services)
    default_ttl_ms: int = 30_000
    """Saga deadline when the request sets none."""
    max_ttl_ms: int = 3_600_000
    """Largest deadline a request may ask for (larger ones are capped)."""
    forward: RetryPolicy = field(default_factory=RetryPolicy)
    """Retries of forward steps."""
    compensate: RetryPolicy = field(
        default_factory=lambda: RetryPolicy(
            max_attempts=100,
            initial_backoff_ms=100,
            max_backoff_ms=15_000,
            attempt_timeout_ms=5_000,
            max_elapsed_ms=300_000,
        )
    )
    """Retries of compensations, on any error: they keep trying for 5 minutes (a refund API down that long is common),
    then the saga is dead-lettered for an operator."""
    dead_letter_redrive_s: int = 0
    """Re-drive open dead letters automatically every this many seconds; 0 is off."""
    operations: OperationPolicy = field(default_factory=OperationPolicy)
    """Long-running operations, every step (OperationPolicy)."""
    step_operations: Mapping[str, OperationPolicy] = field(default_factory=dict)
    """[operations.steps.<step>]: the steps whose policy differs, each laid over `operations`."""
    limits: Limits = field(default_factory=Limits)
    retention: Retention = field(default_factory=Retention)
    wal: Wal = field(default_factory=Wal)
    group_commit: GroupCommit = field(default_factory=GroupCommit)
    replication: Replication = field(default_factory=Replication)
    log_json: bool = False
    """Logs as JSON lines instead of human-readable text."""
    log_level: str = "INFO"
    """Lowest level logged: DEBUG shows every step attempt."""
    seed: int | None = None
    """Seed of the backoff jitter (None: random); tests set it to replay a run."""

    def validate(self) -> None:
        if not self.shard_id or len(self.shard_id) > 64:
            raise ConfigError("shard_id must be 1-64 characters")
        _check_address("listen", self.listen)
        if self.metrics_listen:
            _check_address("metrics_listen", self.metrics_listen)
        for name, address in self.services.names().items():
            _check_address(f"services.{name}", address)
        if not self.journal_path:
            raise ConfigError("journal_path is required")
        if not 1 <= self.default_ttl_ms <= self.max_ttl_ms:
            raise ConfigError("need 1 <= default_ttl_ms <= max_ttl_ms")
        if self.log_level.upper() not in ("TRACE", "DEBUG", "INFO", "SUCCESS", "WARNING", "ERROR", "CRITICAL"):
            raise ConfigError(f"log_level {self.log_level!r} is not a loguru level")
        if self.dead_letter_redrive_s < 0:
            raise ConfigError("dead_letter_redrive_s must be >= 0")
        self.forward.validate("forward")
        self.compensate.validate("compensate")
        self.operations.validate("operations")
        for step, policy in self.step_operations.items():
            if not isinstance(policy, OperationPolicy):
                raise ConfigError("set a step's operations in a table [operations.steps.<step>]")
            if step not in STEP_LABELS:
                raise ConfigError(f"operations.steps.{step}: not a step (one of {', '.join(STEP_LABELS)})")
            policy.validate(f"operations.steps.{step}")
        self.limits.validate()
        r = self.retention
        for name in (
            "finished_after_s",
            "dedup_after_s",
            "audit_after_s",
            "batch_sagas",
            "max_batches_per_pass",
            "vacuum_pages",
        ):
            if getattr(r, name) < 1:
                raise ConfigError(f"retention.{name} must be >= 1")
        if r.interval_s < 0 or r.stats_interval_s < 0:
            raise ConfigError("retention.interval_s and retention.stats_interval_s must be >= 0 (0: off)")
        if r.dedup_after_s < r.finished_after_s:
            raise ConfigError("retention.dedup_after_s must be >= retention.finished_after_s")
        if r.audit_after_s < r.dedup_after_s:
            raise ConfigError("retention.audit_after_s must be >= retention.dedup_after_s (audit outlives the order)")
        if not (self.replication.max_lag_s > 0 and self.replication.check_interval_s > 0):
            raise ConfigError("replication.max_lag_s and replication.check_interval_s must be > 0")
        if r.batch_sagas > 500:
            raise ConfigError("retention.batch_sagas must be <= 500 (each batch holds the journal writer)")
        g = self.group_commit
        if not (0 <= g.window_ms <= 1000 and g.siblings >= 2 and g.busy_lag_ms >= 0):
            raise ConfigError("group_commit: need 0 <= window_ms <= 1000, siblings >= 2 and busy_lag_ms >= 0")
        w = self.wal
        if w.limit_bytes < 1 or not w.checkpoint_interval_s > 0 or w.idle_queue < 0 or w.checkpoint_busy_ms < 0:
            raise ConfigError("wal: need limit_bytes >= 1, checkpoint_interval_s > 0, idle_queue >= 0, busy_ms >= 0")

    def operation_policy(self, step: str) -> OperationPolicy:
        """The long-running-operation policy of the step labelled `step`."""
        return self.step_operations.get(step, self.operations)


STEP_LABELS = ("create_order", "reserve_inventory", "process_payment", "schedule_shipment")


def _check_address(name: str, value: str) -> None:
    host, sep, port = value.rpartition(":")
    if not sep or not host or not port.isdigit() or not 0 <= int(port) <= 65535:
        raise ConfigError(f"{name} must be host:port, got {value!r}")


def load(
    path: str | os.PathLike[str] | None = None,
    env: Mapping[str, str] | None = None,
    overrides: Mapping[str, Any] | None = None,
) -> ShardConfig:
    """Reads the TOML file (if any), applies environment then flag overrides, fills derived defaults, validates."""
    env = os.environ if env is None else env
    data: dict[str, Any] = {}
    if path:
        data = read_toml(path, what="config", error=ConfigError)
    steps: Any = {}
    if isinstance(data.get("operations"), Mapping) and "steps" in data["operations"]:
        data = {**data, "operations": dict(data["operations"])}
        steps = data["operations"].pop("steps")
    others: dict[str, str] = {}
    if isinstance(data.get("services"), Mapping):
        # Names beyond the stubs' five are the services of the definitions the shard runs: any key, an address.
        table = dict(data["services"])
        for name in [k for k in table if k not in _SERVICE_FIELDS]:
            value = table.pop(name)
            if not isinstance(value, str):
                raise ConfigError(f"services.{name} must be an address string (host:port)")
            others[str(name)] = value
        data = {**data, "services": table}
    cfg: ShardConfig = build(ShardConfig, data, "", ConfigError)
    if others:
        cfg = dataclasses.replace(cfg, services=dataclasses.replace(cfg.services, others=others))
    if not isinstance(steps, Mapping) or not all(isinstance(v, Mapping) for v in steps.values()):
        raise ConfigError("operations.steps must hold one table per step: [operations.steps.process_payment]")
    if steps:
        per_step = {
            str(k): build(OperationPolicy, v, f"operations.steps.{k}.", ConfigError, cfg.operations)
            for k, v in steps.items()
        }
        cfg = dataclasses.replace(cfg, step_operations=per_step)

    changes: dict[str, Any] = {}
    for var, key in (
        ("SAGA_SHARD_ID", "shard_id"),
        ("SAGA_LISTEN", "listen"),
        ("SAGA_METRICS_LISTEN", "metrics_listen"),
        ("SAGA_JOURNAL", "journal_path"),
        ("SAGA_JOURNAL_KEY", "journal_key"),
        ("SAGA_JOURNAL_KEY_FILE", "journal_key_file"),
        ("SAGA_LOG_LEVEL", "log_level"),
    ):
        if env.get(var):
            changes[key] = env[var]
    if env.get("SAGA_LITESTREAM_SOCKET"):
        changes["replication"] = dataclasses.replace(cfg.replication, litestream_socket=env["SAGA_LITESTREAM_SOCKET"])
    if env.get("SAGA_ARCHIVE_DIR"):
        changes["retention"] = dataclasses.replace(cfg.retention, archive_dir=env["SAGA_ARCHIVE_DIR"])
    if env.get("SAGA_LOG_JSON"):
        changes["log_json"] = env["SAGA_LOG_JSON"] not in ("0", "false", "")
    services = cfg.services
    if env.get("SAGA_SERVICES"):
        a = env["SAGA_SERVICES"]
        services = Services.all_at(a, services.others)
    for name in _SERVICE_FIELDS:
        if env.get(f"SAGA_{name.upper()}_ADDR"):
            services = dataclasses.replace(services, **{name: env[f"SAGA_{name.upper()}_ADDR"]})  # type: ignore[arg-type]
    changes["services"] = services
    for key, value in (overrides or {}).items():
        if value is None:
            continue
        if key == "services":
            changes["services"] = Services.all_at(value, changes["services"].others)
        elif key == "litestream_socket":
            changes["replication"] = dataclasses.replace(
                changes.get("replication", cfg.replication), litestream_socket=value
            )
        else:
            changes[key] = value
    cfg = dataclasses.replace(cfg, **changes)
    if not cfg.journal_path:
        data_dir = Path(env.get("SAGA_DATA_DIR") or ".data")
        cfg = dataclasses.replace(cfg, journal_path=str(data_dir / f"{cfg.shard_id}.db"))
    cfg.validate()
    return cfg
