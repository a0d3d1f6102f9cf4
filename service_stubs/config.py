"""Configuration of a stub process: one frozen dataclass, validated once. The only module that reads the environment."""

from __future__ import annotations

import os
from collections.abc import Mapping
from dataclasses import dataclass, field
from pathlib import Path

from common.auth import AuthPolicy
from common.tls import TlsFiles

SHOP_SERVICES: tuple[str, ...] = ("order", "inventory", "payment", "shipping", "loyalty")
"""The shop.v1 services a stub process can host: the saga's four downstream services in saga order, then loyalty; each
has its own SQLite file `<name>.db`."""

ALL_SERVICES: tuple[str, ...] = (*SHOP_SERVICES, "control")
"""Everything a stub process can serve; "control" is the StubControl plane (faults, ledgers, stats, stock)."""

DATA_DIR_ENV = "SAGA_DATA_DIR"


def default_data_dir(environ: Mapping[str, str] | None = None) -> Path:
    """`$SAGA_DATA_DIR/stubs`, else `./.data/stubs`, so every process of a local run shares one data root."""
    env = os.environ if environ is None else environ
    root = env.get(DATA_DIR_ENV)
    return Path(root) / "stubs" if root else Path(".data") / "stubs"


def _stock_map() -> Mapping[str, int]:
    return {}


@dataclass(frozen=True)
class StubConfig:
    """Everything a stub process needs; built by the CLI or by `service_stubs.start()` in tests."""

    listen: str = "127.0.0.1:50061"
    """host:port to listen on; port 0 picks a free one (see StubServer.port)."""
    data_dir: Path = field(default_factory=default_data_dir)
    """Directory holding one SQLite file per shop service; created if missing."""
    services: tuple[str, ...] = ALL_SERVICES
    """Which of ALL_SERVICES this process serves."""
    default_stock: int = 1_000_000
    """Stock of an item nobody has set (items starting with "sold-out-" start at 0)."""
    initial_stock: Mapping[str, int] = field(default_factory=_stock_map)
    """Starting stock per item (`--stock item=qty`); applies only to items the data dir has no level for yet."""
    slow_token_delay_s: float = 2.0
    """How long payment token "tok_slow" waits before charging."""
    max_concurrent_rpcs: int = 10_000
    """Calls in flight before the server answers RESOURCE_EXHAUSTED; also bounds the writer's queue."""
    max_batch_rows: int = 4_096
    """Rows committed in one SQLite transaction by the group-commit writer."""
    max_ledger_orders: int = 10_000
    """Orders one GetLedger call may ask for."""
    max_fault_rules: int = 100
    """Rules one fault plan may hold."""
    max_operations_in_progress: int = 100_000
    """Long-running operations in progress per service (each holds a timer and its request); past it, a call that
    would start one gets RESOURCE_EXHAUSTED."""
    stop_grace_s: float = 5.0
    """How long a graceful stop lets calls in flight finish before cancelling them."""
    metrics_listen: str | None = None
    """host:port of the Prometheus /metrics endpoint (port 0: any); None: no endpoint."""
    tls: TlsFiles = field(default_factory=TlsFiles)
    """Certificate, key and CA (--tls-*): mutual TLS, clients' certificates must chain to the CA; none: plaintext,
    on loopback only unless tls.insecure."""
    auth: AuthPolicy | None = None
    """Who may call (--auth-policy): the shards (role coordinator) the shop services, operators StubControl. None:
    auth off, which the server allows only in plaintext on loopback (common.auth.resolve_policy)."""

    def __post_init__(self) -> None:
        self._validate()

    def _validate(self) -> None:
        _check_address("listen", self.listen)
        if self.metrics_listen is not None:
            _check_address("metrics_listen", self.metrics_listen)
        if not self.services:
            raise ValueError("services must name at least one service")
        unknown = sorted(set(self.services) - set(ALL_SERVICES))
        if unknown:
            raise ValueError(f"unknown services {unknown}; known: {', '.join(ALL_SERVICES)}")
        if len(set(self.services)) != len(self.services):
            raise ValueError(f"services listed twice: {self.services}")
        if self.default_stock < 0:
            raise ValueError("default_stock must be >= 0")
        for item_id, quantity in self.initial_stock.items():
            if not item_id or quantity < 0:
                raise ValueError(f"initial stock needs an item id and a quantity >= 0, got {item_id!r}={quantity}")
        if self.slow_token_delay_s < 0:
            raise ValueError("slow_token_delay_s must be >= 0")
        for name in (
            "max_concurrent_rpcs",
            "max_batch_rows",
            "max_ledger_orders",
            "max_fault_rules",
            "max_operations_in_progress",
        ):
            if getattr(self, name) < 1:
                raise ValueError(f"{name} must be >= 1")
        if self.stop_grace_s < 0:
            raise ValueError("stop_grace_s must be >= 0")


def _check_address(name: str, value: str) -> None:
    host, sep, port = value.rpartition(":")
    if not sep or not host or not port.isdigit() or int(port) > 65535:
        raise ValueError(f"{name} must be host:port, got {value!r}")


def parse_services(text: str) -> tuple[str, ...]:
    """ "order,payment" -> ("order", "payment"), in the order given; validation happens in StubConfig."""
    return tuple(name.strip() for name in text.split(",") if name.strip())


def parse_stock(specs: list[str]) -> dict[str, int]:
    """["sku-1=5", "sku-2=0"] -> {"sku-1": 5, "sku-2": 0}; ValueError names the bad spec."""
    levels: dict[str, int] = {}
    for spec in specs:
        item_id, sep, quantity = spec.rpartition("=")
        if not sep or not item_id or not quantity.isdigit():
            raise ValueError(f"stock must be item=quantity with quantity >= 0, got {spec!r}")
        levels[item_id] = int(quantity)
    return levels
