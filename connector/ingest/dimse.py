"""The few DIMSE command sets the receiver speaks, decoded and encoded as bytes (PS3.7 section 9, annex E).

A command set is a short run of group-0000 elements in implicit VR little endian. The receiver
needs six of them from a C-STORE-RQ or C-ECHO-RQ and writes five or six in a response, so they are
handled here directly instead of through a pydicom Dataset: on the per-instance hot path that
decoding and encoding cost more than writing the instance to disk. Tests check both directions
against pydicom and pynetdicom's own DIMSE message classes.
"""

from __future__ import annotations

import struct
from dataclasses import dataclass

C_STORE_RQ = 0x0001
C_STORE_RSP = 0x8001
C_ECHO_RQ = 0x0030
C_ECHO_RSP = 0x8030
NO_DATASET = 0x0101  # CommandDataSetType: no dataset follows

STATUS_SUCCESS = 0x0000
STATUS_OUT_OF_RESOURCES = 0xA700  # the sender should retry later
STATUS_CANNOT_UNDERSTAND = 0xC210  # the object is unusable; it is kept in quarantine

# The receiver collects a command set in memory until its last fragment: cap it. The largest it
# takes (C-STORE-RQ) is under 300 bytes; 64 KiB leaves room for any optional element, and a peer
# sending more is not a DICOM sender (issue 24: one endless command fragment grew a receiver by GBs).
MAX_COMMAND_SET = 64 * 1024

_AFFECTED_SOP_CLASS = 0x00000002
_COMMAND_FIELD = 0x00000100
_MESSAGE_ID = 0x00000110
_MESSAGE_ID_RESPONDED_TO = 0x00000120
_DATASET_TYPE = 0x00000800
_STATUS = 0x00000900
_AFFECTED_SOP_INSTANCE = 0x00001000
_MOVE_ORIGINATOR_AET = 0x00001030

_ELEMENT_HEADER = struct.Struct("<HHI")
_US = struct.Struct("<H")


class CommandError(ValueError):
    """The command set is malformed (the association is then aborted)."""


@dataclass(frozen=True)
class Command:
    """The fields of a request command set the receiver acts on."""

    command_field: int
    message_id: int
    affected_sop_class_uid: str = ""
    affected_sop_instance_uid: str = ""
    has_dataset: bool = False
    move_originator_aet: str = ""


def decode_command(data: bytes | bytearray | memoryview) -> Command:
    """Decode a complete command set; unknown elements are skipped."""
    raw = bytes(data)
    values: dict[int, bytes] = {}
    pos, end = 0, len(raw)
    while pos < end:
        if pos + 8 > end:
            raise CommandError("command set ends inside an element header")
        group, elem, length = _ELEMENT_HEADER.unpack_from(raw, pos)
        pos += 8
        if group != 0x0000 or length == 0xFFFFFFFF or pos + length > end:
            raise CommandError("command set element outside group 0000 or past the end")
        values[elem] = raw[pos:pos + length]
        pos += length
    try:
        field = _US.unpack(values[_COMMAND_FIELD])[0]
        message_id = _US.unpack(values[_MESSAGE_ID])[0]
        dataset_type = _US.unpack(values.get(_DATASET_TYPE, _US.pack(NO_DATASET)))[0]
    except (KeyError, struct.error):
        raise CommandError("command set lacks CommandField, MessageID or a valid CommandDataSetType") from None
    return Command(
        command_field=field, message_id=message_id,
        affected_sop_class_uid=_uid(values.get(_AFFECTED_SOP_CLASS, b"")),
        affected_sop_instance_uid=_uid(values.get(_AFFECTED_SOP_INSTANCE, b"")),
        has_dataset=dataset_type != NO_DATASET,
        move_originator_aet=values.get(_MOVE_ORIGINATOR_AET, b"").decode("ascii", "replace").strip(),
    )


def _uid(value: bytes) -> str:
    return value.rstrip(b"\x00 ").decode("ascii", "replace")


def _element(tag: int, value: bytes) -> bytes:
    return _ELEMENT_HEADER.pack(tag >> 16, tag & 0xFFFF, len(value)) + value


def _uid_value(uid: str) -> bytes:
    raw = uid.encode("ascii")
    return raw + b"\x00" if len(raw) % 2 else raw


def _with_group_length(body: bytes) -> bytes:
    return _element(0x00000000, struct.pack("<I", len(body))) + body


def encode_store_response(request: Command, status: int) -> bytes:
    """The C-STORE-RSP command set answering ``request`` with ``status``."""
    return _with_group_length(b"".join((
        _element(_AFFECTED_SOP_CLASS, _uid_value(request.affected_sop_class_uid)),
        _element(_COMMAND_FIELD, _US.pack(C_STORE_RSP)),
        _element(_MESSAGE_ID_RESPONDED_TO, _US.pack(request.message_id)),
        _element(_DATASET_TYPE, _US.pack(NO_DATASET)),
        _element(_STATUS, _US.pack(status)),
        _element(_AFFECTED_SOP_INSTANCE, _uid_value(request.affected_sop_instance_uid)),
    )))


def encode_echo_response(request: Command, status: int = STATUS_SUCCESS) -> bytes:
    """The C-ECHO-RSP command set answering ``request``."""
    return _with_group_length(b"".join((
        _element(_AFFECTED_SOP_CLASS, _uid_value(request.affected_sop_class_uid or "1.2.840.10008.1.1")),
        _element(_COMMAND_FIELD, _US.pack(C_ECHO_RSP)),
        _element(_MESSAGE_ID_RESPONDED_TO, _US.pack(request.message_id)),
        _element(_DATASET_TYPE, _US.pack(NO_DATASET)),
        _element(_STATUS, _US.pack(status)),
    )))
