"""SagaClient with mutual TLS and bearer tokens against a system running the router's auth policy: the token says who
calls (a certificate without a role only carries the connection), the role decides what they may do, and refusals are
Unauthenticated / PermissionDenied. sagaclient.credentials on its own: a channel of the caller's making from PEM bytes,
and errors that name the file (never a key's content)."""

from __future__ import annotations

from pathlib import Path

import grpc
import pytest

from deploy.local import LocalSystem
from protos.saga.v1 import saga_pb2
from sagaclient import (
    PaymentInfo,
    PermissionDenied,
    PlaintextRefused,
    SagaClient,
    SyncSagaClient,
    TlsConfigError,
    TlsFiles,
    Unauthenticated,
)
from sagaclient.credentials import ssl_credentials

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


async def test_a_channel_of_your_own_from_pem_bytes_and_files(tls_system: LocalSystem) -> None:
    assert tls_system.policies is not None
    files = tls_system.client_tls("launcher")
    assert files.ca is not None and files.cert is not None and files.key is not None
    # The CA from its file, the client's certificate and key as bytes (e.g. from a secret store).
    credentials = ssl_credentials(ca=files.ca, cert=files.cert.read_bytes(), key=files.key.read_bytes())
    channel = grpc.aio.secure_channel(tls_system.router.address, credentials)
    async with SagaClient(channel, token=tls_system.policies.token("carol", ["client"])) as client:
        reply = await client.place_order("tls-c-2", "u-1", [("sku-1", 1)], PAY)
        assert reply.status == saga_pb2.SUCCESS, reply


def test_credentials_errors_name_the_file_and_never_the_key(tmp_path: Path) -> None:
    with pytest.raises(TlsConfigError, match=r"cannot read TLS CA bundle .*missing\.pem"):
        ssl_credentials(ca=tmp_path / "missing.pem")
    junk = tmp_path / "junk.pem"
    junk.write_text("not a certificate")
    with pytest.raises(TlsConfigError, match=r"TLS CA bundle .*junk\.pem is not PEM"):
        ssl_credentials(ca=junk)
    cert = b"-----BEGIN CERTIFICATE-----\n"
    with pytest.raises(TlsConfigError, match=r"TLS key \(bytes\) is not PEM") as bad_key:
        ssl_credentials(cert=cert, key=b"secret-key-material")
    assert "secret-key-material" not in str(bad_key.value)
    with pytest.raises(TlsConfigError, match="together"):
        ssl_credentials(cert=cert)
    with pytest.raises(PlaintextRefused, match=r"10\.1\.2\.3:50051"):
        SyncSagaClient.connect("10.1.2.3:50051")


def test_a_key_that_is_not_the_certificates_is_refused_before_any_call(tls_system: LocalSystem) -> None:
    mine, other = tls_system.client_tls("launcher"), tls_system.client_tls("client")
    assert mine.cert is not None and other.key is not None and mine.ca is not None
    with pytest.raises(TlsConfigError, match="does not match certificate") as mismatch:
        ssl_credentials(ca=mine.ca, cert=mine.cert, key=other.key)
    assert str(other.key) in str(mismatch.value) and "PRIVATE KEY" not in str(mismatch.value)
    with pytest.raises(TlsConfigError, match="does not match"):
        SyncSagaClient.connect(tls_system.router.address, tls=TlsFiles(cert=mine.cert, key=other.key, ca=mine.ca))
