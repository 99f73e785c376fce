"""One accepted TCP connection from a PACS, from A-ASSOCIATE-RQ to release: the receiver's hot path.

Why the receiver runs its own DIMSE loop instead of pynetdicom's association: pynetdicom moves
every PDU through two threads, queues, a state machine and pydicom-encoded command sets, which
costs several milliseconds per instance and kept the receiver at a fifth of dcmtk's speed. Here
one thread per association reads PDUs and acts on them directly:
- negotiation uses pynetdicom's PDU classes and context rules (:mod:`connector.ingest.negotiation`);
- command sets are decoded and encoded as bytes (:mod:`connector.ingest.dimse`);
- dataset fragments go from the socket into one reusable buffer and from there to a ``.part`` file
  under ``spool/partial``, so an object of any size is never held in memory; writeback to disk
  starts per 256 KiB written, so the fsync before the acknowledgement waits only for the rest
  (the content is hashed only if the instance turns out to be a re-send: see intake);
- the first bytes of each dataset are kept, so filing it needs no header read from disk.
The object is then handed to the store callback (the durability protocol); its status goes back
in the C-STORE-RSP. Nothing is answered "success" that the callback did not commit.

Protocol violations (an unexpected PDU, a fragment for an unknown context, a malformed command)
end the association with an A-ABORT; a half-received object is deleted, never filed.

Memory is bounded whatever the peer sends (issue 24): a PDU longer than the maximum we announced
is refused from its header, before any of it is read; a command set, the only thing collected in
memory across fragments, may not grow past :data:`connector.ingest.dimse.MAX_COMMAND_SET`; an
A-ASSOCIATE-RQ past :data:`connector.ingest.negotiation.MAX_REQUEST_PDU`. Each of these is an
A-ABORT and a log line naming the limit, never the bytes.
"""

from __future__ import annotations

import logging
import os
import socket
import threading
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

from connector.ingest import dimse, pdu
from connector.ingest.file_meta import part10_head
from connector.ingest.negotiation import MAX_REQUEST_PDU, Admission, Offer, RequestError, negotiate
from connector.store.durable import start_writeback

log = logging.getLogger(__name__)

HEAD_KEEP = 64 * 1024  # dataset bytes kept for the header: far more than any header before SeriesInstanceUID
_CHUNK = 256 * 1024  # largest single read of dataset bytes
# Writeback is started per this many bytes, not per fragment (128 KiB from dcmtk): each start
# submits I/O, which in a VM is a notification to the host; the fsync before the answer writes the
# rest. trace_ingest.py, 0.5 MB objects, three pairs: 330-362 -> 380-448 instances/s.
WRITEBACK_UNIT = 256 * 1024


class ProtocolError(Exception):
    """The peer broke the DICOM upper-layer or DIMSE protocol; the association is aborted.

    ``reason`` is the A-ABORT provider reason sent back (PS3.8 table 9-26).
    """

    def __init__(self, message: str, reason: int = pdu.REASON_UNEXPECTED_PDU) -> None:
        super().__init__(message)
        self.reason = reason


@dataclass(frozen=True)
class ReceivedObject:
    """A complete dataset on disk, with what was learned while it streamed in."""

    part: Path
    calling_aet: str
    sop_class_uid: str
    sop_instance_uid: str
    transfer_syntax: str
    dataset_offset: int  # bytes before the dataset: preamble and file meta
    head: bytes  # the first HEAD_KEEP bytes of the dataset
    whole: bool  # head holds the entire dataset


StoreCallback = Callable[[ReceivedObject], int]
NewPart = Callable[[], tuple[Path, int]]  # an open, empty file under spool/partial: (path, fd)


@dataclass(frozen=True)
class AssociationSettings:
    network_timeout: float
    artim_timeout: float = 5.0  # per read until the A-ASSOCIATE-RQ is in (the watchdog bounds the whole)
    early_writeback: bool = True  # start writing to disk while receiving (when objects are fsync'd)


class _Incoming:
    """The dataset of one C-STORE being written to its ``.part`` file."""

    def __init__(self, request: dimse.Command, context_id: int, transfer_syntax: str, new_part: NewPart, *,
                 early_writeback: bool) -> None:
        self.request = request
        self.early_writeback = early_writeback
        self.written = 0
        self.writeback_from = 0  # start of the bytes whose writeback is not yet started
        self.context_id = context_id
        self.transfer_syntax = transfer_syntax
        self.head = bytearray()
        self.failed: str | None = None  # why the file could not be written (the sender will retry)
        self.fd: int | None = None
        self.path: Path | None = None
        head = part10_head(request.affected_sop_class_uid, request.affected_sop_instance_uid, transfer_syntax)
        self.dataset_offset = len(head)
        try:
            self.path, self.fd = new_part()
        except OSError as exc:
            self.failed = exc.__class__.__name__
            return
        self._write(head)

    def append(self, view: memoryview) -> None:
        if self.failed:
            return  # still reading the rest of the dataset off the wire, to answer A700
        if len(self.head) < HEAD_KEEP:
            self.head += view[:HEAD_KEEP - len(self.head)]
        self._write(view)

    def _write(self, data: bytes | memoryview) -> None:
        view = memoryview(data)
        try:
            while view:
                n = os.write(self.fd, view)  # type: ignore[arg-type]
                view = view[n:]
                self.written += n
        except OSError as exc:  # disk full or failing: drop the file, keep the association
            self.failed = exc.__class__.__name__
            self.discard()
            return
        if self.early_writeback and self.written - self.writeback_from >= WRITEBACK_UNIT:
            start_writeback(self.fd, self.writeback_from, self.written - self.writeback_from)  # type: ignore[arg-type]
            self.writeback_from = self.written

    def finish(self, calling_aet: str) -> ReceivedObject:
        self._close()
        assert self.path is not None  # not failed
        size = self.written - self.dataset_offset
        return ReceivedObject(
            part=self.path, calling_aet=calling_aet, sop_class_uid=self.request.affected_sop_class_uid,
            sop_instance_uid=self.request.affected_sop_instance_uid, transfer_syntax=self.transfer_syntax,
            dataset_offset=self.dataset_offset, head=bytes(self.head),
            whole=size <= len(self.head),
        )

    def _close(self) -> None:
        if self.fd is not None:
            os.close(self.fd)
            self.fd = None

    def discard(self) -> None:
        self._close()
        if self.path is not None:
            self.path.unlink(missing_ok=True)


class Association:
    """Serves one connection; :meth:`run` returns when it is released, aborted or dropped."""

    def __init__(self, sock: socket.socket, address: str, settings: AssociationSettings, admission: Admission,
                 offer: Offer, on_store: StoreCallback, new_part: NewPart, *,
                 claim_slot: Callable[[], bool] = lambda: True) -> None:
        self.stream = pdu.PduStream(sock)
        self.address = address
        self.settings = settings
        self.admission = admission
        self.offer = offer
        self.on_store = on_store
        self.new_part = new_part
        self.claim_slot = claim_slot
        self.calling_aet = ""
        self.established = False
        self.contexts: dict[int, tuple[str, str]] = {}
        self._command = bytearray()
        self._command_context: int | None = None
        self._incoming: _Incoming | None = None
        self._buffer: bytearray | None = None  # allocated at the first dataset: pending connections stay small
        self._send_lock = threading.Lock()
        self._closed = False

    # -- lifecycle -----------------------------------------------------------------------------

    def run(self) -> None:
        try:
            self.stream.sock.settimeout(self.settings.artim_timeout)
            if not self._associate():
                return
            self.stream.sock.settimeout(self.settings.network_timeout)
            self._transfer()
        except ProtocolError as exc:
            log.warning("association aborted: protocol error", extra={"event": "association_aborted",
                                                                      "calling_aet": self.calling_aet,
                                                                      "peer": self.address, "reason": str(exc)})
            self._send_abort(exc.reason)
        except TimeoutError:
            log.warning("association aborted: peer silent", extra={"event": "association_timeout",
                                                                   "calling_aet": self.calling_aet,
                                                                   "peer": self.address})
            self._send_abort(pdu.REASON_NOT_SPECIFIED)
        except (pdu.PeerClosed, OSError):
            if self.established and not self._closed:
                log.warning("association dropped by peer", extra={"event": "association_dropped",
                                                                  "calling_aet": self.calling_aet,
                                                                  "peer": self.address})
        except Exception as exc:  # a bug of ours: end this association only, and say so without values
            log.error("association aborted: internal error", extra={"event": "association_failed",
                                                                    "calling_aet": self.calling_aet,
                                                                    "peer": self.address, "error": type(exc).__name__})
            self._send_abort(pdu.REASON_NOT_SPECIFIED)
        finally:
            if self._incoming is not None:
                self._incoming.discard()  # never filed: the sender got no success for it
                self._incoming = None
            self.close()

    def abort(self) -> None:
        """End the association from another thread (shutdown past the drain period)."""
        self._send_abort(pdu.REASON_NOT_SPECIFIED)
        self.close()

    def close(self) -> None:
        with self._send_lock:
            if self._closed:
                return
            self._closed = True
        self.stream.close()

    def _send(self, data: bytes) -> None:
        with self._send_lock:
            if not self._closed:
                self.stream.send(data)

    def _send_abort(self, reason: int) -> None:
        try:
            self._send(pdu.abort(pdu.SOURCE_SERVICE_PROVIDER, reason))
        except OSError:
            pass

    # -- association establishment ----------------------------------------------------------------

    def _associate(self) -> bool:
        header = self.stream.read_header()
        if header is None:
            return False  # a port probe: connected and left
        pdu_type, length = header
        if pdu_type != pdu.A_ASSOCIATE_RQ:
            raise ProtocolError("expected A-ASSOCIATE-RQ")
        if length > MAX_REQUEST_PDU:
            raise ProtocolError(f"A-ASSOCIATE-RQ longer than {MAX_REQUEST_PDU} bytes", pdu.REASON_INVALID_PARAMETER)
        raw = pdu.encode_pdu(pdu_type, self.stream.read_exact(length))
        try:
            outcome = negotiate(raw, self.address, self.admission, self.offer, claim_slot=self.claim_slot)
        except RequestError as exc:
            raise ProtocolError(f"undecodable A-ASSOCIATE-RQ ({exc})") from None
        self.calling_aet = outcome.calling_aet
        self._send(outcome.reply)
        if outcome.rejected is not None:
            log.warning("association rejected", extra={"event": "association_rejected", "calling_aet": self.calling_aet,
                                                        "peer": self.address, "diagnostic": outcome.rejected[2]})
            return False
        self.contexts = outcome.contexts
        self.established = True
        return True

    # -- data transfer ----------------------------------------------------------------------------

    def _transfer(self) -> None:
        while True:
            header = self.stream.read_header()
            if header is None:
                raise pdu.PeerClosed("connection closed without release")
            pdu_type, length = header
            if length > self.offer.max_pdu_length:  # refused from the header: not a byte of it is read
                raise ProtocolError(f"PDU longer than the maximum announced ({self.offer.max_pdu_length} bytes)",
                                    pdu.REASON_INVALID_PARAMETER)
            if pdu_type == pdu.P_DATA_TF:
                self._p_data(length)
            elif pdu_type == pdu.A_RELEASE_RQ:
                self.stream.skip(length)
                if self._incoming is not None or self._command:
                    raise ProtocolError("release requested in the middle of a message")
                self._send(pdu.release_rp())
                self.established = False
                return
            elif pdu_type == pdu.A_ABORT:
                self.stream.skip(length)
                self.established = False
                log.info("association aborted by peer", extra={"event": "association_aborted_by_peer",
                                                               "calling_aet": self.calling_aet, "peer": self.address})
                return
            else:
                raise ProtocolError(f"unexpected PDU type 0x{pdu_type:02x}", pdu.REASON_UNRECOGNIZED_PDU)

    def _p_data(self, length: int) -> None:
        remaining = length
        while remaining > 0:
            item_length, context_id, control = self.stream.read_pdv_header()
            remaining -= 4 + item_length
            if item_length < 2 or remaining < 0:
                raise ProtocolError("PDV item length inconsistent with its PDU", pdu.REASON_INVALID_PARAMETER)
            if context_id not in self.contexts:
                raise ProtocolError("fragment for a presentation context that was not accepted")
            size, last = item_length - 2, bool(control & 0x02)
            if control & 0x01:
                self._command_fragment(context_id, size, last)
            else:
                self._dataset_fragment(context_id, size, last)

    def _command_fragment(self, context_id: int, size: int, last: bool) -> None:
        if self._incoming is not None:
            raise ProtocolError("command fragment inside a dataset")
        if self._command_context not in (None, context_id):
            raise ProtocolError("command fragments on two presentation contexts")
        if len(self._command) + size > dimse.MAX_COMMAND_SET:  # checked before reading: nothing piles up
            raise ProtocolError(f"command set longer than {dimse.MAX_COMMAND_SET} bytes", pdu.REASON_INVALID_PARAMETER)
        self._command_context = context_id
        self._command += self.stream.read_exact(size)
        if last:
            raw, self._command, self._command_context = bytes(self._command), bytearray(), None
            self._on_command(context_id, raw)

    def _on_command(self, context_id: int, raw: bytes) -> None:
        try:
            request = dimse.decode_command(raw)
        except dimse.CommandError as exc:
            raise ProtocolError(str(exc), pdu.REASON_INVALID_PARAMETER) from None
        if request.command_field == dimse.C_ECHO_RQ and not request.has_dataset:
            self._send(pdu.p_data_command(context_id, dimse.encode_echo_response(request)))
        elif request.command_field == dimse.C_STORE_RQ and request.has_dataset:
            transfer_syntax = self.contexts[context_id][1]
            self._incoming = _Incoming(request, context_id, transfer_syntax, self.new_part,
                                      early_writeback=self.settings.early_writeback)
        else:
            raise ProtocolError(f"unsupported command 0x{request.command_field:04x}")

    def _dataset_fragment(self, context_id: int, size: int, last: bool) -> None:
        incoming = self._incoming
        if incoming is None or context_id != incoming.context_id:
            raise ProtocolError("dataset fragment without a C-STORE request on its context")
        if self._buffer is None:
            self._buffer = bytearray(_CHUNK)
        view = memoryview(self._buffer)
        while size > 0:
            n = min(size, len(view))
            chunk = view[:n]
            self.stream.readinto_exact(chunk)
            incoming.append(chunk)
            size -= n
        if last:
            self._incoming = None
            self._complete(incoming)

    def _complete(self, incoming: _Incoming) -> None:
        if incoming.failed:
            log.error("could not write received object; asking sender to retry",
                      extra={"event": "store_failed", "error": incoming.failed})
            status = dimse.STATUS_OUT_OF_RESOURCES
        else:
            status = self.on_store(incoming.finish(self.calling_aet))
        response = dimse.encode_store_response(incoming.request, status)
        self._send(pdu.p_data_command(incoming.context_id, response))
