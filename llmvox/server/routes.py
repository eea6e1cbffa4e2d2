"""HTTP routes: the original `/tts`, OpenAI's `/v1/audio/speech`, `/health`, `/metrics`, `/`."""

from __future__ import annotations

import asyncio
import base64
import contextlib
import json
import logging
import time
from collections.abc import AsyncIterator, Callable
from functools import partial
from typing import Any

import anyio
from fastapi import APIRouter, Request
from fastapi.responses import JSONResponse, Response, StreamingResponse

from llmvox.engine.stream import AudioChunk, SpeechStream
from llmvox.server.audio_out import CONTENT_TYPES, TimeStretcher, make_encoder
from llmvox.server.context import request_id_var
from llmvox.server.metrics import CONTENT_TYPE as METRICS_CONTENT_TYPE
from llmvox.server.schemas import (
    MAX_SPEED,
    MIN_SPEED,
    RESPONSE_FORMATS,
    STREAM_FORMATS,
    ApiError,
    SpeechRequest,
    TTSRequest,
)
from llmvox.server.slots import SlotLease

log = logging.getLogger("llmvox.server")


def server_state(request: Request):
    return request.app.state.llmvox


router = APIRouter()  # the API key, origin and body limits are checked before any route (server.guard)


@router.get("/")
async def root(request: Request) -> dict[str, Any]:
    state = server_state(request)
    return {
        "message": "llmvox streaming TTS API",
        "usage": 'POST /tts with {"text": "..."} (float32 24 kHz mono), POST /v1/audio/speech (OpenAI), '
                 "WS /v1/stream (text deltas in, audio out)",
        "chat_type": state.settings.chat_type,
        "version": request.app.version,
    }


@router.get("/health")
async def health(request: Request) -> JSONResponse:
    state = server_state(request)
    ready = state.engine is not None and not state.draining
    body = {
        "status": "ok" if ready else "shutting_down" if state.draining else "starting",
        "voice": state.tts.name if state.tts is not None else None,
        "sample_rate": state.sample_rate if state.tts is not None else None,
        "chat_type": state.settings.chat_type,
        "workers": len(state.engine.workers) if state.engine is not None else 0,
        "active_streams": state.slots.active,
        "queued_requests": state.slots.waiting,
        "max_streams": state.settings.max_streams,
        "formats": state.formats,
        "uptime_seconds": round(time.time() - state.started_at, 1),
    }
    return JSONResponse(body, status_code=200 if ready else 503)


@router.get("/metrics")
async def metrics(request: Request) -> Response:
    return Response(server_state(request).metrics.render(), media_type=METRICS_CONTENT_TYPE)


@router.post("/tts")
async def tts(request: Request, body: TTSRequest) -> Response:
    """The original endpoint: raw float32 mono at 24 kHz; the stream ends when the speech ends."""
    return await speak(request, body.text, "f32", endpoint="/tts", param="text")


@router.post("/v1/audio/speech")
async def openai_speech(request: Request, body: SpeechRequest) -> Response:
    state = server_state(request)
    fmt = body.response_format.lower()
    if fmt not in RESPONSE_FORMATS:
        raise ApiError(400, f"unknown response_format {body.response_format!r}; use one of "
                            f"{', '.join(state.formats)}", code="invalid_response_format", param="response_format")
    if fmt not in state.formats:
        raise ApiError(400, f"response_format {fmt!r} cannot be encoded on this server (its libsndfile lacks it); "
                            f"use one of {', '.join(state.formats)}", code="unsupported_response_format",
                       param="response_format")
    if body.stream_format not in STREAM_FORMATS:
        raise ApiError(400, f"unknown stream_format {body.stream_format!r}; use 'audio' or 'sse'",
                       code="invalid_stream_format", param="stream_format")
    if not MIN_SPEED <= body.speed <= MAX_SPEED:
        raise ApiError(400, f"speed must be between {MIN_SPEED} and {MAX_SPEED} (got {body.speed})",
                       code="invalid_speed", param="speed")
    return await speak(request, body.input, fmt, endpoint="/v1/audio/speech", param="input", speed=body.speed,
                       sse=body.stream_format == "sse")


# ---------------------------------------------------------------------------------------------


def validate_text(text: str, settings, param: str) -> None:
    from llmvox.text.normalize import normalize

    if not text.strip():
        raise ApiError(400, f"{param} is empty: nothing to say", code="empty_text", param=param)
    if len(text) > settings.max_text_chars:
        raise ApiError(413, f"{param} has {len(text)} characters; the limit is {settings.max_text_chars} "
                            "(split the text, or raise --max_text_chars)", code="text_too_long", param=param)
    if not settings.stream.normalize:
        return
    spoken = normalize(text)
    if not spoken.strip():
        raise ApiError(400, f"{param} has nothing speakable (only symbols or markup)", code="nothing_to_say",
                       param=param)
    if len(spoken) > settings.max_text_chars:  # numbers and symbols spelled out can multiply the text
        raise ApiError(413, f"{param} becomes {len(spoken)} characters once numbers and symbols are spelled out; "
                            f"the limit is {settings.max_text_chars} (split the text, or raise --max_text_chars)",
                       code="text_too_long", param=param)


class ChunkBridge:
    """Engine threads -> the event loop: chunks land in an asyncio queue, None ends it.

    `on_end` runs on the loop when the engine has produced the last chunk: the stream's slot is free
    from then on, however slowly the client reads what is left.
    """

    def __init__(self, on_end: Callable[[], None] | None = None) -> None:
        self.loop = asyncio.get_running_loop()
        self.queue: asyncio.Queue[AudioChunk | None] = asyncio.Queue()
        self.on_end = on_end

    def _put(self, item: AudioChunk | None) -> None:
        self.queue.put_nowait(item)
        if item is None and self.on_end is not None:
            self.on_end()

    def __call__(self, item: AudioChunk | None) -> None:
        with contextlib.suppress(RuntimeError):  # the loop is gone (shutdown): nobody listens any more
            self.loop.call_soon_threadsafe(self._put, item)


async def open_stream(request: Request, text: str, *, endpoint: str,
                      param: str) -> tuple[SpeechStream, ChunkBridge, SlotLease]:
    """Validate, take a stream slot (429/503 when full), start speaking `text`. The slot is given back
    when the engine has produced the whole answer (or when the request ends earlier)."""
    state = server_state(request)
    if state.draining or state.engine is None:
        raise ApiError(503, "the server is shutting down", code="shutting_down")
    validate_text(text, state.settings, param)
    lease = await state.slots.acquire()
    try:
        bridge = ChunkBridge(on_end=lease.release)
        stream = state.engine.open(sink=bridge, request_id=request_id_var.get())
        stream.feed(text)
        stream.end()
    except BaseException:
        lease.release()
        raise
    log.info("%s: %d characters, %d sentence(s)", endpoint, len(text), stream.segments)
    return stream, bridge, lease


async def speak(request: Request, text: str, fmt: str, *, endpoint: str, param: str, speed: float = 1.0,
                sse: bool = False) -> Response:
    state = server_state(request)
    stream, bridge, lease = await open_stream(request, text, endpoint=endpoint, param=param)
    started = request.scope.get("state", {}).get("started_at", time.perf_counter())
    encoder = make_encoder(fmt, state.sample_rate)
    stretch = TimeStretcher(speed, state.sample_rate) if abs(speed - 1.0) > 1e-6 else None
    metrics = state.metrics

    closed = False

    def close(completed: bool) -> None:
        """Idempotent end of the request: a stream that did not complete is cancelled now."""
        nonlocal closed
        if closed:
            return
        closed = True
        if not completed and not stream.done:
            stream.cancel()
            metrics.disconnects.labels(endpoint).inc()
            log.info("%s: client disconnected; stream cancelled", endpoint)
        lease.release()

    async def audio_bytes() -> AsyncIterator[bytes]:
        first = True
        completed = False
        try:
            while True:
                chunk = await bridge.queue.get()
                final = chunk is None
                samples = None if final else chunk.samples
                if stretch is not None:
                    samples = stretch.process(samples if samples is not None else [], final=final)
                data = encoder.encode(samples) if samples is not None and len(samples) else b""
                if final:
                    data += encoder.finish()
                if data:
                    if first:
                        first = False
                        metrics.ttfa.labels(endpoint).observe(time.perf_counter() - started)
                    yield data
                if final:
                    break
            completed = True
            _record(stream, endpoint, metrics)
        finally:
            close(completed)

    headers = {"X-Sample-Rate": str(state.sample_rate), "X-Audio-Format": fmt, "Cache-Control": "no-store"}
    if sse:
        return DisconnectAwareStreamingResponse(_sse(audio_bytes(), stream), media_type="text/event-stream",
                                                headers=headers, on_close=lambda: close(False))
    return DisconnectAwareStreamingResponse(audio_bytes(), media_type=encoder.content_type or CONTENT_TYPES[fmt],
                                            headers=headers, on_close=lambda: close(False))


def _record(stream: SpeechStream, endpoint: str, metrics) -> None:
    if stream.error is not None:
        log.error("stream failed: %s", stream.error)
        metrics.errors.labels(endpoint, "generation_failed").inc()
        return
    t = stream.timings()
    metrics.audio_seconds.labels(endpoint).inc(t["audio_seconds"])
    if t["real_time_factor"] is not None:
        metrics.rtf.labels(endpoint).observe(t["real_time_factor"])
    log.info("%s: %.2f s of audio, first audio after %s s, real-time factor %s", endpoint,
             t["audio_seconds"], _fmt(t["time_to_first_audio"]), _fmt(t["real_time_factor"]))


async def _sse(audio: AsyncIterator[bytes], stream: SpeechStream) -> AsyncIterator[bytes]:
    """OpenAI's speech SSE: `speech.audio.delta` events with base64 audio, then `speech.audio.done`."""
    async for data in audio:
        event = {"type": "speech.audio.delta", "audio": base64.b64encode(data).decode()}
        yield f"data: {json.dumps(event)}\n\n".encode()
    chars = stream.text_chars
    codes = len(stream.codes)
    done = {"type": "speech.audio.done",
            "usage": {"input_tokens": chars, "output_tokens": codes, "total_tokens": chars + codes}}
    yield f"data: {json.dumps(done)}\n\n".encode()


def _fmt(x: float | None) -> str:
    return "-" if x is None else f"{x:.3f}"


class DisconnectAwareStreamingResponse(StreamingResponse):
    """Streams while watching for the client to leave, whatever ASGI version the server speaks, so a
    disconnect stops the work at once, even while the generator waits for the next chunk.

    `on_close()` runs when the response ends however it ends (it must be idempotent): a generator
    suspended at a `yield` when the client leaves is not resumed, so its own `finally` cannot be
    relied on to free the stream promptly.
    """

    def __init__(self, content, *, on_close=None, **kwargs) -> None:
        super().__init__(content, **kwargs)
        self._on_close = on_close

    async def __call__(self, scope, receive, send) -> None:
        try:
            async with anyio.create_task_group() as group:

                async def run(fn) -> None:
                    await fn()
                    group.cancel_scope.cancel()

                async def watch() -> None:
                    await self.listen_for_disconnect(receive)
                    # the client left: free its stream now; the streaming task may sit in a worker
                    # thread's next() that cancellation cannot interrupt until the next chunk
                    if self._on_close is not None:
                        self._on_close()
                    group.cancel_scope.cancel()

                group.start_soon(run, partial(self.stream_response, send))
                await watch()
        finally:
            if self._on_close is not None:
                self._on_close()
        if self.background is not None:
            await self.background()
