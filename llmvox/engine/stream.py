"""The multi-queue streamer: text deltas in, audio chunks out, in order and as soon as they exist.

One `SpeechStream` per utterance (a request, a WebSocket answer, an LLM reply):

    deltas ─► SpeakableStream (whole words, speakable, sentence ends) ─► segments (one per sentence)
    segment k ─► lane k % N ─► DecoderWorker N (batched with every other stream's segments) ─► codes
    codes ─► chunk plan (dump sizes) ─► CodecWorker N ─► audio chunks ─► reordered ─► sink, in order

Lanes are the multi-queue of LLMVoX: each lane runs its segments one after another on its own worker
(its own model replica and device), so while lane 0 speaks sentence k, lane 1 already generates
sentence k+1 (the other lanes start once the stream's first audio is out, so nothing of the same
stream competes with its first chunk). Words reach the decoder as soon as the text stage releases them,
so a sentence starts before the LLM has finished writing it.
The chunk schedule and joins are the options of `llmvox.engine.config.StreamConfig`.
"""

from __future__ import annotations

import logging
import queue
import threading
import time
from collections import deque
from collections.abc import Callable, Iterable, Iterator
from dataclasses import dataclass, field

import numpy as np

from llmvox.engine.chunk_policy import Chunk, ChunkPolicy, crossfade
from llmvox.engine.codec_worker import Decode
from llmvox.engine.config import StreamConfig
from llmvox.engine.events import AudioChunk, Done, Failed, Flushed, StreamEvent, Text
from llmvox.engine.playout import PlayoutClock
from llmvox.engine.scheduler import SegmentJob, Workers
from llmvox.engine.word_times import WordTimer, head_of
from llmvox.errors import LLMVoXError
from llmvox.text.frontend import WordReader
from llmvox.text.segment import SpeakableStream, SpeakableWord

log = logging.getLogger(__name__)

FLUSH = object()  # in a `feed_from` iterable: close the pending sentence now (as `flush()`)


@dataclass
class _Segment:
    index: int
    lane: int
    reader: WordReader  # the voice's front-end, reading this sentence word by word
    words: list[str] = field(default_factory=list)
    pending_ids: list[int] = field(default_factory=list)  # ids fed before the job started
    text_done: bool = False
    codes: list[int] = field(default_factory=list)
    done: bool = False
    job: SegmentJob | None = None
    chunks: list[Chunk] = field(default_factory=list)
    planned: int = 0  # codes covered by planned chunks
    emitted: int = 0  # frames covered by planned chunks' emit ranges
    submitted: int = 0  # chunks handed to the codec
    delivered: int = 0  # chunks passed to the sink
    offset: int | None = None  # global code index of this segment's first code (all earlier done)


@dataclass
class _Lane:
    worker: int
    dump: int  # codes per chunk: grows as the lane speaks
    queue: deque[_Segment] = field(default_factory=deque)
    running: _Segment | None = None


class SpeechStream:
    """One utterance: `feed()` text deltas, `flush()` to close the pending sentence, `end()` when the
    text is complete, `cancel()` to stop at once. Audio goes to the sink (or `chunks()`) in order."""

    def __init__(self, workers: Workers, config: StreamConfig, *, sink: Callable[[StreamEvent], None] | None,
                 request_id: str, on_finish: Callable[[SpeechStream], None] | None = None):
        self.workers = workers
        self._on_finish = on_finish
        self.config = config
        self.request_id = request_id
        self.max_audio_length = config.max_audio_length or workers.voice.max_audio_length
        lexicon, frontend = config.lexicon, workers.voice.frontend
        self._frontend = frontend if lexicon is None else lexicon.bind(frontend)  # the words' reader
        self._queue: queue.Queue | None = None
        if sink is None:
            self._queue = queue.Queue()
            sink = self._queue.put
        self._sink = WordTimer(workers.voice, self, sink) if config.word_timestamps else sink
        self._lock = threading.RLock()
        self._text = SpeakableStream(normalize=config.normalize, max_chars=config.max_sentence_chars)
        self._segments: list[_Segment] = []
        self._open: _Segment | None = None
        n = len(workers.decoders)
        self._lanes = [_Lane(i, config.initial_dump_size_1 if i == 0 else config.initial_dump_size_2)
                       for i in range(n)]
        voice = workers.voice
        self._policy = (ChunkPolicy(config, voice.sample_rate / voice.hop_length, list(zip(workers.decoders,
                        workers.codecs, strict=True))) if config.chunk_policy == "adaptive" else None)
        self.playout = PlayoutClock(voice.sample_rate)  # the listener's buffer, as the engine delivers
        self._flush_marks: deque[int] = deque()  # segment counts at each flush(), until delivered
        self._history: list[int] = []  # codes of the leading run of finished segments
        self._history_segments = 0
        self._next_delivery = 0
        self._ended = False
        self._finished = False
        self.cancelled = False
        self.error: BaseException | None = None
        self.created_at = time.perf_counter()
        self.first_audio_at: float | None = None
        self.finished_at: float | None = None
        self.audio_samples = 0
        self.text_chars = 0
        self.spoken_chars = 0  # of the words spoken so far, normalised, with a space after each

    # ---- input -------------------------------------------------------------------------------
    def feed(self, delta: str) -> None:
        """Add text (any split: sub-words, words, sentences)."""
        if not delta:
            return
        with self._lock:
            self._check_open()
            self.text_chars += len(delta)
            for word in self._text.feed(delta):
                self._add_word(word)

    def feed_from(self, deltas: Iterable[str | object], *, echo: bool = False) -> threading.Thread:
        """Feed text from an iterable (an LLM's deltas, one request's text, a WebSocket's messages) on a
        thread of its own, then end the stream; a failing source fails the stream. Segmenting,
        normalising and reading the text happen on that thread, never on the caller's (an event loop).
        A `FLUSH` item flushes. With `echo`, each delta is also delivered as a `Text` event, in order
        with the audio."""

        def feed() -> None:
            iterator = iter(deltas)
            try:
                for delta in iterator:
                    if self.done:
                        break
                    if delta is FLUSH:
                        self.flush()
                        continue
                    if echo:
                        self._sink(Text(delta))
                    self.feed(delta)
                self.end()
            except BaseException as exc:  # noqa: BLE001 - the text side failed: end the audio with it
                if not self.done:
                    self.fail(exc)
            finally:
                close = getattr(iterator, "close", None)
                if close is not None:
                    close()

        thread = threading.Thread(target=feed, name=f"llmvox-feed-{self.request_id}", daemon=True)
        thread.start()
        return thread

    def flush(self) -> int:
        """Speak all text so far (closes the pending sentence). Returns the number of segments."""
        with self._lock:
            self._flush_text()
            self._flush_marks.append(len(self._segments))
            self._send_flushed()
            return len(self._segments)

    def _flush_text(self) -> None:
        self._check_open()
        for word in self._text.flush():
            self._add_word(word)
        self._close_open_segment()

    def end(self) -> None:
        """No more text: the stream ends when everything is spoken."""
        with self._lock:
            if self._ended or self.cancelled:
                return
            self._flush_text()
            self._ended = True
            self._maybe_finish()

    def cancel(self) -> None:
        """Stop now: drop pending text, free the decoder rows, end the output."""
        with self._lock:
            if self.cancelled or self._finished:
                return
            self.cancelled = True
            for seg in self._segments:
                if seg.job is not None and not seg.done:
                    seg.job.cancel()
            for lane in self._lanes:
                lane.queue.clear()
            self._finish()

    def fail(self, exc: BaseException) -> None:
        """End the stream with an error (e.g. the text source broke)."""
        with self._lock:
            if self._finished:
                return
            self.error = exc
            for seg in self._segments:
                if seg.job is not None and not seg.done:
                    seg.job.cancel()
            self._finish()

    # ---- output ------------------------------------------------------------------------------
    def chunks(self, timeout: float | None = None) -> Iterator[AudioChunk]:
        """Chunks in order until the stream ends (only for streams opened without a sink)."""
        if self._queue is None:
            raise RuntimeError("this stream delivers to its sink; chunks() needs a stream opened without one")
        while True:
            try:
                event = self._queue.get(timeout=timeout)
            except queue.Empty:
                raise LLMVoXError(f"no audio for {timeout} s") from None
            if isinstance(event, Failed):
                raise LLMVoXError(f"speech generation failed: {event.error}") from event.error
            if isinstance(event, Done):
                return
            if isinstance(event, AudioChunk):
                yield event

    @property
    def done(self) -> bool:
        return self._finished

    @property
    def segments(self) -> int:
        return len(self._segments)

    @property
    def sentence_open(self) -> bool:
        """True while a sentence is being spoken whose text has not ended yet (more words may come)."""
        return self._open is not None

    @property
    def audio_seconds(self) -> float:
        return self.audio_samples / self.workers.voice.sample_rate

    def segment_codes(self, index: int) -> list[int]:
        return list(self._segments[index].codes)

    @property
    def sentences(self) -> list[list[str]]:
        """The words of each segment as fed to the decoder (after normalisation)."""
        return [list(s.words) for s in self._segments]

    @property
    def codes(self) -> list[int]:
        """All codes generated so far, in stream order (for tests and analysis)."""
        return [c for s in self._segments for c in s.codes]

    def timings(self) -> dict[str, float | None]:
        end = self.finished_at or time.perf_counter()
        ttfa = None if self.first_audio_at is None else self.first_audio_at - self.created_at
        secs = self.audio_seconds
        return {"time_to_first_audio": ttfa, "elapsed": end - self.created_at, "audio_seconds": secs,
                "real_time_factor": (end - self.created_at) / secs if secs > 0 else None,
                "playback_gaps": self.playout.gaps, "stall_seconds": self.playout.stall}

    # ---- text -> segments ----------------------------------------------------------------------
    def _check_open(self) -> None:
        if self.cancelled:
            raise LLMVoXError("the stream was cancelled")
        if self._ended:
            raise LLMVoXError("the stream has ended; open a new one for more text")
        if self.error is not None:
            raise LLMVoXError(f"the stream failed: {self.error}")

    def _add_word(self, word: SpeakableWord) -> None:
        self.spoken_chars += len(word.text) + 1
        limit = self.config.max_spoken_chars
        if limit is not None and self.spoken_chars > limit + 1:
            raise LLMVoXError(f"the text becomes more than {limit} characters once numbers and symbols are "
                              f"spelled out; the limit is {limit}", 413, code="text_too_long")
        seg = self._open
        if seg is None:
            seg = _Segment(index=len(self._segments), lane=len(self._segments) % len(self._lanes),
                           reader=self._frontend.reader())
            if self._history_segments == seg.index:  # every earlier segment is done: its context is known
                seg.offset = len(self._history)
            self._segments.append(seg)
            self._open = seg
            lane = self._lanes[seg.lane]
            lane.queue.append(seg)
        seg.words.append(word.text)
        ids = seg.reader.push(word.text)
        self._feed_segment(seg, ids + seg.reader.finish() if word.ends_sentence else ids, word.ends_sentence)
        if word.ends_sentence:
            self._open = None
        self._start_lane(self._lanes[seg.lane])

    def _close_open_segment(self) -> None:
        """A sentence left open by the text stage is closed with the sentence-end id: the same ids as
        if its last word had been marked (`</s>` is already there, 385 follows it)."""
        seg = self._open
        if seg is not None:
            self._feed_segment(seg, seg.reader.finish(), True)
            self._open = None

    def _feed_segment(self, seg: _Segment, ids: list[int], last: bool) -> None:
        if seg.job is None:
            seg.pending_ids.extend(ids)
            seg.text_done = seg.text_done or last
        else:
            seg.text_done = seg.text_done or last
            seg.job.feed(ids, last=last)

    def _start_lanes(self) -> None:
        for lane in self._lanes:
            self._start_lane(lane)

    def _start_lane(self, lane: _Lane) -> None:
        if lane.running is not None or not lane.queue or self.cancelled:
            return
        seg = lane.queue[0]
        if seg.index > 0 and self.first_audio_at is None and not self._segments[0].done:
            return  # the first chunk decides the time to first audio: nothing else of this stream competes
        lane.queue.popleft()
        lane.running = seg
        job = SegmentJob(lambda _job, codes, finished, seg=seg: self._on_codes(seg, codes, finished),
                         max_audio_length=self.max_audio_length, tag=f"{self.request_id}/{seg.index}",
                         align=head_of(self._sink))
        job.feed(seg.pending_ids, last=seg.text_done)
        seg.pending_ids = []
        seg.job = job
        self.workers.decoders[lane.worker].submit(job)

    # ---- codes -> chunks ---------------------------------------------------------------------
    def _on_codes(self, seg: _Segment, codes: list[int], finished: bool) -> None:
        """Worker thread: new codes of a segment; plan chunks, start the lane's next segment."""
        with self._lock:
            if self.cancelled or self._finished:
                return
            job = seg.job
            if job is not None and job.error is not None:
                self.fail(job.error)
                return
            lane = self._lanes[seg.lane]
            cfg = self.config
            seg.codes.extend(codes)
            while self._policy is None and len(seg.codes) - seg.planned >= lane.dump:
                self._plan_chunk(seg, seg.planned + lane.dump, final=False)
                lane.dump = min(lane.dump * 3, cfg.max_dump_size)
            if self._policy is not None and not finished:
                self._plan_adaptive(seg, len(codes))
            if finished:
                self._plan_chunk(seg, len(seg.codes), final=True)
                for _ in range(2):  # the original grows once for the last chunk, once for the sentence end
                    lane.dump = min(lane.dump * 3, cfg.max_dump_size)
                seg.done = True
                lane.running = None
                self._advance_history()
                self._start_lanes()
                for other in self._segments if self._policy is not None else ():
                    if other.job is not None and not other.done:  # its deadline may be known now
                        self._plan_adaptive(other, 0)
            self._submit_ready()
            self._deliver()

    def _plan_adaptive(self, seg: _Segment, n: int) -> None:
        """The adaptive policy's cut: all pending codes, once waiting longer would risk a gap."""
        known = self.playout.started and seg.offset is not None  # when the audio before these plays
        dry = self.playout.due((seg.offset + seg.emitted) * self.workers.voice.hop_length) if known else None
        last = seg.chunks[-1] if seg.chunks else None
        if self._policy.on_codes(seg.lane, seg.index, n, time.perf_counter(), pending=len(seg.codes) - seg.planned,
                                 first=seg.index == 0 and last is None, dry_at=dry,
                                 last_size=last.end - last.start if last else 0,
                                 starved=seg.job is not None and not seg.job.runnable):
            self._plan_chunk(seg, len(seg.codes), final=False)

    def _plan_chunk(self, seg: _Segment, end: int, final: bool) -> None:
        hold = 0 if final or self.config.chunk_join == "original" else self.config.lookahead_frames
        emit_end = end if final else max(seg.emitted, end - hold)
        seg.chunks.append(Chunk(len(seg.chunks), seg.planned, end, seg.emitted, emit_end, final))
        seg.planned = end
        seg.emitted = emit_end

    def _advance_history(self) -> None:
        """Extend the run of finished leading segments (their codes are the left context of the next)."""
        segs = self._segments
        while self._history_segments < len(segs) and segs[self._history_segments].done:
            seg = segs[self._history_segments]
            seg.offset = len(self._history)
            self._history.extend(seg.codes)
            self._history_segments += 1
        if self._history_segments < len(segs):
            segs[self._history_segments].offset = len(self._history)

    def _submit_ready(self) -> None:
        cfg = self.config
        context = cfg.chunk_join == "context"
        for seg in self._segments:
            if seg.submitted == len(seg.chunks):
                continue
            if context and seg.offset is None:
                break  # earlier segments are still generating: their codes are this one's left context
            while seg.submitted < len(seg.chunks):
                chunk = seg.chunks[seg.submitted]
                seg.submitted += 1
                self._submit_chunk(seg, chunk, context)

    def _submit_chunk(self, seg: _Segment, chunk: Chunk, context: bool) -> None:
        workers = self.workers
        codec = workers.codec_models[seg.lane]
        if context:
            assert seg.offset is not None
            begin = seg.offset + chunk.emit_start  # global frame of the first emitted sample
            first = max(0, begin - self.config.context_frames)
            window = self._history[first:seg.offset] if first < seg.offset else []
            window = window + seg.codes[max(0, first - seg.offset):chunk.end]
            lead = begin - first  # context frames before the emitted ones
            emit = chunk.emit_end - chunk.emit_start
            start_frame = begin
        else:
            window = seg.codes[chunk.start:chunk.end]
            lead, emit = 0, chunk.end - chunk.start
            start_frame = (seg.offset if seg.offset is not None else len(self._history)) + chunk.start
        hop = workers.voice.hop_length
        base = self.first_audio_at or self.created_at
        deadline = base + start_frame * hop / workers.voice.sample_rate

        def done(audio: np.ndarray | None, error: BaseException | None, waited: float, took: float) -> None:
            if error is not None:  # a device error: end this stream with it, not hang
                self.fail(error)
                return
            if self._policy is not None:
                self._policy.codec_done(seg.lane, len(window), waited, took, cut=not chunk.final)
            head = audio[lead * hop:(lead + emit) * hop]
            tail = audio[(lead + emit) * hop:] if context else None
            self._on_audio(seg, chunk, head, tail)

        # the adaptive policy lets windows of several streams share one codec call; `fixed` stays byte-exact
        decode = Decode(codec, window, done, batchable=self._policy is not None)
        workers.codecs[seg.lane].submit(decode, deadline, alive=lambda: not (self.cancelled or self._finished))

    def _on_audio(self, seg: _Segment, chunk: Chunk, head: np.ndarray, tail: np.ndarray | None) -> None:
        with self._lock:
            if self.cancelled or self._finished:
                return
            chunk.head, chunk.tail, chunk.ready = head, tail, True
            self._deliver()

    # ---- ordered delivery ----------------------------------------------------------------------
    def _deliver(self) -> None:
        fade = self.config.crossfade_samples if self.config.chunk_join == "context" else 0
        while self._next_delivery < len(self._segments) and not self._finished:
            seg = self._segments[self._next_delivery]
            while seg.delivered < len(seg.chunks) and seg.chunks[seg.delivered].ready:
                chunk = seg.chunks[seg.delivered]
                samples = chunk.head if chunk.head is not None else np.zeros(0, np.float32)
                if fade and seg.delivered > 0:
                    prev = seg.chunks[seg.delivered - 1]
                    samples = crossfade(prev.tail, samples, fade)
                    prev.tail = None
                samples = np.ascontiguousarray(samples, dtype=np.float32)
                self.playout.heard(len(samples))
                if len(samples) and self.first_audio_at is None:
                    self.first_audio_at = self.playout.first
                    self._start_lanes()
                self.audio_samples += len(samples)
                text = " ".join(seg.words) if chunk.index == 0 else None
                self._sink(AudioChunk(samples, seg.index, chunk.index, chunk.final, text))
                chunk.head = None
                seg.delivered += 1
            if seg.done and seg.delivered == len(seg.chunks):
                self._next_delivery += 1
                continue
            break
        self._send_flushed()
        self._maybe_finish()

    def _send_flushed(self) -> None:
        while self._flush_marks and self._flush_marks[0] <= self._next_delivery and not self._finished:
            self._flush_marks.popleft()
            self._sink(Flushed(self._next_delivery))

    def _maybe_finish(self) -> None:
        if (self._ended and not self._finished and self._open is None
                and self._next_delivery == len(self._segments)):
            self._finish()

    def _finish(self) -> None:
        if self._finished:
            return
        self._finished = True
        self.finished_at = time.perf_counter()
        if self._policy is not None:
            self._policy.close()
        if self._on_finish is not None:
            self._on_finish(self)
        try:
            self._sink(Done(self.timings()) if self.error is None else Failed(self.error))
        except Exception:
            log.exception("sink failed at the end of the stream", extra={"request_id": self.request_id})
