"""The server's front door: who may call, how much they may send, and how long they may stall.

Everything here runs before a route sees the request, so a hostile or careless client costs no more
than its headers and a bounded body:

- `Host` must name this machine when the server listens on loopback (a page that re-binds its DNS
  name to 127.0.0.1 cannot reach it), and a browser's `Origin` must be the server's own page or one
  listed in `--cors_origins`: other web pages cannot drive a local server.
- The API key is checked before the body is read (`Authorization: Bearer KEY`; WebSockets, which
  browsers cannot give headers, may send `?api_key=`).
- Bodies are counted as they arrive (`--max_body_mb`) and must arrive within `--read_timeout`; a
  POST must be JSON in valid UTF-8.
- A client that leaves the server's writes unread for `--send_timeout` is cut off, which ends its
  stream and frees its slot.
"""

from __future__ import annotations

import asyncio
import hmac
import ipaddress
import logging
from collections.abc import Mapping
from typing import Any
from urllib.parse import parse_qs, urlsplit

from fastapi import WebSocket
from fastapi.responses import JSONResponse

from llmvox.errors import LLMVoXError
from llmvox.server.settings import ServerSettings

log = logging.getLogger("llmvox.server")

# Paths anyone may read: the page and its files, readiness, the page's setup call, the API schema.
PUBLIC_PATHS = frozenset({"/", "/health", "/v1/info", "/docs", "/docs/oauth2-redirect", "/redoc",
                          "/openapi.json", "/favicon.ico"})
PUBLIC_PREFIXES = ("/ui/",)
LOOPBACK_NAMES = frozenset({"localhost", "127.0.0.1", "::1"})
BODY_METHODS = frozenset({"POST", "PUT", "PATCH"})


class ClientStalled(Exception):
    """The client did not take the server's writes within --send_timeout."""


def header_map(scope: Mapping[str, Any]) -> dict[str, str]:
    """An ASGI scope's headers as a lower-case dict (the last value wins)."""
    return {k.decode("latin-1").lower(): v.decode("latin-1") for k, v in scope.get("headers") or []}


def check_api_key(headers: Mapping[str, str], settings: ServerSettings, query_key: str | None = None) -> None:
    """Raise 401 unless the request carries the configured key."""
    key = settings.api_key
    if not key:
        return
    scheme, _, given = headers.get("authorization", "").partition(" ")
    if scheme.lower() != "bearer" or not given:
        given = query_key or ""
    if not given:
        raise LLMVoXError("missing API key: send the header 'Authorization: Bearer YOUR_KEY'", 401, code="missing_api_key")
    if not hmac.compare_digest(given.strip().encode(), key.encode()):
        raise LLMVoXError("invalid API key", 401, code="invalid_api_key")


def _is_loopback(host: str) -> bool:
    if host in LOOPBACK_NAMES:
        return True
    try:
        return ipaddress.ip_address(host).is_loopback
    except ValueError:
        return False


def _hostname(netloc: str) -> str:
    return (urlsplit(f"//{netloc}").hostname or "").lower()


def check_origin(headers: Mapping[str, str], settings: ServerSettings) -> None:
    """Raise unless `Host` may reach this server and `Origin` (when a browser sends one) is allowed."""
    host = headers.get("host", "")
    if _is_loopback(settings.host) and not _is_loopback(_hostname(host)):
        raise LLMVoXError(f"this server listens on loopback and answers only to localhost, not {host!r} "
                            "(start it with --api_host 0.0.0.0 to serve other names)", 421, code="host_not_allowed")
    origin = headers.get("origin")
    if not origin:
        return  # not a web page: curl, SDKs, the server's own page navigating
    allowed = settings.cors_origins
    if "*" in allowed or origin.rstrip("/") in allowed or urlsplit(origin).netloc == host:
        return
    raise LLMVoXError(f"requests from the web page at {origin!r} are not allowed; list it in --cors_origins "
                        "to let that page use this server", 403, code="origin_not_allowed")


def is_public(path: str) -> bool:
    return path in PUBLIC_PATHS or path.startswith(PUBLIC_PREFIXES)


async def deny_websocket(ws: WebSocket, exc: LLMVoXError) -> None:
    """An HTTP error instead of the handshake where the server supports it; else accept, explain, close."""
    try:
        await ws.send_denial_response(JSONResponse(exc.body(), status_code=exc.http_status, headers=exc.headers))
    except RuntimeError:
        await ws.accept()
        await ws.send_json({"type": "error", "code": exc.code, "message": exc.message})
        await ws.close(code=1008 if exc.http_status in (400, 401, 403, 421) else 1013)


class RequestGuard:
    """Pure ASGI middleware: the checks above, then the app with a replayed body and timed writes."""

    def __init__(self, app, settings: ServerSettings, metrics_getter=None) -> None:
        self.app = app
        self.settings = settings
        self._metrics = metrics_getter

    async def __call__(self, scope, receive, send) -> None:
        kind = scope["type"]
        if kind not in ("http", "websocket"):
            await self.app(scope, receive, send)
            return
        headers = header_map(scope)
        try:
            check_origin(headers, self.settings)
            if kind == "websocket" or not is_public(scope["path"]):
                query = parse_qs(scope.get("query_string", b"").decode("latin-1")).get("api_key", [None])[0]
                check_api_key(headers, self.settings, query if kind == "websocket" else None)
            if kind == "http" and scope["method"] in BODY_METHODS:
                body = await self._read_body(headers, receive)
                receive = _replay(body, receive)
        except LLMVoXError as exc:
            self._count(scope, exc.http_status)
            log.info("%s %s refused: %s %s", scope.get("method", "WS"), scope["path"], exc.http_status, exc.message)
            if kind == "websocket":
                await deny_websocket(WebSocket(scope, receive, send), exc)
            else:
                await JSONResponse(exc.body(), status_code=exc.http_status, headers=exc.headers)(scope, receive, send)
            return
        try:
            await self.app(scope, receive, self._timed(send))
        except ClientStalled as exc:
            self._count(scope, 408)
            log.info("%s %s: %s; connection dropped", scope.get("method", "WS"), scope["path"], exc)

    async def _read_body(self, headers: Mapping[str, str], receive) -> bytes:
        limit = self.settings.max_body_bytes
        close = {"Connection": "close"}
        declared = headers.get("content-length")
        if declared is not None and declared.isdigit() and int(declared) > limit:
            raise LLMVoXError(f"the request body is {int(declared):,} bytes; the limit is {limit:,} "
                                "(--max_body_mb)", 413, code="body_too_large", headers=close)
        content_type = headers.get("content-type", "").split(";", 1)[0].strip().lower()
        if content_type and content_type != "application/json" and not content_type.endswith("+json"):
            raise LLMVoXError(f"send the body as JSON with 'Content-Type: application/json' (got {content_type!r})", 415,
                           code="unsupported_media_type", headers=close)
        chunks: list[bytes] = []
        size = 0
        try:
            async with asyncio.timeout(self.settings.read_timeout):
                while True:
                    message = await receive()
                    if message["type"] == "http.disconnect":
                        raise LLMVoXError("the client left before sending the whole body", 400, code="client_gone")
                    chunk = message.get("body", b"")
                    size += len(chunk)
                    if size > limit:
                        raise LLMVoXError(f"the request body is over {limit:,} bytes, the limit (--max_body_mb)", 413,
                                       code="body_too_large", headers=close)
                    chunks.append(chunk)
                    if not message.get("more_body", False):
                        break
        except TimeoutError:
            raise LLMVoXError(f"the request body did not arrive within {self.settings.read_timeout:g} s "
                                "(--read_timeout)", 408, code="request_timeout", headers=close) from None
        body = b"".join(chunks)
        try:
            body.decode("utf-8")
        except UnicodeDecodeError as exc:
            raise LLMVoXError(f"the request body is not valid UTF-8 (byte 0x{body[exc.start]:02x} at position "
                                f"{exc.start})", 400, code="invalid_utf8") from None
        return body

    def _timed(self, send):
        timeout = self.settings.send_timeout

        async def timed_send(message) -> None:
            try:
                async with asyncio.timeout(timeout):
                    await send(message)
            except TimeoutError:
                raise ClientStalled(f"the client read nothing for {timeout:g} s (--send_timeout)") from None

        return timed_send

    def _count(self, scope, status: int) -> None:
        metrics = self._metrics() if self._metrics else None
        if metrics is None:
            return
        kind = {401: "unauthorized", 403: "forbidden", 408: "timeout", 413: "too_large", 421: "forbidden"}.get(status)
        metrics.errors.labels("guard", kind or "bad_request").inc()


def _replay(body: bytes, receive):
    """A `receive` that hands the app the body already read, then the client's later messages."""
    pending = True

    async def receive_again():
        nonlocal pending
        if pending:
            pending = False
            return {"type": "http.request", "body": body, "more_body": False}
        return await receive()

    return receive_again
