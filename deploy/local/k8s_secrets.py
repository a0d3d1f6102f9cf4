"""The Kubernetes overlays' Secrets, made from local files instead of by hand (`python -m deploy.local certs --k8s`):
one manifest, `<dir>/secrets.yaml`, to `kubectl apply -f` before `kubectl apply -k deploy/k8s/overlays/<env>`.

Everything it holds is kept in <dir> and reused by the next run, so running it again rewrites the same Secrets (a new
journal key file would make every existing journal's payment data unreadable):

    ca.pem, ca-key.pem                      the CA every certificate below chains to (deploy.local.certs.LocalCA)
    router.pem, shard-set.pem, stubs.pem    the processes' certificates, named as deploy/k8s/README.md lists them
    operator.pem                            sagactl's, for an operator (Secret saga-operator-tls too)
    saga-shard-N.keys                       each shard's journal key file (`coordinator keys init`): back these up apart
    jwt-signing-key.pem, jwt.pem            the bearer tokens' key pair: the routers get the public half
    replica.env                             with replica_credentials: random keys for dev's MinIO and its Litestreams

With cert-manager, deploy/k8s/components/cert-manager issues the four TLS Secrets instead (and renews them); this
module still makes the others.
"""

from __future__ import annotations

import base64
import os
import secrets
import subprocess
import sys
from collections.abc import Mapping
from dataclasses import dataclass
from pathlib import Path

from .authpolicy import VERIFY_KEY, write_jwt_keys
from .certs import LocalCA

SECRETS_FILE = "secrets.yaml"
REPLICA_ENV = "replica.env"


@dataclass(frozen=True)
class TlsSecret:
    """A kubernetes.io/tls Secret: the certificate `name` (URI SAN spiffe://saga/<name>) for `services`."""

    secret: str
    name: str
    services: tuple[str, ...]
    """Service names peers dial; each gets `<svc>` and `<svc>.<namespace>.svc` SANs (a `*.` prefix: a wildcard)."""


TLS_SECRETS = (
    TlsSecret("saga-router-tls", "router", ("saga-router",)),
    # One certificate for every shard: the routers dial saga-shard-N.saga-shard (the StatefulSet's headless Service).
    TlsSecret("saga-shard-tls", "shard-set", ("*.saga-shard",)),
    TlsSecret("saga-stubs-tls", "stubs", ("saga-stubs",)),
    # Not mounted by any pod: the operator's sagactl certificate, a Secret as cert-manager would make it.
    TlsSecret("saga-operator-tls", "operator", ()),
)


def write_secrets(
    directory: Path, *, namespace: str = "saga", shards: int = 3, replica_credentials: bool = False
) -> Path:
    """Writes <directory>/secrets.yaml (mode 0600: it holds private keys) from the files in `directory`, creating
    those that are missing; returns its path."""
    if shards < 1:
        raise ValueError(f"shards must be at least 1, got {shards}")
    directory = Path(directory).absolute()
    ca = LocalCA(directory)
    docs: list[str] = []
    for tls in TLS_SECRETS:
        dns = [name for svc in tls.services for name in (svc, f"{svc}.{namespace}.svc")]
        files = ca.issue(tls.name, dns=dns).files
        assert files.cert is not None and files.key is not None and files.ca is not None
        data = {"tls.crt": files.cert.read_bytes(), "tls.key": files.key.read_bytes(), "ca.crt": files.ca.read_bytes()}
        docs.append(_secret(tls.secret, namespace, data, kind="kubernetes.io/tls"))
    keys: dict[str, bytes] = {}
    for i in range(shards):
        path = directory / f"saga-shard-{i}.keys"
        if not path.exists():
            _init_key_file(path)
        keys[path.name] = path.read_bytes()
    docs.append(_secret("saga-journal-keys", namespace, keys))
    write_jwt_keys(directory)
    docs.append(_secret("saga-jwt-keys", namespace, {VERIFY_KEY: (directory / VERIFY_KEY).read_bytes()}))
    if replica_credentials:
        docs.append(_secret("saga-replica-credentials", namespace, _replica_credentials(directory / REPLICA_ENV)))
    out = directory / SECRETS_FILE
    _write_private(out, "".join(docs).encode())
    return out


def _init_key_file(path: Path) -> None:
    """A new journal key file, made by the coordinator's own command (`saga-coordinator keys init`, as the README
    says to by hand): deploy may not import the coordinator's internals (tests/architecture)."""
    done = subprocess.run(
        [sys.executable, "-m", "coordinator", "keys", "init", "--key-file", str(path)],
        capture_output=True,
        text=True,
        timeout=120,
    )
    if done.returncode != 0:
        raise ValueError(f"coordinator keys init --key-file {path} failed: {done.stderr.strip()[-500:]}")


def _replica_credentials(path: Path) -> dict[str, bytes]:
    """LITESTREAM_ACCESS_KEY_ID / LITESTREAM_SECRET_ACCESS_KEY from `path` (KEY=VALUE lines), made once."""
    if not path.exists():
        key_id, secret = f"saga-{secrets.token_hex(4)}", secrets.token_urlsafe(30)
        lines = f"LITESTREAM_ACCESS_KEY_ID={key_id}\nLITESTREAM_SECRET_ACCESS_KEY={secret}\n"
        _write_private(path, lines.encode())
    pairs = (line.split("=", 1) for line in path.read_text().splitlines() if "=" in line)
    return {k.strip(): v.strip().encode() for k, v in pairs}


def _secret(name: str, namespace: str, data: Mapping[str, bytes], *, kind: str = "Opaque") -> str:
    """One Secret as a YAML document; the values base64 (so nothing needs quoting)."""
    lines = [
        "---",
        "apiVersion: v1",
        "kind: Secret",
        "metadata:",
        f"  name: {name}",
        f"  namespace: {namespace}",
        "  labels:",
        "    app.kubernetes.io/part-of: saga",
        "    app.kubernetes.io/managed-by: deploy.local",
        f"type: {kind}",
        "data:",
        *(f"  {key}: {base64.b64encode(value).decode()}" for key, value in sorted(data.items())),
    ]
    return "\n".join(lines) + "\n"


def _write_private(path: Path, data: bytes) -> None:
    tmp = path.with_name(f".{path.name}.tmp")
    fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
    with os.fdopen(fd, "wb") as f:
        f.write(data)
    os.replace(tmp, path)
