"""The state database: one SQLite file (WAL, ``synchronous=FULL``) holding the pipeline's state.

Why SQLite: a site runs one daemon on one server; SQLite gives crash-safe transactions with no
service to administer, and a single file hospital IT can back up. Each thread gets its own
connection (``sqlite3`` connections are not shareable), writes use ``BEGIN IMMEDIATE`` so that
two writers serialise instead of failing half-way, and ``busy_timeout`` absorbs short contention.

Table owners: ``instances`` and ``instance_events`` belong to ingest, ``studies`` to assemble (ingest
only re-opens a study). Each other table's SQL lives with its owner; the list of schema steps is
:mod:`connector.site_db`, handed in by the code that wires the daemon.

Original UIDs are stored (the pipeline needs them); patient identifiers are not. Studies are known
to logs and file names only by ``study_key``, a hash of the StudyInstanceUID.

Why this length: the ``studies`` and ``instances`` tables are the store's own, and every change
of a study's state is a method here, so no other module writes ``UPDATE studies``.
"""

from __future__ import annotations

import contextlib
import hashlib
import json
import sqlite3
import threading
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import sqlite_utils

from connector.store.transactions import sql_transaction
from connector.store.wal_mode import enable_wal

# Study states, in pipeline order. "receiving" until quiet for stable_seconds, then "stable".
RECEIVING = "receiving"
STABLE = "stable"
PROCESSING = "processing"  # leased by a worker (de-identification, inference)
# "verified": the registry was asked what it holds and it matched what was sent (studies.verified_at).
STUDY_STATES = (RECEIVING, STABLE, PROCESSING, "deidentified", "quarantined", "queued", "pushed", "verified",
                "failed")

SCHEMA_VERSION = 1


def immediate_transaction(conn: sqlite3.Connection) -> contextlib.AbstractContextManager[sqlite3.Connection]:
    """BEGIN IMMEDIATE ... COMMIT, or ROLLBACK on any exception (autocommit connections)."""
    return sql_transaction(conn, "IMMEDIATE")


def study_key(study_uid: str) -> str:
    """The non-identifying handle of a study used in logs, file names and the dashboard."""
    return hashlib.sha256(study_uid.encode()).hexdigest()[:20]


def instance_key(sop_instance_uid: str) -> str:
    return hashlib.sha256(sop_instance_uid.encode()).hexdigest()[:32]


@dataclass(frozen=True)
class InstanceRecord:
    sop_instance_uid: str
    sop_class_uid: str
    study_uid: str
    series_uid: str
    modality: str
    transfer_syntax: str
    path: str  # relative to the spool root
    sha256: str  # of the dataset bytes; "" when not computed yet (the receiver hashes only re-sends)
    size: int
    source: str  # "scp" or "folder"
    calling_aet: str = ""
    previous_sha256: str = ""  # when replacing a row whose digest was never computed


@dataclass(frozen=True)
class StoreOutcome:
    """What recording an instance did: ``stored`` (new), ``duplicate`` (same bytes) or ``replaced``."""

    action: str
    study_key: str
    reopened: bool = False


def create_core_schema(db: sqlite_utils.Database) -> None:
    """Schema step 1: instances, their events, studies."""
    db["instances"].create(
        {
            "sop_instance_uid": str,
            "sop_class_uid": str,
            "study_key": str,
            "study_uid": str,
            "series_uid": str,
            "modality": str,
            "transfer_syntax": str,
            "path": str,
            "sha256": str,
            "size": int,
            "source": str,
            "calling_aet": str,
            "received_at": float,
            "replaced_count": int,
        },
        pk="sop_instance_uid",
        not_null={"study_key", "path", "sha256", "size", "received_at"},
        defaults={"replaced_count": 0},
        if_not_exists=True,
    )
    db["instances"].create_index(["study_key"], if_not_exists=True)
    db["instances"].create_index(["path"], unique=True, if_not_exists=True)
    db["instance_events"].create(
        {"id": int, "sop_instance_uid": str, "study_key": str, "event": str, "old_sha256": str,
         "new_sha256": str, "at": float},
        pk="id",
        if_not_exists=True,
    )
    db["studies"].create(
        {
            "study_key": str,
            "study_uid": str,
            "state": str,
            "instance_count": int,
            "first_received_at": float,
            "last_received_at": float,
            "stable_at": float,
            "reopened_count": int,
            "lease_owner": str,
            "lease_until": float,
            "updated_at": float,
        },
        pk="study_key",
        not_null={"study_uid", "state", "last_received_at"},
        defaults={"instance_count": 0, "reopened_count": 0},
        if_not_exists=True,
    )
    db["studies"].create_index(["state", "last_received_at"], if_not_exists=True)


def create_privacy_reports(db: sqlite_utils.Database) -> None:
    """One row per study: what de-identification removed and replaced (counts and tags, never values)."""
    db["privacy_reports"].create(
        {"study_key": str, "report": str, "at": float},
        pk="study_key",
        if_not_exists=True,
    )


def add_verified_at(db: sqlite_utils.Database) -> None:
    """When reconciliation last found the registry holding everything a study sent (NULL = not since
    it was last queued)."""
    db.execute("ALTER TABLE studies ADD COLUMN verified_at REAL")


Migration = tuple[int, Callable[[sqlite_utils.Database], None]]


class StateStore:
    """Thread-safe access to the state database; one connection per thread."""

    def __init__(self, path: Path, migrations: Sequence[Migration] = ()) -> None:
        """Open (and create) the database at ``path``; ``migrations`` are the schema steps, each run once
        in version order. The code that wires the daemon hands in the site's list
        (:func:`connector.site_db.open_state`); code below it opens a database that list has made."""
        self.path = Path(path)
        self._migrations = sorted(migrations, key=lambda step: step[0])
        self.path.parent.mkdir(parents=True, exist_ok=True, mode=0o700)
        self._local = threading.local()
        self._all: list[sqlite3.Connection] = []
        self._all_lock = threading.Lock()
        self._migrate()

    # -- connections ---------------------------------------------------------------------------

    def _connect(self) -> sqlite3.Connection:
        conn = sqlite3.connect(self.path, isolation_level=None, check_same_thread=False, timeout=30)
        enable_wal(conn)
        conn.execute("PRAGMA synchronous=FULL")
        conn.execute("PRAGMA busy_timeout=30000")
        conn.execute("PRAGMA foreign_keys=ON")
        return conn

    @property
    def conn(self) -> sqlite3.Connection:
        conn = getattr(self._local, "conn", None)
        if conn is None:
            conn = self._connect()
            self._local.conn = conn
            with self._all_lock:
                self._all.append(conn)
        return conn

    @property
    def db(self) -> sqlite_utils.Database:
        return sqlite_utils.Database(self.conn)

    def write(self) -> contextlib.AbstractContextManager[sqlite3.Connection]:
        """A write transaction that takes the write lock up front (no upgrade deadlocks)."""
        return immediate_transaction(self.conn)

    def close(self) -> None:
        with self._all_lock:
            for conn in self._all:
                with contextlib.suppress(sqlite3.Error):
                    conn.close()
            self._all.clear()
        self._local = threading.local()

    def _migrate(self) -> None:
        with self.write() as conn:
            current = conn.execute("PRAGMA user_version").fetchone()[0]
            db = sqlite_utils.Database(conn)
            for version, step in self._migrations:
                if version > current:
                    step(db)
                    conn.execute(f"PRAGMA user_version={int(version)}")

    # -- ingest --------------------------------------------------------------------------------

    def find_instance(self, sop_instance_uid: str) -> tuple[str, str] | None:
        """(sha256, path) of a stored instance, or None."""
        row = self.conn.execute(
            "SELECT sha256, path FROM instances WHERE sop_instance_uid=?", (sop_instance_uid,)
        ).fetchone()
        return (row[0], row[1]) if row else None

    def record_instance(self, rec: InstanceRecord, now: float | None = None) -> StoreOutcome:
        """Commit an instance whose file is already durable at ``rec.path``.

        A new instance is inserted; identical bytes are a no-op; different bytes replace the row
        and leave an ``instance_events`` entry. The study is created, or re-opened if it had moved
        past "receiving" (a late instance restarts its quiet period).
        """
        return self.record_instances([rec], now)[0]

    def record_instances(self, recs: list[InstanceRecord], now: float | None = None) -> list[StoreOutcome]:
        """:meth:`record_instance` for several instances in one transaction (one WAL fsync for all)."""
        now = time.time() if now is None else now
        with self.write() as conn:
            return [self._record_in(conn, rec, now) for rec in recs]

    @staticmethod
    def _record_in(conn: sqlite3.Connection, rec: InstanceRecord, now: float) -> StoreOutcome:
        skey = study_key(rec.study_uid)
        existing = conn.execute(
            "SELECT sha256, study_key FROM instances WHERE sop_instance_uid=?", (rec.sop_instance_uid,)
        ).fetchone()
        if existing and rec.sha256 and existing[0] == rec.sha256:  # "" = not hashed: never assume equal
            return StoreOutcome("duplicate", skey)
        if existing:
            conn.execute(
                "UPDATE instances SET sop_class_uid=?, study_key=?, study_uid=?, series_uid=?, modality=?, "
                "transfer_syntax=?, path=?, sha256=?, size=?, source=?, calling_aet=?, received_at=?, "
                "replaced_count=replaced_count+1 WHERE sop_instance_uid=?",
                (rec.sop_class_uid, skey, rec.study_uid, rec.series_uid, rec.modality, rec.transfer_syntax,
                 rec.path, rec.sha256, rec.size, rec.source, rec.calling_aet, now, rec.sop_instance_uid),
            )
            conn.execute(
                "INSERT INTO instance_events (sop_instance_uid, study_key, event, old_sha256, new_sha256, at) "
                "VALUES (?, ?, 'replaced', ?, ?, ?)",
                (rec.sop_instance_uid, skey, existing[0] or rec.previous_sha256, rec.sha256, now),
            )
            action, added = "replaced", 0
        else:
            conn.execute(
                "INSERT INTO instances (sop_instance_uid, sop_class_uid, study_key, study_uid, series_uid, "
                "modality, transfer_syntax, path, sha256, size, source, calling_aet, received_at) "
                "VALUES (?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?)",
                (rec.sop_instance_uid, rec.sop_class_uid, skey, rec.study_uid, rec.series_uid, rec.modality,
                 rec.transfer_syntax, rec.path, rec.sha256, rec.size, rec.source, rec.calling_aet, now),
            )
            action, added = "stored", 1
        prior = conn.execute("SELECT state FROM studies WHERE study_key=?", (skey,)).fetchone()
        if prior is None:
            conn.execute(
                "INSERT INTO studies (study_key, study_uid, state, instance_count, first_received_at, "
                "last_received_at, updated_at) VALUES (?, ?, ?, ?, ?, ?, ?)",
                (skey, rec.study_uid, RECEIVING, added, now, now, now),
            )
            reopened = False
        else:
            reopened = prior[0] != RECEIVING
            conn.execute(
                "UPDATE studies SET instance_count=instance_count+?, last_received_at=?, updated_at=?, "
                "state=?, reopened_count=reopened_count+?, lease_owner=NULL, lease_until=NULL "
                "WHERE study_key=?",
                (added, now, now, RECEIVING, int(reopened), skey),
            )
        return StoreOutcome(action, skey, reopened)

    def known_paths(self) -> set[str]:
        return {row[0] for row in self.conn.execute("SELECT path FROM instances")}

    def forget_missing(self, relpaths: list[str]) -> int:
        """Drop instance rows whose file is gone; returns how many were dropped."""
        if not relpaths:
            return 0
        with self.write() as conn:
            n = 0
            for rel in relpaths:
                row = conn.execute("SELECT study_key FROM instances WHERE path=?", (rel,)).fetchone()
                if row is None:
                    continue
                conn.execute("DELETE FROM instances WHERE path=?", (rel,))
                conn.execute("UPDATE studies SET instance_count=MAX(instance_count-1, 0) WHERE study_key=?", (row[0],))
                n += 1
            return n

    def instance_paths(self) -> list[tuple[str, str]]:
        """(path, sha256) of every stored instance, for recovery and audits."""
        return list(self.conn.execute("SELECT path, sha256 FROM instances"))

    # -- assemble ------------------------------------------------------------------------------

    def mark_stable(self, stable_seconds: float, now: float | None = None) -> list[str]:
        """Move every study quiet for ``stable_seconds`` from receiving to stable; return their keys."""
        now = time.time() if now is None else now
        with self.write() as conn:
            keys = [
                r[0]
                for r in conn.execute(
                    "SELECT study_key FROM studies WHERE state=? AND last_received_at<=?",
                    (RECEIVING, now - stable_seconds),
                )
            ]
            conn.executemany(
                "UPDATE studies SET state=?, stable_at=?, updated_at=? WHERE study_key=? AND state=?",
                [(STABLE, now, now, k, RECEIVING) for k in keys],
            )
        return keys

    def defer_study(self, key: str, seconds: float) -> None:
        """Leave a study in processing, to be taken again in ``seconds`` (a transient failure, e.g. disk full)."""
        now = time.time()
        with self.write() as conn:
            conn.execute("UPDATE studies SET lease_until=?, updated_at=? WHERE study_key=? AND state=?",
                         (now + seconds, now, key, PROCESSING))

    def lease_study(self, owner: str, lease_seconds: float, now: float | None = None) -> str | None:
        """Take the oldest stable study for processing; the lease expires if the worker dies."""
        now = time.time() if now is None else now
        with self.write() as conn:
            row = conn.execute(
                "SELECT study_key FROM studies WHERE state=? OR (state=? AND lease_until<?) "
                "ORDER BY stable_at LIMIT 1",
                (STABLE, PROCESSING, now),
            ).fetchone()
            if row is None:
                return None
            conn.execute(
                "UPDATE studies SET state=?, lease_owner=?, lease_until=?, updated_at=? WHERE study_key=?",
                (PROCESSING, owner, now + lease_seconds, now, row[0]),
            )
            return str(row[0])

    def set_study_state(self, key: str, state: str, *, only_if: str | None = None) -> bool:
        if state not in STUDY_STATES:
            raise ValueError(f"unknown study state {state!r}")
        with self.write() as conn:
            sql = "UPDATE studies SET state=?, lease_owner=NULL, lease_until=NULL, updated_at=? WHERE study_key=?"
            args: tuple[Any, ...] = (state, time.time(), key)
            if only_if is not None:
                sql += " AND state=?"
                args += (only_if,)
            return conn.execute(sql, args).rowcount == 1

    # -- state changes after delivery (reconciliation, retries, purge) ---------------------------

    def writing(self) -> contextlib.AbstractContextManager[sqlite3.Connection]:
        """This thread's write transaction: the caller's when one is open (e.g. the outbox's), else a new one."""
        conn = self.conn
        return contextlib.nullcontext(conn) if conn.in_transaction else self.write()

    def mark_pushed(self, keys: list[str], now: float | None = None) -> None:
        """Every registry job of these queued studies is acknowledged (see :mod:`connector.outbox.delivery`)."""
        now = time.time() if now is None else now
        with self.writing() as conn:
            conn.executemany("UPDATE studies SET state='pushed', updated_at=? WHERE study_key=? AND state='queued'",
                             [(now, k) for k in keys])

    def mark_verified(self, keys: list[str], now: float | None = None) -> None:
        """Reconciliation found the registry holding everything these delivered studies sent."""
        now = time.time() if now is None else now
        with self.writing() as conn:
            conn.executemany("UPDATE studies SET state='verified', verified_at=?, updated_at=? "
                             "WHERE study_key=? AND state IN ('pushed', 'verified')", [(now, now, k) for k in keys])

    def mark_unverified(self, key: str, state: str = "pushed", *, only_if: tuple[str, ...] = ()) -> bool:
        """The registry lacks part of a delivered study: back to ``pushed`` (or ``queued`` when parts were
        queued again), no longer verified; with ``only_if``, only from those states."""
        if state not in ("pushed", "queued"):
            raise ValueError(f"a delivered study goes back to pushed or queued, not {state!r}")
        sql = "UPDATE studies SET state=?, verified_at=NULL, updated_at=? WHERE study_key=?"
        args: tuple[Any, ...] = (state, time.time(), key)
        if only_if:
            sql += f" AND state IN ({','.join('?' * len(only_if))})"
            args += only_if
        with self.writing() as conn:
            return conn.execute(sql, args).rowcount == 1

    def hand_back(self, keys: list[str], from_states: tuple[str, ...], now: float | None = None) -> None:
        """Studies at rest in ``from_states`` go back to ``stable`` for the worker (a stage to retry)."""
        now = time.time() if now is None else now
        placeholders = ",".join("?" * len(from_states))
        with self.writing() as conn:
            conn.executemany(f"UPDATE studies SET state='{STABLE}', stable_at=?, verified_at=NULL, updated_at=? "
                             f"WHERE study_key=? AND state IN ({placeholders})",
                             [(now, now, key, *from_states) for key in keys])

    def forget_instance(self, sop_instance_uid: str, key: str) -> int:
        """Remove an instance's row (a purged original) and count it out of its study; returns rows removed."""
        with self.writing() as conn:
            gone = conn.execute("DELETE FROM instances WHERE sop_instance_uid=?", (sop_instance_uid,)).rowcount
            if gone:
                conn.execute("UPDATE studies SET instance_count=MAX(instance_count-1, 0) WHERE study_key=?", (key,))
            return int(gone)

    def record_privacy_report(self, key: str, report: dict[str, Any]) -> None:
        """Keep a study's privacy report (the latest run of its de-identification wins)."""
        with self.write() as conn:
            conn.execute("INSERT OR REPLACE INTO privacy_reports (study_key, report, at) VALUES (?, ?, ?)",
                         (key, json.dumps(report, sort_keys=True), time.time()))

    def privacy_report(self, key: str) -> dict[str, Any] | None:
        row = self.conn.execute("SELECT report FROM privacy_reports WHERE study_key=?", (key,)).fetchone()
        return json.loads(row[0]) if row else None

    def study(self, key: str) -> dict[str, Any] | None:
        cur = self.conn.execute("SELECT * FROM studies WHERE study_key=?", (key,))
        row = cur.fetchone()
        return dict(zip([d[0] for d in cur.description], row)) if row else None

    def study_instances(self, key: str) -> list[dict[str, Any]]:
        cur = self.conn.execute("SELECT * FROM instances WHERE study_key=? ORDER BY series_uid, path", (key,))
        cols = [d[0] for d in cur.description]
        return [dict(zip(cols, row)) for row in cur]

    def reset_leases(self) -> int:
        """Start-up recovery: work leased by a previous run goes back to "stable"."""
        with self.write() as conn:
            return conn.execute(
                "UPDATE studies SET state=?, lease_owner=NULL, lease_until=NULL WHERE state=?",
                (STABLE, PROCESSING),
            ).rowcount

    # -- reporting -----------------------------------------------------------------------------

    def counts(self) -> dict[str, Any]:
        conn = self.conn
        studies = {state: 0 for state in STUDY_STATES}
        for state, n in conn.execute("SELECT state, COUNT(*) FROM studies GROUP BY state"):
            studies[state] = n
        return {
            "instances_received": conn.execute("SELECT COUNT(*) FROM instances").fetchone()[0],
            "bytes_received": conn.execute("SELECT COALESCE(SUM(size), 0) FROM instances").fetchone()[0],
            "instances_replaced": conn.execute(
                "SELECT COUNT(*) FROM instance_events WHERE event='replaced'"
            ).fetchone()[0],
            "studies": studies,
        }
