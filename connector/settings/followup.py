"""The ``[followup]`` configuration section: how coordinators' outcome files are read and what leaves.

```toml
[followup]
inbox = "/srv/site-connector/followup-inbox"   # unset = no inbox (CLI import only)
column_patient_id = "MRN"                       # the site's own headers
column_event_date = "Date"
default_issuer = "HOSP-A"                       # files without an issuer column
date_formats = ["%d/%m/%Y"]                     # besides ISO 8601 and YYYYMMDD
event_aliases = ["AMI=mi", "Heart failure=hf_admission"]
allowed_free_text = []                          # e.g. ["cause"]: only after the registry agreed
```

Why so strict by default: the whole point of follow-up is that outcomes reach the registry under the
pseudonym only. Free text (a cause of death typed from a chart) is where names and MRNs hide, so it
stays at the site unless the registry and the site's privacy officer decided otherwise.
"""

from __future__ import annotations

import re
from dataclasses import dataclass
from pathlib import Path

from connector.settings.fields import check, setting

#: Outgoing text fields that a site may allow (each still goes through the PHI check).
FREE_TEXT_FIELDS = ("cause", "source")

DEFAULT_SOURCES = [
    "unspecified",
    "death_index",
    "death_certificate",
    "medical_records",
    "chart_review",
    "hospital_discharge",
    "gp_records",
    "patient_contact",
    "family_contact",
    "other",
]

_CODE = re.compile(r"[a-z0-9_]{1,40}")
_HEADER = check(lambda v: bool(v.strip()), "must not be empty")


def _valid_alias(entry: str) -> bool:
    alias, sep, target = entry.partition("=")
    return bool(sep and alias.strip() and target.strip())


def _valid_format(fmt: str) -> bool:
    return "%" in fmt and all(d in fmt for d in ("%d", "%m")) and ("%Y" in fmt or "%y" in fmt)


@dataclass(frozen=True)
class FollowupConfig:
    inbox: Path | None = setting(
        None, doc="folder where coordinators drop CSV/XLSX files; processed ones move to done/ or failed/; unset = none"
    )
    poll_seconds: float = setting(60.0, check(lambda v: v > 0, "must be positive"),
                                  doc="how often the daemon looks in the inbox")
    settle_seconds: float = setting(10.0, check(lambda v: v >= 0, "must be zero or more"),
                                    doc="a dropped file is taken once unmodified this long (copies over SMB)")
    column_patient_id: str = setting("patient_id", _HEADER, doc="header of the patient ID (MRN) column")
    column_issuer: str = setting("issuer", doc="header of the issuer column (optional column)")
    column_event: str = setting("event", _HEADER, doc="header of the event type column")
    column_event_date: str = setting("event_date", _HEADER, doc="header of the event date column")
    column_cause: str = setting("cause", doc="header of the cause column (optional; dropped unless allowed)")
    column_source: str = setting("source", doc="header of the source column (optional)")
    column_retract: str = setting("retract",
                                  doc="header of the retract flag column (optional; yes/true/1/x withdraws the event)")
    column_event_id: str = setting(
        "event_id",
        doc="header of the coordinator's own event reference (optional; lets a repeatable event's date be corrected; "
        "never sent)",
    )
    default_issuer: str = setting("", doc="issuer of patient IDs for files without an issuer column (or blank cells)")
    date_formats: list[str] = setting(
        [], check(lambda v: all(_valid_format(f) for f in v), "every entry must be a strptime format with %d, %m, %Y"),
        doc="extra date formats, e.g. [\"%d/%m/%Y\"]; ISO 8601 and YYYYMMDD are always accepted",
    )
    event_aliases: list[str] = setting(
        [], check(lambda v: all(_valid_alias(e) for e in v), "every entry must look like \"Site word=event_type\""),
        doc="site words for event types, e.g. [\"AMI=mi\"]",
    )
    sources: list[str] = setting(
        DEFAULT_SOURCES, check(lambda v: bool(v) and all(_CODE.fullmatch(s) for s in v),
                               "must be a non-empty list of lower-case codes (a-z, 0-9, _)"),
        doc="accepted source codes; a blank source is sent as the first one",
    )
    allowed_free_text: list[str] = setting(
        [], check(lambda v: all(f in FREE_TEXT_FIELDS for f in v), f"entries must be among {', '.join(FREE_TEXT_FIELDS)}"),
        doc="text fields sent as typed (after the PHI check); empty = cause dropped, source must be a code",
    )
    max_text_length: int = setting(200, check(lambda v: 1 <= v <= 2000, "must be between 1 and 2000"),
                                   doc="longest allowed free-text value; longer rows are rejected")
