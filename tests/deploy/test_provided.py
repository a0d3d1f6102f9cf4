"""Nothing an overlay needs is left unsaid: every Secret, ConfigMap and image a rendered overlay references is rendered
by that overlay or listed in deploy/k8s/README.md ("What the operator provides") as the operator's to provide, and
what is listed there is referenced. The Secrets listed come from `python -m deploy.local certs --k8s` or the
cert-manager component, which issue the same certificates; prod's placeholders are each listed with what to set."""

from __future__ import annotations

import os
import re
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import yaml

from deploy.local.k8s_secrets import SECRETS_FILE, TLS_SECRETS, write_secrets

from .conftest import K8S, OVERLAYS, Manifest, Overlay, Render
from .manifests import containers_of, pod_template, validate, workloads_of

README = K8S / "README.md"
PINNED_BY_TAG = "PINNED-BY-TAG"


@dataclass(frozen=True)
class Provided:
    name: str
    kind: str
    overlays: frozenset[str]


def _provided() -> dict[tuple[str, str], Provided]:
    """(kind, name) -> the row of the README's table under "What the operator provides"."""
    section = README.read_text().split("### What the operator provides", 1)[1].split("\n#", 1)[0]
    rows: dict[tuple[str, str], Provided] = {}
    for line in section.splitlines():
        cells = [c.strip() for c in line.strip().strip("|").split("|")]
        if len(cells) == 4 and cells[0].startswith("`"):
            row = Provided(cells[0].strip("`"), cells[1], frozenset(o.strip() for o in cells[2].split(",")))
            rows[(row.kind, row.name)] = row
    assert rows, f"no table read from {README}"
    return rows


def _walk(node: Any) -> Iterator[dict[str, Any]]:
    if isinstance(node, dict):
        yield node
        for value in node.values():
            yield from _walk(value)
    elif isinstance(node, list):
        for value in node:
            yield from _walk(value)


def referenced(objects: list[Manifest]) -> set[tuple[str, str]]:
    """(kind, name) of every Secret, ConfigMap and image the workloads use: volumes (projected ones too), envFrom and
    env valueFrom, each container's image (its name, without tag or digest)."""
    found: set[tuple[str, str]] = set()
    for workload in workloads_of(objects):
        spec = pod_template(workload)["spec"]
        for node in _walk([spec.get("volumes", []), *(c.get("env", []) for c in containers_of(workload))]):
            if "secretName" in node:
                found.add(("Secret", node["secretName"]))
            for key, kind in (("secretKeyRef", "Secret"), ("configMapKeyRef", "ConfigMap")):
                if key in node:
                    found.add((kind, node[key]["name"]))
            for key, kind in (("configMap", "ConfigMap"), ("secret", "Secret")):
                if isinstance(node.get(key), dict) and "name" in node[key]:
                    found.add((kind, node[key]["name"]))
        for container in containers_of(workload):
            for source in container.get("envFrom", []):
                for key, kind in (("configMapRef", "ConfigMap"), ("secretRef", "Secret")):
                    if key in source:
                        found.add((kind, source[key]["name"]))
            found.add(("image", container["image"]))
    return found


def _image_name(image: str) -> str:
    without_digest = image.split("@", 1)[0]
    repository, _, tag = without_digest.rpartition(":")
    return repository if repository and "/" not in tag else without_digest


def test_everything_an_overlay_references_is_rendered_or_provided(overlay: Overlay) -> None:
    rendered = {(o["kind"], o["metadata"]["name"]) for o in overlay.objects}
    provided = _provided()
    missing = []
    for kind, name in sorted(referenced(overlay.objects)):
        if kind == "image":
            if "@sha256:" in name:
                continue  # another project's image, pinned by digest: its registry provides it
            row = provided.get(("image", _image_name(name)))
        elif (kind, name) in rendered:
            continue
        else:
            row = provided.get((kind, name))
        if row is None or overlay.name not in row.overlays:
            missing.append(f"{kind} {name}")
    assert not missing, f"{overlay.name} references, renders not and {README.name} does not list: {missing}"


def test_the_readme_lists_only_what_an_overlay_references(kustomize: Render) -> None:
    uses = {name: referenced(kustomize(K8S / "overlays" / name)) for name in OVERLAYS}
    for (kind, name), row in _provided().items():
        for overlay in row.overlays:
            refs = uses[overlay]
            if kind == "image":
                found = any(_image_name(image) == name for k, image in refs if k == "image")
            else:
                found = (kind, name) in refs
            assert found, f"{README.name} lists {kind} {name} for {overlay}, which does not reference it"


def test_images_pinned_by_tag_are_marked_and_listed(kustomize: Render) -> None:
    """An image without a digest is a labelled placeholder: marked in its manifest and listed in the README."""
    provided = _provided()
    for name in OVERLAYS:
        for kind, image in referenced(kustomize(K8S / "overlays" / name)):
            if kind != "image" or "@sha256:" in image or _image_name(image) == "saga-coordinator":
                continue
            assert ("image", _image_name(image)) in provided, image
            marker = re.compile(rf"{re.escape(image)}\s+# {PINNED_BY_TAG}")
            marked = [p for p in K8S.rglob("*.yaml") if marker.search(p.read_text())]
            assert marked, f"{image}: no `# {PINNED_BY_TAG}` marker beside it"


def test_prods_placeholders_are_each_listed_with_what_to_set() -> None:
    text = README.read_text().split("**Prod's placeholders**", 1)[1].split("\n\n", 2)[1]
    for env in ("services.env", "replica.env"):
        for line in (K8S / "overlays" / "prod" / env).read_text().splitlines():
            if line and not line.startswith("#"):
                setting = line.split("=", 1)[0]
                assert f"`{setting}`" in text, f"overlays/prod/{env}: {setting} is not in {README.name}'s placeholders"


# ---- where the Secrets come from -------------------------------------------------------------------------------------


def _docs(path: Path) -> list[Manifest]:
    return [d for d in yaml.safe_load_all(path.read_text()) if d]


def test_certs_k8s_writes_every_secret_listed_as_made_by_it(tmp_path: Path) -> None:
    out = write_secrets(tmp_path, shards=4, replica_credentials=True)
    assert out == tmp_path / SECRETS_FILE and out.stat().st_mode & 0o077 == 0, "private keys readable by others"
    secrets = {d["metadata"]["name"]: d for d in _docs(out)}
    for obj in secrets.values():
        validate(obj)
        assert obj["metadata"]["namespace"] == "saga"
    listed = {name for (kind, name) in _provided() if kind == "Secret"}
    assert listed <= set(secrets), f"listed in {README.name} but not made: {listed - set(secrets)}"
    keys = secrets["saga-journal-keys"]["data"]
    assert sorted(keys) == [f"saga-shard-{i}.keys" for i in range(4)]
    for tls in TLS_SECRETS:
        assert secrets[tls.secret]["type"] == "kubernetes.io/tls"
        assert set(secrets[tls.secret]["data"]) == {"tls.crt", "tls.key", "ca.crt"}
    # Run again: the same key files, certificates and credentials (new journal keys would lock the journals).
    first = out.read_text()
    write_secrets(tmp_path, shards=4, replica_credentials=True)
    assert out.read_text() == first


def test_cert_manager_issues_the_same_tls_secrets(kustomize: Render, tmp_path: Path) -> None:
    """The component, added to the dev overlay as its comment says, has a Certificate for every TLS Secret the pods
    mount, with the SANs `certs --k8s` gives the same Secret."""
    from cryptography import x509

    with_cm = tmp_path / "with-cert-manager"
    with_cm.mkdir()
    (with_cm / "kustomization.yaml").write_text(
        f"resources: [{os.path.relpath(K8S / 'overlays' / 'dev', with_cm)}]\n"
        f"components: [{os.path.relpath(K8S / 'components' / 'cert-manager', with_cm)}]\n"
    )
    objects = kustomize(with_cm)
    certificates = {
        o["spec"]["secretName"]: o["spec"] for o in objects if o["kind"] == "Certificate" and o["spec"].get("issuerRef")
    }
    mounted = {name for kind, name in referenced(objects) if kind == "Secret" and name.endswith("-tls")}
    assert mounted and mounted <= set(certificates), f"no Certificate for {mounted - set(certificates)}"
    write_secrets(tmp_path / "k8s")
    for tls in TLS_SECRETS:
        spec = certificates[tls.secret]
        assert spec["issuerRef"] == {"name": "saga-ca", "kind": "Issuer"}
        assert {"server auth", "client auth"} <= set(spec["usages"])
        cert = x509.load_pem_x509_certificate((tmp_path / "k8s" / f"{tls.name}.pem").read_bytes())
        san = cert.extensions.get_extension_for_class(x509.SubjectAlternativeName).value
        assert spec["uris"] == san.get_values_for_type(x509.UniformResourceIdentifier)
        dns = [d for d in san.get_values_for_type(x509.DNSName) if d != "localhost"]
        assert spec.get("dnsNames", []) == dns, tls.secret
