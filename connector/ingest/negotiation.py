"""Association negotiation for the receiver: who may connect, and which contexts are accepted.

The A-ASSOCIATE PDUs are decoded and encoded with pynetdicom's PDU classes and the presentation
contexts negotiated with pynetdicom's own rules, so the answers a PACS gets are pynetdicom's. What
is ours, and why:
- Callers are filtered here, before anything is accepted. A calling AE title or IP address that is
  not on the allow-list gets an A-ASSOCIATE-RJ, never an accepted association whose data is thrown
  away; only a caller that passed takes an association place (``claim_slot``), so callers that are
  not allowed can never use up ``max_associations``.
- Only what docs/dicom-conformance.md promises is accepted: Verification, and the Storage SOP
  classes pynetdicom knows (with the first transfer syntax the caller proposes) plus any configured
  in ``[dicom] extra_storage_sop_classes``. Every other abstract syntax (worklist, query/retrieve,
  unknown or malformed UIDs) is rejected for its presentation context alone, result 3 "abstract
  syntax not supported", and the rest of the association goes on (issue 24). pynetdicom's
  "unrestricted" negotiation accepted any unknown UID as private storage, even ``<script>``.
- The maximum PDU length we announce is finite, so a P-DATA-TF PDU longer than it can be refused
  before a byte of it is read (:mod:`connector.ingest.association`).
"""

from __future__ import annotations

import ipaddress
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

from pynetdicom import PYNETDICOM_IMPLEMENTATION_UID, PYNETDICOM_IMPLEMENTATION_VERSION
from pynetdicom.pdu import A_ASSOCIATE_AC, A_ASSOCIATE_RJ, A_ASSOCIATE_RQ
from pynetdicom.pdu_primitives import (
    A_ASSOCIATE,
    ImplementationClassUIDNotification,
    ImplementationVersionNameNotification,
    MaximumLengthNotification,
    SCP_SCU_RoleSelectionNegotiation,
)
from pynetdicom.presentation import PresentationContext, build_context, negotiate_as_acceptor, negotiate_unrestricted
from pynetdicom.service_class import StorageServiceClass
from pynetdicom.sop_class import Verification, uid_to_service_class  # type: ignore[attr-defined]

DICOM_APPLICATION_CONTEXT = "1.2.840.10008.3.1.1.1"
# An A-ASSOCIATE-RQ is a few kB (128 contexts with a dozen transfer syntaxes each: ~50 kB). It is
# read whole before it is decoded, by every pending connection: this bounds that memory.
MAX_REQUEST_PDU = 256 * 1024

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

    def host_allowed(self, address: str) -> bool:
        """Whether ``address`` is on the IP allow-list (True when the list is empty)."""
        if not self.networks:
            return True
        try:
            ip = ipaddress.ip_address(address.split("%")[0])
        except ValueError:
            return False
        if isinstance(ip, ipaddress.IPv6Address) and ip.ipv4_mapped:
            ip = ip.ipv4_mapped
        return any(ip in net for net in self.networks)

    def reason_to_reject(self, calling_aet: str, address: str) -> tuple[int, int, int] | None:
        """(result, source, diagnostic) for A-ASSOCIATE-RJ, or None to admit."""
        if not self.host_allowed(address):
            return REJECT_NO_REASON
        if self.ae_titles and calling_aet.strip() not in self.ae_titles:
            return REJECT_CALLING_AET
        return None


@dataclass(frozen=True)
class Offer:
    """What the receiver offers every admitted caller: the PDU size it takes and what it stores."""

    max_pdu_length: int  # announced in the A-ASSOCIATE-AC; a longer P-DATA-TF PDU is refused unread
    extra_storage_classes: frozenset[str] = frozenset()  # private or newer storage SOP classes to accept

    def stores(self, abstract_syntax: str) -> bool:
        """A storage SOP class this receiver accepts (Verification is negotiated separately)."""
        return abstract_syntax in self.extra_storage_classes or (
            uid_to_service_class(abstract_syntax) is StorageServiceClass)


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


def negotiate(raw_pdu: bytes, address: str, admission: Admission, offer: Offer, *,
              claim_slot: Callable[[], bool]) -> Negotiated:
    """Answer the A-ASSOCIATE-RQ in ``raw_pdu`` (header included) from a caller at ``address``.

    ``claim_slot`` is called only for a caller the allow-lists admit; False (every association place
    taken) rejects it as busy.
    """
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
    if verdict is None and not claim_slot():
        verdict = REJECT_BUSY
    if verdict is not None:
        return Negotiated(calling, _reject_pdu(verdict), rejected=verdict)

    roles = {item.sop_class_uid: (item.scu_role, item.scp_role) for item in request.user_information
             if isinstance(item, SCP_SCU_RoleSelectionNegotiation)}
    results, role_replies = _negotiate_contexts(request.presentation_context_definition_list, offer, roles)
    accept = A_ASSOCIATE()
    accept.application_context_name = request.application_context_name
    accept.calling_ae_title = request.calling_ae_title
    accept.called_ae_title = request.called_ae_title
    accept.result = 0x00
    accept.result_source = 0x01
    accept.presentation_context_definition_results_list = results
    accept.user_information = [*_acceptor_user_information(offer.max_pdu_length), *role_replies]
    reply = A_ASSOCIATE_AC()
    reply.from_primitive(accept)
    contexts = {int(cx.context_id): (str(cx.abstract_syntax), str(cx.transfer_syntax[0]))
                for cx in results if cx.result == 0x00 and cx.context_id is not None}
    return Negotiated(calling, reply.encode(), contexts=contexts)


def _negotiate_contexts(proposed: list[PresentationContext], offer: Offer,
                        roles: dict[Any, tuple[Any, Any]]) -> tuple[list[PresentationContext], list[Any]]:
    """Storage contexts as pynetdicom's unrestricted storage SCP would (first proposed transfer
    syntax, any role selection), everything else against Verification alone: so any other abstract
    syntax is answered 3, abstract syntax not supported."""
    if any(not cx.transfer_syntax for cx in proposed):
        raise RequestError("presentation context without a transfer syntax")
    storage = [cx for cx in proposed if offer.stores(str(cx.abstract_syntax))]
    others = [cx for cx in proposed if not offer.stores(str(cx.abstract_syntax))]
    stored, storage_roles = negotiate_unrestricted(storage, [], roles)
    answered, other_roles = negotiate_as_acceptor(others, [build_context(Verification)], roles)
    results = sorted([*stored, *answered], key=lambda cx: int(cx.context_id or 0))
    return results, [*storage_roles, *other_roles]


def _acceptor_user_information(max_pdu_length: int) -> list[object]:
    max_length = MaximumLengthNotification()
    max_length.maximum_length_received = max_pdu_length
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
