"""Follow-up outcomes from site coordinators: deaths and MACE, under the pseudonym, with shifted dates.

Public entry points:

* :func:`import_file` / :class:`FollowupImporter` (``site-connector followup import``): one file.
* :func:`process_inbox` (the daemon's scheduler): every settled file in ``[followup] inbox``.
* :class:`FollowupConfig` (``[followup]``), :class:`ImportSummary`, :data:`EVENT_TYPES`.
* :func:`create_schema`: the ``followup_events`` ledger (a state-DB migration step).
* :mod:`connector.followup.feeds`: deaths from machine feeds (HL7 v2 ADT: :mod:`connector.hl7`; FHIR:
  :mod:`connector.fhir`) through the same importer, so every source makes the same event;
  :mod:`connector.followup.source_counts`: per-source counts.

See ``docs/followup.md`` for the file format, the rules and what leaves the site.
"""

from connector.followup.events import (
    EVENT_TYPES,
    REPEATABLE_EVENTS,
    SINGLE_EVENTS,
    EventContent,
    idempotency_key,
)
from connector.followup.importer import FollowupImporter, import_file
from connector.followup.inbox import process_inbox
from connector.followup.ledger import ledger_counts
from connector.followup.outcomes import REASONS, ImportSummary, RowOutcome
from connector.followup.reading import FollowupFileError
from connector.followup.schema import create_schema
from connector.settings.followup import FollowupConfig

__all__ = [
    "EVENT_TYPES",
    "REASONS",
    "REPEATABLE_EVENTS",
    "SINGLE_EVENTS",
    "EventContent",
    "FollowupConfig",
    "FollowupFileError",
    "FollowupImporter",
    "ImportSummary",
    "RowOutcome",
    "create_schema",
    "idempotency_key",
    "import_file",
    "ledger_counts",
    "process_inbox",
]
