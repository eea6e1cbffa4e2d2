"""One spoken answer's life on the server, and the one writer that turns its events into response bytes.

Every endpoint that speaks (/tts, /v1/audio/speech, the chat routes, chat completions) does

    async with Utterance(state, endpoint) as utterance:      # a stream slot (429/503 when full)
        utterance.speak(deltas)                               # fed on a thread: text never blocks the loop
        return utterance.respond(audio_body(utterance.events(), encoder), ...)

and the response closes it: exactly once, however it ends (done, client gone, error), the stream is
cancelled if unfinished, close hooks run (a chat turn stops its LLM), the slot is given back, and the
metrics (first audio, audio seconds, real-time factor, disconnects, failures) are counted. An error
inside the `async with` closes it at once. The slot is free as soon as the engine has produced the
last audio, however slowly the client reads what is left.
"""

from __future__ import annotations

import logging
import time
from collections.abc import AsyncIterator, Callable, Iterable
from dataclasses import replace
from functools import partial
from typing import Any

import anyio
from starlette.concurrency import run_in_threadpool
from starlette.responses import Response, StreamingResponse

from llmvox.engine.config import StreamConfig
from llmvox.engine.events import AudioChunk, Done, EventBridge, Failed, StreamEvent, Text
from llmvox.engine.playout import PlayoutClock
from llmvox.engine.stream import SpeechStream
from llmvox.errors import LLMVoXError
from llmvox.server.audio_out import StreamEncoder, TimeStretcher
from llmvox.server.context import request_id_var
from llmvox.text.lexicon import Lexicon

log = logging.getLogger("llmvox.server")


class Utterance:
    """A stream slot, a speech stream fed from text deltas, its metrics, and one idempotent close."""

    def __init__(self, state: Any, endpoint: str, *, started: float | None = None, voice: Any = None,
                 voice_param: str = "voice") -> None:
        self.state = state  # the server's state: engines, voices, slots, metrics, draining
        self.endpoint = endpoint
        self.voice = voice  # the request's voice (a name; None: the default), checked before the slot
        self.voice_param = voice_param
        self.started = time.perf_counter() if started is None else started
        self.stream: SpeechStream | None = None
        self._bridge: EventBridge | None = None
        self._lease = None
        self._hooks: list[Callable[[], None]] = []
        self._handed_over = False
        self.closed = False

    async def __aenter__(self) -> Utterance:
        state = self.state
        if state.draining:
            raise LLMVoXError("the server is shutting down", 503, code="shutting_down")
        self.voice = state.voices.resolve(self.voice, self.voice_param)  # an unknown voice: 400, no slot taken
        if state.slots is not None:
            self._lease = await state.slots.acquire()
        return self

    async def __aexit__(self, exc_type, exc, tb) -> None:
        if exc_type is not None or not self._handed_over:
            self.close()

    def on_close(self, hook: Callable[[], None]) -> None:
        """Run `hook` when the utterance closes (before its slot is given back)."""
        self._hooks.append(hook)

    def speak(self, deltas: Iterable[str], *, request_id: str | None = None, echo: bool = False,
              timestamps: bool = False) -> SpeechStream:
        """Open the speech stream and feed it `deltas` on a thread of its own (an LLM's answer)."""
        config = replace(self._engine().config, word_timestamps=True) if timestamps else None
        self.stream = self._open(config, request_id=request_id)
        self.stream.feed_from(deltas, echo=echo)
        return self.stream

    async def say(self, text: str, *, limit: int | None = None, lexicon: Lexicon | None = None,
                  timestamps: bool = False) -> SpeechStream:
        """Speak one whole text. It is segmented and normalised (once) in a worker thread before the
        response starts, so a text that spells out to more than `limit` characters is a 413, and one with
        nothing speakable a 400 (codes text_too_long, nothing_to_say); the decoder starts meanwhile."""
        engine = self._engine()
        self.stream = stream = self._open(replace(engine.config, max_spoken_chars=limit, word_timestamps=timestamps,
                                                  lexicon=lexicon or engine.config.lexicon))
        await run_in_threadpool(stream.feed_from([text]).join)
        if isinstance(stream.error, LLMVoXError):
            raise stream.error
        if stream.segments == 0:
            raise LLMVoXError("the text has nothing speakable", 400, code="nothing_to_say")
        return stream

    def _engine(self):
        engine = self.state.engine_for(self.voice)
        if engine is None:
            raise LLMVoXError("the speech engine is not running yet", 503, code="engine_unavailable")
        return engine

    def _open(self, config: StreamConfig | None = None, request_id: str | None = None) -> SpeechStream:
        engine = self._engine()
        self._bridge = EventBridge(on_end=self._lease.release if self._lease is not None else None)
        return engine.open(config, sink=self._bridge, request_id=request_id or request_id_var.get())

    async def events(self) -> AsyncIterator[StreamEvent]:
        """The stream's events, counted: first audio, and at the end the audio seconds or the failure."""
        first = True
        playout = PlayoutClock(self.state.sample_rate)  # the listener's buffer, as the chunks go out
        async for event in self._bridge:
            if isinstance(event, AudioChunk):
                playout.heard(len(event.samples))
            if first and isinstance(event, AudioChunk) and len(event.samples):
                first = False
                self.state.metrics.ttfa.labels(self.endpoint).observe(time.perf_counter() - self.started)
            elif isinstance(event, Done):
                self._record(event.timings)
                self.state.metrics.observe_playout(self.endpoint, playout)
            elif isinstance(event, Failed):
                log.error("%s: speech failed: %s", self.endpoint, event.error)
                self.state.metrics.errors.labels(self.endpoint, "generation_failed").inc()
            yield event

    def respond(self, body: AsyncIterator[bytes], *, media_type: str, headers: dict[str, str]) -> Response:
        """The streaming response that owns the utterance from now on: it closes it when it ends."""
        self._handed_over = True
        return DisconnectAwareStreamingResponse(_closing(body, self.close), media_type=media_type, headers=headers,
                                                on_close=self.close)

    def close(self) -> None:
        if self.closed:
            return
        self.closed = True
        stream = self.stream
        if stream is not None and not stream.done:
            stream.cancel()
            self.state.metrics.disconnects.labels(self.endpoint).inc()
            log.info("%s: answer cut short (client gone or stream ended early); stream cancelled", self.endpoint)
        for hook in self._hooks:
            hook()
        if self._lease is not None:
            self._lease.release()

    def _record(self, timings: dict[str, Any]) -> None:
        metrics = self.state.metrics
        metrics.audio_seconds.labels(self.endpoint).inc(timings["audio_seconds"])
        if timings["real_time_factor"] is not None:
            metrics.rtf.labels(self.endpoint).observe(timings["real_time_factor"])
        log.info("%s: %.2f s of audio, first audio after %s s, real-time factor %s", self.endpoint,
                 timings["audio_seconds"], _seconds(timings["time_to_first_audio"]),
                 _seconds(timings["real_time_factor"]))


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


async def audio_body(events: AsyncIterator[StreamEvent], encoder: StreamEncoder,
                     stretch: TimeStretcher | None = None, words: list | None = None) -> AsyncIterator[bytes | Text]:
    """The one response writer: encoded audio bytes as the events come (sped up or slowed by `stretch`),
    the encoder's tail at the end; `Text` events (echoed deltas) are passed through in order. The chunks'
    word timestamps (`AudioChunk.words`) are appended to `words` before their audio is yielded."""
    async for event in events:
        if isinstance(event, AudioChunk):
            if words is not None and event.words:
                words.extend(event.words)
            samples = event.samples if stretch is None else stretch.process(event.samples)
            data = encoder.encode(samples) if len(samples) else b""
            if data:
                yield data
        elif isinstance(event, Text):
            yield event
    tail = stretch.process([], final=True) if stretch is not None else []
    data = (encoder.encode(tail) if len(tail) else b"") + encoder.finish()
    if data:
        yield data


async def _closing(body: AsyncIterator[Any], close: Callable[[], None]) -> AsyncIterator[Any]:
    try:
        async for item in body:
            yield item
    finally:
        close()


def _seconds(x: float | None) -> str:
    return "-" if x is None else f"{x:.3f}"
