#!/usr/bin/env python3
"""Trace where one C-STORE spends its time in the receiver (a profiling aid, not a test).

Runs the connector's SCP in this process, sends 0.5 MB CT instances with dcmtk's storescu on one
association, and prints the mean per-instance time of each phase: receive (command PDU read to
handler start), handler (durability protocol), handler end to response sent, and the sender's
turnaround. Pass ``false`` to measure with the spool fsync off.

    python tests/benchmarks/trace_ingest.py [true|false]
"""
import os
import shutil
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path
ROOT = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
sys.path.insert(0, ROOT)
WORK = tempfile.mkdtemp(prefix='trace-ingest-')
os.environ.update(SITE_CONNECTOR__STORAGE__MIN_FREE_BYTES='0', SITE_CONNECTOR__DICOM__PORT='11183', SITE_CONNECTOR__STORAGE__DATA_DIR=WORK + '/site')
if len(sys.argv) > 1: os.environ['SITE_CONNECTOR__STORAGE__FSYNC'] = sys.argv[1]
from connector.config import load_config
from connector.store.layout import SiteLayout
from connector.store.state import StateStore
from connector.ingest.intake import Intake
from connector.ingest.scp import StoreSCP, configure_pynetdicom
import connector.ingest.scp as scp
from pynetdicom import dul
cfg = load_config(None)
layout = SiteLayout.from_config(cfg); layout.ensure()
store = StateStore(layout.state_db)
intake = Intake(layout, store, fsync=cfg.storage.fsync)
configure_pynetdicom(layout.partial)
T = []
def wrap(cls, name, tag):
    orig = getattr(cls, name)
    def w(self, *a, **k):
        t0 = time.perf_counter(); r = orig(self, *a, **k); T.append((tag, t0, time.perf_counter())); return r
    setattr(cls, name, w)
wrap(scp.StoreSCP, '_on_store', 'handler')
wrap(dul.DULServiceProvider, '_send', 'send')
wrap(dul.DULServiceProvider, '_read_pdu_data', 'read')
s = StoreSCP(cfg.dicom, intake); s.start()
from connector.synthetic import SyntheticStudy, ct_slices, write_series  # noqa: E402
files = write_series(ct_slices(SyntheticStudy(), 200), Path(WORK) / 'instances')
t = time.perf_counter()
from tests.support.tools import dcmtk  # noqa: E402
subprocess.run([dcmtk('storescu'), '-aec', 'SITECONN', '127.0.0.1', '11183', *map(str, files)], env=dict(os.environ, TCP_NODELAY='1'), check=True)
el = time.perf_counter() - t
s.stop()
print(f'{len(files)/el:.0f} inst/s  {el/len(files)*1000:.2f} ms/inst')
seq = sorted(T, key=lambda x: x[1])
hs = [i for i, x in enumerate(seq) if x[0] == 'handler']
# average phases over instances 20..120
A=[];B=[];C=[];D=[]
for k in range(20, len(hs) - 2):
    i0 = hs[k]; i1 = hs[k+1]
    h = seq[i0]
    sends_after = [x for x in seq[i0:i1] if x[0] == 'send']
    reads = [x for x in seq[i0:i1] if x[0] == 'read']
    nh = seq[i1]
    resp = sends_after[0]
    A.append(h[2]-h[1]); B.append(resp[1]-h[2]); C.append(reads[0][1]-resp[2]); D.append(nh[1]-reads[0][1])
f=lambda L: f"{1000*statistics.mean(L):.2f}"
print('handler', f(A), '| handler end->response sent', f(B), '| response->next cmd PDU read', f(C), '| first PDU read->handler start', f(D))
shutil.rmtree(WORK, ignore_errors=True)
