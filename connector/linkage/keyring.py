"""The ``keyring`` row: the working keys wrapped under the KEK, and how to obtain that KEK.

The row records which kind of KEK locks the table (key file or passphrase, with the scrypt salt and
cost), so the table itself says what it needs; the ``[linkage] key_source`` setting only decides
how a *new* table is locked. A key file that is mid-rotation (``site.key.next``) is recognised and
the rotation finished here, so a crash between the database commit and the rename loses nothing.
"""

from __future__ import annotations

import logging
import sqlite3
from dataclasses import dataclass
from datetime import UTC, datetime
from pathlib import Path

from sqlite_utils import Database

from connector.linkage.crypto import DecryptionFailed, fingerprint, unwrap_key, wrap_key
from connector.linkage.errors import KeyFileError, KeyFilePermissionError, LinkageStateError, WrongKeyError
from connector.linkage.keys import KekSource, KeySet, ScryptParams, next_key_path, promote_next_key_file, read_key_file

log = logging.getLogger(__name__)


@dataclass(frozen=True)
class KeyringRecord:
    generation: int
    kek_kind: str  # "file" | "passphrase"
    scrypt: ScryptParams | None
    kek_fingerprint: str
    wrapped: dict[str, bytes]
    updated_at: str


def read_keyring(db: Database | sqlite3.Connection) -> KeyringRecord | None:
    row = db.execute(
        "SELECT generation, kek_kind, scrypt_salt, scrypt_log_n, scrypt_r, scrypt_p, kek_fingerprint, "
        "wrapped_data_key, wrapped_index_key, wrapped_uid_secret, wrapped_audit_key, updated_at "
        "FROM keyring WHERE id = 1"
    ).fetchone()
    if row is None:
        return None
    gen, kind, salt, log_n, r, p, fp, wd, wi, wu, wa, updated = row
    scrypt = ScryptParams(bytes(salt), log_n, r, p) if kind == "passphrase" else None
    wrapped = {"data_key": bytes(wd), "index_key": bytes(wi), "uid_secret": bytes(wu), "audit_key": bytes(wa)}
    return KeyringRecord(gen, kind, scrypt, fp, wrapped, updated)


def keyring_values(keys: KeySet, kek: bytes, kind: str, scrypt: ScryptParams | None) -> dict[str, object]:
    """The keyring row for ``keys`` wrapped under ``kek``."""
    return {
        "id": 1,
        "generation": keys.generation,
        "kek_kind": kind,
        "scrypt_salt": scrypt.salt if scrypt else None,
        "scrypt_log_n": scrypt.log_n if scrypt else None,
        "scrypt_r": scrypt.r if scrypt else None,
        "scrypt_p": scrypt.p if scrypt else None,
        "kek_fingerprint": fingerprint(kek),
        **{f"wrapped_{name}": wrap_key(kek, name, keys.generation, getattr(keys, name)) for name in KeySet.WRAPPED},
        "updated_at": datetime.now(UTC).isoformat(timespec="seconds"),
    }


def write_keyring(db: Database, values: dict[str, object], *, replace: bool) -> None:
    cols = list(values)
    verb = "INSERT OR REPLACE" if replace else "INSERT OR IGNORE"
    db.execute(
        f"{verb} INTO keyring ({', '.join(cols)}) VALUES ({', '.join('?' for _ in cols)})",
        [values[c] for c in cols],
    )


def unwrap_keyset(record: KeyringRecord, kek: bytes) -> KeySet:
    """Raises DecryptionFailed when ``kek`` is not the table's KEK."""
    return KeySet(record.generation, *(unwrap_key(kek, n, record.generation, record.wrapped[n]) for n in KeySet.WRAPPED))


def unlock(record: KeyringRecord, source: KekSource, db_path: Path) -> tuple[KeySet, bytes]:
    """Unwrap the working keys with the KEK from ``source``; (keys, kek). Raises WrongKeyError."""
    if record.kek_kind == "passphrase":
        assert record.scrypt is not None
        kek = source.passphrase_kek(record.scrypt)
        try:
            return unwrap_keyset(record, kek), kek
        except DecryptionFailed:
            raise WrongKeyError(
                f"the passphrase does not unlock the linkage table {db_path}; nothing was changed"
            ) from None
    if record.kek_kind != "file":
        raise LinkageStateError(f"the linkage table {db_path} has an unknown key kind")
    primary = Path(source.key_file)
    nxt = next_key_path(primary)
    problem: KeyFileError | None = None
    try:
        kek = source.file_kek()
        try:
            keys = unwrap_keyset(record, kek)
        except DecryptionFailed:
            problem = WrongKeyError(
                f"the key file {primary} (fingerprint {fingerprint(kek)}) does not unlock the linkage table "
                f"{db_path} (it needs key {record.kek_fingerprint}); nothing was changed"
            )
        else:
            # A leftover site.key.next (a rotation that never committed) is left alone: a rotation
            # in progress in another process may be about to commit it. The next rotation replaces it.
            return keys, kek
    except KeyFilePermissionError:
        raise
    except KeyFileError as exc:
        problem = exc
    if nxt.exists():
        try:
            kek = read_key_file(nxt, check_permissions=source.check_permissions)
            keys = unwrap_keyset(record, kek)
        except (KeyFileError, DecryptionFailed):
            pass
        else:
            if promote_next_key_file(primary):
                log.warning("linkage.keyfile.rotation_completed")
            return keys, kek
    assert problem is not None
    raise problem
