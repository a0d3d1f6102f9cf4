"""The container image's inputs (deploy/Dockerfile, deploy/requirements.lock), checked without a Docker engine: the
wheel the image installs carries every console script and each one starts, the lock pins every runtime dependency
with hashes, and the Dockerfile installs from it the way its comments say."""

from __future__ import annotations

import os
import re
import shutil
import subprocess
import sys
import tomllib
import zipfile
from pathlib import Path

import pytest
from packaging.requirements import Requirement
from packaging.utils import canonicalize_name

ROOT = Path(__file__).resolve().parents[2]
DOCKERFILE = ROOT / "deploy" / "Dockerfile"
LOCK = ROOT / "deploy" / "requirements.lock"


def _project() -> dict[str, object]:
    project: dict[str, object] = tomllib.loads((ROOT / "pyproject.toml").read_text())["project"]
    return project


def _scripts() -> dict[str, str]:
    scripts = _project()["scripts"]
    assert isinstance(scripts, dict)
    return {str(k): str(v) for k, v in scripts.items()}


@pytest.fixture(scope="module")
def wheel(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """The wheel, built as the image's build stage builds it: from what the Dockerfile copies (so a package it forgets
    is missing here too; and setuptools' build/ directory, whose stale files would end up in the wheel, stays out of
    the checkout), with the installed setuptools and nothing fetched."""
    src = tmp_path_factory.mktemp("src")
    stage = DOCKERFILE.read_text().split("\nFROM ")[1]
    assert stage.startswith("${BASE} AS build\n"), "the first stage is expected to build the wheel"
    # Each COPY of the build stage keeps the name: `COPY protos ./protos`, `COPY pyproject.toml README.md ./`.
    for line in re.findall(r"^COPY (.+)$", stage, re.MULTILINE):
        if line.split()[-1].startswith("/"):
            continue  # not the source tree (the lock file, for the dependencies' step)
        for name in line.split()[:-1]:
            if (ROOT / name).is_dir():
                shutil.copytree(ROOT / name, src / name, ignore=shutil.ignore_patterns("__pycache__"))
            else:
                shutil.copy2(ROOT / name, src / name)
    out = tmp_path_factory.mktemp("wheel")
    subprocess.run(
        [sys.executable, "-m", "pip", "wheel", "-q", "--no-deps", "--no-build-isolation", f"--wheel-dir={out}", "."],
        cwd=src,
        check=True,
        timeout=120,
    )
    (built,) = out.glob("saga_coordinator-*.whl")
    return built


def test_the_wheel_declares_every_console_script(wheel: Path) -> None:
    with zipfile.ZipFile(wheel) as z:
        (name,) = [n for n in z.namelist() if n.endswith(".dist-info/entry_points.txt")]
        text = z.read(name).decode()
        names = set(z.namelist())
    section = text.split("[console_scripts]", 1)[1].split("\n[", 1)[0]
    declared = dict(
        (k.strip(), v.strip()) for k, _, v in (line.partition("=") for line in section.splitlines()) if k.strip()
    )
    assert declared == _scripts()
    # Files the processes open at run time (server reflection, the dashboard page): package data, easy to lose.
    assert "protos/descriptor_set.binpb" in names
    assert any(n.startswith("shard_router/dashboard/static/") and n.endswith(".html") for n in names)


def test_every_console_script_of_the_wheel_starts(wheel: Path, tmp_path: Path) -> None:
    target = tmp_path / "target"
    subprocess.run(
        [sys.executable, "-m", "pip", "install", "-q", "--no-deps", "--no-compile", f"--target={target}", str(wheel)],
        check=True,
        timeout=120,
    )
    # The wheel's own packages come first on the path; the dependencies come from this venv (pip --target writes
    # scripts whose shebang is this interpreter).
    env = {**os.environ, "PYTHONPATH": str(target)}
    where = subprocess.run(
        [sys.executable, "-c", "import coordinator, shard_router; print(coordinator.__file__, shard_router.__file__)"],
        env=env,
        cwd=tmp_path,
        capture_output=True,
        text=True,
        check=True,
        timeout=60,
    ).stdout
    assert where.count(str(target)) == 2, f"imported from the checkout, not the wheel: {where}"
    for script in _scripts():
        done = subprocess.run(
            [str(target / "bin" / script), "--help"], env=env, cwd=tmp_path, capture_output=True, text=True, timeout=60
        )
        assert done.returncode == 0, f"{script} --help exited {done.returncode}: {done.stderr[-2000:]}"
        assert "usage" in done.stdout.lower(), f"{script} --help printed no usage: {done.stdout[:500]}"


def _lock_pins() -> dict[str, tuple[str, list[str]]]:
    """name -> (version, sha256 hashes) of every requirement in the lock (pip-compile's layout: a requirement line,
    then its continuation lines with --hash options)."""
    text = LOCK.read_text()
    pins: dict[str, tuple[str, list[str]]] = {}
    for block in re.split(r"\n(?=\S)", text):
        first = block.split("\\", 1)[0].strip()
        if not first or first.startswith("#"):
            continue
        assert not first.startswith("-"), f"option in the lock ({first}): the image must not depend on this machine"
        req = Requirement(first)
        (spec,) = req.specifier
        assert spec.operator == "==", f"{first}: not pinned with =="
        pins[canonicalize_name(req.name)] = (spec.version, re.findall(r"--hash=sha256:([0-9a-f]{64})", block))
    return pins


def test_the_lock_pins_every_runtime_dependency_with_hashes() -> None:
    pins = _lock_pins()
    assert pins, "no requirement read from the lock"
    # pip --require-hashes refuses the whole file if any requirement lacks one, transitive ones included.
    assert [name for name, (_, hashes) in pins.items() if not hashes] == []
    dependencies = _project()["dependencies"]
    assert isinstance(dependencies, list)
    for line in dependencies:
        req = Requirement(line)
        name = canonicalize_name(req.name)
        assert name in pins, f"{req.name} is a dependency in pyproject.toml but not in the lock: run make lock"
        assert req.specifier.contains(pins[name][0]), f"lock pins {name}=={pins[name][0]}, pyproject wants {line}"


def test_the_dockerfile_installs_from_the_lock_as_uid_10001() -> None:
    text = DOCKERFILE.read_text()
    base = re.search(r"^ARG BASE=(\S+)$", text, re.MULTILINE)
    pinned = r"docker\.io/library/debian:bookworm-slim@sha256:[0-9a-f]{64}"
    assert base and re.fullmatch(pinned, base.group(1)), "base not Debian bookworm slim pinned by digest"
    # make image builds on the same name without the digest (deploy/image.sh makes that base with debootstrap).
    image_sh = (ROOT / "deploy" / "image.sh").read_text()
    assert f"BASE_NAME:-{base.group(1).split('@')[0]}}}" in image_sh
    assert re.findall(r"^FROM (\S+)", text, re.MULTILINE) == ["${BASE}", "${BASE}"]
    # Continuation lines joined: one RUN, one line.
    runs = text.replace("\\\n", " ")
    assert re.search(r"pip install [^\n]*--require-hashes[^\n]*-r /tmp/requirements\.lock", runs)
    assert re.search(r"pip install [^\n]*--no-deps [^\n]*\.whl", runs)
    assert all("--no-cache-dir" in line for line in re.findall(r"pip (?:install|wheel)[^\n]*", runs))
    # Debian's Python in the final stage, and only it: no pip, venv tooling or compilers.
    final = runs.split("\nFROM ")[2]
    assert re.search(r"apt-get install [^\n]*--no-install-recommends python3 ", final)
    assert not re.search(r"python3-(pip|venv|dev)|build-essential|gcc", final)
    assert re.search(r"^USER 10001:10001$", text, re.MULTILINE)
    for script in _scripts():
        assert script in text, f"the image's build does not check that {script} is installed"
    # Every package the wheel is built from is copied into the build stage.
    find = tomllib.loads((ROOT / "pyproject.toml").read_text())["tool"]["setuptools"]["packages"]["find"]
    for pattern in find["include"]:
        package = pattern.rstrip("*")
        assert re.search(rf"^COPY {package} \./{package}$", text, re.MULTILINE), f"{package} is not copied"
