"""Auth policies for the local system with TLS (`python -m deploy.local --tls`, LocalSystem(tls=True)), written beside
the local CA, and bearer tokens for testing signed with a local key (PyJWT). The file format is common.auth's
(deploy/README.md, "Auth policy"); production policies are written by hand or by the deployment.

One policy per kind of process, each naming only who may call that process:

    auth-router.toml   spiffe://saga/client -> client, spiffe://saga/operator -> operator + client (sagactl places
                       test orders too), and bearer JWTs (ES256, aud "saga") checked with jwt.pem
    auth-shard.toml    spiffe://saga/<router> -> router, for every router of the system (router, router-2, ...: each
                       has a certificate of its own): a shard serves the routers only, which pass on the principal
                       they authenticated; a client's or an operator's certificate has no role there
    auth-stubs.toml    spiffe://saga/shard-* -> coordinator (the shop services), spiffe://saga/operator -> operator
                       (StubControl: ledgers and faults for tests and benchmarks)

    <dir>/jwt-signing-key.pem   the ES256 key that signs test tokens (mode 0600; never given to a process)
    <dir>/jwt.pem               its public half, the router's [jwt] key_file; replace it to rotate (re-read on change)
"""

from __future__ import annotations

import dataclasses
import os
import time
from collections.abc import Iterable, Sequence
from dataclasses import dataclass
from pathlib import Path

import jwt
from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.asymmetric import ec

from .certs import LAUNCHER, LocalCA, spiffe_id, tls_args
from .cluster import ClusterSpec, Ready, launcher_bin

JWT_AUDIENCE = "saga"
JWT_ISSUER = "deploy.local"
SIGNING_KEY = "jwt-signing-key.pem"
VERIFY_KEY = "jwt.pem"
KINDS = ("router", "shard", "stubs")
ROUTER_MODULE = "shard_router"
_KIND_BY_MODULE = {ROUTER_MODULE: "router", "service_stubs": "stubs"}


@dataclass(frozen=True)
class LocalPolicies:
    """Where the policies and the JWT keys of one local system are."""

    directory: Path

    def path(self, kind: str) -> Path:
        """The policy file of a process kind: router, shard or stubs."""
        if kind not in KINDS:
            raise ValueError(f"unknown process kind {kind!r}; known: {', '.join(KINDS)}")
        return self.directory / f"auth-{kind}.toml"

    def for_module(self, module: str) -> Path:
        """The policy of a process run as `python -m module` (anything else takes the coordinator's flags)."""
        return self.path(_KIND_BY_MODULE.get(module, "shard"))

    @property
    def signing_key(self) -> Path:
        return self.directory / SIGNING_KEY

    @property
    def verify_key(self) -> Path:
        return self.directory / VERIFY_KEY

    def token(self, sub: str, roles: Iterable[str], ttl_s: float = 3600) -> str:
        """A bearer JWT the router accepts: `sub` with `roles`, valid for ttl_s seconds."""
        return mint_token(self.signing_key, sub, roles, ttl_s)


def _identity(name: str, *roles: str) -> str:
    listed = ", ".join(f'"{r}"' for r in roles)
    return f'[[identity]]\nsan = "{spiffe_id(name)}"\nroles = [{listed}]\n'


def _policies(routers: Sequence[str]) -> dict[str, str]:
    header = "# Written by deploy.local (deploy/local/authpolicy.py); format: deploy/README.md, 'Auth policy'.\n\n"
    jwt_table = (
        f'[jwt]\nkey_file = "{VERIFY_KEY}"\nalgorithms = ["ES256"]\naudience = "{JWT_AUDIENCE}"\n'
        f'issuer = "{JWT_ISSUER}"\n'
    )
    return {
        "router": header + _identity("client", "client") + _identity("operator", "operator", "client") + jwt_table,
        # Every router of the system by name; the shards ask each other for their ring history (role coordinator).
        "shard": header + "".join(_identity(name, "router") for name in routers) + _identity("shard-*", "coordinator"),
        "stubs": header + _identity("shard-*", "coordinator") + _identity("operator", "operator"),
    }


def write_policies(directory: Path, *, routers: Iterable[str]) -> LocalPolicies:
    """Writes the three policies (rewritten each time: they are derived from the system) and a JWT key pair unless one
    is there. `routers` names every router of the system (its certificate's name): the shards' policy gives each of
    them the router role, and no one else."""
    names = tuple(routers)
    if not names:
        raise ValueError("a system has at least one router: the shards' policy would let no one in")
    policies = LocalPolicies(Path(directory).absolute())
    write_jwt_keys(policies.directory)
    for kind, text in _policies(names).items():
        _write(policies.path(kind), text.encode(), 0o644)
    return policies


def write_jwt_keys(directory: Path) -> None:
    """The bearer tokens' ES256 key pair in `directory` (SIGNING_KEY private, VERIFY_KEY public), unless there."""
    directory = Path(directory)
    directory.mkdir(parents=True, exist_ok=True)
    signing, verify = directory / SIGNING_KEY, directory / VERIFY_KEY
    if signing.exists() and verify.exists():
        return
    key = ec.generate_private_key(ec.SECP256R1())
    private = key.private_bytes(
        serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8, serialization.NoEncryption()
    )
    public = key.public_key().public_bytes(serialization.Encoding.PEM, serialization.PublicFormat.SubjectPublicKeyInfo)
    _write(signing, private, 0o600)
    _write(verify, public, 0o644)


def mint_token(signing_key: Path, sub: str, roles: Iterable[str], ttl_s: float = 3600, **claims: object) -> str:
    """A JWT (ES256) for `sub` with `roles`, audience "saga", expiring in ttl_s seconds, signed with signing_key."""
    key = serialization.load_pem_private_key(signing_key.read_bytes(), password=None)
    now = int(time.time())
    payload = {
        "sub": sub,
        "roles": list(roles),
        "aud": JWT_AUDIENCE,
        "iss": JWT_ISSUER,
        "iat": now,
        "exp": now + int(ttl_s),
        **claims,
    }
    return jwt.encode(payload, key, algorithm="ES256")  # type: ignore[arg-type]


def _write(path: Path, data: bytes, mode: int) -> None:
    """Write-then-rename: a process re-reading the file sees the old one or the new one."""
    tmp = path.with_name(f".{path.name}.tmp")
    fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, mode)
    with os.fdopen(fd, "wb") as f:
        f.write(data)
    os.replace(tmp, path)


def with_tls(cluster: ClusterSpec, ca: LocalCA) -> ClusterSpec:
    """The cluster with every gRPC process serving mutual TLS under its own name's certificate (issued if missing) and
    authenticating its callers with the local policy of its kind (deploy.local.authpolicy, written beside the CA; the
    shards' names every router the cluster lists),
    and the launcher's health checks presenting its own certificate (health is open to every certificate of the CA)."""
    # Each router has a certificate of its own (its process name), so the shards must know every one of them.
    routers = [p.name for p in cluster.processes if p.module == ROUTER_MODULE]
    policies = write_policies(ca.dir, routers=routers)
    for caller in ("operator", "client"):  # the callers the policies name, ready for sagactl and grpcurl
        ca.issue(caller)
    processes = tuple(
        dataclasses.replace(
            p,
            args=(*p.args, *tls_args(ca.issue(p.name).files), "--auth-policy", str(policies.for_module(p.module))),
        )
        if p.ready is Ready.GRPC
        else p  # not a gRPC server (a Litestream): nothing to secure, and none of these flags
        for p in cluster.processes
    )
    return dataclasses.replace(cluster, processes=processes, tls=ca.issue(LAUNCHER).files)


def client_commands(cluster: ClusterSpec) -> list[str]:
    """grpcurl and sagactl command lines that reach the cluster's first router, with the certificate flags its TLS
    needs (the client's certificate for PlaceOrder, the operator's for sagactl, as with_tls issues them): what the
    launcher prints once up."""
    router = next((p.listen for p in cluster.processes if p.module == ROUTER_MODULE), None)
    if router is None:
        return []
    bin_dir = launcher_bin()
    order = (
        """'{"order_id":"o-1","user_id":"alice","items":[{"item_id":"sku-1","quantity":2}],"""
        """"payment_info":{"payment_token":"tok_ok","amount_cents":2500,"currency":"EUR"}}'"""
    )
    place = f"-d {order} {router} saga.v1.SagaCoordinator/PlaceOrder"
    if cluster.tls is None or cluster.tls.ca is None:
        return [f"{bin_dir / 'grpcurl'} -plaintext {place}", f"{bin_dir / 'sagactl'} --router {router} list"]
    tls_dir = cluster.tls.ca.parent
    client, operator = (LocalCA(tls_dir).files(name) for name in ("client", "operator"))
    return [
        f"{bin_dir / 'grpcurl'} -cacert {client.ca} -cert {client.cert} -key {client.key} {place}",
        f"{bin_dir / 'sagactl'} --router {router} {' '.join(tls_args(operator))} list",
    ]
