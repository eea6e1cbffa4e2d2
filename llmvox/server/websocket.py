"""`WS /v1/stream`: a client streams text deltas (its own LLM's output) and gets audio back at once.

Protocol (JSON text frames; audio in binary frames). See docs/websocket.md for the schema.

    client -> server   {"type": "text", "text": "..."}   text delta, any split (sub-words, words, lines)
                       {"type": "flush"}                  speak everything sent so far (closes the sentence)
                       {"type": "cancel"}                 stop now: drop pending text and audio; stay open
                       {"type": "end"}                    no more text: finish speaking, then close
    server -> client   {"type": "ready", ...}             once, first: sample rate, format, request id
                       {"type": "segment", "index", "text"}  before the first audio of each sentence
                       <binary>                           audio: s16le (or float32 with ?format=f32), mono
                       {"type": "flushed", "segments"}    all audio for text before a flush was sent
                       {"type": "cancelled"}              after a cancel; no audio of the old text follows
                       {"type": "done", ...}              after "end", all audio sent; then close 1000
                       {"type": "error", "code", "message"}  a bad message (the session goes on) or a failure
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import logging
import time
from typing import Any

from fastapi import APIRouter, WebSocket, WebSocketDisconnect

from llmvox.engine.stream import AudioChunk, SpeechStream
from llmvox.errors import LLMVoXError
from llmvox.server.audio_out import make_encoder
from llmvox.server.context import request_id_var
from llmvox.server.guard import deny_websocket
from llmvox.server.schemas import ApiError
from llmvox.server.slots import SlotLease
from llmvox.text.normalize import normalize

log = logging.getLogger("llmvox.server")

ws_router = APIRouter()
WS_FORMATS = {"pcm": "pcm_s16le", "f32": "f32le"}


@ws_router.websocket("/v1/stream")
async def ws_stream(ws: WebSocket) -> None:
    state = ws.app.state.llmvox
    rid = request_id_var.get()
    fmt = ws.query_params.get("format", "pcm")
    try:  # the key and the Origin were checked by the guard before this handshake
        if fmt not in WS_FORMATS:
            raise ApiError(400, f"unknown format {fmt!r}; use format=pcm (s16le) or format=f32", code="invalid_format",
                           param="format")
        if state.draining or state.engine is None:
            raise ApiError(503, "the server is shutting down", code="shutting_down")
    except ApiError as exc:
        state.metrics.errors.labels("/v1/stream", "rejected").inc()
        state.metrics.requests.labels("/v1/stream", str(exc.status)).inc()
        log.info("websocket rejected: %s %s", exc.status, exc.message)
        await deny_websocket(ws, exc)
        return
    session = _Session(ws, state, fmt, rid)
    try:
        await ws.accept()
        state.metrics.requests.labels("/v1/stream", "101").inc()
        log.info("websocket open (format %s)", fmt)
        await session.run()
    finally:
        session.close()
        log.info("websocket closed")


class _Session:
    """One connection: a reader (client messages) and a writer (audio and events, in order).

    The session holds a stream slot only while it has something to speak: from the text that starts a
    sentence until that audio is sent. An open connection with nothing to say costs no slot, and one
    that neither sends nor receives for --idle_timeout is closed.
    """

    def __init__(self, ws: WebSocket, state: Any, fmt: str, rid: str):
        self.ws = ws
        self.state = state
        self.fmt = fmt
        self.rid = rid
        self.loop = asyncio.get_running_loop()
        self.out: asyncio.Queue[tuple[str, int, Any]] = asyncio.Queue()
        self.stream: SpeechStream | None = None
        self.generation = 0  # bumped by every cancel: older audio is dropped
        self.utterance = 0
        self.ended = False
        self.delivered = 0  # segments of the current stream whose audio was fully sent
        self.flush_marks: list[int] = []
        self.audio_seconds = 0.0
        self.lease: SlotLease | None = None
        self.last_activity = time.monotonic()

    # ---- engine side ---------------------------------------------------------------------------
    def _new_stream(self) -> SpeechStream:
        gen = self.generation

        def sink(item: AudioChunk | None) -> None:
            with contextlib.suppress(RuntimeError):  # the loop is gone: the session is over
                self.loop.call_soon_threadsafe(self.out.put_nowait, ("audio" if item is not None else "end", gen, item))

        self.utterance += 1
        stream = self.state.engine.open(sink=sink, request_id=f"{self.rid}.{self.utterance}")
        self.delivered = 0
        self.flush_marks = []
        self.audio_seconds = 0.0  # of this utterance (since the last cancel)
        return stream

    def close(self) -> None:
        if self.stream is not None and not self.stream.done:
            self.stream.cancel()
            self.state.metrics.disconnects.labels("/v1/stream").inc()
        self._release()

    # ---- the stream slot -------------------------------------------------------------------------
    async def _hold_slot(self) -> bool:
        """Take a slot before new speech starts; False (and an error event) when the server is full."""
        if self.lease is not None and self.lease.held:
            return True
        try:
            self.lease = await self.state.slots.acquire()
        except ApiError as exc:
            self._event({"type": "error", "code": exc.code, "message": exc.message})
            return False
        return True

    def _release(self) -> None:
        if self.lease is not None:
            self.lease.release()
            self.lease = None

    def _release_if_idle(self) -> None:
        """Give the slot back when every sentence fed so far has been sent and none is still open."""
        stream = self.stream
        if stream is None or stream.done or (self.delivered >= stream.segments and not stream.sentence_open):
            self._release()

    # ---- run -----------------------------------------------------------------------------------
    async def run(self) -> None:
        await self.ws.send_json({"type": "ready", "request_id": self.rid, "sample_rate": self.state.sample_rate,
                                 "channels": 1, "format": WS_FORMATS[self.fmt]})
        writer = asyncio.create_task(self._writer())
        reader = asyncio.create_task(self._reader())
        try:
            done, _ = await asyncio.wait({writer, reader}, return_when=asyncio.FIRST_COMPLETED)
            if reader in done and reader.exception() is None and not writer.done():
                await writer  # "end": the writer finishes the audio, sends "done" and closes
            for task in (writer, reader):
                if task.done() and not task.cancelled():
                    exc = task.exception()
                    if exc is not None and not isinstance(exc, WebSocketDisconnect | RuntimeError):
                        raise exc
        finally:
            for task in (writer, reader):
                task.cancel()
            await asyncio.gather(writer, reader, return_exceptions=True)

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
                self.out.put_nowait(("close", self.generation, 1000))
                return
            self.last_activity = time.monotonic()
            if message["type"] == "websocket.disconnect":
                raise WebSocketDisconnect(message.get("code", 1000))
            if message.get("text") is None:
                self._event({"type": "error", "code": "binary_not_accepted",
                             "message": "send JSON text messages; audio only flows from the server"})
                continue
            try:
                msg = json.loads(message["text"])
            except json.JSONDecodeError as exc:
                self._event({"type": "error", "code": "invalid_json", "message": f"not valid JSON: {exc}"})
                continue
            if not isinstance(msg, dict) or not isinstance(msg.get("type"), str):
                self._event({"type": "error", "code": "invalid_message",
                             "message": 'each message is a JSON object with a "type" (text, flush, cancel, end)'})
                continue
            await self._handle(msg)
            if self.ended:
                return

    async def _handle(self, msg: dict[str, Any]) -> None:
        kind = msg["type"]
        if kind == "text":
            text = msg.get("text")
            if not isinstance(text, str):
                self._event({"type": "error", "code": "invalid_text", "message": '"text" must be a string'})
                return
            limit = self.state.settings.max_text_chars
            if len(text) > limit:
                self._event({"type": "error", "code": "text_too_long",
                             "message": f"a text message has {len(text)} characters; the limit is {limit}"})
                return
            spoken = normalize(text) if self.state.settings.stream.normalize else text
            if len(spoken) > limit:
                self._event({"type": "error", "code": "text_too_long",
                             "message": f"a text message becomes {len(spoken)} characters once numbers and symbols "
                                        f"are spelled out; the limit is {limit}"})
                return
            if not await self._hold_slot():
                return
            if self.stream is None:
                self.stream = self._new_stream()
            self._call(self.stream.feed, text)
            self._release_if_idle()
        elif kind == "flush":
            if self.stream is None:
                self.out.put_nowait(("flush", self.generation, 0))
                return
            if not await self._hold_slot():
                return
            n = self._call(self.stream.flush)
            self.out.put_nowait(("flush", self.generation, n or 0))
            self._release_if_idle()
        elif kind == "cancel":
            if self.stream is not None:
                self.stream.cancel()
            self.stream = None
            self._release()
            self.generation += 1
            self._event({"type": "cancelled"})
        elif kind == "end":
            self.ended = True
            if self.stream is None:
                self.out.put_nowait(("done", self.generation, None))
            else:
                self._call(self.stream.end)
                self._release_if_idle()
        else:
            self._event({"type": "error", "code": "unknown_type",
                         "message": f"unknown message type {kind!r}; use text, flush, cancel or end"})

    def _call(self, fn, *args):
        try:
            return fn(*args)
        except LLMVoXError as exc:
            self._event({"type": "error", "code": "stream_error", "message": str(exc)})
            return None

    def _event(self, event: dict[str, Any]) -> None:
        self.out.put_nowait(("event", self.generation, event))

    async def _writer(self) -> None:
        encoder = make_encoder(self.fmt, self.state.sample_rate)
        while True:
            kind, gen, item = await self.out.get()
            if kind == "event":
                await self.ws.send_json(item)
                continue
            if kind == "close":
                await self.ws.close(code=item)
                return
            if gen != self.generation:
                continue  # audio or markers of cancelled text
            if kind == "audio":
                chunk: AudioChunk = item
                if chunk.index == 0:
                    await self.ws.send_json({"type": "segment", "index": chunk.segment, "text": chunk.text or ""})
                if len(chunk.samples):
                    await self.ws.send_bytes(encoder.encode(chunk.samples))
                    self.audio_seconds += len(chunk.samples) / self.state.sample_rate
                    self.last_activity = time.monotonic()
                if chunk.last_in_segment:
                    self.delivered = chunk.segment + 1
                    self._release_if_idle()
                    await self._send_flushed()
            elif kind == "flush":
                self.flush_marks.append(item)
                await self._send_flushed()
            elif kind in ("end", "done"):
                self._release()
                stream = self.stream
                if stream is not None and stream.error is not None:
                    await self.ws.send_json({"type": "error", "code": "generation_failed",
                                             "message": f"speech generation failed: {stream.error}"})
                if not self.ended:
                    self.stream = None  # a failed stream: new text starts a new one
                    continue
                if self.ended:
                    timings = stream.timings() if stream is not None else {}
                    await self.ws.send_json({"type": "done", "segments": stream.segments if stream else 0,
                                             "audio_seconds": round(self.audio_seconds, 3),
                                             "time_to_first_audio": timings.get("time_to_first_audio")})
                    await self.ws.close(code=1000)
                    return

    async def _send_flushed(self) -> None:
        while self.flush_marks and self.flush_marks[0] <= self.delivered:
            self.flush_marks.pop(0)
            await self.ws.send_json({"type": "flushed", "segments": self.delivered})
