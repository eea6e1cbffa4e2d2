"""A listener's clock: when does streamed audio run dry, how often and how long does playback stall.

One definition, used wherever audio is timed: the engine (the adaptive chunk policy's deadlines, a
stream's `timings()`), the server (`/metrics`, per endpoint) and `llmvox bench stream` (at the client).
Playback starts when the first audio arrives and plays without a break as long as audio keeps coming;
audio that arrives after everything before it has played is a gap, and playback waits for it (the
stall), then goes on from there.
"""

from __future__ import annotations

import time


class PlayoutClock:
    """Counts gaps and stalled seconds of audio that arrives in pieces, `units_per_second` units each
    second (samples, or bytes of a fixed-size sample format)."""

    def __init__(self, units_per_second: float) -> None:
        self.rate = float(units_per_second)
        self.first: float | None = None  # arrival of the first audio
        self.received = 0  # units so far
        self.gaps = 0
        self.stall = 0.0  # seconds playback waited, in all
        self.play_start = 0.0  # when unit 0 plays, shifted by every stall so far

    def heard(self, units: int, now: float | None = None) -> float:
        """`units` more audio arrived at `now`; returns the seconds playback waited for it (0: in time)."""
        if units <= 0:
            return 0.0
        now = time.perf_counter() if now is None else now
        waited = 0.0
        if self.first is None:
            self.first = self.play_start = now
        else:
            waited = max(0.0, now - self.due(self.received))
            if waited > 0:
                self.gaps += 1
                self.stall += waited
                self.play_start += waited
        self.received += units
        return waited

    def due(self, position: float) -> float:
        """When audio at `position` (units from the start) plays, if nothing stalls from now on."""
        return self.play_start + position / self.rate

    @property
    def started(self) -> bool:
        return self.first is not None

    @property
    def dry_at(self) -> float:
        """When everything received so far has played (the buffer runs dry)."""
        return self.due(self.received)

    @property
    def seconds(self) -> float:
        return self.received / self.rate
