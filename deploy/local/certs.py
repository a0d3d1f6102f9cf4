"""A certificate authority for development and tests: one CA under a directory and a certificate per process, made with
`cryptography` (no openssl shell-outs). Production certificates come from cert-manager or the like; only the file
names (flags --tls-cert/--tls-key/--tls-ca) are shared with this module.

    <dir>/ca.pem, <dir>/ca-key.pem         the CA (its key never leaves this directory)
    <dir>/<name>.pem, <dir>/<name>-key.pem  one process's certificate and key

Every certificate names its process the way an authorisation interceptor reads it back (common.tls.peer_identity):
URI SAN spiffe://saga/<name> (router, shard-1, stubs, operator, client, ...), plus DNS localhost and IP 127.0.0.1 so
the same certificate serves loopback addresses. Each is valid for both server and client authentication: our processes
are both (a shard serves the router and calls the stubs).
"""

from __future__ import annotations

import datetime
import ipaddress
import os
import re
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path

from cryptography import x509
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec
from cryptography.x509.oid import ExtendedKeyUsageOID, NameOID

from common.tls import TlsFiles

from .cluster import ClusterSpec, Ready

SPIFFE_TRUST_DOMAIN = "saga"
CA_VALID_DAYS = 3650
"""A development CA outlives any local data directory."""
LEAF_VALID_DAYS = 365
_NAME = re.compile(r"^[A-Za-z0-9._-]{1,64}$")


def spiffe_id(name: str) -> str:
    """The URI SAN of process `name`: spiffe://saga/<name>."""
    return f"spiffe://{SPIFFE_TRUST_DOMAIN}/{name}"


@dataclass(frozen=True)
class Issued:
    files: TlsFiles
    serial: int


class LocalCA:
    """The CA in `directory`, created on first use; issue() writes (or reuses) one process's certificate."""

    def __init__(self, directory: Path) -> None:
        self.dir = Path(directory).absolute()
        self.ca_path = self.dir / "ca.pem"
        self._ca_key_path = self.dir / "ca-key.pem"

    def ensure(self) -> None:
        """Creates the CA unless the directory holds one."""
        if self.ca_path.exists() and self._ca_key_path.exists():
            return
        self.dir.mkdir(parents=True, exist_ok=True)
        key = ec.generate_private_key(ec.SECP256R1())
        name = x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, f"saga local CA ({self.dir.name})")])
        now = datetime.datetime.now(datetime.UTC)
        cert = (
            x509.CertificateBuilder()
            .subject_name(name)
            .issuer_name(name)
            .public_key(key.public_key())
            .serial_number(x509.random_serial_number())
            .not_valid_before(now - datetime.timedelta(minutes=5))
            .not_valid_after(now + datetime.timedelta(days=CA_VALID_DAYS))
            .add_extension(x509.BasicConstraints(ca=True, path_length=0), critical=True)
            .add_extension(
                x509.KeyUsage(
                    digital_signature=False,
                    content_commitment=False,
                    key_encipherment=False,
                    data_encipherment=False,
                    key_agreement=False,
                    key_cert_sign=True,
                    crl_sign=True,
                    encipher_only=False,
                    decipher_only=False,
                ),
                critical=True,
            )
            .add_extension(x509.SubjectKeyIdentifier.from_public_key(key.public_key()), critical=False)
            .sign(key, hashes.SHA256())
        )
        _write(self._ca_key_path, _key_pem(key), private=True)
        _write(self.ca_path, cert.public_bytes(serialization.Encoding.PEM))

    def files(self, name: str) -> TlsFiles:
        """Where process `name`'s certificate, key and the CA bundle are (whether or not issued yet)."""
        _check_name(name)
        return TlsFiles(cert=self.dir / f"{name}.pem", key=self.dir / f"{name}-key.pem", ca=self.ca_path)

    def issue(
        self, name: str, *, renew: bool = False, valid_days: int = LEAF_VALID_DAYS, dns: Sequence[str] = ()
    ) -> Issued:
        """Process `name`'s certificate: reused if present, else (or with renew=True) a new one with a new serial,
        written cert-then-key each by rename so a reader never sees half a file. `dns`: DNS SANs besides localhost
        (the names peers dial in a cluster)."""
        self.ensure()
        files = self.files(name)
        assert files.cert is not None and files.key is not None
        if not renew and files.cert.exists() and files.key.exists():
            return Issued(files, x509.load_pem_x509_certificate(files.cert.read_bytes()).serial_number)
        ca_cert = x509.load_pem_x509_certificate(self.ca_path.read_bytes())
        ca_key = serialization.load_pem_private_key(self._ca_key_path.read_bytes(), password=None)
        assert isinstance(ca_key, ec.EllipticCurvePrivateKey)
        key = ec.generate_private_key(ec.SECP256R1())
        now = datetime.datetime.now(datetime.UTC)
        serial = x509.random_serial_number()
        cert = (
            x509.CertificateBuilder()
            .subject_name(x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, name)]))
            .issuer_name(ca_cert.subject)
            .public_key(key.public_key())
            .serial_number(serial)
            .not_valid_before(now - datetime.timedelta(minutes=5))
            .not_valid_after(now + datetime.timedelta(days=valid_days))
            .add_extension(x509.BasicConstraints(ca=False, path_length=None), critical=True)
            .add_extension(
                x509.SubjectAlternativeName(
                    [
                        x509.UniformResourceIdentifier(spiffe_id(name)),
                        *(x509.DNSName(d) for d in (*dns, "localhost")),
                        x509.IPAddress(ipaddress.ip_address("127.0.0.1")),
                    ]
                ),
                critical=False,
            )
            .add_extension(
                x509.ExtendedKeyUsage([ExtendedKeyUsageOID.SERVER_AUTH, ExtendedKeyUsageOID.CLIENT_AUTH]),
                critical=False,
            )
            .add_extension(
                x509.AuthorityKeyIdentifier.from_issuer_public_key(ca_key.public_key()),
                critical=False,
            )
            .sign(ca_key, hashes.SHA256())
        )
        _write(files.cert, cert.public_bytes(serialization.Encoding.PEM))
        _write(files.key, _key_pem(key), private=True)
        return Issued(files, serial)


def _check_name(name: str) -> None:
    if not _NAME.match(name):
        raise ValueError(f"certificate name must be 1-64 characters of [A-Za-z0-9._-], got {name!r}")


def _key_pem(key: ec.EllipticCurvePrivateKey) -> bytes:
    return key.private_bytes(
        serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8, serialization.NoEncryption()
    )


def _write(path: Path, data: bytes, *, private: bool = False) -> None:
    """Write-then-rename (as cert-manager's volume swap does): a reader sees the old file or the new one."""
    tmp = path.with_name(f".{path.name}.tmp")
    fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600 if private else 0o644)
    with os.fdopen(fd, "wb") as f:
        f.write(data)
    os.replace(tmp, path)


LAUNCHER = "launcher"
"""The identity the launcher's health checks present."""
CALLERS = ("operator", "client", LAUNCHER)
"""Certificates for callers of the system rather than its processes: sagactl, a client, the launcher's health checks."""


def default_names(cluster: ClusterSpec) -> list[str]:
    """What `python -m deploy.local certs` issues by default: every gRPC process of the cluster file (each router
    included), then CALLERS."""
    return [p.name for p in cluster.processes if p.ready is Ready.GRPC] + list(CALLERS)


def tls_args(files: TlsFiles) -> list[str]:
    """The flags every process takes for its TLS files (common.tls.add_tls_arguments)."""
    return ["--tls-cert", str(files.cert), "--tls-key", str(files.key), "--tls-ca", str(files.ca)]
