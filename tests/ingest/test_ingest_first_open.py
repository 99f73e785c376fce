"""Every process of a fresh site opens the same new SQLite files at once; none may fail doing so.

Before ``store.wal_mode`` (used by the state DB, the linkage table and the dev registry), about 1
round in 25 of this race had one process die with "database is locked" on a plain
``PRAGMA journal_mode=WAL``: SQLite does not wait out the busy timeout for that switch. The linkage
test with four worker processes on a fresh site failed that way once on a loaded machine.
"""

from __future__ import annotations

import multiprocessing
import sqlite3
from pathlib import Path
from typing import Any

import pytest

from connector.store.wal_mode import enable_wal

PROCESSES = 6
ROUNDS = 60  # a plain PRAGMA fails this test with probability about 0.9
_FORK = multiprocessing.get_context("fork")


def _open_wal(path: str, barrier: Any, out: Any) -> None:
    barrier.wait()
    try:
        conn = sqlite3.connect(path, timeout=30, isolation_level=None)
        enable_wal(conn)
        conn.execute("CREATE TABLE IF NOT EXISTS t (x)")
        conn.execute("INSERT INTO t VALUES (1)")
        out.put("ok")
    except Exception as exc:  # reported to the test, which names it
        out.put(repr(exc))


def _race(target: Any, path: Path) -> list[str]:
    barrier, out = _FORK.Barrier(PROCESSES), _FORK.Queue()
    procs = [_FORK.Process(target=target, args=(str(path), barrier, out)) for _ in range(PROCESSES)]
    for p in procs:
        p.start()
    results = [out.get(timeout=60) for _ in procs]
    for p in procs:
        p.join(10)
    return results


def test_processes_opening_a_fresh_database_together_all_succeed(tmp_path: Path) -> None:
    for r in range(ROUNDS):
        path = tmp_path / f"round{r}.sqlite"
        results = _race(_open_wal, path)
        assert results == ["ok"] * PROCESSES, f"round {r}: {results}"
        with sqlite3.connect(path) as conn:
            assert conn.execute("PRAGMA journal_mode").fetchone()[0] == "wal"


def test_a_file_that_is_not_a_database_is_an_error_not_a_retry(tmp_path: Path) -> None:
    path = tmp_path / "junk.sqlite"
    path.write_bytes(b"this is not an SQLite database, it is sixteen-plus bytes of text" * 100)
    conn = sqlite3.connect(path, timeout=1)
    with pytest.raises(sqlite3.DatabaseError, match="not a database"):
        enable_wal(conn, timeout=5)
