"""The one path every received object takes onto the spool, whatever channel brought it.

Durability protocol (the PACS is told "stored" only after all of it):
1. the encoded bytes are in a file under ``spool/partial`` (the SCP streams them there as they arrive);
2. that file is fsync'd and renamed to its final name under ``spool/incoming``, and the folder fsync'd;
3. the instance row is committed in the state DB (WAL, ``synchronous=FULL``).
A crash before 3 leaves at most an orphan file that start-up recovery registers; a crash before 2
leaves a partial file that recovery deletes. Nothing that got a success status can be lost.

Only the few attributes needed to group instances are decoded (the header up to
SeriesInstanceUID); pixel data is never parsed here.
"""

from __future__ import annotations

import logging
import os
import shutil
import threading
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from pathlib import Path
from typing import Any, BinaryIO

from pydicom.errors import InvalidDicomError
from pydicom.filereader import read_partial

from connector.dicom_elements import explicit_vr_of, read_leading
from connector.store.durable import PART_SUFFIX, fsync_dir, fsync_file
from connector.store.group_commit import GroupCommitter
from connector.store.layout import SiteLayout
from connector.store.quarantine import QuarantineEntry, quarantine
from connector.store.state import InstanceRecord, StateStore, StoreOutcome, instance_key, study_key
from connector.store.digests import file_sha256

log = logging.getLogger(__name__)

_PIXEL_DATA = 0x7FE00010
_SERIES_INSTANCE_UID = 0x0020000E
# What files an instance: all top-level elements before (0020,000E)'s successor.
FILING_TAGS = {0x00080016: "SOPClassUID", 0x00080018: "SOPInstanceUID", 0x00080060: "Modality",
               0x0020000D: "StudyInstanceUID", 0x0020000E: "SeriesInstanceUID"}
_SEQ_DELIMITER = b"\xfe\xff\xdd\xe0\x00\x00\x00\x00"
_HASH_CHUNK = 1 << 20


class UnreadableObject(Exception):
    """The bytes are not a DICOM object we can file. ``code`` is a short non-identifying reason."""

    def __init__(self, code: str, detail: str = "") -> None:
        super().__init__(code if not detail else f"{code}: {detail}")
        self.code = code
        self.detail = detail


class DiskFull(Exception):
    """Free space on the spool disk is below the configured floor."""


@dataclass(frozen=True)
class Header:
    sop_instance_uid: str
    sop_class_uid: str
    study_uid: str
    series_uid: str
    modality: str
    transfer_syntax: str
    dataset_offset: int  # where the dataset starts, after preamble and file meta


def read_header(path: Path, *, verify_complete: bool = True) -> Header:
    """Decode just enough of a DICOM file to file it; raise UnreadableObject otherwise.

    ``verify_complete`` walks the header up to the pixel data to check the file is not cut short
    (needed for files copied in by people; a C-STORE dataset is complete by construction, so the
    SCP skips it and stops decoding at SeriesInstanceUID).
    """
    stop_at = _PIXEL_DATA if verify_complete else _SERIES_INSTANCE_UID + 1
    try:
        with open(path, "rb") as fh:
            ds = read_partial(fh, stop_when=lambda tag, vr, length: tag >= stop_at)
            meta = ds.file_meta
            if verify_complete:
                _check_pixel_data_complete(fh, ds)
            offset = _dataset_offset(fh, meta)
    except InvalidDicomError:
        raise UnreadableObject("not-dicom") from None
    except (EOFError, OSError, ValueError, KeyError, TypeError, NotImplementedError) as exc:
        raise UnreadableObject("unreadable-dicom", type(exc).__name__) from None
    return _header_from_dataset(ds, meta, offset)


def header_from_head(head: bytes, *, whole: bool, sop_class_uid: str, sop_instance_uid: str,
                     transfer_syntax: str, dataset_offset: int) -> Header | None:
    """The Header from the first bytes of a received dataset, or None to read it from the file.

    The receiver keeps the first bytes of each dataset as they stream by, so filing an object
    needs no second read. ``whole`` says ``head`` is the entire dataset. None (the caller then
    uses :func:`read_header`, which gives the precise error) for deflated or big-endian data, or
    whatever the byte walk of :mod:`connector.dicom_elements` declines.
    """
    explicit = explicit_vr_of(transfer_syntax)
    if explicit is None:
        return None
    found = read_leading(head, 0, explicit=explicit, wanted=FILING_TAGS, last_tag=_SERIES_INSTANCE_UID, whole=whole)
    if found is None:
        return None
    meta = {"MediaStorageSOPClassUID": sop_class_uid, "MediaStorageSOPInstanceUID": sop_instance_uid,
            "TransferSyntaxUID": transfer_syntax}
    return _header_from_dataset(found, meta, dataset_offset)


def _header_from_dataset(ds: Any, meta: Any, offset: int) -> Header:
    try:
        sop_instance = str(ds.get("SOPInstanceUID") or meta.get("MediaStorageSOPInstanceUID") or "")
        sop_class = str(ds.get("SOPClassUID") or meta.get("MediaStorageSOPClassUID") or "")
        study = str(ds.get("StudyInstanceUID") or "")
        series = str(ds.get("SeriesInstanceUID") or "")
        modality = str(ds.get("Modality") or "")
    except Exception as exc:  # a malformed value in one of the few elements we decode
        raise UnreadableObject("unreadable-dicom", type(exc).__name__) from None
    if meta.get("MediaStorageSOPClassUID") == "1.2.840.10008.1.3.10":
        raise UnreadableObject("dicomdir")
    missing = [name for name, v in (("SOPInstanceUID", sop_instance), ("StudyInstanceUID", study),
                                    ("SeriesInstanceUID", series)) if not v]
    if missing:
        raise UnreadableObject("missing-attribute", ",".join(missing))
    ts = str(meta.get("TransferSyntaxUID") or "")
    return Header(sop_instance, sop_class, study, series, modality, ts, offset)


def _check_pixel_data_complete(fh: BinaryIO, ds: Any) -> None:
    """Raise UnreadableObject("truncated") when the pixel data runs past the end of the file.

    Only the header is decoded on the hot path, so a file cut short inside its pixel data (a
    failed copy into the drop folder) would otherwise look complete. The reader stopped right at
    the Pixel Data element: its declared length must fit in the file, and encapsulated
    (compressed) pixel data must end with the sequence delimiter.
    """
    start = fh.tell()
    header = fh.read(12)
    if len(header) < 8 or int.from_bytes(header[0:2], "little") != 0x7FE0:
        return  # no pixel data, or a big-endian/deflated layout we do not second-guess
    size = os.fstat(fh.fileno()).st_size
    if header[4:6].isalpha():  # explicit VR: OB/OW have 2 reserved bytes and a 4-byte length
        length, value_at = int.from_bytes(header[8:12], "little"), start + 12
    else:
        length, value_at = int.from_bytes(header[4:8], "little"), start + 8
    if length == 0xFFFFFFFF:
        fh.seek(size - 8)
        if fh.read(8) != _SEQ_DELIMITER:
            raise UnreadableObject("truncated", "encapsulated pixel data not terminated")
    elif value_at + length > size:
        raise UnreadableObject("truncated", "pixel data shorter than declared")


def _dataset_offset(fh: object, meta: object) -> int:
    """Byte offset of the dataset: 128 + 4 + the encoded file meta group."""
    length = getattr(meta, "FileMetaInformationGroupLength", None)
    if length is not None:
        return 132 + 12 + int(length)
    # No group length: re-read the meta to find its end.
    from pydicom.filereader import _read_file_meta_info, read_preamble

    f = fh  # type: ignore[assignment]
    f.seek(0)  # type: ignore[attr-defined]
    read_preamble(f, False)  # type: ignore[arg-type]
    _read_file_meta_info(f)  # type: ignore[arg-type]
    return int(f.tell())  # type: ignore[attr-defined]


def dataset_sha256(path: Path, offset: int) -> str:
    """SHA-256 of the dataset bytes, ignoring preamble and file meta (which each channel rewrites)."""
    return file_sha256(path, offset)


def _stored_digest(path: Path) -> str:
    """SHA-256 of the dataset of an already stored file (whose row has no digest yet)."""
    return dataset_sha256(path, read_header(path, verify_complete=False).dataset_offset)


class Intake:
    """Files received objects durably and records them. Thread-safe; one per process."""

    def __init__(self, layout: SiteLayout, store: StateStore, *, min_free_bytes: int = 0, fsync: bool = True,
                 partial_dir: Path | None = None) -> None:
        self.layout = layout
        self.partial_dir = partial_dir or layout.partial
        self.store = store
        self.min_free_bytes = min_free_bytes
        self.fsync = fsync
        self._locks = [threading.Lock() for _ in range(64)]  # same SOP instance on two associations
        self._dir_syncer = ThreadPoolExecutor(max_workers=8, thread_name_prefix="fsync")
        self._commit = GroupCommitter(store)

    def close(self) -> None:
        """Finish pending commits and stop the helper threads (the receiver has stopped)."""
        self._commit.close()
        self._dir_syncer.shutdown(wait=True)

    def free_bytes(self) -> int:
        st = os.statvfs(self.layout.spool)
        return st.f_bavail * st.f_frsize

    def check_space(self) -> None:
        if self.min_free_bytes and self.free_bytes() < self.min_free_bytes:
            raise DiskFull()

    def ingest_partial(self, part: Path, *, source: str, calling_aet: str = "", verify_complete: bool = True,
                       header: Header | None = None, lazy_digest: bool = False) -> StoreOutcome:
        """File a complete object already written under ``spool/partial``; consumes ``part``.

        ``header`` may come from whoever wrote the file while it streamed in (the SCP); otherwise
        it is read from the file. The row keeps the SHA-256 of the dataset bytes; with
        ``lazy_digest`` (the SCP's hot path) it is computed only when the instance is already
        stored, to tell a harmless re-send from changed bytes, and a new row's digest stays empty.
        Why: hashing half a megabyte is a sixth of the receiver's CPU per instance, and on a
        2-core server that CPU is what the sender is waiting on.

        Raises UnreadableObject (caller quarantines ``part``), DiskFull, or OSError/sqlite3.Error
        (caller answers "out of resources" so the sender retries).
        """
        # The data fsync (disk I/O) must be complete before the rename below. When the header is
        # still to be parsed or the bytes hashed (CPU), it runs meanwhile on another thread.
        reading = header is None or not lazy_digest
        if self.fsync and not reading:
            fsync_file(part)
        data_synced = self._dir_syncer.submit(fsync_file, part) if self.fsync and reading else None
        try:
            if header is None:
                header = read_header(part, verify_complete=verify_complete)
            digest = None if lazy_digest else dataset_sha256(part, header.dataset_offset)
        finally:
            if data_synced is not None:
                data_synced.result()
        key = instance_key(header.sop_instance_uid)
        lock = self._locks[int(key[:4], 16) % len(self._locks)]
        previous = ""
        with lock:
            existing = self.store.find_instance(header.sop_instance_uid)
            if existing is not None:  # a re-send: same bytes are a no-op, different bytes replace
                digest = digest or dataset_sha256(part, header.dataset_offset)
                stored = self.layout.spool / existing[1]
                if stored.exists():
                    previous = existing[0] or _stored_digest(stored)
                    if previous == digest:
                        part.unlink(missing_ok=True)
                        return StoreOutcome("duplicate", study_key(header.study_uid))
            relpath = self.layout.incoming_relpath(key)
            final = self.layout.spool / relpath
            size = part.stat().st_size
            os.replace(part, final)
            # The folder fsync (making the rename durable) and the DB commit are independent and
            # both finish before we return, so they run side by side: the file system can serve
            # both with one journal commit. If the machine dies in between, nothing was
            # acknowledged; recovery drops a row whose file did not survive.
            pending = self._dir_syncer.submit(fsync_dir, final.parent) if self.fsync else None
            try:
                outcome = self._commit.record(self._record(header, relpath, digest or "", size, source,
                                                           calling_aet, previous_sha256=previous))
            finally:
                if pending is not None:
                    pending.result()
        if outcome.action == "replaced":
            log.warning("instance replaced by different bytes", extra={"event": "instance_replaced",
                                                                        "study": outcome.study_key})
        if outcome.reopened:
            log.info("late instance re-opened study", extra={"event": "study_reopened", "study": outcome.study_key})
        return outcome

    def ingest_external(self, path: Path, *, source: str = "folder") -> StoreOutcome:
        """Copy a file from outside the spool (e.g. the drop folder) in through the same protocol.

        The source file is left in place; the caller removes it once this returns.
        """
        self.check_space()
        fd, tmpname = _mkpart(self.partial_dir)
        try:
            with os.fdopen(fd, "wb") as out, open(path, "rb") as src:
                shutil.copyfileobj(src, out, _HASH_CHUNK)
            return self.ingest_partial(Path(tmpname), source=source)
        finally:
            Path(tmpname).unlink(missing_ok=True)

    def quarantine_partial(self, part: Path, error: UnreadableObject, *, source: str) -> QuarantineEntry:
        entry = quarantine(self.layout.quarantine, "ingest", error.code, source_path=part, move=True,
                           details={"source": source, "detail": error.detail})
        log.warning("object quarantined", extra={"event": "quarantined", "stage": "ingest",
                                                  "reason": error.code, "entry": entry.id})
        return entry

    @staticmethod
    def _record(h: Header, relpath: str, digest: str, size: int, source: str, calling_aet: str, *,
                previous_sha256: str = "") -> InstanceRecord:
        return InstanceRecord(
            sop_instance_uid=h.sop_instance_uid, sop_class_uid=h.sop_class_uid, study_uid=h.study_uid,
            series_uid=h.series_uid, modality=h.modality, transfer_syntax=h.transfer_syntax, path=relpath,
            sha256=digest, size=size, source=source, calling_aet=calling_aet, previous_sha256=previous_sha256,
        )


def _mkpart(folder: Path) -> tuple[int, str]:
    import tempfile

    return tempfile.mkstemp(dir=folder, suffix=PART_SUFFIX)
