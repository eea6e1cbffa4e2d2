"""How a stream's codes become chunks: the planned `Chunk`, the cross-fade at joins, and the adaptive
chunk policy, which cuts them so that the listener's buffer never runs dry.

The original schedule (`chunk_policy="fixed"`: 10 codes, then x3) asks the decoder for 30 codes plus a
codec decode inside the 133 ms the first chunk plays; a decoder that makes fewer than ~250 codes/s for
this stream (a busy CPU, many streams in the batch) cannot, and the listener hears a hole after the
first word. The adaptive policy measures instead, online and per lane:

- the pace: seconds between two codes of this stream's segment (an EWMA; the decoder worker's batched
  step, whatever else runs beside it), seeded from what other streams saw on the same worker;
- the codec latency of a chunk: queue wait (an EWMA) + decode time, a fixed cost plus a cost per
  window frame fitted online (shared by every stream of the codec worker, since they share its queue);

and keeps a playout deadline: audio at global frame F plays at `play_start + F / 75` (the stream's
`PlayoutClock`). After the first audio, a chunk is cut as late as is safe: when waiting for one more
code would deliver it later than the deadline minus `playout_margin_ms`. Chunks then grow by the
ratio of the decoder's pace to real time on their own (x2 at 150 codes/s; x3 at 225/s, the fixed
schedule), and never get smaller than what the codec can decode in their playing time.

The trades:
- first audio: the first chunk stays `initial_dump_size_1` codes, as fast as the fixed schedule; a
  pre-buffer (a bigger first chunk) was measured to cost more first-audio time than the gaps it saved,
  so the chunks after it start small (as small as the codec allows) and grow with the buffer instead;
- the margin: `playout_margin_ms`, plus twice how late the codec's chunks lately came against their
  estimate (a loaded CPU, a long codec queue), so a noisy machine cuts a little earlier;
- slower than real time (pace > 1/75 s): gaps cannot be avoided without a pre-buffer as long as the
  deficit (unknown length x (1 - rate/75)), so the first chunk stays small (a pre-buffer would only
  delay the first word), and the policy then makes every chunk 1.5 times the last one,
  so the listener hears a few longer gaps instead of a stutter (x1 would give the least stalled time
  in as many gaps as chunks, x2 fewer gaps but more stalled time);
- chunk boundaries depend on the load, so the same request's audio differs a little between runs
  (joins are cross-faded over other samples); `fixed` stays byte-identical whatever the load.
"""

from __future__ import annotations

import threading
import weakref
from dataclasses import dataclass, field
from typing import Any

import numpy as np

from llmvox.engine.config import StreamConfig

MIN_CHUNK = 4  # codes: the smallest chunk cut before a deadline (the codec's cost may ask for more)
_SLOW = 1.05  # pace x 75 above this: slower than real time
_PRIOR_PER_FRAME = 0.0003  # codec seconds per window frame until the first decode is measured


@dataclass
class Ewma:
    """An exponentially weighted mean; `None` until the first sample."""

    alpha: float
    value: float | None = None

    def add(self, x: float) -> None:
        self.value = x if self.value is None else self.value + self.alpha * (x - self.value)


@dataclass
class LineFit:
    """`y = a + b * x` by least squares that forgets (each sample weighs `decay` times the one after)."""

    decay: float = 0.9
    n: float = 0.0
    sx: float = 0.0
    sxx: float = 0.0
    sy: float = 0.0
    sxy: float = 0.0

    def add(self, x: float, y: float) -> None:
        d = self.decay
        self.n, self.sx, self.sxx = d * self.n + 1, d * self.sx + x, d * self.sxx + x * x
        self.sy, self.sxy = d * self.sy + y, d * self.sxy + x * y

    def predict(self, x: float) -> float | None:
        if self.n == 0:
            return None
        mx, my = self.sx / self.n, self.sy / self.n
        var = self.sxx / self.n - mx * mx
        if var < 1.0:  # one size seen so far: proportional
            return my * x / mx if mx > 0 else my
        b = max(0.0, (self.sxy / self.n - mx * my) / var)
        return max(0.0, my - b * mx) + b * x


@dataclass
class CodecCost:
    """A codec worker's latency for a chunk: the wait in its queue plus the decode of its window (a
    fixed cost plus a cost per frame, fitted online)."""

    wait: Ewma = field(default_factory=lambda: Ewma(0.2, 0.0))
    fit: LineFit = field(default_factory=LineFit)
    late: Ewma = field(default_factory=lambda: Ewma(0.2, 0.0))  # how much later than estimated it came

    def observe(self, window: int, waited: float, took: float) -> None:
        self.late.add(max(0.0, waited + took - self.latency(window)))
        self.wait.add(max(0.0, waited))
        if window > 0:
            self.fit.add(window, took)

    def decode(self, window: int) -> float:
        guess = self.fit.predict(window)
        return _PRIOR_PER_FRAME * window if guess is None else guess

    def latency(self, window: int) -> float:
        return (self.wait.value or 0.0) + self.decode(window)


@dataclass
class Chunk:
    """A planned chunk: new codes [start, end) of its segment, audio frames [emit_start, emit_end)."""

    index: int
    start: int
    end: int
    emit_start: int
    emit_end: int
    final: bool
    head: np.ndarray | None = None  # decoded audio for the emitted frames
    tail: np.ndarray | None = None  # decoded audio for held-back frames (context join)
    ready: bool = False


_lock = threading.Lock()
_paces: weakref.WeakKeyDictionary[Any, Ewma] = weakref.WeakKeyDictionary()  # per decoder worker
_codecs: weakref.WeakKeyDictionary[Any, CodecCost] = weakref.WeakKeyDictionary()  # per codec worker


def _shared(table: weakref.WeakKeyDictionary, key: Any, make: Any) -> Any:
    if key is None:
        return make()
    with _lock:
        value = table.get(key)
        if value is None:
            value = table[key] = make()
        return value


class ChunkPolicy:
    """One stream's chunk decisions (`lanes`: the (decoder worker, codec worker) of each lane, whose
    measurements are shared with other streams; `None` keeps them private, as in a simulation)."""

    def __init__(self, config: StreamConfig, frame_rate: float, lanes: list[tuple[Any, Any]]):
        self.config = config
        self.frame_rate = frame_rate
        self.margin = config.playout_margin_ms / 1000
        self.hold = 0 if config.chunk_join == "original" else config.lookahead_frames
        self.context = config.context_frames if config.chunk_join == "context" else 0
        self._shared_pace = [_shared(_paces, d, lambda: Ewma(0.05)) for d, _ in lanes]
        self.codecs = [_shared(_codecs, c, CodecCost) for _, c in lanes]
        self.paces = [Ewma(0.15, shared.value) for shared in self._shared_pace]
        self._last: list[tuple[int, float] | None] = [None] * len(lanes)  # (segment, time of its last code)

    # ---- measurements -------------------------------------------------------------------------
    def code_arrived(self, lane: int, segment: int, n: int, now: float, starved: bool = False) -> None:
        """`n` codes of `segment` arrived on `lane` at `now`. A segment's first code (its prefill and
        admission) and the first after a wait for text are not a pace."""
        last = self._last[lane]
        if n > 0 and last is not None and last[0] == segment:
            pace = (now - last[1]) / n
            self.paces[lane].add(pace)
            self._shared_pace[lane].add(pace)
        self._last[lane] = None if starved else (segment, now)

    def codec_done(self, lane: int, window: int, waited: float, took: float) -> None:
        self.codecs[lane].observe(window, waited, took)

    def pace(self, lane: int) -> float | None:
        """Seconds per code of this stream on `lane` (None: nothing measured yet)."""
        return self.paces[lane].value

    # ---- decisions ----------------------------------------------------------------------------
    def on_codes(self, lane: int, segment: int, n: int, now: float, *, pending: int, first: bool,
                 dry_at: float | None, last_size: int, starved: bool) -> bool:
        """New codes arrived: measure, then say whether to cut the `pending` codes into a chunk now
        (`first`: the stream's first chunk, before any audio)."""
        if n:
            self.code_arrived(lane, segment, n, now, starved)
        if first:
            return pending >= self.first_chunk(lane)
        return self.emit(lane, now, pending, dry_at, last_size, starved)

    def margin_for(self, lane: int) -> float:
        """The configured margin, plus twice what the codec's latency has lately exceeded its estimate."""
        return self.margin + 2 * (self.codecs[lane].late.value or 0.0)

    def window(self, pending: int, first: bool = False) -> int:
        """Frames the codec decodes for a chunk of `pending` new codes."""
        return pending if first else self.context + pending + self.hold

    def min_chunk(self, lane: int) -> int:
        """The smallest chunk worth a decode: one whose audio lasts longer than its decode."""
        cost = self.codecs[lane]
        m = MIN_CHUNK
        while m < self.config.max_dump_size and m / self.frame_rate < cost.decode(self.window(m)):
            m *= 2
        return min(m, self.config.max_dump_size)

    def first_chunk(self, lane: int) -> int:
        """Codes in the stream's first chunk: `initial_dump_size_1`, whatever the pace. Every code more
        would be 1/rate seconds more wait before the first word (measured: +120 ms at 4 streams on two
        loaded cores for no fewer gaps), so the adaptive plan protects the first word's playout with
        the chunks after it instead."""
        return self.config.initial_dump_size_1

    def emit(self, lane: int, now: float, pending: int, dry_at: float | None, last_size: int,
             starved: bool = False) -> bool:
        """Cut a chunk of the `pending` codes now? `dry_at`: when the audio before them has played
        (None: not known yet, because earlier segments are still being generated)."""
        cfg = self.config
        if pending >= cfg.max_dump_size:
            return True
        if dry_at is None or pending < 1:
            return False
        if starved:  # no code comes until more text does: do not sit on these
            return True
        pace = self.pace(lane) or 0.0
        cost = self.codecs[lane]
        if dry_at - now > pace + cost.latency(self.window(pending + 1)) + self.margin_for(lane):
            return False  # one more code still arrives in time
        m = self.min_chunk(lane)
        if pace * self.frame_rate > _SLOW:  # slower than real time: gaps will come; make them few
            m = max(m, min(-(-3 * last_size // 2), cfg.max_dump_size))
        return pending >= m


def crossfade(prev_tail: np.ndarray | None, head: np.ndarray, fade: int) -> np.ndarray:
    """Blend the previous decode's version of the first samples into this one (raised cosine)."""
    if prev_tail is None or not len(prev_tail) or not len(head):
        return head
    n = min(fade, len(prev_tail), len(head))
    w = 0.5 - 0.5 * np.cos(np.pi * (np.arange(n, dtype=np.float32) + 0.5) / n)
    out = head.copy()
    out[:n] = prev_tail[:n] * (1.0 - w) + head[:n] * w
    return out
