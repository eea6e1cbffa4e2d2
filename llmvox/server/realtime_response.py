"""One Realtime response: the conversation so far -> the server's LLM -> the voice, as OpenAI's response events.

It runs as every speaking endpoint does (`Utterance`: a stream slot, `speak(turn.deltas())`, the events
of its `EventBridge`), and keeps what a barge-in needs: how much audio went out, and which words each
sentence's audio holds, so the assistant item can be cut to what the user heard. A response may start
gated (speculatively, while the user's pause is not yet the end of the turn): its events are held until
`open()`, or it is cancelled without the client ever seeing it.
"""

from __future__ import annotations

import asyncio
import base64
import logging
import time
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

from starlette.concurrency import iterate_in_threadpool, run_in_threadpool

from llmvox.chat import ChatRequest, ChatSettings, ChatTurn
from llmvox.engine.events import AudioChunk, Done, Failed, Text
from llmvox.errors import LLMVoXError
from llmvox.server.audio_out import make_encoder
from llmvox.server.realtime_session import OUTPUT_RATE, item_text, new_id
from llmvox.server.utterance import Utterance

log = logging.getLogger("llmvox.server.realtime")

DELTA_SAMPLES = OUTPUT_RATE // 5  # audio deltas of at most 200 ms
ENDPOINT = "/v1/realtime"


class ConversationTurn(ChatTurn):
    """A chat turn whose messages are the Realtime conversation (system prompt and items), not one question."""

    def __init__(self, messages: list[dict], llm, settings: ChatSettings, request_id: str) -> None:
        last_user = next((m["content"] for m in reversed(messages) if m["role"] == "user"), None)
        super().__init__(ChatRequest(mode="text", text=last_user), llm, settings=settings, request_id=request_id)
        self._conversation = messages

    def messages(self) -> list[dict]:
        return list(self._conversation)

    def start(self) -> ConversationTurn:
        """As ChatTurn's; a turn cancelled while it started (a discarded speculation whose task is gone)
        closes its stream here, so the backend's model is free at once rather than when it is collected."""
        super().start()
        if self.cancel_event.is_set():
            self.cancel()
        return self


@dataclass
class _Sentence:
    start: int  # sample of the item's audio where it begins
    words: str
    samples: int = 0
    complete: bool = False


class Response:
    """A response in the making; `emit(event)` goes to the session writer (held while gated)."""

    def __init__(self, session: Any, messages: list[dict], settings: ChatSettings, *, audio: bool,
                 gated: bool = False, timings: dict[str, float] | None = None) -> None:
        self.session = session
        self.id, self.item_id = new_id("resp"), new_id("item")
        self.messages, self.settings, self.audio = messages, settings, audio
        self.status, self.reason, self.error = "in_progress", None, None
        self.gated = gated
        self.muted = False  # cancelled: nothing more of its audio goes out
        self.cut_ms: int | None = None  # cancelled: the item keeps the words of this much audio
        self._held: list[dict] = []
        self.text_parts: list[str] = []
        self.sentences: list[_Sentence] = []
        self.sent_samples = 0
        self.first_delta_at: float | None = None
        self.speech_wall: float | None = None  # when the user's last word arrived (for the latency figure)
        self._first_token_at = time.perf_counter()
        self.timings: dict[str, float] = dict(timings or {})
        self.started = time.perf_counter()
        self.utterance: Utterance | None = None
        self.turn: ConversationTurn | None = None
        self.item: dict[str, Any] = {"id": self.item_id, "object": "realtime.item", "type": "message",
                                     "role": "assistant", "status": "in_progress", "content": []}
        self.finished = asyncio.Event()
        self.on_finish: Callable[[Response], None] | None = None
        self.task = asyncio.get_running_loop().create_task(self._run())

    # ---- event plumbing ----------------------------------------------------------------------------
    def emit(self, event: dict[str, Any], *, final: bool = False) -> None:
        if self.muted and not final:
            return
        if self.gated:
            self._held.append(event)
        else:
            self.session.send(event, owner=self, final=final)

    def open(self) -> None:
        """The turn really ended: the held events go out and the rest follow live."""
        if not self.gated:
            return
        self.gated = False
        held, self._held = self._held, []
        self.session.add_item(self.item, announce=False)
        for event in held:
            self.session.send(event, owner=self)

    @property
    def part_type(self) -> str:
        return "audio" if self.audio else "text"

    @property
    def content_type(self) -> str:
        return "output_audio" if self.audio else "output_text"

    def shape(self) -> dict[str, Any]:
        details = None
        if self.status != "in_progress":
            details = {"type": self.status, "reason": self.reason}
            if self.error:
                details["error"] = {"type": "server_error", "code": self.error[0], "message": self.error[1]}
        turn = self.turn
        return {"id": self.id, "object": "realtime.response", "status": self.status, "status_details": details,
                "output": [self.item] if self.status != "in_progress" else [], "conversation_id": "conv_default",
                "output_modalities": [self.part_type], "max_output_tokens": self.settings.max_tokens,
                "usage": None, "metadata": {k: f"{v:.1f}" for k, v in self.timings.items()} |
                ({"llmvox_turn_id": turn.id} if turn is not None else {})}

    # ---- the work ------------------------------------------------------------------------------------
    async def _run(self) -> None:
        chat = self.session.chat
        self.emit({"type": "response.created", "response": self.shape()})
        self.emit({"type": "response.output_item.added", "response_id": self.id, "output_index": 0,
                   "item": self.item})
        if not self.gated:
            self.session.add_item(self.item, announce=True, owner=self)
        else:
            self.emit({"type": "conversation.item.added", "previous_item_id": None, "item": self.item})
        self.emit({"type": "response.content_part.added", "response_id": self.id, "item_id": self.item_id,
                   "output_index": 0, "content_index": 0, "part": {"type": self.part_type, "transcript": ""}
                   if self.audio else {"type": "text", "text": ""}})
        try:
            async with Utterance(self.session.state, ENDPOINT, voice=self.session.config.voice) as utterance:
                self.utterance = utterance
                self.turn = turn = ConversationTurn(self.messages, chat.llm, self.settings, new_id("turn"))
                chat.transcripts.add(turn)
                utterance.on_close(lambda: turn.done or turn.cancel())
                t0 = time.perf_counter()
                await run_in_threadpool(turn.start)
                self.timings["llm_first_token_ms"] = (time.perf_counter() - t0) * 1000
                self._first_token_at = time.perf_counter()
                if self.audio:
                    await self._speak(utterance, turn)
                else:
                    async for delta in iterate_in_threadpool(turn.deltas()):
                        self._text(delta)
            self.status = "cancelled" if self.muted else "completed"
        except LLMVoXError as exc:
            self.status, self.error = "failed", (exc.code, exc.message)
            log.info("realtime response %s failed: %s", self.id, exc.message)
        except asyncio.CancelledError:
            self.status = "cancelled"
        finally:
            if self.utterance is not None:
                self.utterance.close()
            self._finish()

    async def _speak(self, utterance: Utterance, turn: ConversationTurn) -> None:
        utterance.speak(turn.deltas(), request_id=turn.id, echo=True)
        encoder = make_encoder("pcm", OUTPUT_RATE)
        rate = self.session.state.sample_rate
        async for event in utterance.events():
            if isinstance(event, Text):
                self._text(event.text)
            elif isinstance(event, AudioChunk):
                self._audio(event, encoder, rate)
            elif isinstance(event, Failed):
                raise LLMVoXError(f"speech generation failed: {event.error}", 500, code="generation_failed")
            elif isinstance(event, Done):
                break

    def _text(self, delta: str) -> None:
        self.text_parts.append(delta)
        kind = "response.output_audio_transcript.delta" if self.audio else "response.output_text.delta"
        self.emit({"type": kind, "response_id": self.id, "item_id": self.item_id, "output_index": 0,
                   "content_index": 0, "delta": delta})

    def _audio(self, chunk: AudioChunk, encoder, rate: int) -> None:
        samples = chunk.samples
        if rate != OUTPUT_RATE:
            from llmvox.audio import resample

            samples = resample(samples, rate, OUTPUT_RATE)
        if chunk.index == 0:
            self.sentences.append(_Sentence(self.sent_samples, chunk.text or ""))
        if "tts_first_audio_ms" not in self.timings and len(samples):
            self.timings["tts_first_audio_ms"] = (time.perf_counter() - self._first_token_at) * 1000
        for i in range(0, len(samples), DELTA_SAMPLES):
            if self.muted:
                return
            piece = samples[i:i + DELTA_SAMPLES]
            self.emit({"type": "response.output_audio.delta", "response_id": self.id, "item_id": self.item_id,
                       "output_index": 0, "content_index": 0,
                       "delta": _b64(encoder.encode(piece))})
            self.sent_samples += len(piece)
            if self.sentences:
                self.sentences[-1].samples += len(piece)
        if chunk.last_in_segment and self.sentences:
            self.sentences[-1].complete = True

    def delivered(self) -> None:
        """The writer sent this response's first audio (the client's playback clock starts)."""
        if self.first_delta_at is None:
            self.first_delta_at = time.perf_counter()
            self.session.first_audio_sent(self)

    # ---- ending --------------------------------------------------------------------------------------
    def cancel(self, reason: str, audio_end_ms: int | None = None) -> int:
        """Stop now: no more audio goes out, the LLM and the stream stop, the slot is freed. Returns the
        audio the item keeps (ms): `audio_end_ms`, or what the user can have heard."""
        if self.finished.is_set() or self.muted:
            return self.cut_ms or 0
        self.muted, self.reason = True, reason
        self.cut_ms = self.heard_ms() if audio_end_ms is None else audio_end_ms
        if self.utterance is not None:
            self.utterance.close()  # the stream is cancelled and the LLM told to stop, at once
        if self.turn is not None:
            self.turn.cancel()
        self.task.cancel()
        return self.cut_ms

    def heard_ms(self) -> int:
        """Audio the user can have heard: what went out, and no more than real time since the first delta."""
        sent = self.sent_samples * 1000 // OUTPUT_RATE
        if self.first_delta_at is None:
            return 0
        return int(min(sent, (time.perf_counter() - self.first_delta_at) * 1000))

    def truncate(self, audio_end_ms: int) -> str:
        """Cut the item's transcript to the words in its first `audio_end_ms` of audio."""
        end = audio_end_ms * OUTPUT_RATE // 1000
        words: list[str] = []
        for sentence in self.sentences:
            if sentence.start >= end:
                break
            heard = min(sentence.samples, end - sentence.start)
            total = sentence.samples if sentence.complete else max(sentence.samples, 1)
            parts = sentence.words.split()
            words.extend(parts if heard >= total else parts[: int(len(parts) * heard / total)])
        text = " ".join(words)
        self._set_content(text, incomplete=True)
        return text

    def _set_content(self, text: str, *, incomplete: bool = False) -> None:
        key = "transcript" if self.audio else "text"
        self.item["content"] = [{"type": self.content_type, key: text}]
        self.item["status"] = "incomplete" if incomplete else "completed"

    def _finish(self) -> None:
        if self.muted and self.audio:
            self.truncate(self.cut_ms or 0)
        elif self.item["status"] == "in_progress":
            self._set_content("".join(self.text_parts), incomplete=self.status != "completed")
        text = item_text(self.item)
        self.timings["total_ms"] = (time.perf_counter() - self.started) * 1000
        done_kind = "response.output_audio" if self.audio else "response.output_text"
        base = {"response_id": self.id, "item_id": self.item_id, "output_index": 0, "content_index": 0}
        if self.audio:
            self.emit({"type": done_kind + ".done", **base}, final=True)
            self.emit({"type": "response.output_audio_transcript.done", **base, "transcript": text}, final=True)
            part = {"type": "audio", "transcript": text}
        else:
            self.emit({"type": "response.output_text.done", **base, "text": text}, final=True)
            part = {"type": "text", "text": text}
        self.emit({"type": "response.content_part.done", **base, "part": part}, final=True)
        self.emit({"type": "response.output_item.done", "response_id": self.id, "output_index": 0,
                   "item": self.item}, final=True)
        self.emit({"type": "conversation.item.done", "previous_item_id": None, "item": self.item}, final=True)
        self.emit({"type": "response.done", "response": self.shape()}, final=True)
        self.finished.set()
        if self.on_finish is not None:
            self.on_finish(self)


def _b64(data: bytes) -> str:
    return base64.b64encode(data).decode("ascii")
