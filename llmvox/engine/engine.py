"""`SpeechEngine`: the workers (a decoder and a codec per device) that every stream of a voice shares.

`open()` starts a `SpeechStream` on them; `stream_speech` is the Python API's one-call streaming.
"""

from __future__ import annotations

import copy
import os
import threading
from collections.abc import Callable, Iterable, Iterator
from typing import Any

import numpy as np
import torch

from llmvox.engine.config import StreamConfig
from llmvox.engine.events import StreamEvent
from llmvox.engine.scheduler import CodecWorker, DecoderWorker, Workers
from llmvox.engine.stream import SpeechStream
from llmvox.errors import LLMVoXError
from llmvox.model.voice import Voice
from llmvox.text.tokenizer import PAD_ID


class SpeechEngine:
    """N workers (decoder + codec per device) shared by every stream; open streams with `open()`."""

    def __init__(self, voice: Voice, *, num_workers: int = 2, devices: list[str] | None = None,
                 max_batch: int = 32, threads: int | None = None, config: StreamConfig | None = None,
                 pad_id: int = PAD_ID):
        if num_workers < 1:
            raise LLMVoXError("num_workers must be at least 1")
        self.voice = voice
        self.config = (config or StreamConfig()).validate()
        self.sample_rate = voice.sample_rate
        self.hop = voice.hop_length
        self.eoa_id = voice.eoa_id
        self.num_workers = num_workers
        if threads is None:  # a decoder and a codec thread per worker share the cores
            threads = max(1, (os.cpu_count() or 1) // (2 * num_workers))
        self.threads = threads
        replicas: dict[str, tuple[Any, Any]] = {}
        self.workers: list[DecoderWorker] = []
        self.codecs: list[CodecWorker] = []
        self.codec_models: list[Any] = []
        self.devices: list[torch.device] = []
        for i in range(num_workers):
            dev = _device(devices[i % len(devices)] if devices else voice.device)
            key = str(dev)
            if key not in replicas:
                replicas[key] = _replica(voice, dev)
            decoder, codec = replicas[key]
            self.devices.append(dev)
            self.codec_models.append(codec)
            self.workers.append(DecoderWorker(decoder, name=f"worker{i}", max_batch=max_batch,
                                              eoa_id=voice.eoa_id, pad_id=pad_id, threads=threads))
            self.codecs.append(CodecWorker(name=f"codec{i}", threads=threads))
        self.lanes = Workers(voice, self.workers, self.codecs, self.codec_models)
        self._streams: set[SpeechStream] = set()
        self._lock = threading.Lock()
        self._closed = False
        self._next_id = 0

    def open(self, config: StreamConfig | None = None, *, sink: Callable[[StreamEvent], None] | None = None,
             request_id: str | None = None) -> SpeechStream:
        """A new stream. `sink` receives its events in order, Done or Failed last (called from engine
        threads: it must not block; an `EventBridge` for asyncio); without one, read `stream.chunks()`."""
        with self._lock:
            if self._closed:
                raise LLMVoXError("the speech engine is shut down")
            self._next_id += 1
            rid = request_id or f"s{self._next_id}"
            stream = SpeechStream(self.lanes, (config or self.config).validate(), sink=sink, request_id=rid,
                                  on_finish=self._forget)
            self._streams.add(stream)
        return stream

    def _forget(self, stream: SpeechStream) -> None:
        with self._lock:
            self._streams.discard(stream)

    @property
    def active_streams(self) -> int:
        return len(self._streams)

    def stats(self) -> dict[str, Any]:
        return {
            "streams": len(self._streams),
            "workers": [
                {"name": w.name, "device": str(d), "active_segments": w.active, "queued_segments": w.queued,
                 "codec_queue": c.queued, "steps": w.stats.steps, "tokens": w.stats.tokens,
                 "decoder_busy_seconds": w.stats.busy_seconds, "codec_busy_seconds": c.busy_seconds,
                 "codec_decodes": c.decodes}
                for w, c, d in zip(self.workers, self.codecs, self.devices, strict=True)
            ],
        }

    def close(self, timeout: float = 5.0) -> None:
        """Cancel every stream and stop the threads."""
        with self._lock:
            self._closed = True
            streams = list(self._streams)
        for s in streams:
            s.cancel()
        for w in self.workers:
            w.close(timeout)
        for c in self.codecs:
            c.close(timeout)

    def __enter__(self) -> SpeechEngine:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()


def _device(device: str | torch.device) -> torch.device:
    from llmvox.device import resolve_device

    return resolve_device(device)


def _replica(voice: Voice, device: torch.device) -> tuple[Any, Any]:
    """The voice's decoder and codec on `device` (shared, not copied, on the voice's own device)."""
    if device == voice.device:
        return voice.decoder, voice.codec
    return copy.deepcopy(voice.decoder).to(device).eval(), copy.deepcopy(voice.codec).to(device).eval()


def stream_speech(voice: Voice, text_deltas: Iterable[str], *, engine: SpeechEngine | None = None,
                  num_workers: int = 2, max_batch: int = 32, threads: int | None = None,
                  **options: Any) -> Iterator[np.ndarray]:
    """float32 audio chunks for text arriving in pieces, as soon as each exists.

    `options` are `StreamConfig` fields (chunk schedule, chunk_join, normalize, ...). Without an
    `engine`, one is made for this call (its threads stop when the iterator is closed).
    """
    own = engine is None
    config = StreamConfig.from_options(**options)
    if engine is None:
        engine = SpeechEngine(voice, num_workers=num_workers, max_batch=max_batch, threads=threads, config=config)
    stream = engine.open(config)
    stream.feed_from(text_deltas)
    try:
        for chunk in stream.chunks():
            if len(chunk.samples):
                yield chunk.samples
    finally:
        stream.cancel()
        if own:
            engine.close()
