#!/usr/bin/env python3
"""Benchmark: STOW-RS ingest of the connector versus Orthanc's own STOW-RS ingest, and versus our C-STORE.

The same set of CT-sized instances (512x512x16-bit, ~0.5 MB each), in the same run:
  - ``connector-stow``: the daemon's STOW-RS door ([stow], bearer token, fsync on), sent by one
    client: ``multipart/related`` requests of ``--batch`` instances each, streamed from the files;
  - ``orthanc-stow``: Orthanc with its DICOMweb plugin (``POST /dicom-web/studies``), the same
    client and the same requests;
  - ``connector-cstore``: the same daemon's C-STORE SCP, sent by dcmtk's ``storescu``.
Rounds are interleaved so drift in machine load hits every peer alike; each round starts a fresh
server on a fresh folder (see bench_ingest.py for why nothing is deleted until the end). Reports
instances/s, MB/s (of DICOM file bytes), and two ratios: our STOW-RS to Orthanc's STOW-RS, and our
STOW-RS to our C-STORE.

    python tests/benchmarks/bench_stow.py [--count 300] [--rounds 3] [--batch 50]
"""

from __future__ import annotations

import argparse
import http.client
import json
import os
import shutil
import subprocess
import sys
import tempfile
import time
from collections.abc import Iterator
from pathlib import Path

ROOT = Path(__file__).resolve().parents[2]
sys.path.insert(0, str(ROOT))

from connector.synthetic import SyntheticStudy, ct_slices, write_series  # noqa: E402
from tests.benchmarks.bench_ingest import free_port, send, wait_port  # noqa: E402

TOKEN = "bench-" + "b" * 40
BOUNDARY = "bench-boundary-7d1c"


def _body(files: list[Path]) -> tuple[int, Iterator[bytes]]:
    """(Content-Length, chunks) of one multipart/related request, read from the files as it is sent."""
    heads = [f"--{BOUNDARY}\r\nContent-Type: application/dicom\r\n\r\n".encode() for _ in files]
    tail = f"--{BOUNDARY}--\r\n".encode()
    length = sum(len(h) + f.stat().st_size + 2 for h, f in zip(heads, files)) + len(tail)

    def chunks() -> Iterator[bytes]:
        for head, f in zip(heads, files):
            yield head
            with open(f, "rb") as fh:
                while block := fh.read(1 << 20):
                    yield block
            yield b"\r\n"
        yield tail

    return length, chunks()


def stow(port: int, path: str, files: list[Path], batch: int, token: str | None) -> float:
    """POST every file in requests of ``batch`` instances over one connection; returns wall seconds."""
    conn = http.client.HTTPConnection("127.0.0.1", port, timeout=600)
    start = time.perf_counter()
    for i in range(0, len(files), batch):
        length, chunks = _body(files[i:i + batch])
        conn.putrequest("POST", path)
        conn.putheader("Content-Type", f'multipart/related; type="application/dicom"; boundary={BOUNDARY}')
        conn.putheader("Accept", "application/dicom+json")
        conn.putheader("Content-Length", str(length))
        if token:
            conn.putheader("Authorization", f"Bearer {token}")
        conn.endheaders()
        for chunk in chunks:
            conn.send(chunk)
        resp = conn.getresponse()
        answer = resp.read()
        if resp.status != 200:
            raise RuntimeError(f"STOW-RS answered {resp.status}: {answer[:300]!r}")
    conn.close()
    return time.perf_counter() - start


class Connector:
    """A fresh daemon with the STOW-RS door open; used for both of our doors."""

    def __init__(self, work: Path) -> None:
        self.site = Path(tempfile.mkdtemp(dir=work, prefix="connector-site-")) / "site"
        self.port, self.stow_port = free_port(), free_port()
        subprocess.run([sys.executable, "-m", "connector", "init", str(self.site), "--port", str(self.port)],
                       check=True, stdout=subprocess.DEVNULL, cwd=ROOT)
        tokens = self.site / "stow.tokens"
        tokens.write_text(TOKEN + "\n")
        os.chmod(tokens, 0o600)
        self.env = dict(os.environ, SITE_CONNECTOR__STORAGE__MIN_FREE_BYTES="0",
                        SITE_CONNECTOR__LOGGING__LEVEL="WARNING", SITE_CONNECTOR__STOW__ENABLED="true",
                        SITE_CONNECTOR__STOW__HOST="127.0.0.1", SITE_CONNECTOR__STOW__PORT=str(self.stow_port),
                        SITE_CONNECTOR__STOW__TOKEN_FILE=str(tokens), SITE_CONNECTOR__HTTP__PORT=str(free_port()))

    def __enter__(self) -> Connector:
        self.proc = subprocess.Popen([sys.executable, "-m", "connector", "-c", str(self.site / "connector.toml"),
                                      "run"], env=self.env, cwd=ROOT, stdout=subprocess.DEVNULL,
                                     stderr=subprocess.DEVNULL)
        wait_port(self.port, timeout=60)
        wait_port(self.stow_port, timeout=60)
        return self

    def __exit__(self, *exc: object) -> None:
        self.proc.terminate()
        self.proc.wait(timeout=60)

    def stored(self) -> int:
        return len(list((self.site / "data" / "spool" / "incoming").glob("*/*.dcm")))


def run_connector_stow(files: list[Path], work: Path, batch: int) -> float:
    with Connector(work) as c:
        secs = stow(c.stow_port, "/dicomweb/studies", files, batch, TOKEN)
        if c.stored() != len(files):
            raise RuntimeError(f"connector stored {c.stored()} of {len(files)}")
    return secs


def run_connector_cstore(files: list[Path], work: Path, batch: int) -> float:
    with Connector(work) as c:
        secs = send(files[0].parent, c.port, "SITECONN", 1)
        if c.stored() != len(files):
            raise RuntimeError(f"connector stored {c.stored()} of {len(files)}")
    return secs


def run_orthanc_stow(files: list[Path], work: Path, batch: int) -> float:
    from tests.support.orthanc import OrthancServer

    with OrthancServer(Path(tempfile.mkdtemp(dir=work, prefix="orthanc-")), dicomweb=True) as orthanc:
        secs = stow(orthanc.http_port, "/dicom-web/studies", files, batch, None)
        held = orthanc.request("GET", "/statistics")["CountInstances"]
        if held != len(files):
            raise RuntimeError(f"Orthanc stored {held} of {len(files)}")
    return secs


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--count", type=int, default=300)
    ap.add_argument("--rounds", type=int, default=3)
    ap.add_argument("--batch", type=int, default=50, help="instances per STOW-RS request")
    ap.add_argument("--json", action="store_true")
    args = ap.parse_args()

    work = Path(tempfile.mkdtemp(prefix="bench-stow-"))
    folder = work / "instances"
    write_series(ct_slices(SyntheticStudy(), args.count), folder)
    files = sorted(folder.glob("*.dcm"))
    total_mb = sum(p.stat().st_size for p in files) / 1e6
    peers = {"connector-stow": run_connector_stow, "orthanc-stow": run_orthanc_stow,
             "connector-cstore": run_connector_cstore}
    best = {name: float("inf") for name in peers}
    for _ in range(args.rounds):
        for name, fn in peers.items():
            best[name] = min(best[name], fn(files, work, args.batch))
    results = {name: {"best_s": s, "instances_per_s": len(files) / s, "mb_per_s": total_mb / s}
               for name, s in best.items()}
    ratios = {"stow_vs_orthanc_stow": best["orthanc-stow"] / best["connector-stow"],
              "stow_vs_our_cstore": best["connector-cstore"] / best["connector-stow"]}
    shutil.rmtree(work, ignore_errors=True)
    if args.json:
        print(json.dumps({"count": len(files), "mb": total_mb, "batch": args.batch, "results": results,
                          "ratios": ratios}, indent=2))
        return 0
    print(f"{len(files)} instances, {total_mb:.0f} MB, STOW-RS requests of {args.batch}, best of {args.rounds}")
    print(f"{'receiver':<18}{'inst/s':>10}{'MB/s':>10}")
    for name, r in results.items():
        print(f"{name:<18}{r['instances_per_s']:>10.0f}{r['mb_per_s']:>10.1f}")
    print(f"our STOW-RS / Orthanc's STOW-RS: {ratios['stow_vs_orthanc_stow']:.2f}x")
    print(f"our STOW-RS / our C-STORE:       {ratios['stow_vs_our_cstore']:.2f}x")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
