"""Request ids: one per HTTP request or WebSocket, in a response header and in every log line."""

from __future__ import annotations

import contextvars
import json
import logging
import re
import time
import uuid

request_id_var: contextvars.ContextVar[str] = contextvars.ContextVar("llmvox_request_id", default="-")

_SAFE_ID = re.compile(r"[A-Za-z0-9._:-]{1,64}")
LOG_FORMAT = "%(asctime)s %(levelname)s [%(request_id)s] %(name)s: %(message)s"

log = logging.getLogger("llmvox.server")


def new_request_id(given: str | None = None) -> str:
    """The client's X-Request-ID when it is a short safe token, else a fresh one."""
    if given and _SAFE_ID.fullmatch(given):
        return given
    return uuid.uuid4().hex[:16]


class RequestIdFilter(logging.Filter):
    """Puts `request_id` on every record: an explicit `extra`, else the current request's, else '-'."""

    def filter(self, record: logging.LogRecord) -> bool:
        if not getattr(record, "request_id", None):
            record.request_id = request_id_var.get()
        return True


def install_log_format(level: int = logging.INFO) -> None:
    """Root logging with the request id in the format; uvicorn's loggers go through it too."""
    root = logging.getLogger()
    if not root.handlers:
        logging.basicConfig(level=level)
    root.setLevel(level)
    for handler in root.handlers:
        handler.setFormatter(logging.Formatter(LOG_FORMAT))
        if not any(isinstance(f, RequestIdFilter) for f in handler.filters):
            handler.addFilter(RequestIdFilter())
    for name in ("uvicorn", "uvicorn.error", "uvicorn.access"):
        lg = logging.getLogger(name)
        lg.handlers = []
        lg.propagate = True


class RequestContextMiddleware:
    """Pure ASGI (streaming-safe): request id in, X-Request-ID out, one log line and a count per request.

    An error no route handled becomes a 500 JSON answer here, inside the middleware that adds the request
    id, and is not raised further: the keep-alive connection stays usable for the client's next request.
    """

    def __init__(self, app, metrics_getter=None):
        self.app = app
        self._metrics = metrics_getter

    async def __call__(self, scope, receive, send):
        if scope["type"] not in ("http", "websocket"):
            await self.app(scope, receive, send)
            return
        headers = dict(scope.get("headers") or [])
        given = headers.get(b"x-request-id", b"").decode("latin-1") or None
        rid = new_request_id(given)
        state = scope.setdefault("state", {})
        state["request_id"] = rid
        state["started_at"] = time.perf_counter()
        token = request_id_var.set(rid)
        status = {"code": 0}

        async def send_with_id(message):
            if message["type"] == "http.response.start":
                status["code"] = message["status"]
                message = dict(message)
                message["headers"] = list(message.get("headers") or []) + [(b"x-request-id", rid.encode())]
            await send(message)

        try:
            await self.app(scope, receive, send_with_id)
        except Exception:
            if scope["type"] != "http" or status["code"]:
                raise  # the answer was already under way: the connection is all that is left to end
            log.exception("unhandled error in %s %s", scope.get("method"), scope.get("path"))
            await self._internal_error(rid, send_with_id)
            metrics = self._metrics() if self._metrics else None
            if metrics is not None:
                metrics.errors.labels(getattr(scope.get("route"), "path", None) or "other", "server_error").inc()
        finally:
            if scope["type"] == "http":
                route = scope.get("route")
                endpoint = getattr(route, "path", None) or "other"
                elapsed = time.perf_counter() - state["started_at"]
                log.info("%s %s -> %s in %.3f s", scope.get("method"), scope.get("path"), status["code"] or "-",
                         elapsed)
                metrics = self._metrics() if self._metrics else None
                if metrics is not None and status["code"]:
                    metrics.requests.labels(endpoint, str(status["code"])).inc()
            request_id_var.reset(token)

    @staticmethod
    async def _internal_error(rid: str, send) -> None:
        body = json.dumps({"error": {"message": f"internal error; the server log has the details under request id "
                                                f"{rid}", "type": "server_error", "param": None,
                                     "code": "internal_error"}}).encode()
        await send({"type": "http.response.start", "status": 500,
                    "headers": [(b"content-type", b"application/json"), (b"content-length", str(len(body)).encode())]})
        await send({"type": "http.response.body", "body": body})
