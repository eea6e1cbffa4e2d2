"""Workers that serve many streams at once: one batched decoder step for all, one codec queue.

Why batching: one decoder step of the small LLMVoX GPT is bound by reading its weights, so B streams
stepped together cost little more than one. A `DecoderWorker` owns one decoder replica (one device) and
a thread that advances every active segment by one step per iteration. Each segment keeps its own KV
cache row, position, previous code and text ids, so the codes a segment gets are those of
`llmvox.engine.generate.generate_segment` whatever else runs beside it (up to float rounding between
batch sizes, far below the argmax margins).

Segments come and go at any time: a new one takes the next free cache row, a finished or cancelled one
gives its row back at once (the last row moves into the hole, keeping rows packed). Text may arrive
while a segment runs (an LLM writing the sentence); a segment that has used up its text waits in its
row, stepped with a throwaway input whose cache entry its next real step overwrites.

Code windows become audio on a `CodecWorker` (`engine/codec_worker.py`), in a thread of its own so
decoder steps never wait for the codec.
"""

from __future__ import annotations

import itertools
import logging
import threading
import time
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

import torch

from llmvox.engine.codec_worker import CodecWorker
from llmvox.model.aligner import Aligner
from llmvox.model.gpt import HeadProbe
from llmvox.model.speech_decoder import EOA_ID, NO_CODE, SpeechDecoder
from llmvox.model.voice import Voice
from llmvox.text.tokenizer import PAD_ID

log = logging.getLogger(__name__)


CodeCallback = Callable[["SegmentJob", list[int], bool], None]


class SegmentJob:
    """One segment (sentence) to decode: text ids in (possibly over time), codes out through `on_codes`.

    `on_codes(job, codes, finished)` runs in the worker thread after every step that produced codes and
    once more with `finished=True` at the end (EOA once all text is fed, `max_audio_length` steps, or
    the decoder's block size). End-of-audio itself is never passed on. Keep the callback short.
    """

    _ids = itertools.count()

    def __init__(self, on_codes: CodeCallback, *, max_audio_length: int = 8000, tag: str = "",
                 align: Aligner | None = None):
        self.id = next(self._ids)
        self.align = align  # word timestamps wanted: `reads` gets the aligner head's read position per step
        self.reads: list[float] = []
        self.tag = tag
        self.on_codes = on_codes
        self.max_audio_length = max_audio_length
        self.text_ids: list[int] = []
        self.text_done = False
        self.steps = 0  # decoder steps taken (= next position)
        self.prev = NO_CODE
        self.cancelled = False
        self.finished = False
        self.error: BaseException | None = None  # set when the worker failed this segment
        self.submitted_at = 0.0
        self.started_at: float | None = None
        self._worker: DecoderWorker | None = None

    # Text arrives through the worker so that its thread sees it under the lock.
    def feed(self, ids: list[int], *, last: bool = False) -> None:
        """Append text ids; `last=True` closes the segment's text (PAD steps follow it)."""
        worker = self._worker
        if worker is None:
            self.text_ids.extend(ids)
            self.text_done = self.text_done or last
            return
        with worker._cond:
            self.text_ids.extend(ids)
            self.text_done = self.text_done or last
            worker._cond.notify()

    def cancel(self) -> None:
        worker = self._worker
        if worker is None:
            self.cancelled = True
            return
        worker.cancel(self)

    @property
    def runnable(self) -> bool:
        return self.steps < len(self.text_ids) or self.text_done


@dataclass
class WorkerStats:
    steps: int = 0  # batched decoder steps taken
    tokens: int = 0  # stream-steps (sum of batch sizes over steps, runnable rows only)
    segments_done: int = 0
    busy_seconds: float = 0.0


class DecoderWorker:
    """A thread stepping all its active segments together on one decoder replica."""

    def __init__(self, decoder: SpeechDecoder, *, name: str = "worker0", max_batch: int = 32,
                 eoa_id: int = EOA_ID, pad_id: int = PAD_ID, threads: int | None = None):
        if max_batch < 1:
            raise ValueError("max_batch must be at least 1")
        self.decoder = decoder
        self.name = name
        self.max_batch = max_batch
        self.eoa_id = eoa_id
        self.pad_id = pad_id
        self.threads = threads
        self.block_size = decoder.config.block_size
        self.device = decoder.gpt.lm_head.weight.device
        self.stats = WorkerStats()
        self._cond = threading.Condition()
        self._waiting: list[SegmentJob] = []  # submitted, no row yet
        self._rows: list[SegmentJob] = []  # row i of the cache holds _rows[i]
        self._cache = None
        self._closed = False
        self._thread = threading.Thread(target=self._run, name=f"llmvox-{name}", daemon=True)
        self._thread.start()

    # ---- public, any thread ----------------------------------------------------------------
    def submit(self, job: SegmentJob) -> SegmentJob:
        with self._cond:
            if self._closed:
                raise RuntimeError(f"{self.name} is closed")
            if job.cancelled:
                return job
            job._worker = self
            job.submitted_at = time.perf_counter()
            self._waiting.append(job)
            self._cond.notify()
        return job

    def cancel(self, job: SegmentJob) -> None:
        """Stop a job now; its row is freed before the next step."""
        with self._cond:
            job.cancelled = True
            if job in self._waiting:
                self._waiting.remove(job)
            self._cond.notify()

    @property
    def active(self) -> int:
        """Segments holding a cache row."""
        return len(self._rows)

    @property
    def queued(self) -> int:
        """Segments waiting for a free row."""
        return len(self._waiting)

    def close(self, timeout: float | None = 5.0) -> None:
        with self._cond:
            self._closed = True
            for job in self._waiting + self._rows:
                job.cancelled = True
            self._cond.notify_all()
        if threading.current_thread() is not self._thread:
            self._thread.join(timeout)

    # ---- the loop ----------------------------------------------------------------------------
    def _run(self) -> None:
        if self.threads:
            torch.set_num_threads(self.threads)
        with torch.inference_mode():  # the cache is created and moved here: all inference tensors
            self._loop()

    def _loop(self) -> None:
        while True:
            failed: list[SegmentJob] = []
            with self._cond:
                while True:
                    if self._closed:
                        self._rows.clear()
                        self._cache = None
                        return
                    try:
                        self._drop_cancelled()
                        self._admit()
                    except Exception as exc:  # out of memory growing the cache, a device error...
                        failed = self._fail_all(exc)
                        break
                    if any(job.runnable for job in self._rows):
                        break
                    if not self._rows:
                        self._cache = None  # idle: give the memory back
                    self._cond.wait()
                # rows after the last runnable one are left out of the step (they wait for text)
                last = max(i for i, job in enumerate(self._rows) if job.runnable) if not failed else -1
                batch = self._rows[:last + 1]
                inputs = [self._next_input(job) for job in batch]
            if failed:  # callbacks run without the lock (they take their stream's lock)
                for job in failed:
                    _notify(job, [], True)
                continue
            try:
                self._step(batch, inputs)
            except Exception as exc:  # a device error must not kill the worker silently: fail its jobs
                log.exception("%s: decoder step failed; failing its %d segments", self.name, len(batch))
                with self._cond:
                    for job in batch:
                        job.cancelled = True
                        job.error = exc
                for job in batch:
                    _notify(job, [], True)

    def _fail_all(self, exc: BaseException) -> list[SegmentJob]:
        """With the lock held: end every segment with the error and start again from an empty cache."""
        log.error("%s: %s; failing %d segments", self.name, exc, len(self._rows) + len(self._waiting))
        jobs = self._rows + self._waiting
        self._rows, self._waiting, self._cache = [], [], None
        for job in jobs:
            job.cancelled = True
            job.error = exc
        return jobs

    def _drop_cancelled(self) -> None:
        i = 0
        while i < len(self._rows):
            if self._rows[i].cancelled or self._rows[i].finished:
                self._free_row(i)
            else:
                i += 1

    def _free_row(self, i: int) -> None:
        last = len(self._rows) - 1
        if i != last and self._cache is not None:
            self._cache.move_row(last, i, self._rows[last].steps)
        self._rows[i] = self._rows[last]
        self._rows.pop()

    def _admit(self) -> None:
        while self._waiting and len(self._rows) < self.max_batch:
            job = self._waiting.pop(0)
            job.started_at = time.perf_counter()
            self._rows.append(job)
        self._ensure_rows(len(self._rows))

    def _ensure_rows(self, rows: int) -> None:
        if rows == 0:
            return
        cache = self._cache
        if cache is not None and cache.batch >= rows:
            return
        new_rows = min(self.max_batch, max(4, rows, 2 * (cache.batch if cache else 0)))
        length = cache.capacity if cache is not None else 256
        new = self.decoder.new_cache(new_rows, length)
        if cache is not None:
            new.k[:, : cache.batch, :, : cache.capacity] = cache.k
            new.v[:, : cache.batch, :, : cache.capacity] = cache.v
        self._cache = new

    def _next_input(self, job: SegmentJob) -> tuple[int, int, int, bool]:
        """(text id, previous code, position, real) for a row; real=False: a throwaway step."""
        if job.steps < len(job.text_ids):
            return job.text_ids[job.steps], job.prev, job.steps, True
        if job.text_done:
            return self.pad_id, job.prev, job.steps, True
        return self.pad_id, job.prev, job.steps, False

    def _step(self, batch: list[SegmentJob], inputs: list[tuple[int, int, int, bool]]) -> None:
        start = time.perf_counter()
        device = self.device
        text = torch.tensor([x[0] for x in inputs], dtype=torch.long, device=device)
        prev = torch.tensor([x[1] for x in inputs], dtype=torch.long, device=device)
        positions = [x[2] for x in inputs]
        pos = torch.tensor(positions, dtype=torch.long, device=device)
        probe = _probe(batch)
        logits = self.decoder.step(text, prev, pos, self._cache, max(positions), probe)
        codes = logits.argmax(dim=-1).tolist()
        reads = _read_positions(probe, batch, positions)
        done: list[tuple[SegmentJob, list[int]]] = []
        real = 0
        with self._cond:
            for row, (job, (_, _, _, is_real), code) in enumerate(zip(batch, inputs, codes, strict=True)):
                if not is_real or job.cancelled:
                    continue
                real += 1
                n = job.steps
                job.steps = n + 1
                job.prev = code
                if reads is not None and job.align is not None:
                    job.reads.append(reads[row])
                all_text_fed = job.text_done and n >= len(job.text_ids) - 1
                is_eoa = code == self.eoa_id and all_text_fed
                limit = self.block_size
                if job.text_done:
                    limit = min(limit, max(job.max_audio_length, len(job.text_ids)))
                job.finished = is_eoa or job.steps >= limit
                done.append((job, [] if is_eoa else [code]))
            self.stats.steps += 1
            self.stats.tokens += real
            self.stats.busy_seconds += time.perf_counter() - start
        for job, out in done:
            if job.finished:
                self.stats.segments_done += 1
            _notify(job, out, job.finished)


def _probe(batch: list[SegmentJob]) -> HeadProbe | None:
    """The aligner head's probe when a segment of this step wants word timestamps (one voice per worker:
    one head), else None: the step runs unchanged."""
    align = next((job.align for job in batch if job.align is not None), None)
    return None if align is None else HeadProbe(align.layer, align.heads)


def _read_positions(probe: HeadProbe | None, batch: list[SegmentJob], positions: list[int]) -> list[float] | None:
    """Each row's read position: the probed heads' attention centroid over the text ids fed so far
    (j < N, j <= t), as llmvox.model.aligner reads it."""
    if probe is None or probe.probs is None:
        return None
    probs = probe.probs
    limits = torch.tensor([max(1, min(len(job.text_ids), p + 1)) for job, p in zip(batch, positions, strict=True)],
                          device=probs.device)
    where = torch.arange(probs.shape[1], device=probs.device, dtype=probs.dtype)
    on_text = probs * (where[None, :] < limits[:, None])
    return ((on_text * where).sum(-1) / on_text.sum(-1).clamp(min=1e-9)).tolist()


def _notify(job: SegmentJob, codes: list[int], finished: bool) -> None:
    try:
        job.on_codes(job, codes, finished)
    except Exception as exc:
        log.exception("segment %s: code callback failed", job.tag or job.id,
                      extra={"request_id": job.tag.split("/")[0] if job.tag else None})
        job.cancelled = True
        job.error = exc


@dataclass(frozen=True)
class Workers:
    """What a stream runs on: lane i uses decoders[i], codecs[i] and codec_models[i] (the engine's)."""

    voice: Voice
    decoders: list[DecoderWorker]
    codecs: list[CodecWorker]
    codec_models: list[Any]
