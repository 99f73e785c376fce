"""Dashboard sessions, CSRF tokens and login throttling, held in memory.

Why in memory: a restart of the daemon simply asks staff to log in again, and nothing about a
session is worth putting on disk. The session id travels in an HttpOnly, SameSite=Strict cookie;
every form carries the session's CSRF token, compared in constant time. Failed logins are counted
per client address and per user name so that guessing is slow without locking staff out for long.
"""

from __future__ import annotations

import hmac
import secrets
import threading
import time
from dataclasses import dataclass, field
from pathlib import Path

SESSION_COOKIE = "sc_session"
LOGIN_COOKIE = "sc_login"  # pre-login CSRF token (double submit), so a login form cannot be forged
MAX_SESSIONS = 1000


@dataclass
class Session:
    id: str
    user: str
    csrf: str
    expires_at: float
    flash: list[tuple[str, str]] = field(default_factory=list)  # (kind, text) shown once, after a redirect
    uploads: dict[str, Path] = field(default_factory=dict)  # follow-up files previewed, not yet committed


class SessionStore:
    def __init__(self, idle_seconds: float) -> None:
        self.idle_seconds = idle_seconds
        self._sessions: dict[str, Session] = {}
        self._lock = threading.Lock()

    def create(self, user: str) -> Session:
        now = time.monotonic()
        session = Session(secrets.token_urlsafe(32), user, secrets.token_urlsafe(32), now + self.idle_seconds)
        with self._lock:
            self._expire(now)
            if len(self._sessions) >= MAX_SESSIONS:  # bounded memory: drop the oldest
                oldest = min(self._sessions.values(), key=lambda s: s.expires_at)
                del self._sessions[oldest.id]
            self._sessions[session.id] = session
        return session

    def get(self, session_id: str | None) -> Session | None:
        """The live session for this id (its idle timer restarts), or None."""
        if not session_id:
            return None
        now = time.monotonic()
        with self._lock:
            session = self._sessions.get(session_id)
            if session is None:
                return None
            if session.expires_at <= now:
                del self._sessions[session_id]
                return None
            session.expires_at = now + self.idle_seconds
            return session

    def end(self, session_id: str | None) -> None:
        with self._lock:
            self._sessions.pop(session_id or "", None)

    def end_user(self, user: str) -> None:
        with self._lock:
            for sid in [s.id for s in self._sessions.values() if s.user == user]:
                del self._sessions[sid]

    def _expire(self, now: float) -> None:
        for sid in [s.id for s in self._sessions.values() if s.expires_at <= now]:
            del self._sessions[sid]


def tokens_match(expected: str | None, given: str | None) -> bool:
    if not expected or not given:
        return False
    return hmac.compare_digest(expected.encode(), given.encode())


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
