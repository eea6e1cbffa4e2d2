"""The FastAPI app: `create_app(settings, tts=...)` wires the engine, limits, metrics and routes.

    app = create_app(ServerSettings(chat_type="tts"), tts=LLMVoX.from_pretrained(...))
    app = create_app(settings, voices={"anna": anna, "ben": ben})   # several voices; requests pick by name
    uvicorn.run(app, host=..., port=...)

The engine (decoder and codec workers) starts with the app and stops with it: on shutdown every
stream still running is cancelled and the worker threads exit.
"""

from __future__ import annotations

import asyncio
import logging
import time
from collections.abc import Mapping
from contextlib import asynccontextmanager
from functools import partial
from typing import TYPE_CHECKING, Any

from fastapi import FastAPI, Request
from fastapi.exceptions import RequestValidationError
from fastapi.middleware.cors import CORSMiddleware
from fastapi.responses import JSONResponse
from starlette.exceptions import HTTPException as StarletteHTTPException

from llmvox.engine.engine import SpeechEngine, SpeechEngines
from llmvox.errors import LLMVoXError
from llmvox.server.audio_out import supported_formats
from llmvox.server.context import RequestContextMiddleware
from llmvox.server.guard import RequestGuard
from llmvox.server.metrics import Metrics
from llmvox.server.settings import ServerSettings
from llmvox.server.slots import StreamSlots
from llmvox.server.voices import VoiceSet, voice_name

if TYPE_CHECKING:
    from llmvox.model.voice import Voice

log = logging.getLogger("llmvox.server")

VERSION = "0.1.0"


class ServerState:
    """What the routes share (app.state.llmvox): the voices and their engines, slots (global across
    voices), metrics, settings."""

    def __init__(self, settings: ServerSettings, voices: VoiceSet, engines: SpeechEngines | None = None):
        self.settings = settings
        self.voices = voices
        self.engines = engines  # None until the app starts (or the caller's, running)
        self.own_engine = engines is None
        self.slots = StreamSlots(settings.max_streams, settings.max_queue, settings.queue_timeout)
        self.metrics = Metrics(lambda: self.slots.active, lambda: self.slots.waiting, lambda: self.engines)
        self.formats = supported_formats()
        self.draining = False
        self.started_at = time.time()
        self.extras: dict[str, Any] = {}  # room for the chat routes' own state

    @property
    def tts(self) -> Voice:
        """The default voice."""
        return self.voices.default_voice

    @property
    def engine(self) -> SpeechEngine | None:
        """The default voice's engine (None before the app starts)."""
        return self.engines.default_engine if self.engines is not None else None

    def engine_for(self, voice: str | None = None) -> SpeechEngine | None:
        """The engine of a loaded voice, by name (None: the default's; None before the app starts)."""
        if self.engines is None:
            return None
        return self.engines[voice or self.voices.default]

    @property
    def sample_rate(self) -> int:
        return self.voices.sample_rate


def create_app(settings: ServerSettings | None = None, *, tts: Voice | None = None,
               engine: SpeechEngine | None = None, voices: Mapping[str, Voice] | None = None,
               default_voice: str | None = None) -> FastAPI:
    """The server app for a loaded voice (`tts`), several (`voices`, name -> voice: `tts` or the first
    is the default unless `default_voice` names one), or a running engine (one voice)."""
    settings = (settings or ServerSettings()).validate()
    state = ServerState(settings, *_voices(tts, engine, voices, default_voice))

    @asynccontextmanager
    async def lifespan(app: FastAPI):
        if state.engines is None:
            state.engines = await asyncio.get_running_loop().run_in_executor(None, partial(
                SpeechEngines.start, state.voices.voices, default=state.voices.default,
                num_workers=settings.num_workers, devices=settings.devices, max_batch=settings.max_batch,
                threads=settings.threads, config=settings.stream, pad_id=settings.pad_id))
        engine = state.engine
        log.info("ready: voice%s %s (default %s), %d worker(s) each on %s, chat type %s, formats %s",
                 "s" if len(state.voices) > 1 else "", ", ".join(state.voices.voices), state.voices.default,
                 len(engine.workers), ", ".join(str(d) for d in engine.devices), settings.chat_type,
                 ", ".join(state.formats))
        try:
            yield
        finally:
            state.draining = True
            log.info("shutting down: cancelling %d stream(s)", state.engines.active_streams)
            if state.own_engine:
                await asyncio.get_running_loop().run_in_executor(None, state.engines.close)

    app = FastAPI(title="llmvox", version=VERSION, lifespan=lifespan,
                  description="Streaming LLM-agnostic text-to-speech (LLMVoX).")
    app.state.llmvox = state
    # outermost first: request id and 500s -> CORS (only for listed origins) -> the guard -> routes
    app.add_middleware(RequestGuard, settings=settings, metrics_getter=lambda: state.metrics)
    if settings.cors_origins:
        app.add_middleware(CORSMiddleware, allow_origins=settings.cors_origins, allow_methods=["GET", "POST"],
                           allow_headers=["Authorization", "Content-Type", "X-Request-ID"],
                           expose_headers=["X-Request-ID", "X-Sample-Rate", "X-Audio-Format",
                                           "X-LLMVoX-Request-Id", "X-LLMVoX-Question", "X-LLMVoX-Sample-Rate",
                                           "X-LLMVoX-Audio-Format", "X-LLMVoX-Voice"])
    app.add_middleware(RequestContextMiddleware, metrics_getter=lambda: state.metrics)
    _install_error_handlers(app)

    from llmvox.server.realtime import realtime_router
    from llmvox.server.routes import router
    from llmvox.server.ui import mount_ui
    from llmvox.server.websocket import ws_router

    mount_ui(app)  # the browser UI (GET / for browsers, /ui/*, GET /v1/info): before `router`, which has `/`
    app.include_router(router)
    app.include_router(ws_router)
    app.include_router(realtime_router)  # WS /v1/realtime (OpenAI Realtime); it needs the chat routes' state
    mount_chat_routes(app, state)
    return app


def _voices(tts: Voice | None, engine: SpeechEngine | None, voices: Mapping[str, Voice] | None,
            default: str | None) -> tuple[VoiceSet, SpeechEngines | None]:
    """The voices create_app was given, by name (a lone voice by its own name), and a running engine."""
    if engine is not None:
        if tts is not None or voices:
            raise LLMVoXError("create_app takes a running engine or voices (tts=, voices=), not both")
        name = voice_name(engine.voice)
        return VoiceSet({name: engine.voice}, name), SpeechEngines({name: engine}, name)
    named = dict(voices or {})
    if tts is not None:
        name = next((n for n, v in named.items() if v is tts), None)
        if name is None:
            name = voice_name(tts)
            if name in named:
                raise LLMVoXError(f"tts= and voices= both name a voice {name!r}; give the default as "
                                  "default_voice= instead")
            named = {name: tts, **named}
        default = default or name
    if not named:
        raise LLMVoXError("create_app needs a voice (tts=LLMVoX...), voices ({name: voice}) or an engine")
    return VoiceSet(named, default), None


def mount_chat_routes(app: FastAPI, state: ServerState) -> None:
    """The chat routes for every chat type but tts (`llmvox.server.chat_routes.mount`); they share the
    engine, slots, metrics and guard of the speech routes."""
    if state.settings.chat_type == "tts":
        app.include_router(_chat_unavailable_router())
        return
    from llmvox.server.chat_routes import mount

    mount(app, state)


CHAT_PATHS = ("/textchat", "/voicechat", "/vlmschat", "/multimodalchat", "/v1/chat/completions")


def _chat_unavailable_router():
    """On a speech-only server the chat paths say why they are closed (409), not a bare 404."""
    from fastapi import APIRouter

    router = APIRouter(include_in_schema=False)

    async def unavailable(request: Request) -> None:
        raise LLMVoXError(f"this server runs --chat_type tts (speech endpoints only); {request.url.path} needs "
                            "--chat_type text, voice, visual_speech or multimodal", 409, code="chat_type_unavailable")

    for path in CHAT_PATHS:
        router.add_api_route(path, unavailable, methods=["POST"])
    return router


def _install_error_handlers(app: FastAPI) -> None:
    def metrics_for(request: Request) -> Metrics:
        return request.app.state.llmvox.metrics

    def count(request: Request, status: int) -> None:
        route = request.scope.get("route")
        endpoint = getattr(route, "path", None) or "other"
        kind = {401: "unauthorized", 429: "too_many_streams", 503: "unavailable"}.get(status)
        kind = kind or ("bad_request" if status < 500 else "server_error")
        metrics_for(request).errors.labels(endpoint, kind).inc()

    @app.exception_handler(LLMVoXError)
    async def api_error(request: Request, exc: LLMVoXError) -> JSONResponse:
        status = exc.http_status
        count(request, status)
        log.info("%s %s: %s %s", request.method, request.url.path, status, exc.message)
        return JSONResponse(exc.body(), status_code=status, headers=exc.headers)

    @app.exception_handler(RequestValidationError)
    async def validation_error(request: Request, exc: RequestValidationError) -> JSONResponse:
        errors = exc.errors()
        first = errors[0] if errors else {}
        kind = first.get("type", "")
        loc = [str(p) for p in first.get("loc", ()) if p != "body"]
        if kind == "json_invalid":
            err = LLMVoXError(f"the request body is not valid JSON ({first.get('ctx', {}).get('error', kind)})", 400,
                           code="invalid_json")
        elif kind == "missing" and not loc:
            err = LLMVoXError("the request needs a JSON body", 400, code="missing_body")
        elif kind == "missing":
            err = LLMVoXError(f"missing required field {'.'.join(loc)!r}", 400, code="missing_field", param=".".join(loc))
        else:
            where = ".".join(loc) or "body"
            err = LLMVoXError(f"{where}: {first.get('msg', 'invalid value')}", 422, code="invalid_type", param=where)
        return await api_error(request, err)

    @app.exception_handler(StarletteHTTPException)
    async def http_error(request: Request, exc: StarletteHTTPException) -> JSONResponse:
        code = {404: "not_found", 405: "method_not_allowed"}.get(exc.status_code, "http_error")
        return await api_error(request, LLMVoXError(str(exc.detail), exc.status_code, code=code))
