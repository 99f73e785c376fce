"""Encrypted backup and restore of the linkage table, consistent while the daemon runs.

Backup: SQLite's online backup API copies a consistent snapshot into memory (the daemon keeps
writing meanwhile), which is then encrypted whole with a key derived (HKDF, random salt) from the
table's KEK: chunks of 1 MiB, AES-256-GCM, each bound to the header, its index and a final-chunk
flag, so reordering, truncation or a swapped header all fail. The plaintext never touches disk.

Restore needs the KEK the backup was made with (the header names its fingerprint): the current key
file or passphrase, or ``key_file=`` for a key retired by a later rotation, in which case the restored
table is re-wrapped under the current key file. Stop the daemon before restoring.
"""

from __future__ import annotations

import base64
import json
import logging
import os
import secrets
import sqlite3
import struct
from dataclasses import dataclass
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

from cryptography.exceptions import InvalidTag
from cryptography.hazmat.primitives.ciphers.aead import AESGCM

from connector.linkage.crypto import NONCE_LEN, build_ad, derive_key, fingerprint
from connector.linkage.errors import BackupError, LinkageStateError, WrongKeyError
from connector.linkage.keyring import keyring_values, read_keyring, unlock, unwrap_keyset, write_keyring
from connector.linkage.keys import KekSource, ScryptParams, read_key_file
from connector.linkage.provider import LinkageProvider
from connector.linkage.database import connect, transaction
from connector.store.durable import fsync_dir, write_file_durably

log = logging.getLogger(__name__)

MAGIC = b"SITE-CONNECTOR-LINKAGE-BACKUP\n"
FORMAT = "site-connector-linkage-backup"
CHUNK = 1 << 20
_INFO = "site-connector/linkage/backup/v1"


@dataclass(frozen=True)
class BackupResult:
    path: Path
    bytes: int
    subjects: int
    studies: int
    kek_fingerprint: str


def _snapshot(db_path: Path) -> sqlite3.Connection:
    """A consistent in-memory copy of the live database (online backup API)."""
    src = sqlite3.connect(str(db_path), timeout=30.0)
    mem = sqlite3.connect(":memory:")
    try:
        src.backup(mem)
    finally:
        src.close()
    return mem


def _rollback_journal_header(image: bytes) -> bytes:
    """Mark a serialised WAL-mode image as rollback-journal mode (header bytes 18-19 = 1).

    An in-memory database cannot be in WAL mode, so SQLite refuses to deserialise an image that
    claims it; the daemon's connection switches the restored file back to WAL.
    """
    if len(image) >= 20 and image[18:20] == b"\x02\x02":
        return image[:18] + b"\x01\x01" + image[20:]
    return image


def _counts(conn: sqlite3.Connection) -> tuple[int, int]:
    return (conn.execute("SELECT count(*) FROM subjects").fetchone()[0],
            conn.execute("SELECT count(*) FROM studies").fetchone()[0])


def create_backup(provider: LinkageProvider, out: Path, *, overwrite: bool = False) -> BackupResult:
    out = Path(out)
    if out.exists() and not overwrite:
        raise LinkageStateError(f"{out} already exists (pass --force to replace it)")
    mem = _snapshot(provider.paths.db)
    try:
        record = read_keyring(mem)  # the keyring *in the snapshot*: right even if a rotation just committed
        if record is None:
            raise LinkageStateError("the linkage table has no keyring")
        _keys, kek = unlock(record, provider.kek_source, provider.paths.db)
        subjects, studies = _counts(mem)
        image = _rollback_journal_header(mem.serialize())
    finally:
        mem.close()
    salt = secrets.token_bytes(16)
    header: dict[str, Any] = {
        "format": FORMAT,
        "version": 1,
        "created": datetime.now(UTC).isoformat(timespec="seconds"),
        "kek_kind": record.kek_kind,
        "kek_fingerprint": record.kek_fingerprint,
        "generation": record.generation,
        "salt": base64.b64encode(salt).decode(),
        "chunk_size": CHUNK,
    }
    if record.scrypt is not None:
        header["scrypt"] = {"salt": base64.b64encode(record.scrypt.salt).decode(), "log_n": record.scrypt.log_n,
                            "r": record.scrypt.r, "p": record.scrypt.p}
    header_bytes = json.dumps(header, sort_keys=True).encode()
    aead = AESGCM(derive_key(kek, _INFO, salt))
    parts = [MAGIC, struct.pack(">I", len(header_bytes)), header_bytes]
    chunks = [image[i : i + CHUNK] for i in range(0, len(image), CHUNK)] or [b""]
    for index, chunk in enumerate(chunks):
        nonce = os.urandom(NONCE_LEN)
        ct = aead.encrypt(nonce, chunk, build_ad("backup", header_bytes, str(index), str(index == len(chunks) - 1)))
        parts += [struct.pack(">I", len(ct)), nonce, ct]
    data = b"".join(parts)
    provider.audit("backup", out=str(out), subjects=subjects, studies=studies, bytes=len(data))
    out.parent.mkdir(parents=True, exist_ok=True)
    write_file_durably(out, data, mode=0o600)
    log.info("linkage.backup.written subjects=%d studies=%d", subjects, studies)
    return BackupResult(out, len(data), subjects, studies, record.kek_fingerprint)


def _parse(path: Path) -> tuple[dict[str, Any], bytes, bytes]:
    try:
        data = Path(path).read_bytes()
    except FileNotFoundError:
        raise BackupError(f"backup file not found: {path}") from None
    if not data.startswith(MAGIC) or len(data) < len(MAGIC) + 4:
        raise BackupError(f"not a site-connector linkage backup: {path}")
    (hlen,) = struct.unpack(">I", data[len(MAGIC) : len(MAGIC) + 4])
    start = len(MAGIC) + 4
    header_bytes = data[start : start + hlen]
    try:
        header = json.loads(header_bytes)
    except ValueError:
        raise BackupError(f"backup header is damaged: {path}") from None
    if header.get("format") != FORMAT or header.get("version") != 1:
        raise BackupError(f"unsupported backup format in {path}")
    return header, header_bytes, data[start + hlen :]


def read_backup(path: Path, source: KekSource, *, key_file: Path | None = None) -> tuple[bytes, bytes, dict[str, Any]]:
    """Decrypt a backup; (database image, KEK, header). Raises WrongKeyError or BackupError."""
    header, header_bytes, body = _parse(path)
    if header["kek_kind"] == "passphrase":
        s = header["scrypt"]
        kek = source.passphrase_kek(ScryptParams(base64.b64decode(s["salt"]), s["log_n"], s["r"], s["p"]))
        what = "the passphrase"
    else:
        kek = read_key_file(key_file) if key_file is not None else source.file_kek()
        what = f"the key file {key_file or source.key_file}"
    if fingerprint(kek) != header["kek_fingerprint"]:
        raise WrongKeyError(
            f"{what} (fingerprint {fingerprint(kek)}) did not make this backup (it needs key "
            f"{header['kek_fingerprint']}); if the key was rotated since, pass the retired key file with --key-file"
        )
    aead = AESGCM(derive_key(kek, _INFO, base64.b64decode(header["salt"])))
    out, pos, index, final_seen = [], 0, 0, False
    while pos < len(body):
        if final_seen:
            raise BackupError(f"backup {path} has data after its last chunk")
        if pos + 4 + NONCE_LEN > len(body):
            raise BackupError(f"backup {path} is truncated")
        (clen,) = struct.unpack(">I", body[pos : pos + 4])
        nonce = body[pos + 4 : pos + 4 + NONCE_LEN]
        ct = body[pos + 4 + NONCE_LEN : pos + 4 + NONCE_LEN + clen]
        pos += 4 + NONCE_LEN + clen
        final_seen = pos >= len(body)
        try:
            out.append(aead.decrypt(nonce, ct, build_ad("backup", header_bytes, str(index), str(final_seen))))
        except InvalidTag:
            raise BackupError(f"backup {path} is damaged or truncated (chunk {index} fails authentication)") from None
        index += 1
    if not final_seen:
        raise BackupError(f"backup {path} is truncated")
    return b"".join(out), kek, header


@dataclass(frozen=True)
class RestoreResult:
    subjects: int
    studies: int
    rewrapped: bool


def restore_backup(
    backup: Path, db_path: Path, source: KekSource, *, key_file: Path | None = None, force: bool = False, sync: bool = True
) -> RestoreResult:
    """Replace (or create) the linkage database from ``backup``. The daemon must be stopped.

    Everything is verified (decryption, SQLite integrity, keyring unlock) before the live file is
    touched; the swap is an atomic rename. With ``key_file`` (a retired key), the restored keyring is
    re-wrapped under the current key file so the daemon can open it.
    """
    image, kek, header = read_backup(backup, source, key_file=key_file)
    mem = sqlite3.connect(":memory:")
    try:
        mem.deserialize(_rollback_journal_header(image))
        check = mem.execute("PRAGMA integrity_check").fetchone()[0]
        if check != "ok":
            raise BackupError(f"backup {backup} decrypts but the database inside fails its integrity check")
        record = read_keyring(mem)
        if record is None:
            raise BackupError(f"backup {backup} holds no keyring")
        try:
            keys = unwrap_keyset(record, kek)
        except Exception:
            raise WrongKeyError("the backup's keyring does not open with the backup's key") from None
        subjects, studies = _counts(mem)
        if db_path.exists() and not force:
            raise LinkageStateError(f"{db_path} exists; stop the daemon and pass --force to replace it")
        db_path.parent.mkdir(parents=True, exist_ok=True, mode=0o700)
        tmp = db_path.with_name(db_path.name + ".restore.part")
        for leftover in (tmp, Path(f"{tmp}-wal"), Path(f"{tmp}-shm")):
            leftover.unlink(missing_ok=True)
        os.close(os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600))
        dst = sqlite3.connect(str(tmp))
        try:
            mem.backup(dst)
            dst.execute("PRAGMA journal_mode = DELETE")
        finally:
            dst.close()
        with open(tmp, "rb") as fh:
            os.fsync(fh.fileno())
    finally:
        mem.close()
    for stale in (Path(f"{db_path}-wal"), Path(f"{db_path}-shm")):
        stale.unlink(missing_ok=True)
    os.replace(tmp, db_path)
    fsync_dir(db_path.parent)
    rewrapped = False
    if key_file is not None and header["kek_kind"] == "file":
        current = source.file_kek()
        if fingerprint(current) != fingerprint(kek):
            db = connect(db_path, sync=sync)
            try:
                with transaction(db, "IMMEDIATE"):
                    write_keyring(db, keyring_values(keys, current, "file", None), replace=True)
                db.execute("PRAGMA wal_checkpoint(TRUNCATE)")
            finally:
                db.close()
            rewrapped = True
    log.info("linkage.restore.done subjects=%d studies=%d", subjects, studies)
    return RestoreResult(subjects, studies, rewrapped)
