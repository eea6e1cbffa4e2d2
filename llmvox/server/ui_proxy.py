"""`run_ui.py` / `llmvox ui`: the web page served from this machine, every API call forwarded to a server.

This lets the UI run on a laptop (where the browser allows the microphone, because the page comes from
localhost) against an llmvox server on a GPU machine. HTTP requests and responses are streamed both ways
(the answer audio is forwarded as it arrives), WebSockets are relayed, and a browser that hangs up
closes the upstream request at once, so a barge-in still cancels the answer on the server.

The proxy needs only FastAPI, uvicorn and httpx: no torch, no models.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
from contextlib import asynccontextmanager

import anyio
import httpx
from fastapi import FastAPI, Request, WebSocket
from fastapi.responses import JSONResponse, Response, StreamingResponse
from starlette.websockets import WebSocketDisconnect

from llmvox.server.ui import UI_PREFIX, page_response, static_files, wants_html

log = logging.getLogger("llmvox.ui")

# never forwarded: headers of one connection, and Origin (the page came from this proxy, which is the client)
HOP_BY_HOP = {"connection", "keep-alive", "proxy-authenticate", "proxy-authorization", "te", "trailer", "trailers",
              "transfer-encoding", "upgrade", "host", "content-length", "origin"}
UPSTREAM_HEADER = "X-LLMVoX-Proxy-Upstream"
METHODS = ["GET", "POST", "PUT", "PATCH", "DELETE", "OPTIONS", "HEAD"]


def upstream_url(ip: str, port: int | str) -> str:
    """`--ip` and `--port` as a base URL (`--ip` may also be a full http(s):// URL)."""
    ip = ip.strip().rstrip("/")
    if "://" in ip:
        return ip
    if ":" in ip and not ip.startswith("["):  # an IPv6 literal
        ip = f"[{ip}]"
    return f"http://{ip}:{int(port)}"


def _error(status: int, message: str, code: str, upstream: str) -> JSONResponse:
    """The server's JSON error shape, plus `upstream` (the server this proxy forwards to)."""
    body = {"message": message, "type": "server_error", "param": None, "code": code, "upstream": upstream}
    return JSONResponse({"error": body}, status_code=status)


class UpstreamResponse(StreamingResponse):
    """Streams an upstream response and closes it as soon as either side is done.

    Starlette's own StreamingResponse only notices a browser that left when the next chunk fails to
    send; this one listens for the disconnect, so an aborted fetch reaches the server immediately even
    while the server is still thinking.
    """

    def __init__(self, upstream: httpx.Response, headers: dict[str, str]) -> None:
        super().__init__(upstream.aiter_raw(), status_code=upstream.status_code, headers=headers)
        self.upstream = upstream

    async def __call__(self, scope, receive, send) -> None:
        try:
            async with anyio.create_task_group() as group:

                async def stream() -> None:
                    try:
                        await self.stream_response(send)
                    except (httpx.HTTPError, OSError) as exc:
                        # the server went away mid-answer: end without completing the response, so
                        # the browser sees a broken stream rather than a short "complete" answer
                        log.warning("upstream stream broke off: %s", exc)
                    group.cancel_scope.cancel()

                async def watch() -> None:
                    await self.listen_for_disconnect(receive)
                    group.cancel_scope.cancel()

                group.start_soon(stream)
                group.start_soon(watch)
        finally:
            with anyio.CancelScope(shield=True):
                await self.upstream.aclose()


def create_proxy_app(upstream: str, *, api_key: str | None = None, connect_timeout: float = 5.0) -> FastAPI:
    """The page at `/` (for browsers) and `/ui/*`; everything else is forwarded to `upstream`.

    `api_key`: sent upstream as `Authorization: Bearer` on requests that carry no key of their own.
    """
    upstream = upstream.rstrip("/")
    timeout = httpx.Timeout(connect=connect_timeout, read=None, write=60.0, pool=30.0)
    limits = httpx.Limits(max_connections=200, max_keepalive_connections=20)

    @asynccontextmanager
    async def lifespan(app: FastAPI):
        app.state.client = httpx.AsyncClient(base_url=upstream, timeout=timeout, limits=limits)
        log.info("llmvox UI: forwarding API calls to %s", upstream)
        try:
            yield
        finally:
            await app.state.client.aclose()

    app = FastAPI(title="llmvox UI", lifespan=lifespan, docs_url=None, redoc_url=None, openapi_url=None)

    def outgoing_headers(incoming) -> list[tuple[str, str]]:
        headers = [(k, v) for k, v in incoming.items() if k.lower() not in HOP_BY_HOP]
        if api_key and not any(k.lower() == "authorization" for k, _ in headers):
            headers.append(("Authorization", f"Bearer {api_key}"))
        return headers

    async def forward(request: Request) -> Response:
        client: httpx.AsyncClient = request.app.state.client
        url = httpx.URL(path=request.url.path, query=request.url.query.encode("latin-1"))
        has_body = request.method not in ("GET", "HEAD", "OPTIONS")
        outgoing = client.build_request(request.method, url, headers=outgoing_headers(request.headers),
                                        content=request.stream() if has_body else None)
        try:
            answer = await client.send(outgoing, stream=True)
        except httpx.TimeoutException as exc:
            return _error(504, f"the llmvox server at {upstream} did not answer in time ({type(exc).__name__})",
                          "upstream_timeout", upstream)
        except httpx.HTTPError as exc:
            reason = str(exc) or type(exc).__name__
            return _error(502, f"cannot reach the llmvox server at {upstream} ({reason})", "upstream_unreachable",
                          upstream)
        headers = {k: v for k, v in answer.headers.items() if k.lower() not in HOP_BY_HOP}
        headers[UPSTREAM_HEADER] = upstream
        return UpstreamResponse(answer, headers)

    @app.get("/", include_in_schema=False)
    async def root(request: Request) -> Response:
        if wants_html(request):
            return page_response()
        return await forward(request)

    app.mount(UI_PREFIX, static_files(), name="ui")

    @app.websocket("/{path:path}")
    async def relay(websocket: WebSocket, path: str) -> None:
        await relay_websocket(websocket, upstream, outgoing_headers)

    app.add_api_route("/{path:path}", forward, methods=METHODS, include_in_schema=False)
    return app


async def relay_websocket(websocket: WebSocket, upstream: str, outgoing_headers) -> None:
    """Open the same WebSocket on the server and pass frames both ways until either side closes."""
    from websockets.asyncio.client import connect
    from websockets.exceptions import ConnectionClosed, InvalidStatus

    target = "ws" + upstream[len("http"):] + websocket.url.path
    if websocket.url.query:
        target += "?" + websocket.url.query
    headers = [(k, v) for k, v in outgoing_headers(websocket.headers)
               if not k.lower().startswith("sec-websocket") and k.lower() not in ("origin",)]
    try:
        server = await connect(target, additional_headers=headers, open_timeout=10, max_size=None)
    except InvalidStatus as exc:  # refused at the handshake (401, 429, ...): pass the refusal on
        status = exc.response.status_code
        body = bytes(exc.response.body or b"")
        await websocket.send_denial_response(Response(body, status_code=status, media_type="application/json"))
        return
    except (OSError, TimeoutError) as exc:
        await websocket.send_denial_response(
            _error(502, f"cannot reach the llmvox server at {upstream} ({exc})", "upstream_unreachable", upstream))
        return
    await websocket.accept()

    async def browser_to_server() -> None:
        while True:
            message = await websocket.receive()
            if message["type"] == "websocket.disconnect":
                return
            if message.get("text") is not None:
                await server.send(message["text"])
            elif message.get("bytes") is not None:
                await server.send(message["bytes"])

    async def server_to_browser() -> None:
        with contextlib.suppress(ConnectionClosed):
            async for frame in server:
                if isinstance(frame, str):
                    await websocket.send_text(frame)
                else:
                    await websocket.send_bytes(frame)

    tasks = [asyncio.create_task(browser_to_server()), asyncio.create_task(server_to_browser())]
    try:
        await asyncio.wait(tasks, return_when=asyncio.FIRST_COMPLETED)
    finally:
        for task in tasks:
            task.cancel()
        for task in tasks:
            with contextlib.suppress(asyncio.CancelledError, ConnectionClosed, WebSocketDisconnect, RuntimeError):
                await task
        code = server.close_code or 1000
        await server.close()
        with contextlib.suppress(RuntimeError, WebSocketDisconnect):
            await websocket.close(code=code if code in (1000, 1001, 1008, 1011) else 1000)
