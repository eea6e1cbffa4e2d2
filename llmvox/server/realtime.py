"""`WS /v1/realtime`: an OpenAI Realtime-compatible spoken conversation with the server's LLM and voice.

The official clients connect to it unchanged (`AsyncOpenAI(websocket_base_url="ws://HOST:PORT/v1")`,
`client.realtime.connect(model=...)`); see docs/realtime.md for the events. A session holds the
conversation (items), the input audio buffer with server VAD (`realtime_input`), and at most one
response at a time (`realtime_response`). Every bad client event is answered with an `error` event and
the session goes on; a disconnect stops the answer, its LLM and its stream slot at once.
"""

from __future__ import annotations

import asyncio
import base64
import binascii
import json
import logging
import time
from dataclasses import replace
from typing import Any

from fastapi import APIRouter, WebSocket, WebSocketDisconnect

from llmvox.errors import LLMVoXError
from llmvox.server.guard import deny_websocket
from llmvox.server.realtime_input import InputAudio
from llmvox.server.realtime_response import ENDPOINT, Response
from llmvox.server.realtime_session import (
    BETA_NAMES,
    OUTPUT_RATE,
    SessionConfig,
    item_text,
    new_id,
    parse_event,
    parse_item,
    shown_item,
)
from llmvox.server.websocket import run_reader_and_writer

log = logging.getLogger("llmvox.server.realtime")

realtime_router = APIRouter()

MAX_APPEND_SECONDS = 15.0  # one input_audio_buffer.append
MAX_ITEMS = 256  # conversation items kept (the oldest go first; the LLM trims to its context anyway)
PAUSE_MS = 200  # silence that cuts a phrase and starts the answer speculatively
AUDIO_DELTAS = ("response.output_audio.delta", "response.audio.delta")


@realtime_router.websocket(ENDPOINT)
async def realtime(ws: WebSocket) -> None:
    state = ws.app.state.llmvox
    chat = state.extras.get("chat")
    try:  # the API key and Origin were checked by the guard before this handshake
        if chat is None:
            raise LLMVoXError("this server runs --chat_type tts (speech endpoints only); /v1/realtime needs "
                              "--chat_type voice (or text, for text items only)", 409, code="chat_type_unavailable")
        if state.draining or state.engine is None:
            raise LLMVoXError("the server is shutting down", 503, code="shutting_down")
    except LLMVoXError as exc:
        state.metrics.requests.labels(ENDPOINT, str(exc.http_status)).inc()
        await deny_websocket(ws, exc)
        return
    beta = "realtime=v1" in ws.headers.get("openai-beta", "")
    session = RealtimeSession(ws, state, chat, beta=beta, model=ws.query_params.get("model", "llmvox"))
    await ws.accept()
    state.metrics.requests.labels(ENDPOINT, "101").inc()
    log.info("realtime session %s open (%s protocol)", session.id, "beta" if beta else "GA")
    try:
        await session.run()
    finally:
        session.close()
        log.info("realtime session %s closed", session.id)


class RealtimeSession:
    """One connection: a reader (client events, VAD), a writer (server events in order), the conversation."""

    def __init__(self, ws: WebSocket, state: Any, chat: Any, *, beta: bool, model: str) -> None:
        self.ws, self.state, self.chat, self.beta, self.model = ws, state, chat, beta, model[:64]
        self.id = new_id("sess")
        self.config = SessionConfig()
        self.items: list[dict[str, Any]] = []
        self.out: asyncio.Queue = asyncio.Queue()
        self.response: Response | None = None  # the one the client sees
        self.speculative: Response | None = None  # started in a pause, gated until the turn ends
        self.spec_transcript: str | None = None
        self.pending_item: str | None = None  # the user item the current speech will become
        self.commits: asyncio.Task | None = None  # the last commit (each waits for the one before)
        self.input = self._new_input()
        self.last_activity = time.monotonic()
        self.closed = False

    def _new_input(self) -> InputAudio:
        s = self.chat.settings
        return InputAudio(self.config.input_rate, self.config.turn_detection, self.chat.asr, s.asr_language,
                          pause_ms=PAUSE_MS)

    # ---- sending -------------------------------------------------------------------------------------
    def send(self, event: dict[str, Any], *, owner: Response | None = None, final: bool = False) -> None:
        kind = event["type"]
        if self.beta:
            kind = BETA_NAMES.get(kind, kind)
            if kind == "conversation.item.done":
                return  # GA only
            for key in ("item",):
                if key in event:
                    event = {**event, key: shown_item(event[key], True)}
        self.out.put_nowait(({**event, "type": kind, "event_id": new_id("event")}, owner, final))

    def error(self, exc: LLMVoXError, event_id: Any = None) -> None:
        self.send({"type": "error", "error": {"type": exc.type, "code": exc.code, "message": exc.message,
                                              "param": exc.param, "event_id": event_id}})

    async def _writer(self) -> None:
        while True:
            event, owner, final = await self.out.get()
            if event is None:
                await self.ws.close(code=1000)
                return
            if owner is not None and owner.muted and not final:
                continue  # audio of an answer the user interrupted
            await self.ws.send_text(json.dumps(event))
            if owner is not None and event["type"] in AUDIO_DELTAS:
                owner.delivered()
                self.last_activity = time.monotonic()

    # ---- run -----------------------------------------------------------------------------------------
    async def run(self) -> None:
        self.send({"type": "session.created", "session": self._session_shape()})
        await run_reader_and_writer(self._reader(), self._writer())

    async def _reader(self) -> None:
        idle = self.state.settings.idle_timeout
        while True:
            try:
                async with asyncio.timeout(idle):
                    message = await self.ws.receive()
            except TimeoutError:
                busy = self.response is not None and not self.response.finished.is_set()
                if busy or time.monotonic() - self.last_activity < idle:
                    continue
                self.error(LLMVoXError(f"no client event for {idle:g} s (--idle_timeout); closing the session", 408,
                                       code="idle_timeout"))
                self.out.put_nowait((None, None, True))
                return
            self.last_activity = time.monotonic()
            if message["type"] == "websocket.disconnect":
                raise WebSocketDisconnect(message.get("code", 1000))
            event = self._parse(message)
            if event is None:
                continue
            try:
                await self._handle(event)
            except LLMVoXError as exc:
                self.error(exc, event.get("event_id"))

    def _parse(self, message: dict[str, Any]) -> dict[str, Any] | None:
        try:
            return parse_event(message.get("text"), self._max_append_chars() + 4096)
        except LLMVoXError as exc:
            self.error(exc)
            return None

    def _max_append_chars(self) -> int:
        return int(MAX_APPEND_SECONDS * self.config.input_rate * 2 * 4 / 3) + 4

    async def _handle(self, event: dict[str, Any]) -> None:
        handler = _HANDLERS.get(event["type"])
        if handler is None:
            raise LLMVoXError(f"unknown client event type {event['type']!r}", 400, code="unknown_event", param="type")
        await handler(self, event)

    # ---- session and input audio -----------------------------------------------------------------------
    def _session_shape(self) -> dict[str, Any]:
        return self.config.shape(self.beta, self.chat.settings.system_prompt, self.id, self.model)

    async def session_update(self, event: dict[str, Any]) -> None:
        new = self.config.updated(event.get("session"))
        self.state.voices.resolve(new.voice, "session.voice")  # an unknown voice: an error event, nothing changed
        old, self.config = self.config, new
        if (old.input_rate, old.turn_detection) != (self.config.input_rate, self.config.turn_detection):
            self._discard_speculation()
            self.input.reset()
            self.input = self._new_input()
        self.send({"type": "session.updated", "session": self._session_shape()})

    async def append(self, event: dict[str, Any]) -> None:
        audio = event.get("audio")
        if not isinstance(audio, str):
            raise LLMVoXError('"audio" must be a base64 string of pcm16 samples', 400, code="invalid_value",
                              param="audio")
        if len(audio) > self._max_append_chars():
            raise LLMVoXError(f"one append holds at most {MAX_APPEND_SECONDS:g} s of audio; send smaller pieces",
                              400, code="audio_too_large", param="audio")
        try:
            pcm = base64.b64decode(audio, validate=True)
        except (binascii.Error, ValueError):
            raise LLMVoXError('"audio" is not valid base64', 400, code="invalid_base64", param="audio") from None
        if len(pcm) % 2:
            raise LLMVoXError('"audio" has an odd number of bytes, so it is not pcm16', 400,
                              code="invalid_audio_format", param="audio")
        if self.chat.asr is None:
            raise LLMVoXError("this server has no speech recognition (--chat_type text): send text items", 409,
                              code="asr_unavailable")
        limit_ms = self.chat.settings.audio.max_seconds * 1000
        if self.input.buffered_ms + len(pcm) * 500 // self.config.input_rate > limit_ms:
            self._discard_speculation()
            self.input.reset()
            raise LLMVoXError(f"the turn's audio passed {limit_ms / 1000:g} s (--asr_max_audio_length); the input "
                              "buffer was cleared", 400, code="input_audio_buffer_too_long")
        for vad in self.input.append(pcm):
            self._on_vad(vad.kind, vad.ms)

    def _on_vad(self, kind: str, ms: int) -> None:
        detection = self.config.turn_detection
        if kind == "start":
            self.pending_item = new_id("item")
            self.send({"type": "input_audio_buffer.speech_started", "audio_start_ms": ms,
                       "item_id": self.pending_item})
            self.input.speech_started(ms)
            self._discard_speculation()
            answer = self.response
            if detection.interrupt_response and answer is not None and not answer.finished.is_set():
                self._interrupt(answer, "turn_detected")
        elif kind == "pause":
            self.input.cut_phrase(ms)
            if detection.create_response:
                asyncio.get_running_loop().create_task(self._speculate())
        elif kind == "resume":
            self.input.resumed()
            self._discard_speculation()
        elif kind == "stop":
            self.send({"type": "input_audio_buffer.speech_stopped", "audio_end_ms": ms,
                       "item_id": self.pending_item or new_id("item")})
            self._queue_commit(ms, auto=detection.create_response)

    async def commit(self, event: dict[str, Any]) -> None:
        if not self.input.has_audio():
            raise LLMVoXError("the input audio buffer holds less than 100 ms of audio; nothing to commit", 400,
                              code="input_audio_buffer_commit_empty")
        self._queue_commit(None, auto=False)

    async def clear(self, event: dict[str, Any]) -> None:
        self._discard_speculation()
        self.input.reset()
        self.send({"type": "input_audio_buffer.cleared"})

    def _queue_commit(self, speech_end_ms: int | None, *, auto: bool) -> None:
        previous = self.commits
        item_id, self.pending_item = self.pending_item or new_id("item"), None
        # the buffer is taken now (later audio belongs to the next turn); its recognition may still run
        job = self.input.commit(speech_end_ms)
        speech_wall = self.input.last_speech_wall
        committed_at = time.perf_counter()

        async def run() -> None:
            if previous is not None:
                await asyncio.gather(previous, return_exceptions=True)
            try:
                done = await job
            except Exception as exc:  # noqa: BLE001 - a broken recogniser fails the turn, not the session
                log.exception("realtime %s: speech recognition failed", self.id)
                self.send({"type": "conversation.item.input_audio_transcription.failed", "item_id": item_id,
                           "content_index": 0, "error": {"type": "server_error", "code": "transcription_failed",
                                                         "message": f"speech recognition failed ({type(exc).__name__})"}})
                return
            self.send({"type": "input_audio_buffer.committed", "item_id": item_id,
                       "previous_item_id": self.items[-1]["id"] if self.items else None})
            self.add_item({"id": item_id, "object": "realtime.item", "type": "message", "role": "user",
                           "status": "completed", "content": [{"type": "input_audio", "transcript": done.transcript}]},
                          announce=True)
            self.send({"type": "conversation.item.input_audio_transcription.completed", "item_id": item_id,
                       "content_index": 0, "transcript": done.transcript,
                       "usage": {"type": "duration", "seconds": done.audio_ms / 1000}})
            if not auto:
                self._discard_speculation()
                return
            if not done.transcript:
                self._discard_speculation()
                return
            timings = {"vad_hangover_ms": (committed_at - speech_wall) * 1000 if speech_wall else 0.0,
                       "asr_tail_ms": done.asr_tail_ms, "asr_ms": done.asr_ms}
            self._answer(done.transcript, timings, speech_wall)

        self.commits = asyncio.get_running_loop().create_task(run())

    # ---- speculation -----------------------------------------------------------------------------------
    async def _speculate(self) -> None:
        """In a pause: recognise the phrases so far and start the answer, held until the turn really ends."""
        phrases = len(self.input.phrases)
        transcript = await self.input.transcript_so_far()
        if (not transcript or self.input.speech_since_cut or len(self.input.phrases) != phrases
                or self.input.turn_start is None or self.speculative is not None or self._busy()):
            return  # the user spoke on, the turn was committed, or an answer is running
        self.spec_transcript = transcript
        self.speculative = Response(self, self._messages(extra=transcript), self._settings(), audio=self._audio_out(),
                                    gated=True, timings={"speculative": 1.0})

    def _discard_speculation(self) -> None:
        spec, self.speculative, self.spec_transcript = self.speculative, None, None
        if spec is not None:
            spec.cancel("turn_detected")

    def _busy(self) -> bool:
        return self.response is not None and not self.response.finished.is_set()

    # ---- responses -------------------------------------------------------------------------------------
    def _answer(self, transcript: str, timings: dict[str, float], speech_wall: float | None) -> None:
        spec = self.speculative
        if spec is not None and self.spec_transcript == transcript and not spec.muted and not self._busy():
            self.speculative = self.spec_transcript = None
            spec.timings.update(timings)
            self._show(spec, speech_wall)
            spec.open()
            return
        self._discard_speculation()
        if self._busy():
            return
        self._show(Response(self, self._messages(), self._settings(), audio=self._audio_out(),
                            timings={"speculative": 0.0, **timings}), speech_wall)

    def _show(self, response: Response, speech_wall: float | None) -> None:
        self.response, response.speech_wall = response, speech_wall

    def first_audio_sent(self, response: Response) -> None:
        wall = response.speech_wall
        if wall is not None:
            response.timings["end_of_speech_to_first_audio_ms"] = (time.perf_counter() - wall) * 1000
        log.info("realtime %s: first audio; timings %s", response.id,
                 {k: round(v) for k, v in response.timings.items()})

    def _audio_out(self) -> bool:
        return "audio" in self.config.output_modalities

    def _settings(self, max_tokens: int | None = None):
        s = self.chat.settings
        wanted = max_tokens or self.config.max_output_tokens or s.max_tokens
        return replace(s, max_tokens=max(1, min(wanted, s.max_tokens)))

    def _messages(self, extra: str | None = None, instructions: str | None = None) -> list[dict]:
        system = instructions if instructions is not None else self.config.instructions
        if system is None:
            system = self.chat.settings.system_prompt
        out = [{"role": "system", "content": system}] if system else []
        for item in self.items:
            text = item_text(item)
            if text:
                out.append({"role": item["role"], "content": text})
        if extra:
            out.append({"role": "user", "content": extra})
        return out

    async def response_create(self, event: dict[str, Any]) -> None:
        if self._busy():
            raise LLMVoXError("a response is already in progress; cancel it or wait for response.done", 400,
                              code="conversation_already_has_active_response")
        params = event.get("response") or {}
        if not isinstance(params, dict):
            raise LLMVoXError('"response" must be an object', 400, code="invalid_value", param="response")
        probe = self.config.updated({k: params[k] for k in ("instructions", "output_modalities", "modalities",
                                                           "max_output_tokens") if k in params})
        self._discard_speculation()
        self._show(Response(self, self._messages(instructions=probe.instructions),
                            self._settings(probe.max_output_tokens), audio="audio" in probe.output_modalities),
                   None)

    async def response_cancel(self, event: dict[str, Any]) -> None:
        answer = self.response
        wanted = event.get("response_id")
        if answer is None or answer.finished.is_set() or (wanted and wanted != answer.id):
            raise LLMVoXError("there is no response in progress to cancel", 400, code="response_cancel_not_active")
        self._interrupt(answer, "client_cancelled")

    def _interrupt(self, answer: Response, reason: str, audio_end_ms: int | None = None) -> None:
        cut = answer.cancel(reason, audio_end_ms)
        if answer.audio:
            answer.truncate(cut)
            self.send({"type": "conversation.item.truncated", "item_id": answer.item_id, "content_index": 0,
                       "audio_end_ms": cut})

    # ---- conversation items ----------------------------------------------------------------------------
    def add_item(self, item: dict[str, Any], *, announce: bool, owner: Response | None = None,
                 after: int | None = None) -> None:
        previous = self.items[after - 1]["id"] if after else (self.items[-1]["id"] if self.items else None)
        if after is None:
            self.items.append(item)
        else:
            self.items.insert(after, item)
        del self.items[:-MAX_ITEMS]
        if announce:
            self.send({"type": "conversation.item.added", "previous_item_id": previous, "item": item}, owner=owner)
            if item["status"] == "completed":
                self.send({"type": "conversation.item.done", "previous_item_id": previous, "item": item})

    def _find(self, item_id: Any) -> int:
        for i, item in enumerate(self.items):
            if item["id"] == item_id:
                return i
        raise LLMVoXError(f"no conversation item {item_id!r}", 400, code="item_not_found", param="item_id")

    async def item_create(self, event: dict[str, Any]) -> None:
        item = parse_item(event.get("item"))
        limit = self.state.settings.max_text_chars
        if len(item_text(item)) > limit:
            raise LLMVoXError(f"the item has {len(item_text(item))} characters; the limit is {limit}", 400,
                              code="text_too_long", param="item.content")
        if any(i["id"] == item["id"] for i in self.items):
            raise LLMVoXError(f"an item with id {item['id']!r} already exists", 400, code="duplicate_item_id",
                              param="item.id")
        previous = event.get("previous_item_id")
        after = None
        if previous == "root":
            after = 0
        elif previous is not None:
            after = self._find(previous) + 1
        self.add_item(item, announce=True, after=after)

    async def item_truncate(self, event: dict[str, Any]) -> None:
        index = self._find(event.get("item_id"))
        item, end = self.items[index], event.get("audio_end_ms")
        owner = self.response if self.response is not None and self.response.item_id == item["id"] else None
        if item["role"] != "assistant" or not item["content"] or item["content"][0]["type"] != "output_audio":
            raise LLMVoXError("only an assistant item with audio can be truncated", 400, code="invalid_value",
                              param="item_id")
        if event.get("content_index", 0) != 0:
            raise LLMVoXError("content_index must be 0 (an item has one audio part)", 400, code="invalid_value",
                              param="content_index")
        if isinstance(end, bool) or not isinstance(end, int) or end < 0:
            raise LLMVoXError("audio_end_ms must be a whole number of milliseconds >= 0", 400, code="invalid_value",
                              param="audio_end_ms")
        if owner is None:
            raise LLMVoXError("this server truncates only the latest response's item", 400, code="invalid_value",
                              param="item_id")
        sent = owner.sent_samples * 1000 // OUTPUT_RATE
        if end > sent:
            raise LLMVoXError(f"audio_end_ms {end} is past the item's {sent} ms of audio", 400, code="invalid_value",
                              param="audio_end_ms")
        if not owner.finished.is_set():
            self._interrupt(owner, "client_cancelled", end)
            return
        owner.truncate(end)
        self.send({"type": "conversation.item.truncated", "item_id": item["id"], "content_index": 0,
                   "audio_end_ms": end})

    async def item_delete(self, event: dict[str, Any]) -> None:
        item = self.items.pop(self._find(event.get("item_id")))
        self.send({"type": "conversation.item.deleted", "item_id": item["id"]})

    async def item_retrieve(self, event: dict[str, Any]) -> None:
        item = self.items[self._find(event.get("item_id"))]
        self.send({"type": "conversation.item.retrieved", "item": item})

    async def output_clear(self, event: dict[str, Any]) -> None:
        if self._busy():
            self._interrupt(self.response, "client_cancelled")
        self.send({"type": "output_audio_buffer.cleared", "response_id": getattr(self.response, "id", None)})

    def close(self) -> None:
        """The client left (or the session ended): stop everything it started, now."""
        if self.closed:
            return
        self.closed = True
        self._discard_speculation()
        if self._busy():
            self.response.cancel("client_cancelled")
            self.state.metrics.disconnects.labels(ENDPOINT).inc()
        self.input.reset()
        if self.commits is not None:
            self.commits.cancel()


_HANDLERS = {
    "session.update": RealtimeSession.session_update,
    "input_audio_buffer.append": RealtimeSession.append,
    "input_audio_buffer.commit": RealtimeSession.commit,
    "input_audio_buffer.clear": RealtimeSession.clear,
    "conversation.item.create": RealtimeSession.item_create,
    "conversation.item.truncate": RealtimeSession.item_truncate,
    "conversation.item.delete": RealtimeSession.item_delete,
    "conversation.item.retrieve": RealtimeSession.item_retrieve,
    "response.create": RealtimeSession.response_create,
    "response.cancel": RealtimeSession.response_cancel,
    "output_audio_buffer.clear": RealtimeSession.output_clear,
}
