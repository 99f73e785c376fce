"""DICOM upper-layer PDU framing on a socket (PS3.8 section 9.3), for the receiver's hot path.

Only framing lives here: reading a PDU header, reading exactly N bytes into a caller's buffer,
and the four fixed-layout PDUs the acceptor sends during data transfer (P-DATA-TF carrying one
command, A-RELEASE-RP, A-ABORT). Association negotiation PDUs are decoded and encoded by
pynetdicom's own PDU classes (:mod:`connector.ingest.negotiation`).

Reads go through one buffered reader per connection, so the many 6-byte headers cost no system
call each, while bulk reads of dataset fragments land straight in the caller's buffer.
"""

from __future__ import annotations

import socket
import struct

A_ASSOCIATE_RQ = 0x01
A_ASSOCIATE_AC = 0x02
A_ASSOCIATE_RJ = 0x03
P_DATA_TF = 0x04
A_RELEASE_RQ = 0x05
A_RELEASE_RP = 0x06
A_ABORT = 0x07

# A-ABORT source and provider reason (PS3.8 table 9-26)
SOURCE_SERVICE_USER = 0x00
SOURCE_SERVICE_PROVIDER = 0x02
REASON_NOT_SPECIFIED = 0x00
REASON_UNRECOGNIZED_PDU = 0x01
REASON_UNEXPECTED_PDU = 0x02
REASON_INVALID_PARAMETER = 0x06

_PDU_HEADER = struct.Struct(">BxI")
_PDV_HEADER = struct.Struct(">IBB")
PDU_HEADER_SIZE = _PDU_HEADER.size
PDV_HEADER_SIZE = _PDV_HEADER.size
# Smaller than a dataset fragment (dcmtk's storescu sends 128 KiB PDUs), so that what the header
# read did not already pull in goes from the socket straight into the caller's buffer: the reader
# copies through its own buffer every read not larger than it, which at 256 KiB was every fragment.
_READ_BUFFER = 64 * 1024


class PeerClosed(ConnectionError):
    """The peer closed the connection (or it broke) in the middle of a PDU."""


class PduStream:
    """One association's socket: buffered exact reads, whole-PDU writes."""

    def __init__(self, sock: socket.socket) -> None:
        self.sock = sock
        self._reader = sock.makefile("rb", buffering=_READ_BUFFER)

    def read_header(self) -> tuple[int, int] | None:
        """(PDU type, length) of the next PDU, or None when the peer closed between PDUs."""
        raw = self._reader.read(PDU_HEADER_SIZE)
        if not raw:
            return None
        if len(raw) < PDU_HEADER_SIZE:
            raise PeerClosed("connection closed inside a PDU header")
        pdu_type, length = _PDU_HEADER.unpack(raw)
        return pdu_type, length

    def read_pdv_header(self) -> tuple[int, int, int]:
        """(item length, presentation context ID, message control header) of the next PDV item."""
        length, context_id, control = _PDV_HEADER.unpack(self.read_exact(PDV_HEADER_SIZE))
        return length, context_id, control

    def read_exact(self, size: int) -> bytes:
        data = self._reader.read(size)
        if len(data) != size:
            raise PeerClosed("connection closed inside a PDU")
        return data

    def readinto_exact(self, view: memoryview) -> None:
        got, size = 0, len(view)
        while got < size:
            n = self._reader.readinto(view[got:])
            if not n:
                raise PeerClosed("connection closed inside a PDU")
            got += n

    def skip(self, size: int) -> None:
        while size > 0:
            size -= len(self.read_exact(min(size, _READ_BUFFER)))

    def send(self, data: bytes) -> None:
        self.sock.sendall(data)

    def close(self) -> None:
        # shutdown first: it wakes a thread blocked reading this socket. Closing the buffered reader
        # first would wait for that thread (the reader's lock), i.e. for the peer or the network
        # timeout: a stalled sender held up the receiver's stop by up to a minute.
        try:
            self.sock.shutdown(socket.SHUT_RDWR)
        except OSError:
            pass
        try:
            self._reader.close()
        except (OSError, ValueError):
            pass
        self.sock.close()


def encode_pdu(pdu_type: int, body: bytes) -> bytes:
    return _PDU_HEADER.pack(pdu_type, len(body)) + body


def p_data_command(context_id: int, command: bytes) -> bytes:
    """A P-DATA-TF holding one complete command set (message control header: command, last)."""
    return encode_pdu(P_DATA_TF, _PDV_HEADER.pack(len(command) + 2, context_id, 0x03) + command)


def release_rp() -> bytes:
    return encode_pdu(A_RELEASE_RP, bytes(4))


def abort(source: int = SOURCE_SERVICE_PROVIDER, reason: int = REASON_NOT_SPECIFIED) -> bytes:
    return encode_pdu(A_ABORT, bytes((0, 0, source, reason)))
