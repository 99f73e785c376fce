"""Request body parsing: url-encoded forms and multipart uploads, with the stdlib only.

Why ``email.parser`` for multipart: the ``cgi`` module is deprecated (gone in Python 3.13), and a
multipart/form-data body is a MIME message, which the email package parses robustly.
"""

from __future__ import annotations

import urllib.parse
from dataclasses import dataclass, field
from email.parser import BytesParser
from email.policy import HTTP


class FormError(Exception):
    """A malformed or unexpected request body (answered with 400)."""


@dataclass
class Upload:
    filename: str
    data: bytes


@dataclass
class Form:
    fields: dict[str, str] = field(default_factory=dict)
    files: dict[str, Upload] = field(default_factory=dict)

    def get(self, name: str, default: str = "") -> str:
        return self.fields.get(name, default)


def parse_body(content_type: str, body: bytes) -> Form:
    ctype = (content_type or "").split(";", 1)[0].strip().lower()
    if ctype == "application/x-www-form-urlencoded":
        try:
            pairs = urllib.parse.parse_qsl(body.decode("utf-8"), keep_blank_values=True, strict_parsing=False,
                                           max_num_fields=100)
        except (UnicodeDecodeError, ValueError):
            raise FormError("malformed form") from None
        return Form(fields=dict(pairs))
    if ctype == "multipart/form-data":
        return _parse_multipart(content_type, body)
    raise FormError("unsupported content type")


def _parse_multipart(content_type: str, body: bytes) -> Form:
    head = f"Content-Type: {content_type}\r\nMIME-Version: 1.0\r\n\r\n".encode("latin-1", "replace")
    message = BytesParser(policy=HTTP).parsebytes(head + body)
    if not message.is_multipart():
        raise FormError("malformed multipart body")
    form = Form()
    for part in message.iter_parts():
        name = part.get_param("name", header="content-disposition")
        if not name or not isinstance(name, str):
            continue
        raw = part.get_payload(decode=True)
        payload = raw if isinstance(raw, bytes) else b""
        filename = part.get_filename()
        if filename is not None:
            form.files[name] = Upload(filename, payload)
        else:
            form.fields[name] = payload.decode("utf-8", "replace")
    return form
