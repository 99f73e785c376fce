"""Keeping uploads polite: one bandwidth cap shared by every request in flight.

Why a shared token bucket: the cap protects the hospital uplink, so it applies to the sum of all
concurrent requests, not to each. The bucket holds at most one second of allowance, so a pause
is not followed by a burst above the cap.
"""

from __future__ import annotations

import threading
import time
from collections.abc import Callable


class RateLimiter:
    """Blocks callers so that at most ``rate`` bytes per second pass in total; rate 0 = no limit."""

    def __init__(self, rate: float, *, clock: Callable[[], float] = time.monotonic,
                 sleep: Callable[[float], None] = time.sleep) -> None:
        self.rate = float(rate)
        self._clock = clock
        self._sleep = sleep
        self._lock = threading.Lock()
        self._allowance = 0.0
        self._last = clock()

    @property
    def enabled(self) -> bool:
        return self.rate > 0

    def consume(self, nbytes: int, should_stop: Callable[[], bool] | None = None) -> None:
        """Wait until ``nbytes`` may be sent (reservations are taken in arrival order)."""
        if not self.enabled or nbytes <= 0:
            return
        with self._lock:
            now = self._clock()
            self._allowance = min(self.rate, self._allowance + (now - self._last) * self.rate)
            self._last = now
            self._allowance -= nbytes
            wait = -self._allowance / self.rate if self._allowance < 0 else 0.0
        deadline = self._clock() + wait
        while wait > 0:
            if should_stop is not None and should_stop():
                return
            self._sleep(min(wait, 0.25))
            wait = deadline - self._clock()
