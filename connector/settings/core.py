"""The daemon's own configuration sections: [site], [dicom], [storage], [keys], [assemble], [dropfolder],
[logging] and [service]. Each stage's section has its own module beside this one.
"""

from __future__ import annotations

import re
from dataclasses import dataclass
from pathlib import Path

from connector.settings.fields import check as _check
from connector.settings.fields import setting as _setting
from connector.settings.fields import valid_ae as _valid_ae
from connector.settings.fields import valid_host_entry as _valid_host_entry


@dataclass(frozen=True)
class SiteConfig:
    id: str = _setting(
        "SITE01",
        _check(lambda v: bool(re.fullmatch(r"[A-Za-z0-9]{1,16}", v)), "must be 1-16 letters or digits"),
        doc="site code assigned by the registry; prefixes every pseudonym",
    )


@dataclass(frozen=True)
class DicomConfig:
    ae_title: str = _setting("SITECONN", _check(_valid_ae, "must be 1-16 printable characters, no backslash"),
                             doc="AE title the PACS sends to")
    host: str = _setting("0.0.0.0", doc="address to listen on (0.0.0.0 = every interface)")
    port: int = _setting(11112, _check(lambda v: 1 <= v <= 65535, "must be between 1 and 65535"),
                         doc="DICOM port (104 needs CAP_NET_BIND_SERVICE)")
    allowed_ae_titles: list[str] = _setting(
        [], _check(lambda v: all(_valid_ae(x) for x in v), "every entry must be a valid AE title"),
        doc="calling AE titles allowed to connect; empty = any",
    )
    allowed_hosts: list[str] = _setting(
        [], _check(lambda v: all(_valid_host_entry(x) for x in v), "every entry must be an IP address or CIDR network"),
        doc="IP addresses or networks allowed to connect, e.g. [\"10.1.2.3\", \"10.9.0.0/16\"]; empty = any",
    )
    receiver_processes: int = _setting(2, _check(lambda v: 1 <= v <= 64, "must be between 1 and 64"),
                                       doc="processes sharing the DICOM port; a crash in one never stops reception")
    max_associations: int = _setting(32, _check(lambda v: 1 <= v <= 1000, "must be between 1 and 1000"),
                                     doc="simultaneous associations accepted, per receiver process; a connection "
                                         "takes one only once its A-ASSOCIATE-RQ passed the allow-lists")
    max_pending_connections: int = _setting(
        64, _check(lambda v: 1 <= v <= 1000, "must be between 1 and 1000"),
        doc="connections not yet associated (TLS handshake, A-ASSOCIATE-RQ), per receiver process; more are "
            "closed at once; with allowed_hosts set, other addresses get at most half",
    )
    max_pending_per_host: int = _setting(
        32, _check(lambda v: 1 <= v <= 1000, "must be between 1 and 1000"),
        doc="of those, from one IP address (IPv6: one /64)",
    )
    artim_timeout_seconds: float = _setting(
        5.0, _check(lambda v: 0.1 <= v <= 300, "must be between 0.1 and 300 seconds"),
        doc="seconds a new connection has for its TLS handshake and A-ASSOCIATE-RQ before it is closed",
    )
    max_pdu_length: int = _setting(
        4 * 1024 * 1024, _check(lambda v: 4096 <= v <= 0xFFFFFFFF, "must be between 4096 and 4294967295"),
        doc="largest P-DATA-TF PDU accepted, announced to the sender; a longer one is aborted unread",
    )
    extra_storage_sop_classes: list[str] = _setting(
        [], _check(lambda v: all(len(x) <= 64 and re.fullmatch(r"(0|[1-9][0-9]*)(\.(0|[1-9][0-9]*))+", x) for x in v),
                   "every entry must be a UID: digits and dots, up to 64 characters"),
        doc="private or newer storage SOP class UIDs to accept besides the standard ones; any other is refused",
    )
    network_timeout: float = _setting(60.0, _check(lambda v: v > 0, "must be positive"),
                                      doc="seconds of silence before an association is dropped")
    tls_cert_file: Path | None = _setting(None, doc="PEM certificate: set with tls_key_file to require DICOM TLS")
    tls_key_file: Path | None = _setting(None, doc="PEM private key for tls_cert_file")
    tls_ca_file: Path | None = _setting(None, doc="PEM CA bundle: when set, callers must present a certificate from it")


@dataclass(frozen=True)
class StorageConfig:
    data_dir: Path = _setting(Path("site-connector-data"), doc="spool, state DB, quarantine and logs live here")
    min_free_bytes: int = _setting(2 * 1024**3, _check(lambda v: v >= 0, "must be zero or more"),
                                   doc="below this much free disk, C-STORE answers 'out of resources' (A700)")
    fsync: bool = _setting(True, doc="fsync every received object before acknowledging; never turn off in production")


@dataclass(frozen=True)
class KeysConfig:
    dir: Path | None = _setting(None, doc="key folder (default <data_dir>/keys); keep it off backups of data_dir")


@dataclass(frozen=True)
class AssembleConfig:
    stable_seconds: float = _setting(90.0, _check(lambda v: v >= 0, "must be zero or more"),
                                     doc="a study is complete after this many seconds with no new instance")
    sweep_seconds: float = _setting(5.0, _check(lambda v: v > 0, "must be positive"),
                                    doc="how often quiet studies are looked for")


@dataclass(frozen=True)
class DropFolderConfig:
    path: Path | None = _setting(None, doc="watched folder for DICOM files; unset = no drop folder")
    settle_seconds: float = _setting(2.0, _check(lambda v: v >= 0, "must be zero or more"),
                                     doc="a file is taken once its size is unchanged this long")
    poll_seconds: float = _setting(1.0, _check(lambda v: v > 0, "must be positive"),
                                   doc="how often pending files are checked")


@dataclass(frozen=True)
class LoggingConfig:
    level: str = _setting(
        "INFO", _check(lambda v: v.upper() in {"DEBUG", "INFO", "WARNING", "ERROR"}, "must be DEBUG, INFO, WARNING or ERROR"),
        doc="DEBUG, INFO, WARNING or ERROR",
    )
    file: Path | None = _setting(None, doc="also write JSON lines to this file, rotated; unset = stderr only")


@dataclass(frozen=True)
class ServiceConfig:
    stop_timeout: float = _setting(
        30.0, _check(lambda v: 5 <= v <= 3600, "must be between 5 and 3600 seconds"),
        doc="SIGTERM stops the daemon within this many seconds (keep below systemd's TimeoutStopSec); "
            "associations still sending after half of it are aborted and the PACS resends",
    )
