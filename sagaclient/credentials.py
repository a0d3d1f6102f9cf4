"""What a client presents and what it refuses, with nothing server-side: the TLS files it is given (TlsFiles, the same
three files and rules as every saga process), channel credentials from PEM files or bytes (ssl_credentials), the bearer
token's file and metadata, and channels that are refused in plaintext off loopback.

Only grpc and the standard library: a client importing this loads no logging, metrics or X.509 parsing. The processes'
TLS (common.tls) builds on this module and adds what only they need: server credentials reloaded from disk, client
credentials that follow a rotation, the certificate checks that need `cryptography`, the flags, the peer's identity.
Files given by path are checked to hold PEM and a key that matches its certificate (the standard library's ssl).

A channel of your own, e.g. with PEM bytes from a secret store and no client certificate:

    channel = grpc.aio.secure_channel(address, ssl_credentials(ca=ca_pem))
    client = SagaClient(channel, token=token)
"""

from __future__ import annotations

import ipaddress
import ssl
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import grpc

__all__ = [
    "PlaintextRefused",
    "TlsConfigError",
    "TlsFiles",
    "aio_channel",
    "bearer_metadata",
    "check_plaintext",
    "is_loopback",
    "read_pem",
    "read_token_file",
    "ssl_credentials",
    "sync_channel",
]


class TlsConfigError(ValueError):
    """TLS files missing, unreadable, mismatched or only partly given; the message names the file or flag."""


class PlaintextRefused(TlsConfigError):
    """Plaintext gRPC to or from a non-loopback address without --insecure."""


@dataclass(frozen=True)
class TlsFiles:
    """The TLS files a process is given (--tls-cert, --tls-key, --tls-ca), or none of them (plaintext)."""

    cert: Path | None = None
    """PEM certificate chain this process presents, as a server and as a client."""
    key: Path | None = None
    """PEM private key of `cert`."""
    ca: Path | None = None
    """PEM CA bundle that peers' certificates must chain to (clients of a server, servers a client dials)."""
    insecure: bool = False
    """Without TLS files: allow plaintext on non-loopback addresses too (a warning is logged on every start)."""

    def __post_init__(self) -> None:
        given = [n for n in ("cert", "key", "ca") if getattr(self, n) is not None]
        if given and len(given) != 3:
            missing = [n for n in ("cert", "key", "ca") if n not in given]
            flags = ", ".join(f"--tls-{n}" for n in missing)
            raise TlsConfigError(f"TLS needs --tls-cert, --tls-key and --tls-ca together; missing {flags}")
        if given and self.insecure:
            raise TlsConfigError("--insecure and --tls-* contradict each other: give one or the other")

    @property
    def enabled(self) -> bool:
        return self.cert is not None


def read_pem(path: Path, what: str) -> bytes:
    """A TLS file's bytes; TlsConfigError naming the file (`what`: "certificate", "key", "CA bundle") if unreadable."""
    try:
        return path.read_bytes()
    except OSError as e:
        raise TlsConfigError(f"cannot read TLS {what} {path}: {e.strerror or e}") from None


def _pem(source: Path | bytes | None, what: str) -> bytes | None:
    if source is None:
        return None
    data = source if isinstance(source, bytes) else read_pem(source, what)
    if b"-----BEGIN " not in data:
        # The content never reaches a message (it may be a key): only where it came from.
        where = f" {source}" if isinstance(source, Path) else " (bytes)"
        raise TlsConfigError(f"TLS {what}{where} is not PEM")
    return data


def ssl_credentials(
    *, ca: Path | bytes | None = None, cert: Path | bytes | None = None, key: Path | bytes | None = None
) -> grpc.ChannelCredentials:
    """TLS channel credentials from PEM, each given as bytes or as the path of a file: trust servers whose certificate
    chains to `ca` (None: the system's roots) and, with `cert` and `key` (both or neither), present that certificate
    (mutual TLS, as the router asks of its clients). TlsConfigError naming what cannot be read or is not PEM."""
    if (cert is None) != (key is None):
        raise TlsConfigError("a client certificate needs its key: give cert and key together, or neither")
    if isinstance(cert, Path) and isinstance(key, Path):
        _check_pair(cert, key)
    return grpc.ssl_channel_credentials(
        root_certificates=_pem(ca, "CA bundle"),
        private_key=_pem(key, "key"),
        certificate_chain=_pem(cert, "certificate"),
    )


def _check_pair(cert: Path, key: Path) -> None:
    """The key belongs to the certificate (the standard library's OpenSSL, no `cryptography`): a mismatch found here
    names the files, where the handshake would only say UNAVAILABLE. An encrypted key is refused, never prompted for:
    gRPC cannot use one either."""
    context = ssl.SSLContext(ssl.PROTOCOL_TLS_CLIENT)
    try:
        context.load_cert_chain(cert, key, password=lambda: b"")
    except ssl.SSLError:  # an OSError too: first
        raise TlsConfigError(
            f"TLS key {key} does not match certificate {cert} (or is encrypted, or either is not PEM)"
        ) from None
    except OSError as e:
        raise TlsConfigError(f"cannot read TLS certificate {cert} or key {key}: {e.strerror or e}") from None


def is_loopback(host: str) -> bool:
    """127.0.0.0/8, ::1 and the name localhost. A wildcard (0.0.0.0, ::, empty) or any other name is not."""
    host = host.strip("[]")
    if host == "localhost":
        return True
    try:
        return ipaddress.ip_address(host).is_loopback
    except ValueError:
        return False


def check_plaintext(address: str, files: TlsFiles, what: str) -> None:
    """Raises PlaintextRefused if `address` is served or dialled in plaintext off loopback without --insecure."""
    if files.enabled or files.insecure:
        return
    host = address.rpartition(":")[0]
    if not is_loopback(host):
        raise PlaintextRefused(
            f"refusing plaintext gRPC {what} {address}: not a loopback address. Give --tls-cert, --tls-key and "
            "--tls-ca, or --insecure to allow plaintext on the network"
        )


def aio_channel(
    address: str,
    files: TlsFiles,
    options: Sequence[tuple[str, Any]] = (),
    credentials: grpc.ChannelCredentials | None = None,
    interceptors: Sequence[grpc.aio.ClientInterceptor] = (),
) -> grpc.aio.Channel:
    """A grpc.aio channel to address: mutual TLS when files are given (credentials, if passed, saves re-reading
    them), else plaintext, refused off loopback without --insecure. `interceptors` wrap every call."""
    chain = list(interceptors) or None
    if not files.enabled:
        check_plaintext(address, files, "to")
        return grpc.aio.insecure_channel(address, options=options, interceptors=chain)
    creds = credentials or ssl_credentials(ca=files.ca, cert=files.cert, key=files.key)
    return grpc.aio.secure_channel(address, creds, options=options, interceptors=chain)


def sync_channel(
    address: str,
    files: TlsFiles,
    options: Sequence[tuple[str, Any]] = (),
    credentials: grpc.ChannelCredentials | None = None,
) -> grpc.Channel:
    """The blocking-API twin of aio_channel (SyncSagaClient, sagactl, the launcher's health checks)."""
    if not files.enabled:
        check_plaintext(address, files, "to")
        return grpc.insecure_channel(address, options=options)
    creds = credentials or ssl_credentials(ca=files.ca, cert=files.cert, key=files.key)
    return grpc.secure_channel(address, creds, options=options)


def read_token_file(path: Path) -> str:
    """The bearer token in a file: its first line, whitespace stripped. ValueError naming the file, never the token."""
    try:
        lines = path.read_text().strip().splitlines()
    except (OSError, UnicodeDecodeError) as e:
        raise ValueError(f"cannot read token file {path}: {getattr(e, 'strerror', None) or 'not text'}") from None
    token = lines[0].strip() if lines else ""
    if not token or any(c.isspace() for c in token):
        raise ValueError(f"token file {path} holds no token (one line: the token itself)")
    return token


def bearer_metadata(token: str | None) -> tuple[tuple[str, str], ...]:
    """The call metadata that presents a bearer token (none without one). Metadata rather than grpc's call
    credentials, which grpc sends only over TLS: a token also works in plaintext on loopback (`make run`)."""
    return (("authorization", f"Bearer {token}"),) if token else ()
