"""What tests/deploy reads rendered manifests with: the schema check, and the pod templates, containers, ports and
selectors of workloads, as the Kubernetes API would see them."""

from __future__ import annotations

from typing import Any

import kubernetes_validate  # type: ignore[import-untyped]  # the package ships no type information
import yaml

from .conftest import K8S, Manifest, Overlay

# A release that kubernetes-validate ships offline schemas for (1.25 and later): the oldest these manifests promise.
KUBERNETES_VERSION = "1.30.0"
WORKLOAD_KINDS = ("Deployment", "StatefulSet", "DaemonSet", "ReplicaSet", "Job", "CronJob")
UID = 10001


def validate(obj: Manifest) -> None:
    # strict: a field the schema does not know (a typo, or a field of a later release) fails instead of being ignored.
    kubernetes_validate.validate(obj, KUBERNETES_VERSION, strict=True)


def workloads_of(objects: list[Manifest]) -> list[Manifest]:
    return [o for o in objects if o["kind"] in WORKLOAD_KINDS]


SAGA_IMAGE = "saga-coordinator"
"""deploy/Dockerfile's image, as the base names it (each overlay's `images:` sets its tag or digest)."""


def saga_workloads_of(objects: list[Manifest]) -> list[Manifest]:
    """The workloads of saga processes (the router, shards and stubs), not the other programs an overlay runs (dev's
    MinIO and its bucket Job)."""
    return [w for w in workloads_of(objects) if all(_is_saga(c["image"]) for c in main_containers(w))]


def long_running(objects: list[Manifest]) -> list[Manifest]:
    """Workloads whose pods keep running (not Jobs): what a disruption budget and probes are for."""
    return [w for w in workloads_of(objects) if w["kind"] not in ("Job", "CronJob")]


def _is_saga(image: str) -> bool:
    return image.split("@", 1)[0].rsplit(":", 1)[0].rsplit("/", 1)[-1] == SAGA_IMAGE


def pod_template(workload: Manifest) -> dict[str, Any]:
    spec = workload["spec"]["jobTemplate"]["spec"] if workload["kind"] == "CronJob" else workload["spec"]
    template: dict[str, Any] = spec["template"]
    return template


def pod_labels(workload: Manifest) -> dict[str, str]:
    labels: dict[str, str] = pod_template(workload)["metadata"]["labels"]
    return labels


def containers_of(workload: Manifest) -> list[dict[str, Any]]:
    spec = pod_template(workload)["spec"]
    return [*spec.get("initContainers", []), *spec["containers"]]


def main_containers(workload: Manifest) -> list[dict[str, Any]]:
    """The pod's `containers`: the saga processes, from the saga image."""
    found: list[dict[str, Any]] = pod_template(workload)["spec"]["containers"]
    return found


def sidecars(workload: Manifest) -> list[dict[str, Any]]:
    """Native sidecars: init containers that keep running beside the main ones (restartPolicy Always)."""
    return [c for c in pod_template(workload)["spec"].get("initContainers", []) if c.get("restartPolicy") == "Always"]


def one_shot_init_containers(workload: Manifest) -> list[dict[str, Any]]:
    """Init containers that run to completion before the next one starts."""
    return [c for c in pod_template(workload)["spec"].get("initContainers", []) if c.get("restartPolicy") != "Always"]


def assert_restricted(workload: Manifest) -> None:
    """The pod runs as the image's uid 10001, non-root, RuntimeDefault seccomp, no API token; every container without
    privileges or capabilities, on a read-only root file system with an emptyDir for /tmp: the namespace enforces
    the `restricted` Pod Security profile, and nothing of ours writes outside its volumes."""
    name = workload["metadata"]["name"]
    spec = pod_template(workload)["spec"]
    pod = spec["securityContext"]
    assert pod["runAsNonRoot"] is True, name
    assert (pod["runAsUser"], pod["runAsGroup"], pod["fsGroup"]) == (UID, UID, UID), name
    assert pod["seccompProfile"] == {"type": "RuntimeDefault"}, name
    assert spec["automountServiceAccountToken"] is False, name
    volumes = {v["name"]: v for v in spec["volumes"]}
    for container in containers_of(workload):
        where = f"{name}/{container['name']}"
        sc = container["securityContext"]
        assert sc["allowPrivilegeEscalation"] is False, where
        assert sc["readOnlyRootFilesystem"] is True, where
        assert sc["capabilities"] == {"drop": ["ALL"]}, where
        assert not sc.get("privileged"), where
        (tmp,) = [m for m in container["volumeMounts"] if m["mountPath"] == "/tmp"]
        assert "emptyDir" in volumes[tmp["name"]], f"{where}: /tmp is not an emptyDir"


def selects(selector: dict[str, Any], labels: dict[str, str]) -> bool:
    """Whether a label selector (matchLabels and matchExpressions) matches these labels."""
    if not all(labels.get(k) == v for k, v in selector.get("matchLabels", {}).items()):
        return False
    for expr in selector.get("matchExpressions", []):
        key, op, values = expr["key"], expr["operator"], expr.get("values", [])
        ok = {
            "In": key in labels and labels[key] in values,
            "NotIn": key not in labels or labels[key] not in values,
            "Exists": key in labels,
            "DoesNotExist": key not in labels,
        }[op]
        if not ok:
            return False
    return True


def env_of(container: dict[str, Any]) -> dict[str, Any]:
    return {e["name"]: e.get("value") for e in container.get("env", [])}


def container_of(overlay: Overlay, kind: str, name: str, container: str) -> dict[str, Any]:
    (found,) = [c for c in containers_of(overlay.get(kind, name)) if c["name"] == container]
    return found


def port_of(container: dict[str, Any], name: str) -> int:
    (port,) = [p["containerPort"] for p in container["ports"] if p["name"] == name]
    assert isinstance(port, int)
    return port


def replicas_of(overlay: Overlay) -> int:
    replicas = overlay.get("StatefulSet", "saga-shard")["spec"]["replicas"]
    assert isinstance(replicas, int)
    return replicas


def namespace_name() -> str:
    name = yaml.safe_load((K8S / "namespace.yaml").read_text())["metadata"]["name"]
    assert isinstance(name, str)
    return name
