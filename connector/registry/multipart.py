"""Reading request bodies as streams: Content-Length or chunked, optional gzip, multipart/related parts.

Why streaming: a STOW-RS request can carry hundreds of megabytes; the dev registry must hold no
more than a couple of megabytes per request in memory, the same promise the uploader makes.
Parts are handed to a sink (a temporary file and a hash) as they arrive.
"""

from __future__ import annotations

import re
import zlib
from collections.abc import Callable
from typing import Any, Protocol

CHUNK = 1024 * 1024
MAX_HEADER_BYTES = 64 * 1024


class BodyError(Exception):
    """The body is malformed or ended early (the client went away)."""


class BodyReader:
    """``read(n)`` over a request body; returns b"" at its end, raises BodyError if it is cut short."""

    def __init__(self, rfile: Any, *, length: int | None, chunked: bool, encoding: str = "") -> None:
        self._rfile = rfile
        self._remaining = length if not chunked else None
        self._chunked = chunked
        self._chunk_left = 0
        self._done = (length == 0) and not chunked
        encoding = encoding.strip().lower()
        if encoding not in ("", "identity", "gzip", "deflate"):
            raise BodyError(f"unsupported Content-Encoding {encoding!r}")
        self._inflate = zlib.decompressobj(47) if encoding in ("gzip", "deflate") else None
        self._tail = b""
        self.raw_bytes = 0

    def _read_some(self, n: int) -> bytes:
        """What has arrived, up to ``n`` bytes (at least one): parts complete before a cut are kept."""
        read1 = getattr(self._rfile, "read1", None)
        data = read1(n) if read1 is not None else self._rfile.read(n)
        if not data:
            raise BodyError("body ended early")
        return data

    def _raw(self, n: int) -> bytes:
        if self._done:
            return b""
        if not self._chunked:
            assert self._remaining is not None
            want = min(n, self._remaining)
            data = self._read_some(want)
            self._remaining -= len(data)
            self._done = self._remaining == 0
            self.raw_bytes += len(data)
            return data
        if self._chunk_left == 0:
            line = self._rfile.readline(1024)
            if not line.endswith(b"\n"):
                raise BodyError("bad chunk header")
            try:
                size = int(line.split(b";")[0].strip(), 16)
            except ValueError:
                raise BodyError("bad chunk size") from None
            if size == 0:
                while self._rfile.readline(1024) not in (b"\r\n", b"\n", b""):
                    pass  # trailers
                self._done = True
                return b""
            self._chunk_left = size
        data = self._read_some(min(n, self._chunk_left))
        self._chunk_left -= len(data)
        if self._chunk_left == 0 and self._rfile.read(2) not in (b"\r\n",):
            raise BodyError("bad chunk terminator")
        self.raw_bytes += len(data)
        return data

    def read(self, n: int = CHUNK) -> bytes:
        if self._inflate is None:
            return self._raw(n)
        while True:
            if self._tail:
                out = self._inflate.decompress(self._tail, n)
                self._tail = self._inflate.unconsumed_tail
                if out:
                    return out
            raw = self._raw(CHUNK)
            if not raw:
                out = self._inflate.flush()
                self._inflate = None if not out else self._inflate
                return out
            self._tail = raw

    def drain(self) -> None:
        while self.read(CHUNK):
            pass


class PartSink(Protocol):
    def write(self, data: memoryview) -> None: ...


def boundary_of(content_type: str) -> bytes:
    m = re.search(r'boundary="?([^";]+)"?', content_type, re.IGNORECASE)
    if not m:
        raise BodyError("multipart Content-Type without a boundary")
    return m.group(1).strip().encode()


def _parse_headers(raw: bytes) -> dict[str, str]:
    headers: dict[str, str] = {}
    for line in raw.decode("latin-1").split("\r\n"):
        if ":" in line:
            name, _, value = line.partition(":")
            headers[name.strip().lower()] = value.strip()
    return headers


def read_multipart(read: Callable[[int], bytes], boundary: bytes,
                   on_part: Callable[[dict[str, str]], PartSink], on_end: Callable[[PartSink], None]) -> int:
    """Stream every part of a multipart body to ``on_part(headers)``'s sink; ``on_end(sink)`` after each.

    Returns the number of parts. Raises :class:`BodyError` if the body is cut short or malformed.
    """
    delim = b"--" + boundary
    marker = b"\r\n" + delim
    buf = bytearray()

    def fill() -> bool:
        chunk = read(CHUNK)
        if not chunk:
            return False
        buf.extend(chunk)
        return True

    while True:  # preamble
        idx = buf.find(delim)
        if idx >= 0:
            del buf[: idx + len(delim)]
            break
        del buf[: max(0, len(buf) - len(delim) + 1)]
        if not fill():
            raise BodyError("no multipart boundary in the body")
    count = 0
    while True:
        while len(buf) < 2:
            if not fill():
                raise BodyError("body ended after a boundary")
        if buf[:2] == b"--":
            return count
        while (eol := buf.find(b"\r\n")) < 0:
            if len(buf) > 1024 or not fill():
                raise BodyError("bad boundary line")
        del buf[: eol + 2]
        while True:
            if buf[:2] == b"\r\n":
                headers, cut = {}, 2
                break
            end = buf.find(b"\r\n\r\n")
            if end >= 0:
                headers, cut = _parse_headers(bytes(buf[:end])), end + 4
                break
            if len(buf) > MAX_HEADER_BYTES or not fill():
                raise BodyError("part headers too long or cut short")
        del buf[:cut]
        sink = on_part(headers)
        while True:
            idx = buf.find(marker)
            if idx >= 0:
                with memoryview(buf) as mv:
                    sink.write(mv[:idx])
                del buf[: idx + len(marker)]
                break
            safe = len(buf) - len(marker) + 1
            if safe > 0:
                with memoryview(buf) as mv:
                    sink.write(mv[:safe])
                del buf[:safe]
            if not fill():
                raise BodyError("body ended inside a part")
        on_end(sink)
        count += 1
