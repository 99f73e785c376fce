"""One STOW-RS request's parts, from the multipart stream to the durable intake.

Each part streams to a ``.part`` file under the role's partial folder, then is filed by
:class:`connector.ingest.intake.Intake` (the C-STORE path) on a bounded pool while the next part is
read. Outcomes are collected in order for the answer (:mod:`connector.ingest.stow_response`).
"""

from __future__ import annotations

import logging
import os
import tempfile
import threading
from concurrent.futures import Future, ThreadPoolExecutor
from pathlib import Path
from typing import Any

from connector.ingest.intake import DiskFull, Intake, UnreadableObject, read_header
from connector.ingest.multipart_stream import BodyReader
from connector.ingest.negotiation import Offer
from connector.ingest.stow_response import (CANNOT_UNDERSTAND, OUT_OF_RESOURCES, SOP_CLASS_REFUSED, Outcome,
                                            StowResult)
from connector.store.durable import PART_SUFFIX, start_writeback

log = logging.getLogger(__name__)


class RequestTooLarge(Exception):
    """The body crossed ``max_request_bytes`` while it was read."""


class LimitedReader(BodyReader):
    """A :class:`BodyReader` that stops at ``limit`` raw bytes (for bodies without a Content-Length)."""

    def __init__(self, rfile: Any, *, limit: int, **kw: Any) -> None:
        super().__init__(rfile, **kw)
        self.limit = limit

    def readinto(self, view: memoryview) -> int:
        got = super().readinto(view)
        if self.raw_bytes > self.limit:
            raise RequestTooLarge()
        return got

    def read(self, n: int = 1024 * 1024) -> bytes:
        data = super().read(n)
        if self.raw_bytes > self.limit:
            raise RequestTooLarge()
        return data


class PartFile:
    """One part on its way to a ``.part`` file; keeps reading (and dropping) the bytes after a failure."""

    def __init__(self, folder: Path, headers: dict[str, str], *, writeback: bool) -> None:
        self.path: Path | None = None
        self.fd: int | None = None
        self.written = 0
        self.reason: int | None = None
        self.writeback = writeback
        kind = headers.get("content-type", "application/dicom").split(";")[0].strip().lower()
        if kind != "application/dicom":
            self.reason = CANNOT_UNDERSTAND  # metadata or bulk data parts: not a DICOM instance
            return
        try:
            self.fd, name = tempfile.mkstemp(dir=folder, suffix=PART_SUFFIX)
            self.path = Path(name)
        except OSError:
            self.reason = OUT_OF_RESOURCES

    def write(self, data: memoryview) -> None:
        if self.fd is None:
            return
        view = memoryview(data)
        start = self.written
        try:
            while view:
                n = os.write(self.fd, view)
                view = view[n:]
                self.written += n
        except OSError:  # disk full or failing: drop this part, go on reading the body
            self.reason = OUT_OF_RESOURCES
            self.discard()
            return
        if self.writeback:
            start_writeback(self.fd, start, self.written - start)

    def close(self) -> None:
        if self.fd is not None:
            os.close(self.fd)
            self.fd = None

    def discard(self) -> None:
        self.close()
        if self.path is not None:
            self.path.unlink(missing_ok=True)
            self.path = None


class StowReceiver:
    """Files the parts of one request through the intake; collects the per-part outcomes."""

    def __init__(self, intake: Intake, offer: Offer, study: str | None, peer: str, filer: ThreadPoolExecutor,
                 *, window: int = 8) -> None:
        self.intake, self.offer, self.study, self.peer = intake, offer, study, peer
        self.filer = filer
        self.current: PartFile | None = None
        self._outcomes: list[Outcome | Future[Outcome]] = []
        self._window = threading.Semaphore(window)  # parts being filed at once for this request

    @property
    def parts(self) -> int:
        return len(self._outcomes)

    def finish(self) -> StowResult:
        """Wait until every part handed to the filer is filed (or refused); their outcomes in order.

        Called before any answer, including 400/413: the answer must follow the fsyncs, and no
        part may still be on its way when the sender hears back.
        """
        result = StowResult()
        for item in self._outcomes:
            result.outcomes.append(item.result() if isinstance(item, Future) else item)
        return result

    def on_part(self, headers: dict[str, str]) -> PartFile:
        part = PartFile(self.intake.partial_dir, headers, writeback=self.intake.fsync)
        if part.reason is None:
            try:
                self.intake.check_space()
            except DiskFull:
                part.reason = OUT_OF_RESOURCES
                part.discard()
        self.current = part
        return part

    def on_end(self, sink: Any) -> None:
        part: PartFile = sink
        self.current = None
        part.close()
        if part.reason is not None or part.path is None:
            if part.reason == OUT_OF_RESOURCES:
                log.error("STOW-RS part not stored: out of resources", extra={"event": "disk_low"})
            self._outcomes.append(Outcome(reason=part.reason or OUT_OF_RESOURCES))
            part.discard()
            return
        # Filed on another thread while the next part streams in: the fsyncs and the commit of
        # one part overlap the network reading of the next (and concurrent parts share commits).
        self._window.acquire()
        self._outcomes.append(self.filer.submit(self._file_and_release, part.path))

    def _file_and_release(self, path: Path) -> Outcome:
        try:
            return self._file(path)
        finally:
            self._window.release()

    def _file(self, path: Path) -> Outcome:
        """The durability protocol for one complete part; never raises."""
        try:
            header = read_header(path, verify_complete=True)  # a part may be anything: check it whole
        except UnreadableObject as exc:
            try:
                self.intake.quarantine_partial(path, exc, source="stow")
            except OSError:
                path.unlink(missing_ok=True)
            return Outcome(reason=CANNOT_UNDERSTAND)
        outcome = Outcome(header.sop_class_uid, header.sop_instance_uid)
        if not self.offer.stores(header.sop_class_uid) or (self.study and header.study_uid != self.study):
            path.unlink(missing_ok=True)  # refused as the SCP refuses the class at negotiation
            outcome.reason = SOP_CLASS_REFUSED
            return outcome
        try:
            self.intake.check_space()
            # lazy_digest as for C-STORE: the dataset is hashed only to tell a re-send from changed bytes
            self.intake.ingest_partial(path, source="stow", calling_aet="", verify_complete=True, header=header,
                                       lazy_digest=True)
        except DiskFull:
            log.error("spool disk below free-space floor; STOW-RS part refused", extra={"event": "disk_low"})
            outcome.reason = OUT_OF_RESOURCES
        except UnreadableObject:
            outcome.reason = CANNOT_UNDERSTAND
        except Exception as exc:  # any storage failure: never claim success
            log.error("could not store a STOW-RS part", extra={"event": "store_failed", "error": type(exc).__name__})
            outcome.reason = OUT_OF_RESOURCES
        finally:
            path.unlink(missing_ok=True)  # consumed by the intake when stored; removed otherwise
        return outcome

    def abandon(self) -> None:
        """The body ended badly: remove the part being written (parts already filed stay stored)."""
        if self.current is not None:
            self.current.discard()
            self.current = None
