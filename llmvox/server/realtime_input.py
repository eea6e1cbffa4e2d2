"""The Realtime session's input audio: the uncommitted buffer (16 kHz), the server VAD over it as it
arrives, and the phrases of the current turn, transcribed while the user still speaks.

A pause inside the turn (`pause_ms` of silence, shorter than the turn's `silence_duration_ms`) cuts a
phrase and sends it to Whisper at once, so when the turn ends only the last phrase (often nothing) is
left to recognise; the turn's transcript is the phrases joined. Phrases take Whisper's short window
(`WhisperASR.transcribe(short=True)`: ~0.2 s for a 2 s phrase instead of ~2 s; docs/realtime.md).
"""

from __future__ import annotations

import asyncio
import time
from collections.abc import Awaitable
from dataclasses import dataclass

import numpy as np
from starlette.concurrency import run_in_threadpool

from llmvox.asr.vad import VAD_RATE, TurnDetector, VadEvent
from llmvox.server.realtime_session import TurnDetection

CUT_MARGIN_MS = 100  # a phrase keeps this much of the silence after its last word
MIN_COMMIT_MS = 100  # OpenAI's minimum for a committed buffer


class _Samples:
    """A growing float32 buffer with a movable start (amortised O(1) appends)."""

    def __init__(self) -> None:
        self._data = np.zeros(VAD_RATE, dtype=np.float32)
        self._n = 0
        self.start = 0  # absolute index (16 kHz samples since the session began) of the first kept sample

    @property
    def end(self) -> int:
        return self.start + self._n

    def append(self, samples: np.ndarray) -> None:
        need = self._n + len(samples)
        if need > len(self._data):
            grown = np.zeros(max(need, 2 * len(self._data)), dtype=np.float32)
            grown[: self._n] = self._data[: self._n]
            self._data = grown
        self._data[self._n:need] = samples
        self._n = need

    def slice(self, a: int, b: int) -> np.ndarray:
        a, b = max(a, self.start) - self.start, min(b, self.end) - self.start
        return self._data[a:b].copy() if b > a else np.zeros(0, dtype=np.float32)

    def drop_before(self, index: int) -> None:
        cut = min(max(0, index - self.start), self._n)
        if cut:
            self._data[: self._n - cut] = self._data[cut: self._n]
            self._n -= cut
            self.start += cut


@dataclass
class Committed:
    """A finished turn's audio and transcript."""

    transcript: str
    audio_ms: int
    asr_tail_ms: float  # recognising what was left after the last phrase (0 when nothing was)
    asr_ms: float  # all of this turn's recognition


class InputAudio:
    """Appended pcm16 -> 16 kHz buffer -> VAD events; phrases -> Whisper on a worker thread, in order."""

    def __init__(self, rate: int, detection: TurnDetection | None, asr, language: str | None,
                 pause_ms: int = 200) -> None:
        self.rate = rate
        self.detection = detection
        self.asr, self.language = asr, language
        self._resampler = None
        if rate != VAD_RATE:
            import soxr

            self._resampler = soxr.ResampleStream(rate, VAD_RATE, 1, dtype="float32", quality="HQ")
        self.buffer = _Samples()
        self.detector = None
        if detection is not None:
            self.detector = TurnDetector(detection.threshold, detection.silence_duration_ms,
                                         min(pause_ms, detection.silence_duration_ms - 50))
        self.turn_start: int | None = None  # absolute sample where the current turn's audio begins
        self.phrase_start = 0
        self.phrases: list[asyncio.Task[tuple[str, float]]] = []
        self.speech_since_cut = False
        self.last_speech_wall: float | None = None  # when the audio holding the last speech frame arrived
        self._asr_lock = asyncio.Lock()

    # ---- audio in --------------------------------------------------------------------------------
    def append(self, pcm: bytes) -> list[VadEvent]:
        samples = np.frombuffer(pcm, dtype="<i2").astype(np.float32) / 32768.0
        if self._resampler is not None:
            samples = self._resampler.resample_chunk(samples)
        self.buffer.append(samples)
        if self.detector is None:
            return []
        before = self.detector.last_speech_end_ms
        events = self.detector.push(samples)
        if self.detector.speaking and self.detector.last_speech_end_ms != before or any(
                e.kind in ("start", "resume") for e in events):
            self.last_speech_wall = time.perf_counter()
        if self.turn_start is None and not self.detector.speaking and not events:
            pad = self.detection.prefix_padding_ms * VAD_RATE // 1000
            self.buffer.drop_before(self.buffer.end - pad)  # idle: keep only the prefix padding
        return events

    @property
    def buffered_ms(self) -> int:
        start = self.turn_start if self.turn_start is not None else self.buffer.start
        return (self.buffer.end - start) * 1000 // VAD_RATE

    @property
    def clock_ms(self) -> int:
        """Milliseconds of input audio received in this session (what audio_start/end_ms count)."""
        return self.buffer.end * 1000 // VAD_RATE

    # ---- the turn's parts ------------------------------------------------------------------------
    def speech_started(self, ms: int) -> None:
        if self.turn_start is None:
            pad = self.detection.prefix_padding_ms if self.detection else 0
            self.turn_start = max(self.buffer.start, (ms - pad) * VAD_RATE // 1000)
            self.phrase_start = self.turn_start
        self.speech_since_cut = True

    def cut_phrase(self, speech_end_ms: int) -> None:
        """A pause: recognise the phrase so far (in the background) and start the next one after it."""
        if not self.speech_since_cut or self.turn_start is None:
            return
        cut = min(self.buffer.end, (speech_end_ms + CUT_MARGIN_MS) * VAD_RATE // 1000)
        audio = self.buffer.slice(self.phrase_start, cut)
        self.phrase_start, self.speech_since_cut = cut, False
        self.phrases.append(asyncio.get_running_loop().create_task(self._recognise(audio)))

    def resumed(self) -> None:
        self.speech_since_cut = True

    async def _recognise(self, audio: np.ndarray) -> tuple[str, float]:
        async with self._asr_lock:
            t0 = time.perf_counter()
            if self.asr is None or len(audio) < VAD_RATE // 20:
                return "", 0.0
            text = await run_in_threadpool(self.asr.transcribe, audio, VAD_RATE, language=self.language, short=True)
            return text.strip(), time.perf_counter() - t0

    async def transcript_so_far(self) -> str:
        """The phrases cut so far, recognised and joined (waits for the ones still running)."""
        return _join([text for text, _ in await asyncio.gather(*self.phrases)])

    def commit(self, speech_end_ms: int | None = None) -> Awaitable[Committed]:
        """Take the turn's audio (up to `speech_end_ms` and a margin, or all of it) now, so later audio
        belongs to the next turn; the result (its recognition) is awaited."""
        start = self.turn_start if self.turn_start is not None else self.buffer.start
        end = self.buffer.end
        if speech_end_ms is not None:
            end = min(end, (speech_end_ms + CUT_MARGIN_MS) * VAD_RATE // 1000)
        audio_ms = (end - start) * 1000 // VAD_RATE
        phrases, self.phrases = self.phrases, []
        tail = None
        if self.speech_since_cut or self.detector is None:
            tail = asyncio.get_running_loop().create_task(self._recognise(self.buffer.slice(self.phrase_start, end)))
        self.reset(end)
        return self._committed(phrases, tail, audio_ms)

    async def _committed(self, phrases: list[asyncio.Task], tail: asyncio.Task | None, audio_ms: int) -> Committed:
        results = list(await asyncio.gather(*phrases))
        t0 = time.perf_counter()
        if tail is not None:
            results.append(await tail)
        tail_ms = (time.perf_counter() - t0) * 1000 if tail is not None else 0.0
        return Committed(_join([t for t, _ in results]), audio_ms, tail_ms, sum(s for _, s in results) * 1000)

    def reset(self, keep_from: int | None = None) -> None:
        """Forget the turn (committed or cleared); audio after `keep_from` stays buffered."""
        for task in self.phrases:
            if not task.done():
                task.cancel()
        self.phrases = []
        self.buffer.drop_before(self.buffer.end if keep_from is None else keep_from)
        self.turn_start = None
        self.phrase_start = self.buffer.start
        self.speech_since_cut = False

    def has_audio(self) -> bool:
        return self.buffered_ms >= MIN_COMMIT_MS


def _join(parts: list[str]) -> str:
    return " ".join(p for p in parts if p).strip()
