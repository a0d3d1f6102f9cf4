"""Process plumbing every saga process needs, written once: the coordinator shard, the router and the stubs all import
it, and it imports none of them (so no process package has to import another's internals).

Modules, one concept each:

    logs          setup() of loguru for a process; context_fields() tags every line of a block with fields
    metrics_http  MetricsServer: Prometheus /metrics over HTTP from a daemon thread
    rpc_errors    bad_request(): INVALID_ARGUMENT with a google.rpc.BadRequest naming the field
    tomlfile      read_toml(): a TOML file as a dict, read and parse errors wrapped in the caller's error type
    loops         run_every(): a supervised periodic loop that logs and survives failures and stops on cancel
"""

from .logs import add_context_fields, context_fields, setup
from .loops import run_every
from .metrics_http import MetricsServer
from .rpc_errors import bad_request
from .tomlfile import TomlFileError, read_toml

__all__ = [
    "MetricsServer",
    "TomlFileError",
    "add_context_fields",
    "bad_request",
    "context_fields",
    "read_toml",
    "run_every",
    "setup",
]
