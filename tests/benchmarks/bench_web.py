"""Benchmark of the HTTP surface: /healthz, /metrics and the studies page on a site with a year of data.

The state DB is filled with N instances in S studies (rows only, inserted directly), then each
endpoint is requested R times in a row from one client. Peer, measured in the same run: the
standard library's ``http.server`` answering a fixed 4 KB body, i.e. the cost of HTTP alone on
this machine; the ratio says how much the connector's own work (SQL, rendering) adds.

Run: python tests/benchmarks/bench_web.py [-n INSTANCES] [-s STUDIES] [-r REQUESTS]
"""

from __future__ import annotations

import argparse
import re
import statistics
import sys
import tempfile
import threading
import time
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[2]))

import httpx  # noqa: E402

from connector.config import load_config  # noqa: E402
from connector.store.layout import SiteLayout  # noqa: E402
from connector.store.state import STUDY_STATES, StateStore  # noqa: E402
from connector.site_db import open_state  # noqa: E402
from connector.web.users import UserFile, users_path  # noqa: E402
from connector.web.server import WebServer  # noqa: E402
from connector.web.site_context import SiteContext


def fill(store: StateStore, instances: int, studies: int) -> None:
    now = time.time()
    with store.write() as conn:
        conn.executemany(
            "INSERT INTO studies (study_key, study_uid, state, instance_count, first_received_at, last_received_at, "
            "updated_at) VALUES (?, ?, ?, ?, ?, ?, ?)",
            [(f"{s:020x}", f"1.2.3.{s}", STUDY_STATES[s % len(STUDY_STATES)], instances // studies,
              now - s * 600, now - s * 600, now) for s in range(studies)])
        conn.executemany(
            "INSERT INTO instances (sop_instance_uid, sop_class_uid, study_key, study_uid, series_uid, modality, "
            "transfer_syntax, path, sha256, size, source, calling_aet, received_at) "
            "VALUES (?, '1.2.840.10008.5.1.4.1.1.2', ?, ?, '1.2.9', 'CT', '1.2.840.10008.1.2.1', ?, ?, 524288, 'scp', "
            "'PACS', ?)",
            [(f"1.2.4.{i}", f"{i % studies:020x}", f"1.2.3.{i % studies}", f"incoming/{i % 256:02x}/{i}.dcm",
              f"{i:064x}", now - i) for i in range(instances)])


def timed(client: httpx.Client, path: str, repeats: int) -> list[float]:
    out = []
    for _ in range(repeats):
        t = time.perf_counter()
        r = client.get(path)
        out.append(time.perf_counter() - t)
        assert r.status_code in (200, 503), (path, r.status_code)
    return out


class _Static(BaseHTTPRequestHandler):
    body = b"x" * 4096

    def do_GET(self) -> None:
        self.send_response(200)
        self.send_header("Content-Length", str(len(self.body)))
        self.end_headers()
        self.wfile.write(self.body)

    def log_message(self, *args: object) -> None:
        pass


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("-n", "--instances", type=int, default=200_000)
    ap.add_argument("-s", "--studies", type=int, default=2_000)
    ap.add_argument("-r", "--requests", type=int, default=50)
    args = ap.parse_args()

    with tempfile.TemporaryDirectory() as tmp:
        config = load_config(None, environ={"SITE_CONNECTOR__STORAGE__DATA_DIR": f"{tmp}/data",
                                            "SITE_CONNECTOR__STORAGE__MIN_FREE_BYTES": "0",
                                            "SITE_CONNECTOR__HTTP__PORT": "0"})
        layout = SiteLayout.from_config(config)
        layout.ensure()
        store = open_state(layout.state_db)
        t = time.perf_counter()
        fill(store, args.instances, args.studies)
        print(f"filled {args.instances} instances / {args.studies} studies in {time.perf_counter() - t:.1f} s")
        UserFile(users_path(config)).add("bench", "bench password 123")
        web = WebServer(SiteContext(config, store, layout, {"registry": lambda: None, "scp": lambda: None}))
        web.start()
        peer = ThreadingHTTPServer(("127.0.0.1", 0), _Static)
        threading.Thread(target=peer.serve_forever, daemon=True).start()
        try:
            c = httpx.Client(base_url=web.url, timeout=30)
            token = re.search(r'name="csrf" value="([^"]+)"', c.get("/login").text).group(1)
            c.post("/login", data={"csrf": token, "username": "bench", "password": "bench password 123"})
            paths = ["/healthz", "/metrics", "/studies", "/", f"/studies/{0:020x}"]  # the last: one study's page
            results = {p: timed(c, p, args.requests) for p in paths}
            base = timed(httpx.Client(base_url=f"http://127.0.0.1:{peer.server_address[1]}", timeout=30), "/",
                         args.requests)
        finally:
            web.stop()
            peer.shutdown()
            store.close()

    peer_ms = statistics.median(base) * 1000
    print(f"\n{'endpoint':<28}{'median ms':>10}{'p95 ms':>9}{'x peer':>9}")
    for path, times in [*results.items(), ("peer: http.server 4 KB", base)]:
        med = statistics.median(times) * 1000
        p95 = sorted(times)[int(len(times) * 0.95) - 1] * 1000
        print(f"{path:<28}{med:>10.2f}{p95:>9.2f}{med / peer_ms:>9.1f}")


if __name__ == "__main__":
    main()
