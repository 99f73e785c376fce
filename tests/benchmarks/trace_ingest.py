#!/usr/bin/env python3
"""Where one C-STORE spends its time in the receiver (a profiling aid, not a test).

Runs the connector's SCP in this process (one receiver, no supervisor), sends 0.5 MB CT
instances with dcmtk's storescu on one association, and prints instances/s and the mean time per
instance of the store callback (the durability protocol) and the receiver's CPU (this process:
storescu runs apart). ``--steps`` adds the mean time of each step of the durability protocol (the
object's fsync, the folder's fsync, the commit as the caller waits for it and as the committing
thread runs it); ``--profile`` adds a cProfile of the receiver threads, sorted by own time;
``--no-fsync`` measures with the spool fsync off.

    python tests/benchmarks/trace_ingest.py [--count 300] [--steps] [--profile] [--no-fsync]
"""

from __future__ import annotations

import argparse
import collections
import cProfile
import os
import pstats
import shutil
import subprocess
import sys
import tempfile
import threading
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[2]
sys.path.insert(0, str(ROOT))

from connector.config import load_config  # noqa: E402
from connector.ingest import intake as intake_module  # noqa: E402
from connector.ingest.intake import Intake  # noqa: E402
from connector.ingest.scp import StoreSCP, configure_receiver_process  # noqa: E402
from connector.store.group_commit import GroupCommitter  # noqa: E402
from connector.store.layout import SiteLayout  # noqa: E402
from connector.store.state import StateStore  # noqa: E402
from connector.site_db import open_state  # noqa: E402
from connector.synthetic import SyntheticStudy, ct_slices, write_series  # noqa: E402
from tests.support.net import free_port  # noqa: E402
from tests.support.tools import dcmtk  # noqa: E402


STEPS: dict[str, list[float]] = collections.defaultdict(lambda: [0, 0.0])
_STEPS_LOCK = threading.Lock()


def _timed_step(name: str, func):  # type: ignore[no-untyped-def]
    def wrapper(*args, **kwargs):  # type: ignore[no-untyped-def]
        t0 = time.perf_counter()
        try:
            return func(*args, **kwargs)
        finally:
            elapsed = time.perf_counter() - t0
            with _STEPS_LOCK:
                STEPS[name][0] += 1
                STEPS[name][1] += elapsed
    return wrapper


def time_steps() -> None:
    """Wrap the durability protocol's steps so that each one's time is summed in STEPS."""
    intake_module.fsync_file = _timed_step("object fsync", intake_module.fsync_file)  # type: ignore[assignment]
    intake_module.fsync_dir = _timed_step("folder fsync", intake_module.fsync_dir)  # type: ignore[assignment]
    GroupCommitter.record = _timed_step("commit (caller waits)", GroupCommitter.record)  # type: ignore[method-assign]
    StateStore.record_instances = _timed_step("commit (transaction)",  # type: ignore[method-assign]
                                              StateStore.record_instances)


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--count", type=int, default=300)
    ap.add_argument("--profile", action="store_true")
    ap.add_argument("--steps", action="store_true")
    ap.add_argument("--no-fsync", action="store_true")
    args = ap.parse_args()

    work = Path(tempfile.mkdtemp(prefix="trace-ingest-"))
    port = free_port()
    cfg = load_config(None, environ={"SITE_CONNECTOR__STORAGE__MIN_FREE_BYTES": "0",
                                     "SITE_CONNECTOR__DICOM__PORT": str(port),
                                     "SITE_CONNECTOR__STORAGE__DATA_DIR": str(work / "site")})
    if args.steps:
        time_steps()
    layout = SiteLayout.from_config(cfg)
    layout.ensure()
    store = open_state(layout.state_db)
    intake = Intake(layout, store, fsync=not args.no_fsync)
    configure_receiver_process()
    scp = StoreSCP(cfg.dicom, intake)
    durations: list[float] = []
    original = scp._on_store

    def timed(obj):  # type: ignore[no-untyped-def]
        t0 = time.perf_counter()
        status = original(obj)
        durations.append(time.perf_counter() - t0)
        return status

    scp._on_store = timed  # type: ignore[method-assign]
    profiler = cProfile.Profile() if args.profile else None
    if profiler is not None:
        threading.setprofile(lambda *a: None)  # make sure new threads run under the profiler
        original_serve = scp.serve_connection

        def profiled(*a):  # type: ignore[no-untyped-def]
            profiler.enable()
            try:
                return original_serve(*a)
            finally:
                profiler.disable()

        scp.serve_connection = profiled  # type: ignore[method-assign]
    scp.start()
    files = write_series(ct_slices(SyntheticStudy(), args.count), work / "instances")
    t0, cpu0 = time.perf_counter(), time.process_time()
    subprocess.run([dcmtk("storescu"), "-aec", cfg.dicom.ae_title, "127.0.0.1", str(port), *map(str, files)],
                   env=dict(os.environ, TCP_NODELAY="1"), check=True)
    elapsed, cpu = time.perf_counter() - t0, time.process_time() - cpu0
    scp.stop()
    intake.close()
    store.close()
    print(f"{len(files) / elapsed:.0f} inst/s, {elapsed / len(files) * 1000:.2f} ms per instance, "
          f"store callback {sum(durations) / max(len(durations), 1) * 1000:.2f} ms, receiver CPU "
          f"{cpu / len(files) * 1000:.2f} ms (fsync {'off' if args.no_fsync else 'on'})")
    for name, (calls, total) in STEPS.items():
        print(f"  {name:<22} {total / max(calls, 1) * 1000:6.2f} ms mean over {calls} calls")
    if profiler is not None:
        pstats.Stats(profiler).sort_stats("tottime").print_stats(25)
    shutil.rmtree(work, ignore_errors=True)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
