"""Real systems for the client's tests: deploy.local.LocalSystem with one shard, plaintext on loopback or mutual TLS
with the router's auth policy. Orders with an "unshippable-" item fail at shipping; with the stubs' fault rule below,
the refund of orders starting "dl-" fails for good, so those sagas park as dead letters within the short
compensation budget of SHARD_CONFIG."""

from __future__ import annotations

from collections.abc import Iterator, Mapping, Sequence
from pathlib import Path

import pytest

from common.tls import TlsFiles, sync_channel
from deploy.local import LocalSystem, SystemOptions
from protos.service_stubs.v1 import control_pb2, control_pb2_grpc

SHARD_CONFIG = "[compensate]\nmax_elapsed_ms = 300\n"


DEAD_LETTER_RULE = control_pb2.FaultRule(method="RefundPayment", order_id_prefix="dl-", error_rate=1.0)


def start_system(
    tmp: Path,
    *,
    tls: bool = False,
    shard_config: str = "",
    faults: Sequence[control_pb2.FaultRule] = (),
    process_env: Mapping[str, Mapping[str, str]] | None = None,
) -> LocalSystem:
    """A running system; shard_config is appended to SHARD_CONFIG, faults to DEAD_LETTER_RULE; process_env: extra
    environment by process name (e.g. the router's OTEL_* variables)."""
    options = SystemOptions(
        tmp / "data",
        shards=1,
        tls=tls,
        dashboard=False,
        shard_config=SHARD_CONFIG + shard_config,
        process_env=process_env or {},
    )
    system = LocalSystem(options, log_dir=tmp)
    system.start()
    try:
        files = system.client_tls("operator") if tls else TlsFiles()
        with sync_channel(system.stubs.address, files) as channel:
            control_pb2_grpc.StubControlStub(channel).SetFaults(
                control_pb2.SetFaultsRequest(rules=[DEAD_LETTER_RULE, *faults], seed=1), timeout=10
            )
    except BaseException:
        system.stop()
        raise
    return system


@pytest.fixture(scope="module")
def system(tmp_path_factory: pytest.TempPathFactory) -> Iterator[LocalSystem]:
    s = start_system(tmp_path_factory.mktemp("sagaclient"))
    try:
        yield s
    finally:
        s.stop()


@pytest.fixture(scope="module")
def tls_system(tmp_path_factory: pytest.TempPathFactory) -> Iterator[LocalSystem]:
    s = start_system(tmp_path_factory.mktemp("sagaclient-tls"), tls=True)
    try:
        yield s
    finally:
        s.stop()
