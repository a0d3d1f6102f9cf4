"""Where the router reports what it does: a Metrics protocol the forwarding, reload and health code call, a no-op
default (tests, and a router started without --metrics-listen), and the Prometheus implementation.

Names follow Prometheus conventions (base units, _total, _seconds); labels are bounded: method (the saga.v1
method names), shard (ids from the shards file), code (gRPC status code names). Never an order id.

    saga_router_forward_seconds{method,shard}          one call relayed to a shard, any outcome
    saga_router_forward_errors_total{method,shard,code} relayed calls that ended with a code other than OK
    saga_router_ring_epoch                             number of the ring in use
    saga_router_ring_shards                            shards that own keys in that ring
    saga_router_ring_older_epochs                      earlier rings still consulted for existing orders
    saga_router_ring_installs_total                    rings installed (start and reloads)
    saga_router_ring_refused_total                     config changes refused (the previous ring stayed)
    saga_router_fenced_total{reason}                   calls a shard refused for their ring epoch (stale, unknown,
                                                       not-owner, conflict), each followed by a ring refresh
    saga_router_shard_up{shard}                        1 if the shard answered its last health check SERVING
    saga_router_shards_up                              how many did; the router reports NOT_SERVING at 0
    saga_router_definitions_installed{shard}           the definitions history version the shard was last seen to
                                                       hold (shard_router.defs.push)
    saga_router_auth_denied_total{code,reason}         calls refused by the auth interceptor (UNAUTHENTICATED or
                                                       PERMISSION_DENIED; reason: no_credentials, bad_token, ...)
"""

from __future__ import annotations

from typing import Protocol

from prometheus_client import CollectorRegistry, Counter, Gauge, Histogram

# From 100 µs (a relay adds ~that) to 10 s (a PlaceOrder waits for the whole saga).
_FORWARD_BUCKETS = (0.0001, 0.00025, 0.0005, 0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1, 2.5, 5, 10)


class Metrics(Protocol):
    def forwarded(self, method: str, shard_id: str, code: str, seconds: float) -> None:
        """One call relayed to a shard finished with status code (a name, e.g. "OK") after seconds."""

    def ring_installed(self, epoch: int, shards: int, older_epochs: int) -> None:
        """A ring (config reload or start) was installed."""

    def ring_refused(self) -> None:
        """A config change was refused; the previous ring stays."""

    def fenced(self, reason: str) -> None:
        """A shard refused a call for the ring epoch it was routed by."""

    def shards_checked(self, up: dict[str, bool]) -> None:
        """One round of health checks: every shard the router may call, and whether it is up."""

    def auth_denied(self, code: str, reason: str) -> None:
        """A call was refused before its handler ran (common.auth.OnDenied)."""

    def definitions_installed(self, shard_id: str, history_version: int) -> None:
        """The shard holds this definitions history version (at least)."""


class NullMetrics:
    """Records nothing."""

    def forwarded(self, method: str, shard_id: str, code: str, seconds: float) -> None:
        pass

    def ring_installed(self, epoch: int, shards: int, older_epochs: int) -> None:
        pass

    def ring_refused(self) -> None:
        pass

    def fenced(self, reason: str) -> None:
        pass

    def shards_checked(self, up: dict[str, bool]) -> None:
        pass

    def auth_denied(self, code: str, reason: str) -> None:
        pass

    def definitions_installed(self, shard_id: str, history_version: int) -> None:
        pass


def method_label(method: str) -> str:
    """ "/saga.v1.SagaCoordinator/PlaceOrder" -> "PlaceOrder": the short name is unique across our two services."""
    return method.rpartition("/")[2]


class RouterMetrics:
    """The Prometheus implementation, in a registry of its own (tests run several routers in one process)."""

    def __init__(self, registry: CollectorRegistry | None = None) -> None:
        r = self.registry = registry or CollectorRegistry()
        self.forward_seconds = Histogram(
            "saga_router_forward_seconds",
            "One call relayed to a shard, any outcome",
            ["method", "shard"],
            buckets=_FORWARD_BUCKETS,
            registry=r,
        )
        self.forward_errors = Counter(
            "saga_router_forward_errors",
            "Relayed calls that ended with a status other than OK",
            ["method", "shard", "code"],
            registry=r,
        )
        self.ring_epoch = Gauge("saga_router_ring_epoch", "Number of the ring in use", registry=r)
        self.ring_shards = Gauge("saga_router_ring_shards", "Shards that own keys in the current ring", registry=r)
        self.ring_older = Gauge(
            "saga_router_ring_older_epochs", "Earlier rings still consulted for existing orders", registry=r
        )
        self.ring_installs = Counter("saga_router_ring_installs", "Rings installed (start and reloads)", registry=r)
        self.ring_refusals = Counter("saga_router_ring_refused", "Config changes refused", registry=r)
        self.shard_up = Gauge(
            "saga_router_shard_up", "1 if the shard answered its last health check SERVING", ["shard"], registry=r
        )
        self.shards_up = Gauge("saga_router_shards_up", "Shards that answered their last health check", registry=r)
        self.fenced_calls = Counter(
            "saga_router_fenced", "Calls a shard refused for their ring epoch", ["reason"], registry=r
        )
        self.auth_denials = Counter(
            "saga_router_auth_denied", "Calls refused before any handler ran", ["code", "reason"], registry=r
        )
        self.definitions = Gauge(
            "saga_router_definitions_installed",
            "The definitions history version the shard was last seen to hold",
            ["shard"],
            registry=r,
        )
        self._known: set[str] = set()
        # Children of a labelled metric are looked up by a dict under a lock; caching them keeps a relay's cost to
        # two observations.
        self._children: dict[tuple[str, str], Histogram] = {}

    def forwarded(self, method: str, shard_id: str, code: str, seconds: float) -> None:
        name = method_label(method)
        key = (name, shard_id)
        child = self._children.get(key)
        if child is None:
            child = self._children[key] = self.forward_seconds.labels(name, shard_id)
        child.observe(seconds)
        if code != "OK":
            self.forward_errors.labels(name, shard_id, code).inc()

    def ring_installed(self, epoch: int, shards: int, older_epochs: int) -> None:
        self.ring_epoch.set(epoch)
        self.ring_shards.set(shards)
        self.ring_older.set(older_epochs)
        self.ring_installs.inc()

    def ring_refused(self) -> None:
        self.ring_refusals.inc()

    def fenced(self, reason: str) -> None:
        self.fenced_calls.labels(reason).inc()

    def shards_checked(self, up: dict[str, bool]) -> None:
        for gone in self._known - set(up):
            self.shard_up.remove(gone)
        self._known = set(up)
        for shard_id, is_up in up.items():
            self.shard_up.labels(shard_id).set(1 if is_up else 0)
        self.shards_up.set(sum(up.values()))

    def auth_denied(self, code: str, reason: str) -> None:
        self.auth_denials.labels(code, reason).inc()

    def definitions_installed(self, shard_id: str, history_version: int) -> None:
        self.definitions.labels(shard_id).set(history_version)
