"""TLS for every gRPC hop, written once: the files a process is given (TlsFiles, from the same flags everywhere), the
server credentials (mutual TLS, certificate reloaded from disk without a restart), the channel credentials (and the
channels themselves, refused in plaintext off loopback), and the peer's identity for an authorisation interceptor.

The client side that any caller needs (TlsFiles, channel credentials from PEM, plaintext refused off loopback, the
channels) is sagaclient.credentials, so that the client library does not load this module's logging, metrics and X.509
parsing; this module re-exports it and adds what only the processes do: checking the files with `cryptography`, server
credentials, rotation, flags and the peer.

Server side, rotation is grpcio's own: dynamic_ssl_server_credentials calls our fetcher before every new handshake;
the fetcher stats the three files and re-reads them only when they changed (and only once cert and key match again,
so a rotation caught between writing the certificate and the key keeps the old pair until both are in place).
Connections already open keep the certificate they were made with.

Client side, grpcio (1.85) has no equivalent: a channel's credentials are fixed when it is created and every
reconnect uses them (grpc/grpc#15735 asks for it; the Python PR #41124 was closed unmerged). So the owners of
long-lived channels hold a ClientTls and call `changed()` (a stat at most once per check interval): when the files
changed they open new channels with `credentials()` and close the old ones after a grace period.

Plaintext stays the zero-config default on loopback. Off loopback a process serves (or dials) plaintext only with
--insecure, and says so in a warning on every start.
"""

from __future__ import annotations

import argparse
import os
import threading
import time
from collections.abc import Callable, Iterable, Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import grpc
from cryptography import x509
from cryptography.hazmat.primitives import serialization
from loguru import logger

from sagaclient.credentials import (
    PlaintextRefused,
    TlsConfigError,
    TlsFiles,
    aio_channel,
    check_plaintext,
    is_loopback,
    read_pem,
    ssl_credentials,
    sync_channel,
)

from . import tracing

__all__ = [
    "ClientTls",
    "PemBundle",
    "PlaintextRefused",
    "TlsConfigError",
    "TlsFiles",
    "add_tls_arguments",
    "aio_channel",
    "channel_credentials",
    "check_plaintext",
    "is_loopback",
    "load_pem",
    "peer_identities",
    "peer_identity",
    "peer_key",
    "server_credentials",
    "sync_channel",
    "tls_from_args",
]


@dataclass(frozen=True)
class PemBundle:
    """The three files' contents, checked to belong together."""

    cert: bytes
    key: bytes
    ca: bytes
    serial: int
    """Serial number of the leaf certificate (logged on reload, so a rotation is visible)."""


def load_pem(files: TlsFiles) -> PemBundle:
    """Reads and checks the files: PEM that parses, and a key that matches the certificate. TlsConfigError if not."""
    if not files.enabled:
        raise TlsConfigError("no TLS files configured")
    assert files.cert is not None and files.key is not None and files.ca is not None
    data = {
        what: read_pem(path, what)
        for what, path in (("certificate", files.cert), ("key", files.key), ("CA bundle", files.ca))
    }
    try:
        leaf = x509.load_pem_x509_certificate(data["certificate"])
    except ValueError:
        raise TlsConfigError(f"TLS certificate {files.cert} is not a PEM certificate") from None
    try:
        x509.load_pem_x509_certificates(data["CA bundle"])
    except ValueError:
        raise TlsConfigError(f"TLS CA bundle {files.ca} holds no PEM certificate") from None
    try:
        # The key's content must never reach a message: only its path is named.
        key = serialization.load_pem_private_key(data["key"], password=None)
    except (ValueError, TypeError):
        raise TlsConfigError(f"TLS key {files.key} is not an unencrypted PEM private key") from None
    public = serialization.PublicFormat.SubjectPublicKeyInfo
    if key.public_key().public_bytes(serialization.Encoding.DER, public) != leaf.public_key().public_bytes(
        serialization.Encoding.DER, public
    ):
        raise TlsConfigError(f"TLS key {files.key} does not match certificate {files.cert}")
    return PemBundle(data["certificate"], data["key"], data["CA bundle"], leaf.serial_number)


Fingerprint = tuple[tuple[int, int, int, int], ...]


def _fingerprint(files: TlsFiles) -> Fingerprint | None:
    """What changes when a file is rewritten or its symlink swapped (Kubernetes secret volumes); None if one is gone."""
    out = []
    for path in (files.cert, files.key, files.ca):
        assert path is not None
        try:
            st = os.stat(path)
        except OSError:
            return None
        out.append((st.st_dev, st.st_ino, st.st_mtime_ns, st.st_size))
    return tuple(out)


class _FileWatch:
    """The files' last good contents, re-read when their fingerprint changes. Thread-safe: the server fetcher runs on
    gRPC's threads."""

    def __init__(self, files: TlsFiles, role: str) -> None:
        self.files = files
        self._role = role
        self._lock = threading.Lock()
        self._seen = _fingerprint(files)
        self.pem = load_pem(files)
        self.generation = 0

    def refresh(self) -> bool:
        """Re-reads the files if they changed; True if a new, consistent set was loaded. A set that does not load (a
        rotation half done, a typo) keeps the old one and is tried again at the next change or call."""
        now = _fingerprint(self.files)
        if now is None or now == self._seen:
            return False
        with self._lock:
            if now == self._seen:
                return False
            try:
                pem = load_pem(self.files)
            except TlsConfigError as e:
                logger.warning("{} TLS files changed but cannot be used yet, keeping the old ones: {}", self._role, e)
                return False
            self._seen = now
            old, self.pem = self.pem.serial, pem
            self.generation += 1
        logger.info("{} TLS certificate reloaded: serial {:x} -> {:x}", self._role, old, pem.serial)
        return True


def server_credentials(files: TlsFiles) -> grpc.ServerCredentials:
    """Mutual TLS: clients must present a certificate chaining to files.ca. The certificate, key and CA are re-read
    when they change on disk (checked before each new handshake), so rotation needs no restart."""
    watch = _FileWatch(files, "server")

    def config(pem: PemBundle) -> grpc.ServerCertificateConfiguration:
        return grpc.ssl_server_certificate_configuration([(pem.key, pem.cert)], root_certificates=pem.ca)

    def fetch() -> grpc.ServerCertificateConfiguration | None:
        # Called by gRPC core before every handshake; None keeps the current configuration.
        try:
            return config(watch.pem) if watch.refresh() else None
        except Exception:  # an exception here would fail the handshake: keep serving the old certificate instead
            logger.exception("server TLS reload failed; keeping the current certificate")
            return None

    return grpc.dynamic_ssl_server_credentials(config(watch.pem), fetch, require_client_authentication=True)


def channel_credentials(files: TlsFiles) -> grpc.ChannelCredentials:
    """Mutual TLS as a client: present files.cert, trust servers whose certificate chains to files.ca."""
    pem = load_pem(files)
    return ssl_credentials(ca=pem.ca, cert=pem.cert, key=pem.key)


class ClientTls:
    """A process's client side: its channel credentials (None: plaintext) and whether the files changed since.

    Owners of long-lived channels call changed() often (it stats the files at most once per check_interval_s) and,
    when it says True, open new channels with credentials(): grpcio cannot swap a channel's certificate."""

    def __init__(
        self, files: TlsFiles, check_interval_s: float = 1.0, clock: Callable[[], float] = time.monotonic
    ) -> None:
        self.files = files
        self._interval_s = check_interval_s
        self._clock = clock
        self._next_check = clock() + check_interval_s
        self._watch = _FileWatch(files, "client") if files.enabled else None
        self._credentials = self._build()

    def _build(self) -> grpc.ChannelCredentials | None:
        if self._watch is None:
            return None
        pem = self._watch.pem
        return ssl_credentials(ca=pem.ca, cert=pem.cert, key=pem.key)

    def credentials(self) -> grpc.ChannelCredentials | None:
        return self._credentials

    def changed(self) -> bool:
        """True once after the files changed to a new consistent set (then credentials() returns the new ones)."""
        if self._watch is None:
            return False
        now = self._clock()
        if now < self._next_check:
            return False
        self._next_check = now + self._interval_s
        if not self._watch.refresh():
            return False
        self._credentials = self._build()
        return True

    def channel(self, address: str, options: Sequence[tuple[str, Any]] = (), traced: bool = True) -> grpc.aio.Channel:
        """A channel with this process's credentials; its calls are traced when tracing is on (common.tracing) and
        `traced` (False: the owner makes its own spans and puts their context in the calls' metadata)."""
        interceptors = tracing.client_interceptors() if traced else ()
        return aio_channel(address, self.files, options, credentials=self._credentials, interceptors=interceptors)


# ------------------------------------------------------------------ flags


def add_tls_arguments(parser: argparse.ArgumentParser, *, suppress_defaults: bool = False) -> None:
    """--tls-cert, --tls-key, --tls-ca and --insecure, spelled and explained the same in every process.
    suppress_defaults: for a subcommand's copy of flags its parent parser also takes (see sagactl)."""

    def default(value: object) -> object:
        return argparse.SUPPRESS if suppress_defaults else value

    g = parser.add_argument_group("TLS (mutual; plaintext only on loopback unless --insecure)")
    g.add_argument("--tls-cert", type=Path, default=default(None), help="PEM certificate chain this process presents")
    g.add_argument("--tls-key", type=Path, default=default(None), help="PEM private key of --tls-cert")
    g.add_argument("--tls-ca", type=Path, default=default(None), help="PEM CA bundle peers' certificates must chain to")
    g.add_argument(
        "--insecure",
        action="store_true",
        default=default(False),
        help="allow plaintext gRPC on non-loopback addresses (logged as a warning on every start)",
    )


def tls_from_args(ns: argparse.Namespace, fallback: TlsFiles | None = None) -> TlsFiles:
    """TlsFiles from add_tls_arguments' flags; a flag not given takes fallback's value (e.g. a config file's)."""
    base = fallback or TlsFiles()
    cert, key, ca = (getattr(ns, f"tls_{n}", None) for n in ("cert", "key", "ca"))
    return TlsFiles(
        cert=cert or base.cert,
        key=key or base.key,
        ca=ca or base.ca,
        insecure=bool(getattr(ns, "insecure", False)) or base.insecure,
    )


# ------------------------------------------------------------------ the peer


def _auth(context: Any) -> Mapping[str, Iterable[bytes]]:
    try:
        return context.auth_context() or {}
    except Exception:  # a context without a transport (in-process tests) has no auth context
        return {}


def peer_identities(context: Any) -> tuple[str, ...]:
    """The verified names in the peer's certificate, URI SANs (spiffe://saga/<role>) first, then DNS SANs; () for a
    plaintext peer. Only what the TLS handshake verified: never metadata the client wrote."""
    auth = _auth(context)
    uris = [v.decode() for v in auth.get("peer_uri", ())] if "peer_uri" in auth else []
    dns = [v.decode() for v in auth.get("peer_dns", ())] if "peer_dns" in auth else []
    if not uris and not dns:  # older cores expose only the combined SAN list
        sans = [v.decode() for v in auth.get("x509_subject_alternative_name", ())]
        uris = [s for s in sans if "://" in s]
        dns = [s for s in sans if "://" not in s]
    return tuple(uris + dns)


def peer_identity(context: Any) -> str | None:
    """The peer's principal: its first URI SAN (spiffe://saga/router), else its first DNS SAN; None in plaintext.
    For an authorisation interceptor: `peer_identity(context)` on a grpc.aio ServicerContext."""
    ids = peer_identities(context)
    return ids[0] if ids else None


def peer_key(context: Any) -> str:
    """Whom to count a per-peer limit against: the certificate identity, else the peer's IP address (not its port:
    one client opening many connections is still one client)."""
    ident = peer_identity(context)
    if ident is not None:
        return ident
    peer = str(context.peer() or "")
    kind, _, rest = peer.partition(":")
    if kind in ("ipv4", "ipv6"):
        return rest.rpartition(":")[0].strip("[]") or rest
    return peer
