"""HTTP routes: the original `/tts`, OpenAI's `/v1/audio/speech`, `/health`, `/metrics`, `/`."""

from __future__ import annotations

import base64
import json
import logging
import time
from collections.abc import AsyncIterator
from typing import Any

from fastapi import APIRouter, Request
from fastapi.responses import JSONResponse, Response

from llmvox.engine.stream import SpeechStream
from llmvox.errors import LLMVoXError
from llmvox.server.audio_out import CONTENT_TYPES, TimeStretcher, make_encoder
from llmvox.server.metrics import CONTENT_TYPE as METRICS_CONTENT_TYPE
from llmvox.server.schemas import (
    MAX_SPEED,
    MIN_SPEED,
    RESPONSE_FORMATS,
    STREAM_FORMATS,
    SpeechRequest,
    TTSRequest,
)
from llmvox.server.utterance import Utterance, audio_body

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
        raise LLMVoXError(f"unknown response_format {body.response_format!r}; use one of "
                            f"{', '.join(state.formats)}", 400, code="invalid_response_format", param="response_format")
    if fmt not in state.formats:
        raise LLMVoXError(f"response_format {fmt!r} cannot be encoded on this server (its libsndfile lacks it); "
                            f"use one of {', '.join(state.formats)}", 400, code="unsupported_response_format",
                       param="response_format")
    if body.stream_format not in STREAM_FORMATS:
        raise LLMVoXError(f"unknown stream_format {body.stream_format!r}; use 'audio' or 'sse'", 400,
                       code="invalid_stream_format", param="stream_format")
    if not MIN_SPEED <= body.speed <= MAX_SPEED:
        raise LLMVoXError(f"speed must be between {MIN_SPEED} and {MAX_SPEED} (got {body.speed})", 400,
                       code="invalid_speed", param="speed")
    return await speak(request, body.input, fmt, endpoint="/v1/audio/speech", param="input", speed=body.speed,
                       sse=body.stream_format == "sse")


# ---------------------------------------------------------------------------------------------


def validate_text(text: str, settings, param: str) -> None:
    """The checks a text passes before any work: not empty, not over --max_text_chars as sent. (Its
    length once spelled out is checked as the stream normalises it, in `Utterance.say`.)"""
    if not text.strip():
        raise LLMVoXError(f"{param} is empty: nothing to say", 400, code="empty_text", param=param)
    if len(text) > settings.max_text_chars:
        raise LLMVoXError(f"{param} has {len(text)} characters; the limit is {settings.max_text_chars} "
                          "(split the text, or raise --max_text_chars)", 413, code="text_too_long", param=param)


async def speak(request: Request, text: str, fmt: str, *, endpoint: str, param: str, speed: float = 1.0,
                sse: bool = False) -> Response:
    """Say `text` on `endpoint` in format `fmt` (audio bytes, or OpenAI's speech SSE events)."""
    state = server_state(request)
    validate_text(text, state.settings, param)
    started = request.scope.get("state", {}).get("started_at", time.perf_counter())
    async with Utterance(state, endpoint, started=started) as utterance:
        try:
            stream = await utterance.say(text, limit=state.settings.max_text_chars)
        except LLMVoXError as exc:
            raise _naming(exc, param) from None
        log.info("%s: %d characters, %d sentence(s)", endpoint, len(text), stream.segments)
        encoder = make_encoder(fmt, state.sample_rate)
        stretch = TimeStretcher(speed, state.sample_rate) if abs(speed - 1.0) > 1e-6 else None
        body = audio_body(utterance.events(), encoder, stretch)
        headers = {"X-Sample-Rate": str(state.sample_rate), "X-Audio-Format": fmt, "Cache-Control": "no-store"}
        if sse:
            return utterance.respond(_sse(body, stream), media_type="text/event-stream", headers=headers)
        return utterance.respond(body, media_type=encoder.content_type or CONTENT_TYPES[fmt], headers=headers)


def _naming(exc: LLMVoXError, param: str) -> LLMVoXError:
    """The stream's verdict on a whole text, said of the request field it came in."""
    if exc.code == "text_too_long":
        return LLMVoXError(f"{param} {exc.message.removeprefix('the text ')} (split the text, or raise "
                           "--max_text_chars)", 413, code="text_too_long", param=param)
    if exc.code == "nothing_to_say":
        return LLMVoXError(f"{param} has nothing speakable (only symbols or markup)", 400, code="nothing_to_say",
                           param=param)
    return exc


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
