"""Running the local system's processes as children: start in order, each healthy before the next, log lines
prefixed with the process name, stop in reverse order (SIGTERM, then SIGKILL after a timeout).

A child that exits on its own is a failure: the launcher says so, stops the others and exits 1, rather than restart it
behind the operator's back (a crash loop would scroll away unnoticed). Run it again to restart; journals resume.

Children get their own session, so a Ctrl-C in the terminal reaches only the launcher, which then stops them front to
back: router first (no new calls), shards next (sagas in flight finish or stay journaled), stubs last.
"""

from __future__ import annotations

import asyncio
import os
import signal
import sys
import time
from dataclasses import dataclass, field
from typing import TextIO

import grpc
from grpc_health.v1 import health_pb2, health_pb2_grpc

from .cluster import ClusterSpec, ProcessSpec

_LINE_LIMIT = 1 << 20  # a child's log line longer than this is split, not fatal


def _urls(spec: ProcessSpec) -> str:
    urls = ""
    if spec.metrics:
        urls += f", metrics http://{spec.metrics}/metrics"
    if spec.dashboard:
        urls += f", dashboard http://{spec.dashboard}/"
    return urls


@dataclass
class Child:
    spec: ProcessSpec
    proc: asyncio.subprocess.Process
    relay: asyncio.Task[None]
    exited: asyncio.Task[int]
    stopping: bool = field(default=False)


class Supervisor:
    def __init__(self, cluster: ClusterSpec, out: TextIO = sys.stdout) -> None:
        self._cluster = cluster
        self._out = out
        self._children: list[Child] = []
        self._width = max(len("launcher"), *(len(p.name) for p in cluster.processes))
        self._stop = asyncio.Event()
        self._force = asyncio.Event()

    def request_stop(self) -> None:
        """First call: stop gracefully. Second call (a second Ctrl-C): SIGKILL whatever is left."""
        if self._stop.is_set():
            self._force.set()
        self._stop.set()

    async def run(self) -> int:
        """Starts everything, supervises until asked to stop or a child dies; 0 after a requested stop, else 1."""
        self._cluster.data_dir.mkdir(parents=True, exist_ok=True)
        try:
            for spec in self._cluster.processes:
                child = await self._spawn(spec)
                if not await self._ready(child):
                    return 0 if self._stop.is_set() else 1
                self._say(f"{spec.name} (pid {child.proc.pid}) listening on {spec.listen}{_urls(spec)}")
            self._say(f"all {len(self._children)} processes up, data in {self._cluster.data_dir}; Ctrl-C stops them")
            for spec in self._cluster.processes:
                if spec.dashboard:
                    self._say(f"dashboard: http://{spec.dashboard}/")
            metrics = [f"{p.name} http://{p.metrics}/metrics" for p in self._cluster.processes if p.metrics]
            if metrics:
                self._say("metrics: " + ", ".join(metrics))
            stop = asyncio.ensure_future(self._stop.wait())
            await asyncio.wait([stop, *(c.exited for c in self._children)], return_when=asyncio.FIRST_COMPLETED)
            stop.cancel()
            if self._stop.is_set():
                return 0
            for c in self._children:
                if c.exited.done():
                    self._say(f"{c.spec.name} exited on its own with code {c.exited.result()}; stopping the others")
            return 1
        finally:
            await self._stop_all()

    async def _spawn(self, spec: ProcessSpec) -> Child:
        env = {**os.environ, "SAGA_DATA_DIR": str(self._cluster.data_dir), "PYTHONUNBUFFERED": "1", **spec.env}
        proc = await asyncio.create_subprocess_exec(
            sys.executable,
            "-m",
            spec.module,
            *spec.args,
            stdin=asyncio.subprocess.DEVNULL,
            stdout=asyncio.subprocess.PIPE,
            stderr=asyncio.subprocess.STDOUT,
            env=env,
            start_new_session=True,
            limit=_LINE_LIMIT,
        )
        assert proc.stdout is not None
        relay = asyncio.create_task(self._relay(spec.name, proc.stdout))
        child = Child(spec, proc, relay, asyncio.create_task(proc.wait()))
        self._children.append(child)
        return child

    async def _relay(self, name: str, stream: asyncio.StreamReader) -> None:
        prefix = f"{name:<{self._width}} | "
        while True:
            try:
                line = await stream.readline()
            except ValueError:  # longer than the limit: pass on what is buffered
                line = await stream.read(_LINE_LIMIT)
            if not line:
                return
            self._out.write(prefix + line.decode(errors="replace").rstrip("\n") + "\n")
            self._out.flush()

    async def _ready(self, child: Child) -> bool:
        """Waits until the child answers the health check with SERVING; False if it died, timed out or we must stop."""
        deadline = time.monotonic() + self._cluster.ready_timeout_s
        async with grpc.aio.insecure_channel(child.spec.listen) as channel:
            stub = health_pb2_grpc.HealthStub(channel)
            while not self._stop.is_set():
                if child.exited.done():
                    self._say(f"{child.spec.name} exited with code {child.exited.result()} before it was ready")
                    return False
                if time.monotonic() > deadline:
                    self._say(f"{child.spec.name} did not answer health checks on {child.spec.listen} in time")
                    return False
                try:
                    reply = await stub.Check(health_pb2.HealthCheckRequest(), timeout=1.0)
                    if reply.status == health_pb2.HealthCheckResponse.SERVING:
                        return True
                except grpc.aio.AioRpcError:
                    pass
                await asyncio.sleep(0.1)
        return False

    async def _stop_all(self) -> None:
        # Front to back; consecutive processes of the same module (the shards) stop together.
        groups: list[list[Child]] = []
        for child in reversed(self._children):
            if groups and groups[-1][0].spec.module == child.spec.module:
                groups[-1].append(child)
            else:
                groups.append([child])
        for group in groups:
            await asyncio.gather(*(self._stop_one(c) for c in group))
        self._children.clear()

    async def _stop_one(self, child: Child) -> None:
        if not child.exited.done():
            child.proc.send_signal(signal.SIGTERM)
            force = asyncio.ensure_future(self._force.wait())
            done, _ = await asyncio.wait(
                [child.exited, force], timeout=self._cluster.stop_timeout_s, return_when=asyncio.FIRST_COMPLETED
            )
            force.cancel()
            if child.exited not in done:
                self._say(f"{child.spec.name} still running after SIGTERM; sending SIGKILL")
                child.proc.kill()
        code = await child.exited
        await child.relay  # the rest of its output
        self._say(f"{child.spec.name} stopped (exit code {code})")

    def _say(self, message: str) -> None:
        self._out.write(f"{'launcher':<{self._width}} | {message}\n")
        self._out.flush()
