"""A TCP proxy for network-fault tests (asyncio, loopback): sits between a client (a shard) and a server (a stub
service) and, on command, delays, drops, resets or silently black-holes the connections through it.

    proxy = TcpProxy("127.0.0.1:50061")
    await proxy.start()                    # proxy.address is what the client dials
    proxy.set_mode(Mode.HALF_OPEN)         # every connection goes silent, no FIN, no RST: a dead peer
    proxy.set_mode(Mode.PASS)              # new connections work again; the silent ones stay silent
    await proxy.stop()

Modes:
- PASS: bytes flow both ways.
- DELAY: every chunk waits `delay_ms` (plus up to `jitter_ms`) before it is forwarded, in order.
- DROP: open connections are closed (FIN) and new ones are closed as soon as they are accepted: a refused route.
- RESET: open connections are aborted with RST (SO_LINGER 0), and so are new ones.
- HALF_OPEN: open connections stop forwarding and are never closed by the proxy; new connections are accepted and get
  the same treatment. Only the client noticing (keepalive, deadline) ends them: what a crashed host or a silently
  dropped NAT entry looks like. Switching back to PASS does not revive them: a half-open connection stays dead.
"""

from __future__ import annotations

import asyncio
import enum
import random
import socket
import struct
import time
from collections import Counter
from dataclasses import dataclass, field

from tests.helpers.net import free_port

_CHUNK = 64 * 1024


class Mode(enum.Enum):
    PASS = "pass"
    DELAY = "delay"
    DROP = "drop"
    RESET = "reset"
    HALF_OPEN = "half_open"


@dataclass(eq=False)
class _Conn:
    client: asyncio.StreamWriter
    upstream: asyncio.StreamWriter | None = None
    dead: bool = False
    """Half-open: nothing is forwarded any more, and the proxy never closes it."""
    silenced_at: float = 0.0
    born_silent: bool = False
    """Accepted while half-open: TCP connected, but the HTTP/2 handshake never completes."""
    tasks: list[asyncio.Task[None]] = field(default_factory=list)


def _rst(writer: asyncio.StreamWriter) -> None:
    sock = writer.get_extra_info("socket")
    if sock is not None:
        try:
            sock.setsockopt(socket.SOL_SOCKET, socket.SO_LINGER, struct.pack("ii", 1, 0))
        except OSError:
            pass
    writer.transport.abort()


class TcpProxy:
    def __init__(self, upstream: str, *, seed: int = 0, delay_ms: int = 50, jitter_ms: int = 50) -> None:
        host, _, port = upstream.rpartition(":")
        self.upstream_host, self.upstream_port = host, int(port)
        self.port = free_port()
        self.mode = Mode.PASS
        self.delay_ms = delay_ms
        self.jitter_ms = jitter_ms
        self._rng = random.Random(seed)
        self._server: asyncio.Server | None = None
        self._conns: set[_Conn] = set()
        self.detect_s: list[float] = []
        """For each established connection silenced and then closed by its client: seconds from silence to close."""
        self.detect_new_s: list[float] = []
        """The same for connections accepted while half-open (no handshake ever completes on them)."""
        self.stats: Counter[str] = Counter()
        """accepted, dropped, reset, silenced, client_closed_silent (a client gave up on a silent connection)."""

    @property
    def address(self) -> str:
        return f"127.0.0.1:{self.port}"

    async def start(self) -> None:
        self._server = await asyncio.start_server(self._handle, "127.0.0.1", self.port)

    async def stop(self) -> None:
        if self._server is not None:
            self._server.close()
        for conn in list(self._conns):
            self._close(conn, rst=True)
        for conn in list(self._conns):
            for t in conn.tasks:
                t.cancel()
        if self._server is not None:
            await self._server.wait_closed()

    def set_mode(self, mode: Mode) -> None:
        """Applies to new connections, and to open ones as the mode says (see the module docstring)."""
        self.mode = mode
        for conn in list(self._conns):
            if conn.dead:
                continue
            if mode is Mode.DROP:
                self.stats["dropped"] += 1
                self._close(conn, rst=False)
            elif mode is Mode.RESET:
                self.stats["reset"] += 1
                self._close(conn, rst=True)
            elif mode is Mode.HALF_OPEN:
                self._silence(conn)

    def _silence(self, conn: _Conn) -> None:
        self.stats["silenced"] += 1
        conn.dead = True
        conn.silenced_at = time.monotonic()

    def silent_open(self) -> int:
        """Silenced connections no client has closed yet."""
        return sum(1 for c in self._conns if c.dead)

    def open_connections(self) -> int:
        return len(self._conns)

    def _close(self, conn: _Conn, rst: bool) -> None:
        for w in (conn.client, conn.upstream):
            if w is None or w.is_closing():
                continue
            if rst:
                _rst(w)
            else:
                w.close()
        self._conns.discard(conn)

    async def _handle(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        self.stats["accepted"] += 1
        conn = _Conn(writer)
        mode = self.mode
        if mode is Mode.DROP:
            self.stats["dropped"] += 1
            writer.close()
            return
        if mode is Mode.RESET:
            self.stats["reset"] += 1
            _rst(writer)
            return
        self._conns.add(conn)
        if mode is Mode.HALF_OPEN:
            conn.born_silent = True
            self._silence(conn)
        else:
            try:
                up_reader, conn.upstream = await asyncio.open_connection(self.upstream_host, self.upstream_port)
            except OSError:
                self._close(conn, rst=True)
                return
            conn.tasks.append(asyncio.create_task(self._pump(conn, up_reader, writer, from_client=False)))
        await self._pump(conn, reader, conn.upstream, from_client=True)

    async def _pump(
        self, conn: _Conn, reader: asyncio.StreamReader, writer: asyncio.StreamWriter | None, from_client: bool
    ) -> None:
        try:
            while True:
                data = await reader.read(_CHUNK)
                if not data:
                    break
                if conn.dead or writer is None:
                    continue  # swallowed: the peer is "gone" but nobody tells the sender
                if self.mode is Mode.DELAY:
                    await asyncio.sleep((self.delay_ms + self._rng.uniform(0, self.jitter_ms)) / 1000)
                if conn.dead:
                    continue
                writer.write(data)
                await writer.drain()
        except (ConnectionError, OSError, asyncio.CancelledError):
            pass
        finally:
            if conn.dead and not from_client:
                pass  # the server side of a silenced connection: nothing to report
            elif conn.dead:
                # The client closed a connection that had gone silent: keepalive (or its own deadline) noticed.
                if conn in self._conns:
                    self.stats["client_closed_silent"] += 1
                    waited = time.monotonic() - conn.silenced_at
                    (self.detect_new_s if conn.born_silent else self.detect_s).append(waited)
                    self._conns.discard(conn)
                    for w in (conn.client, conn.upstream):
                        if w is not None and not w.is_closing():
                            w.close()
            elif conn in self._conns:
                self._close(conn, rst=False)


__all__ = ["Mode", "TcpProxy"]
