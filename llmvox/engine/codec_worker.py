"""The codec worker: code windows -> audio on one device, most urgent first, several streams per call.

A chunk's deadline is when its stream would otherwise run dry; the worker runs its own thread so
decoder steps never wait for the codec.
"""

from __future__ import annotations

import heapq
import itertools
import logging
import threading
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

import numpy as np
import torch

log = logging.getLogger(__name__)


# done(audio, error, waited, took): `took` is this window's share of its (batched) call, `waited` the rest
# of the time from submission to the audio, so that waited + took is the chunk's latency
DecodeDone = Callable[["np.ndarray | None", "BaseException | None", float, float], None]
MAX_CODEC_BATCH = 8  # windows decoded in one call


@dataclass
class Decode:
    """A codec decode: `codes` (a window) with `model`; `done(audio, error, waited, took)` gets the result."""

    model: Any
    codes: list[int]
    done: DecodeDone
    batchable: bool = False  # may share one batched call with other windows of the same model and length
    submitted: float = field(default_factory=time.perf_counter)

    @property
    def key(self) -> tuple[int, int] | None:
        return (id(self.model), len(self.codes)) if self.batchable and self.codes else None


@dataclass(order=True)
class _CodecTask:
    deadline: float
    seq: int
    work: Decode | Callable[[], None] = field(compare=False)
    alive: Callable[[], bool] = field(compare=False)


class CodecWorker:
    """A thread running codec decodes (and any callables) on one device, earliest deadline first.

    Batchable decodes of the same model and window length that are queued together run as one batched
    codec call (measured on the embedded codec: 1.4-2.8x less time than one call each for 4-8 windows).
    Its audio equals the one-at-a-time decode only to ~1e-7 (the convolutions block differently per
    batch size), so streams that promise byte-identical audio (the fixed chunk schedule) do not batch.
    """

    def __init__(self, *, name: str = "codec0", threads: int | None = None, max_batch: int = MAX_CODEC_BATCH):
        self.name = name
        self.threads = threads
        self.max_batch = max_batch
        self.decodes = 0
        self.batched_decodes = 0  # windows decoded in a batched call of two or more
        self.busy_seconds = 0.0
        self._heap: list[_CodecTask] = []
        self._seq = itertools.count()
        self._cond = threading.Condition()
        self._closed = False
        self._thread = threading.Thread(target=self._run, name=f"llmvox-{name}", daemon=True)
        self._thread.start()

    def submit(self, work: Decode | Callable[[], None], deadline: float,
               alive: Callable[[], bool] = lambda: True) -> None:
        """Run `work` (a `Decode` or a callable) in the codec thread, in deadline order; `alive()` False skips it."""
        with self._cond:
            if self._closed:
                return
            heapq.heappush(self._heap, _CodecTask(deadline, next(self._seq), work, alive))
            self._cond.notify()

    @property
    def queued(self) -> int:
        return len(self._heap)

    def close(self, timeout: float | None = 5.0) -> None:
        with self._cond:
            self._closed = True
            self._heap.clear()
            self._cond.notify_all()
        if threading.current_thread() is not self._thread:
            self._thread.join(timeout)

    def _run(self) -> None:
        if self.threads:
            torch.set_num_threads(self.threads)
        with torch.inference_mode():
            self._loop()

    def _take(self) -> list[_CodecTask] | None:
        """With the lock held: the most urgent live task, plus the queued decodes it can batch with."""
        while self._heap:
            task = heapq.heappop(self._heap)
            if not task.alive():
                continue
            key = task.work.key if isinstance(task.work, Decode) else None
            if key is None:
                return [task]
            same = [t for t in self._heap if isinstance(t.work, Decode) and t.work.key == key]
            batch = [task] + sorted(same)[: self.max_batch - 1]
            if len(batch) > 1:
                taken = {t.seq for t in batch}
                self._heap = [t for t in self._heap if t.seq not in taken]
                heapq.heapify(self._heap)
            return [t for t in batch if t is task or t.alive()]
        return None

    def _loop(self) -> None:
        while True:
            with self._cond:
                batch = None
                while batch is None:
                    while not self._heap and not self._closed:
                        self._cond.wait()
                    if self._closed:
                        return
                    batch = self._take()
            start = time.perf_counter()
            work = batch[0].work
            if isinstance(work, Decode):
                self._decode([t.work for t in batch])
            else:
                try:
                    work()
                except Exception:  # callables report their own errors; this only keeps the thread alive
                    log.exception("%s: codec task failed", self.name)
            self.decodes += len(batch)
            self.batched_decodes += len(batch) if len(batch) > 1 else 0
            self.busy_seconds += time.perf_counter() - start

    def _decode(self, jobs: list[Decode]) -> None:
        """One codec call for windows of equal length (or one window); each job gets its row."""
        start = time.perf_counter()
        model = jobs[0].model
        try:
            if not jobs[0].codes:
                rows = [np.zeros(0, dtype=np.float32)]
            else:
                codes = torch.tensor([j.codes for j in jobs], dtype=torch.long, device=model.device)
                rows = list(model.decode_codes(codes).float().cpu().numpy())
        except Exception as exc:  # a device error: every stream of the batch ends with it, none hangs
            log.exception("%s: codec decode failed", self.name)
            for job in jobs:
                job.done(None, exc, start - job.submitted, time.perf_counter() - start)
            return
        end = time.perf_counter()
        share = (end - start) / len(jobs)
        for job, audio in zip(jobs, rows, strict=True):
            job.done(audio, None, end - job.submitted - share, share)


