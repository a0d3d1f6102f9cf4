"""Loopback networking helpers for tests."""

from __future__ import annotations

import subprocess
import time
from collections.abc import Callable

import grpc

from deploy.local import free_port

__all__ = ["free_port", "wait_for_grpc", "wait_until_serving"]


def wait_for_grpc(address: str, timeout_s: float = 15.0) -> None:
    """Blocks until a gRPC server answers on address (channel ready), or raises TimeoutError."""
    deadline = time.monotonic() + timeout_s
    with grpc.insecure_channel(address) as channel:
        try:
            grpc.channel_ready_future(channel).result(timeout=max(0.1, deadline - time.monotonic()))
        except grpc.FutureTimeoutError as e:
            raise TimeoutError(f"no gRPC server on {address} after {timeout_s}s") from e


def wait_until_serving(proc: subprocess.Popen[bytes], address: str, deadline: float, log: Callable[[], str]) -> None:
    """Waits until the process answers gRPC on address (by time.monotonic() deadline). RuntimeError if it exits first,
    TimeoutError past the deadline; both carry the tail of its log. The caller decides what to kill on failure."""
    while True:
        if proc.poll() is not None:
            raise RuntimeError(f"exited with {proc.returncode}:\n{log()[-3000:]}")
        try:
            wait_for_grpc(address, timeout_s=min(1.0, max(0.1, deadline - time.monotonic())))
            return
        except TimeoutError:
            if time.monotonic() > deadline:
                raise TimeoutError(f"not ready on {address}:\n{log()[-3000:]}") from None
