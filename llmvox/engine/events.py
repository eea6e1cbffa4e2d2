"""What a speech stream says, as typed events, and the one bridge that carries them to an event loop.

A `SpeechStream` delivers, in order, to one sink:

    Text(text)            a text delta the stream was fed (only when its feeder echoes: chat completions)
    AudioChunk(...)       audio, in stream order; `index == 0` starts a sentence (its words in `text`)
    Flushed(segments)     all audio of the text before a `flush()` has been delivered
    Done(timings)         the end: everything was spoken
    Failed(error)         the end: the stream broke (its audio so far was delivered)

Exactly one of Done or Failed comes last; nothing follows it. A cancelled stream ends with Done.

Engine threads produce the events; `EventBridge` hands them to asyncio code, which reads them with
`async for event in bridge`. Every server endpoint (HTTP, SSE, WebSocket, chat) reads its stream so.
"""

from __future__ import annotations

import asyncio
import contextlib
from collections.abc import AsyncIterator, Callable
from dataclasses import dataclass, field
from typing import Any

import numpy as np


@dataclass
class Text:
    """A text delta, echoed in the order the stream was fed."""

    text: str


@dataclass
class AudioChunk:
    """A piece of the stream's audio: float32 mono samples at the voice's rate, in stream order."""

    samples: np.ndarray
    segment: int  # sentence index within the stream
    index: int  # chunk index within the sentence
    last_in_segment: bool
    text: str | None = None  # the sentence's words, on its first chunk
    words: list[Any] | None = None  # word timestamps (engine.word_times.WordTime) now known, when asked for


@dataclass
class Flushed:
    """Every sentence before a `flush()` has been delivered (`segments` of them so far)."""

    segments: int


@dataclass
class Done:
    """The stream ended normally (or was cancelled); `timings` as `SpeechStream.timings()`."""

    timings: dict[str, Any] = field(default_factory=dict)


@dataclass
class Failed:
    """The stream ended with an error."""

    error: BaseException


StreamEvent = Text | AudioChunk | Flushed | Done | Failed
END_EVENTS = (Done, Failed)


class EventBridge:
    """Engine threads -> one event loop: call it from any thread; `async for` on the loop.

    Create it on the loop that reads it. Iteration ends after Done or Failed (yielded), or at once
    after `close()` (the reader stopped caring: a cancel, a disconnect). `on_end` runs on the loop when
    the last event arrives: the stream's slot can be given back before the client has read it all.
    """

    def __init__(self, on_end: Callable[[], None] | None = None) -> None:
        self.loop = asyncio.get_running_loop()
        self._queue: asyncio.Queue[StreamEvent | None] = asyncio.Queue()
        self.on_end = on_end
        self.closed = False

    def __call__(self, event: StreamEvent) -> None:
        with contextlib.suppress(RuntimeError):  # the loop is gone (shutdown): nobody listens any more
            self.loop.call_soon_threadsafe(self._put, event)

    def _put(self, event: StreamEvent) -> None:
        self._queue.put_nowait(event)
        if isinstance(event, END_EVENTS) and self.on_end is not None:
            self.on_end()

    def close(self) -> None:
        """Stop the iteration now (on the loop); later events are dropped."""
        self.closed = True
        self._queue.put_nowait(None)

    async def __aiter__(self) -> AsyncIterator[StreamEvent]:
        while not self.closed:
            event = await self._queue.get()
            if event is None or self.closed:
                return
            yield event
            if isinstance(event, END_EVENTS):
                return
