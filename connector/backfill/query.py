"""Study-level C-FIND against the configured PACS: which studies a backfill job should retrieve.

Why one query per day: many PACS cap the answers of one C-FIND (Orthanc's ``LimitFindResults``,
vendor defaults of 500 or 1000) and some then end with success, so a ten-year query could be cut
short without a word. A day rarely holds more studies than any cap; a day whose query does not end
with success is asked again hour by hour (StudyTime ranges), and a failure there stops the command
with the day named, so nothing is left out silently.

Keys sent (Study Root, STUDY level): StudyDate (one day), StudyTime (only when a day is split),
StudyInstanceUID, AccessionNumber (matching, for an accession list; otherwise universal),
ModalitiesInStudy, StudyDescription, NumberOfStudyRelatedInstances, NumberOfStudyRelatedSeries,
SOPClassesInStudy (all as return keys). Modality and description filters are applied here, not by
the PACS: support for matching on ModalitiesInStudy varies between PACS, and the regex could not
be expressed in DICOM wildcards anyway.
"""

from __future__ import annotations

import datetime as dt
import logging
import re
import time
from collections.abc import Callable, Iterable, Iterator
from dataclasses import dataclass, field
from typing import Any

from pydicom.dataset import Dataset
from pynetdicom import AE
from pynetdicom.sop_class import StudyRootQueryRetrieveInformationModelFind  # type: ignore[attr-defined]

from connector.pacs import scu as pacs
from connector.backfill.worklist import FoundStudy
from connector.config import Config

log = logging.getLogger(__name__)


class PacsUnavailable(Exception):
    """The PACS could not be reached or refused the association."""


class QueryFailed(Exception):
    """A C-FIND ended with a failure status even when split; the message names the day, never a patient."""


@dataclass(frozen=True)
class StudyFilter:
    date_from: dt.date | None = None
    date_to: dt.date | None = None
    modalities: tuple[str, ...] = ()
    description: str = ""  # regex, case-insensitive
    accessions: tuple[str, ...] = ()

    def as_dict(self) -> dict[str, Any]:
        """What the job keeps: the operator's filters, and of an accession list only its length."""
        return {"from": self.date_from.isoformat() if self.date_from else None,
                "to": self.date_to.isoformat() if self.date_to else None,
                "modalities": list(self.modalities), "description": self.description,
                "accessions": len(self.accessions)}

    def days(self) -> list[dt.date]:
        if self.date_from is None or self.date_to is None:
            return []
        n = (self.date_to - self.date_from).days
        return [self.date_from + dt.timedelta(days=i) for i in range(n + 1)]


@dataclass
class QueryReport:
    studies: list[FoundStudy] = field(default_factory=list)
    queries: int = 0  # C-FIND requests sent
    matched: int = 0  # answers before the modality/description filters
    split_days: int = 0  # days asked again hour by hour
    seconds: float = 0.0

    @property
    def instances(self) -> int:
        return sum(s.expected_instances or 0 for s in self.studies)


def _identifier(**keys: str) -> Dataset:
    ds = Dataset()
    ds.QueryRetrieveLevel = "STUDY"
    ds.StudyDate = keys.get("StudyDate", "")
    if "StudyTime" in keys:
        ds.StudyTime = keys["StudyTime"]
    ds.StudyInstanceUID = ""
    ds.AccessionNumber = keys.get("AccessionNumber", "")
    ds.ModalitiesInStudy = ""
    ds.StudyDescription = ""
    ds.NumberOfStudyRelatedInstances = ""
    ds.NumberOfStudyRelatedSeries = ""
    ds.SOPClassesInStudy = ""
    return ds


def _multi(value: Any) -> tuple[str, ...]:
    if value is None or value == "":
        return ()
    if isinstance(value, (list, tuple)) or type(value).__name__ == "MultiValue":
        return tuple(str(v) for v in value if str(v))
    return tuple(v for v in str(value).split("\\") if v)


class StudyQuery:
    """One association to the PACS for a series of study-level C-FINDs."""

    def __init__(self, config: Config) -> None:
        if not config.pacs.configured:
            raise PacsUnavailable("no PACS configured: set [pacs] host and ae_title")
        self.config = config
        ae = AE(ae_title=pacs.calling_ae(config))
        ae.add_requested_context(StudyRootQueryRetrieveInformationModelFind)
        self.assoc = pacs.associate(config, ae)  # PacsTlsError: a configuration problem, for the caller
        if not self.assoc.is_established:
            where = f"{config.pacs.host}:{config.pacs.port}"
            why = "rejected the association" if self.assoc.is_rejected else "did not answer"
            raise PacsUnavailable(f"PACS {config.pacs.ae_title}@{where} {why}")

    def close(self) -> None:
        if self.assoc.is_established:
            self.assoc.release()

    def __enter__(self) -> StudyQuery:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    def find(self, identifier: Dataset) -> tuple[bool, list[Dataset]]:
        """(ended with success, answers)."""
        answers: list[Dataset] = []
        ok = False
        for status, ds in self.assoc.send_c_find(identifier, StudyRootQueryRetrieveInformationModelFind):
            code = getattr(status, "Status", None)
            if code is None:  # no answer in time: the association is gone
                raise PacsUnavailable("the PACS stopped answering a C-FIND")
            if code in (0xFF00, 0xFF01):
                if ds is not None:
                    answers.append(ds)
            else:
                ok = code == 0x0000
        return ok, answers


def find_studies(config: Config, flt: StudyFilter,
                 progress: Callable[[int, int], None] | None = None) -> QueryReport:
    """Run the day-sized (or accession) C-FINDs and return the matching studies, deduplicated."""
    started = time.monotonic()
    report = QueryReport()
    regex = re.compile(flt.description, re.IGNORECASE) if flt.description else None
    wanted = {m.upper() for m in flt.modalities}
    seen: set[str] = set()
    with StudyQuery(config) as q:
        for answer in _answers(q, flt, report, progress):
            uid = str(answer.get("StudyInstanceUID", "") or "")
            if not uid or uid in seen:
                continue
            report.matched += 1
            modalities = _multi(answer.get("ModalitiesInStudy"))
            if wanted and not wanted.intersection(m.upper() for m in modalities):
                continue
            if regex is not None and not regex.search(str(answer.get("StudyDescription", "") or "")):
                continue
            if flt.accessions and flt.date_from and flt.date_to:
                day = str(answer.get("StudyDate", "") or "")
                if not (flt.date_from.strftime("%Y%m%d") <= day <= flt.date_to.strftime("%Y%m%d")):
                    continue
            seen.add(uid)
            count = answer.get("NumberOfStudyRelatedInstances")
            try:
                expected = int(count) if count not in (None, "") else None
            except (TypeError, ValueError):
                expected = None
            report.studies.append(FoundStudy(uid, expected, modalities, _multi(answer.get("SOPClassesInStudy"))))
    report.seconds = time.monotonic() - started
    log.info("backfill query done", extra={"event": "backfill_query", "queries": report.queries,
                                           "matched": report.matched, "studies": len(report.studies),
                                           "split_days": report.split_days})
    return report


def _answers(q: StudyQuery, flt: StudyFilter, report: QueryReport,
             progress: Callable[[int, int], None] | None) -> Iterator[Dataset]:
    if flt.accessions:
        for i, accession in enumerate(flt.accessions):
            report.queries += 1
            ok, answers = q.find(_identifier(AccessionNumber=accession))
            if not ok:
                raise QueryFailed(f"the C-FIND for accession list entry {i + 1} did not end with success")
            yield from answers
            if progress:
                progress(i + 1, len(flt.accessions))
        return
    days = flt.days()
    for i, day in enumerate(days):
        yield from _day(q, day, report)
        if progress:
            progress(i + 1, len(days))


def _day(q: StudyQuery, day: dt.date, report: QueryReport) -> Iterable[Dataset]:
    da = day.strftime("%Y%m%d")
    report.queries += 1
    ok, answers = q.find(_identifier(StudyDate=da))
    if ok:
        return answers
    # cut short (result limit) or refused: ask again hour by hour; each hour must end with success
    report.split_days += 1
    log.warning("a day's C-FIND did not end with success; asking hour by hour",
                extra={"event": "backfill_query_split", "day": day.isoformat(), "answers": len(answers)})
    out: list[Dataset] = []
    for hour in range(24):
        report.queries += 1
        ok, part = q.find(_identifier(StudyDate=da, StudyTime=f"{hour:02d}0000-{hour:02d}5959.999999"))
        if not ok:
            raise QueryFailed(f"the C-FIND for {day.isoformat()} {hour:02d}h did not end with success "
                              f"(a PACS result limit below one hour's studies, or a PACS error)")
        out.extend(part)
    return out
