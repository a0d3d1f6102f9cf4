"""Fixtures for the stub suite: one in-process stub server per test, on a free port, data in tmp_path."""

from __future__ import annotations

from collections.abc import AsyncIterator, Awaitable
from pathlib import Path
from typing import Any

import grpc
import pytest

from service_stubs import StubServer
from tests.helpers.stubs import ShopClient, StubControlClient, running_stubs


@pytest.fixture
def data_dir(tmp_path: Path) -> Path:
    return tmp_path / "stubs"


@pytest.fixture
async def stubs(data_dir: Path) -> AsyncIterator[StubServer]:
    async with running_stubs(data_dir) as server:
        yield server


@pytest.fixture
async def shop(stubs: StubServer) -> AsyncIterator[ShopClient]:
    async with ShopClient(stubs.address) as client:
        yield client


@pytest.fixture
async def control(stubs: StubServer) -> AsyncIterator[StubControlClient]:
    async with StubControlClient(stubs.address) as client:
        yield client


async def rpc_error(call: Awaitable[Any], code: grpc.StatusCode) -> grpc.aio.AioRpcError:
    """Awaits a call that must fail with `code`; returns the error for further checks."""
    with pytest.raises(grpc.aio.AioRpcError) as info:
        await call
    assert info.value.code() == code, f"{info.value.code()}: {info.value.details()}"
    return info.value
