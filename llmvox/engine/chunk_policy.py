"""How a stream's codes become chunks: the planned `Chunk`, the cross-fade at joins, and the adaptive
chunk policy, which cuts them so that the listener's buffer never runs dry.

The original schedule (`chunk_policy="fixed"`: 10 codes, then x3) asks the decoder for 30 codes plus a
codec decode inside the 133 ms the first chunk plays; a decoder that makes fewer than ~250 codes/s for
this stream (a busy CPU, many streams in the batch) cannot, and the listener hears a hole after the
first word. The adaptive policy measures instead, online and per lane:

- the pace: seconds between two codes of this stream's segment (an EWMA; the decoder worker's batched
  step, whatever else runs beside it), seeded from what other streams saw on the same worker;
- the codec latency of a chunk: its decode time (quadratic in the window's frames, fitted online)
  times the streams making codes on that codec worker (an open stream waiting for text does not
  count): streams fed by one batched decoder step run in step and tend to cut together, so a chunk
  may wait for one decode of each of the others;

and keeps a playout deadline: audio at global frame F plays at `play_start + F / 75` (the stream's
`PlayoutClock`). After the first audio, a chunk is cut as late as is safe: when waiting for one more
code would deliver it later than the deadline minus `playout_margin_ms`. Chunks then grow by the
ratio of the decoder's pace to real time on their own (x2 at 150 codes/s; x3 at 225/s, the fixed
schedule), and never get smaller than the codec can sustain: every chunk re-decodes up to 64 context
frames, so if all the codec's streams cut small chunks it falls behind, its queue grows, and the
policy, seeing later audio, would cut smaller still (measured in a simulation of 16 streams: 213 gaps).
The smallest chunk is the one whose playing time covers a decode of it for every stream making codes.

The trades:
- first audio: the first chunk is `initial_dump_size_1` codes, as fast as the fixed schedule, while its
  playing time covers making and decoding the smallest sustainable chunk after it (one stream, a few);
  with many streams on one codec it grows to cover it (16 streams: ~40 codes, measured), trading the
  first word's time for no gap after it;
- the margin: `playout_margin_ms`, plus twice how late the codec's chunks lately came against their
  estimate (a loaded CPU, other work on the codec thread), so a noisy machine cuts a little earlier;
- slower than real time (pace > 1/75 s): gaps cannot be avoided without a pre-buffer as long as the
  deficit (unknown length x (1 - rate/75)), so the first chunk does not grow for it (a pre-buffer would only
  delay the first word), and the policy then makes every chunk 1.5 times the last one,
  so the listener hears a few longer gaps instead of a stutter (x1 would give the least stalled time
  in as many gaps as chunks, x2 fewer gaps but more stalled time);
- chunk boundaries depend on the load, so the same request's audio differs a little between runs
  (joins are cross-faded over other samples); `fixed` stays byte-identical whatever the load.
"""

from __future__ import annotations

import math
import threading
import weakref
from dataclasses import dataclass, field
from typing import Any

import numpy as np

from llmvox.engine.config import StreamConfig

MIN_CHUNK = 4  # codes: the smallest chunk cut before a deadline (the codec's cost may ask for more)
FIRST_CHUNK_MAX_S = 1.0  # audio seconds: the most a first chunk grows to avoid the gap after it
_SLOW = 1.05  # pace x 75 above this: slower than real time
_PRIOR_PER_FRAME = 0.0002  # codec seconds per window frame until two window sizes are measured


@dataclass
class Ewma:
    """An exponentially weighted mean; `None` until the first sample."""

    alpha: float
    value: float | None = None

    def add(self, x: float) -> None:
        self.value = x if self.value is None else self.value + self.alpha * (x - self.value)


class CostFit:
    """Codec seconds for a window of `x` frames, `a + b x + c x^2` (the pos-net's attention is quadratic
    in the window: measured on this CPU 4 ms at 10 frames, 10 at 80, 21 at 160, 58 at 320), by least
    squares that forgets (each sample weighs `decay` times the one after), pulled weakly towards the
    prior (`_PRIOR_PER_FRAME` a frame) so that one or two window sizes seen already give an answer."""

    _SCALE = 100.0  # frames: keeps the normal equations well conditioned
    _RIDGE = 1e-3

    def __init__(self, decay: float = 0.9):
        self.decay = decay
        self.n = 0.0
        self._gram = np.zeros((3, 3))
        self._rhs = np.zeros(3)
        self._prior = np.array([0.0, _PRIOR_PER_FRAME * self._SCALE, 0.0])
        self._coef: np.ndarray | None = None

    def _basis(self, x: float) -> np.ndarray:
        u = x / self._SCALE
        return np.array([1.0, u, u * u])

    def add(self, x: float, y: float) -> None:
        u = self._basis(x)
        self.n = self.decay * self.n + 1
        self._gram = self.decay * self._gram + np.outer(u, u)
        self._rhs = self.decay * self._rhs + y * u
        self._coef = None

    def predict(self, x: float) -> float | None:
        if self.n == 0:
            return None
        if self._coef is None:
            ridge = self._RIDGE * np.eye(3)
            self._coef = np.linalg.solve(self._gram + ridge, self._rhs + ridge @ self._prior)
        return max(0.0, float(self._coef @ self._basis(x)))


@dataclass
class CodecCost:
    """A codec worker's latency for a chunk. Its streams run in step (one batched decoder step gives
    each of them a code), so they tend to cut chunks together: a chunk may wait for one decode of every
    other stream making codes on the worker before its own (`CostFit`, fitted online)."""

    fit: CostFit = field(default_factory=CostFit)
    late: Ewma = field(default_factory=lambda: Ewma(0.2, 0.0))  # how much later than estimated it came
    streams: int = 0  # streams making codes whose chunks this codec decodes (they share its time)

    def observe(self, window: int, waited: float, took: float, cut: bool = True) -> None:
        if cut:
            self.late.add(max(0.0, waited + took - self.latency(window)))
        if window > 0:
            self.fit.add(window, took)

    def decode(self, window: int) -> float:
        guess = self.fit.predict(window)
        return _PRIOR_PER_FRAME * window if guess is None else guess

    def latency(self, window: int) -> float:
        """Submit to audio for a chunk of `window` frames, if every stream making codes cut one at once."""
        return max(1, self.streams) * self.decode(window)


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
        self._open = True
        self._sharing = [False] * len(lanes)  # does this lane count among its codec's streams now?

    def _share(self, lane: int, on: bool) -> None:
        """Count this lane among its codec's streams while it makes codes: an open stream that waits
        for text (an LLM still thinking) cuts no chunks, so it must not make the others' larger."""
        with _lock:
            if self._sharing[lane] != on and (self._open or not on):
                self._sharing[lane] = on
                self.codecs[lane].streams += 1 if on else -1

    def close(self) -> None:
        """The stream ended: its codec time is free for the others."""
        self._open = False
        for lane in range(len(self.codecs)):
            self._share(lane, False)

    # ---- measurements -------------------------------------------------------------------------
    def code_arrived(self, lane: int, segment: int, n: int, now: float, starved: bool = False) -> None:
        """`n` codes of `segment` arrived on `lane` at `now`. A segment's first code (its prefill and
        admission) and the first after a wait for text are not a pace."""
        if n > 0 or starved:
            self._share(lane, not starved)
        last = self._last[lane]
        if n > 0 and last is not None and last[0] == segment:
            pace = (now - last[1]) / n
            self.paces[lane].add(pace)
            self._shared_pace[lane].add(pace)
        self._last[lane] = None if starved else (segment, now)

    def codec_done(self, lane: int, window: int, waited: float, took: float, cut: bool = True) -> None:
        """A chunk's audio is decoded. `cut`: this policy cut it at a deadline (a sentence's last chunk
        goes when its codes end, often with time to spare: its lateness says nothing about the margin)."""
        self.codecs[lane].observe(window, waited, took, cut)

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
        """The smallest chunk the codec keeps up with: one whose playing time covers a decode of it for
        every stream making codes on the codec (each chunk re-decodes its context frames, so small chunks cost
        more per second of audio, and a codec that falls behind makes every stream's chunks late).
        `max_dump_size` where no size does (the codec is too slow for its streams: the fewest decodes)."""
        cost = self.codecs[lane]
        share = max(1, cost.streams)
        m = MIN_CHUNK
        while m < self.config.max_dump_size and m / self.frame_rate < share * cost.decode(self.window(m)):
            m += max(1, m // 4)
        return min(m, self.config.max_dump_size)

    def first_chunk(self, lane: int) -> int:
        """Codes in the stream's first chunk: `initial_dump_size_1`, or more where its playing time could
        not cover making and decoding the smallest chunk the codec keeps up with after it (many streams
        on one codec), up to `FIRST_CHUNK_MAX_S` of audio: beyond that a gap comes anyway, and the first
        word should not wait for it. Each code more costs 1/rate seconds of first-audio time (measured:
        +120 ms at 4 streams on two loaded cores for no fewer gaps), so it grows only where a gap would
        follow."""
        base = self.config.initial_dump_size_1
        m = self.min_chunk(lane)
        need = m * (self.pace(lane) or 0.0) + self.codecs[lane].latency(self.window(m)) + self.margin_for(lane)
        want = max(base, m, math.ceil(need * self.frame_rate))
        return want if want <= FIRST_CHUNK_MAX_S * self.frame_rate else base

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
