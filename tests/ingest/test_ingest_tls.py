"""Optional DICOM TLS: a TLS client stores; a plain-TCP client gets nothing stored."""

from __future__ import annotations

import datetime as dt
import ssl
import subprocess
from pathlib import Path

import pydicom
from cryptography import x509
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec
from cryptography.x509.oid import NameOID
from pynetdicom import AE

from tests.support.daemon import ConnectorProcess
from tests.support.tools import dcmtk


def self_signed(folder: Path) -> tuple[Path, Path]:
    key = ec.generate_private_key(ec.SECP256R1())
    name = x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, "localhost")])
    now = dt.datetime.now(dt.timezone.utc)
    cert = (x509.CertificateBuilder().subject_name(name).issuer_name(name).public_key(key.public_key())
            .serial_number(x509.random_serial_number()).not_valid_before(now - dt.timedelta(minutes=1))
            .not_valid_after(now + dt.timedelta(days=1))
            .add_extension(x509.SubjectAlternativeName([x509.DNSName("localhost")]), critical=False)
            .sign(key, hashes.SHA256()))
    cert_path, key_path = folder / "cert.pem", folder / "key.pem"
    cert_path.write_bytes(cert.public_bytes(serialization.Encoding.PEM))
    key_path.write_bytes(key.private_bytes(serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8,
                                           serialization.NoEncryption()))
    return cert_path, key_path


def test_tls_receiver(tmp_path: Path, small_study) -> None:
    _, files = small_study
    cert, key = self_signed(tmp_path)
    with ConnectorProcess(tmp_path / "site", dicom__tls_cert_file=str(cert), dicom__tls_key_file=str(key)) as daemon:
        ctx = ssl.create_default_context(ssl.Purpose.SERVER_AUTH, cafile=str(cert))
        ae = AE(ae_title="TLSSCU")
        ds = pydicom.dcmread(files[0])
        ae.add_requested_context(ds.SOPClassUID, ds.file_meta.TransferSyntaxUID)
        assoc = ae.associate("127.0.0.1", daemon.port, ae_title="SITECONN", tls_args=(ctx, "localhost"))
        assert assoc.is_established
        status = assoc.send_c_store(ds)
        assoc.release()
        assert status.Status == 0x0000
        plain = subprocess.run([dcmtk("storescu"), "-to", "5", "-ta", "5", "-aec", "SITECONN", "127.0.0.1",
                                str(daemon.port), str(files[1])], capture_output=True, text=True)
        assert plain.returncode != 0
        assert len(list(daemon.spool.glob("incoming/*/*.dcm"))) == 1
