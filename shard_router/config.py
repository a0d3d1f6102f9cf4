"""Router configuration: frozen dataclasses read from one TOML file (the shard list plus an optional [router] table) and
the environment, validated once at load. Nothing else in the router reads configuration files or touches os.environ.

The file (``deploy/local/shards.toml`` is an example)::

    vnodes = 1024                  # points per shard on the hash ring; changing it is a re-shard

    [router]                       # optional; every key has a default (RouterSettings)
    reload_interval_s = 1.0

    [[shards]]                     # the ring: order ids are consistent-hashed onto these ids
    id = "shard-1"
    address = "127.0.0.1:50071"
    metrics = "127.0.0.1:9071"     # optional: its /metrics, which the dashboard scrapes for step latencies
    # draining = true              # owns no keys any more, still answers for orders earlier rings placed on it

    # or, instead of [[shards]]: `count` shards whose id and addresses follow templates ({i} = 0 .. count-1), as the
    # pods of a StatefulSet are named; SAGA_SHARD_COUNT overrides count
    # [shard_set]
    # count = 3
    # id = "saga-shard-{i}"
    # address = "saga-shard-{i}.saga-shard:50071"
    # metrics = "saga-shard-{i}.saga-shard:9071"   # optional
    # draining = ["saga-shard-2"]                     # optional: ids that own no new orders

    [tls]                          # optional: mutual TLS (relative paths are relative to this file); read at start
    cert = "tls/router.pem"        # what the router presents to its clients and to the shards
    key = "tls/router-key.pem"
    ca = "tls/ca.pem"              # clients' and shards' certificates must chain to it

Environment overrides (each optional): SAGA_ROUTER_LISTEN, SAGA_ROUTER_CONFIG, SAGA_ROUTER_EPOCHS (the epochs file),
SAGA_SHARD_COUNT ([shard_set] count),
SAGA_ROUTER_METRICS_LISTEN, SAGA_ROUTER_DASHBOARD_LISTEN, SAGA_LOG_JSON=1. Command-line flags override the environment
(--tls-cert/--tls-key/--tls-ca/--insecure override [tls]).
"""

from __future__ import annotations

import dataclasses
import os
import re
from collections.abc import Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from common.tls import TlsFiles
from common.tomlfile import build, check_keys, read_toml

_SHARD_ID = re.compile(r"^[A-Za-z0-9._-]{1,64}$")

DEFAULT_LISTEN = "127.0.0.1:50051"
DEFAULT_VNODES = 1024
"""Enough points that 3 shards each get within ~5% of a third of the keys (256 gave 12% skew in our measurements)."""


class ConfigError(ValueError):
    """A configuration value is missing, malformed or out of range; the message names the file and the setting."""


@dataclass(frozen=True)
class ShardSpec:
    """One shard as the config file lists it."""

    id: str
    """Stable name; placement hashes this id, never the address, so a shard can move hosts without re-sharding."""
    address: str
    """host:port of its gRPC server."""
    draining: bool = False
    """Out of the ring (owns no keys) but still reachable for orders that earlier rings placed on it."""
    metrics: str | None = None
    """host:port of its Prometheus /metrics, if the dashboard should read it (not part of placement)."""


@dataclass(frozen=True)
class RingSpec:
    """What decides placement: the ids of the non-draining shards and the number of virtual nodes per shard."""

    vnodes: int
    """Points per shard on the ring."""
    shards: tuple[ShardSpec, ...]
    """Every shard of the file, draining ones included, in file order."""

    @property
    def ring_ids(self) -> tuple[str, ...]:
        """Ids of the shards that own keys, sorted (placement does not depend on file order)."""
        return tuple(sorted(s.id for s in self.shards if not s.draining))

    @property
    def addresses(self) -> dict[str, str]:
        return {s.id: s.address for s in self.shards}

    @property
    def metrics_addresses(self) -> dict[str, str]:
        """Shard id to host:port of its /metrics, for the shards that list one."""
        return {s.id: s.metrics for s in self.shards if s.metrics}


@dataclass(frozen=True)
class RouterSettings:
    """The optional [router] table. Read at start only: a change needs a restart (the ring itself reloads live)."""

    reload_interval_s: float = 1.0
    """How often the config and epochs files are checked for changes (SIGHUP reloads at once)."""
    probe_timeout_s: float = 5.0
    """Upper bound of one ownership probe (GetSaga on an earlier owner), within the caller's own deadline."""
    place_order_retry_window_s: int = 86_400
    """How long clients may retry a PlaceOrder; `epochs drop` keeps epochs needed by sagas younger than this."""
    page_size_default: int = 50
    """ListSagas / ListDeadLetters page size when the request says 0 (as on a shard)."""
    page_size_max: int = 500
    """Largest page size a request may ask for (as on a shard)."""
    max_concurrent_rpcs: int = 10_000
    """Calls served at once; past it the router answers RESOURCE_EXHAUSTED instead of queueing."""
    channel_close_grace_s: float = 30.0
    """When a shard address leaves the config, calls still running on its channel get this long to finish."""
    shutdown_grace_s: float = 5.0
    """On SIGTERM, in-flight calls get this long to finish before they are cancelled."""
    max_message_bytes: int = 16 * 1024 * 1024
    """Largest request or response relayed (a 500-saga page with steps fits well within it)."""
    health_check_interval_s: float = 1.0
    """How often every shard's gRPC health is checked (saga_router_shard_up; NOT_SERVING when none is up)."""
    health_check_timeout_s: float = 1.0
    """Bound of one shard health check; no answer within it counts as down."""
    dashboard_sample_interval_s: float = 2.0
    """With a dashboard: how often the shards' /metrics are scraped for rates and percentiles."""
    dashboard_history_s: float = 600.0
    """With a dashboard: how far back rates are kept (memory is samples x shards x series, a few hundred KB)."""
    dashboard_allow_remote: bool = False
    """Serve the dashboard on an address other than loopback (only with an auth policy, and behind TLS termination:
    the dashboard itself speaks plain HTTP; its cookie is then marked Secure). Off: a non-loopback --dashboard-listen
    is refused at start."""
    dashboard_hosts: tuple[str, ...] = ()
    """The host[:port] names browsers reach a remote dashboard by (its Host and Origin allow-list), e.g.
    ["saga.example.com"]; a loopback dashboard answers to its own address, localhost and 127.0.0.1."""

    def validate(self) -> None:
        for f in dataclasses.fields(self):
            value = getattr(self, f.name)
            if not isinstance(value, bool | tuple) and value <= 0:
                raise ConfigError(f"[router] {f.name} must be > 0")
        if self.page_size_default > self.page_size_max:
            raise ConfigError("[router] page_size_default must be <= page_size_max")


@dataclass(frozen=True)
class RouterConfig:
    """Everything the router process needs."""

    listen: str
    """gRPC listen address (host:port)."""
    config_path: Path
    """The shards file; re-read when it changes."""
    epochs_path: Path
    """State file holding the earlier rings (see shard_router.ring.epochs); default: next to the config file."""
    ring: RingSpec
    """The ring the file describes now."""
    settings: RouterSettings
    """The [router] table."""
    log_json: bool = False
    """Logs as JSON lines instead of human-readable text."""
    metrics_listen: str | None = None
    """host:port of the Prometheus /metrics endpoint; None: no endpoint."""
    dashboard_listen: str | None = None
    """host:port of the dashboard (HTML page and JSON API); None: no dashboard."""
    tls: TlsFiles = dataclasses.field(default_factory=TlsFiles)
    """Certificate, key and CA for mutual TLS with clients and shards ([tls] or --tls-*); none: plaintext (loopback
    only unless tls.insecure)."""

    @property
    def definitions_path(self) -> Path:
        """The saga definitions history (shard_router.defs.history): always beside the epochs file, so the two travel
        together (one ConfigMap, one backup)."""
        return definitions_path_for(self.epochs_path)


def check_address(name: str, value: object) -> str:
    if value is None:
        raise ConfigError(f"{name} is required (host:port)")
    if not isinstance(value, str):
        raise ConfigError(f"{name} must be a string host:port, got {value!r}")
    host, sep, port = value.rpartition(":")
    if not sep or not host or not port.isdigit() or not 0 <= int(port) <= 65535:
        raise ConfigError(f"{name} must be host:port, got {value!r}")
    return value


def default_epochs_path(config_path: Path) -> Path:
    """``shards.toml`` keeps its earlier rings in ``shards.epochs.json`` beside it."""
    return config_path.with_name(config_path.stem + ".epochs.json")


def definitions_path_for(epochs_path: Path) -> Path:
    """``shards.epochs.json`` -> ``shards.defs.json``; any other name ``<stem>.defs.json``, in the same directory."""
    name = epochs_path.name
    base = name.removesuffix(".epochs.json") if name.endswith(".epochs.json") else epochs_path.stem
    return epochs_path.with_name(base + ".defs.json")


def load(
    config_path: str | os.PathLike[str] | None = None,
    *,
    listen: str | None = None,
    epochs_path: str | os.PathLike[str] | None = None,
    log_json: bool | None = None,
    metrics_listen: str | None = None,
    dashboard_listen: str | None = None,
    tls: TlsFiles | None = None,
    env: Mapping[str, str] | None = None,
) -> RouterConfig:
    """Reads the file named by the argument (else SAGA_ROUTER_CONFIG), applies environment then argument overrides,
    validates. Raises ConfigError naming the file and setting."""
    env = os.environ if env is None else env
    raw_path = config_path or env.get("SAGA_ROUTER_CONFIG")
    if not raw_path:
        raise ConfigError("no shards config: pass --config PATH or set SAGA_ROUTER_CONFIG")
    path = Path(raw_path)
    data = read_toml(path, what="shards config", error=ConfigError)
    try:
        ring, settings = _parse(data, env)
        file_tls = _parse_tls(data.get("tls", {}), path.parent)
        tls = _merge_tls(file_tls, tls)
    except (ConfigError, ValueError) as e:
        raise ConfigError(f"{path}: {e}") from e

    listen = listen or env.get("SAGA_ROUTER_LISTEN") or DEFAULT_LISTEN
    check_address("listen", listen)
    raw_epochs = epochs_path or env.get("SAGA_ROUTER_EPOCHS")
    epochs = Path(raw_epochs) if raw_epochs else default_epochs_path(path)
    if log_json is None:
        log_json = env.get("SAGA_LOG_JSON", "") not in ("", "0", "false")
    metrics_listen = metrics_listen or env.get("SAGA_ROUTER_METRICS_LISTEN") or None
    dashboard_listen = dashboard_listen or env.get("SAGA_ROUTER_DASHBOARD_LISTEN") or None
    if metrics_listen is not None:
        check_address("metrics_listen", metrics_listen)
    if dashboard_listen is not None:
        check_address("dashboard_listen", dashboard_listen)
    return RouterConfig(
        listen=listen,
        config_path=path,
        epochs_path=epochs,
        ring=ring,
        settings=settings,
        log_json=log_json,
        metrics_listen=metrics_listen,
        dashboard_listen=dashboard_listen,
        tls=tls,
    )


def _parse_tls(table: object, base: Path) -> TlsFiles:
    table = check_keys(table, ("cert", "key", "ca"), "[tls] ", ConfigError)
    paths: dict[str, Path] = {}
    for key, value in table.items():
        if not isinstance(value, str) or not value:
            raise ConfigError(f"[tls] {key} must be a file path, got {value!r}")
        paths[key] = base / value
    return TlsFiles(cert=paths.get("cert"), key=paths.get("key"), ca=paths.get("ca"))


def _merge_tls(file_tls: TlsFiles, flags: TlsFiles | None) -> TlsFiles:
    """Flags win: TLS files given on the command line replace the [tls] table; --insecure alone turns TLS off."""
    if flags is None:
        return file_tls
    if flags.enabled or flags.insecure:
        return flags
    return file_tls


def _parse(data: Mapping[str, Any], env: Mapping[str, str]) -> tuple[RingSpec, RouterSettings]:
    check_keys(data, ("vnodes", "router", "shards", "shard_set", "tls"), "", ConfigError)
    vnodes = data.get("vnodes", DEFAULT_VNODES)
    if not isinstance(vnodes, int) or isinstance(vnodes, bool) or not 1 <= vnodes <= 65_536:
        raise ConfigError(f"vnodes must be an integer in 1..65536, got {vnodes!r}")
    settings = _parse_settings(data.get("router", {}))
    raw_shards = data.get("shards")
    if "shard_set" in data:
        if raw_shards is not None:
            raise ConfigError("list the shards either as [[shards]] tables or as a [shard_set], not both")
        raw_shards = _expand_shard_set(data["shard_set"], env)
    if not isinstance(raw_shards, list) or not raw_shards:
        raise ConfigError('no shards: add at least one [[shards]] table with id = "..." and address = "host:port"')
    shards = tuple(_parse_shard(i, entry) for i, entry in enumerate(raw_shards))
    for attr in ("id", "address"):
        seen: set[str] = set()
        for s in shards:
            value = getattr(s, attr)
            if value in seen:
                raise ConfigError(f"two shards have {attr} {value!r}")
            seen.add(value)
    ring = RingSpec(vnodes=vnodes, shards=shards)
    if not ring.ring_ids:
        raise ConfigError("every shard is draining: at least one must own keys")
    return ring, settings


def _expand_shard_set(table: object, env: Mapping[str, str]) -> list[dict[str, Any]]:
    """[shard_set]: `count` shards named by templates in which {i} is 0..count-1 (a StatefulSet's pods);
    SAGA_SHARD_COUNT overrides count, so the one place that sets the number of pods also sets the list. `draining`
    lists ids of the set that own no new orders (the first step of removing the highest pod)."""
    table = check_keys(table, ("count", "id", "address", "metrics", "draining"), "[shard_set] ", ConfigError)
    count: object = table.get("count")
    if env.get("SAGA_SHARD_COUNT"):
        raw = env["SAGA_SHARD_COUNT"]
        if not raw.isdigit():
            raise ConfigError(f"SAGA_SHARD_COUNT must be a whole number, got {raw!r}")
        count = int(raw)
    if not isinstance(count, int) or isinstance(count, bool) or not 1 <= count <= 1024:
        raise ConfigError(f"[shard_set] count (or SAGA_SHARD_COUNT) must be an integer in 1..1024, got {count!r}")
    templates = {}
    for key in ("id", "address", "metrics"):
        value = table.get(key)
        if value is None and key == "metrics":
            continue
        if not isinstance(value, str) or "{i}" not in value:
            raise ConfigError(f'[shard_set] {key} must be a string containing {{i}}, e.g. "saga-shard-{{i}}"')
        templates[key] = value
    shards: list[dict[str, Any]] = [
        {key: t.replace("{i}", str(i)) for key, t in templates.items()} for i in range(count)
    ]
    draining = table.get("draining", [])
    ids = [s["id"] for s in shards]
    if not isinstance(draining, list) or not all(isinstance(d, str) and d in ids for d in draining):
        raise ConfigError(
            f"[shard_set] draining must be a list of the set's shard ids ({ids[0]} ...), got {draining!r}"
        )
    for shard in shards:
        shard["draining"] = shard["id"] in draining
    return shards


def _parse_shard(index: int, entry: object) -> ShardSpec:
    where = f"shards[{index}]"
    entry = check_keys(entry, ("id", "address", "draining", "metrics"), f"{where}: ", ConfigError)
    shard_id = entry.get("id")
    if not isinstance(shard_id, str) or not _SHARD_ID.match(shard_id):
        raise ConfigError(f"{where}.id must be 1-64 characters of [A-Za-z0-9._-], got {shard_id!r}")
    address = check_address(f"{where}.address", entry.get("address"))
    draining = entry.get("draining", False)
    if not isinstance(draining, bool):
        raise ConfigError(f"{where}.draining must be true or false, got {draining!r}")
    metrics = entry.get("metrics")
    if metrics is not None:
        check_address(f"{where}.metrics", metrics)
    return ShardSpec(id=shard_id, address=address, draining=draining, metrics=metrics)


def _parse_settings(table: object) -> RouterSettings:
    if not isinstance(table, Mapping):
        raise ConfigError("[router] must be a table")
    settings: RouterSettings = build(RouterSettings, table, "[router] ", ConfigError)
    settings.validate()
    return settings
