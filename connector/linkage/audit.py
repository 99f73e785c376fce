"""Tamper-evident audit log of every read of identifiers and every key operation.

One JSON object per line. Each entry carries ``prev`` (SHA-256 of the previous line's bytes) and
``mac`` (HMAC-SHA256 of the entry under the audit key, which is wrapped by the KEK like the other
keys). Editing, inserting or deleting a line breaks the chain at that line; recomputing the chain
requires the audit key; cutting entries off the end is caught by the anchor (last sequence number and
hash) kept in the linkage database. Entries hold the action, time, OS user and counts or pseudonyms,
never a patient identifier. Appends from several processes are serialised with ``flock``.
"""

from __future__ import annotations

import fcntl
import hashlib
import hmac
import json
import logging
import os
import pwd
import socket
from collections.abc import Callable
from dataclasses import dataclass
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

from connector.linkage.errors import AuditLogError

log = logging.getLogger(__name__)

GENESIS = "0" * 64
_TAIL_BYTES = 65536

Anchor = tuple[int, str]  # (seq, sha256 hex of that line)


def _canonical(obj: dict[str, Any]) -> bytes:
    return json.dumps(obj, sort_keys=True, separators=(",", ":"), ensure_ascii=True).encode("ascii")


def os_user() -> dict[str, Any]:
    uid = os.geteuid()
    try:
        name = pwd.getpwuid(uid).pw_name
    except KeyError:
        name = str(uid)
    who: dict[str, Any] = {"user": name, "uid": uid}
    if os.environ.get("SUDO_USER"):
        who["sudo_user"] = os.environ["SUDO_USER"]
    return who


@dataclass(frozen=True)
class AuditReport:
    ok: bool
    entries: int
    first_bad_seq: int | None = None
    first_bad_line: int | None = None
    reason: str = ""

    def as_dict(self) -> dict[str, Any]:
        return {
            "ok": self.ok,
            "entries": self.entries,
            "first_bad_seq": self.first_bad_seq,
            "first_bad_line": self.first_bad_line,
            "reason": self.reason,
        }


class AuditLog:
    def __init__(
        self,
        path: Path,
        audit_key: bytes,
        *,
        anchor_get: Callable[[], Anchor | None] | None = None,
        anchor_set: Callable[[int, str], None] | None = None,
    ) -> None:
        self.path = Path(path)
        self._key = audit_key
        self._anchor_get = anchor_get
        self._anchor_set = anchor_set

    def _mac(self, entry: dict[str, Any]) -> str:
        return hmac.new(self._key, _canonical(entry), hashlib.sha256).hexdigest()

    def append(self, action: str, **details: str | int | bool | None) -> int:
        """Append one entry; returns its sequence number. Raises AuditLogError if it cannot."""
        try:
            self.path.parent.mkdir(parents=True, exist_ok=True, mode=0o700)
            fd = os.open(self.path, os.O_RDWR | os.O_APPEND | os.O_CREAT, 0o600)
        except OSError as exc:
            raise AuditLogError(f"cannot open the audit log {self.path}: {exc.strerror}") from None
        try:
            fcntl.flock(fd, fcntl.LOCK_EX)
            seq, prev = self._tail(fd)
            entry: dict[str, Any] = {
                "seq": seq + 1,
                "time": datetime.now(UTC).isoformat(timespec="milliseconds"),
                **os_user(),
                "pid": os.getpid(),
                "host": socket.gethostname(),
                "action": action,
                "details": {k: v for k, v in details.items() if v is not None},
                "prev": prev,
            }
            entry["mac"] = self._mac(entry)
            line = _canonical(entry)
            os.write(fd, line + b"\n")
            os.fsync(fd)
            if self._anchor_set is not None:
                self._anchor_set(seq + 1, hashlib.sha256(line).hexdigest())
            return seq + 1
        except OSError as exc:
            raise AuditLogError(f"cannot write the audit log {self.path}: {exc.strerror}") from None
        finally:
            os.close(fd)  # releases the flock

    def _tail(self, fd: int) -> tuple[int, str]:
        """(seq, hash) of the last entry, (0, GENESIS) for an empty log."""
        size = os.fstat(fd).st_size
        if size == 0:
            return 0, GENESIS
        start = max(0, size - _TAIL_BYTES)
        data = os.pread(fd, size - start, start)
        if not data.endswith(b"\n"):
            raise AuditLogError(f"the audit log's last entry is incomplete; run 'linkage audit --verify' ({self.path})")
        last = data.rstrip(b"\n").rsplit(b"\n", 1)[-1]
        try:
            seq = int(json.loads(last)["seq"])
        except (ValueError, KeyError, TypeError):
            raise AuditLogError(f"the audit log's last entry is damaged; run 'linkage audit --verify' ({self.path})") from None
        return seq, hashlib.sha256(last).hexdigest()

    def entries(self) -> list[dict[str, Any]]:
        """All parseable entries (for display); use :meth:`verify` to check them."""
        if not self.path.exists():
            return []
        out = []
        for raw in self.path.read_bytes().splitlines():
            try:
                out.append(json.loads(raw))
            except ValueError:
                out.append({"damaged": True})
        return out

    def verify(self) -> AuditReport:
        """Check the whole chain and the database anchor; name the first bad entry."""
        data = self.path.read_bytes() if self.path.exists() else b""
        lines = data.split(b"\n")
        if lines and lines[-1] == b"":
            lines.pop()
        prev, count = GENESIS, 0
        hashes: dict[int, str] = {}
        for lineno, line in enumerate(lines, start=1):
            seq = count + 1
            problem = self._check_line(line, seq, prev)
            if problem is None and not data.endswith(b"\n") and lineno == len(lines):
                problem = "is incomplete"
            if problem is not None:
                return AuditReport(False, count, seq, lineno, f"entry {seq} (line {lineno}) {problem}")
            prev = hashlib.sha256(line).hexdigest()
            hashes[seq] = prev
            count += 1
        anchor = self._anchor_get() if self._anchor_get is not None else None
        if anchor is not None:
            seq, digest = anchor
            if seq > count:
                return AuditReport(False, count, count + 1, None,
                                   f"entries {count + 1}..{seq} are missing (the log was truncated)")
            if seq > 0 and hashes.get(seq) != digest:
                return AuditReport(False, count, seq, seq, f"entry {seq} does not match the database anchor")
        return AuditReport(True, count)

    def _check_line(self, line: bytes, seq: int, prev: str) -> str | None:
        """Why the line cannot be entry ``seq`` following a line hashing to ``prev``; None if it can."""
        try:
            entry = json.loads(line)
            if not isinstance(entry, dict):
                raise ValueError
        except ValueError:
            return "is not valid JSON"
        if entry.get("seq") != seq:
            return f"has sequence number {entry.get('seq')!r}"
        mac = entry.pop("mac", None)
        if not isinstance(mac, str) or not hmac.compare_digest(mac, self._mac(entry)):
            return "was modified (MAC mismatch)"
        if entry.get("prev") != prev:
            return f"does not follow entry {seq - 1} (an entry was removed, inserted or reordered)"
        return None
