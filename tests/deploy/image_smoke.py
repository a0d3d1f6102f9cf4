"""The container image, run: `make image-check` builds it (deploy/image.sh) and runs this file (not part of `make test`,
whose files are test_*.py: it needs the image, which takes minutes to build cold).

From one working container of the image, with buildah's chroot isolation (no daemon; the processes share this
machine's network, on loopback): the stubs, one shard and one router, each started by its console script as uid 10001
with a host directory as /data. grpcurl places an order from here through the router (SUCCESS), the stubs' ledger shows
its effects once each, every process stops on SIGTERM with exit 0, and nothing is left running or mounted. Also what
the image is: every console script, no pip or compiler, not root, and its size.
"""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path

import grpc
import pytest
from grpc_health.v1 import health_pb2, health_pb2_grpc

from deploy.local import free_port
from tests.helpers.stubs import get_ledgers

ROOT = Path(__file__).resolve().parents[2]
IMAGE_SH = ROOT / "deploy" / "image.sh"
IMAGE = os.environ.get("IMAGE", "saga-coordinator:0.1.0")
GRPCURL = Path(sys.executable).parent / "grpcurl"
UID = 10001
SCRIPTS = ("saga-coordinator", "saga-router", "saga-stubs", "sagactl", "saga-defs")
READY_S = 90.0
"""Generous: three Python processes starting on a machine other engineers share."""
STOP_S = 30.0
MAX_IMAGE_MB = 215
"""193 MB before saga definitions; they brought PyYAML and jsonschema (with referencing, rpds-py and the bundled
metaschemas), which every shard and router needs to check a definition: 200 MB."""


def buildah(*args: str, timeout_s: float = 300) -> str:
    done = subprocess.run(
        [str(IMAGE_SH), "buildah", *args], capture_output=True, text=True, timeout=timeout_s, cwd=ROOT
    )
    assert done.returncode == 0, f"buildah {' '.join(args)}: {done.stderr[-2000:]}"
    return done.stdout.strip()


@dataclass
class Container:
    """A working container of the image; run() starts a process in it (chroot isolation, host network)."""

    name: str
    data: Path
    processes: list[tuple[subprocess.Popen[bytes], str]] = field(default_factory=list)

    def command(self, *argv: str) -> list[str]:
        return [
            str(IMAGE_SH), "buildah", "run", "--isolation", "chroot", "--user", f"{UID}:{UID}",
            "--volume", f"{self.data}:/data", self.name, "--", *argv,
        ]  # fmt: skip

    def run(self, *argv: str, log: Path) -> subprocess.Popen[bytes]:
        with log.open("wb") as out:
            # Its own session, so that stop() can signal buildah and the process it runs together, and only them.
            proc = subprocess.Popen(self.command(*argv), stdout=out, stderr=subprocess.STDOUT, start_new_session=True)
        self.processes.append((proc, argv[0]))
        return proc

    def output(self, *argv: str) -> subprocess.CompletedProcess[str]:
        return subprocess.run(self.command(*argv), capture_output=True, text=True, timeout=120)


def descendants(pid: int) -> list[int]:
    """Every process under `pid` (buildah run's children: its chroot helper, then the program), from /proc."""
    parents: dict[int, int] = {}
    for stat in Path("/proc").glob("[0-9]*/stat"):
        try:
            fields = stat.read_text().rsplit(")", 1)[1].split()
        except OSError:
            continue  # exited meanwhile
        parents[int(stat.parent.name)] = int(fields[1])
    found, frontier = [], [pid]
    while frontier:
        children = [p for p, parent in parents.items() if parent in frontier]
        found += children
        frontier = children
    return found


def stop(proc: subprocess.Popen[bytes], program: str, timeout_s: float = STOP_S) -> int:
    """SIGTERM to the program inside the container (buildah run does not pass signals on: SIGTERM would end buildah
    itself, not the program), then buildah's exit code, which is the program's; SIGKILL to the session we started
    after timeout_s."""
    if proc.poll() is None:
        below = descendants(proc.pid)
        # The program itself: a leaf (buildah's chroot helper, its parent, names the program in its arguments too).
        leaves = [p for p in below if not descendants(p)]
        targets = [p for p in leaves if program.encode() in _cmdline(p)]
        for pid in targets or [proc.pid]:
            os.kill(pid, signal.SIGTERM)
        try:
            proc.wait(timeout_s)
        except subprocess.TimeoutExpired:
            os.killpg(proc.pid, signal.SIGKILL)
            proc.wait(10)
    return proc.returncode


def _cmdline(pid: int) -> bytes:
    try:
        return Path(f"/proc/{pid}/cmdline").read_bytes()
    except OSError:
        return b""


def wait_healthy(address: str, proc: subprocess.Popen[bytes], log: Path) -> None:
    deadline = time.monotonic() + READY_S
    with grpc.insecure_channel(address) as channel:
        health = health_pb2_grpc.HealthStub(channel)
        while True:
            assert proc.poll() is None, f"exited {proc.returncode} before serving {address}:\n{log.read_text()[-3000:]}"
            try:
                reply = health.Check(health_pb2.HealthCheckRequest(), timeout=2)
                if reply.status == health_pb2.HealthCheckResponse.SERVING:
                    return
            except grpc.RpcError:
                pass
            assert time.monotonic() < deadline, f"{address} not healthy after {READY_S} s:\n{log.read_text()[-3000:]}"
            time.sleep(0.5)


@pytest.fixture(scope="module")
def container(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Container]:
    data = tmp_path_factory.mktemp("image-data")
    os.chown(data, UID, UID)  # the processes run as the image's user
    started = time.monotonic()
    name = buildah("from", "--pull=never", "--name", f"saga-smoke-{os.getpid()}", IMAGE)
    print(f"\nworking container {name} from {IMAGE} in {time.monotonic() - started:.1f} s")
    ctr = Container(name, data)
    try:
        yield ctr
    finally:
        for proc, program in reversed(ctr.processes):
            stop(proc, program)
        buildah("rm", name)
        mounts = Path("/proc/mounts").read_text()
        assert name not in mounts and str(data) not in mounts, "a mount of the smoke test was left behind"


def test_the_image_is_what_the_dockerfile_promises(container: Container) -> None:
    config = json.loads(buildah("inspect", "--type", "image", IMAGE))
    assert config["OCIv1"]["config"]["User"] == f"{UID}:{UID}"
    size, unit = buildah("images", "--format", "{{.Size}}", IMAGE).split()[:2]  # "192 MB"
    size_mb = float(size) * {"kB": 1e-3, "MB": 1, "GB": 1e3}[unit]
    print(f"image {IMAGE}: {size_mb:.0f} MB")
    checks = (
        "import os, shutil, sys\n"
        f"print(os.getuid(), sys.version.split()[0], sys.executable)\n"
        f"print(*(shutil.which(s) or 'MISSING-' + s for s in {SCRIPTS!r}))\n"
        "print(*[t for t in ('gcc', 'cc', 'make', 'pip', 'pip3') if shutil.which(t)] or ['no-tools'])\n"
        "import importlib.util; print(importlib.util.find_spec('pip') is None)\n"
        "print(*[p for p in ('/root/.cache', '/var/lib/apt/lists', '/var/cache/apt/archives') "
        "if os.path.isdir(p) and [f for f in os.listdir(p) if f not in ('partial', 'lock')]] or ['no-caches'])\n"
    )
    done = container.output("python3", "-c", checks)
    assert done.returncode == 0 and len(done.stdout.splitlines()) == 5, f"{done.stdout!r} {done.stderr[-2000:]!r}"
    uid, scripts, tools, no_pip, caches = done.stdout.splitlines()
    assert uid.split()[0] == str(UID) and uid.split()[1].startswith("3.11."), uid
    assert "MISSING" not in scripts, scripts
    assert tools == "no-tools" and no_pip == "True", f"build tools left in the image: {tools}, pip absent: {no_pip}"
    assert caches == "no-caches", caches
    for script in SCRIPTS:
        helped = container.output(script, "--help")
        assert helped.returncode == 0 and "usage" in helped.stdout.lower(), f"{script}: {helped.stderr[-1000:]}"
    assert 0 < size_mb < MAX_IMAGE_MB, f"{size_mb:.0f} MB"


def test_an_order_through_the_image(container: Container, tmp_path: Path) -> None:
    stubs, shard, router = (f"127.0.0.1:{free_port()}" for _ in range(3))
    (container.data / "shards.toml").write_text(f'[[shards]]\nid = "shard-1"\naddress = "{shard}"\n')
    timings: dict[str, float] = {}
    started = time.monotonic()
    procs = []
    for name, argv, address in (
        ("saga-stubs", ["saga-stubs", "--listen", stubs, "--data-dir", "/data/stubs"], stubs),
        (
            "saga-coordinator",
            ["saga-coordinator", "--shard-id", "shard-1", "--listen", shard, "--journal", "/data/shard-1.db",
             "--services", stubs],
            shard,
        ),
        (
            "saga-router",
            ["saga-router", "--listen", router, "--config", "/data/shards.toml", "--epochs", "/data/epochs.json"],
            router,
        ),
    ):  # fmt: skip
        log = tmp_path / f"{name}.log"
        proc = container.run(*argv, log=log)
        wait_healthy(address, proc, log)
        procs.append((name, proc, log))
        timings[name] = time.monotonic() - started
    order = {
        "order_id": "o-image-1",
        "user_id": "u-image",
        "items": [{"item_id": "sku-1", "quantity": 2}],
        "payment_info": {"payment_token": "tok_ok", "amount_cents": 2500, "currency": "EUR"},
    }
    placed = subprocess.run(
        [str(GRPCURL), "-plaintext", "-max-time", "60", "-d", json.dumps(order), router,
         "saga.v1.SagaCoordinator/PlaceOrder"],
        capture_output=True, text=True, timeout=90,
    )  # fmt: skip
    assert placed.returncode == 0, placed.stderr
    reply = json.loads(placed.stdout)
    assert reply["status"] == "SUCCESS", reply
    import asyncio

    ledger = asyncio.run(get_ledgers(stubs, ["o-image-1"]))["o-image-1"]
    assert ledger.order_created and not ledger.order_cancelled
    assert dict(ledger.reserved_net) == {"sku-1": 2}
    assert (ledger.charged_cents, ledger.refunded_cents) == (2500, 0)
    assert ledger.shipment_scheduled and not ledger.shipment_cancelled
    for name, proc, log in reversed(procs):
        code = stop(proc, f"/opt/saga/bin/{name}")
        assert code == 0, f"{name} exited {code} on SIGTERM:\n{log.read_text()[-3000:]}"
    print(
        "healthy after "
        + ", ".join(f"{name} {at:.1f} s" for name, at in timings.items())
        + f"; order and stop done at {time.monotonic() - started:.1f} s"
    )
    assert (container.data / "shard-1.db").exists() and (container.data / "shard-1.db.keys").stat().st_uid == UID
