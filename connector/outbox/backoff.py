"""Retry timing: exponential backoff with jitter, and the server's ``Retry-After``.

Why jitter: after a registry outage every site (and every job of one site) would otherwise retry
in lock-step; "equal jitter" spreads retries over the upper half of each step while keeping the
delay growing. Delays stay within [minimum, maximum] (5 s to 30 min by default).
"""

from __future__ import annotations

import email.utils
import random
import time

MIN_DELAY = 5.0
MAX_DELAY = 1800.0


def backoff_delay(failures: int, minimum: float = MIN_DELAY, maximum: float = MAX_DELAY,
                  rng: random.Random | None = None) -> float:
    """Seconds to wait after the ``failures``-th consecutive failure (1 = first failure)."""
    uniform = rng.uniform if rng is not None else random.uniform
    maximum = max(maximum, minimum)
    step = min(maximum, minimum * 2.0 ** max(0, min(failures - 1, 60)))
    delay = step / 2 + uniform(0, step / 2)
    return min(maximum, max(minimum, delay))


def parse_retry_after(value: str | None, now: float | None = None) -> float | None:
    """Seconds from ``now`` that a ``Retry-After`` header asks for (delta-seconds or HTTP-date)."""
    if not value:
        return None
    value = value.strip()
    if value.isdigit():
        return float(value)
    try:
        when = email.utils.parsedate_to_datetime(value)
    except (TypeError, ValueError):
        return None
    if when is None:
        return None
    now = time.time() if now is None else now
    return max(0.0, when.timestamp() - now)
