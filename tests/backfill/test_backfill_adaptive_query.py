"""The adaptive range query against a real Orthanc on loopback: `backfill add` for 31 years asks a handful
of C-FINDs (counted in Orthanc's own verbose log, not by us), a day holding more studies than
Orthanc's ``LimitFindResults`` is split by time of day and still yields every study, and the day-by-day
fall-back (``[pacs] range_queries = false``) asks one C-FIND per day."""

from __future__ import annotations

import datetime as dt
import json
import logging
from pathlib import Path

import pytest

from connector.backfill.query import StudyFilter, find_studies
from connector.cli.main import main
from tests.backfill.conftest import PACS_AET, PacsStudy, in_process_config, load, make_study, register_connector
from tests.support.orthanc import OrthancServer


def _spread(folder: Path, n: int, first: dt.date, last: dt.date) -> list[PacsStudy]:
    """``n`` studies spread evenly from ``first`` to ``last``, at various times of day."""
    step = (last - first).days / (n - 1)
    return [make_study(folder, f"y{i}", (first + dt.timedelta(days=round(i * step))).strftime("%Y%m%d"),
                       ("CT", "PT") if i % 3 == 0 else ("CT",), "PET CT CARDIAC" if i % 3 == 0 else "CT",
                       hour=(7 + i) % 24) for i in range(n)]


def _one_day(folder: Path, n: int, date: str) -> list[PacsStudy]:
    """``n`` studies on one day, each at its own minute between 07:00 and 19:00."""
    return [make_study(folder, f"d{i}", date, ("CT",), "CT CALCIUM SCORE",
                       study_time=f"{7 + i * 12 * 60 // n // 60:02d}{i * 12 * 60 // n % 60:02d}{i % 60:02d}")
            for i in range(n)]


def _verbose(orthanc: OrthancServer) -> None:
    orthanc.request("PUT", "/tools/log-level", b"verbose")


def _finds(orthanc: OrthancServer) -> int:
    """C-FIND requests Orthanc received, from its own log (one 'Incoming Find request' line each)."""
    return (orthanc.workdir / "orthanc.log").read_text(errors="replace").count("Incoming Find request")


@pytest.fixture
def cli_env(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Path:
    monkeypatch.delenv("SITE_CONNECTOR_CONFIG", raising=False)
    monkeypatch.setenv("SITE_CONNECTOR__STORAGE__DATA_DIR", str(tmp_path / "data"))
    monkeypatch.setenv("SITE_CONNECTOR__STORAGE__MIN_FREE_BYTES", "0")
    return tmp_path


def _point_at(monkeypatch: pytest.MonkeyPatch, orthanc: OrthancServer) -> None:
    monkeypatch.setenv("SITE_CONNECTOR__PACS__HOST", "127.0.0.1")
    monkeypatch.setenv("SITE_CONNECTOR__PACS__PORT", str(orthanc.dicom_port))
    monkeypatch.setenv("SITE_CONNECTOR__PACS__AE_TITLE", PACS_AET)


def _add_31_years(orthanc: OrthancServer, monkeypatch: pytest.MonkeyPatch,
                  capsys: pytest.CaptureFixture[str]) -> tuple[dict, int]:
    """`backfill add --from 2000-01-01 --to 2030-12-31 --json` against ``orthanc``: (its JSON, C-FINDs
    Orthanc logged meanwhile)."""
    register_connector(orthanc, 1)
    _point_at(monkeypatch, orthanc)
    _verbose(orthanc)
    before = _finds(orthanc)
    assert main(["backfill", "add", "--from", "2000-01-01", "--to", "2030-12-31", "--json"]) == 0
    out, asked = json.loads(capsys.readouterr().out), _finds(orthanc) - before
    print(f"31-year backfill add: {asked} C-FINDs counted by Orthanc, {out['splits']} splits")
    return out, asked


def _job(data: Path, job: int) -> tuple[list[str], dict]:
    """(study keys, query record) of a job."""
    from connector.backfill.worklist import Worklist
    from connector.site_db import open_state

    store = open_state(data / "state" / "state.db")
    try:
        wl = Worklist(store)
        return [r["study_key"] for r in wl.studies(job)], wl.job(job)["filters"]["query"]
    finally:
        store.close()


def test_backfill_add_31_years_asks_fewer_than_50_c_finds(cli_env: Path, monkeypatch: pytest.MonkeyPatch,
                                                          capsys: pytest.CaptureFixture[str]) -> None:
    from connector.backfill.worklist import FoundStudy

    # 60 studies over 24 years; Orthanc answers at most 20 per C-FIND (then ends with 0xFE00)
    spread = _spread(cli_env / "s", 60, dt.date(2002, 1, 15), dt.date(2026, 6, 30))
    with OrthancServer(cli_env / "orthanc", aet=PACS_AET, extra_config={"LimitFindResults": 20}) as orthanc:
        load(orthanc, spread)
        out, asked = _add_31_years(orthanc, monkeypatch, capsys)
    assert out["studies_found"] == 60 and out["queued"] == 60 and out["query_mode"] == "range"
    assert out["queries"] == asked and 3 <= asked < 50, asked  # day by day: 11,323
    assert out["splits"] >= 1 and out["split_days"] == 0
    keys, record = _job(cli_env / "data", out["job"])
    assert sorted(keys) == sorted(FoundStudy(s.study.study_uid, None).key for s in spread)
    assert record["queries"] == asked and record["split_decisions"][0] == {
        "range": "2000-01-01..2030-12-31", "answers": 20, "reason": "status 0xFE00"}


def test_limit_5_and_40_studies_on_one_day_all_found(cli_env: Path, monkeypatch: pytest.MonkeyPatch,
                                                     capsys: pytest.CaptureFixture[str],
                                                     caplog: pytest.LogCaptureFixture) -> None:
    from connector.backfill.worklist import FoundStudy

    # 30 studies over 24 years and 40 on one day; Orthanc answers at most 5 per C-FIND
    spread = _spread(cli_env / "s", 30, dt.date(2002, 1, 15), dt.date(2026, 6, 30))
    crowded = _one_day(cli_env / "s", 40, "20150611")
    with OrthancServer(cli_env / "orthanc", aet=PACS_AET, extra_config={"LimitFindResults": 5}) as orthanc:
        load(orthanc, spread + crowded)
        with caplog.at_level(logging.INFO, logger="connector"):
            out, asked = _add_31_years(orthanc, monkeypatch, capsys)
    everything = {s.study.study_uid for s in spread + crowded}
    assert out["studies_found"] == 70 and out["queued"] == 70
    keys, record = _job(cli_env / "data", out["job"])
    assert sorted(keys) == sorted(FoundStudy(u, None).key for u in everything)  # all 40 of the day, once each
    # 14 halvings from 31 years down to the day, then by time: >= 8 answers of <= 4 for that day alone
    assert out["queries"] == asked and 16 <= asked <= 60, asked  # measured: 53
    assert out["split_days"] == 1 and record["splits"] == out["splits"] >= 8
    assert any(d["range"].startswith("2015-06-11 ") for d in record["split_decisions"])  # split by time
    # the job's log: one line per split with the job's number; no UID anywhere in what was logged
    splits = [r for r in caplog.records if getattr(r, "event", "") == "backfill_job_split"]
    assert len(splits) == out["splits"] and all(r.job == out["job"] for r in splits)
    logged = " ".join(r.getMessage() + json.dumps(r.__dict__, default=str) for r in caplog.records)
    assert not any(uid in logged for uid in everything)


def test_thirty_one_years_of_sparse_studies_without_a_limit_is_one_c_find(tmp_path: Path) -> None:
    spread = _spread(tmp_path / "s", 25, dt.date(2001, 3, 1), dt.date(2025, 11, 30))
    with OrthancServer(tmp_path / "orthanc", aet=PACS_AET) as orthanc:
        load(orthanc, spread)
        register_connector(orthanc, 1)
        _verbose(orthanc)
        before = _finds(orthanc)
        config = in_process_config(tmp_path / "data", orthanc)
        progress: list[tuple[float, float]] = []
        found = find_studies(config, StudyFilter(dt.date(2000, 1, 1), dt.date(2030, 12, 31), modalities=("PT",)),
                             progress=lambda done, total: progress.append((done, total)))
        asked = _finds(orthanc) - before
        assert asked == found.queries == 1 and found.matched == 25 and not found.splits
        assert {s.study_uid for s in found.studies} == {s.study.study_uid for i, s in enumerate(spread) if i % 3 == 0}
        assert progress == [(11323.0, 11323.0)]
        # [pacs] max_results: a PACS that cuts short silently (success with its limit) is split all the same
        config = in_process_config(tmp_path / "data", orthanc, pacs__max_results=10)
        found = find_studies(config, StudyFilter(dt.date(2000, 1, 1), dt.date(2030, 12, 31)))
        assert len(found.studies) == 25 and found.splits and found.splits[0].reason.startswith("25 answers")
        assert found.queries == _finds(orthanc) - before - 1


def test_day_by_day_fall_back_and_a_crowded_day(tmp_path: Path) -> None:
    crowded = _one_day(tmp_path / "s", 40, "20240302")
    others = [make_study(tmp_path / "s", "e1", "20240301", ("CT",), "CT"),
              make_study(tmp_path / "s", "e2", "20240305", ("CT", "PT"), "PET CT")]
    with OrthancServer(tmp_path / "orthanc", aet=PACS_AET, extra_config={"LimitFindResults": 5}) as orthanc:
        load(orthanc, crowded + others)
        register_connector(orthanc, 1)
        _verbose(orthanc)
        before = _finds(orthanc)
        config = in_process_config(tmp_path / "data", orthanc, pacs__range_queries="false")
        progress: list[float] = []
        found = find_studies(config, StudyFilter(dt.date(2024, 3, 1), dt.date(2024, 3, 7)),
                             progress=lambda done, total: progress.append(done))
        asked = _finds(orthanc) - before
    assert found.mode == "day" and {s.study_uid for s in found.studies} == {
        s.study.study_uid for s in crowded + others}
    assert len(found.studies) == 42 and found.split_days == 1
    assert all(s.window.first == dt.date(2024, 3, 2) for s in found.splits)  # only the crowded day split
    day_finds = 7
    assert asked == found.queries and asked == day_finds + 2 * len(found.splits)
    assert progress[-1] == 7.0 and progress == sorted(progress)  # forward only, to the whole range


REFUSE_RANGES = """
function IncomingFindRequestFilter(query, origin)
  local d = query['0008,0020']
  if d ~= nil and string.find(d, '-') then
    error('date ranges are not supported')
  end
  return query
end
"""


def test_a_pacs_that_refuses_date_ranges(tmp_path: Path) -> None:
    # Orthanc made to refuse StudyDate ranges (its C-FIND then ends with 0xC000), as some PACS do
    lua = tmp_path / "refuse-ranges.lua"
    lua.write_text(REFUSE_RANGES)
    studies = [make_study(tmp_path / "s", f"r{d}", f"2024030{d}", ("CT",), "CT") for d in (1, 3, 6)]
    with OrthancServer(tmp_path / "orthanc", aet=PACS_AET, extra_config={"LuaScripts": [str(lua)]}) as orthanc:
        load(orthanc, studies)
        register_connector(orthanc, 1)
        _verbose(orthanc)
        flt = StudyFilter(dt.date(2024, 3, 1), dt.date(2024, 3, 7))
        wanted = {s.study.study_uid for s in studies}
        # [pacs] range_queries = false: one C-FIND per day, no range ever sent
        before = _finds(orthanc)
        by_day = find_studies(in_process_config(tmp_path / "d1", orthanc, pacs__range_queries="false"), flt)
        assert {s.study_uid for s in by_day.studies} == wanted
        assert by_day.queries == _finds(orthanc) - before == 7 and not by_day.splits and by_day.mode == "day"
        # left at the default, the refusals are split down to single days: complete, but dearer
        before = _finds(orthanc)
        adaptive = find_studies(in_process_config(tmp_path / "d2", orthanc), flt)
        assert {s.study_uid for s in adaptive.studies} == wanted
        assert adaptive.queries == _finds(orthanc) - before == 13  # 7 days + 6 refused ranges
        assert {s.reason for s in adaptive.splits} == {"status 0xC000"} and adaptive.split_days == 0


def test_a_query_association_the_pacs_drops_is_opened_again(tmp_path: Path) -> None:
    import time

    from connector.backfill.query import StudyQuery, Window, _identifier

    # Orthanc closes an association idle for 1 s (DicomScpTimeout); a PACS may also close one after
    # a number of requests: the next C-FIND goes out on a new association, once
    studies = [make_study(tmp_path / "s", "t1", "20240301", ("CT",), "CT")]
    with OrthancServer(tmp_path / "orthanc", aet=PACS_AET, extra_config={"DicomScpTimeout": 1}) as orthanc:
        load(orthanc, studies)
        register_connector(orthanc, 1)
        config = in_process_config(tmp_path / "data", orthanc)
        window = Window(dt.date(2024, 3, 1), dt.date(2024, 3, 31))
        with StudyQuery(config) as q:
            first = q.ask(_identifier(**window.keys()))
            time.sleep(3)
            second = q.ask(_identifier(**window.keys()))
            assert q.reconnects == 1
    assert first.status == second.status == 0 and len(first.matches) == len(second.matches) == 1
