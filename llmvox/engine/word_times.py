"""Word timestamps of a stream, attached to its audio chunks as they become known.

A stream opened with `StreamConfig(word_timestamps=True)` delivers through a `WordTimer`: its segments'
decoder jobs record the voice's aligner head's read position per step (`SegmentJob.reads`), and each
`AudioChunk` gets `words`: the `WordTime`s whose start lies in the audio delivered so far and whose end
is known (the next word has started, or the segment is finished). Times are seconds from the stream's
first sample, counted on the samples actually delivered, so they hold across sentences and joins.
`heard()` is the last word whose start the listener has received: what a cancel reports.
"""

from __future__ import annotations

import threading
from collections.abc import Callable
from dataclasses import asdict, dataclass
from typing import TYPE_CHECKING, Any

from llmvox.engine.events import AudioChunk, StreamEvent
from llmvox.errors import LLMVoXError
from llmvox.model.aligner import Aligner, word_spans

if TYPE_CHECKING:
    from llmvox.model.voice import Voice

SpeechStream = Any  # llmvox.engine.stream.SpeechStream (which imports this module)


@dataclass
class WordTime:
    """One spoken word: `start`/`end` in seconds of the stream's audio; `segment` its sentence."""

    word: str
    start: float
    end: float
    segment: int
    index: int  # word index within the whole stream

    def to_dict(self, speed: float = 1.0) -> dict[str, Any]:
        """JSON form; `speed` rescales the times of audio played faster or slower."""
        d = asdict(self)
        d["start"], d["end"] = round(self.start / speed, 3), round(self.end / speed, 3)
        return d


def aligner_of(voice: Voice) -> Aligner:
    """The voice's aligner, or the 400 that says it has none."""
    aligner = getattr(voice, "aligner", None)
    if aligner is None:
        raise LLMVoXError(f"voice {voice.name!r} has no aligner head in its config.json, so it cannot give word "
                          "timestamps (see voice/word_timestamp_heads.py)", 400, code="timestamps_unavailable")
    return aligner


def head_of(sink: object) -> Aligner | None:
    """The aligner a stream's segments must record (its sink is a WordTimer), else None."""
    return sink.aligner if isinstance(sink, WordTimer) else None


def word_timer(stream: SpeechStream) -> WordTimer | None:
    """The stream's WordTimer when it was opened with word timestamps."""
    sink = getattr(stream, "_sink", None)
    return sink if isinstance(sink, WordTimer) else None


class WordTimer:
    """The stream's sink with word times added to its AudioChunks (see the module docstring)."""

    def __init__(self, voice: Voice, stream: SpeechStream, sink: Callable[[StreamEvent], None]) -> None:
        self.aligner = aligner_of(voice)
        self.stream = stream
        self.sink = sink
        self.frame = voice.hop_length / voice.sample_rate
        self.rate = voice.sample_rate
        self.samples = 0  # delivered so far
        self.sent: list[WordTime] = []
        self._starts: dict[int, int] = {}  # segment -> its first sample
        self._done: dict[int, int] = {}  # segment -> words sent
        self._first_word: dict[int, int] = {}  # segment -> stream index of its first word
        self._lock = threading.Lock()

    def __call__(self, event: StreamEvent) -> None:
        if isinstance(event, AudioChunk):
            with self._lock:
                if event.index == 0:
                    self._starts[event.segment] = self.samples
                    self._first_word[event.segment] = self._next_index(event.segment)
                self.samples += len(event.samples)
                event.words = self._ready(event.segment, final=event.last_in_segment)
                self.sent += event.words
        self.sink(event)

    def _next_index(self, segment: int) -> int:
        before = [s for s in self._first_word if s < segment]
        if not before:
            return 0
        last = max(before)
        return self._first_word[last] + len(self.stream._segments[last].words)

    def _ready(self, segment: int, *, final: bool) -> list[WordTime]:
        seg = self.stream._segments[segment]
        job = seg.job
        if job is None:
            return []
        heard_frames = (self.samples - self._starts[segment]) / (self.rate * self.frame)
        total = len(seg.codes)
        times = self.aligner.steps(word_spans(list(job.text_ids)), list(job.reads), total, seg.done or final)
        base = self._starts[segment] / self.rate
        out = []
        k = self._done.get(segment, 0)
        while k < len(times) and k < len(seg.words):
            start, end = times[k]
            if end is None or (start >= heard_frames and not final):
                break
            out.append(WordTime(seg.words[k], round(base + start * self.frame, 3), round(base + end * self.frame, 3),
                                segment, self._first_word[segment] + k))
            k += 1
        self._done[segment] = k
        return out

    def heard(self) -> WordTime | None:
        """The last word whose start the listener has received (a sent one, or one still awaiting its end)."""
        with self._lock:
            last = self.sent[-1] if self.sent else None
            pending = self._pending_started()
            return pending or last

    def _pending_started(self) -> WordTime | None:
        if not self._starts:
            return None
        segment = max(self._starts)
        seg = self.stream._segments[segment]
        if seg.job is None:
            return None
        k = self._done.get(segment, 0)
        times = self.aligner.steps(word_spans(list(seg.job.text_ids)), list(seg.job.reads), len(seg.codes), False)
        heard_frames = (self.samples - self._starts[segment]) / (self.rate * self.frame)
        if k < len(times) and k < len(seg.words) and times[k][0] < heard_frames:
            start = self._starts[segment] / self.rate + times[k][0] * self.frame
            return WordTime(seg.words[k], round(start, 3), round(self.samples / self.rate, 3), segment,
                            self._first_word[segment] + k)
        return None


def transcript_words(snapshot: dict[str, Any], stream: Any) -> dict[str, Any]:
    """A chat transcript with the spoken words' times (`words`), the last word the listener received
    (`last_word`: what the answer was cut to, when it was interrupted), when its stream timed them, and
    `words_done`: whether `words` is complete. The answer's text is done (`done`) as soon as the LLM
    stops, while its speech, and so its word times, goes on for seconds after."""
    timer = word_timer(stream) if stream is not None else None
    if timer is None:
        return snapshot
    finished = stream.done  # read first: every word was sent before the stream finished
    heard = timer.heard()
    return {**snapshot, "words": [w.to_dict() for w in list(timer.sent)],
            "last_word": None if heard is None else heard.to_dict(), "words_done": finished}
