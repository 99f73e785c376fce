"""Structured logging: one JSON object per line, on stderr and optionally a rotating file.

Why JSON lines: hospital IT feeds logs to a SIEM or journald; one parseable object per event is
what those tools expect. Callers pass context through ``extra=`` (``event``, ``study`` keys...);
only non-identifying values may be passed (study keys are hashes, never UIDs or names).
"""

from __future__ import annotations

import json
import logging
import logging.handlers
import os
import sys
import time
from pathlib import Path
from typing import Any, TextIO

_STANDARD = set(vars(logging.LogRecord("", 0, "", 0, "", (), None)).keys()) | {"message", "asctime", "taskName"}


class JsonFormatter(logging.Formatter):
    def format(self, record: logging.LogRecord) -> str:
        out: dict[str, Any] = {
            "ts": time.strftime("%Y-%m-%dT%H:%M:%S", time.gmtime(record.created)) + f".{int(record.msecs):03d}Z",
            "level": record.levelname,
            "logger": record.name,
            "msg": _message(record),
        }
        for key, value in record.__dict__.items():
            if key not in _STANDARD and not key.startswith("_"):
                out[key] = value
        if record.exc_info and record.exc_info[0] is not None:
            # Type only: exception messages can quote data (file contents, values) we must not log.
            out["exc_type"] = record.exc_info[0].__name__
        return json.dumps(out, default=str, ensure_ascii=False)


class PrivateRotatingFileHandler(logging.handlers.RotatingFileHandler):
    """A rotating log file the service user alone can read (0600, rotated files too): log lines
    carry study keys and pseudonymous context, and an umask of 022 would make them world-readable."""

    def _open(self) -> TextIO:
        stream = open(self.baseFilename, self.mode, encoding=self.encoding, errors=self.errors,
                      opener=lambda path, flags: os.open(path, flags, 0o600))
        os.fchmod(stream.fileno(), 0o600)  # a file left by an older version may be 0644
        return stream


def _message(record: logging.LogRecord) -> str:
    """The record's message; a third-party library's is scrubbed first (UIDs, long numbers, paths and
    quoted values replaced: :func:`connector.safe_reason.scrub`), since highdicom, pydicom and
    pynetdicom quote the objects they handle. Our own lines carry only non-identifying values."""
    message = record.getMessage()
    if record.name == "connector" or record.name.startswith("connector."):
        return message
    from connector.safe_reason import scrub

    return scrub(message)


def setup_logging(level: str = "INFO", file: Path | None = None, max_bytes: int = 20 * 1024**2,
                  backups: int = 10) -> None:
    root = logging.getLogger()
    for handler in list(root.handlers):
        root.removeHandler(handler)
    formatter = JsonFormatter()
    stderr = logging.StreamHandler(sys.stderr)
    stderr.setFormatter(formatter)
    root.addHandler(stderr)
    if file is not None:
        file.parent.mkdir(parents=True, exist_ok=True, mode=0o700)
        rotating = PrivateRotatingFileHandler(file, maxBytes=max_bytes, backupCount=backups)
        rotating.setFormatter(formatter)
        root.addHandler(rotating)
    root.setLevel(level.upper())
    quiet_libraries()


def quiet_libraries() -> None:
    """Keep third-party chatter out of the logs; pydicom entirely, as its messages quote values
    (a malformed patient name, say) that may identify a patient."""
    for noisy in ("pynetdicom", "apscheduler", "watchdog", "httpx", "httpcore", "highdicom"):
        logging.getLogger(noisy).setLevel(logging.WARNING)
    logging.getLogger("pydicom").setLevel(logging.CRITICAL + 1)
