"""Study-level C-FIND against the configured PACS: which studies a backfill job should retrieve.

Adaptive range query: one C-FIND for the whole date range, split in halves only where the answer
is cut short, so a 31-year range with a few thousand studies costs a handful of round trips, not
one per day (11,323). An answer is *cut short* when the PACS ends it with anything but success
(Orthanc ends a C-FIND that hits ``LimitFindResults`` with 0xFE00 after exactly that many answers)
or when it holds at least ``[pacs] max_results`` answers (many PACS truncate at their limit and
still say success, so a full answer is never trusted). A cut-short range is asked again as two
halves by date; a single day is split by time of day (StudyTime ranges) down to one second; a
second that is still cut short stops the query with the day and time named (``QueryFailed``), so
nothing is ever left out silently. Answers of a cut-short query are dropped (its halves bring
them again); studies are de-duplicated by StudyInstanceUID whatever happens. Each split is
logged (``backfill_query_split``: the range, the number of answers and why, never a patient
value) and kept in the job's record.

``[pacs] range_queries = false``: for a PACS that refuses date ranges (or answers them wrongly,
e.g. with nothing), one C-FIND per day, each day split by time only when cut short. A PACS that
answers a range with an error status is split down to single days automatically.

A study without a StudyTime cannot be matched by a time range: on a day that had to be split by
time, such a study is not found (a PACS almost always has one; a day-sized limit is rare).

Keys sent (Study Root, STUDY level): StudyDate (a range or one day), StudyTime (only when a day
is split), StudyInstanceUID, AccessionNumber (matching, for an accession list; otherwise
universal), ModalitiesInStudy, StudyDescription, NumberOfStudyRelatedInstances,
NumberOfStudyRelatedSeries, SOPClassesInStudy (all as return keys). Modality and description
filters are applied here, not by the PACS: support for matching on ModalitiesInStudy varies
between PACS, and the regex could not be expressed in DICOM wildcards anyway.

Why one module, long as it is: the range splitting, the day-by-day fall-back and the filters
share one answer type and one notion of "cut short"; the C-FIND itself is :mod:`connector.pacs.scu`.
"""

from __future__ import annotations

import datetime as dt
import logging
import re
import time
from collections.abc import Callable, Iterator, Sequence
from dataclasses import dataclass, field
from typing import Any

from pydicom.dataset import Dataset
from pynetdicom import AE
from pynetdicom.sop_class import StudyRootQueryRetrieveInformationModelFind  # type: ignore[attr-defined]

from connector.pacs import scu
from connector.backfill.worklist import FoundStudy
from connector.config import Config

log = logging.getLogger(__name__)


class PacsUnavailable(Exception):
    """The PACS could not be reached or refused the association."""


class QueryFailed(Exception):
    """A C-FIND ended with a failure status even when split as far as it goes; the message names the
    day (and time), never a patient."""


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


DAY_SECONDS = 86400
MAX_DECISIONS_KEPT = 200  # split decisions kept in the job's record (all are logged)


@dataclass(frozen=True)
class Window:
    """A slice of the query range: whole days ``first``..``last``, or, within one day, the seconds
    ``start``..``end`` (inclusive) of its time of day."""

    first: dt.date
    last: dt.date
    start: int | None = None
    end: int | None = None

    @property
    def days(self) -> float:
        """Its share of the range, in days (progress)."""
        if self.start is None or self.end is None:
            return float((self.last - self.first).days + 1)
        return (self.end - self.start + 1) / DAY_SECONDS

    def keys(self) -> dict[str, str]:
        """StudyDate (one day, or a range) and, within a day, StudyTime (a range)."""
        first = self.first.strftime("%Y%m%d")
        out = {"StudyDate": first if self.first == self.last else f"{first}-{self.last.strftime('%Y%m%d')}"}
        if self.start is not None and self.end is not None:
            out["StudyTime"] = f"{_hhmmss(self.start)}-{_hhmmss(self.end)}.999999"
        return out

    def halves(self) -> tuple[Window, Window] | None:
        """Two halves by date, then by time of day; None for a single second."""
        if self.first < self.last:
            mid = self.first + dt.timedelta(days=(self.last - self.first).days // 2)
            return Window(self.first, mid), Window(mid + dt.timedelta(days=1), self.last)
        start, end = (0, DAY_SECONDS - 1) if self.start is None or self.end is None else (self.start, self.end)
        if start >= end:
            return None
        mid = (start + end) // 2
        return Window(self.first, self.last, start, mid), Window(self.first, self.last, mid + 1, end)

    def describe(self) -> str:
        text = self.first.isoformat() if self.first == self.last else f"{self.first.isoformat()}..{self.last.isoformat()}"
        if self.start is not None and self.end is not None:
            text += f" {_clock(self.start)}-{_clock(self.end)}"
        return text


def _hhmmss(seconds: int) -> str:
    return f"{seconds // 3600:02d}{seconds // 60 % 60:02d}{seconds % 60:02d}"


def _clock(seconds: int) -> str:
    return f"{seconds // 3600:02d}:{seconds // 60 % 60:02d}:{seconds % 60:02d}"


@dataclass(frozen=True)
class Answer:
    """One C-FIND's outcome: its final status and the matches it carried."""

    status: int
    matches: Sequence[Any]


@dataclass(frozen=True)
class Split:
    """A range the PACS cut short, and why (no patient value)."""

    window: Window
    answers: int
    reason: str
    kept: bool = False  # a single second at max_results with success: its answer was kept, not split

    def as_dict(self) -> dict[str, Any]:
        return {"range": self.window.describe(), "answers": self.answers, "reason": self.reason}


def cut_short(answer: Answer, max_results: int) -> str | None:
    """Why an answer cannot be trusted to be complete, or None when it can."""
    if answer.status != 0x0000:
        return f"status 0x{answer.status:04X}"
    if max_results and len(answer.matches) >= max_results:
        return f"{len(answer.matches)} answers, at least [pacs] max_results ({max_results})"
    return None


def split_search(windows: Sequence[Window], ask: Callable[[Window], Answer], *, max_results: int,
                 on_split: Callable[[Split], None] | None = None,
                 on_done: Callable[[Window], None] | None = None) -> Iterator[Any]:
    """Matches of every window, asking again in halves where an answer is cut short.

    Pure logic over ``ask`` (one C-FIND per call). Windows are settled in range order, so progress
    (``on_done`` with each window whose matches were yielded) only moves forward. Raises
    QueryFailed for a single second still cut short.
    """
    for top in windows:
        stack = [top]
        while stack:
            window = stack.pop()
            answer = ask(window)
            why = cut_short(answer, max_results)
            if why is None:
                yield from answer.matches
                if on_done is not None:
                    on_done(window)
                continue
            halves = window.halves()
            if halves is None and answer.status == 0x0000:
                # one second that ended with success but reached max_results: nothing finer to ask; kept,
                # and the decision recorded (a second holding a whole result limit of studies is not real)
                if on_split is not None:
                    on_split(Split(window, len(answer.matches), why + "; one second cannot be split: kept",
                                   kept=True))
                yield from answer.matches
                if on_done is not None:
                    on_done(window)
                continue
            if halves is None:
                raise QueryFailed(f"the C-FIND for {window.describe()} was still cut short ({why}): a PACS "
                                  "result limit below one second's studies, or a PACS error")
            if on_split is not None:
                on_split(Split(window, len(answer.matches), why))
            stack.extend(reversed(halves))  # the earlier half first


@dataclass
class QueryReport:
    studies: list[FoundStudy] = field(default_factory=list)
    queries: int = 0  # C-FIND requests sent
    matched: int = 0  # distinct studies answered, before the modality/description filters
    split_days: int = 0  # days asked again by time of day
    splits: list[Split] = field(default_factory=list)  # every range cut short, in order
    mode: str = "range"  # "range" (adaptive), "day" (one C-FIND per day), "accessions"
    reconnects: int = 0  # associations the PACS dropped mid-query, opened again
    seconds: float = 0.0

    @property
    def instances(self) -> int:
        return sum(s.expected_instances or 0 for s in self.studies)

    def record(self) -> dict[str, Any]:
        """What the job keeps of its query: counts and the split decisions (no identifier)."""
        return {"mode": self.mode, "queries": self.queries, "matched": self.matched, "studies": len(self.studies),
                "splits": len(self.splits), "split_days": self.split_days, "reconnects": self.reconnects,
                "seconds": round(self.seconds, 3),
                "split_decisions": [s.as_dict() for s in self.splits[:MAX_DECISIONS_KEPT]]}


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
    """One association to the PACS for a series of study-level C-FINDs (a new one if the PACS drops it)."""

    def __init__(self, config: Config) -> None:
        if not config.pacs.configured:
            raise PacsUnavailable("no PACS configured: set [pacs] host and ae_title")
        self.config = config
        self.reconnects = 0
        self.assoc = self._associate()

    def _associate(self) -> Any:
        config = self.config
        ae = AE(ae_title=scu.calling_ae(config))
        ae.add_requested_context(StudyRootQueryRetrieveInformationModelFind)
        assoc = scu.associate(config, ae)  # PacsTlsError: a configuration problem, for the caller
        if not assoc.is_established:
            where = f"{config.pacs.host}:{config.pacs.port}"
            why = "rejected the association" if assoc.is_rejected else "did not answer"
            raise PacsUnavailable(f"PACS {config.pacs.ae_title}@{where} {why}")
        return assoc

    def close(self) -> None:
        if self.assoc.is_established:
            self.assoc.release()

    def __enter__(self) -> StudyQuery:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    def ask(self, identifier: Dataset) -> Answer:
        """One C-FIND: its final status and its matches. A PACS that drops the association (some
        close it after a number of requests or a time) is called again once for the same request."""
        answer = self._ask(identifier) if self.assoc.is_established else None
        if answer is None:
            if self.assoc.is_established:
                self.assoc.abort()
            self.reconnects += 1
            log.warning("the PACS closed the query association; asking again on a new one",
                        extra={"event": "backfill_query_reconnect", "reconnects": self.reconnects})
            self.assoc = self._associate()
            answer = self._ask(identifier)
            if answer is None:
                raise PacsUnavailable("the PACS stopped answering a C-FIND")
        return answer

    def _ask(self, identifier: Dataset) -> Answer | None:
        """None when no final answer came (the association is gone or timed out)."""
        answers: list[Dataset] = []
        final = 0xC000
        for status, ds in self.assoc.send_c_find(identifier, StudyRootQueryRetrieveInformationModelFind):
            code = getattr(status, "Status", None)
            if code is None:  # no answer in time: the association is gone
                return None
            if code in (0xFF00, 0xFF01):
                if ds is not None:
                    answers.append(ds)
            else:
                final = int(code)
        return Answer(final, answers)

    def find(self, identifier: Dataset) -> tuple[bool, list[Dataset]]:
        """(ended with success, answers)."""
        answer = self.ask(identifier)
        return answer.status == 0x0000, list(answer.matches)


def find_studies(config: Config, flt: StudyFilter,
                 progress: Callable[[float, float], None] | None = None) -> QueryReport:
    """Run the C-FINDs (adaptive range, day by day, or per accession) and return the matching
    studies, de-duplicated by StudyInstanceUID. ``progress(done, total)``: days of the range (or
    accession numbers) settled so far."""
    started = time.monotonic()
    report = QueryReport()
    regex = re.compile(flt.description, re.IGNORECASE) if flt.description else None
    wanted = {m.upper() for m in flt.modalities}
    seen: set[str] = set()
    with StudyQuery(config) as q:
        for answer in _answers(q, config, flt, report, progress):
            uid = str(answer.get("StudyInstanceUID", "") or "")
            if not uid or uid in seen:
                continue
            seen.add(uid)
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
            count = answer.get("NumberOfStudyRelatedInstances")
            try:
                expected = int(count) if count not in (None, "") else None
            except (TypeError, ValueError):
                expected = None
            report.studies.append(FoundStudy(uid, expected, modalities, _multi(answer.get("SOPClassesInStudy"))))
        report.reconnects = q.reconnects
    report.seconds = time.monotonic() - started
    log.info("backfill query done", extra={"event": "backfill_query", "mode": report.mode,
                                           "queries": report.queries, "matched": report.matched,
                                           "studies": len(report.studies), "splits": len(report.splits),
                                           "split_days": report.split_days, "seconds": round(report.seconds, 3)})
    return report


def _answers(q: StudyQuery, config: Config, flt: StudyFilter, report: QueryReport,
             progress: Callable[[float, float], None] | None) -> Iterator[Dataset]:
    if flt.accessions:
        report.mode = "accessions"
        for i, accession in enumerate(flt.accessions):
            report.queries += 1
            ok, answers = q.find(_identifier(AccessionNumber=accession))
            if not ok:
                raise QueryFailed(f"the C-FIND for accession list entry {i + 1} did not end with success")
            yield from answers
            if progress:
                progress(i + 1, len(flt.accessions))
        return
    if flt.date_from is None or flt.date_to is None or flt.date_from > flt.date_to:
        return
    total = float((flt.date_to - flt.date_from).days + 1)
    if config.pacs.range_queries:
        windows = [Window(flt.date_from, flt.date_to)]
    else:
        report.mode = "day"
        windows = [Window(d, d) for d in flt.days()]
    done = [0.0]
    split_days: set[dt.date] = set()

    def ask(window: Window) -> Answer:
        report.queries += 1
        return q.ask(_identifier(**window.keys()))

    def on_split(split: Split) -> None:
        report.splits.append(split)
        if split.kept:
            log.warning("backfill query: one second reached [pacs] max_results; its answer is kept as is",
                        extra={"event": "backfill_query_split", "range": split.window.describe(),
                               "answers": split.answers, "reason": split.reason})
            return
        if split.window.first == split.window.last and split.window.first not in split_days:
            split_days.add(split.window.first)
            report.split_days += 1
        log.info("backfill query range cut short; asking its halves",
                 extra={"event": "backfill_query_split", "range": split.window.describe(),
                        "answers": split.answers, "reason": split.reason})

    def on_done(window: Window) -> None:
        done[0] += window.days
        if progress:
            progress(min(done[0], total), total)

    yield from split_search(windows, ask, max_results=config.pacs.max_results, on_split=on_split, on_done=on_done)
