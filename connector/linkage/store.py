"""The linkage tables: subjects and studies, every identifying value encrypted.

Layout (SQLite, own file, WAL, accessed through sqlite-utils)::

    subjects(id, pseudonym UNIQUE, blind_index UNIQUE, patient_id*, issuer*, name*, birth_date*,
             sex*, date_offset*, index_date*)
    studies(id, deid_study_uid UNIQUE, pseudonym -> subjects, study_index UNIQUE,
            original_study_uid*, accession_number*)
    keyring(id=1, generation, KEK kind and scrypt parameters, wrapped keys)
    meta(key, value)   schema version, audit-log anchor

``*`` = AES-256-GCM ciphertext whose associated data is (table, column, pseudonym[, blind index] or
(table, column, de-identified study UID, pseudonym)). Nothing identifying is stored in clear, so the
WAL and freed pages (``secure_delete`` is on as well) hold only ciphertext.

Concurrency: one connection per thread and process. Creation of a subject runs under
``BEGIN IMMEDIATE`` (a write lock across processes), re-checks the blind index, then inserts: two
workers seeing the same new patient get one subject. Every operation reads the keyring generation in
the same transaction, so a key rotation committed by another process is picked up (keys reloaded)
instead of writing with a retired key.

Why one class, long as it is: every operation (lookup, creation, rotation, the consistency
check) must read the keyring generation and use its :class:`~connector.linkage.row_cipher.RowCipher`
inside the same transaction; keeping them on one object keeps that rule in one place. The file,
its pragmas and schema are :mod:`connector.linkage.database`.
"""

from __future__ import annotations

import re

import logging
import os
import sqlite3
import threading
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

from sqlite_utils import Database

from connector.deid.provider import PatientIdentity
from connector.linkage.crypto import normalise_identifier
from connector.linkage.errors import (
    CorruptRowError,
    LinkageError,
    LinkageStateError,
    MissingIdentifierError,
    UnknownPseudonymError,
)
from connector.linkage.keyring import KeyringRecord, read_keyring, write_keyring
from connector.linkage.database import (
    STUDY_FIELDS,
    SUBJECT_FIELDS,
    connect,
    transaction,
)
from connector.linkage.keys import KeySet
from connector.linkage.row_cipher import RowCipher
from connector.linkage.pseudonyms import new_date_offset, new_pseudonym, parse_study_date

log = logging.getLogger(__name__)

_SUBJECT_COLS = "id, pseudonym, blind_index, " + ", ".join(SUBJECT_FIELDS)
_STUDY_COLS = "id, deid_study_uid, pseudonym, study_index, " + ", ".join(STUDY_FIELDS)


class StudyConflictError(LinkageError):
    """The same original study is already linked to a different subject (e.g. a corrected patient ID)."""


@dataclass(frozen=True)
class SubjectPolicy:
    """How new subjects are minted."""

    prefix: str = "SITE01"
    length: int = 8
    max_offset_days: int = 3650


@dataclass(frozen=True)
class LinkedSubject:
    """What the pipeline and follow-up need about a patient: no identifier in it."""

    pseudonym: str
    date_offset_days: int
    index_date: str  # original (unshifted) YYYYMMDD of the earliest study seen, "" if unknown


@dataclass(frozen=True)
class StudyLink:
    deidentified_study_uid: str
    original_study_uid: str
    accession_number: str


@dataclass(frozen=True)
class SubjectIdentifiers:
    """A subject with its identifiers in clear: only for audited coordinator reads."""

    pseudonym: str
    patient_id: str
    issuer: str
    name: str
    birth_date: str
    sex: str
    date_offset_days: int
    index_date: str
    studies: tuple[StudyLink, ...] = field(default=())

    def as_dict(self) -> dict[str, Any]:
        return asdict(self)


@dataclass(frozen=True)
class CheckReport:
    subjects: int
    studies: int
    corrupt: tuple[CorruptRowError, ...]


@dataclass(frozen=True)
class RotationResult:
    generation: int
    subjects: int
    studies: int


class LinkageStore:
    """Thread-safe access to one linkage database with one unlocked key generation at a time.

    ``unlocker(db)`` re-derives the working keys from the keyring (used when another process has
    rotated them); without it, a rotation elsewhere makes this store refuse to work.
    """

    def __init__(
        self,
        path: Path,
        keys: KeySet,
        *,
        policy: SubjectPolicy | None = None,
        unlocker: Callable[[Database], KeySet] | None = None,
        sync: bool = True,
    ) -> None:
        self.path = Path(path)
        self.policy = policy or SubjectPolicy()
        self._crypto = RowCipher(keys)
        self._unlocker = unlocker
        self._sync = sync
        self._local = threading.local()
        self._conns: list[Database] = []
        self._lock = threading.Lock()
        self._closed = False

    # -- connections ------------------------------------------------------------------------

    def db(self) -> Database:
        """This thread's connection (a new one after a fork)."""
        db = getattr(self._local, "db", None)
        if db is None or getattr(self._local, "pid", None) != os.getpid():
            if self._closed:
                raise LinkageStateError("the linkage store is closed")
            db = connect(self.path, sync=self._sync)
            self._local.db, self._local.pid = db, os.getpid()
            with self._lock:
                self._conns.append(db)
        return db

    def close(self) -> None:
        with self._lock:
            self._closed = True
            conns, self._conns = self._conns, []
        for db in conns:
            try:
                db.close()
            except sqlite3.Error:
                pass

    @property
    def keys(self) -> KeySet:
        return self._crypto.keys

    def _current(self, db: Database) -> RowCipher:
        """The key generation the database holds now (inside the caller's transaction)."""
        row = db.execute("SELECT generation FROM keyring WHERE id = 1").fetchone()
        if row is None:
            raise LinkageStateError(f"the linkage table {self.path} has no keyring")
        crypto = self._crypto
        if row[0] == crypto.keys.generation:
            return crypto
        if self._unlocker is None:
            raise LinkageStateError("the linkage keys were rotated by another process; restart to reload them")
        with self._lock:
            if self._crypto.keys.generation != row[0]:
                log.info("linkage.keys.reloaded")
                self._crypto = RowCipher(self._unlocker(db))
            return self._crypto

    @contextmanager
    def _read(self) -> Iterator[tuple[Database, RowCipher]]:
        db = self.db()
        with transaction(db):
            yield db, self._current(db)

    @contextmanager
    def _write(self) -> Iterator[tuple[Database, RowCipher]]:
        db = self.db()
        with transaction(db, "IMMEDIATE"):
            yield db, self._current(db)

    # -- subjects ---------------------------------------------------------------------------

    def _linked(self, c: RowCipher, row: tuple[Any, ...]) -> LinkedSubject:
        pseudonym, bidx, offset, index_date = row
        try:
            days = int(c.dec_subject("date_offset", offset, pseudonym, bidx))
        except ValueError:
            raise CorruptRowError("subjects", "date_offset", pseudonym) from None
        return LinkedSubject(pseudonym, days, c.dec_subject("index_date", index_date, pseudonym, bidx))

    _LINKED_SQL = "SELECT pseudonym, blind_index, date_offset, index_date FROM subjects WHERE blind_index = ?"

    def get_or_create(self, identity: PatientIdentity, study_date: str = "") -> tuple[LinkedSubject, bool]:
        """The patient's subject, created on first sight; (subject, created).

        The index date becomes the earliest study date seen for the patient.
        """
        if not normalise_identifier(identity.patient_id):
            raise MissingIdentifierError("the object has no patient ID, so it cannot be linked to a subject")
        sdate = parse_study_date(study_date)
        with self._read() as (db, c):
            row = db.execute(self._LINKED_SQL, [c.patient_index(identity.patient_id, identity.issuer)]).fetchone()
            subject = self._linked(c, row) if row else None
        created = False
        if subject is None:
            subject, created = self._create(identity, sdate or "")
        if sdate and not created and (not subject.index_date or sdate < subject.index_date):
            subject = self._lower_index_date(identity, sdate)
        return subject, created

    def _create(self, identity: PatientIdentity, sdate: str) -> tuple[LinkedSubject, bool]:
        with self._write() as (db, c):
            bidx = c.patient_index(identity.patient_id, identity.issuer)
            row = db.execute(self._LINKED_SQL, [bidx]).fetchone()
            if row:  # another worker created it while we waited for the write lock
                return self._linked(c, row), False
            for _ in range(16):
                pseudonym = new_pseudonym(self.policy.prefix, self.policy.length)
                if db.execute("SELECT 1 FROM subjects WHERE pseudonym = ?", [pseudonym]).fetchone() is None:
                    break
            else:
                raise LinkageStateError("could not allocate a unique pseudonym (namespace nearly full?)")
            offset = new_date_offset(self.policy.max_offset_days)
            values = {
                "patient_id": identity.patient_id.strip(),
                "issuer": identity.issuer.strip(),
                "name": identity.name.strip(),
                "birth_date": identity.birth_date.strip(),
                "sex": identity.sex.strip(),
                "date_offset": str(offset),
                "index_date": sdate,
            }
            db.execute(
                f"INSERT INTO subjects (pseudonym, blind_index, {', '.join(SUBJECT_FIELDS)}) "
                f"VALUES (?, ?, {', '.join('?' for _ in SUBJECT_FIELDS)})",
                [pseudonym, bidx, *(c.enc_subject(col, values[col], pseudonym, bidx) for col in SUBJECT_FIELDS)],
            )
        log.debug("linkage.subject.created")
        return LinkedSubject(pseudonym, offset, sdate), True

    def _lower_index_date(self, identity: PatientIdentity, sdate: str) -> LinkedSubject:
        with self._write() as (db, c):
            bidx = c.patient_index(identity.patient_id, identity.issuer)
            row = db.execute(self._LINKED_SQL, [bidx]).fetchone()
            subject = self._linked(c, row)
            if subject.index_date and subject.index_date <= sdate:
                return subject
            db.execute(
                "UPDATE subjects SET index_date = ? WHERE pseudonym = ?",
                [c.enc_subject("index_date", sdate, subject.pseudonym, bidx), subject.pseudonym],
            )
        log.debug("linkage.subject.index_date_updated")
        return LinkedSubject(subject.pseudonym, subject.date_offset_days, sdate)

    def find_by_patient(self, patient_id: str, issuer: str = "") -> LinkedSubject | None:
        """O(1) lookup through the blind index: no other row is decrypted."""
        if not normalise_identifier(patient_id):
            return None
        with self._read() as (db, c):
            row = db.execute(self._LINKED_SQL, [c.patient_index(patient_id, issuer)]).fetchone()
            return self._linked(c, row) if row else None

    def _identifiers(self, c: RowCipher, row: tuple[Any, ...], studies: tuple[StudyLink, ...] = ()) -> SubjectIdentifiers:
        _id, pseudonym, bidx, *blobs = row
        plain = {col: c.dec_subject(col, blob, pseudonym, bidx) for col, blob in zip(SUBJECT_FIELDS, blobs, strict=True)}
        try:
            offset = int(plain.pop("date_offset"))
        except ValueError:
            raise CorruptRowError("subjects", "date_offset", pseudonym) from None
        return SubjectIdentifiers(pseudonym=pseudonym, date_offset_days=offset, studies=studies, **plain)

    def _studies_of(self, db: Database, c: RowCipher, pseudonym: str) -> tuple[StudyLink, ...]:
        out = []
        for _id, deid_uid, pseud, _sidx, orig, acc in db.execute(
            f"SELECT {_STUDY_COLS} FROM studies WHERE pseudonym = ? ORDER BY id", [pseudonym]
        ):
            out.append(StudyLink(deid_uid, c.dec_study("original_study_uid", orig, deid_uid, pseud),
                                 c.dec_study("accession_number", acc, deid_uid, pseud)))
        return tuple(out)

    def name_tokens(self, pseudonym: str) -> frozenset[str]:
        """The words of the patient's name, ID and issuer (upper case), for cleaners to refuse in text
        about this patient; empty when unknown. Read for a machine check, never shown or sent."""
        with self._read() as (db, c):
            row = db.execute(f"SELECT {_SUBJECT_COLS} FROM subjects WHERE pseudonym = ?", [pseudonym]).fetchone()
            if row is None:
                return frozenset()
            who = self._identifiers(c, row)
        words = re.findall(r"[^\W_]+", " ".join((who.name, who.patient_id, who.issuer)))
        return frozenset(w.upper() for w in words if w)

    def find_linked_by_pseudonym(self, pseudonym: str) -> LinkedSubject | None:
        """Pseudonym, date offset and index date of a pseudonym (no identifier is decrypted): what a
        follow-up feed needs for a patient it matched through a recorded merge."""
        with self._read() as (db, c):
            row = db.execute("SELECT pseudonym, blind_index, date_offset, index_date FROM subjects WHERE pseudonym = ?",
                             [pseudonym]).fetchone()
            return self._linked(c, row) if row is not None else None

    def find_by_pseudonym(self, pseudonym: str) -> SubjectIdentifiers | None:
        with self._read() as (db, c):
            row = db.execute(f"SELECT {_SUBJECT_COLS} FROM subjects WHERE pseudonym = ?", [pseudonym]).fetchone()
            if row is None:
                return None
            return self._identifiers(c, row, self._studies_of(db, c, pseudonym))

    def iter_identifiers(self) -> Iterator[SubjectIdentifiers | CorruptRowError]:
        """Every subject (without studies) in creation order, in one consistent snapshot.

        A row that fails authentication is yielded as its CorruptRowError, so callers can report it
        and carry on with the rest.
        """
        with self._read() as (db, c):
            for row in db.execute(f"SELECT {_SUBJECT_COLS} FROM subjects ORDER BY id"):
                try:
                    yield self._identifiers(c, row)
                except CorruptRowError as exc:
                    yield exc

    # -- studies ----------------------------------------------------------------------------

    def record_study(self, pseudonym: str, original_uid: str, deid_uid: str, accession: str = "") -> bool:
        """Link a de-identified study to its original; idempotent. True when a new row was written."""
        with self._write() as (db, c):
            if db.execute("SELECT 1 FROM subjects WHERE pseudonym = ?", [pseudonym]).fetchone() is None:
                raise UnknownPseudonymError(f"no subject {pseudonym} in the linkage table")
            existing = db.execute("SELECT pseudonym FROM studies WHERE deid_study_uid = ? OR study_index = ?",
                                  [deid_uid, c.study_index(original_uid)]).fetchall()
            if existing:
                if any(r[0] != pseudonym for r in existing):
                    log.warning("linkage.study.subject_conflict")
                    raise StudyConflictError(
                        "this study is already linked to a different subject (was the patient ID corrected?); "
                        "it needs review"
                    )
                return False
            db.execute(
                f"INSERT INTO studies (deid_study_uid, pseudonym, study_index, {', '.join(STUDY_FIELDS)}) "
                "VALUES (?, ?, ?, ?, ?)",
                [deid_uid, pseudonym, c.study_index(original_uid),
                 c.enc_study("original_study_uid", original_uid.strip(), deid_uid, pseudonym),
                 c.enc_study("accession_number", accession.strip(), deid_uid, pseudonym)],
            )
        log.debug("linkage.study.recorded")
        return True

    def study_uids_of(self, pseudonym: str) -> list[str]:
        """De-identified study UIDs linked to a pseudonym (both stored in clear: nothing is decrypted)."""
        with self._read() as (db, _c):
            return [r[0] for r in db.execute("SELECT deid_study_uid FROM studies WHERE pseudonym = ? ORDER BY id",
                                             [pseudonym])]

    def find_by_accession(self, accession: str) -> list[tuple[str, str]]:
        """(pseudonym, de-identified study UID) of the studies with this accession number.

        Accession numbers have no blind index, so each study's is decrypted and compared (a few
        microseconds a row); a row that fails authentication is skipped, as ``check`` reports it.
        """
        wanted = normalise_identifier(accession)
        if not wanted:
            return []
        out = []
        with self._read() as (db, c):
            for _id, deid_uid, pseud, _sidx, _orig, acc in db.execute(f"SELECT {_STUDY_COLS} FROM studies ORDER BY id"):
                try:
                    value = c.dec_study("accession_number", acc, deid_uid, pseud)
                except CorruptRowError:
                    continue
                if value and normalise_identifier(value) == wanted:
                    out.append((pseud, deid_uid))
        return out

    def find_study(self, original_uid: str) -> tuple[str, str] | None:
        """(pseudonym, de-identified study UID) for an original study UID, through the blind index."""
        with self._read() as (db, c):
            row = db.execute("SELECT pseudonym, deid_study_uid FROM studies WHERE study_index = ?",
                             [c.study_index(original_uid)]).fetchone()
            return (row[0], row[1]) if row else None

    # -- maintenance ------------------------------------------------------------------------

    def counts(self) -> dict[str, int]:
        with self._read() as (db, _c):
            return {t: db.execute(f"SELECT count(*) FROM {t}").fetchone()[0] for t in ("subjects", "studies")}

    def keyring(self) -> KeyringRecord:
        with self._read() as (db, _c):
            record = read_keyring(db)
        assert record is not None
        return record

    def check(self) -> CheckReport:
        """Decrypt and authenticate every value; report (never raise for) bad rows."""
        corrupt: list[CorruptRowError] = []
        with self._read() as (db, c):
            subjects = 0
            for row in db.execute(f"SELECT {_SUBJECT_COLS} FROM subjects ORDER BY id"):
                subjects += 1
                try:
                    ident = self._identifiers(c, row)
                except CorruptRowError as exc:
                    corrupt.append(exc)
                    continue
                if c.patient_index(ident.patient_id, ident.issuer) != bytes(row[2]):
                    corrupt.append(CorruptRowError("subjects", "blind_index", ident.pseudonym))
            studies = 0
            for _id, deid_uid, pseud, sidx, orig, acc in db.execute(f"SELECT {_STUDY_COLS} FROM studies ORDER BY id"):
                studies += 1
                try:
                    original = c.dec_study("original_study_uid", orig, deid_uid, pseud)
                    c.dec_study("accession_number", acc, deid_uid, pseud)
                except CorruptRowError as exc:
                    corrupt.append(exc)
                    continue
                if c.study_index(original) != bytes(sidx):
                    corrupt.append(CorruptRowError("studies", "study_index", deid_uid))
        return CheckReport(subjects, studies, tuple(corrupt))

    def rotate(self, make_keyring: Callable[[KeySet], dict[str, object]]) -> RotationResult:
        """Re-encrypt every value under fresh data and index keys, in ONE transaction.

        The UID secret and audit key are carried over (the de-identified UIDs and the audit chain
        must not change). ``make_keyring(new_keys)`` returns the keyring row wrapped under the new
        KEK. Any row that fails authentication aborts the whole rotation: nothing changes.
        """
        with self._write() as (db, old):
            k = old.keys
            fresh = KeySet.generate(k.generation + 1)
            new = RowCipher(KeySet(k.generation + 1, fresh.data_key, fresh.index_key, k.uid_secret, k.audit_key))
            subject_updates, study_updates, corrupt = [], [], 0
            for row in db.execute(f"SELECT {_SUBJECT_COLS} FROM subjects ORDER BY id"):
                try:
                    ident = self._identifiers(old, row)
                except CorruptRowError:
                    corrupt += 1
                    continue
                values = {f: getattr(ident, f) for f in SUBJECT_FIELDS if f != "date_offset"}
                values["date_offset"] = str(ident.date_offset_days)
                bidx = new.patient_index(ident.patient_id, ident.issuer)
                subject_updates.append(
                    [bidx, *(new.enc_subject(col, values[col], ident.pseudonym, bidx) for col in SUBJECT_FIELDS), row[0]]
                )
            for sid, deid_uid, pseud, _sidx, orig, acc in db.execute(f"SELECT {_STUDY_COLS} FROM studies ORDER BY id"):
                try:
                    original = old.dec_study("original_study_uid", orig, deid_uid, pseud)
                    accession = old.dec_study("accession_number", acc, deid_uid, pseud)
                except CorruptRowError:
                    corrupt += 1
                    continue
                study_updates.append([new.study_index(original),
                                      new.enc_study("original_study_uid", original, deid_uid, pseud),
                                      new.enc_study("accession_number", accession, deid_uid, pseud), sid])
            if corrupt:
                raise LinkageStateError(
                    f"key rotation aborted, nothing was changed: {corrupt} row(s) fail authentication "
                    "(run 'site-connector linkage check', then restore them from a backup)"
                )
            db.conn.executemany(
                f"UPDATE subjects SET blind_index = ?, {', '.join(f'{c} = ?' for c in SUBJECT_FIELDS)} WHERE id = ?",
                subject_updates,
            )
            db.conn.executemany(
                "UPDATE studies SET study_index = ?, original_study_uid = ?, accession_number = ? WHERE id = ?",
                study_updates,
            )
            write_keyring(db, make_keyring(new.keys), replace=True)
        with self._lock:
            self._crypto = new
        self.checkpoint()
        log.info("linkage.keys.rotated subjects=%d studies=%d", len(subject_updates), len(study_updates))
        return RotationResult(new.keys.generation, len(subject_updates), len(study_updates))

    def rewrap(self, keyring_values: dict[str, object]) -> None:
        """Replace the keyring row (same keys, new KEK wrapping); used after restoring an old backup."""
        with self._write() as (db, _c):
            write_keyring(db, keyring_values, replace=True)
        self.checkpoint()

    def checkpoint(self) -> None:
        """Fold the WAL into the database and truncate it (drops superseded ciphertext pages)."""
        try:
            self.db().execute("PRAGMA wal_checkpoint(TRUNCATE)")
        except sqlite3.OperationalError:
            log.info("linkage.checkpoint.busy")

    # -- audit anchor -----------------------------------------------------------------------

    def audit_anchor(self) -> tuple[int, str] | None:
        db = self.db()
        rows = dict(db.execute("SELECT key, value FROM meta WHERE key IN ('audit_seq', 'audit_hash')").fetchall())
        if "audit_seq" not in rows:
            return None
        return int(rows["audit_seq"]), rows.get("audit_hash", "")

    def set_audit_anchor(self, seq: int, digest: str) -> None:
        db = self.db()
        with transaction(db, "IMMEDIATE"):
            row = db.execute("SELECT value FROM meta WHERE key = 'audit_seq'").fetchone()
            if row is not None and int(row[0]) >= seq:
                return
            db.execute("INSERT OR REPLACE INTO meta (key, value) VALUES ('audit_seq', ?), ('audit_hash', ?)",
                       [str(seq), digest])
