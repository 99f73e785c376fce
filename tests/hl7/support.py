"""Synthetic ADT messages and a raw-socket MLLP client, for the HL7 listener tests."""

from __future__ import annotations

import socket
import ssl

VT, FS, CR = b"\x0b", b"\x1c", b"\x0d"


def segment(name: str, fields: dict[int, str], length: int) -> str:
    values = [""] * (length + 1)
    values[0] = name
    for i, v in fields.items():
        values[i] = v
    return "|".join(values).rstrip("|")


def adt(trigger: str, patient_id: str, authority: str = "HOSP-A", *, control: str = "MSG00001",
        death: str = "", indicator: str = "", disposition: str = "", discharge: str = "",
        prior: tuple[str, str] | None = None, message_type: str = "ADT", extra_ids: str = "") -> bytes:
    """One ADT message with the fields the death rules read (every value synthetic)."""
    msh = f"MSH|^~\\&|EPIC|SYNTHHOSP|SITECONN|REG|20250101120000||{message_type}^{trigger}^ADT_A01|{control}|P|2.5"
    ids = f"{patient_id}^^^{authority}^MR" + (f"~{extra_ids}" if extra_ids else "")
    segs = [msh, f"EVN|{trigger}|20250101120000",
            segment("PID", {1: "1", 3: ids, 5: "SYNTHFAMILY^GIVEN", 7: "19470312", 8: "F", 29: death, 30: indicator}, 30)]
    if prior is not None:
        segs.append(f"MRG|{prior[0]}^^^{prior[1]}^MR")
    segs.append(segment("PV1", {1: "1", 2: "I", 36: disposition, 45: discharge}, 45))
    return ("\r".join(segs) + "\r").encode()


class MllpClient:
    """A plain MLLP sender over a real socket (what an interface engine does)."""

    def __init__(self, port: int, host: str = "127.0.0.1", timeout: float = 10.0,
                 tls: ssl.SSLContext | None = None) -> None:
        sock = socket.create_connection((host, port), timeout=timeout)
        self.sock = tls.wrap_socket(sock, server_hostname="localhost") if tls else sock
        self._buf = b""

    def send_raw(self, data: bytes) -> None:
        self.sock.sendall(data)

    def read_ack(self) -> bytes | None:
        """The next framed reply, or None when the listener closed the connection."""
        while FS + CR not in self._buf:
            try:
                data = self.sock.recv(65536)
            except (ConnectionResetError, TimeoutError, OSError):
                return None
            if not data:
                return None
            self._buf += data
        end = self._buf.index(FS + CR)
        reply, self._buf = self._buf[1:end], self._buf[end + 2:]
        return reply

    def send(self, message: bytes) -> bytes | None:
        self.send_raw(VT + message + FS + CR)
        return self.read_ack()

    def close(self) -> None:
        self.sock.close()

    def __enter__(self) -> MllpClient:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()


def ack_code(reply: bytes | None) -> tuple[str, str, str]:
    """(MSA-1, MSA-2, MSA-3) of an ACK."""
    assert reply is not None, "no ACK (connection closed)"
    for seg in reply.decode().split("\r"):
        if seg.startswith("MSA|"):
            parts = seg.split("|") + ["", "", ""]
            return parts[1], parts[2], parts[3]
    raise AssertionError("no MSA segment in the ACK")
