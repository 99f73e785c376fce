#!/usr/bin/env python3
"""Benchmark: STOW-RS upload to the dev registry versus a plain streaming httpx POST of the same bytes.

A synthetic de-identified CT study (512x512x16-bit, ~0.5 MB per instance; ~1 GB by default) is
generated on the fly and deleted afterwards. The dev registry runs as its own process
(``site-connector registry serve``, fsync on), as at a site. In the same run, alternating:

  plain   one streaming ``httpx`` POST of every file's bytes, back to back, to the registry's
          ``/dev/sink`` (which writes the body to disk, hashes and fsyncs it, like an instance);
  stow    the connector's push path: ``queue_study`` (timed apart) then ``PushWorker`` with the
          default settings (batches of <= 50 instances / 64 MB, 3 in flight), until every
          instance, the subject and the manifest are acknowledged.

Reports MB/s, the ratio stow/plain (bar: >= 0.8) and the peak RSS (VmHWM) of the uploading
process during each upload, and of the registry.

    python tests/benchmarks/bench_push.py [--mb 1024] [--rounds 2] [--keep]
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

import httpx  # noqa: E402

from connector.config import load_config  # noqa: E402
from connector.outbox import Outbox, outbox_counts  # noqa: E402
from connector.push import PushWorker, queue_study  # noqa: E402
from connector.store.layout import SiteLayout  # noqa: E402
from connector.store.state import StateStore  # noqa: E402
from connector.synthetic import SyntheticStudy, ct_slices, write_series  # noqa: E402
from tests.support.net import free_port, wait_port  # noqa: E402

PSEUDONYM = "BENCH01-0000BNCH"


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
        peak = vm_hwm_mb(self.proc.pid)
        self.proc.terminate()
        self.proc.wait(30)
        shutil.rmtree(self.data, ignore_errors=True)
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


def plain_post(reg: Registry, token: str, files: list[Path]) -> Run:
    total = sum(p.stat().st_size for p in files)

    def body():
        for path in files:
            with open(path, "rb") as fh:
                while chunk := fh.read(1024 * 1024):
                    yield chunk

    with Run(reg) as run, httpx.Client(timeout=600) as client:  # the client is set up inside the timing too
        resp = client.post(f"{reg.url}/dev/sink", content=body(), headers={
            "Authorization": f"Bearer {token}", "Content-Length": str(total), "Idempotency-Key": "bench",
            "Content-Type": "application/octet-stream"})
    assert resp.status_code == 200 and resp.json()["bytes"] == total, resp.text[:200]
    return run


def stow_push(reg: Registry, token_file: Path, site: Path, study_uid: str, files: list[Path],
              overrides: dict[str, str]) -> tuple[Run, float]:
    config = load_config(None, {**overrides,
        "SITE_CONNECTOR__STORAGE__DATA_DIR": str(site), "SITE_CONNECTOR__REGISTRY__URL": reg.url,
        "SITE_CONNECTOR__REGISTRY__TOKEN_FILE": str(token_file),
        "SITE_CONNECTOR__REGISTRY__RETENTION_HOURS": "-1",  # keep the copies for the next round
        "SITE_CONNECTOR__REGISTRY__POLL_SECONDS": "0.05"})
    layout = SiteLayout.from_config(config)
    layout.ensure()
    shutil.rmtree(layout.state_db.parent, ignore_errors=True)
    store = StateStore(layout.state_db)
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
    parser.add_argument("--rounds", type=int, default=2, help="alternating rounds; the best of each is kept")
    parser.add_argument("--keep", action="store_true", help="keep the work folder")
    parser.add_argument("--no-fsync", action="store_true", help="registry without fsync, for both (diagnosis)")
    parser.add_argument("--set", metavar="KEY=VALUE", action="append", default=[],
                        help="a [registry] setting for the STOW-RS run, e.g. concurrency=2 (repeatable)")
    args = parser.parse_args()
    overrides = {f"SITE_CONNECTOR__REGISTRY__{k.upper()}": v for k, _, v in (x.partition("=") for x in args.set)}

    work = Path(tempfile.mkdtemp(prefix="bench-push-"))
    try:
        token_file = work / "token"
        token_file.write_text("bench-token\n")
        os.chmod(token_file, 0o600)
        site = work / "site"
        print(f"generating a ~{args.mb} MB study ...", flush=True)
        t0 = time.perf_counter()
        study_uid, files = make_study(site / "spool" / "outgoing" / "study", args.mb)
        total = sum(p.stat().st_size for p in files)
        print(f"  {len(files)} instances, {total / 1e6:.0f} MB in {time.perf_counter() - t0:.0f} s", flush=True)

        plain: list[Run] = []
        stow: list[Run] = []
        registry_peaks = []
        queue_s = 0.0
        for r in range(args.rounds):
            reg = Registry(work, token_file, f"registry-plain-{r}", fsync=not args.no_fsync)
            try:
                plain.append(plain_post(reg, "bench-token", files))
            finally:
                registry_peaks.append(("plain", reg.close()))
            reg = Registry(work, token_file, f"registry-stow-{r}", fsync=not args.no_fsync)
            try:
                run, queue_s = stow_push(reg, token_file, site, study_uid, files, overrides)
                stow.append(run)
            finally:
                registry_peaks.append(("stow", reg.close()))
            print(f"  round {r + 1}: plain {total / 1e6 / plain[-1].seconds:.0f} MB/s, "
                  f"stow {total / 1e6 / stow[-1].seconds:.0f} MB/s", flush=True)

        best_plain = min(plain, key=lambda x: x.seconds)
        best_stow = min(stow, key=lambda x: x.seconds)
        gb = total / 1e9
        print()
        print(f"{'upload: ' + str(len(files)) + ' instances, ' + format(total / 1e6, '.0f') + ' MB':46s}"
              f"{'seconds':>8s}{'MB/s':>8s}{'peak RSS MB':>13s}{'CPU s/GB up':>13s}{'CPU s/GB reg':>14s}")
        for label, runs, best in (("plain streaming httpx POST (/dev/sink)", plain, best_plain),
                                  ("STOW-RS via PushWorker (50/64 MB, 3 in flight)", stow, best_stow)):
            print(f"{label:46s}{best.seconds:8.2f}{total / 1e6 / best.seconds:8.1f}{max(r.peak for r in runs):13.0f}"
                  f"{best.cpu / gb:13.2f}{best.reg_cpu / gb:14.2f}")
        ratio = best_plain.seconds / best_stow.seconds
        print()
        print(f"ratio STOW-RS / plain POST: {ratio:.2f}x (bar >= 0.8x: {'PASS' if ratio >= 0.8 else 'FAIL'})")
        print(f"queue_study (header reads, one transaction): {queue_s:.2f} s, not included above")
        print("registry peak RSS MB: " + ", ".join(f"{k} {v:.0f}" for k, v in registry_peaks))
        print(f"load average at the end: {os.getloadavg()[0]:.1f} on {os.cpu_count()} CPUs")
        return 0 if ratio >= 0.8 else 1
    finally:
        if not args.keep:
            shutil.rmtree(work, ignore_errors=True)


if __name__ == "__main__":
    sys.exit(main())
