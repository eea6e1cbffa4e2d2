"""`WS /v1/stream`: a client streams text deltas (its own LLM's output) and gets audio back at once.

Protocol (JSON text frames; audio in binary frames). See docs/websocket.md for the schema.

    client -> server   {"type": "text", "text": "..."}   text delta, any split (sub-words, words, lines);
                                                          "voice" (and "lexicon") on the one that starts an utterance
                       {"type": "flush"}                  speak everything sent so far (closes the sentence)
                       {"type": "cancel"}                 stop now: drop pending text and audio; stay open
                       {"type": "end"}                    no more text: finish speaking, then close
    server -> client   {"type": "ready", ...}             once, first: sample rate, format, request id
                       {"type": "segment", "index", "text"}  before the first audio of each sentence
                       <binary>                           audio: s16le (?format=f32: float32; mulaw, alaw), mono
                       {"type": "flushed", "segments"}    all audio for text before a flush was sent
                       {"type": "words", "words": [...]}  ?timestamps=true: words {word, start, end} (s) now heard
                       {"type": "cancelled", "last_word"}  after a cancel; no audio of the old text follows
                       {"type": "done", ...}              after "end", all audio sent; then close 1000
                       {"type": "error", "code", "message"}  a bad message (the session goes on) or a failure
"""

from __future__ import annotations

import asyncio
import json
import logging
import queue
import time
from collections.abc import Coroutine
from dataclasses import dataclass, replace
from typing import Any

from fastapi import APIRouter, WebSocket, WebSocketDisconnect
from starlette.concurrency import run_in_threadpool

from llmvox.engine.events import AudioChunk, EventBridge, Failed, Flushed, StreamEvent
from llmvox.engine.stream import FLUSH, SpeechStream
from llmvox.engine.word_times import aligner_of
from llmvox.errors import LLMVoXError
from llmvox.server.audio_out import FORMAT_ALIASES, make_encoder, output_rate
from llmvox.server.context import request_id_var
from llmvox.server.guard import deny_websocket
from llmvox.server.slots import SlotLease
from llmvox.text.lexicon import Lexicon, request_lexicon
from llmvox.text.normalize import normalize

log = logging.getLogger("llmvox.server")

ws_router = APIRouter()
WS_FORMATS = {"pcm": "pcm_s16le", "f32": "f32le", "mulaw": "mulaw", "alaw": "alaw"}  # ?format= -> "ready"


@ws_router.websocket("/v1/stream")
async def ws_stream(ws: WebSocket) -> None:
    state = ws.app.state.llmvox
    rid = request_id_var.get()
    fmt = ws.query_params.get("format", "pcm").lower()
    fmt = FORMAT_ALIASES.get(fmt, fmt)
    try:  # the key and the Origin were checked by the guard before this handshake
        if fmt not in WS_FORMATS:
            raise LLMVoXError(f"unknown format {fmt!r}; use format=pcm (s16le), f32, mulaw or alaw", 400,
                              code="invalid_format", param="format")
        rate = output_rate(fmt, ws.query_params.get("sample_rate"), state.sample_rate)
        voice = state.voices.resolve(ws.query_params.get("voice"))
        timestamps = ws.query_params.get("timestamps", "false").lower() in ("1", "true", "yes")
        if timestamps:
            aligner_of(state.voices.voices[voice])
        if state.draining or state.engine is None:
            raise LLMVoXError("the server is shutting down", 503, code="shutting_down")
    except LLMVoXError as exc:
        state.metrics.errors.labels("/v1/stream", "rejected").inc()
        state.metrics.requests.labels("/v1/stream", str(exc.http_status)).inc()
        log.info("websocket rejected: %s %s", exc.http_status, exc.message)
        await deny_websocket(ws, exc)
        return
    session = _Session(ws, state, fmt, rid, rate, voice)
    session.timestamps = timestamps
    try:
        await ws.accept()
        state.metrics.requests.labels("/v1/stream", "101").inc()
        log.info("websocket open (format %s, %d Hz, voice %s)", fmt, rate, voice)
        await session.run()
    finally:
        session.close()
        log.info("websocket closed")


async def run_reader_and_writer(reader: Coroutine[Any, Any, None], writer: Coroutine[Any, Any, None]) -> None:
    """Run a socket's reader and writer until one ends: a reader that ends cleanly (the client said
    "end") lets the writer finish what it has; a disconnect ends both; any other error is raised."""
    writer_task, reader_task = asyncio.create_task(writer), asyncio.create_task(reader)
    try:
        done, _ = await asyncio.wait({writer_task, reader_task}, return_when=asyncio.FIRST_COMPLETED)
        if reader_task in done and reader_task.exception() is None and not writer_task.done():
            await writer_task
        for task in (writer_task, reader_task):
            if task.done() and not task.cancelled():
                exc = task.exception()
                if exc is not None and not isinstance(exc, WebSocketDisconnect | RuntimeError):
                    raise exc
    finally:
        for task in (writer_task, reader_task):
            task.cancel()
        await asyncio.gather(writer_task, reader_task, return_exceptions=True)


@dataclass
class _Spoken:
    """An event of the stream `bridge` carried, queued for the writer (dropped if that stream was cancelled)."""

    bridge: EventBridge
    event: StreamEvent


class _Session:
    """One connection: a reader (client messages) and a writer (audio and events, in order).

    Text goes to the current speech stream through a queue that its feeder thread reads, so words are
    segmented, normalised and read off the event loop; the stream's events come back through its
    `EventBridge` and are forwarded, in order with the session's own events, to the writer. A cancel
    drops the stream and its bridge: nothing of the old text is sent after "cancelled".

    The session holds a stream slot only while it has something to speak: from the text that starts a
    sentence until that audio is sent. An open connection with nothing to say costs no slot, and one
    that neither sends nor receives for --idle_timeout is closed.
    """

    def __init__(self, ws: WebSocket, state: Any, fmt: str, rid: str, rate: int | None = None,
                 voice: str | None = None):
        self.ws = ws
        self.voice = voice or state.voices.default  # ?voice=, or a text message's "voice": this and later utterances
        self.state = state
        self.fmt = fmt
        self.rate = rate or output_rate(fmt, None, state.sample_rate)  # the audio's, as "ready" says
        self.rid = rid
        self.out: asyncio.Queue[dict[str, Any] | _Spoken | int] = asyncio.Queue()  # int: close with that code
        self.stream: SpeechStream | None = None
        self.bridge: EventBridge | None = None
        self.text: queue.Queue | None = None  # what the stream's feeder thread reads
        self.queued_chars = 0  # characters put on `text` (the stream has taken them when text_chars says so)
        self.utterance = 0
        self.ended = False
        self.delivered = 0  # segments of the current stream whose audio was fully sent
        self.audio_seconds = 0.0
        self.lease: SlotLease | None = None
        self.last_activity = time.monotonic()
        self.lexicon: Lexicon | None = None  # from a text message's "lexicon": this utterance and later ones
        self.timestamps = False  # ?timestamps=true: "words" events, and the last word heard on cancel/done
        self.last_word: dict[str, Any] | None = None  # the last word event sent of this utterance

    # ---- engine side ---------------------------------------------------------------------------
    def _new_stream(self) -> None:
        self.utterance += 1
        self.bridge = bridge = EventBridge()
        engine = self.state.engine_for(self.voice)
        config = None if self.lexicon is None else replace(engine.config, lexicon=self.lexicon)
        if self.timestamps:
            config = replace(config or engine.config, word_timestamps=True)
        self.last_word = None
        self.stream = engine.open(config, sink=bridge, request_id=f"{self.rid}.{self.utterance}")
        self.text = queue.Queue()
        self.queued_chars = 0
        self.stream.feed_from(iter(self.text.get, None))
        self.delivered = 0
        self.audio_seconds = 0.0  # of this utterance (since the last cancel)
        asyncio.get_running_loop().create_task(self._forward(bridge))

    async def _forward(self, bridge: EventBridge) -> None:
        async for event in bridge:
            self.out.put_nowait(_Spoken(bridge, event))

    def _drop_stream(self) -> None:
        if self.stream is not None and not self.stream.done:
            self.stream.cancel()
        if self.text is not None:
            self.text.put(None)  # the feeder thread ends
        if self.bridge is not None:
            self.bridge.close()
        self.stream = self.bridge = self.text = None

    def close(self) -> None:
        if self.stream is not None and not self.stream.done:
            self.state.metrics.disconnects.labels("/v1/stream").inc()
        self._drop_stream()
        self._release()

    # ---- the stream slot -------------------------------------------------------------------------
    async def _hold_slot(self) -> bool:
        """Take a slot before new speech starts; False (and an error event) when the server is full."""
        if self.lease is not None and self.lease.held:
            return True
        try:
            self.lease = await self.state.slots.acquire()
        except LLMVoXError as exc:
            self._event({"type": "error", "code": exc.code, "message": exc.message})
            return False
        return True

    def _release(self) -> None:
        if self.lease is not None:
            self.lease.release()
            self.lease = None

    def _release_if_idle(self) -> None:
        """Give the slot back when all text sent has been taken, every sentence of it has been sent and
        none is still open."""
        stream = self.stream
        if stream is None or stream.done or (stream.text_chars >= self.queued_chars and not stream.sentence_open
                                             and self.delivered >= stream.segments):
            self._release()

    # ---- run -----------------------------------------------------------------------------------
    async def run(self) -> None:
        await self.ws.send_json({"type": "ready", "request_id": self.rid, "sample_rate": self.rate,
                                 "channels": 1, "format": WS_FORMATS[self.fmt], "voice": self.voice})
        await run_reader_and_writer(self._reader(), self._writer())

    async def _reader(self) -> None:
        idle = self.state.settings.idle_timeout
        while True:
            try:
                async with asyncio.timeout(idle):
                    message = await self.ws.receive()
            except TimeoutError:
                if time.monotonic() - self.last_activity < idle:
                    continue  # audio is still flowing to the client
                self._event({"type": "error", "code": "idle_timeout",
                             "message": f"nothing was sent or spoken for {idle:g} s (--idle_timeout); closing"})
                self.out.put_nowait(1000)
                return
            self.last_activity = time.monotonic()
            if message["type"] == "websocket.disconnect":
                raise WebSocketDisconnect(message.get("code", 1000))
            msg = self._parse(message)
            if msg is not None:
                await self._handle(msg)
            if self.ended:
                return

    def _parse(self, message: dict[str, Any]) -> dict[str, Any] | None:
        """A client message as a dict with a "type", or None (an error event was sent)."""
        if message.get("text") is None:
            self._event({"type": "error", "code": "binary_not_accepted",
                         "message": "send JSON text messages; audio only flows from the server"})
            return None
        try:
            msg = json.loads(message["text"])
        except json.JSONDecodeError as exc:
            self._event({"type": "error", "code": "invalid_json", "message": f"not valid JSON: {exc}"})
            return None
        if not isinstance(msg, dict) or not isinstance(msg.get("type"), str):
            self._event({"type": "error", "code": "invalid_message",
                         "message": 'each message is a JSON object with a "type" (text, flush, cancel, end)'})
            return None
        return msg

    async def _handle(self, msg: dict[str, Any]) -> None:
        kind = msg["type"]
        if kind == "text":
            if self._voice(msg) and ("lexicon" not in msg or await self._lexicon(msg["lexicon"])):
                await self._text(msg.get("text"))
        elif kind == "flush":
            if self.stream is None:
                self._event({"type": "flushed", "segments": 0})
            elif await self._hold_slot():
                self.text.put(FLUSH)
        elif kind == "cancel":
            self._drop_stream()
            self._release()
            self._event({"type": "cancelled", "last_word": self.last_word} if self.timestamps else {"type": "cancelled"})
        elif kind == "end":
            self.ended = True
            if self.stream is None:
                self.out.put_nowait({"type": "done", "segments": 0, "audio_seconds": 0.0,
                                     "time_to_first_audio": None})
                self.out.put_nowait(1000)
            else:
                self.text.put(None)  # the feeder ends the stream: its Done closes the session
        else:
            self._event({"type": "error", "code": "unknown_type",
                         "message": f"unknown message type {kind!r}; use text, flush, cancel or end"})

    def _voice(self, msg: dict[str, Any]) -> bool:
        """A text message's "voice" for the utterance it starts (and the session's later ones); False (an
        error event, the message dropped) when it is unknown or an utterance is already being spoken."""
        if "voice" not in msg:
            return True
        try:
            voice = self.state.voices.resolve(msg["voice"])
            if self.timestamps:
                aligner_of(self.state.voices.voices[voice])  # timestamps_unavailable
        except LLMVoXError as exc:
            self._event({"type": "error", "code": exc.code, "message": exc.message})
            return False
        if self.stream is not None and voice != self.voice:
            self._event({"type": "error", "code": "invalid_voice", "message": "a voice goes on the text message "
                         "that starts an utterance (the first, or the first after a cancel)"})
            return False
        if voice != self.voice:
            self.lexicon = None  # a lexicon is checked against one voice's front-end
        self.voice = voice
        return True

    async def _lexicon(self, value: Any) -> bool:
        """A text message's "lexicon" for the utterance it starts (and the session's later ones); False
        (an error event, the message dropped) when it is bad or an utterance is already being spoken."""
        if self.stream is not None:
            self._event({"type": "error", "code": "invalid_lexicon", "message": "a lexicon goes on the text "
                         "message that starts an utterance (the first, or the first after a cancel)"})
            return False
        try:
            self.lexicon = await run_in_threadpool(request_lexicon, value, self.state.voices.voices[self.voice].frontend)
        except LLMVoXError as exc:
            self._event({"type": "error", "code": exc.code, "message": exc.message})
            return False
        return True

    async def _text(self, text: Any) -> None:
        if not isinstance(text, str):
            self._event({"type": "error", "code": "invalid_text", "message": '"text" must be a string'})
            return
        limit = self.state.settings.max_text_chars
        if len(text) > limit:
            self._event({"type": "error", "code": "text_too_long",
                         "message": f"a text message has {len(text)} characters; the limit is {limit}"})
            return
        if self.state.settings.stream.normalize:  # the bound on what spelling out can make of it, off the loop
            spoken = await run_in_threadpool(normalize, text)
            if len(spoken) > limit:
                self._event({"type": "error", "code": "text_too_long",
                             "message": f"a text message becomes {len(spoken)} characters once numbers and "
                                        f"symbols are spelled out; the limit is {limit}"})
                return
        if not await self._hold_slot():
            return
        if self.stream is None:
            self._new_stream()
        self.queued_chars += len(text)
        self.text.put(text)

    def _event(self, event: dict[str, Any]) -> None:
        self.out.put_nowait(event)

    async def _writer(self) -> None:
        encoder = make_encoder(self.fmt, self.state.sample_rate, self.rate)
        while True:
            item = await self.out.get()
            if isinstance(item, int):
                await self.ws.close(code=item)
                return
            if isinstance(item, dict):
                await self.ws.send_json(item)
                continue
            if item.bridge is not self.bridge:
                continue  # audio or markers of cancelled text
            if await self._send(item.event, encoder):
                return

    async def _send(self, event: StreamEvent, encoder) -> bool:
        """Send one stream event; True when the session is over."""
        if isinstance(event, AudioChunk):
            if event.index == 0:
                encoder.reset()  # each sentence is resampled on its own: nothing of a cancelled one leaks
                await self.ws.send_json({"type": "segment", "index": event.segment, "text": event.text or ""})
            data = encoder.encode(event.samples) if len(event.samples) else b""
            if event.last_in_segment:
                data += encoder.drain()  # all of the sentence before what follows it ("flushed", "done")
            if data:
                await self.ws.send_bytes(data)
            if event.words:
                self.last_word = event.words[-1].to_dict()
                await self.ws.send_json({"type": "words", "segment": event.segment,
                                         "words": [w.to_dict() for w in event.words]})
            if len(event.samples):
                self.audio_seconds += len(event.samples) / self.state.sample_rate
                self.last_activity = time.monotonic()
            if event.last_in_segment:
                self.delivered = event.segment + 1
                self._release_if_idle()
            return False
        if isinstance(event, Flushed):
            await self.ws.send_json({"type": "flushed", "segments": event.segments})
            self._release_if_idle()
            return False
        # Done or Failed: the stream is over
        self._release()
        stream = self.stream
        if isinstance(event, Failed):
            await self.ws.send_json({"type": "error", "code": "generation_failed",
                                     "message": f"speech generation failed: {event.error}"})
        if not self.ended:
            self._drop_stream()  # a failed stream: new text starts a new one
            return False
        timings = stream.timings() if stream is not None else {}
        await self.ws.send_json({"type": "done", "segments": stream.segments if stream else 0,
                                 "audio_seconds": round(self.audio_seconds, 3),
                                 "time_to_first_audio": timings.get("time_to_first_audio"),
                                 **({"last_word": self.last_word} if self.timestamps else {})})
        await self.ws.close(code=1000)
        return True
