"""common.tls and common.grpc_server on real sockets (loopback): mutual TLS is required, a foreign CA is refused, a
certificate rotated on disk is served without a restart, the limits answer RESOURCE_EXHAUSTED, and the peer identity
an authorisation interceptor reads is the certificate's."""

from __future__ import annotations

import asyncio
import socket
import ssl
from collections.abc import AsyncIterator
from pathlib import Path
from typing import Any

import grpc
import pytest
from cryptography import x509
from grpc_health.v1 import health, health_pb2, health_pb2_grpc
from loguru import logger

from common.auth import Role, load_policy
from common.grpc_server import ServerLimits, build_server, listen
from common.tls import (
    ClientTls,
    PlaintextRefused,
    TlsConfigError,
    TlsFiles,
    aio_channel,
    check_plaintext,
    is_loopback,
    load_pem,
    peer_identity,
    peer_key,
)
from deploy.local.__main__ import certs_main
from deploy.local.certs import LocalCA, spiffe_id

STREAM = "/test.v1.Test/Stream"
WHO = "/test.v1.Test/Who"


@pytest.fixture
def ca(tmp_path: Path) -> LocalCA:
    return LocalCA(tmp_path / "ca")


class _Test:
    """A unary method answering the caller's identity and a stream that stays open until released."""

    def __init__(self) -> None:
        self.release = asyncio.Event()

    async def who(self, request: bytes, context: grpc.aio.ServicerContext[Any, Any]) -> bytes:
        return f"{peer_identity(context)}|{peer_key(context)}".encode()

    async def stream(self, request: bytes, context: grpc.aio.ServicerContext[Any, Any]) -> AsyncIterator[bytes]:
        yield b"open"
        await self.release.wait()

    def handler(self) -> grpc.GenericRpcHandler:
        return grpc.method_handlers_generic_handler(
            "test.v1.Test",
            {
                "Who": grpc.unary_unary_rpc_method_handler(self.who),
                "Stream": grpc.unary_stream_rpc_method_handler(self.stream),
            },
        )


async def _serve(tls: TlsFiles, limits: ServerLimits | None = None) -> tuple[grpc.aio.Server, int, _Test]:
    server = build_server(limits or ServerLimits(), streams=(STREAM,))
    test = _Test()
    server.add_generic_rpc_handlers((test.handler(),))
    health_servicer = health.aio.HealthServicer()
    health_pb2_grpc.add_HealthServicer_to_server(health_servicer, server)
    port = listen(server, "127.0.0.1:0", tls)
    await server.start()
    return server, port, test


async def _check(channel: grpc.aio.Channel) -> int:
    reply = await health_pb2_grpc.HealthStub(channel).Check(health_pb2.HealthCheckRequest(), timeout=5)
    return int(reply.status)


def _served_serial(port: int, client: TlsFiles) -> int:
    """One fresh TLS handshake (the stdlib's, offering ALPN h2 as gRPC does): the serial of the server's certificate."""
    ctx = ssl.create_default_context(cafile=str(client.ca))
    ctx.load_cert_chain(str(client.cert), str(client.key))
    ctx.set_alpn_protocols(["h2"])
    with (
        socket.create_connection(("127.0.0.1", port), timeout=5) as raw,
        ctx.wrap_socket(raw, server_hostname="localhost") as conn,
    ):
        der = conn.getpeercert(binary_form=True)
    assert der is not None
    return x509.load_der_x509_certificate(der).serial_number


async def test_mutual_tls_serves_a_client_of_the_ca_and_names_it(ca: LocalCA) -> None:
    server, port, _ = await _serve(ca.issue("stubs").files)
    try:
        async with aio_channel(f"127.0.0.1:{port}", ca.issue("shard-1").files) as channel:
            assert await _check(channel) == health_pb2.HealthCheckResponse.SERVING
            who = await channel.unary_unary(WHO)(b"", timeout=5)
        assert who.decode() == f"{spiffe_id('shard-1')}|{spiffe_id('shard-1')}"
    finally:
        await server.stop(0)


async def test_plaintext_client_to_a_tls_port_fails(ca: LocalCA) -> None:
    server, port, _ = await _serve(ca.issue("router").files)
    try:
        async with grpc.aio.insecure_channel(f"127.0.0.1:{port}") as channel:
            with pytest.raises(grpc.aio.AioRpcError) as e:
                await _check(channel)
        assert e.value.code() is grpc.StatusCode.UNAVAILABLE
    finally:
        await server.stop(0)


async def test_a_client_certificate_from_another_ca_is_refused(ca: LocalCA, tmp_path: Path) -> None:
    server, port, _ = await _serve(ca.issue("router").files)
    other = LocalCA(tmp_path / "other").issue("client").files
    # Trusts the server (our CA) but presents a certificate our CA never signed.
    impostor = TlsFiles(cert=other.cert, key=other.key, ca=ca.ca_path)
    try:
        async with aio_channel(f"127.0.0.1:{port}", impostor) as channel:
            with pytest.raises(grpc.aio.AioRpcError) as e:
                await _check(channel)
        assert e.value.code() is grpc.StatusCode.UNAVAILABLE
        # No client certificate at all: the server hangs up instead of sending its HTTP/2 preface.
        ctx = ssl.create_default_context(cafile=str(ca.ca_path))
        ctx.set_alpn_protocols(["h2"])

        def first_bytes() -> bytes:
            try:
                with (
                    socket.create_connection(("127.0.0.1", port), timeout=5) as raw,
                    ctx.wrap_socket(raw, server_hostname="localhost") as conn,
                ):
                    return conn.recv(9)  # TLS 1.3: the refusal arrives after the client's Finished
            except (ssl.SSLError, ConnectionError):
                return b""

        assert await asyncio.to_thread(first_bytes) == b""
    finally:
        await server.stop(0)


async def test_a_certificate_rotated_on_disk_is_served_without_a_restart(ca: LocalCA) -> None:
    first = ca.issue("router")
    client = ca.issue("operator").files
    server, port, _ = await _serve(first.files)
    try:
        assert await asyncio.to_thread(_served_serial, port, client) == first.serial
        async with aio_channel(f"127.0.0.1:{port}", client) as channel:
            assert await _check(channel) == health_pb2.HealthCheckResponse.SERVING
            # Half a rotation (the new certificate, the old key): the old pair stays in service.
            assert first.files.cert is not None and first.files.key is not None
            old_key = first.files.key.read_bytes()
            second = ca.issue("router", renew=True)
            first.files.key.write_bytes(old_key)
            assert await asyncio.to_thread(_served_serial, port, client) == first.serial
            # The key lands: the next handshake presents the new certificate.
            third = ca.issue("router", renew=True)
            assert third.serial not in (first.serial, second.serial)
            assert await asyncio.to_thread(_served_serial, port, client) == third.serial
            # The connection made before the rotation still works.
            assert await _check(channel) == health_pb2.HealthCheckResponse.SERVING
    finally:
        await server.stop(0)


async def test_client_tls_reports_a_rotation_once_after_its_check_interval(ca: LocalCA) -> None:
    now = [0.0]
    files = ca.issue("router").files
    client = ClientTls(files, check_interval_s=1.0, clock=lambda: now[0])
    before = client.credentials()
    ca.issue("router", renew=True)
    assert not client.changed()  # not yet time to look
    now[0] = 1.5
    assert client.changed()
    assert client.credentials() is not before
    now[0] = 3.0
    assert not client.changed()  # nothing new since


async def test_oversized_request_gets_resource_exhausted(ca: LocalCA) -> None:
    server, port, _ = await _serve(TlsFiles())
    try:
        async with grpc.aio.insecure_channel(f"127.0.0.1:{port}") as channel:
            with pytest.raises(grpc.aio.AioRpcError) as e:
                await channel.unary_unary(WHO)(b"x" * (ServerLimits().max_receive_message_bytes + 1), timeout=5)
            assert e.value.code() is grpc.StatusCode.RESOURCE_EXHAUSTED
            big = (("x-big", "y" * (ServerLimits().max_metadata_bytes + 1)),)
            with pytest.raises(grpc.aio.AioRpcError) as e:
                await channel.unary_unary(WHO)(b"", timeout=5, metadata=big)
            assert e.value.code() in (grpc.StatusCode.RESOURCE_EXHAUSTED, grpc.StatusCode.INTERNAL)
            assert await channel.unary_unary(WHO)(b"", timeout=5)  # the connection survives both
    finally:
        await server.stop(0)


async def test_streams_per_peer_are_bounded(ca: LocalCA) -> None:
    server, port, test = await _serve(ca.issue("stubs").files, ServerLimits(max_streams_per_peer=3))
    try:
        async with aio_channel(f"127.0.0.1:{port}", ca.issue("client").files) as channel:
            streams = [channel.unary_stream(STREAM)(b"", timeout=10) for _ in range(3)]
            for s in streams:
                assert await s.read() == b"open"
            extra = channel.unary_stream(STREAM)(b"", timeout=10)
            with pytest.raises(grpc.aio.AioRpcError) as e:
                await extra.read()
            assert e.value.code() is grpc.StatusCode.RESOURCE_EXHAUSTED
            # Another identity has its own allowance; a finished stream frees its slot.
            async with aio_channel(f"127.0.0.1:{port}", ca.issue("operator").files) as other:
                s = other.unary_stream(STREAM)(b"", timeout=10)
                assert await s.read() == b"open"
                s.cancel()
            streams[0].cancel()
            await asyncio.sleep(0.2)
            again = channel.unary_stream(STREAM)(b"", timeout=10)
            assert await again.read() == b"open"
            test.release.set()
    finally:
        await server.stop(0)


async def test_plaintext_off_loopback_is_refused_before_binding() -> None:
    server = build_server(ServerLimits())
    with pytest.raises(PlaintextRefused, match=r"0\.0\.0\.0:0.*--insecure"):
        listen(server, "0.0.0.0:0", TlsFiles())
    with pytest.raises(PlaintextRefused):
        aio_channel("10.1.2.3:50051", TlsFiles())
    check_plaintext("10.1.2.3:50051", TlsFiles(insecure=True), "to")  # allowed, with the flag
    assert [is_loopback(h) for h in ("127.0.0.1", "127.3.4.5", "[::1]", "localhost")] == [True] * 4
    assert [is_loopback(h) for h in ("0.0.0.0", "", "[::]", "10.0.0.1", "example.com")] == [False] * 5


async def test_insecure_warns_on_every_start() -> None:
    lines: list[str] = []
    sink = logger.add(lambda m: lines.append(str(m)), level="WARNING")
    try:
        for _ in range(2):
            server = build_server(ServerLimits())
            listen(server, "127.0.0.1:0", TlsFiles(insecure=True))
            await server.stop(0)
    finally:
        logger.remove(sink)
    assert sum("--insecure" in line for line in lines) == 2


def test_tls_files_are_all_or_nothing_and_checked(ca: LocalCA, tmp_path: Path) -> None:
    files = ca.issue("router").files
    with pytest.raises(TlsConfigError, match="--tls-key, --tls-ca"):
        TlsFiles(cert=files.cert)
    with pytest.raises(TlsConfigError, match="contradict"):
        TlsFiles(cert=files.cert, key=files.key, ca=files.ca, insecure=True)
    other = ca.issue("stubs").files
    with pytest.raises(TlsConfigError, match="does not match"):
        load_pem(TlsFiles(cert=files.cert, key=other.key, ca=files.ca))
    with pytest.raises(TlsConfigError, match="cannot read"):
        load_pem(TlsFiles(cert=tmp_path / "missing.pem", key=files.key, ca=files.ca))


def test_certs_command_creates_ca_and_named_certificates(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    assert certs_main(["--dir", str(tmp_path / "tls"), "router", "operator"]) == 0
    cert = x509.load_pem_x509_certificate((tmp_path / "tls" / "router.pem").read_bytes())
    san = cert.extensions.get_extension_for_class(x509.SubjectAlternativeName).value
    assert san.get_values_for_type(x509.UniformResourceIdentifier) == ["spiffe://saga/router"]
    assert san.get_values_for_type(x509.DNSName) == ["localhost"]
    assert (tmp_path / "tls" / "operator-key.pem").stat().st_mode & 0o077 == 0
    assert "ca.pem" in capsys.readouterr().out


def test_certs_command_issues_every_process_of_the_cluster_file_by_default(tmp_path: Path) -> None:
    from deploy.local import DEFAULT_CONFIG, load

    assert certs_main(["--dir", str(tmp_path / "tls")]) == 0
    cluster = load(DEFAULT_CONFIG, env={"SAGA_DATA_DIR": str(tmp_path)})
    grpc_processes = [p.name for p in cluster.processes if p.ready == "grpc"]
    assert "router-2" in grpc_processes
    issued = {path.name.removesuffix(".pem") for path in (tmp_path / "tls").glob("*.pem")} - {"ca"}
    issued = {name for name in issued if not name.endswith("-key")}
    assert issued == {*grpc_processes, "operator", "client", "launcher"}


async def test_long_lived_channels_are_reopened_when_the_client_certificate_rotates(ca: LocalCA) -> None:
    """grpcio cannot re-key a channel: the router's pool and the shard's caller open new ones (and close the old)."""
    from coordinator.config import Services
    from coordinator.engine.caller import GrpcCaller
    from shard_router.channels import ChannelPool

    now = [0.0]
    files = ca.issue("router").files
    pool = ChannelPool(1 << 20, 0.0, ClientTls(files, check_interval_s=1.0, clock=lambda: now[0]))
    first = pool.get("127.0.0.1:1")
    assert pool.get("127.0.0.1:1") is first
    ca.issue("router", renew=True)
    now[0] = 2.0
    second = pool.get("127.0.0.1:1")
    assert second is not first and pool.get("127.0.0.1:1") is second
    await pool.close()

    shard_files = ca.issue("shard-1").files
    caller = GrpcCaller(
        Services.all_at("127.0.0.1:1"),
        ClientTls(shard_files, check_interval_s=1.0, clock=lambda: now[0]),
    )
    caller._channel("order")  # channels open at their first call
    before = dict(caller._channels)
    ca.issue("shard-1", renew=True)
    now[0] = 4.0
    caller._reopen_if_rotated()
    caller._channel("order")  # the next call opens a new channel with the new certificate
    assert caller._channels and all(caller._channels[a] is not before[a] for a in before)
    await caller.close()


def test_make_run_with_tls_gives_every_process_its_own_certificate(tmp_path: Path) -> None:
    from deploy.local import DEFAULT_CONFIG, load
    from deploy.local.authpolicy import with_tls

    cluster = with_tls(load(DEFAULT_CONFIG, env={"SAGA_DATA_DIR": str(tmp_path)}), LocalCA(tmp_path / "tls"))
    for p in cluster.processes:
        args = list(p.args)
        if p.ready != "grpc":  # the Litestreams serve no gRPC and take none of these flags
            assert "--tls-cert" not in args and p.name.startswith("replica-")
            continue
        assert args[args.index("--tls-cert") + 1] == str(tmp_path / "tls" / f"{p.name}.pem")
        assert args[args.index("--tls-ca") + 1] == str(tmp_path / "tls" / "ca.pem")
    assert cluster.tls is not None and cluster.tls.cert == tmp_path / "tls" / "launcher.pem"
    # Each router has a certificate of its own: the shards' policy names every router cluster.toml lists, and the
    # shards themselves as coordinators (a fresh or restored shard reads its peers' ring history).
    shard_policy = load_policy(tmp_path / "tls" / "auth-shard.toml")
    routers = {f"spiffe://saga/{p.name}": {Role.ROUTER} for p in cluster.processes if p.module == "shard_router"}
    assert len(routers) == 2
    assert dict(shard_policy.identities) == {**routers, "spiffe://saga/shard-*": {Role.COORDINATOR}}


def test_make_run_tls_prints_commands_with_the_certificate_flags(tmp_path: Path) -> None:
    """`make run-tls` ends its start-up with a grpcurl (the client's certificate) and a sagactl line (the operator's)
    that reach the first router; plain `make run`, with -plaintext and no certificate."""
    from deploy.local import DEFAULT_CONFIG, load
    from deploy.local.authpolicy import client_commands, with_tls

    plain = load(DEFAULT_CONFIG, env={"SAGA_DATA_DIR": str(tmp_path)})
    grpcurl, sagactl = client_commands(plain)
    assert "-plaintext" in grpcurl and "127.0.0.1:50051" in grpcurl and "-cert" not in grpcurl
    assert "--tls-cert" not in sagactl
    tls = tmp_path / "tls"
    grpcurl, sagactl = client_commands(with_tls(plain, LocalCA(tls)))
    assert f"-cacert {tls / 'ca.pem'} -cert {tls / 'client.pem'} -key {tls / 'client-key.pem'}" in grpcurl
    assert "-plaintext" not in grpcurl and grpcurl.endswith("127.0.0.1:50051 saga.v1.SagaCoordinator/PlaceOrder")
    operator = f"--tls-cert {tls / 'operator.pem'} --tls-key {tls / 'operator-key.pem'} --tls-ca {tls / 'ca.pem'}"
    assert operator in sagactl
    for path in (tls / "client.pem", tls / "operator-key.pem"):
        assert path.exists(), f"{path}: printed but not issued"


async def test_health_watch_and_reflection_streams_are_bounded_per_peer(ca: LocalCA) -> None:
    """Health and reflection need no role, so any holder of a CA certificate could hold their streams open and starve
    the server's RPC bound: they count against the per-peer stream limit like WatchSaga."""
    from grpc_reflection.v1alpha import reflection, reflection_pb2, reflection_pb2_grpc

    server = build_server(ServerLimits(max_streams_per_peer=2))
    health_pb2_grpc.add_HealthServicer_to_server(health.aio.HealthServicer(), server)
    reflection.enable_server_reflection((reflection.SERVICE_NAME,), server)
    port = listen(server, "127.0.0.1:0", ca.issue("stubs").files)
    await server.start()
    try:
        async with aio_channel(f"127.0.0.1:{port}", ca.issue("launcher").files) as channel:
            watch = health_pb2_grpc.HealthStub(channel).Watch
            streams = [watch(health_pb2.HealthCheckRequest(), timeout=10) for _ in range(2)]
            for s in streams:
                await s.read()
            with pytest.raises(grpc.aio.AioRpcError) as e:
                await watch(health_pb2.HealthCheckRequest(), timeout=10).read()
            assert e.value.code() is grpc.StatusCode.RESOURCE_EXHAUSTED
            info = reflection_pb2_grpc.ServerReflectionStub(channel).ServerReflectionInfo(timeout=10)
            await info.write(reflection_pb2.ServerReflectionRequest(list_services=""))
            with pytest.raises(grpc.aio.AioRpcError) as e:
                await info.read()
            assert e.value.code() is grpc.StatusCode.RESOURCE_EXHAUSTED
            for s in streams:
                s.cancel()
            await asyncio.sleep(0.2)
            info = reflection_pb2_grpc.ServerReflectionStub(channel).ServerReflectionInfo(timeout=10)
            await info.write(reflection_pb2.ServerReflectionRequest(list_services=""))
            assert (await info.read()).list_services_response.service  # a slot freed: reflection answers again
            await info.done_writing()
    finally:
        await server.stop(0)
