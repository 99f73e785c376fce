"""MLLP framing (HL7 v2 Minimal Lower Layer Protocol, release 2) and the ACKs we send.

A message travels as ``<VT> message <FS><CR>`` (0x0B ... 0x1C 0x0D). The reader is strict about the
frame and bounded in size: bytes that do not start a frame (a port scanner, a TLS client on a plain
port, a web browser) end the connection, and a frame larger than ``max_bytes`` is refused without
being buffered whole.
"""

from __future__ import annotations

import socket
from datetime import datetime, timezone

START, END, CR = b"\x0b", b"\x1c", b"\x0d"
TRAILER = END + CR


class NotMllp(Exception):
    """The peer sent bytes outside an MLLP frame: the connection is closed without an answer."""


class FrameTooLarge(Exception):
    """A frame grew past the limit. ``head`` is its beginning, to find the message control ID."""

    def __init__(self, head: bytes) -> None:
        super().__init__("MLLP frame larger than the configured maximum")
        self.head = head


def frame(message: bytes) -> bytes:
    return START + message + TRAILER


class FrameReader:
    """Reads MLLP frames from one socket; ``read()`` returns a message, or None at a clean end."""

    def __init__(self, sock: socket.socket, max_bytes: int, chunk: int = 65536) -> None:
        self.sock = sock
        self.max_bytes = max_bytes
        self.chunk = chunk
        self._buf = bytearray()

    def _fill(self) -> bool:
        data = self.sock.recv(self.chunk)
        if not data:
            return False
        self._buf += data
        return True

    def read(self) -> bytes | None:
        # between frames, only line ends (some engines send CR/LF after the trailer) may appear
        while True:
            stripped = self._buf.lstrip(b"\r\n")
            if stripped:
                if stripped[:1] != START:
                    raise NotMllp("bytes outside an MLLP frame")
                self._buf = bytearray(stripped)
                break
            self._buf.clear()
            if not self._fill():
                return None
        searched = 1
        while True:
            end = self._buf.find(TRAILER, max(1, searched - 1))
            if end >= 0:
                message = bytes(self._buf[1:end])
                del self._buf[: end + 2]
                if len(message) > self.max_bytes:
                    raise FrameTooLarge(message[:4096])
                return message
            searched = len(self._buf)
            if searched - 1 > self.max_bytes:
                raise FrameTooLarge(bytes(self._buf[1:4097]))
            if not self._fill():
                raise NotMllp("connection closed inside an MLLP frame")


def _escape(text: str) -> str:
    """HL7 escaping of the delimiters in a free-text value of ours (MSA-3, ERR)."""
    out = text.replace("\\", "\\E\\").replace("|", "\\F\\").replace("^", "\\S\\").replace("&", "\\T\\")
    return out.replace("~", "\\R\\").replace("\r", " ").replace("\n", " ")


def ack(code: str, control_id: str, *, text: str = "", application: str = "SITECONN", facility: str = "",
        receiver: tuple[str, str] = ("", ""), trigger: str = "", version: str = "2.5") -> bytes:
    """An ACK (original acknowledgement mode): MSA-1 ``code`` (AA, AE or AR) for ``control_id``.

    ``text`` is ours (a reason code), never quoted from the message. The control ID is echoed as
    the sender set it (it identifies the message to the engine, not the patient), escaped.
    """
    now = datetime.now(timezone.utc).strftime("%Y%m%d%H%M%S")
    msh = "|".join(["MSH", "^~\\&", _escape(application), _escape(facility), _escape(receiver[0]),
                    _escape(receiver[1]), now, "", "ACK^" + _escape(trigger) + "^ACK" if trigger else "ACK",
                    "ACK" + now, "P", _escape(version or "2.5")])
    msa = "|".join(["MSA", code, _escape(control_id)] + ([_escape(text)] if text else []))
    segments = [msh, msa]
    if code != "AA" and text:
        segments.append("ERR|||" + ("207" if code == "AE" else "200") + "|E||||" + _escape(text))
    return ("\r".join(segments) + "\r").encode("ascii", errors="replace")
