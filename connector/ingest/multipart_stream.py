"""Reading request bodies as streams: Content-Length or chunked, optional gzip, multipart/related parts.

Why streaming: a STOW-RS request can carry hundreds of megabytes; a server must hold no more than a
couple of megabytes per request in memory, the same promise the uploader makes. Two servers use
this one parser: the connector's own STOW-RS door (:mod:`connector.ingest.stow`) and the dev
registry (``devregistry/server.py``, which imports it from here: the product never imports
``devregistry``). Why not a PyPI parser (``multipart``, ``python-multipart``): neither is available from the
offline package index here, both are shaped around multipart/form-data, and this one is already tested against our
uploader, writes parts straight from one reused socket buffer to a file, and adds no dependency to
an offline site install.
Parts are handed to a sink (a temporary file) as they arrive, straight from one reused buffer
that the socket is read into: no copy of the body is made on the way to the file.
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

    def readinto(self, view: memoryview) -> int:
        """Like ``read(len(view))`` into ``view``; 0 at the end. A plain body goes socket to buffer directly."""
        if self._done:
            return 0
        readinto1 = getattr(self._rfile, "readinto1", None)
        if self._chunked or self._inflate is not None or readinto1 is None:
            data = self.read(len(view))
            view[: len(data)] = data
            return len(data)
        assert self._remaining is not None
        got = readinto1(view[: min(len(view), self._remaining)])
        if not got:
            raise BodyError("body ended early")
        self._remaining -= got
        self._done = self._remaining == 0
        self.raw_bytes += got
        return int(got)

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


class _Window:
    """The unread bytes ``buf[start:end]`` of a fixed buffer that a :class:`BodyReader` fills."""

    def __init__(self, reader: BodyReader, size: int) -> None:
        self.reader = reader
        self.buf = bytearray(size)
        self.view = memoryview(self.buf)
        self.start = self.end = 0

    def __len__(self) -> int:
        return self.end - self.start

    def fill(self) -> bool:
        """Read more after what is held (moved to the front first: it is a few bytes); False at the end."""
        if self.start:
            held = self.end - self.start
            self.buf[:held] = self.view[self.start: self.end]
            self.start, self.end = 0, held
        if self.end == len(self.buf):
            raise BodyError("part headers too long")
        got = self.reader.readinto(self.view[self.end:])
        self.end += got
        return got > 0

    def find(self, needle: bytes) -> int:
        """Offset of ``needle`` from ``start``, or -1."""
        idx = self.buf.find(needle, self.start, self.end)
        return idx - self.start if idx >= 0 else -1

    def take(self, n: int) -> memoryview:
        """The next ``n`` bytes, consumed (valid until the next ``fill``)."""
        out = self.view[self.start: self.start + n]
        self.start += n
        return out


def read_multipart(reader: BodyReader, boundary: bytes,
                   on_part: Callable[[dict[str, str]], PartSink], on_end: Callable[[PartSink], None]) -> int:
    """Stream every part of a multipart body to ``on_part(headers)``'s sink; ``on_end(sink)`` after each.

    Returns the number of parts. Raises :class:`BodyError` if the body is cut short or malformed.
    """
    delim = b"--" + boundary
    marker = b"\r\n" + delim
    win = _Window(reader, CHUNK + MAX_HEADER_BYTES)

    while True:  # preamble
        idx = win.find(delim)
        if idx >= 0:
            win.take(idx + len(delim))
            break
        win.take(max(0, len(win) - len(delim) + 1))
        if not win.fill():
            raise BodyError("no multipart boundary in the body")
    count = 0
    while True:
        while len(win) < 2:
            if not win.fill():
                raise BodyError("body ended after a boundary")
        if win.view[win.start: win.start + 2] == b"--":
            return count
        while (eol := win.find(b"\r\n")) < 0:
            if len(win) > 1024 or not win.fill():
                raise BodyError("bad boundary line")
        win.take(eol + 2)
        while True:
            if len(win) >= 2 and win.view[win.start: win.start + 2] == b"\r\n":
                win.take(2)
                headers: dict[str, str] = {}
                break
            end = win.find(b"\r\n\r\n")
            if end >= 0:
                headers = _parse_headers(bytes(win.take(end)))
                win.take(4)
                break
            if len(win) > MAX_HEADER_BYTES or not win.fill():
                raise BodyError("part headers too long or cut short")
        sink = on_part(headers)
        while True:
            idx = win.find(marker)
            if idx >= 0:
                sink.write(win.take(idx))
                win.take(len(marker))
                break
            safe = len(win) - len(marker) + 1
            if safe > 0:
                sink.write(win.take(safe))
            if not win.fill():
                raise BodyError("body ended inside a part")
        on_end(sink)
        count += 1
