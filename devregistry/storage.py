"""What the dev registry holds: instance files on disk, an index and the JSON records in SQLite.

    <data>/instances/<aa>/<SOP Instance UID>.dcm   stored objects (durable before acknowledgement)
    <data>/tmp/                                    parts being received
    <data>/registry.db                             instances, subjects, manifests, results, events,
                                                   idempotency keys and counters (duplicates, ...)

Why it checks what it does: the real registry must never receive an identified object, so the dev
registry refuses anything without PatientIdentityRemoved = YES, and it counts duplicates and
conflicts so tests can prove that "sent twice" never means "stored twice".

Why one module, long as it is: a test peer, kept to one file per side (this storage side, and
:mod:`devregistry.server`); the durable-write primitives are the connector's own
(:mod:`connector.store.durable`).
"""

from __future__ import annotations

import contextlib
import hashlib
import json
import os
import sqlite3
import threading
import time
from collections.abc import Callable
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, replace
from pathlib import Path
from typing import Any

import pydicom
import pydicom.filereader
from pydicom.tag import Tag

from devregistry.header import INDEXED_TAGS, LAST_TAG, Buffer, index_header
from connector.store.digests import file_sha256
from connector.store.durable import fsync_dir, start_writeback
from connector.store.spare_files import SpareFiles
from connector.store.state import immediate_transaction
from connector.store.wal_mode import enable_wal

# STOW-RS FailureReason codes used by the dev registry.
CANNOT_UNDERSTAND = 0xC000
DUPLICATE_SOP_INSTANCE = 0x0111
STUDY_MISMATCH = 0xA900
COUNTERS = ("stow_requests", "instances_stored", "duplicates", "conflicts", "rejected_identity",
            "rejected_other", "idempotent_replays")

_SCHEMA = """
CREATE TABLE IF NOT EXISTS instances (
    sop_instance_uid TEXT PRIMARY KEY, sop_class_uid TEXT, study_instance_uid TEXT NOT NULL,
    series_instance_uid TEXT, modality TEXT, patient_id TEXT, patient_name TEXT, study_date TEXT,
    study_time TEXT, accession_number TEXT, series_number INTEGER, series_description TEXT,
    instance_number INTEGER, transfer_syntax TEXT, sha256 TEXT, size INTEGER NOT NULL,
    path TEXT NOT NULL, stored_at REAL NOT NULL);
CREATE INDEX IF NOT EXISTS instances_study ON instances (study_instance_uid, series_instance_uid);
CREATE TABLE IF NOT EXISTS subjects (pseudonym TEXT PRIMARY KEY, body TEXT NOT NULL, sha256 TEXT NOT NULL,
    created_at REAL NOT NULL, updated_at REAL NOT NULL, puts INTEGER NOT NULL DEFAULT 1);
CREATE TABLE IF NOT EXISTS manifests (study_instance_uid TEXT PRIMARY KEY, body TEXT NOT NULL,
    sha256 TEXT NOT NULL, complete INTEGER NOT NULL, missing INTEGER NOT NULL, received_at REAL NOT NULL,
    posts INTEGER NOT NULL DEFAULT 1);
CREATE TABLE IF NOT EXISTS results (id INTEGER PRIMARY KEY, idempotency_key TEXT UNIQUE NOT NULL,
    body TEXT NOT NULL, sha256 TEXT NOT NULL, received_at REAL NOT NULL);
CREATE TABLE IF NOT EXISTS events (id INTEGER PRIMARY KEY, idempotency_key TEXT UNIQUE NOT NULL,
    body TEXT NOT NULL, sha256 TEXT NOT NULL, received_at REAL NOT NULL);
CREATE TABLE IF NOT EXISTS idempotency (key TEXT PRIMARY KEY, method TEXT NOT NULL, path TEXT NOT NULL,
    body_sha256 TEXT NOT NULL, status INTEGER NOT NULL, response TEXT NOT NULL, at REAL NOT NULL);
CREATE TABLE IF NOT EXISTS counters (name TEXT PRIMARY KEY, value INTEGER NOT NULL DEFAULT 0);
"""

@dataclass(frozen=True)
class InstanceOutcome:
    """``stored``/``accepted``, ``duplicate`` (same bytes already held: counts as stored), ``conflict``, ``rejected``."""

    status: str
    sop_instance_uid: str = ""
    sop_class_uid: str = ""
    study_instance_uid: str = ""
    series_instance_uid: str = ""
    reason: int | None = None
    why: str = ""

    @property
    def ok(self) -> bool:
        return self.status in ("stored", "accepted", "duplicate")


def _int(value: Any) -> int | None:
    try:
        return int(value)
    except (TypeError, ValueError):
        return None


class RegistryStore:
    def __init__(self, root: Path, *, fsync: bool = True) -> None:
        self.root = Path(root)
        self.fsync = fsync
        self.instances_dir = self.root / "instances"
        self.tmp_dir = self.root / "tmp"
        for d in (self.root, self.instances_dir, self.tmp_dir):
            d.mkdir(parents=True, exist_ok=True, mode=0o700)
        for leftover in self.tmp_dir.glob("*.part"):
            leftover.unlink(missing_ok=True)
        self.db_path = self.root / "registry.db"
        self._local = threading.local()
        self._lock = threading.Lock()  # guards the check-and-reserve of SOP Instance UIDs
        self._reserved: set[str] = set()  # UIDs accepted by requests not yet committed
        self._spares: SpareFiles | None = None
        conn = self._conn()
        conn.executescript(_SCHEMA)
        conn.executemany("INSERT OR IGNORE INTO counters (name, value) VALUES (?, 0)", [(c,) for c in COUNTERS])

    # -- connections ---------------------------------------------------------------------------

    def _conn(self) -> sqlite3.Connection:
        conn = getattr(self._local, "conn", None)
        if conn is None:
            conn = sqlite3.connect(self.db_path, isolation_level=None, check_same_thread=False, timeout=30)
            enable_wal(conn)
            conn.execute(f"PRAGMA synchronous={'FULL' if self.fsync else 'OFF'}")
            conn.execute("PRAGMA busy_timeout=30000")
            conn.row_factory = sqlite3.Row
            self._local.conn = conn
        return conn

    def write(self) -> contextlib.AbstractContextManager[sqlite3.Connection]:
        return immediate_transaction(self._conn())

    def query(self, sql: str, args: tuple[Any, ...] = ()) -> list[dict[str, Any]]:
        return [dict(r) for r in self._conn().execute(sql, args)]

    def bump(self, name: str, by: int = 1) -> None:
        with self.write() as conn:
            conn.execute("UPDATE counters SET value=value+? WHERE name=?", (by, name))

    def counters(self) -> dict[str, int]:
        return {r["name"]: r["value"] for r in self.query("SELECT name, value FROM counters")}

    # -- instances -----------------------------------------------------------------------------

    def new_temp_file(self) -> tuple[Path, int]:
        """A fresh temporary file (path, open fd), usually created ahead of need in the background."""
        spares = self._spares
        if spares is None:  # the lock only for the first: it also guards every instance's UID check
            with self._lock:
                if self._spares is None:
                    self._spares = SpareFiles(self.tmp_dir, keep=16)
                spares = self._spares
        return spares.take()

    def close(self) -> None:
        if self._spares is not None:
            self._spares.close()

    def _final_path(self, study_uid: str, sop_uid: str) -> Path:
        # One folder per study: a STOW-RS request usually needs a single directory fsync.
        return self.instances_dir / hashlib.sha256(study_uid.encode()).hexdigest()[:24] / f"{sop_uid}.dcm"

    def batch(self) -> InstanceBatch:
        """Instances of one STOW-RS request, made durable together before the response (group commit)."""
        return InstanceBatch(self)

    def instance_sha256(self, sop_uid: str) -> str | None:
        """SHA-256 of a held instance's bytes, computed on first request and kept.

        Why lazily: hashing every upload would cost the receive path about a second of CPU per GB;
        the hash is only needed to settle a re-sent UID (duplicate or conflict) or when asked.
        """
        row = self.instance(sop_uid)
        if row is None:
            return None
        if row["sha256"]:
            return str(row["sha256"])
        digest = file_sha256(self.instance_file(row))
        with self.write() as conn:
            conn.execute("UPDATE instances SET sha256=? WHERE sop_instance_uid=?", (digest, sop_uid))
        return digest

    def instance(self, sop_uid: str) -> dict[str, Any] | None:
        rows = self.query("SELECT * FROM instances WHERE sop_instance_uid=?", (sop_uid,))
        return rows[0] if rows else None

    def instance_file(self, row: dict[str, Any]) -> Path:
        return self.root / row["path"]

    def studies(self, where: str = "", args: tuple[Any, ...] = ()) -> list[dict[str, Any]]:
        return self.query(
            "SELECT study_instance_uid, MIN(patient_id) AS patient_id, MIN(patient_name) AS patient_name, "
            "MIN(study_date) AS study_date, MIN(study_time) AS study_time, MIN(accession_number) AS accession_number, "
            "GROUP_CONCAT(DISTINCT modality) AS modalities, COUNT(DISTINCT series_instance_uid) AS series_count, "
            f"COUNT(*) AS instance_count FROM instances {where} GROUP BY study_instance_uid "
            "ORDER BY MIN(stored_at)", args)

    def series(self, study_uid: str) -> list[dict[str, Any]]:
        return self.query(
            "SELECT study_instance_uid, series_instance_uid, MIN(modality) AS modality, "
            "MIN(series_description) AS series_description, MIN(series_number) AS series_number, "
            "COUNT(*) AS instance_count FROM instances WHERE study_instance_uid=? "
            "GROUP BY series_instance_uid ORDER BY MIN(series_number), series_instance_uid", (study_uid,))

    def instances_of(self, study_uid: str, series_uid: str | None = None) -> list[dict[str, Any]]:
        if series_uid is None:
            return self.query("SELECT * FROM instances WHERE study_instance_uid=? ORDER BY instance_number",
                              (study_uid,))
        return self.query("SELECT * FROM instances WHERE study_instance_uid=? AND series_instance_uid=? "
                          "ORDER BY instance_number", (study_uid, series_uid))

    def delete_instance(self, sop_uid: str) -> bool:
        """Dev only (tests of reconciliation): forget one held instance, its file and index row, as a
        registry that lost it would. True when it was held."""
        row = self.instance(sop_uid)
        if row is None:
            return False
        with self.write() as conn:
            conn.execute("DELETE FROM instances WHERE sop_instance_uid=?", (sop_uid,))
        self.instance_file(row).unlink(missing_ok=True)
        return True

    # -- JSON records --------------------------------------------------------------------------

    def put_subject(self, pseudonym: str, body: dict[str, Any]) -> bool:
        """Create or replace; True when it was created."""
        text = json.dumps(body, sort_keys=True)
        sha = hashlib.sha256(text.encode()).hexdigest()
        now = time.time()
        with self.write() as conn:
            cur = conn.execute("UPDATE subjects SET body=?, sha256=?, updated_at=?, puts=puts+1 WHERE pseudonym=?",
                               (text, sha, now, pseudonym))
            if cur.rowcount:
                return False
            conn.execute("INSERT INTO subjects (pseudonym, body, sha256, created_at, updated_at) VALUES (?, ?, ?, ?, ?)",
                         (pseudonym, text, sha, now, now))
            return True

    def subjects(self) -> list[dict[str, Any]]:
        return [{"pseudonym": r["pseudonym"], **json.loads(r["body"]), "puts": r["puts"]}
                for r in self.query("SELECT * FROM subjects ORDER BY created_at")]

    def put_manifest(self, study_uid: str, body: dict[str, Any]) -> dict[str, Any]:
        """Keep the manifest and compare it with the instances held: the completeness check."""
        listed = {str(u) for u in body.get("sop_instance_uids") or []}
        held = {r["sop_instance_uid"] for r in self.query(
            "SELECT sop_instance_uid FROM instances WHERE study_instance_uid=?", (study_uid,))}
        missing = sorted(listed - held)
        report = {"study_instance_uid": study_uid, "complete": not missing and bool(listed),
                  "listed": len(listed), "held": len(held), "missing": missing,
                  "unexpected": len(held - listed)}
        text = json.dumps(body, sort_keys=True)
        with self.write() as conn:
            conn.execute(
                "INSERT INTO manifests (study_instance_uid, body, sha256, complete, missing, received_at) "
                "VALUES (?, ?, ?, ?, ?, ?) ON CONFLICT (study_instance_uid) DO UPDATE SET body=excluded.body, "
                "sha256=excluded.sha256, complete=excluded.complete, missing=excluded.missing, "
                "received_at=excluded.received_at, posts=posts+1",
                (study_uid, text, hashlib.sha256(text.encode()).hexdigest(), int(not missing and bool(listed)),
                 len(missing),
                 time.time()))
        return report

    def manifests(self, study_uid: str | None = None) -> list[dict[str, Any]]:
        rows = self.query("SELECT * FROM manifests" + (" WHERE study_instance_uid=?" if study_uid else "")
                          + " ORDER BY received_at", (study_uid,) if study_uid else ())
        return [{"study_instance_uid": r["study_instance_uid"], "complete": bool(r["complete"]),
                 "missing": r["missing"], "posts": r["posts"], "manifest": json.loads(r["body"])} for r in rows]

    def add_record(self, table: str, key: str, body: dict[str, Any]) -> tuple[bool, str]:
        """Insert a result or event once per idempotency key: (created, stored body's sha256)."""
        assert table in ("results", "events")
        text = json.dumps(body, sort_keys=True)
        sha = hashlib.sha256(text.encode()).hexdigest()
        with self.write() as conn:
            row = conn.execute(f"SELECT sha256 FROM {table} WHERE idempotency_key=?", (key,)).fetchone()
            if row is not None:
                return False, row["sha256"]
            conn.execute(f"INSERT INTO {table} (idempotency_key, body, sha256, received_at) VALUES (?, ?, ?, ?)",
                         (key, text, sha, time.time()))
            return True, sha

    def records(self, table: str) -> list[dict[str, Any]]:
        assert table in ("results", "events")
        return [{"id": r["id"], "received_at": r["received_at"], **json.loads(r["body"])}
                for r in self.query(f"SELECT * FROM {table} ORDER BY id")]

    # -- idempotency ---------------------------------------------------------------------------

    def idempotent_response(self, key: str) -> dict[str, Any] | None:
        rows = self.query("SELECT * FROM idempotency WHERE key=?", (key,))
        return rows[0] if rows else None

    def remember_response(self, key: str, method: str, path: str, body_sha: str, status: int, response: bytes) -> None:
        with self.write() as conn:
            conn.execute("INSERT OR IGNORE INTO idempotency (key, method, path, body_sha256, status, response, at) "
                         "VALUES (?, ?, ?, ?, ?, ?, ?)", (key, method, path, body_sha, status,
                                                          response.decode(), time.time()))

    def stats(self) -> dict[str, Any]:
        out: dict[str, Any] = dict(self.counters())
        one = self._conn().execute
        out["instances"] = one("SELECT COUNT(*) FROM instances").fetchone()[0]
        out["bytes"] = one("SELECT COALESCE(SUM(size), 0) FROM instances").fetchone()[0]
        out["studies"] = one("SELECT COUNT(DISTINCT study_instance_uid) FROM instances").fetchone()[0]
        for table in ("subjects", "manifests", "results", "events"):
            out[table] = one(f"SELECT COUNT(*) FROM {table}").fetchone()[0]
        out["files"] = sum(1 for _ in self.instances_dir.glob("*/*.dcm"))
        return out


class InstanceBatch:
    """Checks each received part as it completes, then commits them all at once (group commit).

    Why: durability per instance costs three fsyncs in a row (file, folder, database). Here the
    kernel starts writing each file out as soon as its part is complete (overlapping the rest of
    the upload) while the request's thread goes on receiving, with no other thread involved (the
    thread switches of handing each file to an fsync thread cost more CPU than the fsyncs). At
    the end the files are fsync'd together, by then mostly written, then renamed into place; one
    folder fsync per study and one database commit follow. The response is sent only after that,
    so an acknowledged instance is always on disk. A SOP Instance UID being stored by a
    concurrent request is reserved, so it is never stored twice.
    """

    def __init__(self, store: RegistryStore) -> None:
        self.store = store
        self.accepted: list[tuple[InstanceOutcome, Path, dict[str, Any]]] = []
        self.counts: dict[str, int] = {}
        self._open: list[int] = []  # accepted files being written out, fsync'd (and closed) at commit
        self._committed = False

    def __enter__(self) -> InstanceBatch:
        return self

    def __exit__(self, exc_type: Any, *_: Any) -> None:
        if exc_type is None:
            self.commit()
        else:
            self.abort()

    def _count(self, name: str) -> None:
        self.counts[name] = self.counts.get(name, 0) + 1

    def add(self, tmp: Path, size: int, *, fd: int | None = None, head: Buffer = b"", study_uid: str | None = None,
            on_duplicate: str = "accept", veto: Callable[[str], int | None] | None = None) -> InstanceOutcome:
        """Check one part written to ``tmp``; ``veto(sop_uid)`` may refuse it (fault injection).

        ``fd``, the part's file still open for writing, becomes the batch's (kept for the fsync,
        else closed). ``head``, the first bytes of the part, saves reopening the file when the
        header fits in it. Returns ``accepted`` (stored at commit), ``duplicate``, ``conflict`` or
        ``rejected``.
        """
        try:
            outcome = self._check(tmp, size, head, study_uid, on_duplicate, veto)
        except BaseException:
            if fd is not None:
                os.close(fd)
            raise
        if outcome.status == "accepted" and self.store.fsync:
            fd = os.open(tmp, os.O_RDONLY) if fd is None else fd
            start_writeback(fd, 0, 0)  # the whole file: the kernel writes it while the request goes on
            self._open.append(fd)
            if len(self._open) >= MAX_OPEN_FILES:  # a very large request: no more than this many open
                self._sync_open()
        elif fd is not None:
            os.close(fd)
        return outcome

    def _check(self, tmp: Path, size: int, head: Buffer, study_uid: str | None, on_duplicate: str,
               veto: Callable[[str], int | None] | None) -> InstanceOutcome:
        try:
            h = _read_header(tmp, head)
            sop, study = h["SOPInstanceUID"], h["StudyInstanceUID"]
            if not sop or not study:
                raise ValueError("no SOP Instance UID or Study Instance UID")
        except Exception:
            tmp.unlink(missing_ok=True)
            self._count("rejected_other")
            return InstanceOutcome("rejected", reason=CANNOT_UNDERSTAND, why="not-dicom")
        base = InstanceOutcome("accepted", sop, h["SOPClassUID"], study, h["SeriesInstanceUID"])
        if h["PatientIdentityRemoved"].upper() != "YES":
            tmp.unlink(missing_ok=True)
            self._count("rejected_identity")
            return replace(base, status="rejected", reason=CANNOT_UNDERSTAND, why="identity-not-removed")
        code = veto(sop) if veto is not None else None
        if code is not None:
            tmp.unlink(missing_ok=True)
            return replace(base, status="rejected", reason=code, why="injected")
        if study_uid is not None and study != study_uid:
            tmp.unlink(missing_ok=True)
            self._count("rejected_other")
            return replace(base, status="rejected", reason=STUDY_MISMATCH, why="study-mismatch")
        with self.store._lock:
            held = self.store._conn().execute("SELECT 1 FROM instances WHERE sop_instance_uid=?",
                                              (sop,)).fetchone() is not None
            in_flight = not held and sop in self.store._reserved
            if not held and not in_flight:
                self.store._reserved.add(sop)
        if held or in_flight:
            if held:
                theirs = self.store.instance_sha256(sop)
            else:  # being stored by this request (a UID sent twice in one body) or by a concurrent one
                theirs = next((file_sha256(t) for o, t, _ in self.accepted if o.sop_instance_uid == sop), "in-flight")
            same = theirs == file_sha256(tmp)
            tmp.unlink(missing_ok=True)
            if same and on_duplicate == "accept":
                self._count("duplicates")
                return replace(base, status="duplicate")
            self._count("conflicts")
            return replace(base, status="conflict", reason=DUPLICATE_SOP_INSTANCE,
                           why="same-content" if same else "different-content")
        row_values = {
            "sop_instance_uid": sop, "sop_class_uid": base.sop_class_uid, "study_instance_uid": study,
            "series_instance_uid": base.series_instance_uid, "modality": h["Modality"],
            "patient_id": h["PatientID"], "patient_name": h["PatientName"],
            "study_date": h["StudyDate"], "study_time": h["StudyTime"],
            "accession_number": h["AccessionNumber"], "series_number": _int(h["SeriesNumber"]),
            "series_description": h["SeriesDescription"], "instance_number": _int(h["InstanceNumber"]),
            "transfer_syntax": h["TransferSyntaxUID"],
            "sha256": None, "size": size,
        }
        self.accepted.append((base, tmp, row_values))
        return base

    def _sync_open(self) -> None:
        """fsync and close the accepted files still open: every file is on disk before it is renamed.

        A few threads share the fsyncs: on a disk that flushes its cache at each one, that is the
        difference between one flush time and fifty in a row.
        """
        fds, self._open = self._open, []
        groups = [fds[i::FSYNC_THREADS] for i in range(min(FSYNC_THREADS, len(fds)))]
        try:
            helpers = [_fsync_pool().submit(_fsync_fds, group) for group in groups[1:]]
            if groups:
                _fsync_fds(groups[0])  # this thread's share, while the helpers do theirs
            for future in helpers:
                future.result()
        finally:
            for fd in fds:
                os.close(fd)

    def final(self, outcome: InstanceOutcome) -> InstanceOutcome:
        """What an ``accepted`` outcome became once committed."""
        if outcome.status == "accepted" and self._committed:
            return InstanceOutcome("stored", outcome.sop_instance_uid, outcome.sop_class_uid,
                                   outcome.study_instance_uid, outcome.series_instance_uid)
        return outcome

    def commit(self) -> None:
        store = self.store
        try:
            self._sync_open()
            folders: set[Path] = set()
            now = time.time()
            for outcome, tmp, row in self.accepted:
                final = store._final_path(outcome.study_instance_uid, outcome.sop_instance_uid)
                if final.parent not in folders:
                    final.parent.mkdir(parents=True, exist_ok=True, mode=0o700)
                    folders.add(final.parent)
                os.replace(tmp, final)
                row["path"] = str(final.relative_to(store.root))
                row["stored_at"] = now
            if store.fsync:
                for folder in folders | ({store.instances_dir} if folders else set()):
                    fsync_dir(folder)
            counts = dict(self.counts)
            if self.accepted:
                counts["instances_stored"] = counts.get("instances_stored", 0) + len(self.accepted)
            rows = [r for _, _, r in self.accepted]
            with store.write() as conn:
                if rows:
                    cols = list(rows[0])
                    conn.executemany(f"INSERT INTO instances ({', '.join(cols)}) VALUES ({', '.join('?' * len(cols))})",
                                     [tuple(r[c] for c in cols) for r in rows])
                conn.executemany("UPDATE counters SET value=value+? WHERE name=?",
                                 [(n, name) for name, n in counts.items()])
            self._committed = True
        except BaseException:
            self.abort()
            raise
        finally:
            self._release()

    def abort(self) -> None:
        fds, self._open = self._open, []
        for fd in fds:
            os.close(fd)
        for _, tmp, _ in self.accepted:
            tmp.unlink(missing_ok=True)
        self._release()

    def _release(self) -> None:
        with self.store._lock:
            for outcome, _, _ in self.accepted:
                self.store._reserved.discard(outcome.sop_instance_uid)


_TAG_OF = {keyword: Tag(tag) for tag, keyword in INDEXED_TAGS.items()}


def _text(value: Any) -> str:
    if isinstance(value, (bytes, bytearray)):
        return value.decode("latin-1").strip("\x00 ")
    return "" if value is None else str(value)


def _header_text(ds: pydicom.Dataset) -> dict[str, str]:
    out = {kw: _text(getattr(ds.get_item(tag), "value", None)) for kw, tag in _TAG_OF.items()}
    meta = getattr(ds, "file_meta", None)
    out["TransferSyntaxUID"] = str(meta.get("TransferSyntaxUID", "")) if meta is not None else ""
    return out


def _read_header(tmp: Path, head: Buffer) -> dict[str, str]:
    """The header elements the registry indexes: from the part's first bytes, else from the file."""
    fast = index_header(head) if head else None
    if fast is not None:
        return fast
    with open(tmp, "rb") as fh:
        ds = pydicom.filereader.read_partial(fh, stop_when=lambda tag, _vr, _length: tag > LAST_TAG,
                                             specific_tags=list(_TAG_OF.values()))
    return _header_text(ds)


MAX_OPEN_FILES = 256  # accepted files a request keeps open for the fsync at commit; beyond, synced early
FSYNC_THREADS = 4  # the request's own thread and three helpers share a commit's fsyncs


_POOL: ThreadPoolExecutor | None = None
_POOL_LOCK = threading.Lock()


def _fsync_pool() -> ThreadPoolExecutor:
    global _POOL
    with _POOL_LOCK:
        if _POOL is None:
            _POOL = ThreadPoolExecutor(max_workers=FSYNC_THREADS, thread_name_prefix="registry-fsync")
        return _POOL


def _fsync_fds(fds: list[int]) -> None:
    for fd in fds:
        os.fsync(fd)
