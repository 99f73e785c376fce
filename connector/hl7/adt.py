"""What an ADT message says about a death, read with python-hl7 (``hl7``).

The rules (docs/followup.md, "HL7 v2 ADT"):

* a death: PID-30 (patient death indicator) = ``Y`` with PID-29 (death date/time), in A03, A04, A08
  or A31; or an A03 whose PV1-36 (discharge disposition) is one of ``[hl7] expired_dispositions``,
  dated by PID-29, else PV1-45 (discharge date/time);
* a withdrawal: PID-30 = ``N`` stated explicitly (a missing PID-30 says nothing: most updates omit
  it), or A11/A13 (cancel admit/discharge) carrying an "expired" PV1-36;
* a merge: A40 (MRG-1 prior identifiers into PID-3) moves nothing on its own; the listener records
  it when the prior patient is linked, so a later death on the surviving identifier is matched.

Identifiers are every PID-3 repetition (or only those whose PID-3.5 type is in
``identifier_types``), with the issuer from PID-3.4 through ``issuer_map``.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from datetime import date
from typing import Any

import hl7

from connector.settings.followup import FollowupConfig
from connector.settings.hl7 import Hl7Config

#: Triggers acted on. Other ADT triggers and other message types are refused with AR.
HANDLED_TRIGGERS = ("A03", "A04", "A08", "A11", "A13", "A31", "A40")
DEATH_TRIGGERS = ("A03", "A04", "A08", "A31")
CANCEL_TRIGGERS = ("A11", "A13")

DEATH, RETRACT, MERGE, NOTHING = "death", "retract", "merge", "nothing"


class Rejected(Exception):
    """The message cannot be taken: ``code`` is AR or AE, ``reason`` a short code for MSA-3/ERR."""

    def __init__(self, code: str, reason: str, control_id: str = "", trigger: str = "") -> None:
        super().__init__(reason)
        self.code, self.reason, self.control_id, self.trigger = code, reason, control_id, trigger


@dataclass
class AdtFacts:
    """The parts of one ADT message that matter here (identifiers in memory only)."""

    control_id: str
    trigger: str
    sender: tuple[str, str]  # MSH-3, MSH-4: where our ACK is addressed
    version: str
    kind: str = NOTHING
    identifiers: list[tuple[str, str]] = field(default_factory=list)  # (patient ID, issuer), PID-3
    prior: list[tuple[str, str]] = field(default_factory=list)  # MRG-1, for A40
    death_date: date | None = None


def decode(raw: bytes) -> str:
    try:
        return raw.decode("utf-8")
    except UnicodeDecodeError:
        return raw.decode("cp1252", errors="replace")


def _get(msg: Any, segment: str, fld: int, rep: int = 1, comp: int = 1, sub: int = 1, seg_num: int = 1) -> str:
    try:
        return str(msg.extract_field(segment, seg_num, fld, rep, comp, sub)).strip()
    except (KeyError, IndexError, ValueError, TypeError):
        return ""


def _repetitions(msg: Any, segment: str, fld: int) -> int:
    try:
        value = msg.segment(segment)(fld)
    except (KeyError, IndexError):
        return 0
    return max(1, len(value)) if isinstance(value, hl7.Field) else (1 if str(value) else 0)


def _hl7_date(value: str) -> date | None:
    digits = value[:8]
    if len(digits) != 8 or not digits.isdigit():
        return None
    try:
        return date(int(digits[:4]), int(digits[4:6]), int(digits[6:8]))
    except ValueError:
        return None


def _issuer_table(config: Hl7Config) -> dict[str, str]:
    return {a.strip().upper(): i.strip() for a, _, i in (e.partition("=") for e in config.issuer_map)}


def _identifiers(msg: Any, segment: str, fld: int, config: Hl7Config, followup: FollowupConfig
                 ) -> list[tuple[str, str]]:
    table = _issuer_table(config)
    types = {t.strip().upper() for t in config.identifier_types}
    out: list[tuple[str, str]] = []
    for rep in range(1, _repetitions(msg, segment, fld) + 1):
        pid = _get(msg, segment, fld, rep, 1)
        if not pid:
            continue
        if types and _get(msg, segment, fld, rep, 5).upper() not in types:
            continue
        namespace, universal = _get(msg, segment, fld, rep, 4, 1), _get(msg, segment, fld, rep, 4, 2)
        issuer = table.get(namespace.upper()) if namespace else None
        if issuer is None and universal:
            issuer = table.get(universal.upper())
        if issuer is None:
            issuer = namespace or universal
        out.append((pid, issuer or followup.default_issuer))
    return out


def parse(raw: bytes, config: Hl7Config, followup: FollowupConfig) -> AdtFacts:
    """Read one message; :class:`Rejected` (AR) when it is not an HL7 v2 ADT message we handle."""
    text = decode(raw).replace("\r\n", "\r").replace("\n", "\r")
    if not text.startswith("MSH") or len(text) < 8:
        raise Rejected("AR", "not_hl7")
    try:
        msg = hl7.parse(text)
        msg.segment("MSH")
    except Exception:  # the library raises many kinds on garbage; none may take the listener down
        raise Rejected("AR", "malformed") from None
    control_id = _get(msg, "MSH", 10)
    msg_type, trigger = _get(msg, "MSH", 9, 1, 1).upper(), _get(msg, "MSH", 9, 1, 2).upper()
    if not control_id:
        raise Rejected("AR", "missing_control_id", "", trigger)
    if msg_type != "ADT":
        raise Rejected("AR", "unsupported_message_type", control_id, trigger)
    if trigger not in HANDLED_TRIGGERS:
        raise Rejected("AR", "unsupported_event", control_id, trigger)
    facts = AdtFacts(control_id, trigger, (_get(msg, "MSH", 3), _get(msg, "MSH", 4)), _get(msg, "MSH", 12))
    try:
        msg.segment("PID")
    except (KeyError, IndexError):
        raise Rejected("AR", "missing_pid", control_id, trigger) from None
    facts.identifiers = _identifiers(msg, "PID", 3, config, followup)
    if not facts.identifiers:
        raise Rejected("AR", "missing_patient_id", control_id, trigger)
    indicator = _get(msg, "PID", 30).upper()
    death = _hl7_date(_get(msg, "PID", 29))
    expired = {c.strip().upper() for c in config.expired_dispositions}
    disposition = _get(msg, "PV1", 36).upper()
    if trigger == "A40":
        facts.prior = _identifiers(msg, "MRG", 1, config, followup)
        if not facts.prior:
            raise Rejected("AR", "missing_prior_id", control_id, trigger)
        facts.kind = MERGE
    elif trigger in CANCEL_TRIGGERS:
        facts.kind = RETRACT if (disposition and disposition in expired) or indicator == "N" else NOTHING
    elif indicator == "Y" or (trigger == "A03" and disposition and disposition in expired):
        facts.death_date = death or (_hl7_date(_get(msg, "PV1", 45)) if trigger == "A03" else None)
        if facts.death_date is None:
            raise Rejected("AR", "death_without_date", control_id, trigger)
        facts.kind = DEATH
    elif indicator == "N":
        facts.kind = RETRACT
    return facts
