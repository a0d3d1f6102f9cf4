"""sagactl: the operator's and developer's command line for the saga coordinator, talking gRPC to the router.

Modules: cli (arguments, commands, exit codes), client (the Python client library, sagaclient.SyncSagaClient, and how
its errors map to messages and exit codes), render (tables and JSON), top (the live terminal view), journals (each
shard's journal from its /metrics).
"""

from .cli import EXIT_CODES, main

__all__ = ["EXIT_CODES", "main"]
