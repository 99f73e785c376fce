"""What the site sent for a de-identified study against what the registry holds: the comparison itself.

Pure values and one function, so the rule "verified = every sent instance held, and the manifest the
same where the registry has the JSON API" is read and tested in one place.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any


@dataclass(frozen=True)
class Sent:
    """What the site sent for one de-identified study UID: from the manifest payload it queued."""

    study_uid: str
    series: dict[str, int]  # series UID -> instances sent
    sop_uids: frozenset[str]
    manifest: dict[str, Any]

    @classmethod
    def from_manifest(cls, payload: dict[str, Any]) -> Sent:
        series = {str(s["series_instance_uid"]): int(s.get("instances", 0)) for s in payload.get("series") or []}
        return cls(str(payload["study_instance_uid"]), series,
                   frozenset(str(u) for u in payload.get("sop_instance_uids") or []), payload)


@dataclass
class Held:
    """What the registry answered for one de-identified study UID."""

    series: dict[str, set[str]] = field(default_factory=dict)  # series UID -> SOP Instance UIDs (QIDO-RS)
    manifest: dict[str, Any] | None = None  # the manifest body it stores; None = none held
    api: bool = False  # False: a plain DICOMweb peer, the manifest is not checked


@dataclass(frozen=True)
class Comparison:
    missing: frozenset[str]  # sent, not held
    series_short: int  # series holding fewer instances than were sent
    unexpected: int  # held in the sent series, not in what was sent (counted only)
    manifest: str  # "ok", "missing", "different" or "unchecked"

    @property
    def ok(self) -> bool:
        return not self.missing and self.manifest in ("ok", "unchecked")


def compare(sent: Sent, held: Held) -> Comparison:
    """The registry's view of one study against what the site sent."""
    held_uids: set[str] = set().union(*held.series.values()) if held.series else set()
    missing = sent.sop_uids - held_uids
    short = sum(1 for uid, n in sent.series.items() if len(held.series.get(uid, ())) < n)
    unexpected = len(held_uids - sent.sop_uids)
    if not held.api:
        manifest = "unchecked"
    elif held.manifest is None:
        manifest = "missing"
    elif ({str(u) for u in held.manifest.get("sop_instance_uids") or []} != set(sent.sop_uids)
          or held.manifest.get("study_instance_uid") != sent.study_uid):
        manifest = "different"
    else:
        manifest = "ok"
    return Comparison(frozenset(missing), short, unexpected, manifest)
