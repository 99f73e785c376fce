"""The adaptive range query's splitter against an in-memory "PACS" (pure logic, no network): every study
is found exactly once whatever the result limit and the spread of studies, the PACS's own limit signal
and a silent limit (success with exactly the limit) are both handled, and a second still cut short is
an error, never a silent loss."""

from __future__ import annotations

import datetime as dt
from dataclasses import dataclass

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from connector.backfill.query import (
    DAY_SECONDS,
    Answer,
    QueryFailed,
    Window,
    cut_short,
    split_search,
)

FIRST = dt.date(2000, 1, 1)
LAST = dt.date(2030, 12, 31)


@dataclass(frozen=True)
class Study:
    uid: str
    day: dt.date
    second: int  # of the day


class FakePacs:
    """Matches a window's StudyDate/StudyTime keys as a PACS would (string ranges), capped at ``limit``:
    ``signal`` = end a truncated answer with 0xFE00 (Orthanc), otherwise with success (silent)."""

    def __init__(self, studies: list[Study], limit: int, signal: bool) -> None:
        self.studies = studies
        self.limit = limit
        self.signal = signal
        self.asked: list[Window] = []

    def __call__(self, window: Window) -> Answer:
        self.asked.append(window)
        keys = window.keys()
        lo, _, hi = keys["StudyDate"].partition("-")
        hi = hi or lo
        matches = [s for s in self.studies if lo <= s.day.strftime("%Y%m%d") <= hi]
        if "StudyTime" in keys:
            tlo, thi = keys["StudyTime"].split("-")
            matches = [s for s in matches if tlo <= _tm(s.second) <= thi]
        if self.limit and len(matches) > self.limit:
            return Answer(0xFE00 if self.signal else 0x0000, matches[: self.limit])
        return Answer(0x0000, matches)


def _tm(second: int) -> str:
    return f"{second // 3600:02d}{second // 60 % 60:02d}{second % 60:02d}.5"  # with a fraction, as PACS store it


def _run(pacs: FakePacs, windows: list[Window], max_results: int) -> tuple[list[str], float]:
    done: list[float] = []
    found = [s.uid for s in split_search(windows, pacs, max_results=max_results,
                                         on_done=lambda w: done.append(w.days))]
    return found, sum(done)


def _studies(draw_days: list[int], draw_seconds: list[int]) -> list[Study]:
    span = (LAST - FIRST).days
    return [Study(f"1.2.{i}", FIRST + dt.timedelta(days=d % (span + 1)), s % DAY_SECONDS)
            for i, (d, s) in enumerate(zip(draw_days, draw_seconds))]


clustered = st.lists(st.tuples(st.sampled_from([0, 1, 366, 9000, 11322]), st.integers(0, DAY_SECONDS - 1)),
                     max_size=120)
spread = st.lists(st.tuples(st.integers(0, 11322), st.integers(0, DAY_SECONDS - 1)), max_size=120)


@settings(max_examples=150, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(points=st.one_of(clustered, spread), limit=st.integers(1, 40), signal=st.booleans(),
       by_day=st.booleans())
def test_every_study_found_exactly_once(points: list[tuple[int, int]], limit: int, signal: bool,
                                        by_day: bool) -> None:
    # distinct seconds within a day: one second holding more studies than the limit cannot be split
    seen: set[tuple[int, int]] = set()
    points = [p for p in points if not (p in seen or seen.add(p))]
    studies = _studies([d for d, _ in points], [s for _, s in points])
    pacs = FakePacs(studies, limit, signal)
    max_results = 0 if signal else limit  # a silent PACS needs its limit configured
    span = (LAST - FIRST).days + 1
    if by_day:  # the day-by-day fall-back on a few years' worth (the splitter is the same)
        windows = [Window(FIRST + dt.timedelta(days=i), FIRST + dt.timedelta(days=i)) for i in range(400)]
        studies = [s for s in studies if s.day < FIRST + dt.timedelta(days=400)]
        pacs.studies = studies
        span = 400
    else:
        windows = [Window(FIRST, LAST)]
    found, covered = _run(pacs, windows, max_results)
    assert sorted(found) == sorted(s.uid for s in studies)  # all, and each once
    assert covered == pytest.approx(span)  # progress reaches the whole range, no more
    if not by_day and len(studies) < limit:
        assert len(pacs.asked) == 1  # nothing cut short: one C-FIND for 31 years


def test_few_queries_for_decades_of_sparse_studies() -> None:
    studies = [Study(f"1.3.{i}", FIRST + dt.timedelta(days=97 * i), 8 * 3600 + i) for i in range(110)]
    pacs = FakePacs(studies, limit=5, signal=True)
    found, _ = _run(pacs, [Window(FIRST, LAST)], 0)
    assert sorted(found) == sorted(s.uid for s in studies)
    assert len(pacs.asked) < 120  # versus 11,323 day by day; each split finds at most 5 more studies


def test_a_silent_limit_is_caught_by_max_results_and_missed_without_it() -> None:
    studies = [Study(f"1.4.{i}", dt.date(2024, 3, 1), 3600 * (i % 24) + i) for i in range(40)]
    found, _ = _run(FakePacs(studies, 5, signal=False), [Window(FIRST, LAST)], max_results=5)
    assert sorted(found) == sorted(s.uid for s in studies)
    found, _ = _run(FakePacs(studies, 5, signal=False), [Window(FIRST, LAST)], max_results=0)
    assert len(found) == 5  # why the default max_results is not 0: a silent PACS loses studies


def test_one_second_still_cut_short_is_an_error_naming_the_time() -> None:
    studies = [Study(f"1.5.{i}", dt.date(2024, 3, 2), 10 * 3600 + 1815) for i in range(3)]
    with pytest.raises(QueryFailed, match=r"2024-03-02 10:30:15-10:30:15 .*status 0xFE00"):
        _run(FakePacs(studies, 2, signal=True), [Window(FIRST, LAST)], 0)


def test_windows_keys_and_halves() -> None:
    w = Window(dt.date(2024, 3, 1), dt.date(2024, 3, 4))
    assert w.keys() == {"StudyDate": "20240301-20240304"} and w.days == 4
    a, b = w.halves()  # type: ignore[misc]
    assert (a.first, a.last, b.first, b.last) == (dt.date(2024, 3, 1), dt.date(2024, 3, 2),
                                                  dt.date(2024, 3, 3), dt.date(2024, 3, 4))
    day = Window(dt.date(2024, 3, 1), dt.date(2024, 3, 1))
    assert day.keys() == {"StudyDate": "20240301"}
    am, pm = day.halves()  # type: ignore[misc]
    assert am.keys()["StudyTime"] == "000000-115959.999999" and pm.keys()["StudyTime"] == "120000-235959.999999"
    assert am.days + pm.days == 1.0 and am.describe() == "2024-03-01 00:00:00-11:59:59"
    assert Window(day.first, day.last, 5, 5).halves() is None
    assert cut_short(Answer(0, [1, 2]), 2) and cut_short(Answer(0xFE00, []), 0) and cut_short(Answer(0, [1]), 2) is None
