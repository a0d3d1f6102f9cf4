"""SagaClient with mutual TLS and bearer tokens against a system running the router's auth policy: the token says who
calls (a certificate without a role only carries the connection), the role decides what they may do, and refusals are
Unauthenticated / PermissionDenied."""

from __future__ import annotations

from pathlib import Path

import pytest

from deploy.local import LocalSystem
from protos.saga.v1 import saga_pb2
from sagaclient import PaymentInfo, PermissionDenied, SagaClient, Unauthenticated

PAY = PaymentInfo(payment_token="tok_ok", amount_cents=1200, currency="EUR")


async def test_tls_with_a_token_places_orders_and_the_token_decides_the_role(
    tls_system: LocalSystem, tmp_path: Path
) -> None:
    assert tls_system.policies is not None
    roleless = tls_system.client_tls("launcher")  # a certificate of the CA that no policy names
    operator_token = tls_system.policies.token("alice", ["operator"])
    token_file = tmp_path / "client.token"
    token_file.write_text(tls_system.policies.token("bob", ["client"]) + "\n")

    async with await SagaClient.connect(tls_system.router.address, tls=roleless, token_file=token_file) as client:
        reply = await client.place_order("tls-c-1", "u-1", [("sku-1", 1)], PAY)
        assert reply.status == saga_pb2.SUCCESS, reply
        assert (await client.get_saga("tls-c-1")).state == saga_pb2.SAGA_STATE_SUCCEEDED
        parked = await client.place_order("dl-tls-1", "u-1", [("unshippable-3", 1)], PAY)
        assert parked.state == saga_pb2.SAGA_STATE_DEAD_LETTERED, parked
        with pytest.raises(PermissionDenied):
            await client.resolve_dead_letter("dl-tls-1", "a client may not")
        # A dry run is the operator's call all the same: a client may not even look at what it would do.
        with pytest.raises(PermissionDenied):
            await client.retry_dead_letter("dl-tls-1", "", dry_run=True)
        with pytest.raises(PermissionDenied):
            await client.retry_all_dead_letters("", dry_run=True)
        with pytest.raises(PermissionDenied):
            await client.resolve_dead_letter("dl-tls-1", "just looking", dry_run=True)

    async with await SagaClient.connect(tls_system.router.address, tls=roleless, token=operator_token) as operator:
        letters = [d.order_id async for p in operator.list_dead_letters() for d in p.dead_letters]
        assert "dl-tls-1" in letters
        preview = await operator.retry_dead_letter("dl-tls-1", "", dry_run=True)
        assert preview == ["dl-tls-1"] and preview.previews[0].calls
        assert (await operator.resolve_dead_letter("dl-tls-1", "fixed by hand")).state == saga_pb2.SAGA_STATE_RESOLVED

    async with await SagaClient.connect(tls_system.router.address, tls=roleless) as anonymous:
        with pytest.raises(Unauthenticated):
            await anonymous.get_saga("tls-c-1")

    # A certificate with a role needs no token.
    async with await SagaClient.connect(tls_system.router.address, tls=tls_system.client_tls("client")) as client:
        assert (await client.get_saga("tls-c-1")).order_id == "tls-c-1"
