"""Benchmark of follow-up import: rows/s for a 100,000-row file against 100,000 linked subjects.

Peers, measured in the same run on the same file:
  * csv.reader alone: the cost of reading the file at all (a floor);
  * blind-index lookups alone (``lookup_patient(..., audit=False)`` once per row): the linkage cost
    every import must pay (a floor). Import/peer ratios show what validation, event building, the
    PHI check, the ledger and the outbox add on top.

Measured: first import (every event new: queued into the outbox with the ledger, in state-DB
transactions of 2,000), a re-import of the same file (all unchanged: nothing queued), a dry run, and
the same rows as XLSX. The file has 95% known patients, and a few duplicate, future-dated and
unknown-type rows so that every path is exercised. Set-up (the subjects) runs with ``[storage]
fsync = false``; the state DB always runs with synchronous=FULL, as in production.

Run: python tests/benchmarks/bench_followup.py [-n 100000]
"""

from __future__ import annotations

import argparse
import csv
import random
import sys
import tempfile
import time
from datetime import date, timedelta
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[2]))

from connector.config import load_config
from connector.deid.provider import PatientIdentity
from connector.followup.events import EVENT_TYPES
from connector.followup.importer import FollowupImporter
from connector.linkage import OpenOptions, create_key_file, open_linkage
from connector.linkage.paths import default_key_path
from connector.outbox import Outbox
from connector.store.layout import SiteLayout
from connector.site_db import open_state  # noqa: E402

TODAY = date(2025, 6, 30)
ISSUER = "SYNTH-HOSPITAL"


def pid(i: int) -> str:
    return f"SYN{i:09d}"


def make_rows(n_rows: int, n_subjects: int, rng: random.Random) -> list[list[str]]:
    rows = []
    for r in range(n_rows):
        i = r % n_subjects
        kind = rng.random()
        patient = pid(i) if kind > 0.05 else f"UNKNOWN{r:08d}"
        event = EVENT_TYPES[r % len(EVENT_TYPES)] if kind > 0.002 else "stroke"
        when = date(2020, 1, 1) + timedelta(days=rng.randrange(1, 1800))
        if 0.002 < kind < 0.003:
            when = TODAY + timedelta(days=30)
        rows.append([patient, ISSUER, event, when.isoformat(), "synthetic cause", "chart_review"])
    rows[-1] = list(rows[0])  # one exact duplicate row
    return rows


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n", 1)[0])
    parser.add_argument("-n", type=int, default=100_000, help="rows in the file and subjects in the table")
    args = parser.parse_args()
    n = args.n
    rng = random.Random(6)
    with tempfile.TemporaryDirectory() as tmp:
        root = Path(tmp)
        cfg = root / "connector.toml"
        cfg.write_text('[site]\nid = "BENCH01"\n[storage]\ndata_dir = "data"\nfsync = false\n')
        config = load_config(cfg, environ={})
        create_key_file(default_key_path(config))
        provider = open_linkage(config, OpenOptions(role="bench"))

        t0 = time.perf_counter()
        for i in range(n):
            provider.store.get_or_create(PatientIdentity(pid(i), ISSUER), "20200101")
        setup_s = time.perf_counter() - t0
        print(f"set-up: {n:,} subjects created in {setup_s:.1f} s ({n / setup_s:,.0f}/s, fsync off)")

        rows = make_rows(n, n, rng)
        path = root / "followup.csv"
        with open(path, "w", newline="") as fh:
            w = csv.writer(fh)
            w.writerow(["patient_id", "issuer", "event", "event_date", "cause", "source"])
            w.writerows(rows)

        results: list[tuple[str, float, str]] = []

        t0 = time.perf_counter()
        with open(path, newline="") as fh:
            parsed = sum(1 for _ in csv.reader(fh)) - 1
        results.append(("peer: csv.reader only", time.perf_counter() - t0, f"{parsed:,} rows"))

        t0 = time.perf_counter()
        for r in rows:
            provider.lookup_patient(r[0], r[1], audit=False)
        results.append(("peer: blind-index lookups only", time.perf_counter() - t0, f"{len(rows):,} lookups"))

        store = open_state(SiteLayout.from_config(config).state_db)
        outbox = Outbox(store)
        importer = FollowupImporter(config, provider, store, outbox, today=TODAY)

        t0 = time.perf_counter()
        dry = importer.import_file(path, dry_run=True)
        results.append(("dry run (nothing written)", time.perf_counter() - t0, f"{dry.queued:,} would be queued"))

        t0 = time.perf_counter()
        first = importer.import_file(path)
        results.append(("first import (all new, queued)", time.perf_counter() - t0,
                        f"{first.queued:,} queued, {first.rejected_total:,} rejected"))

        t0 = time.perf_counter()
        again = importer.import_file(path)
        results.append(("re-import (all unchanged)", time.perf_counter() - t0,
                        f"{again.unchanged:,} unchanged, {again.queued} queued"))

        from openpyxl import Workbook

        xlsx = root / "followup.xlsx"
        wb = Workbook(write_only=True)
        ws = wb.create_sheet()
        ws.append(["patient_id", "issuer", "event", "event_date", "cause", "source"])
        for r in rows:
            ws.append(r)
        wb.save(xlsx)
        t0 = time.perf_counter()
        x = importer.import_file(xlsx)
        results.append(("re-import as XLSX", time.perf_counter() - t0, f"{x.unchanged:,} unchanged"))

        assert first.queued == dry.queued and again.queued == 0 and x.queued == 0
        jobs = store.conn.execute("SELECT COUNT(*) FROM outbox_jobs WHERE kind='event'").fetchone()[0]
        assert jobs == first.queued
        store.close()
        provider.close()

    floor = {name: secs for name, secs, _ in results if name.startswith("peer")}
    csv_s, lookup_s = floor["peer: csv.reader only"], floor["peer: blind-index lookups only"]
    print(f"\n{n:,}-row file, {n:,} subjects in the linkage table\n")
    print(f"{'step':34} {'seconds':>8} {'rows/s':>10} {'x lookups':>10} {'x csv':>8}  detail")
    for name, secs, detail in results:
        print(f"{name:34} {secs:8.2f} {n / secs:10,.0f} {secs / lookup_s:10.2f} {secs / csv_s:8.1f}  {detail}")


if __name__ == "__main__":
    main()
