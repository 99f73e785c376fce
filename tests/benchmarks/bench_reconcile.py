#!/usr/bin/env python3
"""Benchmark: reconciling N pushed studies against the dev registry (issue 14: 2,000 under 60 s).

A state database with N studies in state ``pushed`` (each: one de-identified study UID, a CT series
and a PET series, its acknowledged manifest in the outbox) and a dev registry holding exactly those
instances (index rows and manifests written straight into its database: the benchmark measures
reconciliation, not STOW-RS) are built in a temporary folder. The dev registry runs as its own
process (``site-connector registry serve``), as at a site. Then, in the same run:

  plain      the same QIDO-RS and manifest GETs, one after another, with one keep-alive ``httpx``
             client and nothing else (the floor of the requests themselves, sequential);
  reconcile  ``Reconciler.run()`` (its thread pool, comparison, marking every study verified).

    python tests/benchmarks/bench_reconcile.py [--studies 2000] [--ct 40] [--pet 20] [--workers 8]
"""

from __future__ import annotations

import argparse
import json
import os
import secrets
import sqlite3
import subprocess
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[2]
sys.path.insert(0, str(ROOT))

from connector.config import load_config  # noqa: E402
from connector.push.reconcile import Reconciler  # noqa: E402
from devregistry.storage import RegistryStore  # noqa: E402
from connector.store.layout import SiteLayout  # noqa: E402
from connector.store.state import StateStore  # noqa: E402
from connector.site_db import open_state  # noqa: E402
from tests.support.net import free_port, wait_port  # noqa: E402


def uid() -> str:
    return "2.25." + str(int.from_bytes(os.urandom(16), "big"))


def build(work: Path, studies: int, ct: int, pet: int) -> tuple[StateStore, SiteLayout, Path]:
    layout = SiteLayout(work / "site", work / "site" / "keys")
    layout.ensure()
    store = open_state(layout.state_db)
    reg = RegistryStore(work / "registry", fsync=False)
    reg.close()
    now = time.time()
    site_rows, outputs, jobs, reg_rows, manifests = [], [], [], [], []
    for n in range(studies):
        study = uid()
        series = [(uid(), "CT", ct), (uid(), "PT", pet)]
        sops: list[str] = []
        for series_uid, modality, count in series:
            for i in range(count):
                sop = uid()
                sops.append(sop)
                reg_rows.append((sop, "1.2.840.10008.5.1.4.1.1.2", study, series_uid, modality, i + 1, 1000,
                                 f"instances/x/{sop}.dcm", now))
        manifest = {"study_instance_uid": study, "pseudonym": f"BENCH-{n:06d}", "instance_count": len(sops),
                    "sop_instance_uids": sorted(sops),
                    "series": [{"series_instance_uid": s, "modality": m, "instances": c} for s, m, c in series]}
        key = f"{n:020x}"
        site_rows.append((key, "1.2.3." + str(n), "pushed", now, now))
        outputs.append((key, study))
        jobs.append(("manifest", f"{study}#m", "registry", study, json.dumps(manifest, sort_keys=True), "done",
                     now, now, now, now))
        text = json.dumps(manifest, sort_keys=True)
        manifests.append((study, text, "x", 1, 0, now))
    with store.write() as conn:
        conn.executemany("INSERT INTO studies (study_key, study_uid, state, last_received_at, updated_at) "
                         "VALUES (?, ?, ?, ?, ?)", site_rows)
        conn.executemany("INSERT INTO study_outputs (study_key, study_uid) VALUES (?, ?)", outputs)
        conn.executemany("INSERT INTO outbox_jobs (kind, key, destination, grp, payload, state, created_at, "
                         "updated_at, next_attempt_at, done_at) VALUES (?, ?, ?, ?, ?, ?, ?, ?, ?, ?)", jobs)
    conn = sqlite3.connect(work / "registry" / "registry.db")
    with conn:
        conn.executemany("INSERT INTO instances (sop_instance_uid, sop_class_uid, study_instance_uid, "
                         "series_instance_uid, modality, instance_number, size, path, stored_at) "
                         "VALUES (?, ?, ?, ?, ?, ?, ?, ?, ?)", reg_rows)
        conn.executemany("INSERT INTO manifests (study_instance_uid, body, sha256, complete, missing, received_at) "
                         "VALUES (?, ?, ?, ?, ?, ?)", manifests)
    conn.close()
    return store, layout, work / "registry"


def plain(url: str, token: str, store: StateStore) -> float:
    import httpx

    payloads = [json.loads(r[0]) for r in store.conn.execute("SELECT payload FROM outbox_jobs WHERE kind='manifest'")]
    headers = {"Authorization": f"Bearer {token}"}
    started = time.monotonic()
    with httpx.Client(headers=headers, timeout=60) as client:
        for p in payloads:
            study = p["study_instance_uid"]
            for s in p["series"]:
                client.get(f"{url}/dicomweb/studies/{study}/series/{s['series_instance_uid']}/instances",
                           headers={"Accept": "application/dicom+json"}).raise_for_status()
            client.get(f"{url}/api/v1/studies/{study}/manifest").raise_for_status()
    return time.monotonic() - started


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--studies", type=int, default=2000)
    ap.add_argument("--ct", type=int, default=40, help="CT instances per study")
    ap.add_argument("--pet", type=int, default=20, help="PET instances per study")
    ap.add_argument("--workers", type=int, default=8, help="reconciliation requests in flight")
    args = ap.parse_args()
    with tempfile.TemporaryDirectory(prefix="bench-reconcile-") as tmp:
        work = Path(tmp)
        t0 = time.monotonic()
        store, layout, reg_dir = build(work, args.studies, args.ct, args.pet)
        print(f"built {args.studies} studies x {args.ct + args.pet} instances in {time.monotonic() - t0:.1f} s")
        token = secrets.token_urlsafe(24)
        token_file = work / "token"
        token_file.write_text(token)
        os.chmod(token_file, 0o600)
        port = free_port()
        proc = subprocess.Popen([sys.executable, "-m", "connector", "registry", "serve", "--data", str(reg_dir),
                                 "--port", str(port), "--token-file", str(token_file)], cwd=ROOT,
                                stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
        try:
            wait_port(port, timeout=30)
            url = f"http://127.0.0.1:{port}"
            requests = args.studies * 3  # per study: two series' instance lists and the manifest
            seq = plain(url, token, store)
            print(f"plain      {seq:6.1f} s  ({requests / seq:6.0f} requests/s, sequential)")
            config = load_config(None, {"SITE_CONNECTOR__STORAGE__DATA_DIR": str(layout.data_dir),
                                        "SITE_CONNECTOR__REGISTRY__URL": url,
                                        "SITE_CONNECTOR__REGISTRY__TOKEN_FILE": str(token_file)})
            report = Reconciler(config, store, layout, workers=args.workers).run()
            s = report.summary()
            print(f"reconcile  {report.seconds:6.1f} s  ({requests / report.seconds:6.0f} requests/s, "
                  f"{args.workers} in flight): {s['verified']} verified, {s['requeued']} re-queued, "
                  f"{s['unresolved']} unresolved, {s['errors']} errors")
            assert s["verified"] == args.studies, s
        finally:
            proc.terminate()
            proc.wait(timeout=30)
            store.close()
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
