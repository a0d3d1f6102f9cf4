"""The local launcher: `python -m deploy.local` runs stubs, shards and router on one machine (see cluster.toml), and
tests and benchmarks start the same system in code (LocalSystem: free ports, options instead of a copy per caller)."""

from .cluster import DEFAULT_CONFIG, ClusterConfigError, ClusterSpec, ProcessSpec, load
from .supervisor import Child, LaunchError, Supervisor
from .system import SERVICES, LocalSystem, SystemOptions, free_port

__all__ = [
    "DEFAULT_CONFIG",
    "SERVICES",
    "Child",
    "ClusterConfigError",
    "ClusterSpec",
    "LaunchError",
    "LocalSystem",
    "ProcessSpec",
    "Supervisor",
    "SystemOptions",
    "free_port",
    "load",
]
