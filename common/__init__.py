"""Process plumbing every saga process needs, written once: the coordinator shard, the router and the stubs all import
it, and it imports none of them (so no process package has to import another's internals).

Modules, one concept each:

    logs          setup() of loguru for a process; context_fields() tags every line of a block with fields
    metrics_http  MetricsServer: Prometheus /metrics over HTTP from a daemon thread
    rpc_errors    bad_request(): INVALID_ARGUMENT with a google.rpc.BadRequest naming the field
    tomlfile      read_toml(): a TOML file as a dict, read and parse errors wrapped in the caller's error type
    loops         run_every(): a supervised periodic loop that logs and survives failures and stops on cancel
    tls           TlsFiles and its flags (--tls-cert/--tls-key/--tls-ca/--insecure), server credentials reloaded from
                  disk, channel credentials (ClientTls), plaintext refused off loopback, the peer's certificate identity
    grpc_server   build_server(): ServerLimits applied and long-lived streams bounded per peer; listen(): TLS or
                  loopback plaintext
    metadata      gRPC metadata names both sides of a call must spell alike (IDEMPOTENCY_KEY)
"""

from .grpc_server import PeerStreamLimit, ServerLimits, build_server, listen
from .logs import add_context_fields, context_fields, setup
from .loops import run_every
from .metrics_http import MetricsServer
from .rpc_errors import bad_request
from .tls import (
    ClientTls,
    PlaintextRefused,
    TlsConfigError,
    TlsFiles,
    add_tls_arguments,
    peer_identity,
    server_credentials,
    tls_from_args,
)
from .tomlfile import TomlFileError, read_toml

__all__ = [
    "ClientTls",
    "MetricsServer",
    "PeerStreamLimit",
    "PlaintextRefused",
    "ServerLimits",
    "TlsConfigError",
    "TlsFiles",
    "TomlFileError",
    "add_context_fields",
    "add_tls_arguments",
    "bad_request",
    "build_server",
    "context_fields",
    "listen",
    "peer_identity",
    "read_toml",
    "run_every",
    "server_credentials",
    "setup",
    "tls_from_args",
]
