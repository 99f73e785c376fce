"""Switching an SQLite database to WAL mode when several processes open it for the first time.

The switch needs an exclusive lock, and SQLite answers "database is locked" at once, without
waiting out the busy timeout, when another connection is converting or recovering the same file
at that moment. The daemon's processes all start together on a fresh site, so one of them would
die on its first start (seen about 1 round in 25 with six processes on a fresh file). Retrying
until the file reports WAL is the fix SQLite's documentation implies; once a file is in WAL mode
the setting is persistent and the first attempt succeeds.
"""

from __future__ import annotations

import sqlite3
import time

_FIRST_DELAY_S = 0.002
_MAX_DELAY_S = 0.1


def enable_wal(conn: sqlite3.Connection, timeout: float = 30.0) -> None:
    """Put ``conn``'s database in WAL mode, retrying while another process holds the lock."""
    deadline = time.monotonic() + timeout
    delay = _FIRST_DELAY_S
    while True:
        try:
            if conn.execute("PRAGMA journal_mode=WAL").fetchone()[0].lower() == "wal":
                return
        except sqlite3.OperationalError as exc:
            if "locked" not in str(exc) and "busy" not in str(exc):
                raise
        if time.monotonic() >= deadline:
            raise sqlite3.OperationalError("database is locked: could not switch it to WAL mode")
        time.sleep(delay)
        delay = min(delay * 2, _MAX_DELAY_S)
