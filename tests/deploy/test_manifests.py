"""deploy/k8s as kustomize renders it: valid against the Kubernetes API schemas, and the policies a platform engineer
relies on (restricted pods, budgets, nothing exposed, one shard count, the ring files matching it, shards reachable by
the routers only). Each overlay is checked as it would be applied."""

from __future__ import annotations

import copy
import json
import tomllib
from pathlib import Path

import kubernetes_validate  # type: ignore[import-untyped]  # the package ships no type information
import pytest
import yaml

from shard_router import config as router_config

from .conftest import K8S, OVERLAYS, Overlay, Render
from .manifests import (
    assert_restricted,
    container_of,
    containers_of,
    env_of,
    long_running,
    main_containers,
    namespace_name,
    one_shot_init_containers,
    pod_labels,
    pod_template,
    port_of,
    replicas_of,
    saga_workloads_of,
    selects,
    sidecars,
    validate,
    workloads_of,
)

DASHBOARD_PORT = 8051


# ---- schemas --------------------------------------------------------------------------------------------------------


def test_the_overlay_validates_against_the_kubernetes_schemas(overlay: Overlay) -> None:
    for obj in overlay.objects:
        where = f"{overlay.name}: {obj['kind']}/{obj['metadata']['name']}"
        try:
            validate(obj)
        except kubernetes_validate.SchemaNotFoundError:
            pytest.fail(
                f"{where}: no schema. A custom resource in an overlay would make `kubectl apply -k` fail on a "
                "cluster without its CRD: give it its own kustomization, as deploy/k8s/monitoring"
            )
        except kubernetes_validate.ValidationError as e:
            pytest.fail(f"{where}: {e.message} at {'.'.join(str(p) for p in e.path)}")


def test_the_schema_check_catches_a_misspelt_field(kustomize: Render) -> None:
    """The validation above is worth something only if an unknown field fails it."""
    (shards,) = [o for o in kustomize(K8S / "overlays" / "dev") if o["kind"] == "StatefulSet"]
    validate(shards)
    wrong = copy.deepcopy(shards)
    wrong["spec"]["template"]["spec"]["containers"][0]["readinesProbe"] = {"tcpSocket": {"port": "grpc"}}
    with pytest.raises(kubernetes_validate.ValidationError):
        validate(wrong)


def test_the_podmonitors_point_at_the_metrics_ports(kustomize: Render) -> None:
    monitors = kustomize(K8S / "monitoring")
    dev = workloads_of(kustomize(K8S / "overlays" / "dev"))
    assert monitors
    scraped: set[tuple[str, str]] = set()
    for monitor in monitors:
        assert (monitor["apiVersion"], monitor["kind"]) == ("monitoring.coreos.com/v1", "PodMonitor")
        assert monitor["metadata"]["namespace"] == namespace_name()
        try:
            validate(monitor)
        except kubernetes_validate.SchemaNotFoundError:
            # kubernetes-validate ships the schemas of the built-in API only, and a PodMonitor is a custom resource
            # (the Prometheus Operator's CRD): what it must get right is checked against the pods instead.
            pass
        (workload,) = [w for w in dev if selects(monitor["spec"]["selector"], pod_labels(w))]
        names = {p["name"] for c in containers_of(workload) for p in c.get("ports", [])}
        for endpoint in monitor["spec"]["podMetricsEndpoints"]:
            assert endpoint["port"] in names, f"{monitor['metadata']['name']}: no port {endpoint['port']}"
            assert endpoint["path"] == "/metrics"
            scraped.add((workload["metadata"]["name"], endpoint["port"]))
    for workload in dev:
        # Every saga process's `metrics` port, and every port of a sidecar (Litestream serves only its /metrics).
        wanted = {p["name"] for c in main_containers(workload) for p in c.get("ports", []) if p["name"] == "metrics"}
        wanted |= {p["name"] for c in sidecars(workload) for p in c.get("ports", [])}
        for port in wanted:
            assert (workload["metadata"]["name"], port) in scraped, f"{workload['metadata']['name']}: {port}"


def test_the_namespace_and_the_storage_class_stand_apart(kustomize: Render) -> None:
    namespace = yaml.safe_load((K8S / "namespace.yaml").read_text())
    storage = yaml.safe_load((K8S / "storageclass-example.yaml").read_text())
    for obj in (namespace, storage):
        validate(obj)
    assert namespace["kind"] == "Namespace"
    assert namespace["metadata"]["labels"]["pod-security.kubernetes.io/enforce"] == "restricted"
    assert storage["kind"] == "StorageClass" and storage["reclaimPolicy"] == "Retain"
    for kustomization in K8S.rglob("kustomization.yaml"):
        resources = yaml.safe_load(kustomization.read_text()).get("resources", [])
        assert not {"namespace.yaml", "storageclass-example.yaml"} & {Path(r).name for r in resources}, kustomization


# ---- policies on every overlay --------------------------------------------------------------------------------------


def test_the_namespace_is_not_rendered(overlay: Overlay) -> None:
    # `kubectl delete -k` of an overlay must never take the namespace, and with it the journals' claims.
    assert not overlay.of_kind("Namespace")
    assert not overlay.of_kind("StorageClass")
    assert {o["metadata"].get("namespace") for o in overlay.objects} == {namespace_name()}


def test_every_pod_runs_restricted(overlay: Overlay) -> None:
    for workload in workloads_of(overlay.objects):
        assert_restricted(workload)


PROBES = ("startupProbe", "readinessProbe", "livenessProbe")


def test_every_container_has_resources_and_probes(overlay: Overlay) -> None:
    for workload in workloads_of(overlay.objects):
        assert "terminationGracePeriodSeconds" in pod_template(workload)["spec"], workload["metadata"]["name"]
        for container in containers_of(workload):
            where = f"{workload['metadata']['name']}/{container['name']}"
            for bound in ("requests", "limits"):
                assert {"cpu", "memory"} <= set(container["resources"][bound]), f"{where}: {bound}"
        for container in main_containers(workload) if workload in long_running(overlay.objects) else []:
            where = f"{workload['metadata']['name']}/{container['name']}"
            for probe in PROBES:
                assert probe in container, f"{where}: {probe}"
                # Every saga port speaks mutual TLS, which neither an httpGet nor a grpc probe of the kubelet can.
                if workload in saga_workloads_of(overlay.objects):
                    assert "tcpSocket" in container[probe], f"{where}: {probe}"
        for container in sidecars(workload):
            where = f"{workload['metadata']['name']}/{container['name']}"
            ports = {p["name"] for p in container.get("ports", [])}
            for probe in ("startupProbe", "livenessProbe"):
                # Another program's plain-HTTP port (Litestream's /metrics), which the kubelet can ask.
                assert container[probe]["httpGet"]["port"] in ports, f"{where}: {probe}"
            # A sidecar's readiness is the pod's: a replica falling behind must not take the shard out of service.
            assert "readinessProbe" not in container, where
        for container in one_shot_init_containers(workload):
            # The API refuses probes on an init container that runs to completion.
            assert not [p for p in PROBES if p in container], f"{workload['metadata']['name']}/{container['name']}"


def test_every_pod_declares_its_metrics_for_prometheus(overlay: Overlay) -> None:
    for workload in saga_workloads_of(overlay.objects):
        annotations = pod_template(workload)["metadata"]["annotations"]
        (container,) = pod_template(workload)["spec"]["containers"]
        assert annotations["prometheus.io/scrape"] == "true"
        assert annotations["prometheus.io/port"] == str(port_of(container, "metrics"))
        assert annotations["prometheus.io/path"] == "/metrics"


def test_every_workload_has_its_own_disruption_budget(overlay: Overlay) -> None:
    workloads = long_running(overlay.objects)
    budgets = overlay.of_kind("PodDisruptionBudget")
    for workload in workloads:
        mine = [b for b in budgets if selects(b["spec"]["selector"], pod_labels(workload))]
        assert len(mine) == 1, f"{workload['metadata']['name']}: {len(mine)} budgets"
        others = [w for w in workloads if w is not workload]
        assert not any(selects(mine[0]["spec"]["selector"], pod_labels(w)) for w in others)
    assert overlay.get("PodDisruptionBudget", "saga-shard")["spec"] == {
        "maxUnavailable": 1,
        "selector": {"matchLabels": {"app": "saga-shard"}},
    }
    assert overlay.get("PodDisruptionBudget", "saga-router")["spec"]["minAvailable"] == 1


def test_nothing_is_exposed_outside_the_cluster(overlay: Overlay) -> None:
    assert not [o["kind"] for o in overlay.objects if o["kind"] in ("Ingress", "Gateway", "HTTPRoute", "Route")]
    for service in overlay.of_kind("Service"):
        name = service["metadata"]["name"]
        assert service["spec"].get("type", "ClusterIP") == "ClusterIP", f"{name} is reachable from outside"
        for port in service["spec"]["ports"]:
            assert DASHBOARD_PORT not in (port["port"], port.get("targetPort")), f"{name} serves the dashboard"
            assert port.get("name") != "dashboard" and port.get("targetPort") != "dashboard", name
    for workload in workloads_of(overlay.objects):
        for container in containers_of(workload):
            assert DASHBOARD_PORT not in [p["containerPort"] for p in container.get("ports", [])]
    router = container_of(overlay, "Deployment", "saga-router", "router")
    (dashboard,) = [a.split("=", 1)[1] for a in router["command"] if a.startswith("--dashboard-listen=")]
    assert dashboard.rpartition(":")[0] == "127.0.0.1", "the dashboard must listen on the pod's loopback only"


def test_only_the_routers_reach_the_shards_grpc_port(overlay: Overlay) -> None:
    shards = overlay.get("StatefulSet", "saga-shard")
    routers = overlay.get("Deployment", "saga-router")
    shard_grpc = {"grpc", port_of(container_of(overlay, "StatefulSet", "saga-shard", "coordinator"), "grpc")}
    policies = [p for p in overlay.of_kind("NetworkPolicy") if selects(p["spec"]["podSelector"], pod_labels(shards))]
    assert policies, "no NetworkPolicy selects the shards"
    admitted = 0
    for policy in policies:
        assert "Ingress" in policy["spec"]["policyTypes"]
        for rule in policy["spec"].get("ingress", []):
            ports = rule.get("ports")
            if ports is not None and not any(p.get("port") in shard_grpc for p in ports):
                continue
            peers = rule.get("from")
            assert peers, f"{policy['metadata']['name']}: a rule admits anyone to the shards' gRPC port"
            for peer in peers:
                assert set(peer) == {"podSelector"}, f"{policy['metadata']['name']}: {peer} is not the routers"
                selected = [w for w in workloads_of(overlay.objects) if selects(peer["podSelector"], pod_labels(w))]
                assert selected == [routers], f"{peer} admits {[w['metadata']['name'] for w in selected]}"
            admitted += 1
    assert admitted, "no rule lets the routers reach the shards"


# ---- the shard count and the ring --------------------------------------------------------------------------------


def test_the_shard_count_reaches_the_routers(overlay: Overlay) -> None:
    count = env_of(container_of(overlay, "Deployment", "saga-router", "router"))["SAGA_SHARD_COUNT"]
    # An env value must be a string: an int here is refused by the API server.
    assert isinstance(count, str), f"SAGA_SHARD_COUNT rendered as {count!r}"
    assert count == str(replicas_of(overlay))


def _ring_files(overlay: Overlay) -> tuple[str, str]:
    data = overlay.get("ConfigMap", "saga-router-ring")["data"]
    assert set(data) == {"shards.toml", "epochs.json"}
    return data["shards.toml"], data["epochs.json"]


def _expected_ring(shards_toml: str, count: int, where: Path) -> set[tuple[str, str]]:
    """(id, address) of every shard that owns keys, as the router derives them from the file and SAGA_SHARD_COUNT: by
    shard_router.config once it reads [shard_set], else by expanding the table by hand."""
    path = where / "shards.toml"
    path.write_text(shards_toml)
    try:
        cfg = router_config.load(path, env={"SAGA_SHARD_COUNT": str(count)})
    except router_config.ConfigError as e:
        if "shard_set" not in str(e):
            raise
    else:
        return {(sid, cfg.ring.addresses[sid]) for sid in cfg.ring.ring_ids}
    table = tomllib.loads(shards_toml)["shard_set"]
    assert set(table) <= {"count", "id", "address", "metrics"}, f"[shard_set] keys this test cannot expand: {table}"
    return {(table["id"].replace("{i}", str(i)), table["address"].replace("{i}", str(i))) for i in range(count)}


def test_the_ring_files_list_the_shards_of_the_statefulset(overlay: Overlay, tmp_path: Path) -> None:
    shards_toml, epochs_json = _ring_files(overlay)
    count = replicas_of(overlay)
    statefulset = overlay.get("StatefulSet", "saga-shard")
    coordinator = container_of(overlay, "StatefulSet", "saga-shard", "coordinator")
    # The [shard_set] names what the StatefulSet creates: pod saga-shard-i, DNS name <pod>.<headless Service>.
    table = tomllib.loads(shards_toml)["shard_set"]
    pod = f"{statefulset['metadata']['name']}-{{i}}"
    assert table["id"] == pod
    assert table["address"] == f"{pod}.{statefulset['spec']['serviceName']}:{port_of(coordinator, 'grpc')}"
    assert table["metrics"] == f"{pod}.{statefulset['spec']['serviceName']}:{port_of(coordinator, 'metrics')}"

    epochs = json.loads(epochs_json)
    assert epochs["version"] == 1
    numbers = [e["epoch"] for e in epochs["epochs"]]
    assert numbers and numbers[0] >= 1 and numbers == sorted(set(numbers)), numbers
    current = epochs["epochs"][-1]
    assert current["vnodes"] == tomllib.loads(shards_toml).get("vnodes", router_config.DEFAULT_VNODES)
    assert isinstance(current["created_at_epoch_ms"], int)
    ids = [s["id"] for s in current["shards"]]
    assert ids == sorted(ids), "epochs.json lists each epoch's shards sorted by id"
    listed = {(s["id"], s["address"]) for s in current["shards"]}
    expected = _expected_ring(shards_toml, count, tmp_path)
    assert listed == expected, (
        f"{overlay.name}: epochs.json's current epoch is not the ring of {count} shards: run `saga-router epochs "
        "commit` with the overlay's count (deploy/k8s/README.md, 'Adding a shard')"
    )
    assert {sid for sid, _ in expected} <= {f"saga-shard-{i}" for i in range(count)}


def test_the_routers_load_their_ring_config(overlay: Overlay, tmp_path: Path) -> None:
    shards_toml, epochs_json = _ring_files(overlay)
    (tmp_path / "shards.toml").write_text(shards_toml)
    (tmp_path / "epochs.json").write_text(epochs_json)
    count = replicas_of(overlay)
    cfg = router_config.load(
        tmp_path / "shards.toml", epochs_path=tmp_path / "epochs.json", env={"SAGA_SHARD_COUNT": str(count)}
    )
    assert {s.id for s in cfg.ring.shards} == {f"saga-shard-{i}" for i in range(count)}
    assert all(s.metrics for s in cfg.ring.shards), "the dashboards read every shard's /metrics"


def test_the_routers_are_stateless_and_read_the_ring_read_only(overlay: Overlay) -> None:
    deployment = overlay.get("Deployment", "saga-router")
    spec = pod_template(deployment)["spec"]
    assert deployment["spec"]["strategy"]["type"] == "RollingUpdate"
    assert not [v for v in spec["volumes"] if "persistentVolumeClaim" in v or "ephemeral" in v]
    router = container_of(overlay, "Deployment", "saga-router", "router")
    assert "--config=/etc/saga-router/shards.toml" in router["command"]
    assert "--epochs=/etc/saga-router/epochs.json" in router["command"]
    (ring,) = [v for v in spec["volumes"] if v.get("configMap", {}).get("name") == "saga-router-ring"]
    (mount,) = [m for m in router["volumeMounts"] if m["name"] == ring["name"]]
    # Without subPath, so that the kubelet's updates of the ConfigMap reach the running routers.
    assert mount == {"name": ring["name"], "mountPath": "/etc/saga-router", "readOnly": True}


# ---- what each overlay carries ------------------------------------------------------------------------------------


def test_the_shards_keep_their_journals_and_keys(overlay: Overlay) -> None:
    statefulset = overlay.get("StatefulSet", "saga-shard")
    assert statefulset["spec"]["persistentVolumeClaimRetentionPolicy"] == {
        "whenDeleted": "Retain",
        "whenScaled": "Retain",
    }
    spec = pod_template(statefulset)["spec"]
    (keys,) = [v for v in spec["volumes"] if v.get("secret", {}).get("secretName") == "saga-journal-keys"]
    assert keys["secret"]["defaultMode"] == 0o440
    coordinator = container_of(overlay, "StatefulSet", "saga-shard", "coordinator")
    (mount,) = [m for m in coordinator["volumeMounts"] if m["name"] == keys["name"]]
    assert "subPath" not in mount and mount["readOnly"] is True
    env = env_of(coordinator)
    assert env["SAGA_JOURNAL_KEY_FILE"] == f"{mount['mountPath']}/$(POD_NAME).keys"
    assert not [a for a in coordinator["command"] if a.startswith("--services")], "the flag would hide the ConfigMap"
    for workload in saga_workloads_of(overlay.objects):
        for container in main_containers(workload):
            # Logs as JSON lines for the cluster's collector; the stubs have no such option (service_stubs logs text).
            if container["name"] != "stubs":
                assert env_of(container).get("SAGA_LOG_JSON") == "1", container["name"]
            command = container["command"]
            assert {"--tls-cert=/etc/saga/tls/tls.crt", "--tls-key=/etc/saga/tls/tls.key"} <= set(command)
            assert any(a.startswith("--auth-policy=/etc/saga/auth/") for a in command)
            assert "--insecure" not in command
            image = container["image"]
            assert "@sha256:" in image or ":" in image.rsplit("/", 1)[-1], f"{image}: no tag or digest"
        for container in pod_template(workload)["spec"].get("initContainers", []):
            # Another project's image (Litestream's): pinned by digest, as deploy/Dockerfile pins its base.
            assert "@sha256:" in container["image"], f"{container['name']}: {container['image']} not pinned by digest"


@pytest.mark.parametrize("name", OVERLAYS)
def test_what_each_overlay_runs(kustomize: Render, name: str) -> None:
    overlay = Overlay(name, K8S / "overlays" / name, kustomize(K8S / "overlays" / name))
    (services,) = [c for c in overlay.of_kind("ConfigMap") if c["metadata"]["name"].startswith("saga-shard-services")]
    stubs = [d for d in overlay.of_kind("Deployment") if d["metadata"]["name"] == "saga-stubs"]
    if name == "dev":
        assert (replicas_of(overlay), overlay.get("Deployment", "saga-router")["spec"]["replicas"]) == (3, 2)
        (deployment,) = stubs
        assert deployment["spec"]["replicas"] == 1
        assert "--no-control" in container_of(overlay, "Deployment", "saga-stubs", "stubs")["command"]
        assert services["data"] == {"SAGA_SERVICES": "saga-stubs:50061"}
    else:
        assert not stubs
        expected = {f"SAGA_{s}_ADDR" for s in ("ORDER", "INVENTORY", "PAYMENT", "SHIPPING")}
        assert set(services["data"]) == expected
        assert not any("saga-stubs" in v for v in services["data"].values())
