"""`SpeechEngine`: the workers (a decoder and a codec per device) that every stream of a voice shares.

`open()` starts a `SpeechStream` on them; `stream_speech` is the Python API's one-call streaming.
`SpeechEngines` serves several voices: an engine (decoder threads) per voice, codec threads shared.
"""

from __future__ import annotations

import copy
import os
import threading
from collections.abc import Callable, Iterable, Iterator, Mapping
from typing import Any

import numpy as np
import torch

from llmvox.engine.codec_worker import CodecWorker
from llmvox.engine.config import StreamConfig
from llmvox.engine.events import StreamEvent
from llmvox.engine.scheduler import DecoderWorker, Workers
from llmvox.engine.stream import SpeechStream
from llmvox.errors import LLMVoXError
from llmvox.model.voice import Voice
from llmvox.text.tokenizer import PAD_ID


class SpeechEngine:
    """N workers (decoder + codec per device) shared by every stream; open streams with `open()`."""

    def __init__(self, voice: Voice, *, num_workers: int = 2, devices: list[str] | None = None,
                 max_batch: int = 32, threads: int | None = None, config: StreamConfig | None = None,
                 pad_id: int = PAD_ID, codecs: list[CodecWorker] | None = None, name: str = ""):
        """`codecs`: codec threads to run on instead of starting our own (one per worker; their owner
        closes them); `name` prefixes the worker names, so several engines' workers tell apart."""
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
        if codecs is not None and len(codecs) != num_workers:
            raise LLMVoXError(f"{len(codecs)} shared codec workers for {num_workers} workers")
        self._own_codecs = codecs is None
        prefix = f"{name}:" if name else ""
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
            self.workers.append(DecoderWorker(decoder, name=f"{prefix}worker{i}", max_batch=max_batch,
                                              eoa_id=voice.eoa_id, pad_id=pad_id, threads=threads))
            self.codecs.append(codecs[i] if codecs is not None else CodecWorker(name=f"codec{i}", threads=threads))
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
        for c in self.codecs if self._own_codecs else ():
            c.close(timeout)

    def __enter__(self) -> SpeechEngine:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()


class SpeechEngines:
    """Several voices served at once, by name: an engine per voice, since a decoder batch steps the rows
    of one model only (each voice has its own decoder threads), while the codec threads (a codec
    decode is any callable, run earliest deadline first) are shared by all of them."""

    def __init__(self, engines: dict[str, SpeechEngine], default: str, codecs: list[CodecWorker] | None = None):
        if default not in engines:
            raise LLMVoXError(f"the default voice {default!r} is not one of {', '.join(engines)}")
        self.engines = engines
        self.default = default
        self._codecs = codecs or []  # shared, ours to close

    @classmethod
    def start(cls, voices: Mapping[str, Voice], *, default: str | None = None, num_workers: int = 2,
              threads: int | None = None, **options: Any) -> SpeechEngines:
        """Engines for `voices` (name -> voice; the first is the default unless `default` names one);
        `options` are SpeechEngine's (devices, max_batch, config, pad_id)."""
        if not voices:
            raise LLMVoXError("no voices to serve")
        if num_workers < 1:
            raise LLMVoXError("num_workers must be at least 1")
        share_codec_models(voices.values())
        if threads is None:
            threads = max(1, (os.cpu_count() or 1) // (2 * num_workers))
        codecs = [CodecWorker(name=f"codec{i}", threads=threads) for i in range(num_workers)]
        engines: dict[str, SpeechEngine] = {}
        try:
            for name, voice in voices.items():
                engines[name] = SpeechEngine(voice, num_workers=num_workers, threads=threads, codecs=codecs,
                                             name=name if len(voices) > 1 else "", **options)
            return cls(engines, default or next(iter(voices)), codecs)
        except BaseException:
            for engine in engines.values():
                engine.close()
            for codec in codecs:
                codec.close()
            raise

    def __getitem__(self, name: str) -> SpeechEngine:
        return self.engines[name]

    @property
    def default_engine(self) -> SpeechEngine:
        return self.engines[self.default]

    @property
    def active_streams(self) -> int:
        return sum(e.active_streams for e in self.engines.values())

    def stats(self) -> dict[str, Any]:
        """Every engine's stats in one (workers named voice:workerN when there are several voices)."""
        parts = [e.stats() for e in self.engines.values()]
        return {"streams": sum(p["streams"] for p in parts), "workers": [w for p in parts for w in p["workers"]]}

    def close(self, timeout: float = 5.0) -> None:
        for engine in self.engines.values():
            engine.close(timeout)
        for codec in self._codecs:
            codec.close(timeout)


def share_codec_models(voices: Iterable[Voice]) -> None:
    """Voices whose codecs are the same (class, config and weights, on one device: bundles trained on one
    codec) share one codec model, and the copies are freed: the codec is a large part of a voice."""
    seen: list[Voice] = []
    for voice in voices:
        for other in seen:
            if other.codec is not voice.codec and _same_codec(other, voice):
                voice.codec = other.codec
                break
        seen.append(voice)


def _same_codec(a: Voice, b: Voice) -> bool:
    if type(a.codec) is not type(b.codec) or a.device != b.device:
        return False
    if getattr(a.codec, "config", None) != getattr(b.codec, "config", None):
        return False
    sa, sb = a.codec.state_dict(), b.codec.state_dict()
    if sa.keys() != sb.keys():
        return False
    return all(sa[k].shape == sb[k].shape and sa[k].dtype == sb[k].dtype and torch.equal(sa[k], sb[k]) for k in sa)


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
