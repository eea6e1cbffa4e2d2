"""Chat endpoints: text, voice, voice about a picture, and native audio+image chat, answered in speech.

The routes are thin: `llmvox.chat` parses the original request bodies, runs ASR and streams the LLM's
answer; the server's speech stream speaks those deltas as they come (an `Utterance`, as every
speaking endpoint does: `llmvox.server.utterance`). Everything
that can go wrong before the first audio (bad base64, not audio, silence, not an image, too many or too
large images, an LLM that fails at once) is a JSON error in the OpenAI shape; later failures are spoken
as an apology and the stream ends normally.

Endpoints (audio: headerless float32 little-endian mono at 24 kHz, `application/octet-stream`):
- `POST /textchat`        `{"text"}`
- `POST /voicechat`       `{"source_language", "target_language", "audio_base64"}`
- `POST /vlmschat`        the same plus `"image_base64"`
- `POST /multimodalchat`  `{"audio_base64", "image_list"}`
`audio_base64` is the original's int16 PCM at 16 kHz, or the bytes of a WAV/FLAC/OGG file at any rate.

Transcript side channel: every chat response carries `X-LLMVoX-Request-Id` and `X-LLMVoX-Question`
(the recognised question, percent-encoded UTF-8; absent for multimodal chat, where no ASR runs).
`POST /v1/chat/completions` (OpenAI-style; `"stream": true` for SSE): with `"modalities": ["text",
"audio"]` the answer is spoken too, as OpenAI streams it: `delta.audio.transcript` pieces of the text
and `delta.audio.data` base64 pcm16 at 24 kHz (non-streaming: one `message.audio` with pcm16 or wav);
with `["text"]` it is a plain chat proxy. The user message may hold `input_audio` and `image_url`
(data URL) parts. `audio.format` may be pcm16 (default) or any format this server encodes (wav, flac,
mp3, opus), streamed or not.

`GET /v1/transcripts/{id}` returns `{"id", "mode", "question", "answer", "done", "cancelled", "error",
"asr_seconds", "first_token_seconds"}`: the answer text so far, or (with `?wait=SECONDS`) once the
answer is complete. Turns are kept for 10 minutes (the 256 most recent).
"""

from __future__ import annotations

import asyncio
import base64
import json
import logging
import math
import secrets
import time
from collections.abc import AsyncIterator
from dataclasses import dataclass, field, replace
from typing import Any
from urllib.parse import quote

from fastapi import APIRouter, Query
from fastapi.responses import JSONResponse, Response
from pydantic import BaseModel, ConfigDict, Field
from starlette.concurrency import iterate_in_threadpool, run_in_threadpool

from llmvox.chat import ChatRequest, ChatSettings, ChatTurn, TranscriptStore, request_from_openai
from llmvox.engine.events import Text
from llmvox.engine.word_times import transcript_words, word_timer
from llmvox.errors import LLMVoXError
from llmvox.llm.base import LLMBackend
from llmvox.server.audio_out import FORMAT_ALIASES, make_encoder, output_rate
from llmvox.server.utterance import DisconnectAwareStreamingResponse, Utterance, audio_body

log = logging.getLogger("llmvox.server.chat")

# the codes chat errors have carried since the first chat server (when the raise names none)
CHAT_CODES = {400: "invalid_input", 409: "chat_type_unavailable", 413: "input_too_large", 422: "no_speech",
              502: "llm_failed", 503: "asr_unavailable"}
MAX_QUESTION_HEADER = 2000  # characters of the encoded question; the whole one is in the transcript


# ---- request bodies (the original's, with the languages optional) -------------------------------
# `system_prompt` (optional, all four): replaces the server's --system_prompt for this turn; "" means none.
# `voice` (optional, all four): the server voice that speaks the answer (GET /v1/audio/voices; None: the default).
MAX_SYSTEM_PROMPT_CHARS = 4000


class TextChatRequest(BaseModel):
    model_config = ConfigDict(extra="ignore")
    text: str
    system_prompt: str | None = Field(default=None, max_length=MAX_SYSTEM_PROMPT_CHARS)
    voice: Any = None  # one of the server's voices (None: the default)


class VoiceChatRequest(BaseModel):
    model_config = ConfigDict(extra="ignore")
    audio_base64: str
    source_language: str | None = None
    target_language: str | None = None
    system_prompt: str | None = Field(default=None, max_length=MAX_SYSTEM_PROMPT_CHARS)
    voice: Any = None  # one of the server's voices (None: the default)


class VisionChatRequest(VoiceChatRequest):
    image_base64: str


class CompletionRequest(BaseModel):
    """OpenAI's chat completions body (the parts llmvox uses)."""

    model_config = ConfigDict(extra="ignore")
    messages: list[Any]
    model: str = "llmvox"
    stream: bool = False
    modalities: list[str] = ["text"]
    audio: dict[str, Any] | None = None
    max_tokens: int | None = None
    max_completion_tokens: int | None = None
    temperature: float | None = None
    top_p: float | None = None


class MultimodalChatRequest(BaseModel):
    model_config = ConfigDict(extra="ignore")
    audio_base64: str
    image_list: list[str] = []
    source_language: str | None = None
    target_language: str | None = None
    system_prompt: str | None = Field(default=None, max_length=MAX_SYSTEM_PROMPT_CHARS)
    voice: Any = None  # one of the server's voices (None: the default)


# ---- state ------------------------------------------------------------------------------------------
@dataclass
class ChatState:
    """What the chat routes need: the LLM, the ASR (None: no voice chat), the settings, and the server
    whose engine speaks the answers (its stream slots, metrics and shutdown state are shared)."""

    llm: LLMBackend
    server: Any  # llmvox.server.app.ServerState (engine, slots, metrics, draining, formats)
    asr: Any | None = None
    settings: ChatSettings = field(default_factory=ChatSettings)
    transcripts: TranscriptStore = field(default_factory=TranscriptStore)
    chat_type: str = "text"  # the server's --chat_type, named in errors

    def unavailable(self, mode: str) -> str | None:
        """Why this server cannot serve `mode` (None when it can)."""
        if mode in ("voice", "visual_speech") and self.asr is None:
            return (f"this server runs --chat_type {self.chat_type} without speech recognition; "
                    f"/{_PATHS[mode]} needs --chat_type voice or visual_speech")
        if mode == "visual_speech" and not getattr(self.llm, "accepts_images", False):
            return (f"this server's LLM takes no images (--chat_type {self.chat_type}); /vlmschat needs "
                    "--chat_type visual_speech with a vision-language model")
        if mode == "multimodal" and not getattr(self.llm, "accepts_audio", False):
            return (f"this server's LLM cannot hear (--chat_type {self.chat_type}); /multimodalchat needs "
                    "--chat_type multimodal with an audio+image model")
        return None


_PATHS = {"text": "textchat", "voice": "voicechat", "visual_speech": "vlmschat", "multimodal": "multimodalchat"}


def error_response(state: ChatState, endpoint: str, exc: LLMVoXError) -> JSONResponse:
    """A turn that could not start, answered as JSON (and counted)."""
    status = exc.http_status
    code = exc.code_for(CHAT_CODES, "chat_failed")
    state.server.metrics.errors.labels(endpoint, code).inc()
    return JSONResponse({"error": {**exc.body()["error"], "code": code}}, status_code=status, headers=exc.headers)


def new_turn_id() -> str:
    """An unguessable id for a chat turn, chosen by the server: the transcript it names holds the user's
    question and answer, so a client can neither pick it (and overwrite another turn) nor guess it.
    The log links it to the request id."""
    turn_id = secrets.token_hex(16)
    log.info("chat turn %s", turn_id)
    return turn_id


def chat_router(state: ChatState) -> APIRouter:
    """The chat endpoints over `state` (mount with `app.include_router(chat_router(state))`).
    """
    router = APIRouter(tags=["chat"])

    @router.post("/textchat", summary="Text question -> spoken answer (float32 24 kHz stream)")
    async def textchat(body: TextChatRequest):
        return await _serve(state, "text", body.model_dump())

    @router.post("/voicechat", summary="Spoken question -> spoken answer (the original /voicechat)")
    async def voicechat(body: VoiceChatRequest):
        return await _serve(state, "voice", body.model_dump())

    @router.post("/vlmschat", summary="Spoken question about an image -> spoken answer (the original /vlmschat)")
    async def vlmschat(body: VisionChatRequest):
        return await _serve(state, "visual_speech", body.model_dump())

    @router.post("/multimodalchat", summary="Speech + images to an audio-capable model -> spoken answer")
    async def multimodalchat(body: MultimodalChatRequest):
        return await _serve(state, "multimodal", body.model_dump())

    @router.post("/v1/chat/completions", summary="OpenAI-style chat; with modalities [text, audio] the answer "
                                                "is also spoken (pcm16 24 kHz in delta.audio.data)")
    async def completions(body: CompletionRequest):
        return await _complete(state, body)

    @router.get("/v1/transcripts/{request_id}", summary="Recognised question and answer text of a chat turn")
    async def transcript(request_id: str, wait: float = Query(0.0, ge=0.0, le=120.0)):
        turn = state.transcripts.get(request_id)
        if turn is None:
            raise LLMVoXError(f"no chat turn {request_id!r} (unknown, or older than 10 minutes)", 404,
                              code="transcript_not_found")
        deadline = time.monotonic() + wait
        if wait > 0 and not turn.done:
            await run_in_threadpool(turn.finished.wait, wait)
        spoken = getattr(turn, "spoken", None)
        while word_timer(spoken) is not None and not spoken.done and time.monotonic() < deadline:  # last words
            await asyncio.sleep(0.05)
        return transcript_words(turn.snapshot(), spoken)

    return router


def _request_settings(settings: ChatSettings, body: CompletionRequest) -> ChatSettings:
    """The server's settings with the request's sampling choices (never more tokens than the server allows);
    a value out of its range is a 400 naming it."""
    checks = {"temperature": (body.temperature, lambda v: 0.0 <= v <= 2.0, "[0, 2]"),
              "top_p": (body.top_p, lambda v: 0.0 < v <= 1.0, "(0, 1]")}
    for name, (value, within, shown) in checks.items():
        if value is not None and not (math.isfinite(value) and within(value)):
            raise LLMVoXError(f"{name} must be a number in {shown} (got {value})", 400, code="invalid_input", param=name)
    for name in ("max_tokens", "max_completion_tokens"):
        value = getattr(body, name)
        if value is not None and value < 1:
            raise LLMVoXError(f"{name} must be at least 1 (got {value})", 400, code="invalid_input", param=name)
    changes: dict[str, Any] = {}
    wanted = body.max_completion_tokens or body.max_tokens
    if wanted:
        changes["max_tokens"] = max(1, min(int(wanted), settings.max_tokens))
    if body.temperature is not None:
        changes["temperature"] = float(body.temperature)
    if body.top_p is not None:
        changes["top_p"] = float(body.top_p)
    return replace(settings, **changes)


async def _serve(state: ChatState, mode: str, body: dict) -> Response:
    """A chat turn answered in speech: float32 audio, or a JSON error before the first audio."""
    endpoint = "/" + _PATHS[mode]
    try:
        reason = state.unavailable(mode)
        if reason:
            raise LLMVoXError(reason, 409)
        settings = state.settings
        if body.get("system_prompt") is not None:  # this turn's own system prompt ("" = none)
            settings = replace(settings, system_prompt=body["system_prompt"].strip() or None)
        async with Utterance(state.server, endpoint, voice=body.get("voice")) as utterance:
            request = await run_in_threadpool(ChatRequest.from_body, mode, body, settings)
            turn = _new_turn(state, utterance, request, settings)
            await run_in_threadpool(turn.start)  # ASR and the first words: errors are still JSON here
            _speak_turn(state, utterance, turn)
            headers = {"X-LLMVoX-Request-Id": turn.id, "Cache-Control": "no-store", "X-LLMVoX-Voice": utterance.voice,
                       "X-LLMVoX-Sample-Rate": str(state.server.sample_rate), "X-LLMVoX-Audio-Format": "f32le"}
            if turn.question:
                headers["X-LLMVoX-Question"] = quote(turn.question, safe=" ?!,.'")[:MAX_QUESTION_HEADER]
            body_bytes = audio_body(utterance.events(), make_encoder("f32", state.server.sample_rate))
            return utterance.respond(body_bytes, media_type="application/octet-stream", headers=headers)
    except LLMVoXError as exc:
        return error_response(state, endpoint, exc)


async def _complete(state: ChatState, body: CompletionRequest) -> Response:
    """OpenAI chat completions: text only (a chat proxy) or spoken too, streamed (SSE) or in one message."""
    endpoint = "/v1/chat/completions"
    try:
        modalities = {str(m).lower() for m in body.modalities}
        if not modalities or modalities - {"text", "audio"}:
            raise LLMVoXError('modalities must be ["text"] or ["text", "audio"]', 400, code="invalid_input")
        settings = _request_settings(state.settings, body)
        if "audio" not in modalities:
            return await _text_completion(state, body, settings)
        fmt, rate = _audio_format(state, body)
        voice = (body.audio or {}).get("voice")
        async with Utterance(state.server, endpoint, voice=voice, voice_param="audio.voice") as utterance:
            request, turn = await _completion_turn(state, utterance, body, settings)
            _speak_turn(state, utterance, turn, echo=True)
            encoder = make_encoder(fmt, state.server.sample_rate, rate)
            spoken = audio_body(utterance.events(), encoder)
            reply = _Completion(body, turn)
            if body.stream:
                headers = {"X-LLMVoX-Request-Id": turn.id, "Cache-Control": "no-store",
                           "X-LLMVoX-Voice": utterance.voice}
                if turn.question and request.mode in ("voice", "visual_speech"):
                    headers["X-LLMVoX-Question"] = quote(turn.question, safe=" ?!,.'")[:MAX_QUESTION_HEADER]
                return utterance.respond(reply.spoken_events(spoken), media_type="text/event-stream",
                                         headers=headers)
            audio = b"".join([item async for item in spoken if isinstance(item, bytes)])
            return reply.message(encoder.whole_file(audio))
    except LLMVoXError as exc:
        return error_response(state, endpoint, exc)


def _speak_turn(state: ChatState, utterance: Utterance, turn: ChatTurn, *, echo: bool = False) -> None:
    """Speak the turn's answer; with a voice that has an aligner its transcript also gets the words'
    times and the last word heard (`turn.spoken` is the stream they are read from)."""
    aligner = getattr(state.server.voices.voices.get(utterance.voice), "aligner", None)
    turn.spoken = utterance.speak(turn.deltas(), request_id=turn.id, echo=echo, timestamps=aligner is not None)


def _new_turn(state: ChatState, utterance: Utterance | None, request: ChatRequest, settings: ChatSettings) -> ChatTurn:
    """A turn, readable by its id at /v1/transcripts, whose LLM stops when its utterance closes."""
    turn = ChatTurn(request, state.llm, asr=state.asr, settings=settings, request_id=new_turn_id())
    state.transcripts.add(turn)
    if utterance is not None:
        utterance.on_close(lambda: turn.done or turn.cancel())
    return turn


async def _completion_turn(state: ChatState, utterance: Utterance | None, body: CompletionRequest,
                           settings: ChatSettings) -> tuple[ChatRequest, ChatTurn]:
    """The turn of an OpenAI chat completion, started (ASR and the LLM's first words)."""
    request = await run_in_threadpool(
        request_from_openai, body.messages, settings,
        llm_hears=bool(getattr(state.llm, "accepts_audio", False)), has_asr=state.asr is not None)
    if any(m["role"] == "system" for m in request.history):
        settings = replace(settings, system_prompt=None)  # the client's system prompt wins
    turn = _new_turn(state, utterance, request, settings)
    await run_in_threadpool(turn.start)
    return request, turn


async def _text_completion(state: ChatState, body: CompletionRequest, settings: ChatSettings) -> Response:
    """["text"] only: a plain chat proxy, no voice and no stream slot."""
    _, turn = await _completion_turn(state, None, body, settings)
    reply = _Completion(body, turn)
    if body.stream:
        return DisconnectAwareStreamingResponse(reply.text_events(), media_type="text/event-stream",
                                                headers={"X-LLMVoX-Request-Id": turn.id, "Cache-Control": "no-store"},
                                                on_close=lambda: turn.done or turn.cancel())
    await run_in_threadpool(lambda: "".join(turn.deltas()))
    return reply.message(None)


def _audio_format(state: ChatState, body: CompletionRequest) -> tuple[str, int]:
    """The response format of the spoken answer: OpenAI's names (pcm16 is our pcm), any this server encodes;
    and its rate (`audio.sample_rate`, ours: as /v1/audio/speech's `sample_rate`)."""
    asked = str((body.audio or {}).get("format", "pcm16")).lower()
    fmt = "pcm" if asked == "pcm16" else FORMAT_ALIASES.get(asked, asked)
    formats = [f for f in state.server.formats if f != "pcm"]
    if fmt not in state.server.formats or fmt == "f32":
        raise LLMVoXError(f"audio.format must be one of pcm16, {', '.join(formats)} (got {asked!r})", 400,
                          code="invalid_input", param="audio.format")
    return fmt, output_rate(fmt, (body.audio or {}).get("sample_rate"), state.server.sample_rate, "audio.sample_rate")


class _Completion:
    """OpenAI's chat.completion shapes (SSE chunks or one message) for one turn."""

    def __init__(self, body: CompletionRequest, turn: ChatTurn) -> None:
        self.turn, self.model = turn, body.model
        self.id, self.audio_id = f"chatcmpl-{turn.id}", f"audio-{turn.id}"
        self.created = int(time.time())

    def chunk(self, delta: dict, finish: str | None = None) -> bytes:
        event = {"id": self.id, "object": "chat.completion.chunk", "created": self.created, "model": self.model,
                 "choices": [{"index": 0, "delta": delta, "finish_reason": finish}]}
        return f"data: {json.dumps(event)}\n\n".encode()

    async def spoken_events(self, spoken: AsyncIterator[bytes | Text]) -> AsyncIterator[bytes]:
        """The answer's text (`delta.audio.transcript`) and audio (`delta.audio.data`) as they come."""
        yield self.chunk({"role": "assistant"})
        async for item in spoken:
            if isinstance(item, Text):
                yield self.chunk({"audio": {"id": self.audio_id, "transcript": item.text}})
            else:
                yield self.chunk({"audio": {"id": self.audio_id, "data": base64.b64encode(item).decode("ascii")}})
        yield self.chunk({}, "stop")
        yield b"data: [DONE]\n\n"

    async def text_events(self) -> AsyncIterator[bytes]:
        yield self.chunk({"role": "assistant"})
        async for delta in iterate_in_threadpool(self.turn.deltas()):
            yield self.chunk({"content": delta})
        yield self.chunk({}, "stop")
        yield b"data: [DONE]\n\n"

    def message(self, audio: bytes | None) -> JSONResponse:
        """The whole answer in one message: text, or the spoken answer (`audio`) with its transcript."""
        turn = self.turn
        message: dict[str, Any] = {"role": "assistant", "content": turn.answer if audio is None else None}
        if audio is not None:
            message["audio"] = {"id": self.audio_id, "data": base64.b64encode(audio).decode("ascii"),
                                "transcript": turn.answer, "expires_at": self.created + 600}
        return JSONResponse({"id": self.id, "object": "chat.completion", "created": self.created,
                             "model": self.model, "llmvox": {"question": turn.question, "error": turn.error},
                             "choices": [{"index": 0, "message": message, "finish_reason": "stop"}]},
                            headers={"X-LLMVoX-Request-Id": turn.id})


def mount(app, server_state) -> ChatState:
    """Load the LLM and ASR that the server's chat flags name and add the chat routes to `app`.

    Called by `llmvox.server.app.create_app` for every chat type but `tts`. The routes share the server's
    engine, stream slots, metrics and guard (API key, origins, body limits).
    """
    from llmvox.chat_flags import asr_from_args, chat_flags, settings_from_args
    from llmvox.llm.select import backend_from_namespace

    args = chat_flags(server_state.settings.chat_options)
    args.chat_type = server_state.settings.chat_type
    llm = backend_from_namespace(args)
    state = ChatState(llm=llm, server=server_state, asr=asr_from_args(args), settings=settings_from_args(args),
                      chat_type=args.chat_type)
    server_state.extras["chat"] = state
    app.include_router(chat_router(state))
    log.info("chat routes: %s with LLM %s, ASR %s", args.chat_type, llm.name,
             getattr(state.asr, "model_dir", None) or "none")
    return state
