#!/usr/bin/env python3
"""Benchmark: a backfill from Orthanc over loopback, beside Orthanc's own transfer of the same studies.

A real Orthanc (the PACS) is loaded with N synthetic PET/CT studies. Then, in the same run:

  orthanc->storescp  Orthanc's REST ``POST /modalities/storescp/store`` of every study to dcmtk's
                     ``storescp`` (writes files, no fsync; one association): the PACS's own sending
                     speed, the reference (every peer gets TCP_NODELAY=1, as in bench_ingest.py);
  backfill C-MOVE    the connector daemon running and idle (receivers with fsync on, as in production;
                     sent to once its start-up is over, see bench_ingest.wait_settled), and
                     ``Runner`` (what ``backfill run`` does) C-MOVEs each study to it;
  backfill C-GET     the same with ``[pacs] retrieve = "get"``: Orthanc sends on our association
                     and each instance is filed through ``Intake`` (fsync on);
  orthanc->receiver  Orthanc's REST store of the same studies to a fresh connector daemon (fsync on):
                     what the durable receive alone costs with this sender, so the overhead of the
                     backfill around it (C-FIND aside) is the gap between this row and C-MOVE's.

The C-FIND that builds the worklist is timed on its own. Studies/hour and MB/s are over the bytes
Orthanc holds; the ratio is backfill / storescp.

  query 31 years     the C-FINDs of a backfill over 2000-01-01..2030-12-31 (``--query-years``) against
                     the same Orthanc, adaptive (one range query, split where cut short; ``[pacs]
                     range_queries = true``, the default) and day by day (``range_queries = false``, what
                     ``backfill add`` did before), one after the other: seconds, C-FINDs, studies
                     found (must be equal), and the ratio day-by-day / adaptive. ``--limit N`` sets
                     Orthanc's ``LimitFindResults`` (0: none) so the adaptive query has to split.

    python tests/benchmarks/bench_backfill.py [--studies 20] [--ct 40] [--pet 20] [--rows 256] [--concurrent 2]
                                              [--series-threshold 1000] [--series-in-flight 2]
                                              [--query-years 31] [--limit 0] [--query-only]
"""

from __future__ import annotations

import argparse
import datetime as dt
import json
import os
import subprocess
import sys
import tempfile
import threading
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[2]
sys.path.insert(0, str(ROOT))

from connector.backfill.query import StudyFilter, find_studies  # noqa: E402
from connector.backfill.runner import Runner  # noqa: E402
from connector.backfill.worklist import Worklist  # noqa: E402
from connector.config import load_config  # noqa: E402
from connector.store.layout import SiteLayout  # noqa: E402
from connector.site_db import open_state  # noqa: E402
from connector.synthetic import SyntheticStudy, write_pet_ct_study  # noqa: E402
from tests.benchmarks.bench_ingest import wait_settled  # noqa: E402
from tests.support.daemon import ConnectorProcess  # noqa: E402
from tests.support.net import free_port, wait_port  # noqa: E402
from tests.support.orthanc import OrthancServer  # noqa: E402
from tests.support.tools import dcmtk  # noqa: E402

PACS_AET = "HOSPITALPACS"
FIRST_DAY = dt.date(2024, 1, 1)


def rate(studies: int, size: int, seconds: float) -> dict[str, float]:
    return {"seconds": round(seconds, 3), "studies_per_hour": round(studies * 3600 / seconds, 1),
            "mb_per_s": round(size / 1e6 / seconds, 2)}


def env_for(data_dir: Path, orthanc: OrthancServer, **extra: str) -> dict[str, str]:
    env = {"SITE_CONNECTOR__STORAGE__DATA_DIR": str(data_dir), "SITE_CONNECTOR__STORAGE__MIN_FREE_BYTES": "0",
           "SITE_CONNECTOR__PACS__HOST": "127.0.0.1", "SITE_CONNECTOR__PACS__PORT": str(orthanc.dicom_port),
           "SITE_CONNECTOR__PACS__AE_TITLE": PACS_AET, "SITE_CONNECTOR__BACKFILL__WINDOW": ""}
    env.update({f"SITE_CONNECTOR__{k.split('__')[0].upper()}__{k.split('__')[1].upper()}": v for k, v in extra.items()})
    return env


def backfill(config_env: dict[str, str], studies: int) -> tuple[float, float, int]:
    """(C-FIND seconds, retrieval seconds, studies retrieved) of a one-job backfill."""
    config = load_config(None, config_env)
    layout = SiteLayout.from_config(config)
    layout.ensure()
    store = open_state(layout.state_db)
    try:
        t0 = time.perf_counter()
        flt = StudyFilter(date_from=FIRST_DAY, date_to=FIRST_DAY + dt.timedelta(days=studies - 1))
        found = find_studies(config, flt)
        query_s = time.perf_counter() - t0
        job = Worklist(store).create_job(found.studies, flt.as_dict())["job"]
        t1 = time.perf_counter()
        report = Runner(config, store, layout, stop=threading.Event(), job_id=job, respect_window=False
                        ).run_until_done()
        return query_s, time.perf_counter() - t1, report.retrieved
    finally:
        store.close()


def query_range(config_env: dict[str, str], years: int) -> dict[str, object]:
    """C-FIND time over ``years`` years from 2000-01-01, adaptive then day by day, on one Orthanc."""
    flt = StudyFilter(date_from=dt.date(2000, 1, 1), date_to=dt.date(2000 + years - 1, 12, 31))
    out: dict[str, object] = {"range": f"{flt.date_from}..{flt.date_to}", "days": len(flt.days())}
    found = {}
    for name, ranges in (("adaptive", "true"), ("day_by_day", "false")):
        config = load_config(None, {**config_env, "SITE_CONNECTOR__PACS__RANGE_QUERIES": ranges})
        t0 = time.perf_counter()
        report = find_studies(config, flt)
        seconds = time.perf_counter() - t0
        found[name] = {s.study_uid for s in report.studies}
        out[name] = {"seconds": round(seconds, 3), "c_finds": report.queries, "splits": len(report.splits),
                     "studies": len(report.studies), "reconnects": report.reconnects}
    assert found["adaptive"] == found["day_by_day"], "adaptive and day-by-day found different studies"
    out["ratio_day_by_day_over_adaptive"] = round(
        out["day_by_day"]["seconds"] / max(out["adaptive"]["seconds"], 1e-6), 1)  # type: ignore[index]
    return out


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--studies", type=int, default=20)
    ap.add_argument("--ct", type=int, default=40, help="CT slices per study")
    ap.add_argument("--pet", type=int, default=20, help="PET slices per study")
    ap.add_argument("--rows", type=int, default=256, help="CT matrix size")
    ap.add_argument("--concurrent", type=int, default=2, help="[backfill] max_concurrent")
    ap.add_argument("--query-years", type=int, default=31, help="years of the query comparison, from 2000")
    ap.add_argument("--limit", type=int, default=0, help="Orthanc's LimitFindResults (0: none)")
    ap.add_argument("--query-only", action="store_true", help="only the query comparison (no retrieval)")
    ap.add_argument("--series-threshold", type=int, default=1000,
                    help="[backfill] series_threshold: larger studies are retrieved series by series")
    ap.add_argument("--series-in-flight", type=int, default=2, help="[backfill] series_in_flight")
    args = ap.parse_args()
    with tempfile.TemporaryDirectory(prefix="bench-backfill-") as tmp:
        work = Path(tmp)
        files = []
        for i in range(args.studies):
            # one study per day from FIRST_DAY: the query covers exactly those days
            study = SyntheticStudy(study_date=(FIRST_DAY + dt.timedelta(days=i)).strftime("%Y%m%d"))
            _, paths = write_pet_ct_study(work / "src" / f"s{i}", study, ct_count=args.ct, pet_count=args.pet,
                                          ct_rows=args.rows)
            files += paths
        size = sum(p.stat().st_size for p in files)
        results: dict[str, object] = {"studies": args.studies, "instances": len(files), "bytes": size,
                                      "max_concurrent": args.concurrent, "series_threshold": args.series_threshold,
                                      "series_in_flight": args.series_in_flight}
        retrieval = {"backfill__max_concurrent": str(args.concurrent),
                     "backfill__series_threshold": str(args.series_threshold),
                     "backfill__series_in_flight": str(args.series_in_flight)}
        store_port = free_port()
        out_dir = work / "storescp-out"
        out_dir.mkdir()
        storescp = subprocess.Popen([dcmtk("storescp"), "-aet", "STORESCP", "-od", str(out_dir), str(store_port)],
                                    env=dict(os.environ, TCP_NODELAY="1"), stdout=subprocess.DEVNULL,
                                    stderr=subprocess.DEVNULL)
        wait_port(store_port)
        site = work / "site"
        daemon = ConnectorProcess(site, assemble__stable_seconds=86400)
        try:
            with OrthancServer(work / "orthanc", aet=PACS_AET, env={"TCP_NODELAY": "1"},
                               extra_config={"LimitFindResults": args.limit}) as orthanc:
                study_ids = sorted({orthanc.upload(p)["ParentStudy"] for p in files})
                orthanc.request("PUT", "/modalities/siteconn", {"AET": "SITECONN", "Host": "127.0.0.1",
                                                                "Port": daemon.port})
                # 0. the C-FINDs of a 31-year backfill: adaptive vs day by day, same Orthanc, same run
                results["query_31_years" if args.query_years == 31 else f"query_{args.query_years}_years"] = \
                    query_range(env_for(work / "query-site", orthanc), args.query_years)
                if args.query_only:
                    print(json.dumps(results, indent=2))
                    return 0
                orthanc.request("PUT", "/modalities/storescp", {"AET": "STORESCP", "Host": "127.0.0.1",
                                                                "Port": store_port})
                orthanc.request("PUT", "/modalities/siteconn", {"AET": "SITECONN", "Host": "127.0.0.1",
                                                                "Port": daemon.port})
                # 1. Orthanc -> dcmtk storescp
                t0 = time.perf_counter()
                orthanc.request("POST", "/modalities/storescp/store", {"Resources": study_ids, "Synchronous": True},
                                timeout=3600)
                results["orthanc_to_storescp"] = rate(args.studies, size, time.perf_counter() - t0)
                assert sum(1 for _ in out_dir.rglob("*") if _.is_file()) == len(files)
                # 2. backfill by C-MOVE into the running daemon
                daemon.start()
                wait_settled(daemon.proc.pid)  # type: ignore[union-attr]  # a running daemon, not a starting one
                q, secs, done = backfill(env_for(site / "data", orthanc, **retrieval), args.studies)
                assert done == args.studies, f"C-MOVE retrieved {done} of {args.studies}"
                results["backfill_c_move"] = {**rate(args.studies, size, secs), "query_seconds": round(q, 3)}
                daemon.stop()
                # 3. backfill by C-GET, filed in process through Intake
                q, secs, done = backfill(env_for(work / "get-site", orthanc, pacs__retrieve="get", **retrieval),
                                         args.studies)
                assert done == args.studies, f"C-GET retrieved {done} of {args.studies}"
                results["backfill_c_get"] = {**rate(args.studies, size, secs), "query_seconds": round(q, 3)}
                # 4. Orthanc's REST store into a fresh connector daemon: the receiver's own speed from this
                #    sender, to tell the cost of the durable receive from that of the backfill around it
                pushed = ConnectorProcess(work / "push-site", assemble__stable_seconds=86400).start()
                try:
                    wait_settled(pushed.proc.pid)  # type: ignore[union-attr]
                    orthanc.request("PUT", "/modalities/pushed", {"AET": "SITECONN", "Host": "127.0.0.1",
                                                                 "Port": pushed.port})
                    t0 = time.perf_counter()
                    orthanc.request("POST", "/modalities/pushed/store", {"Resources": study_ids, "Synchronous": True},
                                    timeout=3600)
                    results["orthanc_to_connector_receiver"] = rate(args.studies, size, time.perf_counter() - t0)
                finally:
                    pushed.stop()
        finally:
            if daemon.proc is not None and daemon.proc.poll() is None:
                daemon.stop()
            storescp.terminate()
            storescp.wait()
    base = results["orthanc_to_storescp"]["mb_per_s"]  # type: ignore[index]
    for key in ("backfill_c_move", "backfill_c_get", "orthanc_to_connector_receiver"):
        results[key]["ratio_vs_storescp"] = round(results[key]["mb_per_s"] / base, 3)  # type: ignore[index]
    print(json.dumps(results, indent=2))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
