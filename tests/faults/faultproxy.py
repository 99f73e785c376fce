"""A fault-injecting HTTP proxy in front of the real dev registry (loopback only).

Modes, switched while the daemon runs:
- ``pass``: every request is forwarded and the registry's answer returned as is;
- ``refuse``: the port is closed (connection refused: the registry is down);
- ``500`` / ``503``: answered at once without forwarding (503 carries ``Retry-After: 1``);
- ``stall``: forwarded (the registry stores it), then half of the answer is sent and nothing more;
- ``close``: forwarded, then half of the answer is sent and the connection closed mid-body.

Requests are read completely (Content-Length or chunked) before any answer, as a real server would.
"""

from __future__ import annotations

import socket
import threading
import time
from typing import Any

MODES = ("pass", "refuse", "500", "503", "stall", "close")


class FaultProxy:
    def __init__(self, upstream_port: int, port: int = 0) -> None:
        self.upstream_port = upstream_port
        self.mode = "pass"
        self.requests: dict[str, int] = {m: 0 for m in MODES}
        self._lock = threading.Lock()
        self._conns: list[socket.socket] = []
        self._listener: socket.socket | None = None
        self.port = port
        self._listen()

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.port}"

    def _listen(self) -> None:
        sock = socket.socket()
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        sock.bind(("127.0.0.1", self.port))
        sock.listen(64)
        self.port = sock.getsockname()[1]
        self._listener = sock
        threading.Thread(target=self._accept, args=(sock,), daemon=True).start()

    def set_mode(self, mode: str) -> None:
        assert mode in MODES
        if mode == "refuse" and self._listener is not None:
            self._listener.close()
            self._listener = None
            self._drop_connections()
        elif mode != "refuse" and self._listener is None:
            self._listen()
        if mode == "pass":
            self._drop_connections()  # stalled ones: the client has timed out or will
        self.mode = mode

    def close(self) -> None:
        if self._listener is not None:
            self._listener.close()
            self._listener = None
        self._drop_connections()

    def _drop_connections(self) -> None:
        with self._lock:
            conns, self._conns = self._conns, []
        for conn in conns:
            try:
                conn.shutdown(socket.SHUT_RDWR)
            except OSError:
                pass
            conn.close()

    def _accept(self, listener: socket.socket) -> None:
        while True:
            try:
                conn, _ = listener.accept()
            except OSError:
                return
            with self._lock:
                self._conns.append(conn)
            threading.Thread(target=self._serve, args=(conn,), daemon=True).start()

    def _serve(self, conn: socket.socket) -> None:
        reader = conn.makefile("rb")
        try:
            while True:
                request = _read_request(reader)
                if request is None:
                    return
                mode = self.mode
                with self._lock:
                    self.requests[mode] = self.requests.get(mode, 0) + 1
                if mode in ("500", "503"):
                    extra = b"Retry-After: 1\r\n" if mode == "503" else b""
                    body = b'{"error": "injected fault"}'
                    conn.sendall(b"HTTP/1.1 " + mode.encode() + b" Injected\r\nContent-Type: application/json\r\n"
                                 + extra + b"Content-Length: " + str(len(body)).encode() + b"\r\n\r\n" + body)
                    continue
                response = self._forward(request)
                if mode == "pass":
                    conn.sendall(response)
                    continue
                header_end = response.index(b"\r\n\r\n") + 4
                cut = header_end + max(1, (len(response) - header_end) // 2)
                conn.sendall(response[:cut])
                if mode == "close":
                    return
                while self.mode == "stall":  # stall: say nothing more, keep the connection open
                    time.sleep(0.1)
                return
        except (OSError, ValueError):
            return
        finally:
            try:
                reader.close()
                conn.close()
            except OSError:
                pass

    def _forward(self, request: bytes) -> bytes:
        head, _, body = request.partition(b"\r\n\r\n")
        lines = [line for line in head.split(b"\r\n") if not line.lower().startswith(b"connection:")]
        with socket.create_connection(("127.0.0.1", self.upstream_port), timeout=60) as up:
            up.sendall(b"\r\n".join(lines) + b"\r\nConnection: close\r\n\r\n" + body)
            chunks = []
            while True:
                data = up.recv(65536)
                if not data:
                    break
                chunks.append(data)
        response = b"".join(chunks)
        head, _, body = response.partition(b"\r\n\r\n")
        lines = [line for line in head.split(b"\r\n") if not line.lower().startswith(b"connection:")]
        return b"\r\n".join(lines) + b"\r\n\r\n" + body


def _read_request(reader: Any) -> bytes | None:
    """One whole HTTP/1.1 request as raw bytes (the body re-framed with Content-Length), or None at EOF."""
    head = b""
    while not head.endswith(b"\r\n\r\n"):
        line = reader.readline(65537)
        if not line:
            if head:
                raise ValueError("connection closed inside the request head")
            return None
        head += line
    lines = head[:-4].split(b"\r\n")
    headers = {}
    for line in lines[1:]:
        name, _, value = line.partition(b":")
        headers[name.strip().lower()] = value.strip()
    if b"chunked" in headers.get(b"transfer-encoding", b"").lower():
        body = b""
        while True:
            size = int(reader.readline().split(b";")[0].strip(), 16)
            if size == 0:
                while reader.readline() not in (b"\r\n", b""):
                    pass
                break
            body += reader.read(size)
            reader.readline()
        kept = [line for line in lines if not line.lower().startswith((b"transfer-encoding:", b"content-length:"))]
        return b"\r\n".join(kept) + b"\r\nContent-Length: " + str(len(body)).encode() + b"\r\n\r\n" + body
    length = int(headers.get(b"content-length", b"0") or 0)
    body = reader.read(length) if length else b""
    return head + body
