#!/usr/bin/env python3
"""Benchmark: C-STORE receive throughput of the connector versus dcmtk's ``storescp``.

The same set of CT-sized instances (512x512x16-bit, ~0.5 MB each) is sent by dcmtk's ``storescu``
over loopback to each receiver in turn, in the same run:
  - dcmtk ``storescp`` writing every object to disk (no fsync: dcmtk does not fsync);
  - the connector daemon (``site-connector run``) with its full durability protocol (fsync on);
  - optionally Orthanc (``--orthanc``).
Every peer gets ``TCP_NODELAY=1`` (dcmtk and Orthanc read it), as the connector sets it itself.
The connector is sent to once its processes are idle (:func:`wait_settled`): its port opens while
the pipeline and uploader roles are still importing their libraries, and a PACS sends to a running
daemon, not to one starting (``--no-settle`` measures from the port opening, as this benchmark
did before 2026-12).
Each round writes to a fresh folder and nothing is deleted until the end: on an ext4 without a
journal (this dev box's disk), creating a file right after many were deleted steps over the freed
inodes one by one, which would charge one peer's clean-up to the next peer's round.
Reports instances/s, MB/s, the ratio to storescp and the receiver's peak RSS (VmHWM).

    python tests/benchmarks/bench_ingest.py [--count 500] [--rounds 3] [--associations 1] [--orthanc] [--no-settle]
"""

from __future__ import annotations

import argparse
import json
import os
import shutil
import socket
import subprocess
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[2]
sys.path.insert(0, str(ROOT))

from connector.synthetic import SyntheticStudy, ct_slices, write_series  # noqa: E402
from tests.support.tools import dcmtk  # noqa: E402


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def wait_port(port: int, timeout: float = 30) -> None:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        try:
            with socket.create_connection(("127.0.0.1", port), timeout=0.5):
                return
        except OSError:
            time.sleep(0.05)
    raise RuntimeError(f"nothing listening on {port}")


def peak_rss_mb(pid: int) -> float:
    try:
        for line in Path(f"/proc/{pid}/status").read_text().splitlines():
            if line.startswith("VmHWM:"):
                return int(line.split()[1]) / 1024
    except OSError:
        pass
    return float("nan")


def process_tree(pid: int) -> list[int]:
    """A process and its children (the connector's roles are children of the supervisor)."""
    pids = [pid]
    for status in Path("/proc").glob("[0-9]*/status"):
        try:
            text = status.read_text()
        except OSError:
            continue
        if any(line.split()[1:] == [str(pid)] for line in text.splitlines() if line.startswith("PPid:")):
            pids.append(int(status.parent.name))
    return pids


def process_tree_peak_rss_mb(pid: int) -> float:
    """Largest peak RSS among a process and its children (the connector's receivers are children)."""
    return max(peak_rss_mb(p) for p in process_tree(pid))


def cpu_seconds(pids: list[int]) -> float:
    total = 0
    for p in pids:
        try:
            fields = Path(f"/proc/{p}/stat").read_text().rsplit(")", 1)[1].split()
        except OSError:
            continue
        total += int(fields[11]) + int(fields[12])  # utime + stime, in clock ticks
    return total / os.sysconf("SC_CLK_TCK")


def wait_settled(pid: int, timeout: float = 60.0) -> None:
    """Wait until a daemon's processes use under 6% of a core: a PACS sends to a running daemon.

    The port opens as soon as the receivers listen, while the pipeline and uploader roles are
    still importing their libraries (1-2 s of CPU each, measured on a 2-core box); sending then
    charged the daemon's start-up to the receive path (2-core VM shared with other jobs, back to back:
    0.19x storescp from the port opening against 0.27x settled).
    """
    deadline = time.monotonic() + timeout
    last = cpu_seconds(process_tree(pid))
    while time.monotonic() < deadline:
        time.sleep(0.5)
        now = cpu_seconds(process_tree(pid))
        if now - last < 0.03:
            return
        last = now


def send(folder: Path, port: int, aet: str, associations: int) -> float:
    """Send every file with storescu; returns wall seconds. Several associations split the files."""
    env = dict(os.environ, TCP_NODELAY="1")
    files = sorted(folder.glob("*.dcm"))
    parts = [files[i::associations] for i in range(associations)]
    start = time.perf_counter()
    procs = [subprocess.Popen([dcmtk("storescu"), "-aec", aet, "127.0.0.1", str(port), *map(str, part)],
                              env=env, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE) for part in parts]
    for p in procs:
        _, err = p.communicate()
        if p.returncode != 0:
            raise RuntimeError(f"storescu failed: {err.decode()[-500:]}")
    return time.perf_counter() - start


def run_storescp(folder: Path, work: Path, associations: int) -> tuple[float, float]:
    out = Path(tempfile.mkdtemp(dir=work, prefix="storescp-out-"))  # a fresh folder per round: see the docstring
    port = free_port()
    args = [dcmtk("storescp"), "-aet", "STORESCP", "-od", str(out), "--fork" if associations > 1 else "-v", str(port)]
    args = [a for a in args if a != "-v"]
    proc = subprocess.Popen(args, env=dict(os.environ, TCP_NODELAY="1"), stdout=subprocess.DEVNULL,
                            stderr=subprocess.DEVNULL)
    try:
        wait_port(port)
        secs = send(folder, port, "STORESCP", associations)
        rss = peak_rss_mb(proc.pid)
    finally:
        proc.terminate()
        proc.wait()
    return secs, rss


SETTLE = True  # --no-settle turns it off


def run_connector(folder: Path, work: Path, associations: int) -> tuple[float, float]:
    site = Path(tempfile.mkdtemp(dir=work, prefix="connector-site-")) / "site"  # fresh per round
    port = free_port()
    subprocess.run([sys.executable, "-m", "connector", "init", str(site), "--port", str(port)], check=True,
                   stdout=subprocess.DEVNULL, cwd=ROOT)
    env = dict(os.environ, SITE_CONNECTOR__STORAGE__MIN_FREE_BYTES="0", SITE_CONNECTOR__LOGGING__LEVEL="WARNING")
    proc = subprocess.Popen([sys.executable, "-m", "connector", "-c", str(site / "connector.toml"), "run"],
                            env=env, cwd=ROOT, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    try:
        wait_port(port)
        if SETTLE:
            wait_settled(proc.pid)
        secs = send(folder, port, "SITECONN", associations)
        rss = process_tree_peak_rss_mb(proc.pid)
    finally:
        proc.terminate()
        proc.wait(timeout=60)
    stored = len(list((site / "data" / "spool" / "incoming").glob("*/*.dcm")))
    expected = len(list(folder.glob("*.dcm")))
    if stored != expected:
        raise RuntimeError(f"connector stored {stored} of {expected}")
    return secs, rss


def run_orthanc(folder: Path, work: Path, associations: int) -> tuple[float, float]:
    from tests.support.orthanc import OrthancServer

    with OrthancServer(work / "orthanc", env={"TCP_NODELAY": "1"}) as orthanc:
        secs = send(folder, orthanc.dicom_port, orthanc.aet, associations)
        rss = peak_rss_mb(orthanc.pid)
    return secs, rss


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--count", type=int, default=500)
    ap.add_argument("--rounds", type=int, default=3)
    ap.add_argument("--associations", type=int, default=1)
    ap.add_argument("--orthanc", action="store_true", help="also measure Orthanc")
    ap.add_argument("--json", action="store_true")
    ap.add_argument("--no-settle", action="store_true",
                    help="send as soon as the connector's port opens, during its start-up")
    args = ap.parse_args()
    global SETTLE
    SETTLE = not args.no_settle

    work = Path(tempfile.mkdtemp(prefix="bench-ingest-"))
    folder = work / "instances"
    write_series(ct_slices(SyntheticStudy(), args.count), folder)
    total_mb = sum(p.stat().st_size for p in folder.glob("*.dcm")) / 1e6
    peers = {"storescp": run_storescp, "connector": run_connector}
    if args.orthanc:
        peers["orthanc"] = run_orthanc
    results: dict[str, dict[str, float]] = {}
    for name in peers:
        results[name] = {"best_s": float("inf"), "peak_rss_mb": 0.0}
    for _ in range(args.rounds):  # interleave peers so drift in machine load hits all alike
        for name, fn in peers.items():
            secs, rss = fn(folder, work, args.associations)
            results[name]["best_s"] = min(results[name]["best_s"], secs)
            results[name]["peak_rss_mb"] = max(results[name]["peak_rss_mb"], rss)
    base = args.count / results["storescp"]["best_s"]
    for r in results.values():
        r["instances_per_s"] = args.count / r["best_s"]
        r["mb_per_s"] = total_mb / r["best_s"]
        r["ratio_to_storescp"] = r["instances_per_s"] / base
    shutil.rmtree(work, ignore_errors=True)
    if args.json:
        print(json.dumps({"count": args.count, "mb": total_mb, "associations": args.associations,
                          "results": results}, indent=2))
        return 0
    print(f"{args.count} instances, {total_mb:.0f} MB, {args.associations} association(s), best of {args.rounds}")
    print(f"{'receiver':<12}{'inst/s':>10}{'MB/s':>10}{'x storescp':>12}{'peak RSS MB':>13}  (largest process)")
    for name, r in results.items():
        print(f"{name:<12}{r['instances_per_s']:>10.0f}{r['mb_per_s']:>10.1f}{r['ratio_to_storescp']:>12.2f}"
              f"{r['peak_rss_mb']:>13.0f}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
