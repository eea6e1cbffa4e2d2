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
from starlette.concurrency import run_in_threadpool

from llmvox.engine.stream import SpeechStream
from llmvox.engine.word_times import WordTime, aligner_of
from llmvox.errors import LLMVoXError
from llmvox.server.audio_out import CONTENT_TYPES, FORMAT_ALIASES, TimeStretcher, make_encoder, output_rate
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
from llmvox.text.lexicon import request_lexicon

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
        "voice": state.voices.default,
        "voices": list(state.voices.voices),
        "sample_rate": state.sample_rate,
        "chat_type": state.settings.chat_type,
        "workers": len(state.engine.workers) if state.engine is not None else 0,  # per voice
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
    return await speak(request, body.text, "f32", endpoint="/tts", param="text", lexicon=body.lexicon,
                       voice=body.voice)


@router.post("/v1/audio/speech")
async def openai_speech(request: Request, body: SpeechRequest) -> Response:
    if body.timestamps and body.stream_format != "sse":
        raise LLMVoXError(f"a {body.response_format} audio stream cannot carry word timestamps; use stream_format "
                          "'sse' or POST /v1/audio/speech/captioned", 400, code="timestamps_unsupported_format",
                          param="timestamps")
    return await _speech(request, body, "/v1/audio/speech")


@router.post("/v1/audio/speech/captioned")
async def captioned_speech(request: Request, body: SpeechRequest) -> Response:
    """The whole audio (base64, in `response_format`) and its word timestamps, as one JSON object."""
    if body.stream_format != "audio":
        raise LLMVoXError("captioned speech is one JSON answer; leave stream_format unset (or use "
                          "/v1/audio/speech with stream_format 'sse' and timestamps true)", 400,
                          code="invalid_stream_format", param="stream_format")
    return await _speech(request, body.model_copy(update={"timestamps": True}), "/v1/audio/speech/captioned")


async def _speech(request: Request, body: SpeechRequest, endpoint: str) -> Response:
    state = server_state(request)
    fmt = body.response_format.lower()
    fmt = FORMAT_ALIASES.get(fmt, fmt)
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
    rate = output_rate(fmt, body.sample_rate, state.sample_rate)
    return await speak(request, body.input, fmt, endpoint=endpoint, param="input", speed=body.speed,
                       sse=body.stream_format == "sse", lexicon=body.lexicon, rate=rate, voice=body.voice,
                       timestamps=body.timestamps)


@router.get("/v1/audio/voices")
async def list_voices(request: Request) -> dict[str, Any]:
    """The loaded voices (name, language, sample rate, text front-end, bytes on disk and in memory)."""
    voices = server_state(request).voices
    return {"object": "list", "default": voices.default, "data": voices.listing()}


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
                sse: bool = False, lexicon: Any = None, rate: int | None = None, voice: Any = None,
                timestamps: bool = False) -> Response:
    """Say `text` with `voice` (a name; None: the default) on `endpoint` in format `fmt` (audio bytes, or
    OpenAI's speech SSE events) at `rate` (checked by `output_rate` first; None: the format's own)."""
    state = server_state(request)
    validate_text(text, state.settings, param)
    voice = state.voices.resolve(voice)
    if timestamps:
        aligner_of(state.voices.voices[voice])  # a 400 before any work when the voice has no aligner
    if lexicon is not None:  # checked off the loop against the voice's front-end: its keys are normalised
        lexicon = await run_in_threadpool(request_lexicon, lexicon, state.voices.voices[voice].frontend)
    started = request.scope.get("state", {}).get("started_at", time.perf_counter())
    async with Utterance(state, endpoint, started=started, voice=voice) as utterance:
        try:
            stream = await utterance.say(text, limit=state.settings.max_text_chars, lexicon=lexicon,
                                         timestamps=timestamps)
        except LLMVoXError as exc:
            raise _naming(exc, param) from None
        log.info("%s: %d characters, %d sentence(s)", endpoint, len(text), stream.segments)
        encoder = make_encoder(fmt, state.sample_rate, rate)
        stretch = TimeStretcher(speed, state.sample_rate) if abs(speed - 1.0) > 1e-6 else None
        words: list[WordTime] | None = [] if timestamps else None
        body = audio_body(utterance.events(), encoder, stretch, words)
        headers = {"X-Sample-Rate": str(encoder.sample_rate), "X-Audio-Format": fmt, "Cache-Control": "no-store",
                   "X-LLMVoX-Voice": voice}
        if sse:
            return utterance.respond(_sse(body, stream, words, speed), media_type="text/event-stream", headers=headers)
        if timestamps:  # captioned: one JSON answer once all is spoken
            return utterance.respond(_captioned(body, words, speed, fmt, encoder.sample_rate),
                                     media_type="application/json", headers=headers)
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


async def _sse(audio: AsyncIterator[bytes], stream: SpeechStream, words: list[WordTime] | None = None,
               speed: float = 1.0) -> AsyncIterator[bytes]:
    """OpenAI's speech SSE: `speech.audio.delta` events with base64 audio, then `speech.audio.done`. With
    word timestamps, a delta carries `words` (the words whose start its audio brought), and words known
    only after the last audio come in a `speech.audio.words` event before the end."""
    async for data in audio:
        event = {"type": "speech.audio.delta", "audio": base64.b64encode(data).decode()}
        if words:
            event["words"] = [w.to_dict(speed) for w in words]
            words.clear()
        yield f"data: {json.dumps(event)}\n\n".encode()
    if words:
        yield f"data: {json.dumps({'type': 'speech.audio.words', 'words': [w.to_dict(speed) for w in words]})}\n\n".encode()
    chars = stream.text_chars
    codes = len(stream.codes)
    done = {"type": "speech.audio.done",
            "usage": {"input_tokens": chars, "output_tokens": codes, "total_tokens": chars + codes}}
    yield f"data: {json.dumps(done)}\n\n".encode()


async def _captioned(audio: AsyncIterator[bytes], words: list[WordTime], speed: float, fmt: str,
                     rate: int) -> AsyncIterator[bytes]:
    """`{"audio": base64, "words": [{word, start, end, ...}], ...}` once the whole text is spoken."""
    data = b"".join([chunk async for chunk in audio if isinstance(chunk, bytes)])
    body = {"audio": base64.b64encode(data).decode(), "format": fmt, "sample_rate": rate,
            "words": [w.to_dict(speed) for w in words]}
    yield json.dumps(body).encode()
