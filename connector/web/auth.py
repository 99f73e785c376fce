"""What the dashboard keeps about logins besides Flask's signed session cookie.

Flask signs the session cookie (itsdangerous, HMAC with a key made at each start, so a restart
asks staff to sign in again) and refuses one older than ``[http] session_minutes`` since its last
use. A signed cookie cannot be taken back by itself, so logging out records the session's random
id here until it would have expired anyway; removing a user ends their sessions because every
request checks that the user still exists. Failed logins are counted per client address and per
user name so that guessing is slow without locking staff out for long.
"""

from __future__ import annotations

import threading
import time

MAX_REVOKED = 10_000


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


class LoginThrottle:
    """After ``limit`` failures within ``window`` seconds for a client or a name, refuse for a while."""

    def __init__(self, limit: int = 5, window: float = 300.0) -> None:
        self.limit = limit
        self.window = window
        self._failures: dict[str, list[float]] = {}
        self._lock = threading.Lock()

    def blocked(self, *keys: str) -> bool:
        now = time.monotonic()
        with self._lock:
            return any(len(self._recent(k, now)) >= self.limit for k in keys)

    def failed(self, *keys: str) -> None:
        now = time.monotonic()
        with self._lock:
            for k in keys:
                self._failures[k] = self._recent(k, now) + [now]
            if len(self._failures) > 10000:  # bounded memory under a spray of names
                for k in [k for k, v in self._failures.items() if not self._recent(k, now)]:
                    del self._failures[k]

    def succeeded(self, *keys: str) -> None:
        with self._lock:
            for k in keys:
                self._failures.pop(k, None)

    def _recent(self, key: str, now: float) -> list[float]:
        return [t for t in self._failures.get(key, []) if now - t < self.window]
