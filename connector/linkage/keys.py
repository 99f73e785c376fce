"""The key hierarchy: a key-encryption key (KEK) from a key file or a passphrase wraps four keys.

::

    KEK (key file, 32 random bytes, mode 0600 | scrypt(passphrase, salt))
     |-- data key      AES-256-GCM for every identifying value        (replaced by rotate-key)
     |-- index key     HMAC-SHA256 blind indexes of patient ID/issuer (replaced by rotate-key)
     |-- UID secret    keys the de-identification UID/date HMACs      (kept for the life of the site)
     '-- audit key     HMACs the audit log entries                    (kept; the log is append-only)

Wrapped keys live in the database (``keyring`` table); only the KEK lives outside it. Stealing the
database without the KEK (or the key file without the database) yields nothing.
"""

from __future__ import annotations

import base64
import binascii
import os
import secrets
import stat
from collections.abc import Callable, Mapping
from dataclasses import dataclass
from pathlib import Path

from cryptography.hazmat.primitives.kdf.scrypt import Scrypt

from connector.linkage.crypto import KEY_LEN
from connector.linkage.errors import (
    KeyFileError,
    KeyFileExistsError,
    KeyFilePermissionError,
    PassphraseMissingError,
)
from connector.store.durable import fsync_dir

KEY_FILE_MAGIC = "site-connector-linkage-kek-v1:"
NEXT_SUFFIX = ".next"  # a rotation's new key file until the database commit makes it current
MIN_PASSPHRASE_LEN = 12


def create_key_file(path: Path) -> None:
    """Create a new random KEK file: mode 0600, parent folder 0700; never overwrite an existing one.

    ``site-connector init`` calls this. Losing the file loses the linkage table (keep it backed up,
    separately from database backups).
    """
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True, mode=0o700)
    os.chmod(path.parent, 0o700)
    _write_new_key_file(path, secrets.token_bytes(KEY_LEN))


def _write_new_key_file(path: Path, kek: bytes) -> None:
    content = (KEY_FILE_MAGIC + base64.b64encode(kek).decode("ascii") + "\n").encode("ascii")
    try:
        fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
    except FileExistsError:
        raise KeyFileExistsError(f"key file already exists, refusing to overwrite it: {path}") from None
    try:
        os.fchmod(fd, 0o600)
        os.write(fd, content)
        os.fsync(fd)
    finally:
        os.close(fd)
    fsync_dir(path.parent)


def check_key_file_permissions(path: Path) -> None:
    """Refuse a key file readable/writable by group or others, or in a folder others can write."""
    try:
        st = os.stat(path)
    except FileNotFoundError:
        raise KeyFileError(f"key file not found: {path} (run 'site-connector init' or restore it)") from None
    if not stat.S_ISREG(st.st_mode):
        raise KeyFileError(f"key file is not a regular file: {path}")
    if st.st_mode & 0o077:
        raise KeyFilePermissionError(
            f"key file {path} is accessible by group or others (mode {stat.S_IMODE(st.st_mode):04o}); "
            f"run: chmod 600 {path}"
        )
    parent = os.stat(path.parent)
    if parent.st_mode & 0o022:
        raise KeyFilePermissionError(
            f"key folder {path.parent} is writable by group or others (mode {stat.S_IMODE(parent.st_mode):04o}); "
            f"run: chmod 700 {path.parent}"
        )


def read_key_file(path: Path, *, check_permissions: bool = True) -> bytes:
    """The KEK held in ``path``, after the permission check."""
    path = Path(path)
    if check_permissions:
        check_key_file_permissions(path)
    try:
        text = path.read_text(encoding="ascii").strip()
    except FileNotFoundError:
        raise KeyFileError(f"key file not found: {path}") from None
    except (UnicodeDecodeError, OSError):
        raise KeyFileError(f"key file cannot be read as a site-connector key: {path}") from None
    if not text.startswith(KEY_FILE_MAGIC):
        raise KeyFileError(f"not a site-connector linkage key file: {path}")
    try:
        kek = base64.b64decode(text[len(KEY_FILE_MAGIC):], validate=True)
    except (binascii.Error, ValueError):
        raise KeyFileError(f"key file is damaged: {path}") from None
    if len(kek) != KEY_LEN:
        raise KeyFileError(f"key file is damaged (wrong key length): {path}")
    return kek


def destroy_key_file(path: Path) -> None:
    """Best-effort removal of a retired key: overwrite in place, fsync, unlink.

    (On copy-on-write or wear-levelled storage the old blocks may survive; the retired key only
    opens copies of the database taken before the rotation.)
    """
    try:
        size = path.stat().st_size
        with open(path, "r+b") as fh:
            fh.write(b"\x00" * size)
            fh.flush()
            os.fsync(fh.fileno())
        path.unlink()
        fsync_dir(path.parent)
    except FileNotFoundError:
        pass


def next_key_path(primary: Path) -> Path:
    return primary.with_name(primary.name + NEXT_SUFFIX)


def write_next_key_file(primary: Path, kek: bytes) -> Path:
    """Write a rotation's new KEK beside the current one (``site.key.next``), replacing a stale one."""
    nxt = next_key_path(primary)
    nxt.unlink(missing_ok=True)
    _write_new_key_file(nxt, kek)
    return nxt


def promote_next_key_file(primary: Path) -> bool:
    """Make ``site.key.next`` the key file (atomic rename) and overwrite the retired key's bytes.

    Safe when several processes race to do it: only a file whose content differs from the new key
    is ever overwritten, and only through a descriptor opened on the old inode. False when there was
    nothing to promote (another process did it).
    """
    nxt = next_key_path(primary)
    try:
        fd: int | None = os.open(primary, os.O_RDWR)
    except FileNotFoundError:
        fd = None
    try:
        try:
            new = nxt.read_bytes()
        except FileNotFoundError:
            return False
        old = os.pread(fd, 4096, 0) if fd is not None else b""
        try:
            os.replace(nxt, primary)
        except FileNotFoundError:
            return False
        fsync_dir(primary.parent)
        if fd is not None and old and old != new:
            os.pwrite(fd, b"\x00" * len(old), 0)
            os.fsync(fd)
        return True
    finally:
        if fd is not None:
            os.close(fd)


@dataclass(frozen=True)
class ScryptParams:
    salt: bytes
    log_n: int
    r: int = 8
    p: int = 1

    @classmethod
    def fresh(cls, log_n: int) -> ScryptParams:
        return cls(salt=secrets.token_bytes(16), log_n=log_n)


def derive_passphrase_kek(passphrase: str, params: ScryptParams) -> bytes:
    if not passphrase:
        raise PassphraseMissingError("the passphrase is empty")
    kdf = Scrypt(salt=params.salt, length=KEY_LEN, n=2**params.log_n, r=params.r, p=params.p)
    return kdf.derive(passphrase.encode("utf-8"))


@dataclass(frozen=True)
class KeySet:
    """The four working keys, unwrapped. Never written anywhere in clear."""

    generation: int
    data_key: bytes
    index_key: bytes
    uid_secret: bytes
    audit_key: bytes

    WRAPPED = ("data_key", "index_key", "uid_secret", "audit_key")

    @classmethod
    def generate(cls, generation: int = 1) -> KeySet:
        return cls(generation, *(secrets.token_bytes(KEY_LEN) for _ in range(4)))


@dataclass
class KekSource:
    """Where the KEK comes from. The database says which kind it needs; this supplies either.

    ``passphrase`` (explicit) wins over the environment variable, which wins over ``prompt``.
    """

    key_file: Path
    passphrase_env: str = "SITE_CONNECTOR_PASSPHRASE"
    passphrase: str | None = None
    prompt: Callable[[str], str] | None = None
    environ: Mapping[str, str] | None = None
    check_permissions: bool = True

    def file_kek(self) -> bytes:
        return read_key_file(self.key_file, check_permissions=self.check_permissions)

    def get_passphrase(self) -> str:
        if self.passphrase:
            return self.passphrase
        env = os.environ if self.environ is None else self.environ
        value = env.get(self.passphrase_env)
        if value:
            return value
        if self.prompt is not None:
            value = self.prompt("Linkage table passphrase: ")
            if value:
                self.passphrase = value
                return value
        raise PassphraseMissingError(
            f"the linkage table is locked with a passphrase: set ${self.passphrase_env} (or run the command "
            "interactively to be prompted)"
        )

    def passphrase_kek(self, params: ScryptParams) -> bytes:
        return derive_passphrase_kek(self.get_passphrase(), params)
