"""What the dashboard keeps about logins besides Flask's signed session cookie.

Flask signs the session cookie (itsdangerous, HMAC with a key made at each start, so a restart
asks staff to sign in again) and refuses one older than ``[http] session_minutes`` since its last
use. A signed cookie cannot be taken back by itself, so logging out records the session's random
id here until it would have expired anyway; removing a user ends their sessions because every
request checks that the user still exists. Failed logins slow down guessing per (user name, source
address) pair, so that nobody can lock anybody else out.
"""

from __future__ import annotations

import threading
import time
from collections.abc import Callable
from dataclasses import dataclass

MAX_REVOKED = 10_000
MAX_NAME_KEY = 128  # characters of a typed user name kept as a throttle key (names are at most 64)
FORGET_SECONDS = 24 * 3600.0  # a pair's failures count in a row until a day passes without one
MIN_RETRY_SECONDS = 1.0  # what a parallel attempt of a pair being checked is told to wait
CHECK_SECONDS = 30.0  # a password check takes ~0.1 s; one "in progress" longer than this was lost


class RevokedSessions:
    """Ids of sessions that logged out, kept only as long as their cookie could still be valid."""

    def __init__(self, lifetime_seconds: float) -> None:
        self.lifetime = lifetime_seconds
        self._ended: dict[str, float] = {}
        self._lock = threading.Lock()

    def revoke(self, sid: str) -> None:
        now = time.monotonic()
        with self._lock:
            self._prune(now)
            if len(self._ended) >= MAX_REVOKED:  # bounded memory: the oldest are nearest to expiry anyway
                for old in sorted(self._ended, key=self._ended.__getitem__)[: MAX_REVOKED // 10]:
                    del self._ended[old]
            self._ended[sid] = now

    def is_revoked(self, sid: str) -> bool:
        with self._lock:
            return sid in self._ended

    def _prune(self, now: float) -> None:
        for sid in [s for s, at in self._ended.items() if now - at > self.lifetime]:
            del self._ended[sid]


@dataclass
class _Pair:
    failures: int = 0
    last_failure: float = 0.0
    wait: float = 0.0  # seconds after last_failure before the next attempt is checked
    checking_since: float | None = None  # an attempt of this pair is being checked (since when)

    def checking(self, now: float) -> bool:
        """A check in progress; one older than CHECK_SECONDS was lost (its request failed) and is ignored."""
        return self.checking_since is not None and now - self.checking_since < CHECK_SECONDS


class LoginThrottle:
    """Failed sign-ins per (user name, source address): each failure doubles that pair's wait.

    Why pairs and delays, not a lock per name or per address: behind a reverse proxy every browser
    may share one address, and anyone may type any name, so a lock on either let one person lock
    everybody out. A pair's wait touches only the person guessing (and a user typing from the
    guesser's own address). The wait after the n-th failure in a row is ``base * 2**(n-1)`` seconds,
    at most ``max_delay``; a success, or a day without failures, forgets the pair. While a pair's
    attempt is being checked, others of the same pair are refused, so parallel requests gain nothing.
    """

    def __init__(self, base_delay: float = 1.0, max_delay: float = 900.0, *, max_pairs: int = 10_000,
                 clock: Callable[[], float] = time.monotonic) -> None:
        self.base_delay = base_delay
        self.max_delay = max(max_delay, base_delay)
        self.max_pairs = max_pairs
        self._clock = clock
        self._pairs: dict[tuple[str, str], _Pair] = {}
        self._lock = threading.Lock()

    @staticmethod
    def key(name: str, source: str) -> tuple[str, str]:
        return name.strip().lower()[:MAX_NAME_KEY], source

    def attempt(self, name: str, source: str) -> float:
        """0.0 when this attempt may be checked now (then call failed, succeeded or release);
        otherwise the seconds this pair must still wait, and nothing is held."""
        now = self._clock()
        with self._lock:
            pair = self._pairs.get(self.key(name, source))
            if pair is None:
                self._make_room(now)
                pair = self._pairs[self.key(name, source)] = _Pair()
            left = pair.last_failure + pair.wait - now if pair.failures else 0.0
            if pair.checking(now):
                return max(left, MIN_RETRY_SECONDS)
            if left > 0:
                return left
            pair.checking_since = now
            return 0.0

    def failed(self, name: str, source: str) -> tuple[int, float]:
        """Record a failure: (failures in a row, seconds until the pair's next attempt is checked)."""
        now = self._clock()
        with self._lock:
            pair = self._pairs.setdefault(self.key(name, source), _Pair())
            if pair.failures and now - pair.last_failure > FORGET_SECONDS:
                pair.failures = 0
            pair.failures += 1
            pair.last_failure = now
            pair.wait = min(self.max_delay, self.base_delay * 2.0 ** min(pair.failures - 1, 64))
            pair.checking_since = None
            return pair.failures, pair.wait

    def succeeded(self, name: str, source: str) -> None:
        with self._lock:
            self._pairs.pop(self.key(name, source), None)

    def release(self, name: str, source: str) -> None:
        """The attempt could not be checked (e.g. the users file is damaged): neither failure nor success."""
        with self._lock:
            pair = self._pairs.get(self.key(name, source))
            if pair is not None:
                pair.checking_since = None

    def _make_room(self, now: float) -> None:
        """Bounded memory under a spray of names: forget idle pairs, then the longest idle."""
        if len(self._pairs) < self.max_pairs:
            return
        for k in [k for k, p in self._pairs.items() if not p.checking(now) and
                  (not p.failures or now - p.last_failure > max(p.wait, FORGET_SECONDS))]:
            del self._pairs[k]
        if len(self._pairs) >= self.max_pairs:
            oldest = sorted((k for k, p in self._pairs.items() if not p.checking(now)),
                            key=lambda k: self._pairs[k].last_failure)
            for k in oldest[: max(1, self.max_pairs // 10)]:
                del self._pairs[k]
