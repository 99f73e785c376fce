"""FHIR Patients to follow-up deaths: the batched poll for linked patients and Bundle import.

Rules:

* ``Patient.deceasedDateTime`` is a death on its date (as written, in the server's own offset: the
  local calendar day). A partial date (year or month only) cannot be shifted exactly: counted as an
  error, not sent.
* ``deceasedBoolean = true`` without a date cannot give an interval: counted as an error.
* An absent or ``false`` deceased[x] says nothing (a hospital does not know of deaths elsewhere):
  nothing is withdrawn from FHIR.
* A Patient is matched by an ``identifier`` whose system maps, through ``[fhir] identifier_systems``,
  to an issuer, and then through the linkage table's blind index, as every other source is. A Patient
  that matches no linked patient is dropped at once (count only).

The poll asks only for linked patients: the linkage table is read in one audited pass
(``followup.fhir_poll``, counts only) and its identifiers go, in batches of ``batch_size``, into
``Patient?identifier=system|value,...``; they exist only in memory.
"""

from __future__ import annotations

import json
import logging
from dataclasses import dataclass, field
from datetime import date, datetime
from pathlib import Path
from collections.abc import Callable
from typing import TYPE_CHECKING, Any

from connector.followup.feeds import FeedDeath, add_counts, import_deaths, resolve
from connector.followup.outcomes import ImportSummary

if TYPE_CHECKING:
    from connector.config import Config
    from connector.outbox import Outbox
    from connector.store.state import StateStore

log = logging.getLogger(__name__)

SOURCE = "fhir"


class BundleError(Exception):
    """The file is not a usable FHIR Bundle (no value from it in the message)."""


@dataclass
class PollSummary:
    """What one poll or Bundle import did: counts only."""

    asked: int = 0  # linked patients asked for
    requests: int = 0
    patients: int = 0  # Patient resources received
    deaths: int = 0
    undated: int = 0
    import_summary: ImportSummary | None = None
    error: str = ""
    extra: dict[str, Any] = field(default_factory=dict)

    def as_dict(self) -> dict[str, Any]:
        s = self.import_summary
        return {"asked": self.asked, "requests": self.requests, "patients": self.patients, "deaths": self.deaths,
                "undated": self.undated, "matched": s.matched if s else 0, "queued": s.queued if s else 0,
                "unchanged": s.unchanged if s else 0, "rejected": dict(s.rejected) if s else {},
                "error": self.error, **self.extra}


def _patient(resource: dict[str, Any]) -> Any:
    from fhir.resources.R4B.patient import Patient

    return Patient.model_validate(resource) if hasattr(Patient, "model_validate") else Patient.parse_obj(resource)


def _death_date(patient: Any) -> tuple[bool, date | None]:
    """(deceased, date or None)."""
    value = getattr(patient, "deceasedDateTime", None)
    if value is not None:
        if isinstance(value, datetime):
            return True, value.date()
        if isinstance(value, date):
            return True, value
        return True, None  # a partial date (year, year-month)
    return bool(getattr(patient, "deceasedBoolean", None)), None


def deaths_of(resources: list[dict[str, Any]], wanted: dict[tuple[str, str], tuple[str, str]],
              summary: PollSummary, pick: Callable[[list[tuple[str, str]]], tuple[str, str] | None] | None = None
              ) -> tuple[list[FeedDeath], int]:
    """(deaths, deceased Patients matching nothing) among Patient resources.

    ``wanted``: (system, value) -> (patient ID, issuer). A Patient whose identifiers are not in it
    is dropped (only counted). ``pick`` (Bundles) returns the linked one among the candidates, or None.
    """
    out: list[FeedDeath] = []
    unmatched = 0
    for resource in resources:
        if not isinstance(resource, dict) or resource.get("resourceType") != "Patient":
            continue
        summary.patients += 1
        try:
            patient = _patient(resource)
        except Exception:  # noqa: BLE001 - one invalid resource must not stop the others
            summary.extra["invalid_resources"] = summary.extra.get("invalid_resources", 0) + 1
            continue
        deceased, when = _death_date(patient)
        if not deceased:
            continue
        ids = [(i.system or "", i.value or "") for i in (patient.identifier or [])]
        candidates = list(dict.fromkeys(wanted[k] for k in ids if k in wanted))
        if pick is not None:  # a Bundle: only a linked identifier counts, so its other patients are dropped
            match = pick(candidates) if candidates else None
        else:  # a poll: every identifier asked for is a linked patient's
            match = candidates[0] if candidates else None
        if match is None:
            unmatched += 1
            continue
        if when is None:
            summary.undated += 1
            continue
        summary.deaths += 1
        out.append(FeedDeath(match[0], match[1], when))
    return out, unmatched


def _entries(bundle: dict[str, Any]) -> list[dict[str, Any]]:
    return [e.get("resource") for e in bundle.get("entry") or [] if isinstance(e, dict) and e.get("resource")]


def _queue(config: Config, provider: Any, store: StateStore, outbox: Outbox, found: tuple[list[FeedDeath], int],
           summary: PollSummary, *, dry_run: bool) -> None:
    deaths, unmatched = found
    summary.import_summary = s = import_deaths(config, provider, store, outbox, SOURCE, deaths,
                                               received=summary.patients, dry_run=dry_run)
    if unmatched:
        s.rejected["unknown_patient"] = s.rejected.get("unknown_patient", 0) + unmatched
    if summary.undated:
        s.rejected["undated_death"] = s.rejected.get("undated_death", 0) + summary.undated
    if (unmatched or summary.undated) and not dry_run:
        with store.write() as conn:
            add_counts(conn, SOURCE, unmatched_dropped=unmatched, errors=summary.undated)


def poll(config: Config, provider: Any, store: StateStore, outbox: Outbox, *, dry_run: bool = False,
         client: Any = None) -> PollSummary:
    """Ask ``[fhir] base_url`` about every linked patient whose issuer has an identifier system."""
    from connector.fhir.client import FhirClient
    from connector.linkage.errors import CorruptRowError

    settings = config.fhir
    systems = settings.systems()
    wanted: dict[tuple[str, str], tuple[str, str]] = {}
    for subject in provider.store.iter_identifiers():
        if isinstance(subject, CorruptRowError):
            continue
        system = systems.get(subject.issuer or config.followup.default_issuer)
        if system and subject.patient_id:
            wanted[(system, subject.patient_id)] = (subject.patient_id, subject.issuer)
    summary = PollSummary(asked=len(wanted))
    provider.audit("followup.fhir_poll", linked_asked=len(wanted), dry_run=dry_run)
    keys = list(wanted)
    resources: list[dict[str, Any]] = []
    own = client is None
    client = client or FhirClient(settings)
    try:
        for start in range(0, len(keys), settings.batch_size):
            batch = keys[start : start + settings.batch_size]
            value = ",".join(f"{_escape(s)}|{_escape(v)}" for s, v in batch)
            for page in client.search_pages("Patient", {"identifier": value, "_count": str(len(batch))}):
                resources.extend(_entries(page))
    finally:
        summary.requests = client.requests
        if own:
            client.close()
    _queue(config, provider, store, outbox, deaths_of(resources, wanted, summary), summary, dry_run=dry_run)
    log.info("followup.fhir_poll asked=%d patients=%d deaths=%d queued=%d", summary.asked, summary.patients,
             summary.deaths, summary.import_summary.queued if summary.import_summary else 0)
    return summary


def _escape(value: str) -> str:
    """FHIR search escaping of a token value: ``\\``, ``,``, ``|`` and ``$`` are backslash-escaped."""
    return value.replace("\\", "\\\\").replace(",", "\\,").replace("|", "\\|").replace("$", "\\$")


def import_bundle(config: Config, path: Path, provider: Any, store: StateStore, outbox: Outbox, *,
                  dry_run: bool = False) -> PollSummary:
    """Import a FHIR Bundle of Patients exported by the hospital (``followup import bundle.json``)."""
    from fhir.resources.R4B.bundle import Bundle

    try:
        data = json.loads(path.read_bytes())
    except (OSError, ValueError):
        raise BundleError("the file is not readable JSON") from None
    if not isinstance(data, dict) or data.get("resourceType") != "Bundle":
        raise BundleError("the file is not a FHIR Bundle (resourceType must be Bundle)")
    try:
        envelope = {k: v for k, v in data.items() if k != "entry"}  # the envelope; entries one by one
        Bundle.model_validate(envelope) if hasattr(Bundle, "model_validate") else Bundle.parse_obj(envelope)
    except Exception:  # noqa: BLE001
        raise BundleError("the Bundle is not valid FHIR R4") from None
    # every identifier whose system maps to an issuer: the blind index decides whether it is linked
    issuers = {system: issuer for issuer, system in config.fhir.systems().items()}
    summary = PollSummary()
    resources = _entries(data)
    wanted: dict[tuple[str, str], tuple[str, str]] = {}
    for r in resources:
        if isinstance(r, dict):
            for ident in r.get("identifier") or []:
                if isinstance(ident, dict) and ident.get("system") in issuers and ident.get("value"):
                    key = (str(ident["system"]), str(ident["value"]))
                    wanted[key] = (key[1], issuers[key[0]])
    def pick(candidates: list[tuple[str, str]]) -> tuple[str, str] | None:
        found = resolve(provider, store.conn, candidates)
        return found[0] if found else None

    _queue(config, provider, store, outbox, deaths_of(resources, wanted, summary, pick), summary, dry_run=dry_run)
    return summary


def scheduled_job(config: Config, store: StateStore, provider: Any) -> Callable[[], None]:
    """The daemon's periodic poll: failures are logged (reason only) and counted, and the next run
    tries again; they never stop the scheduler."""
    from connector.fhir.client import FhirError
    from connector.outbox import Outbox

    outbox = Outbox(store)

    def run() -> None:
        try:
            poll(config, provider, store, outbox)
        except FhirError as exc:
            log.error("fhir poll failed", extra={"event": "fhir_poll_failed", "error": str(exc)})
            with store.write() as conn:
                add_counts(conn, SOURCE, errors=1)

    return run
