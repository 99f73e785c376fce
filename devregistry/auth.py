"""The dev registry's bearer token: read from a file, or created once in the data folder."""

from __future__ import annotations

import hmac
import os
import secrets
from pathlib import Path

DEFAULT_TOKEN_NAME = "token"


def load_or_create_token(data_dir: Path, token_file: Path | None = None) -> tuple[str, Path]:
    """(token, file it came from). Without ``token_file``, ``<data>/token`` is used, created 0600 if absent."""
    path = token_file or (data_dir / DEFAULT_TOKEN_NAME)
    if token_file is None and not path.exists():
        path.parent.mkdir(parents=True, exist_ok=True, mode=0o700)
        fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
        with os.fdopen(fd, "w") as fh:
            fh.write(secrets.token_urlsafe(32) + "\n")
    token = path.read_text().strip()
    if not token:
        raise ValueError(f"token file {path} is empty")
    return token, path


def bearer_ok(header: str | None, token: str) -> bool:
    """Constant-time check of an ``Authorization: Bearer ...`` header."""
    if not header or not header.lower().startswith("bearer "):
        return False
    return hmac.compare_digest(header[7:].strip().encode(), token.encode())
