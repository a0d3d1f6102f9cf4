"""The Prometheus /metrics endpoint of a process.

Contract: MetricsServer(listen, registry) serves `registry` as Prometheus text on GET /metrics at host:port (port 0: any
free port, then read .port) from prometheus-client's own daemon thread, which never touches the event loop, so a scrape
costs the process's loop nothing but the collectors it runs. Each process passes a registry of its own (several servers
may share a test process). close() stops serving and releases the port; it blocks for up to the HTTP server's poll
interval (0.5 s), so call it from a thread (asyncio.to_thread) where the loop must not stall.
"""

from __future__ import annotations

import threading
from wsgiref.simple_server import WSGIServer

from prometheus_client import CollectorRegistry, start_http_server

_JOIN_TIMEOUT_S = 5.0
"""Bound on waiting for the serving thread once its server is shut down (it ends at once unless a scrape hangs)."""


class MetricsServer:
    """GET /metrics of one registry, served until close(). Raises OSError if it cannot listen."""

    def __init__(self, listen: str, registry: CollectorRegistry) -> None:
        host, _, port = listen.rpartition(":")
        self.registry = registry
        self._server: WSGIServer
        self._thread: threading.Thread
        self._server, self._thread = start_http_server(int(port), addr=host, registry=registry)

    @property
    def port(self) -> int:
        """The bound port (the one asked for, or the one picked for port 0)."""
        return int(self._server.server_port)

    def close(self) -> None:
        self._server.shutdown()
        self._server.server_close()
        self._thread.join(timeout=_JOIN_TIMEOUT_S)
