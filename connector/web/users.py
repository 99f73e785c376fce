"""Dashboard users: a small JSON file of names and scrypt password hashes.

Each user has a role: ``it`` (runs the connector: pages, quarantine, outbox, backfill) or
``coordinator`` (the same, and may also find a patient's studies by MRN or accession number and
import follow-up files, whose preview resolves MRNs to pseudonyms). A user written before roles
existed reads as ``it``: what resolves identifiers is granted only when asked for. Who may use
which page is declared on each route (:mod:`connector.web.permissions`).

Why a local file and not the hospital directory: the connector must work on an isolated server
on day one; a site with LDAP can put a reverse proxy in front. The file is written atomically
with mode 0600, and only hashes are stored (scrypt, a fresh salt per password, parameters stored
with the hash so they can be raised later without breaking old entries). A new password (``users
add``, also with ``--replace``) must pass :mod:`connector.web.password_policy`: long enough, not
one of the commonest passwords, not the user's name.
"""

from __future__ import annotations

import base64
import hashlib
import hmac
import json
import os
import re
import secrets
import threading
import time
from dataclasses import dataclass
from pathlib import Path

from connector.store.durable import write_file_durably
from connector.web.password_policy import MAX_LENGTH as MAX_PASSWORD_LENGTH
from connector.web.password_policy import MIN_LENGTH as MIN_PASSWORD_LENGTH
from connector.web.password_policy import password_problem
from connector.config import Config

NAME_RE = re.compile(r"^[A-Za-z0-9][A-Za-z0-9._-]{0,63}$")
# scrypt N=2**15, r=8, p=1: 32 MiB and ~0.1 s per check, dear enough for an offline guesser.
SCRYPT_N, SCRYPT_R, SCRYPT_P = 2**15, 8, 1
_MAXMEM = 64 * 1024**2
ROLES = ("it", "coordinator")
DEFAULT_ROLE = "it"
COORDINATOR = "coordinator"


class UserError(Exception):
    """A user-file problem worth one line to the operator (never contains a password)."""


@dataclass(frozen=True)
class User:
    name: str
    created_at: str
    role: str = DEFAULT_ROLE


def hash_password(password: str, *, n: int = SCRYPT_N, r: int = SCRYPT_R, p: int = SCRYPT_P) -> str:
    salt = secrets.token_bytes(16)
    digest = hashlib.scrypt(password.encode(), salt=salt, n=n, r=r, p=p, maxmem=_MAXMEM, dklen=32)
    return "$".join(["scrypt", str(n), str(r), str(p), _b64(salt), _b64(digest)])


def check_password(password: str, encoded: str) -> bool:
    try:
        scheme, n, r, p, salt, digest = encoded.split("$")
        if scheme != "scrypt":
            return False
        want = base64.b64decode(digest)
        got = hashlib.scrypt(password.encode(), salt=base64.b64decode(salt), n=int(n), r=int(r), p=int(p),
                             maxmem=_MAXMEM, dklen=len(want))
    except (ValueError, TypeError):
        return False
    return hmac.compare_digest(got, want)


def _role(entry: dict[str, str]) -> str:
    role = entry.get("role", DEFAULT_ROLE)
    return role if role in ROLES else DEFAULT_ROLE


def _b64(data: bytes) -> str:
    return base64.b64encode(data).decode("ascii")


def validate_name(name: str) -> str:
    if not NAME_RE.match(name):
        raise UserError("user name must be 1-64 letters, digits, '.', '_' or '-', starting with a letter or digit")
    return name


def validate_password(password: str, name: str = "") -> str:
    """The password, or UserError saying why it is refused (:mod:`connector.web.password_policy`)."""
    problem = password_problem(password, name)
    if problem:
        raise UserError(problem)
    return password


def validate_role(role: str) -> str:
    if role not in ROLES:
        raise UserError(f"role must be one of {', '.join(ROLES)} (got {role!r})")
    return role


def _owner_of_nearest(folder: Path) -> tuple[int, int] | None:
    for candidate in (folder, *folder.parents):
        if candidate.exists():
            st = candidate.stat()
            return st.st_uid, st.st_gid
    return None


class UserFile:
    """Read and change the users file. Re-reads on change, so ``users add`` works while the daemon runs."""

    def __init__(self, path: Path) -> None:
        self.path = Path(path)
        self._lock = threading.Lock()
        self._cache: tuple[int, int, dict[str, dict[str, str]]] | None = None
        # Checked against when the name is unknown, so a wrong name costs as long as a wrong password.
        self._dummy = hash_password(secrets.token_hex(8))

    def _load(self) -> dict[str, dict[str, str]]:
        try:
            st = self.path.stat()
        except FileNotFoundError:
            return {}
        if self._cache and self._cache[:2] == (st.st_mtime_ns, st.st_size):
            return self._cache[2]
        try:
            data = json.loads(self.path.read_text())
            users = data["users"]
            if not isinstance(users, dict):
                raise TypeError
        except (OSError, ValueError, KeyError, TypeError):
            raise UserError(f"users file {self.path} is unreadable or damaged") from None
        self._cache = (st.st_mtime_ns, st.st_size, users)
        return users

    def _save(self, users: dict[str, dict[str, str]]) -> None:
        owner = _owner_of_nearest(self.path.parent)
        created = [d for d in (self.path.parent, *self.path.parent.parents) if not d.exists()]
        self.path.parent.mkdir(parents=True, exist_ok=True, mode=0o700)
        body = json.dumps({"version": 1, "users": users}, indent=2, sort_keys=True).encode()
        write_file_durably(self.path, body)
        os.chmod(self.path, 0o600)
        if os.geteuid() == 0 and owner is not None:
            # `users add` run as root must leave a file the service user (who owns the data
            # folder) can still read: hand what we created to the owner of the folder above.
            for item in [*created, self.path]:
                os.chown(item, *owner)
        self._cache = None

    def list(self) -> list[User]:
        with self._lock:
            return [User(name, entry.get("created_at", ""), _role(entry)) for name, entry in sorted(self._load().items())]

    def add(self, name: str, password: str, *, replace: bool = False, role: str | None = None) -> None:
        """Add a user (role ``it`` unless given); with ``replace``, a new password and, if given, role."""
        validate_name(name)
        validate_password(password, name)
        if role is not None:
            validate_role(role)
        with self._lock:
            users = dict(self._load())
            if name in users and not replace:
                raise UserError(f"user {name!r} already exists (use --replace to set a new password)")
            old = users.get(name, {})
            users[name] = {"password": hash_password(password),
                           "created_at": time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime()),
                           "role": role or _role(old)}
            self._save(users)

    def set_role(self, name: str, role: str) -> None:
        validate_role(role)
        with self._lock:
            users = dict(self._load())
            if name not in users:
                raise UserError(f"no user {name!r}")
            users[name] = {**users[name], "role": role}
            self._save(users)

    def role(self, name: str) -> str | None:
        """The user's role, or None when there is no such user (or the file is unreadable)."""
        with self._lock:
            try:
                entry = self._load().get(name)
            except UserError:
                return None
        return None if entry is None else _role(entry)

    def remove(self, name: str) -> None:
        with self._lock:
            users = dict(self._load())
            if name not in users:
                raise UserError(f"no user {name!r}")
            del users[name]
            self._save(users)

    def exists(self, name: str) -> bool:
        """Checked on every dashboard request, so removing a user ends their sessions at once."""
        with self._lock:
            try:
                return name in self._load()
            except UserError:
                return False

    def verify(self, name: str, password: str) -> bool:
        """True when the name exists and the password matches; same cost either way."""
        with self._lock:
            entry = self._load().get(name)
        if entry is None or len(password) > MAX_PASSWORD_LENGTH:
            check_password(password[:MAX_PASSWORD_LENGTH], self._dummy)
            return False
        return check_password(password, entry.get("password", ""))



def users_path(config: Config) -> Path:
    """The users file the dashboard and ``site-connector users`` share."""
    return config.http.users_file or config.storage.data_dir / "web" / "users.json"
