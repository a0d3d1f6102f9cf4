"""A small HTTP/1.1 layer on asyncio streams for the dashboard: one request per connection, bounded sizes, JSON and
static bodies; and a GET client for scraping the shards' /metrics.

Why not a framework: the dashboard needs a handful of routes on the router's own event loop (its handlers call shards
through the router's gRPC channels), and the stdlib's http.server runs in threads. aiohttp or starlette would be a new
runtime dependency for ~150 lines. Every limit is named below; a request over one gets 4xx, never an unbounded buffer.
"""

from __future__ import annotations

import asyncio
import dataclasses
import json
from collections.abc import Awaitable, Callable
from dataclasses import dataclass, field
from http import HTTPStatus
from typing import Any
from urllib.parse import parse_qsl, unquote, urlsplit

from loguru import logger

MAX_HEAD_BYTES = 16 * 1024
"""Request line plus headers."""
MAX_BODY_BYTES = 64 * 1024
"""Request bodies are small JSON objects (a resolve reason)."""
READ_TIMEOUT_S = 10.0
"""A client that does not finish sending its request within this is dropped."""
"""Largest /metrics body read from a shard."""


@dataclass(frozen=True)
class Request:
    method: str
    path: str
    query: dict[str, str]
    headers: dict[str, str]
    body: bytes
    peer: str = ""
    """The client's IP address (what per-client limits count against)."""

    def json(self) -> Any:
        """The body as JSON; HttpError 400 if it is not."""
        try:
            return json.loads(self.body or b"{}")
        except ValueError:
            raise HttpError(HTTPStatus.BAD_REQUEST, "body: not valid JSON") from None


@dataclass(frozen=True)
class Response:
    status: int = 200
    body: bytes = b""
    content_type: str = "application/json"
    headers: dict[str, str] = field(default_factory=dict)

    @classmethod
    def of_json(cls, value: Any, status: int = 200) -> Response:
        return cls(status, json.dumps(value, separators=(",", ":")).encode())


class HttpError(Exception):
    """An answer other than 200, with a message for the caller (sent as {"error": message})."""

    def __init__(self, status: int, message: str) -> None:
        super().__init__(message)
        self.status = status
        self.message = message


Handler = Callable[[Request], Awaitable[Response]]


class HttpServer:
    """Serves handler on host:port until close()."""

    def __init__(self, handler: Handler) -> None:
        self._handler = handler
        self._server: asyncio.Server | None = None
        self.port = 0

    async def start(self, listen: str) -> int:
        host, _, port = listen.rpartition(":")
        self._server = await asyncio.start_server(self._serve, host, int(port), limit=MAX_HEAD_BYTES)
        self.port = int(self._server.sockets[0].getsockname()[1])
        return self.port

    async def close(self) -> None:
        if self._server is not None:
            self._server.close()
            await self._server.wait_closed()

    async def _serve(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        try:
            try:
                request = await asyncio.wait_for(_read_request(reader), READ_TIMEOUT_S)
                peername = writer.get_extra_info("peername")
                request = dataclasses.replace(request, peer=str(peername[0]) if peername else "")
                response = await self._handler(request)
            except HttpError as e:
                response = Response.of_json({"error": e.message}, e.status)
            except TimeoutError:
                response = Response.of_json({"error": "request not received in time"}, HTTPStatus.REQUEST_TIMEOUT)
            except Exception:
                logger.exception("dashboard handler failed")
                response = Response.of_json({"error": "internal error; see the router's log"}, 500)
            writer.write(_encode(response))
            await writer.drain()
        except (ConnectionError, asyncio.IncompleteReadError):
            pass
        finally:
            writer.close()
            try:
                await writer.wait_closed()
            except (ConnectionError, OSError):
                pass


async def _read_request(reader: asyncio.StreamReader) -> Request:
    try:
        head = await reader.readuntil(b"\r\n\r\n")
    except asyncio.LimitOverrunError:
        raise HttpError(HTTPStatus.REQUEST_HEADER_FIELDS_TOO_LARGE, "request head too large") from None
    lines = head.decode("latin-1").split("\r\n")
    parts = lines[0].split(" ")
    if len(parts) != 3 or not parts[2].startswith("HTTP/1."):
        raise HttpError(HTTPStatus.BAD_REQUEST, "malformed request line")
    method, target = parts[0], parts[1]
    headers: dict[str, str] = {}
    for line in lines[1:]:
        if line:
            name, sep, value = line.partition(":")
            if not sep:
                raise HttpError(HTTPStatus.BAD_REQUEST, "malformed header")
            headers[name.strip().lower()] = value.strip()
    length_text = headers.get("content-length", "0")
    if not length_text.isdigit():
        raise HttpError(HTTPStatus.BAD_REQUEST, "content-length: not a number")
    length = int(length_text)
    if length > MAX_BODY_BYTES:
        raise HttpError(HTTPStatus.REQUEST_ENTITY_TOO_LARGE, f"body larger than {MAX_BODY_BYTES} bytes")
    body = await reader.readexactly(length) if length else b""
    url = urlsplit(target)
    return Request(method, unquote(url.path), dict(parse_qsl(url.query)), headers, body)


# Sent with every answer unless the response names its own: nothing of it runs in a frame or leaks a referrer.
SECURITY_HEADERS = {
    "Content-Security-Policy": "default-src 'none'; frame-ancestors 'none'",
    "X-Frame-Options": "DENY",
    "Referrer-Policy": "no-referrer",
    "Cross-Origin-Opener-Policy": "same-origin",
    "Cross-Origin-Resource-Policy": "same-origin",
}


def _encode(response: Response) -> bytes:
    reason = HTTPStatus(response.status).phrase
    headers = {**SECURITY_HEADERS, **response.headers}
    head = [
        f"HTTP/1.1 {response.status} {reason}",
        f"Content-Type: {response.content_type}",
        f"Content-Length: {len(response.body)}",
        "Cache-Control: no-store",
        "X-Content-Type-Options: nosniff",
        "Connection: close",
        *(f"{k}: {v}" for k, v in headers.items()),
    ]
    return ("\r\n".join(head) + "\r\n\r\n").encode("latin-1") + response.body
