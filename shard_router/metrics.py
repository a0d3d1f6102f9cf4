"""Where the router reports what it does. Prometheus metrics are a later issue: this is the seam they plug into, so the
forwarding code already calls it and only this module will change. The default records nothing and costs one call.
"""

from __future__ import annotations

from typing import Protocol


class Metrics(Protocol):
    def forwarded(self, method: str, shard_id: str, code: str, seconds: float) -> None:
        """One call relayed to a shard finished with status code (a name, e.g. "OK") after seconds."""

    def ring_installed(self, epoch: int, shards: int, older_epochs: int) -> None:
        """A ring (config reload or start) was installed."""

    def ring_refused(self) -> None:
        """A config change was refused; the previous ring stays."""


class NullMetrics:
    """Records nothing."""

    def forwarded(self, method: str, shard_id: str, code: str, seconds: float) -> None:
        pass

    def ring_installed(self, epoch: int, shards: int, older_epochs: int) -> None:
        pass

    def ring_refused(self) -> None:
        pass
