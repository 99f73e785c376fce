#!/usr/bin/env python3
"""Benchmark: STOW-RS upload to the dev registry versus a plain streaming httpx POST of the same bytes.

A synthetic de-identified CT study (512x512x16-bit, ~0.5 MB per instance; ~1 GB by default) is
generated on the fly and deleted afterwards. The dev registry runs as its own process
(``site-connector registry serve``, fsync on), as at a site. Each round, in the same run:

  plain       one streaming ``httpx`` POST of every file's bytes, back to back, to the registry's
              ``/dev/sink`` (writes the body to one file, fsyncs it, drops it: the cheapest receiver);
  stow->sink  the connector's push path (``PushWorker``, default settings: batches of <= 50
              instances / 64 MB, 3 in flight, outbox bookkeeping) with ``dicomweb_url`` on the same
              sink: the uploader's own cost, the receiver doing what it does for "plain";
  stow        the same push path to the dev registry's real STOW-RS endpoint (per instance: header
              parse, checks, own file, fsync, index): end to end.

``queue_study`` runs before each push and is timed apart. Each upload reports MB/s, the peak RSS
(VmHWM, reset before the upload) of the uploading process, and CPU seconds per GB of the uploader
and of the registry (the box is shared: CPU per GB is steadier than MB/s). Best of the rounds.

Every registry's folder stays until the end of the run. Why: on an ext4 without a journal (this
dev box's disk), creating a file skips, one by one, the inodes of its block group freed in the
last one to six minutes (the kernel's ``recently_deleted``); deleting one round's 2,000 stored
instances just before the next round's upload made each of its file creations cost 0.2-0.5 ms of
CPU, a cost of the benchmark's own clean-up, not of storing. ``--dir`` puts the work folder
elsewhere than the system temporary folder, away from other processes' file churn there.

    python tests/benchmarks/bench_push.py [--mb 1024] [--rounds 3] [--keep] [--dir DIR] [--set concurrency=4]
"""

from __future__ import annotations

import argparse
import os
import shutil
import subprocess
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[2]
sys.path.insert(0, str(ROOT))

import httpx

from connector.config import load_config
from connector.outbox import Outbox, outbox_counts
from connector.push.worker import PushWorker
from connector.push.queueing import queue_study
from connector.store.layout import SiteLayout
from connector.site_db import open_state  # noqa: E402
from connector.synthetic import SyntheticStudy, ct_slices, write_series
from tests.support.net import free_port, wait_port

PSEUDONYM = "BENCH01-0000BNCH"
TOKEN = "bench-token"


def vm_hwm_mb(pid: int | str = "self") -> float:
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        if line.startswith("VmHWM:"):
            return int(line.split()[1]) / 1024
    return float("nan")


def cpu_seconds(pid: int | str = "self") -> float:
    """User + system CPU time of a process (all its threads), from /proc."""
    fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
    return (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")


def reset_hwm() -> None:
    """Reset this process's peak-RSS mark (Linux: write 5 to clear_refs), so each upload is measured alone."""
    try:
        Path("/proc/self/clear_refs").write_text("5")
    except OSError:
        pass


def make_study(folder: Path, megabytes: int) -> tuple[str, list[Path]]:
    """A de-identified-looking CT series of about ``megabytes`` MB."""
    study = SyntheticStudy()
    count = max(1, megabytes * 1024**2 // (512 * 512 * 2 + 2000))

    def marked():
        for ds in ct_slices(study, count):
            ds.PatientName = ds.PatientID = PSEUDONYM
            ds.PatientIdentityRemoved = "YES"
            ds.InstitutionName = ""
            yield ds

    return study.study_uid, write_series(marked(), folder, "CT")


class Registry:
    """``site-connector registry serve`` in its own process, over a fresh folder."""

    def __init__(self, work: Path, token_file: Path, name: str, fsync: bool = True) -> None:
        self.port = free_port()
        self.data = work / name
        self.proc = subprocess.Popen(
            [sys.executable, "-m", "connector", "registry", "serve", "--data", str(self.data), "--port",
             str(self.port), "--token-file", str(token_file), *([] if fsync else ["--no-fsync"])],
            cwd=ROOT, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
        wait_port(self.port, timeout=60)
        self.url = f"http://127.0.0.1:{self.port}"

    def close(self) -> float:
        """Stop the registry; its folder goes with the work folder at the end (see the docstring)."""
        peak = vm_hwm_mb(self.proc.pid)
        self.proc.terminate()
        self.proc.wait(30)
        return peak


class Run:
    """One upload: wall seconds, uploader peak RSS, CPU seconds of the uploader and of the registry."""

    def __init__(self, reg: Registry) -> None:
        self.reg = reg

    def __enter__(self) -> Run:
        reset_hwm()
        self.cpu0, self.reg_cpu0 = cpu_seconds(), cpu_seconds(self.reg.proc.pid)
        self.t0 = time.perf_counter()
        return self

    def __exit__(self, *exc: object) -> None:
        self.seconds = time.perf_counter() - self.t0
        self.peak = vm_hwm_mb()
        self.cpu = cpu_seconds() - self.cpu0
        self.reg_cpu = cpu_seconds(self.reg.proc.pid) - self.reg_cpu0


def plain_post(reg: Registry, files: list[Path]) -> Run:
    total = sum(p.stat().st_size for p in files)

    def body():
        for path in files:
            with open(path, "rb") as fh:
                while chunk := fh.read(1024 * 1024):
                    yield chunk

    with Run(reg) as run, httpx.Client(timeout=600) as client:  # the client is set up inside the timing too
        resp = client.post(f"{reg.url}/dev/sink", content=body(), headers={
            "Authorization": f"Bearer {TOKEN}", "Content-Length": str(total), "Idempotency-Key": "bench",
            "Content-Type": "application/octet-stream"})
    assert resp.status_code == 200 and resp.json()["bytes"] == total, resp.text[:200]
    return run


def stow_push(reg: Registry, token_file: Path, site: Path, study_uid: str, files: list[Path],
              overrides: dict[str, str], *, to_sink: bool) -> tuple[Run, float]:
    env = {"SITE_CONNECTOR__STORAGE__DATA_DIR": str(site), "SITE_CONNECTOR__REGISTRY__URL": reg.url,
           "SITE_CONNECTOR__REGISTRY__TOKEN_FILE": str(token_file),
           "SITE_CONNECTOR__REGISTRY__RETENTION_HOURS": "-1"}  # keep the copies for the next run
    if to_sink:
        env["SITE_CONNECTOR__REGISTRY__DICOMWEB_URL"] = f"{reg.url}/dev/sink"
    config = load_config(None, {**env, **overrides})
    layout = SiteLayout.from_config(config)
    layout.ensure()
    shutil.rmtree(layout.state_db.parent, ignore_errors=True)
    store = open_state(layout.state_db)
    started = time.perf_counter()
    queue_study(Outbox(store), study_uid=study_uid, pseudonym=PSEUDONYM, subject={"sex": "O"}, files=files,
                layout=layout, max_instances=config.registry.batch_max_instances,
                max_bytes=config.registry.batch_max_bytes)
    queued = time.perf_counter() - started
    worker = PushWorker(config, store, layout)
    with Run(reg) as run:
        worker.start()
        ok = worker.drain(1800)
    worker.stop()
    counts = outbox_counts(store)
    store.close()
    assert ok and counts["instances_pushed"] == len(files) and counts["failed"] == 0, counts
    return run, queued


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--mb", type=int, default=1024, help="study size in MB (default 1024)")
    parser.add_argument("--rounds", type=int, default=3, help="rounds; the best of each kind is kept (default 3)")
    parser.add_argument("--keep", action="store_true", help="keep the work folder")
    parser.add_argument("--dir", type=Path, default=None, help="where to make the work folder (default: system temp)")
    parser.add_argument("--no-fsync", action="store_true", help="registry without fsync, for every run (diagnosis)")
    parser.add_argument("--set", metavar="KEY=VALUE", action="append", default=[],
                        help="a [registry] setting for the STOW-RS runs, e.g. concurrency=4 (repeatable)")
    args = parser.parse_args()
    overrides = {f"SITE_CONNECTOR__REGISTRY__{k.upper()}": v for k, _, v in (x.partition("=") for x in args.set)}

    work = Path(tempfile.mkdtemp(prefix="bench-push-", dir=args.dir))
    try:
        token_file = work / "token"
        token_file.write_text(TOKEN + "\n")
        os.chmod(token_file, 0o600)
        site = work / "site"
        print(f"generating a ~{args.mb} MB study ...", flush=True)
        t0 = time.perf_counter()
        study_uid, files = make_study(site / "spool" / "outgoing" / "study", args.mb)
        total = sum(p.stat().st_size for p in files)
        print(f"  {len(files)} instances, {total / 1e6:.0f} MB in {time.perf_counter() - t0:.0f} s", flush=True)

        runs: dict[str, list[Run]] = {"plain": [], "stow->sink": [], "stow": []}
        registry_peak: dict[str, float] = {}
        queue_s: list[float] = []
        for r in range(args.rounds):
            for kind in runs:
                reg = Registry(work, token_file, f"registry-{kind.replace('>', '')}-{r}", fsync=not args.no_fsync)
                try:
                    if kind == "plain":
                        runs[kind].append(plain_post(reg, files))
                    else:
                        run, queued = stow_push(reg, token_file, site, study_uid, files, overrides,
                                                to_sink=kind == "stow->sink")
                        runs[kind].append(run)
                        queue_s.append(queued)
                finally:
                    registry_peak[kind] = max(registry_peak.get(kind, 0.0), reg.close())
            print(f"  round {r + 1}: " + ", ".join(f"{k} {total / 1e6 / v[-1].seconds:.0f} MB/s"
                                                    for k, v in runs.items()), flush=True)

        best = {k: min(v, key=lambda x: x.seconds) for k, v in runs.items()}
        gb = total / 1e9
        labels = {"plain": "plain streaming httpx POST -> /dev/sink",
                  "stow->sink": "STOW-RS PushWorker -> /dev/sink",
                  "stow": "STOW-RS PushWorker -> dev registry STOW-RS"}
        print()
        print(f"{str(len(files)) + ' instances, ' + format(total / 1e6, '.0f') + ' MB (best of ' + str(args.rounds) + ')':44s}"
              f"{'seconds':>8s}{'MB/s':>8s}{'up RSS MB':>11s}{'reg RSS MB':>11s}{'up CPU s/GB':>12s}"
              f"{'reg CPU s/GB':>13s}")
        for kind, run in best.items():
            print(f"{labels[kind]:44s}{run.seconds:8.2f}{total / 1e6 / run.seconds:8.1f}"
                  f"{max(x.peak for x in runs[kind]):11.0f}{registry_peak[kind]:11.0f}{run.cpu / gb:12.2f}"
                  f"{run.reg_cpu / gb:13.2f}")
        uploader = best["plain"].seconds / best["stow->sink"].seconds
        end_to_end = best["plain"].seconds / best["stow"].seconds
        print()
        print(f"ratio STOW-RS uploader / plain POST (same sink):     {uploader:.2f}x "
              f"(bar >= 0.8x: {'PASS' if uploader >= 0.8 else 'FAIL'})")
        print(f"ratio STOW-RS end to end (dev registry) / plain POST: {end_to_end:.2f}x "
              f"(bar >= 0.8x: {'PASS' if end_to_end >= 0.8 else 'FAIL'})")
        print(f"queue_study (header reads, one transaction): {min(queue_s):.2f} s, not included above")
        print(f"load average at the end: {os.getloadavg()[0]:.1f} on {os.cpu_count()} CPUs")
        return 0 if min(uploader, end_to_end) >= 0.8 else 1
    finally:
        if not args.keep:
            shutil.rmtree(work, ignore_errors=True)


if __name__ == "__main__":
    sys.exit(main())
