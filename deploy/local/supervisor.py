"""Running the local system's processes as children: start in order, each ready before the next (consecutive
processes of the same kind, the shards or their Litestreams, start together), stop in reverse order (SIGTERM, then
SIGKILL after a timeout). Ready: answering the gRPC health check, or for a program that serves no gRPC (Litestream), its
/metrics. Log lines go to the terminal prefixed with the process name, or to one file per process (log_dir).

`run()` is `make run`: a child that exits on its own is a failure; the launcher says so, stops the others and exits 1,
rather than restart it behind the operator's back (a crash loop would scroll away unnoticed). Run it again to restart;
journals resume. A program that embeds the launcher (tests, benchmarks) calls start() and stop() instead, and may
kill(), restart() or add() single processes in between: a restarted process keeps its spec, so its port and journal.

Children get their own session, so a Ctrl-C in the terminal reaches only the launcher, which then stops them front to
back: router first (no new calls), shards next (sagas in flight finish or stay journaled), then the Litestreams (the
shards' last writes reach the replicas), stubs last.
"""

from __future__ import annotations

import http.client
import os
import signal
import subprocess
import sys
import threading
import time
from collections.abc import Callable, Iterator, Mapping
from contextlib import contextmanager
from pathlib import Path
from typing import IO, TextIO

import grpc
from grpc_health.v1 import health_pb2, health_pb2_grpc

from common.tls import sync_channel

from .authpolicy import client_commands
from .cluster import ClusterSpec, ProcessSpec, Ready

_LINE_LIMIT = 1 << 20  # a child's log line longer than this is split, not fatal
# Stop requests arrive from signal handlers, which must not take locks (threading.Event.set does): waits poll flags.
_POLL_S = 0.1
_TAIL_CHARS = 3000


class LaunchError(RuntimeError):
    """A process did not come up: it exited first, was not ready within ready_timeout_s, or a stop was requested.
    `reason` is the launcher's one line; str() adds the tail of the process's log file, if it has one."""

    def __init__(self, child: Child, reason: str) -> None:
        self.child = child
        self.reason = reason
        tail = child.log()[-_TAIL_CHARS:]
        super().__init__(f"{reason}; log {child.log_path}:\n{tail}" if tail else reason)


def _started(child: Child) -> str:
    """The launcher's line for a process that is ready."""
    spec = child.spec
    if spec.ready is Ready.METRICS:  # its address is its metrics address: no gRPC to name
        return f"{spec.name} (pid {child.pid}) serving metrics http://{spec.metrics}/metrics"
    line = f"{spec.name} (pid {child.pid}) listening on {spec.listen}"
    if spec.metrics:
        line += f", metrics http://{spec.metrics}/metrics"
    if spec.dashboard:
        line += f", dashboard http://{spec.dashboard}/"
    return line


class Child:
    """One process of the cluster; after it exits (or is killed) it can be started again on the same spec."""

    def __init__(self, spec: ProcessSpec, supervisor: Supervisor) -> None:
        self.spec = spec
        self._sup = supervisor
        self.log_path: Path | None = None if supervisor.log_dir is None else supervisor.log_dir / f"{spec.name}.log"
        self.proc: subprocess.Popen[bytes] | None = None
        self._relay: threading.Thread | None = None
        self._reported = False

    @property
    def name(self) -> str:
        return self.spec.name

    @property
    def address(self) -> str:
        """Its gRPC address (host:port); for a process ready by its /metrics, that address."""
        return self.spec.listen

    @property
    def pid(self) -> int | None:
        return None if self.proc is None else self.proc.pid

    @property
    def running(self) -> bool:
        return self.proc is not None and self.proc.poll() is None

    def exit_code(self) -> int | None:
        """None while running (or never started); negative: killed by that signal."""
        return None if self.proc is None else self.proc.poll()

    def log(self) -> str:
        """Its log file so far ("" when its output goes to the terminal)."""
        if self.log_path is None:
            return ""
        try:
            return self.log_path.read_text(errors="replace")
        except FileNotFoundError:
            return ""

    def spawn(self, env: Mapping[str, str] | None = None) -> None:
        """Starts the process (not waiting for it to be ready); `env` is added for this start only."""
        assert not self.running, f"{self.name} is already running"
        sup = self._sup
        full_env = {
            **os.environ,
            "SAGA_DATA_DIR": str(sup.cluster.data_dir),
            "PYTHONUNBUFFERED": "1",
            **self.spec.env,
            **(env or {}),
        }
        command = self.spec.argv(sys.executable)
        # A file is appended to across restarts: nobody has to drain it, and every run's story stays in one place.
        log = None if self.log_path is None else self.log_path.open("ab")
        try:
            self.proc = subprocess.Popen(
                command,
                stdin=subprocess.DEVNULL,
                stdout=subprocess.PIPE if log is None else log,
                stderr=subprocess.STDOUT,
                env=full_env,
                cwd=sup.cwd,
                start_new_session=True,
            )
        finally:
            if log is not None:
                log.close()
        if self.proc.stdout is not None:
            self._relay = threading.Thread(
                target=self._relay_lines, args=(self.proc.stdout,), name=f"relay-{self.name}", daemon=True
            )
            self._relay.start()
        self._reported = False

    def _relay_lines(self, stream: IO[bytes]) -> None:
        while line := stream.readline(_LINE_LIMIT):
            self._sup.write(self.name, line.decode(errors="replace").rstrip("\n"))
        stream.close()

    def wait_ready(self) -> None:
        """Blocks until it is ready (spec.ready: it answers the gRPC health check with SERVING, or GET /metrics with
        200); LaunchError if it exits, times out (then it is killed) or the launcher is asked to stop first."""
        sup = self._sup
        deadline = time.monotonic() + sup.cluster.ready_timeout_s
        with self._probe() as (ready, what):
            while not sup.stop_requested:
                code = self.exit_code()
                if code is not None:
                    raise LaunchError(self, f"{self.name} exited with code {code} before it was ready")
                if time.monotonic() > deadline:
                    self.kill()
                    raise LaunchError(self, f"{self.name} did not answer {what} in time")
                if ready():
                    return
                time.sleep(_POLL_S)
        raise LaunchError(self, f"{self.name} not started: stop requested")

    @contextmanager
    def _probe(self) -> Iterator[tuple[Callable[[], bool], str]]:
        """One readiness check of the kind its spec asks for (true once ready), and what it checks, for messages."""
        if self.spec.ready is Ready.METRICS:
            assert self.spec.metrics is not None, "cluster.py requires metrics with ready = metrics"
            yield _metrics_answer(self.spec.metrics), f"GET http://{self.spec.metrics}/metrics"
            return
        tls = self._sup.cluster.tls
        with sync_channel(self.address, tls) if tls is not None else grpc.insecure_channel(self.address) as channel:
            stub = health_pb2_grpc.HealthStub(channel)

            def serving() -> bool:
                try:
                    reply = stub.Check(health_pb2.HealthCheckRequest(), timeout=1.0)
                except grpc.RpcError:
                    return False
                return bool(reply.status == health_pb2.HealthCheckResponse.SERVING)

            yield serving, f"health checks on {self.address}"

    def signal(self, sig: signal.Signals) -> None:
        if self.proc is not None and self.proc.poll() is None:
            self.proc.send_signal(sig)

    def kill(self) -> None:
        """SIGKILL (a crash, nothing graceful) and reap it."""
        if self.proc is not None:
            self.signal(signal.SIGKILL)
            self.proc.wait()

    def finish(self) -> int | None:
        """After it exited: the rest of its relayed output, then its exit code (once per start; later calls None)."""
        if self.proc is None or self._reported:
            return None
        code = self.proc.wait()
        if self._relay is not None:
            self._relay.join(timeout=5.0)
        self._reported = True
        return code

    def rss_kib(self) -> int:
        """Resident memory (Linux /proc); 0 if it is not running."""
        if not self.running:
            return 0
        try:
            for line in Path(f"/proc/{self.pid}/status").read_text().splitlines():
                if line.startswith("VmRSS:"):
                    return int(line.split()[1])
        except OSError:
            pass
        return 0


class Supervisor:
    """Runs one ClusterSpec. `log_dir`: each child's output to <log_dir>/<name>.log and the launcher's own lines to
    <log_dir>/launcher.log, instead of prefixed lines on `out`. `cwd`: the children's working directory."""

    def __init__(
        self, cluster: ClusterSpec, out: TextIO | None = None, log_dir: Path | None = None, cwd: Path | None = None
    ) -> None:
        self.cluster = cluster
        self.log_dir = log_dir
        self.cwd = cwd
        self._out = out
        self._write_lock = threading.Lock()
        self._children_lock = threading.Lock()
        self._children = [Child(spec, self) for spec in cluster.processes]
        self._width = max(len("launcher"), *(len(p.name) for p in cluster.processes))
        self._stop = False
        self._force = False

    @property
    def children(self) -> tuple[Child, ...]:
        """In start order."""
        return tuple(self._children)

    def __getitem__(self, name: str) -> Child:
        for child in self._children:
            if child.name == name:
                return child
        raise KeyError(name)

    @property
    def stop_requested(self) -> bool:
        return self._stop

    def request_stop(self) -> None:
        """First call: stop gracefully. Second call (a second Ctrl-C): SIGKILL whatever is left. Signal-safe."""
        self._force = self._stop
        self._stop = True

    def run(self) -> int:
        """`make run`: starts everything, supervises until asked to stop or a child dies; 0 after a requested stop,
        else 1. Everything is stopped on the way out."""
        try:
            try:
                self.start()
            except LaunchError:
                return 0 if self._stop else 1
            self.say(f"all {len(self._children)} processes up, data in {self.cluster.data_dir}; Ctrl-C stops them")
            for spec in self.cluster.processes:
                if spec.dashboard:
                    self.say(f"dashboard: http://{spec.dashboard}/")
            metrics = [f"{p.name} http://{p.metrics}/metrics" for p in self.cluster.processes if p.metrics]
            if metrics:
                self.say("metrics: " + ", ".join(metrics))
            for line in client_commands(self.cluster):
                self.say(f"try: {line}")
            while not self._stop:
                exited = [c for c in self._children if c.exit_code() is not None]
                for c in exited:
                    self.say(f"{c.name} exited on its own with code {c.exit_code()}; stopping the others")
                if exited:
                    return 1
                time.sleep(_POLL_S)
            return 0
        finally:
            self.stop()

    def start(self) -> None:
        """Starts every process and waits until each is ready. On failure it says why, stops what it started and
        raises LaunchError."""
        self.cluster.data_dir.mkdir(parents=True, exist_ok=True)
        if self.log_dir is not None:
            self.log_dir.mkdir(parents=True, exist_ok=True)
        try:
            for group in _groups(self._children):
                for child in group:
                    child.spawn()
                for child in group:
                    child.wait_ready()
                    self.say(_started(child))
        except LaunchError as e:
            if not self._stop:
                self.say(e.reason)
            self.stop()
            raise
        except BaseException:
            self.stop()
            raise

    def kill(self, name: str) -> None:
        """SIGKILL one process, as in a crash."""
        self[name].kill()

    def restart(self, name: str, env: Mapping[str, str] | None = None) -> Child:
        """Starts one process again on its own spec (same port, same journal), SIGKILLing it first if it still runs;
        `env` is added for this start only. Blocks until it is ready; LaunchError if it does not get there."""
        child = self[name]
        child.kill()
        child.finish()
        child.spawn(env)
        child.wait_ready()
        self.say(f"{_started(child)} (restarted)")
        return child

    def add(self, spec: ProcessSpec, env: Mapping[str, str] | None = None) -> Child:
        """One more process, started (ready when this returns) and stopped with the processes of its kind."""
        with self._children_lock:
            if any(c.name == spec.name for c in self._children):
                raise ValueError(f"a process named {spec.name!r} already exists")
            child = Child(spec, self)
            same = [i for i, c in enumerate(self._children) if c.spec.kind == spec.kind]
            self._children.insert(same[-1] + 1 if same else len(self._children), child)
        child.spawn(env)
        child.wait_ready()
        self.say(f"{_started(child)} (added)")
        return child

    def stop(self) -> None:
        """Front to back, each kind's processes together: SIGTERM, SIGKILL after stop_timeout_s (or at once after a
        second request_stop). Says each exit code once; calling it again stops only what was started since."""
        for group in reversed(_groups(self._children)):
            for child in group:
                child.signal(signal.SIGTERM)
            deadline = time.monotonic() + self.cluster.stop_timeout_s
            for child in group:
                while child.running and time.monotonic() < deadline and not self._force:
                    time.sleep(_POLL_S)
                if child.running:
                    self.say(f"{child.name} still running after SIGTERM; sending SIGKILL")
                    child.kill()
                code = child.finish()
                if code is not None:
                    self.say(f"{child.name} stopped (exit code {code})")

    def say(self, message: str) -> None:
        self.write("launcher", message)

    def write(self, name: str, line: str) -> None:
        with self._write_lock:
            if self._out is None and self.log_dir is not None:
                with (self.log_dir / "launcher.log").open("a") as f:
                    f.write(f"{line}\n")
                return
            out = self._out if self._out is not None else sys.stdout
            out.write(f"{name:<{self._width}} | {line}\n")
            out.flush()


def _metrics_answer(address: str) -> Callable[[], bool]:
    """A check that GET http://<address>/metrics answers 200."""
    host, _, port = address.rpartition(":")

    def answered() -> bool:
        # http.client rather than urllib: no proxy from the environment between the launcher and a loopback port.
        connection = http.client.HTTPConnection(host, int(port), timeout=1.0)
        try:
            connection.request("GET", "/metrics")
            return connection.getresponse().status == 200
        except (OSError, http.client.HTTPException):
            return False
        finally:
            connection.close()

    return answered


def _groups(children: tuple[Child, ...] | list[Child]) -> list[list[Child]]:
    """Runs of consecutive children of the same kind (the shards, their Litestreams), in order."""
    groups: list[list[Child]] = []
    for child in children:
        if groups and groups[-1][0].spec.kind == child.spec.kind:
            groups[-1].append(child)
        else:
            groups.append([child])
    return groups
