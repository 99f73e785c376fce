"""Latency and CPU fixes for pynetdicom's acceptor path (no protocol change).

1. Event-driven waits instead of fixed sleeps.

pynetdicom runs two polling loops per association, each sleeping a fixed 1 ms when idle: the DUL
reactor (socket <-> PDUs) and the association reactor (complete DIMSE messages -> handlers). A
C-STORE crosses them several times (command PDU, each data PDU, the handler, the response), so a
0.5 MB object waits 3-5 ms in ``time.sleep`` alone: most of the time a single association spends
per instance, and the main reason pynetdicom receives several times slower than dcmtk.

Here both loops wait on the thing they are waiting for instead:
- the DUL waits in ``select`` on the peer's socket and on an eventfd signalled when a PDU is
  queued for sending (a response), so both directions end the wait at once;
- the association reactor blocks on its DIMSE message queue.
Both waits are bounded by the same 1 ms, so pynetdicom's timers, abort and release checks run as
often as before. The classes are applied per association by :mod:`connector.ingest.scp`, and only
when the pynetdicom internals they rely on are present (see :func:`supported`).

2. The File Meta Information written at the head of every streamed dataset is built directly as
bytes (six short elements) instead of through a pydicom Dataset and writer, which cost ~0.5 ms of
CPU per object, a tenth of the whole per-object budget. The output is byte-identical to pydicom's
(see tests); it is installed by :func:`install_fast_file_meta` in the receiver process only.
"""

from __future__ import annotations

import os
import queue
import select
import ssl
import struct
import weakref
from dataclasses import dataclass
from typing import Any, cast

from pynetdicom.association import Association
from pynetdicom.dul import DULServiceProvider
from pynetdicom.transport import AssociationSocket

_IDLE_WAIT = 0.001  # the bound pynetdicom itself uses


def supported(assoc: Any) -> bool:
    """True when this pynetdicom has the internals these overrides replace."""
    dul, dimse = getattr(assoc, "dul", None), getattr(assoc, "dimse", None)
    return (
        hasattr(os, "eventfd")
        and isinstance(dul, DULServiceProvider)
        and hasattr(dul, "_run_loop_delay")
        and hasattr(dul, "to_provider_queue")
        and isinstance(getattr(dimse, "msg_queue", None), queue.Queue)
        and hasattr(assoc, "_reactor_checkpoint")
        and hasattr(assoc, "_serve_request")
    )


def make_prompt(assoc: Any) -> None:
    """Switch one not-yet-started acceptor association to the event-driven loops."""
    if not supported(assoc):
        return
    assoc.dul.__class__ = PromptDUL
    assoc.dul._run_loop_delay = 0  # the wait happens in _is_transport_event instead
    assoc.__class__ = PromptAssociation
    sock = getattr(assoc.dul, "socket", None)
    if isinstance(sock, AssociationSocket) and type(sock) is AssociationSocket:
        sock.__class__ = BulkReadSocket


class BulkReadSocket(AssociationSocket):
    """Reads a PDU with ``recv_into`` straight into one buffer of its final size.

    pynetdicom reads in 4 KiB ``recv`` calls appended to a bytearray: 32 calls and copies per
    128 KiB PDU. Same contract: returns what was read, short only if the peer closed.
    """

    def recv(self, nr_bytes: int) -> bytearray:
        raw = self.socket
        if raw is None:
            return bytearray()
        buf = bytearray(nr_bytes)
        view = memoryview(buf)
        got = 0
        while got < nr_bytes:
            n = raw.recv_into(view[got:], nr_bytes - got)
            if n == 0:
                del view
                return buf[:got]
            got += n
        return buf


class PromptDUL(DULServiceProvider):
    def _wake_fd(self) -> int:
        fd = self.__dict__.get("_wakefd")
        if fd is None:
            fd = os.eventfd(0, os.EFD_NONBLOCK | os.EFD_CLOEXEC)
            self.__dict__["_wakefd"] = fd
            weakref.finalize(self, os.close, fd)
        return int(fd)

    def send_pdu(self, primitive: Any) -> None:
        super().send_pdu(primitive)
        os.eventfd_write(self._wake_fd(), 1)

    def _is_transport_event(self) -> bool:
        sock = self.socket
        raw = getattr(sock, "socket", None) if sock is not None else None
        if (raw is not None and self.to_provider_queue.empty() and self.event_queue.empty()
                and self.state_machine.current_state != "Sta13"
                and not (isinstance(raw, ssl.SSLSocket) and raw.pending())):
            wake = self._wake_fd()
            try:
                ready, _, _ = select.select([raw, wake], [], [], _IDLE_WAIT)
                if wake in ready:
                    os.eventfd_read(wake)
            except (OSError, ValueError):
                pass  # a closed socket is reported by the parent method as transport event Evt17
        return super()._is_transport_event()


class PromptAssociation(Association):
    def _run_reactor(self) -> None:
        """pynetdicom's acceptor loop, with the fixed sleep replaced by a wait on the message queue.

        The checks after the wait (release, abort, DUL alive, network timeout) are pynetdicom's
        own, in the same order.
        """
        self._is_paused = False
        while not self._kill:
            self._is_paused = True
            self._reactor_checkpoint.wait()
            self._is_paused = False

            try:
                context_id, msg = self.dimse.msg_queue.get(timeout=_IDLE_WAIT)
            except queue.Empty:
                context_id, msg = None, None
            if msg:
                self._serve_request(msg, cast(int, context_id))

            if self.is_established and self.acse.is_release_requested():
                self.acse.send_release(is_response=True)
                self.is_released = True
                self.is_established = False
                from pynetdicom import evt

                evt.trigger(self, evt.EVT_RELEASED, {})
                self.kill()
                return

            if self.acse.is_aborted():
                from pynetdicom import evt

                self.dul.receive_pdu(wait=False)
                self.is_aborted = True
                self.is_established = False
                evt.trigger(self, evt.EVT_ABORTED, {})
                self.kill()
                return

            if not self.dul.is_alive():
                self.kill()
                return

            if self.dul.idle_timer_expired():
                if self.network_timeout_response == "A-RELEASE":
                    self._is_paused = True
                    self._reactor_checkpoint.wait()
                    self.release()
                    self._is_paused = False
                else:
                    self.abort()
                self.kill()


# -- 2. file meta --------------------------------------------------------------------------------


@dataclass(frozen=True)
class _FileMeta:
    sop_class_uid: str
    sop_instance_uid: str
    transfer_syntax: str


def _element(group: int, elem: int, vr: bytes, value: bytes) -> bytes:
    if vr == b"OB":  # explicit VR little endian, long form
        return struct.pack("<HH2sHI", group, elem, vr, 0, len(value)) + value
    return struct.pack("<HH2sH", group, elem, vr, len(value)) + value


def _padded(text: str, pad: bytes) -> bytes:
    raw = text.encode("ascii")
    return raw + pad if len(raw) % 2 else raw


def encode_file_meta(sop_class_uid: str, sop_instance_uid: str, transfer_syntax: str) -> bytes:
    """The File Meta group (0002,eeee) exactly as pynetdicom + pydicom would write it."""
    from pynetdicom import PYNETDICOM_IMPLEMENTATION_UID, PYNETDICOM_IMPLEMENTATION_VERSION

    body = b"".join((
        _element(2, 0x0001, b"OB", b"\x00\x01"),
        _element(2, 0x0002, b"UI", _padded(str(sop_class_uid), b"\x00")),
        _element(2, 0x0003, b"UI", _padded(str(sop_instance_uid), b"\x00")),
        _element(2, 0x0010, b"UI", _padded(str(transfer_syntax), b"\x00")),
        _element(2, 0x0012, b"UI", _padded(PYNETDICOM_IMPLEMENTATION_UID, b"\x00")),
        _element(2, 0x0013, b"SH", _padded(PYNETDICOM_IMPLEMENTATION_VERSION, b" ")),
    ))
    return _element(2, 0x0000, b"UL", struct.pack("<I", len(body))) + body


def _fast_create_file_meta(*, sop_class_uid: str, sop_instance_uid: str, transfer_syntax: str) -> _FileMeta:
    return _FileMeta(sop_class_uid, sop_instance_uid, transfer_syntax)


def _fast_write_file_meta_info(fp: Any, meta: Any, enforce_standard: bool = True) -> None:
    if isinstance(meta, _FileMeta):
        fp.write(encode_file_meta(meta.sop_class_uid, meta.sop_instance_uid, meta.transfer_syntax))
    else:  # not ours: pydicom's writer
        from pydicom.filewriter import write_file_meta_info

        write_file_meta_info(fp, meta, enforce_standard=enforce_standard)


def install_fast_file_meta() -> bool:
    """Route pynetdicom's streamed-dataset meta writing through :func:`encode_file_meta`."""
    from pynetdicom import dimse_messages

    if not (hasattr(dimse_messages, "create_file_meta") and hasattr(dimse_messages, "write_file_meta_info")):
        return False
    dimse_messages.create_file_meta = _fast_create_file_meta  # type: ignore[assignment]
    dimse_messages.write_file_meta_info = _fast_write_file_meta_info  # type: ignore[assignment]
    return True
