"""The dev registry's multipart reader gives back every part byte for byte, however the body arrives."""

from __future__ import annotations

import gzip
import io
import random

import pytest

from connector.ingest.multipart_stream import BodyError, BodyReader, read_multipart

BOUNDARY = b"stow-0123456789abcdef"


class Trickle(io.BufferedReader):
    """A buffered stream whose reads return at most a few random bytes more than asked for: short reads."""

    def __init__(self, data: bytes, seed: int, most: int = 300_000) -> None:
        super().__init__(io.BytesIO(data), buffer_size=64)
        self.rng = random.Random(seed)
        self.most = most

    def read1(self, n: int = -1) -> bytes:
        return super().read1(min(n, self.rng.randint(1, self.most)))

    def readinto1(self, b: memoryview) -> int:  # type: ignore[override]
        return super().readinto1(memoryview(b)[: self.rng.randint(1, self.most)])


def _body(parts: list[bytes], preamble: bytes = b"") -> bytes:
    out = [preamble]
    for part in parts:
        out.append(b"--" + BOUNDARY + b"\r\nContent-Type: application/dicom\r\n\r\n" + part + b"\r\n")
    out.append(b"--" + BOUNDARY + b"--\r\n")
    return b"".join(out)


class Collect:
    def __init__(self) -> None:
        self.data = bytearray()

    def write(self, data: memoryview) -> None:
        self.data += data


def _read(body: bytes, seed: int, *, chunked: bool = False, gz: bool = False, most: int = 300_000) -> list[bytes]:
    wire = gzip.compress(body) if gz else body
    if chunked:
        wire = b"".join(b"%x\r\n" % len(wire[i:i + 7000]) + wire[i:i + 7000] + b"\r\n"
                        for i in range(0, len(wire), 7000)) + b"0\r\n\r\n"
    reader = BodyReader(Trickle(wire, seed, most), length=None if chunked else len(wire), chunked=chunked,
                        encoding="gzip" if gz else "")
    got: list[bytes] = []
    read_multipart(reader, BOUNDARY, lambda _h: Collect(), lambda sink: got.append(bytes(sink.data)))
    return got


@pytest.mark.parametrize("seed", range(6))
def test_parts_round_trip_over_short_reads(seed: int) -> None:
    rng = random.Random(seed)
    near_misses = [b"\r\n--" + BOUNDARY[:-1], b"\r\n-", b"--" + BOUNDARY, b"\r\n\r\n", b"\r\n--" + BOUNDARY[:5]]
    parts = []
    for _ in range(rng.randint(1, 12)):
        pieces = [rng.randbytes(rng.randint(0, 400_000)) for _ in range(rng.randint(1, 4))]
        parts.append(b"".join(p + rng.choice(near_misses) for p in pieces))
    parts.append(b"")  # an empty part
    body = _body(parts, preamble=b"ignored preamble\r\n" if seed % 2 else b"")
    assert _read(body, seed) == parts
    if seed < 2:
        assert _read(body, seed, chunked=True) == parts
        assert _read(body, seed, gz=True) == parts


def test_boundary_split_at_every_offset() -> None:
    """Tiny reads put every read's end at every position inside the boundaries and near-misses."""
    parts = [b"a\r\n--" + BOUNDARY[:-1] + b"b", b"\r\n--" + BOUNDARY[:3], b"c" * 50, b"--" + BOUNDARY + b"x"]
    body = _body(parts)
    for seed in range(40):
        assert _read(body, seed, most=1 + seed % 9) == parts


def test_a_cut_body_raises() -> None:
    body = _body([b"x" * 100_000, b"y" * 100_000])
    for cut in (10, 60, 150_000, len(body) - 3):
        reader = BodyReader(Trickle(body[:cut], cut), length=len(body), chunked=False)
        with pytest.raises(BodyError):
            read_multipart(reader, BOUNDARY, lambda _h: Collect(), lambda _s: None)
