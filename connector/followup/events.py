"""Follow-up event types and the JSON the registry receives.

The sent JSON is the whole contract with the registry (``POST /api/v1/events``)::

    {"pseudonym": "SITE01-7K3M9QX2", "event": "death", "event_date": "2019-02-11",
     "days_from_index": 1412, "source": "death_index", "version": 1, "retracted": false,
     "event_id": "9f1c...", ["cause": "..." only where the site allows free text]}

``event_date`` is shifted by the patient's offset, exactly as the images' dates were, so the
registry's "event date minus index-scan date" equals ``days_from_index``, which is computed from the
real dates here. ``event_id`` is an opaque keyed hash that names *which* event a new version
replaces (a corrected MI date, say); it reveals nothing about the patient or the real dates.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

#: At most one per patient: a new date for one of these is a correction of the earlier one.
SINGLE_EVENTS = ("death", "cardiovascular_death", "last_known_alive")
#: A patient may have several; they are told apart by the coordinator's event_id, else by date.
REPEATABLE_EVENTS = ("mi", "unstable_angina", "pci", "cabg", "hf_admission")
EVENT_TYPES = SINGLE_EVENTS + REPEATABLE_EVENTS

#: Keys of the sent JSON, besides the optional free-text fields a site may allow.
EVENT_FIELDS = ("pseudonym", "event", "event_date", "days_from_index", "source", "version", "retracted", "event_id")


@dataclass(frozen=True)
class EventContent:
    """What an event says, without its version: two rows saying the same thing are equal."""

    pseudonym: str
    event: str
    event_date: str  # shifted, ISO 8601
    days_from_index: int
    source: str
    retracted: bool = False
    cause: str | None = None  # only set when the site allows the cause to leave

    def as_json(self, event_id: str, version: int) -> dict[str, Any]:
        out: dict[str, Any] = {
            "pseudonym": self.pseudonym,
            "event": self.event,
            "event_date": self.event_date,
            "days_from_index": self.days_from_index,
            "source": self.source,
            "version": version,
            "retracted": self.retracted,
            "event_id": event_id,
        }
        if self.cause is not None:
            out["cause"] = self.cause
        return out

    @classmethod
    def from_json(cls, data: dict[str, Any]) -> EventContent:
        return cls(
            pseudonym=data["pseudonym"],
            event=data["event"],
            event_date=data["event_date"],
            days_from_index=int(data["days_from_index"]),
            source=data["source"],
            retracted=bool(data["retracted"]),
            cause=data.get("cause"),
        )


def idempotency_key(event_id: str, version: int) -> str:
    """The outbox/registry key of one version of one event: re-sending it is a no-op."""
    return f"followup-{event_id}-v{version}"
