"""The durable outbox: jobs to send, leased by workers, retried until acknowledged.

Why in the state DB: an upload that was accepted into the outbox survives crashes, restarts and
registry outages; nothing depends on memory. A worker *leases* jobs (``lease_until``), so a worker
that died leaves its jobs to be taken again when the lease runs out (or at start-up, see
:meth:`Outbox.reset_leases`). Every state change after a lease checks the lease owner, so a worker
that lost its lease cannot overwrite the work of the one that took over.

Enqueueing is idempotent on (kind, key, destination): re-queueing a study after a restart or a
re-run of de-identification adds nothing that is already there.
"""

from __future__ import annotations

import contextlib
import json
import sqlite3
import threading
import time
from collections.abc import Iterable, Iterator, Sequence
from dataclasses import dataclass, field
from typing import Any

from connector.outbox.schema import DONE, FAILED, LEASED, PENDING
from connector.store.state import StateStore

JobRef = tuple[str, str] | int  # (kind, key) in the same destination, or a job id


@dataclass(frozen=True)
class Item:
    id: int
    position: int
    path: str
    ref: str
    size: int
    state: str


@dataclass(frozen=True)
class Job:
    id: int
    kind: str
    key: str
    destination: str
    group: str
    payload: dict[str, Any]
    attempts: int
    created_at: float
    items: tuple[Item, ...] = field(default=())

    @property
    def pending_items(self) -> list[Item]:
        return [i for i in self.items if i.state == PENDING]


class Outbox:
    """Queue API over the ``outbox_*`` tables of one :class:`StateStore`."""

    def __init__(self, store: StateStore) -> None:
        self.store = store
        self._tx = threading.local()

    # -- transactions --------------------------------------------------------------------------

    @contextlib.contextmanager
    def transaction(self) -> Iterator[Outbox]:
        """Group several enqueues into one transaction (all or nothing)."""
        if getattr(self._tx, "conn", None) is not None:
            yield self
            return
        with self.store.write() as conn:
            self._tx.conn = conn
            try:
                yield self
            finally:
                self._tx.conn = None

    @contextlib.contextmanager
    def _writing(self) -> Iterator[sqlite3.Connection]:
        conn = getattr(self._tx, "conn", None)
        if conn is not None:
            yield conn
        else:
            with self.store.write() as conn:
                yield conn

    # -- enqueue -------------------------------------------------------------------------------

    def enqueue(self, kind: str, key: str, destination: str, payload: dict[str, Any] | None = None,
                files: list[str] | None = None, after: list[JobRef] | None = None, *,
                refs: Sequence[str] | None = None, sizes: Sequence[int] | None = None, group: str = "",
                now: float | None = None) -> bool:
        """Add a job; False (and no change) when (kind, key, destination) is already queued.

        ``files`` become the job's items, acknowledged one by one; ``refs`` names them (e.g. the
        SOP Instance UID) and ``sizes`` gives their byte counts. ``after`` lists jobs, as
        (kind, key) in the same destination or job ids, that must be done before this one is sent.
        """
        files = list(files or [])
        if refs is not None and len(refs) != len(files):
            raise ValueError("refs must match files one to one")
        if sizes is not None and len(sizes) != len(files):
            raise ValueError("sizes must match files one to one")
        now = time.time() if now is None else now
        with self._writing() as conn:
            cur = conn.execute(
                "INSERT INTO outbox_jobs (kind, key, destination, grp, payload, state, created_at, updated_at, "
                "next_attempt_at) VALUES (?, ?, ?, ?, ?, ?, ?, ?, ?) ON CONFLICT (kind, key, destination) DO NOTHING",
                (kind, key, destination, group, json.dumps(payload or {}, sort_keys=True), PENDING, now, now, now),
            )
            if cur.rowcount == 0:
                return False
            job_id = int(cur.lastrowid)  # type: ignore[arg-type]
            conn.executemany(
                "INSERT INTO outbox_items (job_id, position, path, ref, size) VALUES (?, ?, ?, ?, ?)",
                [(job_id, pos, str(path), refs[pos] if refs else "", int(sizes[pos]) if sizes else 0)
                 for pos, path in enumerate(files)],
            )
            for dep in after or []:
                needs = self._job_id(conn, dep, destination)
                if needs is None:
                    raise ValueError("a job named in 'after' is not in the outbox")
                conn.execute("INSERT OR IGNORE INTO outbox_deps (job_id, needs_id) VALUES (?, ?)", (job_id, needs))
            return True

    @staticmethod
    def _job_id(conn: sqlite3.Connection, ref: JobRef, destination: str) -> int | None:
        if isinstance(ref, int):
            row = conn.execute("SELECT id FROM outbox_jobs WHERE id=?", (ref,)).fetchone()
        else:
            kind, key = ref
            row = conn.execute("SELECT id FROM outbox_jobs WHERE kind=? AND key=? AND destination=?",
                               (kind, key, destination)).fetchone()
        return int(row[0]) if row else None

    def job_id(self, kind: str, key: str, destination: str) -> int | None:
        return self._job_id(self.store.conn, (kind, key), destination)

    def group_items(self, destination: str, group: str, kind: str) -> dict[str, tuple[int, int, str]]:
        """ref -> (item id, job id, item state) for the items of one group (e.g. one study)."""
        conn = getattr(self._tx, "conn", None) or self.store.conn
        rows = conn.execute(
            "SELECT i.ref, i.id, j.id, i.state FROM outbox_items i JOIN outbox_jobs j ON j.id=i.job_id "
            "WHERE j.destination=? AND j.grp=? AND j.kind=? AND i.ref!=''",
            (destination, group, kind),
        )
        return {r[0]: (int(r[1]), int(r[2]), str(r[3])) for r in rows}

    def repoint_item(self, item_id: int, path: str) -> None:
        """A file was written again for an item already queued: remember the new copy (for removal)."""
        with self._writing() as conn:
            conn.execute("UPDATE outbox_items SET path=?, removed_at=NULL WHERE id=?", (path, item_id))

    # -- leasing -------------------------------------------------------------------------------

    def lease(self, owner: str, destination: str, limit: int = 1, lease_seconds: float = 600.0,
              now: float | None = None) -> list[Job]:
        """Take up to ``limit`` jobs that are due, whose prerequisites are done, oldest first."""
        now = time.time() if now is None else now
        with self.store.write() as conn:
            ids = [r[0] for r in conn.execute(
                "SELECT j.id FROM outbox_jobs j WHERE j.destination=? AND "
                "((j.state=? AND j.next_attempt_at<=?) OR (j.state=? AND j.lease_until<?)) AND NOT EXISTS ("
                "  SELECT 1 FROM outbox_deps d JOIN outbox_jobs n ON n.id=d.needs_id "
                "  WHERE d.job_id=j.id AND n.state!=?) "
                "ORDER BY j.id LIMIT ?",
                (destination, PENDING, now, LEASED, now, DONE, int(limit)),
            )]
            conn.executemany(
                "UPDATE outbox_jobs SET state=?, lease_owner=?, lease_until=?, updated_at=? WHERE id=?",
                [(LEASED, owner, now + lease_seconds, now, i) for i in ids],
            )
            return [self._load(conn, i) for i in ids]

    def _load(self, conn: sqlite3.Connection, job_id: int) -> Job:
        row = conn.execute(
            "SELECT id, kind, key, destination, grp, payload, attempts, created_at FROM outbox_jobs WHERE id=?",
            (job_id,),
        ).fetchone()
        items = tuple(
            Item(int(r[0]), int(r[1]), r[2], r[3], int(r[4]), r[5])
            for r in conn.execute(
                "SELECT id, position, path, ref, size, state FROM outbox_items WHERE job_id=? ORDER BY position",
                (job_id,),
            )
        )
        return Job(int(row[0]), row[1], row[2], row[3], row[4], json.loads(row[5] or "{}"), int(row[6]),
                   float(row[7]), items)

    def get(self, job_id: int) -> Job | None:
        conn = self.store.conn
        if conn.execute("SELECT 1 FROM outbox_jobs WHERE id=?", (job_id,)).fetchone() is None:
            return None
        return self._load(conn, job_id)

    def renew(self, owner: str, job_ids: Iterable[int], lease_seconds: float, now: float | None = None) -> int:
        """Extend the leases this owner still holds (a long upload is not taken over mid-way)."""
        now = time.time() if now is None else now
        ids = list(job_ids)
        if not ids:
            return 0
        with self.store.write() as conn:
            return sum(conn.execute(
                "UPDATE outbox_jobs SET lease_until=? WHERE id=? AND state=? AND lease_owner=?",
                (now + lease_seconds, i, LEASED, owner),
            ).rowcount for i in ids)

    def reset_leases(self, destination: str | None = None) -> int:
        """Start-up: jobs leased by a previous run (which cannot still be running) are due again."""
        with self.store.write() as conn:
            sql = "UPDATE outbox_jobs SET state=?, lease_owner=NULL, lease_until=NULL WHERE state=?"
            args: tuple[Any, ...] = (PENDING, LEASED)
            if destination is not None:
                sql += " AND destination=?"
                args += (destination,)
            return conn.execute(sql, args).rowcount

    # -- outcomes (each checks that the caller still holds the lease) -------------------------

    def ack_items(self, item_ids: Iterable[int], now: float | None = None) -> None:
        now = time.time() if now is None else now
        with self.store.write() as conn:
            conn.executemany("UPDATE outbox_items SET state=?, acked_at=?, failure=NULL WHERE id=? AND state!=?",
                             [(DONE, now, i, DONE) for i in item_ids])

    def fail_items(self, failures: dict[int, str]) -> None:
        """Items the registry refused for good (reason codes), kept for an operator's retry."""
        with self.store.write() as conn:
            conn.executemany("UPDATE outbox_items SET state=?, failure=? WHERE id=? AND state=?",
                             [(FAILED, reason, i, PENDING) for i, reason in failures.items()])

    def complete(self, job_id: int, owner: str, status: int | None = None, now: float | None = None,
                 acked: Iterable[int] = ()) -> bool:
        """Done; ``acked`` items are acknowledged in the same transaction."""
        now = time.time() if now is None else now
        with self.store.write() as conn:
            conn.executemany("UPDATE outbox_items SET state=?, acked_at=?, failure=NULL WHERE id=? AND state!=?",
                             [(DONE, now, i, DONE) for i in acked])
            return conn.execute(
                "UPDATE outbox_jobs SET state=?, done_at=?, updated_at=?, lease_owner=NULL, lease_until=NULL, "
                "last_status=?, last_error=NULL WHERE id=? AND state=? AND lease_owner=?",
                (DONE, now, now, status, job_id, LEASED, owner),
            ).rowcount == 1

    def defer(self, job_id: int, owner: str, delay: float, *, error: str, status: int | None = None,
              count_attempt: bool = True, now: float | None = None) -> bool:
        """Back to pending, due again in ``delay`` seconds."""
        now = time.time() if now is None else now
        with self.store.write() as conn:
            return conn.execute(
                "UPDATE outbox_jobs SET state=?, next_attempt_at=?, attempts=attempts+?, updated_at=?, "
                "lease_owner=NULL, lease_until=NULL, last_status=?, last_error=? "
                "WHERE id=? AND state=? AND lease_owner=?",
                (PENDING, now + max(0.0, delay), int(count_attempt), now, status, error[:500], job_id, LEASED, owner),
            ).rowcount == 1

    def give_up(self, job_id: int, owner: str, *, error: str, status: int | None = None,
                quarantine_id: str | None = None, now: float | None = None) -> bool:
        """Failed for good (the registry refused it): kept for inspection and an operator's retry."""
        now = time.time() if now is None else now
        with self.store.write() as conn:
            return conn.execute(
                "UPDATE outbox_jobs SET state=?, updated_at=?, attempts=attempts+1, lease_owner=NULL, "
                "lease_until=NULL, last_status=?, last_error=?, quarantine_id=? "
                "WHERE id=? AND state=? AND lease_owner=?",
                (FAILED, now, status, error[:500], quarantine_id, job_id, LEASED, owner),
            ).rowcount == 1

    def retry_failed(self, destination: str | None = None, job_ids: Iterable[int] | None = None,
                     now: float | None = None) -> int:
        """Operator action: failed jobs (and their failed items) are due again, attempts reset."""
        now = time.time() if now is None else now
        where, args = "state=?", [FAILED]
        if destination is not None:
            where += " AND destination=?"
            args.append(destination)
        with self.store.write() as conn:
            ids = [r[0] for r in conn.execute(f"SELECT id FROM outbox_jobs WHERE {where}", args)]
            if job_ids is not None:
                wanted = set(job_ids)
                ids = [i for i in ids if i in wanted]
            for i in ids:
                conn.execute("UPDATE outbox_items SET state=?, failure=NULL WHERE job_id=? AND state=?",
                             (PENDING, i, FAILED))
                conn.execute("UPDATE outbox_jobs SET state=?, attempts=0, next_attempt_at=?, updated_at=?, "
                             "quarantine_id=NULL WHERE id=?", (PENDING, now, now, i))
            return len(ids)

    # -- retention -----------------------------------------------------------------------------

    def removable_items(self, acked_before: float, limit: int = 1000) -> list[tuple[int, str]]:
        """(item id, path) of acknowledged items whose local copy may now be removed."""
        return [(int(r[0]), r[1]) for r in self.store.conn.execute(
            "SELECT id, path FROM outbox_items WHERE state=? AND removed_at IS NULL AND acked_at<=? LIMIT ?",
            (DONE, acked_before, limit),
        )]

    def prune(self, done_before: float) -> int:
        """Forget jobs acknowledged before ``done_before`` (and their items) whose copies are gone.

        Jobs that others wait for are kept until those are done too. Manifests are kept: they are the
        record of what each study sent, which reconciliation compares with the registry (a few KB
        per study). Returns how many were removed.
        """
        with self.store.write() as conn:
            ids = [r[0] for r in conn.execute(
                "SELECT j.id FROM outbox_jobs j WHERE j.state=? AND j.done_at<? AND j.kind!='manifest' "
                "AND NOT EXISTS (SELECT 1 FROM outbox_items i WHERE i.job_id=j.id AND i.removed_at IS NULL) "
                "AND NOT EXISTS (SELECT 1 FROM outbox_deps d JOIN outbox_jobs w ON w.id=d.job_id "
                "                WHERE d.needs_id=j.id AND w.state!=?)",
                (DONE, done_before, DONE))]
            conn.executemany("DELETE FROM outbox_deps WHERE job_id=? OR needs_id=?", [(i, i) for i in ids])
            conn.executemany("DELETE FROM outbox_items WHERE job_id=?", [(i,) for i in ids])
            conn.executemany("DELETE FROM outbox_jobs WHERE id=?", [(i,) for i in ids])
            return len(ids)

    def mark_removed(self, item_ids: Iterable[int], now: float | None = None) -> None:
        now = time.time() if now is None else now
        with self.store.write() as conn:
            conn.executemany("UPDATE outbox_items SET removed_at=? WHERE id=?", [(now, i) for i in item_ids])
