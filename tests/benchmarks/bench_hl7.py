"""Benchmark of the HL7 v2 ADT listener: messages/s through MLLP, ACKed, against a raw MLLP echo.

One sender, one connection, one message in flight (what interface engines do in original
acknowledgement mode), on loopback, in the same run:

  * peer: a raw MLLP echo on the same framing code (read a frame, answer a fixed ACK): the floor of
    the socket round trip plus framing, with no parsing, no lookup and no disk;
  * ``deaths``: A08 with PID-30=Y for linked patients: parsed (python-hl7), matched through the
    linkage blind index, written and fsync'd (file and folder) into the spool BEFORE the ACK, then
    processed from disk into the outbox by the processor thread (timed separately until the spool
    is empty);
  * ``traffic``: ordinary A08 updates (no death) of patients the registry does not know, the bulk
    of a real ADT feed: parsed and ACKed AA, nothing written.

The ratio listener/echo is what durability and parsing cost per message. ``[storage] fsync``
stays on for the listener (the production setting); the subjects are created with it off.

Run: python tests/benchmarks/bench_hl7.py [-n 1000]
"""

from __future__ import annotations

import argparse
import socket
import socketserver
import sys
import tempfile
import threading
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[2]))

from connector.config import load_config  # noqa: E402
from connector.deid.provider import PatientIdentity  # noqa: E402
from connector.hl7.listener import Hl7Service, spool_dir  # noqa: E402
from connector.hl7.mllp import FrameReader, ack, frame  # noqa: E402
from connector.linkage import OpenOptions, create_key_file, open_linkage  # noqa: E402
from connector.linkage.paths import default_key_path  # noqa: E402
from connector.outbox import Outbox  # noqa: E402
from connector.site_db import open_state  # noqa: E402
from connector.store.layout import SiteLayout  # noqa: E402
from tests.hl7.support import adt  # noqa: E402


class EchoServer:
    """Raw MLLP echo: the same frame reader, a fixed ACK, nothing else."""

    def __init__(self) -> None:
        reply = frame(ack("AA", "X"))

        class Handler(socketserver.BaseRequestHandler):
            def handle(self) -> None:
                reader = FrameReader(self.request, 1024 * 1024)
                while reader.read() is not None:
                    self.request.sendall(reply)

        class Server(socketserver.ThreadingTCPServer):
            allow_reuse_address = True
            daemon_threads = True

        self.server = Server(("127.0.0.1", 0), Handler)
        self.port = int(self.server.server_address[1])
        threading.Thread(target=self.server.serve_forever, daemon=True).start()

    def stop(self) -> None:
        self.server.shutdown()
        self.server.server_close()


def send_all(port: int, messages: list[bytes]) -> float:
    """Seconds to send every message and read its ACK, one in flight."""
    with socket.create_connection(("127.0.0.1", port)) as sock:
        sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
        buf = b""
        started = time.perf_counter()
        for m in messages:
            sock.sendall(frame(m))
            while b"\x1c\x0d" not in buf:
                buf += sock.recv(65536)
            reply, buf = buf.split(b"\x1c\x0d", 1)
            if b"MSA|AA" not in reply:
                raise SystemExit(f"not acknowledged AA: {reply[:200]!r}")
        return time.perf_counter() - started


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("-n", type=int, default=1000, help="messages per workload (and linked patients)")
    args = parser.parse_args()
    n = args.n
    with tempfile.TemporaryDirectory() as tmp:
        root = Path(tmp)
        (root / "connector.toml").write_text('[site]\nid = "BENCH"\n[storage]\ndata_dir = "data"\nfsync = false\n'
                                             '[linkage]\nscrypt_log_n = 14\n[hl7]\nport = 0\nhost = "127.0.0.1"\n')
        setup_config = load_config(root / "connector.toml", environ={})
        create_key_file(default_key_path(setup_config))
        SiteLayout.from_config(setup_config).ensure()
        provider = open_linkage(setup_config, OpenOptions(role="bench"))
        t0 = time.perf_counter()
        for i in range(n):
            provider.subject_for(PatientIdentity(f"BEN{i:07d}", "HOSP-A", "SYNTH^P", "19500101", "F"),
                                 study_date="20200101")
        print(f"set-up: {n} linked patients in {time.perf_counter() - t0:.1f} s")
        config = load_config(root / "connector.toml", environ={"SITE_CONNECTOR__STORAGE__FSYNC": "true"})
        store = open_state(SiteLayout.from_config(config).state_db)
        deaths = [adt("A08", f"BEN{i:07d}", death="20240105", indicator="Y", control=f"D{i}") for i in range(n)]
        traffic = [adt("A08", f"OTHER{i:07d}", control=f"T{i}") for i in range(n)]

        echo = EchoServer()
        service = Hl7Service(config, provider, store, Outbox(store)).start()
        try:
            send_all(echo.port, traffic[:50])  # warm-up of both
            send_all(service.port, [adt("A08", "WARM", control="W")] * 50)
            echo_s = send_all(echo.port, deaths)
            death_s = send_all(service.port, deaths)
            t_ack_done = time.perf_counter()
            while list(spool_dir(config).glob("*.hl7")):
                time.sleep(0.01)
            drained_s = time.perf_counter() - t_ack_done
            traffic_s = send_all(service.port, traffic)
            echo2_s = send_all(echo.port, traffic)
        finally:
            service.stop()
            echo.stop()
        queued = store.conn.execute("SELECT COUNT(*) FROM outbox_jobs WHERE kind='event'").fetchone()[0]
        store.close()
        provider.close()
    echo_rate = n / min(echo_s, echo2_s)
    print(f"raw MLLP echo (peer):               {echo_rate:9.0f} msg/s  ({n} messages, best of 2 runs)")
    print(f"listener, deaths (fsync'd, ACKed):  {n / death_s:9.0f} msg/s  ratio {n / death_s / echo_rate:.3f} "
          f"of the echo")
    print(f"  ... spool processed into the outbox {drained_s:.1f} s after the last ACK; {queued} events queued")
    print(f"listener, ordinary traffic (AA):    {n / traffic_s:9.0f} msg/s  ratio {n / traffic_s / echo_rate:.3f} "
          f"of the echo")
    if queued != n:
        raise SystemExit(f"expected {n} events queued, found {queued}")


if __name__ == "__main__":
    main()
