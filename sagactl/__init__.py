"""sagactl: the operator's and developer's command line for the saga coordinator, talking gRPC to the router.

Modules: cli (arguments, commands, exit codes), client (the gRPC calls and how their failures map to exit codes),
render (tables and JSON), top (the live terminal view).
"""

from .cli import EXIT_CODES, main

__all__ = ["EXIT_CODES", "main"]
