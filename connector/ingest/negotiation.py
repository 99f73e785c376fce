"""Association negotiation for the receiver: who may connect, and which contexts are accepted.

The A-ASSOCIATE PDUs are decoded and encoded with pynetdicom's PDU classes and the presentation
contexts negotiated with pynetdicom's own unrestricted-storage rules (every storage and private SOP
class, with the first transfer syntax the caller proposes, plus Verification), so the answers a PACS
gets are pynetdicom's. What is ours: callers are filtered here, before anything is accepted. A
calling AE title or IP address that is not on the allow-list gets an A-ASSOCIATE-RJ, never an
accepted association whose data is thrown away.
"""

from __future__ import annotations

import ipaddress
from dataclasses import dataclass, field

from pynetdicom import PYNETDICOM_IMPLEMENTATION_UID, PYNETDICOM_IMPLEMENTATION_VERSION
from pynetdicom.pdu import A_ASSOCIATE_AC, A_ASSOCIATE_RJ, A_ASSOCIATE_RQ
from pynetdicom.pdu_primitives import (
    A_ASSOCIATE,
    ImplementationClassUIDNotification,
    ImplementationVersionNameNotification,
    MaximumLengthNotification,
    SCP_SCU_RoleSelectionNegotiation,
)
from pynetdicom.presentation import build_context, negotiate_unrestricted
from pynetdicom.sop_class import Verification  # type: ignore[attr-defined]

DICOM_APPLICATION_CONTEXT = "1.2.840.10008.3.1.1.1"
MAX_REQUEST_PDU = 1 << 20  # an A-ASSOCIATE-RQ is a few kB; anything near this is not a PACS

# A-ASSOCIATE-RJ (result, source, diagnostic), PS3.8 table 9-21
REJECT_NO_REASON = (0x01, 0x01, 0x01)
REJECT_APPLICATION_CONTEXT = (0x01, 0x01, 0x02)
REJECT_CALLING_AET = (0x01, 0x01, 0x03)
REJECT_BUSY = (0x02, 0x03, 0x02)  # transient, presentation-related: local limit exceeded


class Admission:
    """Calling-AE and IP allow-lists; empty lists admit anyone."""

    def __init__(self, ae_titles: list[str], hosts: list[str]) -> None:
        self.ae_titles = {a.strip() for a in ae_titles}
        self.networks = [ipaddress.ip_network(h, strict=False) for h in hosts]

    def reason_to_reject(self, calling_aet: str, address: str) -> tuple[int, int, int] | None:
        """(result, source, diagnostic) for A-ASSOCIATE-RJ, or None to admit."""
        if self.networks:
            try:
                ip = ipaddress.ip_address(address.split("%")[0])
            except ValueError:
                return REJECT_NO_REASON
            if isinstance(ip, ipaddress.IPv6Address) and ip.ipv4_mapped:
                ip = ip.ipv4_mapped
            if not any(ip in net for net in self.networks):
                return REJECT_NO_REASON
        if self.ae_titles and calling_aet.strip() not in self.ae_titles:
            return REJECT_CALLING_AET
        return None


@dataclass
class Negotiated:
    """The outcome of one A-ASSOCIATE-RQ: the PDU to send back and, if accepted, the contexts."""

    calling_aet: str
    reply: bytes
    rejected: tuple[int, int, int] | None = None
    # accepted presentation context ID -> (abstract syntax, transfer syntax)
    contexts: dict[int, tuple[str, str]] = field(default_factory=dict)


class RequestError(ValueError):
    """The A-ASSOCIATE-RQ PDU could not be decoded."""


def negotiate(raw_pdu: bytes, address: str, admission: Admission, *, busy: bool) -> Negotiated:
    """Answer the A-ASSOCIATE-RQ in ``raw_pdu`` (header included) from a caller at ``address``."""
    pdu = A_ASSOCIATE_RQ()
    try:
        pdu.decode(raw_pdu)
        request = pdu.to_primitive()
    except Exception as exc:  # pynetdicom raises assorted errors for malformed items
        raise RequestError(type(exc).__name__) from None
    calling = str(request.calling_ae_title or "").strip()
    verdict = admission.reason_to_reject(calling, address)
    if verdict is None and str(request.application_context_name) != DICOM_APPLICATION_CONTEXT:
        verdict = REJECT_APPLICATION_CONTEXT
    if verdict is None and busy:
        verdict = REJECT_BUSY
    if verdict is not None:
        return Negotiated(calling, _reject_pdu(verdict), rejected=verdict)

    roles = {item.sop_class_uid: (item.scu_role, item.scp_role) for item in request.user_information
             if isinstance(item, SCP_SCU_RoleSelectionNegotiation)}
    results, role_replies = negotiate_unrestricted(
        request.presentation_context_definition_list, [build_context(Verification)], roles)
    accept = A_ASSOCIATE()
    accept.application_context_name = request.application_context_name
    accept.calling_ae_title = request.calling_ae_title
    accept.called_ae_title = request.called_ae_title
    accept.result = 0x00
    accept.result_source = 0x01
    accept.presentation_context_definition_results_list = results
    accept.user_information = [*_acceptor_user_information(), *role_replies]
    reply = A_ASSOCIATE_AC()
    reply.from_primitive(accept)
    contexts = {int(cx.context_id): (str(cx.abstract_syntax), str(cx.transfer_syntax[0]))
                for cx in results if cx.result == 0x00 and cx.context_id is not None}
    return Negotiated(calling, reply.encode(), contexts=contexts)


def _acceptor_user_information() -> list[object]:
    max_length = MaximumLengthNotification()
    max_length.maximum_length_received = 0  # unlimited: the sender picks large PDUs, fewer headers
    class_uid = ImplementationClassUIDNotification()
    class_uid.implementation_class_uid = PYNETDICOM_IMPLEMENTATION_UID
    version = ImplementationVersionNameNotification()
    version.implementation_version_name = PYNETDICOM_IMPLEMENTATION_VERSION
    return [max_length, class_uid, version]


def _reject_pdu(verdict: tuple[int, int, int]) -> bytes:
    primitive = A_ASSOCIATE()
    primitive.result, primitive.result_source, primitive.diagnostic = verdict
    pdu = A_ASSOCIATE_RJ()
    pdu.from_primitive(primitive)
    return pdu.encode()
