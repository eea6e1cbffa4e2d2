"""Chat endpoints: text, voice, voice about a picture, and native audio+image chat, answered in speech.

The routes are thin: `llmvox.chat` parses the original request bodies, runs ASR and streams the LLM's
answer; a `Speaker` turns those deltas into audio (normally the server's `SpeechEngine`). Everything
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
(data URL) parts.

`GET /v1/transcripts/{id}` returns `{"id", "mode", "question", "answer", "done", "cancelled", "error",
"asr_seconds", "first_token_seconds"}`: the answer text so far, or (with `?wait=SECONDS`) once the
answer is complete. Turns are kept for 10 minutes (the 256 most recent).
"""

from __future__ import annotations

import asyncio
import base64
import contextlib
import json
import logging
import math
import secrets
import threading
import time
from collections.abc import Callable, Iterable, Iterator
from dataclasses import dataclass, field, replace
from typing import Any, Protocol
from urllib.parse import quote

import numpy as np
from fastapi import APIRouter, Query
from fastapi.responses import JSONResponse, StreamingResponse
from pydantic import BaseModel, ConfigDict, Field
from starlette.concurrency import iterate_in_threadpool, run_in_threadpool

from llmvox.chat import ChatError, ChatRequest, ChatSettings, ChatTurn, TranscriptStore, request_from_openai
from llmvox.llm.base import LLMBackend
from llmvox.server.schemas import ApiError

log = logging.getLogger("llmvox.server.chat")

AUDIO_HEADERS = {"X-LLMVoX-Sample-Rate": "24000", "X-LLMVoX-Audio-Format": "f32le"}
MAX_QUESTION_HEADER = 2000  # characters of the encoded question; the whole one is in the transcript


# ---- request bodies (the original's, with the languages optional) -------------------------------
# `system_prompt` (optional, all four): replaces the server's --system_prompt for this turn; "" means none.
MAX_SYSTEM_PROMPT_CHARS = 4000


class TextChatRequest(BaseModel):
    model_config = ConfigDict(extra="ignore")
    text: str
    system_prompt: str | None = Field(default=None, max_length=MAX_SYSTEM_PROMPT_CHARS)


class VoiceChatRequest(BaseModel):
    model_config = ConfigDict(extra="ignore")
    audio_base64: str
    source_language: str | None = None
    target_language: str | None = None
    system_prompt: str | None = Field(default=None, max_length=MAX_SYSTEM_PROMPT_CHARS)


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


# ---- speech output --------------------------------------------------------------------------------
class SpokenAnswer(Protocol):
    """Audio for one answer: iterate for float32 chunks; `cancel()` ends the iteration promptly."""

    def __iter__(self) -> Iterator[np.ndarray]: ...

    def cancel(self) -> None: ...


class Speaker(Protocol):
    def __call__(self, deltas: Iterable[str], request_id: str) -> SpokenAnswer: ...


class EngineSpeaker:
    """A `Speaker` over the streaming engine: a feeder thread pushes the deltas into an engine stream.

    `engine` is a `SpeechEngine` or a function returning it (the app starts its engine after the routes
    are mounted).
    """

    def __init__(self, engine, config=None) -> None:
        self._engine, self.config = engine, config

    @property
    def engine(self):
        return self._engine() if callable(self._engine) else self._engine

    def __call__(self, deltas: Iterable[str], request_id: str) -> _EngineAnswer:
        engine = self.engine
        if engine is None:
            raise ChatError("the speech engine is not running yet", 503)
        return _EngineAnswer(engine.open(self.config, request_id=request_id), deltas)


class _EngineAnswer:
    def __init__(self, stream, deltas: Iterable[str]) -> None:
        self.stream = stream
        self._feeder = threading.Thread(target=self._feed, args=(deltas,), name=f"chat-feed-{stream.request_id}",
                                        daemon=True)
        self._feeder.start()

    def _feed(self, deltas: Iterable[str]) -> None:
        iterator = iter(deltas)
        try:
            for delta in iterator:
                if self.stream.done:
                    break
                self.stream.feed(delta)
            if not self.stream.done:
                self.stream.end()
        except BaseException as exc:  # noqa: BLE001 - the text side failed: end the audio with it
            if not self.stream.done:
                self.stream.fail(exc)
        finally:
            close = getattr(iterator, "close", None)
            if close is not None:
                close()

    def __iter__(self) -> Iterator[np.ndarray]:
        for chunk in self.stream.chunks():
            if len(chunk.samples):
                yield chunk.samples

    def cancel(self) -> None:
        self.stream.cancel()


# ---- state ------------------------------------------------------------------------------------------
@dataclass
class ChatState:
    """What the chat routes need: the LLM, the ASR (None: no voice chat), the speaker, the settings."""

    llm: LLMBackend
    speak: Speaker
    asr: Any | None = None
    settings: ChatSettings = field(default_factory=ChatSettings)
    transcripts: TranscriptStore = field(default_factory=TranscriptStore)
    chat_type: str = "text"  # the server's --chat_type, named in errors
    slots: Any | None = None  # the server's StreamSlots (acquire/release): chat answers count as streams
    metrics: Any | None = None  # the server's Metrics (ttfa, disconnects, errors by endpoint)
    draining: Any = None  # function: True while the server shuts down

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


def error_response(status: int, message: str, code: str) -> JSONResponse:
    return JSONResponse(ApiError(status, message, code=code).body(), status_code=status)


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

    async def serve(mode: str, body: dict) -> JSONResponse | StreamingResponse:
        endpoint = "/" + _PATHS[mode]
        reason = state.unavailable(mode)
        if reason:
            return error_response(409, reason, "chat_type_unavailable")
        if state.draining is not None and state.draining():
            return error_response(503, "the server is shutting down", "shutting_down")
        started = time.perf_counter()
        lease = None
        if state.slots is not None:
            try:
                lease = await state.slots.acquire()
            except ApiError as exc:
                return JSONResponse(exc.body(), status_code=exc.status, headers=exc.headers)
        turn = answer = None
        settings = state.settings
        if body.get("system_prompt") is not None:  # this turn's own system prompt ("" = none)
            settings = replace(settings, system_prompt=body["system_prompt"].strip() or None)
        try:
            request = await run_in_threadpool(ChatRequest.from_body, mode, body, settings)
            turn = ChatTurn(request, state.llm, asr=state.asr, settings=settings, request_id=new_turn_id())
            state.transcripts.add(turn)
            await run_in_threadpool(turn.start)  # ASR and the first words: errors are still JSON here
            answer = state.speak(turn.deltas(), turn.id)
        except ChatError as exc:
            if turn is not None:
                turn.cancel()
            _release(lease)
            _count_error(state, endpoint, _code(exc.status))
            return error_response(exc.status, str(exc), _code(exc.status))
        except BaseException:
            _release(lease)
            raise
        close = _closer(state, endpoint, turn, answer, lease)

        async def audio():
            first = True
            try:
                async for chunk in iterate_in_threadpool(iter(answer)):
                    if first and state.metrics is not None:
                        state.metrics.ttfa.labels(endpoint).observe(time.perf_counter() - started)
                    first = False
                    yield np.ascontiguousarray(chunk, dtype="<f4").tobytes()
            finally:
                close()

        headers = {"X-LLMVoX-Request-Id": turn.id, "Cache-Control": "no-store", **AUDIO_HEADERS}
        if turn.question:
            headers["X-LLMVoX-Question"] = quote(turn.question, safe=" ?!,.'")[:MAX_QUESTION_HEADER]
        return _streaming_response(audio(), headers, close)

    @router.post("/textchat", summary="Text question -> spoken answer (float32 24 kHz stream)")
    async def textchat(body: TextChatRequest):
        return await serve("text", body.model_dump())

    @router.post("/voicechat", summary="Spoken question -> spoken answer (the original /voicechat)")
    async def voicechat(body: VoiceChatRequest):
        return await serve("voice", body.model_dump())

    @router.post("/vlmschat", summary="Spoken question about an image -> spoken answer (the original /vlmschat)")
    async def vlmschat(body: VisionChatRequest):
        return await serve("visual_speech", body.model_dump())

    @router.post("/multimodalchat", summary="Speech + images to an audio-capable model -> spoken answer")
    async def multimodalchat(body: MultimodalChatRequest):
        return await serve("multimodal", body.model_dump())

    @router.post("/v1/chat/completions", summary="OpenAI-style chat; with modalities [text, audio] the answer "
                                                "is also spoken (pcm16 24 kHz in delta.audio.data)")
    async def completions(body: CompletionRequest):
        return await complete(body)

    async def complete(body: CompletionRequest):
        endpoint = "/v1/chat/completions"
        modalities = {str(m).lower() for m in body.modalities}
        if not modalities or modalities - {"text", "audio"}:
            return error_response(400, 'modalities must be ["text"] or ["text", "audio"]', "invalid_input")
        want_audio = "audio" in modalities
        audio_format = str((body.audio or {}).get("format", "pcm16")).lower()
        if want_audio and audio_format not in ("pcm16", "wav"):
            return error_response(400, "audio.format must be pcm16 or wav", "invalid_input")
        if state.draining is not None and state.draining():
            return error_response(503, "the server is shutting down", "shutting_down")
        settings = _request_settings(state.settings, body)
        started = time.perf_counter()
        lease = None
        if state.slots is not None and want_audio:
            try:
                lease = await state.slots.acquire()
            except ApiError as exc:
                return JSONResponse(exc.body(), status_code=exc.status, headers=exc.headers)
        turn = answer = None
        try:
            request = await run_in_threadpool(
                request_from_openai, body.messages, settings,
                llm_hears=bool(getattr(state.llm, "accepts_audio", False)), has_asr=state.asr is not None)
            if any(m["role"] == "system" for m in request.history):
                settings = replace(settings, system_prompt=None)  # the client's system prompt wins
            turn = ChatTurn(request, state.llm, asr=state.asr, settings=settings, request_id=new_turn_id())
            state.transcripts.add(turn)
            await run_in_threadpool(turn.start)
        except ChatError as exc:
            if turn is not None:
                turn.cancel()
            _release(lease)
            _count_error(state, endpoint, _code(exc.status))
            return error_response(exc.status, str(exc), _code(exc.status))
        except BaseException:
            _release(lease)
            raise

        loop = asyncio.get_running_loop()
        events: asyncio.Queue = asyncio.Queue()

        def put(item) -> None:
            with contextlib.suppress(RuntimeError):  # the loop is gone: nobody listens any more
                loop.call_soon_threadsafe(events.put_nowait, item)

        def text_tee():
            try:
                for delta in turn.deltas():
                    put(("text", delta))
                    yield delta
            finally:
                put(("text_end", None))

        def pump() -> None:
            if not want_audio:
                for _ in text_tee():
                    pass
                return
            try:
                for chunk in answer:
                    put(("audio", chunk))
            except Exception as exc:  # noqa: BLE001 - reported in the log; the answer text is still sent
                log.error("%s: speech failed: %s", endpoint, exc)
            finally:
                put(("audio_end", None))

        if want_audio:
            try:
                answer = state.speak(text_tee(), turn.id)
            except ChatError as exc:  # the voice could not take the answer: nothing was said yet
                turn.cancel(str(exc))
                _release(lease)
                _count_error(state, endpoint, _code(exc.status))
                return error_response(exc.status, str(exc), _code(exc.status))
        threading.Thread(target=pump, name=f"chat-completion-{turn.id}", daemon=True).start()
        pending = {"text_end", "audio_end"} if want_audio else {"text_end"}
        close = _closer(state, endpoint, turn, answer, lease)

        async def events_in_order():
            """(kind, payload) until the text and the audio have both ended."""
            first_audio = True
            while pending:
                kind, payload = await events.get()
                if kind in pending:
                    pending.discard(kind)
                    continue
                if kind == "audio" and first_audio and state.metrics is not None:
                    state.metrics.ttfa.labels(endpoint).observe(time.perf_counter() - started)
                    first_audio = False
                yield kind, payload

        completion_id = f"chatcmpl-{turn.id}"
        audio_id = f"audio-{turn.id}"
        created = int(time.time())
        base = {"id": completion_id, "object": "chat.completion.chunk", "created": created, "model": body.model}

        def chunk(delta: dict, finish: str | None = None) -> bytes:
            event = {**base, "choices": [{"index": 0, "delta": delta, "finish_reason": finish}]}
            return f"data: {json.dumps(event)}\n\n".encode()

        if body.stream:
            async def sse():
                try:
                    yield chunk({"role": "assistant"})
                    async for kind, payload in events_in_order():
                        if kind == "text":
                            yield chunk({"audio": {"id": audio_id, "transcript": payload}} if want_audio
                                        else {"content": payload})
                        else:
                            yield chunk({"audio": {"id": audio_id, "data": _pcm16_b64(payload)}})
                    yield chunk({}, "stop")
                    yield b"data: [DONE]\n\n"
                finally:
                    close()

            headers = {"X-LLMVoX-Request-Id": turn.id, "Cache-Control": "no-store"}
            if turn.question and request.mode in ("voice", "visual_speech"):
                headers["X-LLMVoX-Question"] = quote(turn.question, safe=" ?!,.'")[:MAX_QUESTION_HEADER]
            return _streaming_response(sse(), headers, close, media_type="text/event-stream")

        pieces: list[np.ndarray] = []
        try:
            async for kind, payload in events_in_order():
                if kind == "audio":
                    pieces.append(np.asarray(payload, dtype=np.float32))
        finally:
            close()
        message: dict[str, Any] = {"role": "assistant", "content": None if want_audio else turn.answer}
        if want_audio:
            samples = np.concatenate(pieces) if pieces else np.zeros(0, np.float32)
            data = _wav_b64(samples) if audio_format == "wav" else _pcm16_b64(samples)
            message["audio"] = {"id": audio_id, "data": data, "transcript": turn.answer, "expires_at": created + 600}
        return JSONResponse({"id": completion_id, "object": "chat.completion", "created": created,
                             "model": body.model, "llmvox": {"question": turn.question, "error": turn.error},
                             "choices": [{"index": 0, "message": message, "finish_reason": "stop"}]},
                            headers={"X-LLMVoX-Request-Id": turn.id})

    @router.get("/v1/transcripts/{request_id}", summary="Recognised question and answer text of a chat turn")
    async def transcript(request_id: str, wait: float = Query(0.0, ge=0.0, le=120.0)):
        turn = state.transcripts.get(request_id)
        if turn is None:
            return error_response(404, f"no chat turn {request_id!r} (unknown, or older than 10 minutes)",
                                  "transcript_not_found")
        if wait > 0 and not turn.done:
            await run_in_threadpool(turn.finished.wait, wait)
        return turn.snapshot()

    return router


def _request_settings(settings: ChatSettings, body: CompletionRequest) -> ChatSettings:
    """The server's settings with the request's sampling choices (never more tokens than the server allows);
    a value out of its range is a 400 naming it."""
    checks = {"temperature": (body.temperature, lambda v: 0.0 <= v <= 2.0, "[0, 2]"),
              "top_p": (body.top_p, lambda v: 0.0 < v <= 1.0, "(0, 1]")}
    for name, (value, within, shown) in checks.items():
        if value is not None and not (math.isfinite(value) and within(value)):
            raise ApiError(400, f"{name} must be a number in {shown} (got {value})", code="invalid_input", param=name)
    for name in ("max_tokens", "max_completion_tokens"):
        value = getattr(body, name)
        if value is not None and value < 1:
            raise ApiError(400, f"{name} must be at least 1 (got {value})", code="invalid_input", param=name)
    changes: dict[str, Any] = {}
    wanted = body.max_completion_tokens or body.max_tokens
    if wanted:
        changes["max_tokens"] = max(1, min(int(wanted), settings.max_tokens))
    if body.temperature is not None:
        changes["temperature"] = float(body.temperature)
    if body.top_p is not None:
        changes["top_p"] = float(body.top_p)
    return replace(settings, **changes)


def _pcm16_b64(samples: np.ndarray) -> str:
    pcm = np.rint(np.clip(np.asarray(samples, dtype=np.float32), -1.0, 1.0) * 32767.0).astype("<i2")
    return base64.b64encode(pcm.tobytes()).decode("ascii")


def _wav_b64(samples: np.ndarray, rate: int = 24000) -> str:
    import io

    import soundfile as sf

    buffer = io.BytesIO()
    sf.write(buffer, np.asarray(samples, dtype=np.float32), rate, format="WAV", subtype="PCM_16")
    return base64.b64encode(buffer.getvalue()).decode("ascii")


def _closer(state: ChatState, endpoint: str, turn: Any, answer: Any | None, lease: Any | None) -> Callable[[], None]:
    """A close() that acts once however a response ends: stop the LLM turn and the voice, free the slot."""
    closed = False

    def close() -> None:
        nonlocal closed
        if closed:
            return
        closed = True
        if not turn.done:
            turn.cancel()
            if state.metrics is not None:
                state.metrics.disconnects.labels(endpoint).inc()
            log.info("%s: answer cut short (client gone or stream ended early); LLM stopped", endpoint)
        if answer is not None:
            answer.cancel()
        _release(lease)

    return close


def _release(lease: Any | None) -> None:
    if lease is not None:
        lease.release()


def _count_error(state: ChatState, endpoint: str, kind: str) -> None:
    if state.metrics is not None:
        state.metrics.errors.labels(endpoint, kind).inc()


def _streaming_response(body, headers: dict, on_close,
                        media_type: str = "application/octet-stream") -> StreamingResponse:
    """The server's disconnect-aware response when present (it cancels at once, even while waiting for
    the next chunk), else starlette's."""
    try:
        from llmvox.server.routes import DisconnectAwareStreamingResponse
    except ImportError:
        return StreamingResponse(body, media_type=media_type, headers=headers)
    return DisconnectAwareStreamingResponse(body, media_type=media_type, headers=headers, on_close=on_close)


def mount(app, server_state) -> ChatState:
    """Load the LLM and ASR that the server's chat flags name and add the chat routes to `app`.

    Called by `llmvox.server.app.create_app` for every chat type but `tts` (through
    `llmvox.server.chat.mount`). The routes share the server's engine, stream slots, metrics and API key.
    """
    import argparse

    from llmvox.chat import asr_from_args, settings_from_args
    from llmvox.llm.select import backend_from_namespace

    options = dict(server_state.settings.chat_options or {})
    options["chat_type"] = server_state.settings.chat_type
    args = argparse.Namespace(**options)
    llm = backend_from_namespace(args)
    state = ChatState(llm=llm, speak=EngineSpeaker(lambda: server_state.engine), asr=asr_from_args(args),
                      settings=settings_from_args(args), chat_type=args.chat_type, slots=server_state.slots,
                      metrics=server_state.metrics, draining=lambda: server_state.draining)
    server_state.extras["chat"] = state
    app.include_router(chat_router(state))  # the API key is checked by the server's guard
    log.info("chat routes: %s with LLM %s, ASR %s", args.chat_type, llm.name,
             getattr(state.asr, "model_dir", None) or "none")
    return state


def _code(status: int) -> str:
    return {400: "invalid_input", 409: "chat_type_unavailable", 413: "input_too_large", 422: "no_speech",
            502: "llm_failed", 503: "asr_unavailable"}.get(status, "chat_failed")
