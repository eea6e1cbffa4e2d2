"""Stream slots: at most `--max_streams` answers are generated at once; the rest wait in a bounded queue."""

from __future__ import annotations

import asyncio
from collections import deque
from contextlib import suppress

from llmvox.errors import LLMVoXError


class StreamSlots:
    """At most `limit` streams at once; up to `max_queue` requests wait (FIFO) up to `timeout` s.
    `acquire()` hands out a `SlotLease`: the slot is held until the lease is released."""

    def __init__(self, limit: int, max_queue: int, timeout: float):
        self.limit = limit
        self.max_queue = max_queue
        self.timeout = timeout
        self.active = 0
        self._waiters: deque[asyncio.Future] = deque()

    @property
    def waiting(self) -> int:
        return len(self._waiters)

    async def acquire(self) -> SlotLease:
        """Wait for a slot (FIFO); 429 when the queue is full, 503 after `timeout` s."""
        if self.active < self.limit and not self._waiters:
            self.active += 1
            return SlotLease(self)
        if len(self._waiters) >= self.max_queue or self.timeout <= 0:
            raise LLMVoXError(f"the server is busy: {self.active} streams are running and {len(self._waiters)} "
                                "requests are waiting; retry later (or raise --max_streams / --max_queue)", 429,
                           code="too_many_streams", headers={"Retry-After": "1"})
        fut = asyncio.get_running_loop().create_future()
        self._waiters.append(fut)
        try:
            await asyncio.wait_for(asyncio.shield(fut), self.timeout)
        except BaseException as exc:
            if fut.done() and not fut.cancelled():
                self._release()  # handed a slot just as we gave up: pass it on
            else:
                fut.cancel()
                with suppress(ValueError):
                    self._waiters.remove(fut)
            if isinstance(exc, TimeoutError):
                raise LLMVoXError(f"no stream became free within {self.timeout:g} s; retry later "
                                    "(or raise --max_streams / --queue_timeout)", 503,
                               code="queue_timeout", headers={"Retry-After": "2"}) from None
            raise
        return SlotLease(self)

    def _release(self) -> None:
        while self._waiters:
            fut = self._waiters.popleft()
            if not fut.done():
                fut.set_result(None)  # the slot moves to the next waiter
                return
        self.active = max(0, self.active - 1)


class SlotLease:
    """One held slot. `release()` is idempotent and synchronous, so every way a request can end
    (generation finished, client gone, error, a `finally` of a cancelled response) may call it."""

    def __init__(self, slots: StreamSlots) -> None:
        self._slots: StreamSlots | None = slots

    @property
    def held(self) -> bool:
        return self._slots is not None

    def release(self) -> None:
        slots, self._slots = self._slots, None
        if slots is not None:
            slots._release()
