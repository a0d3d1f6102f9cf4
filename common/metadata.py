"""Names of gRPC metadata that two processes must spell alike: one constant each, imported by both sides."""

from __future__ import annotations

IDEMPOTENCY_KEY = "idempotency-key"
"""On every call the coordinator makes to a service (shop.v1, protos/shop/v1/common.proto): the call's key,
<saga_id>/<step>/<forward|compensate>, the same on every retry; a service applies a key once."""
