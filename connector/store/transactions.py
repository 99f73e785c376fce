"""BEGIN ... COMMIT, or ROLLBACK on any exception, for connections in autocommit mode (both databases)."""

from __future__ import annotations

import contextlib
import sqlite3
from collections.abc import Iterator


@contextlib.contextmanager
def sql_transaction(conn: sqlite3.Connection, mode: str = "") -> Iterator[sqlite3.Connection]:
    """``BEGIN [mode]`` ... ``COMMIT``; ``mode`` "IMMEDIATE" takes the write lock up front."""
    conn.execute(f"BEGIN {mode}".strip())
    try:
        yield conn
    except BaseException:
        conn.execute("ROLLBACK")
        raise
    else:
        conn.execute("COMMIT")
