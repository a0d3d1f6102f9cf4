"""Loopback networking helpers for tests."""

from __future__ import annotations

import time

import grpc

from deploy.local import free_port

__all__ = ["free_port", "wait_for_grpc"]


def wait_for_grpc(address: str, timeout_s: float = 15.0) -> None:
    """Blocks until a gRPC server answers on address (channel ready), or raises TimeoutError."""
    deadline = time.monotonic() + timeout_s
    with grpc.insecure_channel(address) as channel:
        try:
            grpc.channel_ready_future(channel).result(timeout=max(0.1, deadline - time.monotonic()))
        except grpc.FutureTimeoutError as e:
            raise TimeoutError(f"no gRPC server on {address} after {timeout_s}s") from e
