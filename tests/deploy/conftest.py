"""deploy/k8s rendered once per session with `kubectl kustomize` (no cluster needed); the tests read the objects it
prints. Without kubectl, or with one whose kustomize predates 5.0, those tests fail and say why (`make k8s-deps`
installs kubectl where apt-get can), unless SAGA_ALLOW_MISSING_TOOLS names kubectl: then they skip and say so."""

from __future__ import annotations

import re
import shutil
import subprocess
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pytest
import yaml

from tests.helpers.tools import require_tool

ROOT = Path(__file__).resolve().parents[2]
K8S = ROOT / "deploy" / "k8s"
OVERLAYS = ("dev", "prod")
# `replacements` arrived in kustomize 4; 5 (kubectl 1.27) is what these manifests are written and checked against.
MIN_KUSTOMIZE = (5, 0)

Manifest = dict[str, Any]
Render = Callable[[Path], list[Manifest]]


@dataclass(frozen=True)
class Overlay:
    name: str
    path: Path
    objects: list[Manifest]

    def of_kind(self, kind: str) -> list[Manifest]:
        return [o for o in self.objects if o["kind"] == kind]

    def get(self, kind: str, name: str) -> Manifest:
        (found,) = [o for o in self.of_kind(kind) if o["metadata"]["name"] == name]
        return found


def _kubectl() -> str:
    path = shutil.which("kubectl")
    require_tool("kubectl", path is not None, "kubectl not found (Debian package kubectl or kubernetes-client)")
    assert path is not None
    out = subprocess.run([path, "version", "--client"], capture_output=True, text=True, timeout=60).stdout
    found = re.search(r"Kustomize Version: v(\d+)\.(\d+)", out)
    recent = found is not None and (int(found[1]), int(found[2])) >= MIN_KUSTOMIZE
    why = f"kubectl's kustomize is older than {MIN_KUSTOMIZE} ({out.strip()!r}): needs kubectl 1.27 or later"
    require_tool("kubectl", recent, why)
    return path


@pytest.fixture(scope="session")
def kustomize() -> Render:
    kubectl = _kubectl()
    cache: dict[Path, list[Manifest]] = {}

    def build(path: Path) -> list[Manifest]:
        if path not in cache:
            done = subprocess.run([kubectl, "kustomize", str(path)], capture_output=True, text=True, timeout=60)
            assert done.returncode == 0, f"kubectl kustomize {path} failed: {done.stderr}"
            cache[path] = [doc for doc in yaml.safe_load_all(done.stdout) if doc]
        return cache[path]

    return build


@pytest.fixture(scope="session", params=OVERLAYS)
def overlay(request: pytest.FixtureRequest, kustomize: Render) -> Iterator[Overlay]:
    path = K8S / "overlays" / request.param
    yield Overlay(request.param, path, kustomize(path))
