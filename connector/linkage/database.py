"""The linkage database file: connections with their pragmas, the schema, transactions.

Layout (SQLite, own file, WAL, accessed through sqlite-utils): see :mod:`connector.linkage.store`.
"""

from __future__ import annotations

import os
import sqlite3
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

from sqlite_utils import Database

from connector.store.transactions import sql_transaction
from connector.store.wal_mode import enable_wal

SCHEMA_VERSION = "1"
SUBJECT_FIELDS = ("patient_id", "issuer", "name", "birth_date", "sex", "date_offset", "index_date")
STUDY_FIELDS = ("original_study_uid", "accession_number")


def connect(path: Path, *, sync: bool = True) -> Database:
    """A connection with the pragmas every linkage connection needs (driver autocommit mode)."""
    conn = sqlite3.connect(str(path), timeout=30.0, isolation_level=None, check_same_thread=False)
    db = Database(conn, execute_plugins=False)
    db.execute("PRAGMA busy_timeout = 30000")
    db.execute("PRAGMA foreign_keys = ON")
    db.execute("PRAGMA secure_delete = ON")
    db.execute(f"PRAGMA synchronous = {'FULL' if sync else 'NORMAL'}")
    enable_wal(conn)
    return db


def create_db_file(path: Path) -> bool:
    """Create an empty database file with mode 0600 in a 0700 folder; False if it already existed.

    SQLite gives the -wal and -shm files the database file's permissions, so they are 0600 too.
    """
    path.parent.mkdir(parents=True, exist_ok=True, mode=0o700)
    try:
        fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
    except FileExistsError:
        return False
    os.close(fd)
    return True


def ensure_schema(db: Database) -> None:
    """Create the tables (idempotent). Call inside a write transaction."""
    db["meta"].create({"key": str, "value": str}, pk="key", if_not_exists=True)
    db["keyring"].create(
        {
            "id": int,
            "generation": int,
            "kek_kind": str,
            "scrypt_salt": bytes,
            "scrypt_log_n": int,
            "scrypt_r": int,
            "scrypt_p": int,
            "kek_fingerprint": str,
            "wrapped_data_key": bytes,
            "wrapped_index_key": bytes,
            "wrapped_uid_secret": bytes,
            "wrapped_audit_key": bytes,
            "updated_at": str,
        },
        pk="id",
        not_null=["generation", "kek_kind", "kek_fingerprint", "wrapped_data_key", "wrapped_index_key",
                  "wrapped_uid_secret", "wrapped_audit_key"],
        if_not_exists=True,
    )
    db["subjects"].create(
        {"id": int, "pseudonym": str, "blind_index": bytes, **{c: bytes for c in SUBJECT_FIELDS}},
        pk="id",
        not_null=["pseudonym", "blind_index", *SUBJECT_FIELDS],
        if_not_exists=True,
    )
    db["subjects"].create_index(["pseudonym"], unique=True, if_not_exists=True)
    db["subjects"].create_index(["blind_index"], unique=True, if_not_exists=True)
    db["studies"].create(
        {"id": int, "deid_study_uid": str, "pseudonym": str, "study_index": bytes, **{c: bytes for c in STUDY_FIELDS}},
        pk="id",
        not_null=["deid_study_uid", "pseudonym", "study_index", *STUDY_FIELDS],
        foreign_keys=[("pseudonym", "subjects", "pseudonym")],
        if_not_exists=True,
    )
    db["studies"].create_index(["deid_study_uid"], unique=True, if_not_exists=True)
    db["studies"].create_index(["study_index"], unique=True, if_not_exists=True)
    db["studies"].create_index(["pseudonym"], if_not_exists=True)
    db.execute("INSERT OR IGNORE INTO meta (key, value) VALUES ('schema_version', ?)", [SCHEMA_VERSION])


def schema_version(db: Database) -> str | None:
    if "meta" not in db.table_names():
        return None
    row = db.execute("SELECT value FROM meta WHERE key = 'schema_version'").fetchone()
    return row[0] if row else None


@contextmanager
def transaction(db: Database, mode: str = "") -> Iterator[Database]:
    """``BEGIN [IMMEDIATE]`` ... ``COMMIT``, rolled back on any exception."""
    with sql_transaction(db.conn, mode):
        yield db
